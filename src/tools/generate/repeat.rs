//! The repeat-buyer process (`--process repeat-buyers`): every shopper buys on occasions drawn
//! from BG/NBD and spends per occasion what Gamma-Gamma draws, with known population parameters,
//! so that `propensity value fit` can be held against the truth. "Repeat buyers" in
//! docs/synthetic-model.md describes it and says why it is a process of its own.

use propensity_actors::event::{EventType, Millis};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};

use crate::offline::value::bgnbd::BgNbdParams;
use crate::offline::value::gamma_gamma::GammaGammaParams;
use crate::offline::value::synthetic::CustomerDraws;

use super::clock::{DAY, SECOND};
use super::population::{Catalogue, User};
use super::random::pick;
use super::session::{Emitter, PREFERRED_CUMULATIVE};

/// The population of repeat-purchase processes: the BG/NBD estimates published for the CDNOW
/// sample (Fader, Hardie and Lee 2005), per week.
pub const REPEAT_PURCHASES: BgNbdParams = BgNbdParams {
    r: 0.243,
    alpha: 4.414,
    a: 0.793,
    b: 2.426,
};

/// The population of spend processes: the Gamma-Gamma estimates published for the CDNOW sample
/// (Fader and Hardie 2013), in units of price.
pub const SPEND: GammaGammaParams = GammaGammaParams {
    p: 6.25,
    q: 3.74,
    gamma: 15.44,
};

/// First purchases are spread uniformly over this much of the start of the run at most (the
/// CDNOW cohort's 12 weeks) ...
const FIRST_PURCHASE_WINDOW: Millis = 12 * 7 * DAY;
/// ... and over at most this share of a shorter run.
const FIRST_PURCHASE_SHARE: f64 = 1.0 / 6.0;

const WEEK: f64 = 7.0 * DAY as f64;

/// One shopper's purchase occasions, drawn when the run starts, and their spend rate.
#[derive(Clone, Debug)]
pub(super) struct RepeatBuyer {
    /// Occasion times, in order: the first purchase, then the repeat purchases.
    occasions: Vec<Millis>,
    /// The next occasion not simulated yet.
    next: usize,
    /// Gamma-Gamma's `ν`: one occasion's spend is Gamma(p, rate ν).
    spend: Gamma<f64>,
}

impl RepeatBuyer {
    /// Draws one shopper's occasions over `[start, end)` and their spend distribution.
    pub(super) fn new(
        start: Millis,
        end: Millis,
        draws: &CustomerDraws,
        rng: &mut ChaCha8Rng,
    ) -> RepeatBuyer {
        let span = (end - start) as f64;
        let window = (FIRST_PURCHASE_WINDOW as f64).min(span * FIRST_PURCHASE_SHARE);
        let first = rng.r#gen::<f64>() * window / WEEK;
        let customer = draws.customer(first, span / WEEK, rng);
        let occasions = std::iter::once(customer.first_purchase)
            .chain(customer.repeat_purchases)
            // Whole seconds, as REES46 times are.
            .map(|weeks| start + ((weeks * WEEK / SECOND as f64) as Millis) * SECOND)
            .collect();
        let spend_rate: f64 = Gamma::new(SPEND.q, 1.0 / SPEND.gamma)
            .expect("Gamma-Gamma q and gamma are > 0")
            .sample(rng);
        RepeatBuyer {
            occasions,
            next: 0,
            spend: Gamma::new(SPEND.p, 1.0 / spend_rate).expect("a positive spend rate"),
        }
    }

    /// The next occasion before `until`, if any, marked as simulated.
    pub(super) fn next_before(&mut self, until: Millis) -> Option<Millis> {
        let time = *self.occasions.get(self.next)?;
        (time < until).then(|| {
            self.next += 1;
            time
        })
    }

    /// One occasion's spend in whole cents, at least one.
    pub(super) fn spend(&self, rng: &mut ChaCha8Rng) -> f64 {
        let value: f64 = self.spend.sample(rng);
        ((value * 100.0).round() / 100.0).max(0.01)
    }
}

/// One purchase occasion as a session: the shopper views a product of a preferred category,
/// adds it to the cart and buys it, at the occasion's spend (the price of all three events).
pub(super) fn buying_session(
    user: &mut User,
    buyer: &RepeatBuyer,
    catalogue: &Catalogue,
    emitter: &mut Emitter,
    rng: &mut ChaCha8Rng,
) {
    let category = user.preferred[pick(&PREFERRED_CUMULATIVE, rng)];
    let product = catalogue.popular_product(category, rng);
    let price = buyer.spend(rng);
    emitter.price = Some(price);
    emitter.emit(EventType::View, product, 1.0, rng);
    emitter.emit(EventType::Cart, product, 1.0, rng);
    emitter.emit(EventType::Purchase, product, f64::NAN, rng);
    user.sessions += 1;
}

/// Expected events of a run of `users` over `days`, for the progress bar: three per occasion.
pub(super) fn expected_events(users: u64, days: u32) -> u64 {
    let weeks = f64::from(days) / 7.0;
    let window = (12.0f64).min(weeks * FIRST_PURCHASE_SHARE);
    let occasions = 1.0 + REPEAT_PURCHASES.expected_purchases(weeks - window / 2.0);
    (users as f64 * occasions * 3.0) as u64
}
