//! The session simulation: which users start a session when, what each session plans, the
//! scheduler that interleaves the funnels of its products, the gaps between its events, and the
//! counts of a run. Events come out as compact records, sorted and written by the output.
//! "Sessions" in the generator's documentation describes the model.

use propensity_actors::event::{EventType, Millis};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::clock::{DIURNAL_AMPLITUDE, MINUTE, SECOND, diurnal};
use super::funnel::{CART_SHARE, DIRECT_BUY_SHARE, Funnel, Interest, Stage, VIEW_IN_CART};
use super::population::{Catalogue, PREFERRED_CATEGORIES, User};
use super::random::{normal, pick};
use super::repeat::{self, RepeatBuyer};

/// What a run produced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GenerateSummary {
    /// Rows written, header excluded.
    pub events: u64,
    pub sessions: u64,
    /// Sessions with at least one add-to-cart event.
    pub sessions_with_cart: u64,
    /// Sessions with an add-to-cart event and no purchase. (The training replay's
    /// `Outcome::Abandoned` counts only those whose cart is still non-empty, so it is slightly
    /// lower.)
    pub abandoned_carts: u64,
    pub purchases: u64,
    /// View, cart and remove events: the rows of the truth file.
    pub scoring_points: u64,
    /// Users with at least one session.
    pub users: u64,
    /// Distinct products in the output.
    pub products: u64,
}

impl GenerateSummary {
    /// Share of sessions with a cart event that ended without a purchase.
    pub fn abandonment_rate(&self) -> f64 {
        if self.sessions_with_cart == 0 {
            0.0
        } else {
            self.abandoned_carts as f64 / self.sessions_with_cart as f64
        }
    }
}

/// A user's next session starts at least this long after their previous one ended, so sessions
/// of one user never overlap and the 30-minute session rule would separate them too.
const SESSION_BREAK: Millis = 30 * MINUTE;
/// Longest gap between two events of a session: safely under the 30-minute session timeout.
const MAX_GAP: Millis = 25 * MINUTE;

const MAX_PRODUCTS_PER_SESSION: usize = 12;
const TWO_CATEGORY_SESSIONS: f64 = 0.3;
const PREFERRED_CATEGORY_SHARE: f64 = 0.85;
const REVISIT_EARLIER_PRODUCT: f64 = 0.25;
const OPEN_WEIGHT: f64 = 0.8;
const SETTLE_WEIGHT: f64 = 0.2;

/// Medians of the gap before each kind of event, and the σ of its logarithm.
const VIEW_GAP_SECONDS: f64 = 35.0;
const CART_GAP_SECONDS: f64 = 25.0;
const REMOVE_GAP_SECONDS: f64 = 20.0;
const PURCHASE_GAP_SECONDS: f64 = 60.0;
const GAP_SPREAD: f64 = 1.0;

/// One generated event before it is written: compact, with what is needed to sort it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Record {
    pub(super) time: Millis,
    /// Generation order: breaks ties in time deterministically.
    pub(super) sequence: u64,
    pub(super) user: u32,
    pub(super) product: u32,
    pub(super) session: u128,
    pub(super) event_type: EventType,
    /// The truth of a scoring point (unused for purchases).
    pub(super) probability: f64,
    /// The price on this event when it is not the product's catalogue price (repeat buyers).
    pub(super) price: Option<f64>,
}

/// The state of a run: the users, the catalogue, the one random stream and the events
/// generated but not written yet.
pub(super) struct Generator {
    pub(super) rng: ChaCha8Rng,
    pub(super) catalogue: Catalogue,
    pub(super) users: Vec<User>,
    /// Generated events not written yet.
    pub(super) pending: Vec<Record>,
    pub(super) next_sequence: u64,
    pub(super) summary: GenerateSummary,
    /// The current session's products, kept to reuse the allocation.
    pub(super) interests: Vec<Interest>,
    /// Under the repeat-buyer process, each user's purchase occasions (by user index); empty
    /// under the funnel process.
    pub(super) buyers: Vec<RepeatBuyer>,
}

impl Generator {
    /// Simulates every session that starts before `until`.
    pub(super) fn simulate_until(&mut self, until: Millis) {
        if !self.buyers.is_empty() {
            self.simulate_occasions_until(until);
            return;
        }
        for index in 0..self.users.len() {
            while self.users[index].next_arrival < until {
                let user = &mut self.users[index];
                let arrival = user.next_arrival;
                user.next_arrival += user.interarrival(&mut self.rng);
                let accept = diurnal(arrival) / (1.0 + DIURNAL_AMPLITUDE);
                if self.rng.r#gen::<f64>() < accept && arrival >= self.users[index].busy_until {
                    self.simulate_session(index, arrival);
                }
            }
        }
    }

    /// The repeat-buyer process: one buying session per occasion before `until`.
    fn simulate_occasions_until(&mut self, until: Millis) {
        for index in 0..self.users.len() {
            while let Some(time) = self.buyers[index].next_before(until) {
                let mut emitter = Emitter {
                    time,
                    first: true,
                    user: index as u32,
                    session: uuid_bits(self.rng.r#gen()),
                    price: None,
                    pending: &mut self.pending,
                    next_sequence: &mut self.next_sequence,
                };
                repeat::buying_session(
                    &mut self.users[index],
                    &self.buyers[index],
                    &self.catalogue,
                    &mut emitter,
                    &mut self.rng,
                );
                self.summary.sessions += 1;
                self.summary.sessions_with_cart += 1;
                self.summary.purchases += 1;
            }
        }
    }

    fn simulate_session(&mut self, user_index: usize, start: Millis) {
        let mut interests = std::mem::take(&mut self.interests);
        interests.clear();
        let rng = &mut self.rng;
        let catalogue = &self.catalogue;
        let user = &mut self.users[user_index];
        let session = uuid_bits(rng.r#gen());
        let mut planned = 1;
        while planned < MAX_PRODUCTS_PER_SESSION && rng.gen_bool(user.breadth) {
            planned += 1;
        }
        let category_count = if rng.gen_bool(TWO_CATEGORY_SESSIONS) {
            2
        } else {
            1
        };
        let mut categories = [0u32; 2];
        for category in categories.iter_mut().take(category_count) {
            *category = if rng.gen_bool(PREFERRED_CATEGORY_SHARE) {
                user.preferred[pick(&PREFERRED_CUMULATIVE, rng)]
            } else {
                catalogue.popular_category(rng)
            };
        }
        let mut emitter = Emitter {
            time: start,
            first: true,
            user: user_index as u32,
            session,
            price: None,
            pending: &mut self.pending,
            next_sequence: &mut self.next_sequence,
        };
        let (mut carted, mut bought) = (false, false);
        loop {
            let browsing = interests
                .iter()
                .any(|interest| interest.stage == Stage::Browsing);
            let open_weight = if interests.len() < planned {
                OPEN_WEIGHT
            } else {
                0.0
            };
            let settle_weight = if open_weight > 0.0 || browsing {
                SETTLE_WEIGHT
            } else {
                1.0
            };
            let weight = |interest: &Interest| match interest.stage {
                Stage::Browsing => 1.0,
                Stage::InCart | Stage::Removed => settle_weight,
                Stage::Bought | Stage::Left => 0.0,
            };
            let total: f64 = open_weight + interests.iter().map(weight).sum::<f64>();
            if total <= 0.0 {
                break;
            }
            let mut draw = rng.r#gen::<f64>() * total;
            let chosen = interests
                .iter()
                .position(|interest| {
                    draw -= weight(interest);
                    draw < 0.0 && interest.is_active()
                })
                // Rounding can leave a sliver of the draw unspent when nothing is left to open.
                .or_else(|| {
                    (open_weight == 0.0)
                        .then(|| interests.iter().rposition(Interest::is_active))
                        .flatten()
                });
            let Some(index) = chosen else {
                let category = categories[rng.gen_range(0..category_count)];
                match open_product(user, catalogue, category, &interests, rng) {
                    Some(product) => {
                        let funnel =
                            Funnel::new(user.logit(product, &catalogue.products[product as usize]));
                        emitter.emit(EventType::View, product, funnel.browse[1], rng);
                        interests.push(Interest {
                            product,
                            stage: Stage::Browsing,
                            views: 1,
                            removes: 0,
                            carts: 0,
                            funnel,
                        });
                    }
                    None => planned = interests.len(),
                }
                continue;
            };
            let interest = &mut interests[index];
            let funnel = &interest.funnel;
            let product = interest.product;
            match interest.stage {
                Stage::Browsing => {
                    if rng.r#gen::<f64>() < funnel.view_again(interest.views) {
                        interest.views += 1;
                        emitter.emit(EventType::View, product, funnel.browse[interest.views], rng);
                    } else {
                        let act = funnel.act(interest.views);
                        let draw = rng.r#gen::<f64>();
                        if draw < CART_SHARE * act {
                            interest.stage = Stage::InCart;
                            carted = true;
                            interest.carts += 1;
                            emitter.emit(EventType::Cart, product, funnel.cart[0], rng);
                        } else if draw < (CART_SHARE + DIRECT_BUY_SHARE) * act {
                            interest.stage = Stage::Bought;
                            bought = true;
                            emitter.emit(EventType::Purchase, product, f64::NAN, rng);
                        } else {
                            interest.stage = Stage::Left;
                        }
                    }
                }
                Stage::InCart => {
                    let draw = rng.r#gen::<f64>();
                    let removes = interest.removes;
                    if draw < VIEW_IN_CART {
                        interest.views += 1;
                        emitter.emit(EventType::View, product, funnel.cart[removes], rng);
                    } else if draw < VIEW_IN_CART + funnel.remove(removes) {
                        interest.removes += 1;
                        interest.stage = Stage::Removed;
                        let probability = funnel.recart(removes + 1) * funnel.cart[removes + 1];
                        emitter.emit(EventType::RemoveFromCart, product, probability, rng);
                    } else if rng.r#gen::<f64>() < funnel.buy(removes) {
                        interest.stage = Stage::Bought;
                        bought = true;
                        emitter.emit(EventType::Purchase, product, f64::NAN, rng);
                    } else {
                        interest.stage = Stage::Left;
                    }
                }
                Stage::Removed => {
                    if rng.r#gen::<f64>() < funnel.recart(interest.removes) {
                        interest.stage = Stage::InCart;
                        interest.carts += 1;
                        emitter.emit(EventType::Cart, product, funnel.cart[interest.removes], rng);
                    } else {
                        interest.stage = Stage::Left;
                    }
                }
                Stage::Bought | Stage::Left => unreachable!("only active products are chosen"),
            }
        }
        let last_event = emitter.time;
        let purchases = interests
            .iter()
            .filter(|interest| interest.stage == Stage::Bought)
            .count();
        for interest in &interests {
            user.remember(interest);
        }
        user.sessions += 1;
        user.carts += interests.iter().map(|interest| interest.carts).sum::<u32>();
        user.purchases += purchases as u32;
        user.busy_until = last_event + SESSION_BREAK;
        self.summary.sessions += 1;
        self.summary.sessions_with_cart += u64::from(carted);
        self.summary.abandoned_carts += u64::from(carted && !bought);
        self.summary.purchases += purchases as u64;
        self.interests = interests;
    }
}

/// Preference among a user's three categories: the first most.
pub(super) const PREFERRED_CUMULATIVE: [f64; PREFERRED_CATEGORIES] = [0.5, 0.8, 1.0];

/// Picks the next product of a session: sometimes one the user viewed before and did not buy,
/// else a popular one of `category`; never one already opened in this session, because a product
/// that left its funnel must stay gone for the truth to hold.
fn open_product(
    user: &User,
    catalogue: &Catalogue,
    category: u32,
    interests: &[Interest],
    rng: &mut ChaCha8Rng,
) -> Option<u32> {
    let opened = |product: u32| interests.iter().any(|interest| interest.product == product);
    let candidates = user
        .seen
        .iter()
        .filter(|seen| !seen.bought && !opened(seen.product))
        .count();
    if candidates > 0 && rng.gen_bool(REVISIT_EARLIER_PRODUCT) {
        let chosen = rng.gen_range(0..candidates);
        return user
            .seen
            .iter()
            .filter(|seen| !seen.bought && !opened(seen.product))
            .nth(chosen)
            .map(|seen| seen.product);
    }
    (0..16)
        .map(|_| catalogue.popular_product(category, rng))
        .find(|&product| !opened(product))
}

/// Appends a session's events with their gaps.
pub(super) struct Emitter<'a> {
    time: Millis,
    first: bool,
    user: u32,
    session: u128,
    /// The price on the events when it is not the catalogue's.
    pub(super) price: Option<f64>,
    pending: &'a mut Vec<Record>,
    next_sequence: &'a mut u64,
}

impl Emitter<'_> {
    pub(super) fn emit(
        &mut self,
        event_type: EventType,
        product: u32,
        probability: f64,
        rng: &mut ChaCha8Rng,
    ) {
        if self.first {
            self.first = false;
        } else {
            self.time += gap(event_type, rng);
        }
        self.pending.push(Record {
            time: self.time,
            sequence: *self.next_sequence,
            user: self.user,
            product,
            session: self.session,
            event_type,
            probability,
            price: self.price,
        });
        *self.next_sequence += 1;
    }
}

/// The log-normal wait before an event, in whole seconds within `[1 s, MAX_GAP]`.
fn gap(event_type: EventType, rng: &mut ChaCha8Rng) -> Millis {
    let median = match event_type {
        EventType::View => VIEW_GAP_SECONDS,
        EventType::Cart => CART_GAP_SECONDS,
        EventType::RemoveFromCart => REMOVE_GAP_SECONDS,
        EventType::Purchase => PURCHASE_GAP_SECONDS,
    };
    let seconds = (median * (GAP_SPREAD * normal(rng)).exp()).round() as Millis;
    (seconds * SECOND).clamp(SECOND, MAX_GAP)
}

/// Random bits shaped as a version-4 UUID, like REES46 session ids.
pub(super) fn uuid_bits(bits: u128) -> u128 {
    (bits & !(0xF << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62)
}
