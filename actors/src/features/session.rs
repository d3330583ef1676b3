//! Session and cart state, with the per-product state inside the session: the state machine behind
//! every session feature, used unchanged by training replay and the online actors.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use super::counts::Counts;
use crate::event::{Event, EventType, Millis};

/// How many of the latest viewed products a session remembers, in order.
pub const VIEW_SEQUENCE_LENGTH: usize = 8;

/// Identifies a session: the user and a hash of their session string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionKey {
    pub user_id: u64,
    pub session_hash: u64,
}

impl SessionKey {
    /// The key of a user's session string.
    pub fn new(user_id: u64, user_session: &str) -> Self {
        SessionKey {
            user_id,
            session_hash: xxh3_64(user_session.as_bytes()),
        }
    }

    /// The key of the event's session.
    pub fn of(event: &Event) -> Self {
        Self::new(event.user_id, &event.user_session)
    }
}

/// What one product did within one session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionProduct {
    pub product_id: u64,
    /// The latest price seen for the product in this session.
    pub price: f64,
    pub counts: Counts,
    /// Units in the cart now.
    pub in_cart: u32,
    pub last_view_at: Option<Millis>,
}

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// At least one purchase.
    Purchased,
    /// A non-empty cart and no purchase: an abandoned cart.
    Abandoned,
    /// Neither.
    Browsed,
}

impl Outcome {
    /// Every outcome, in a fixed order.
    pub const ALL: [Outcome; 3] = [Self::Purchased, Self::Abandoned, Self::Browsed];

    /// The label value used in metrics and APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Purchased => "purchased",
            Self::Abandoned => "abandoned",
            Self::Browsed => "browsed",
        }
    }
}

/// What an event did to its session, as the user's history needs to know it.
#[derive(Debug, Default, PartialEq)]
pub struct SessionStep {
    /// The event started a session: there was none, or the last one had been idle for longer
    /// than the timeout.
    pub started: bool,
    /// The event is the session's first purchase.
    pub first_purchase: bool,
    /// The session the event ended by arriving after a gap longer than the timeout (boxed:
    /// steps travel between actors, and this is rare).
    pub closed: Option<Box<SessionState>>,
}

/// Applies an event to the live session of its user and session string (`None`: there is
/// none), starting one when there is none or when the last event is more than `timeout` ago.
pub fn enter(session: &mut Option<SessionState>, event: &Event, timeout: Millis) -> SessionStep {
    match session {
        Some(current) => continue_or_restart(current, event, timeout),
        None => {
            let (started, step) = start(event);
            *session = Some(started);
            step
        }
    }
}

/// A session started by `event`, with the event applied.
pub fn start(event: &Event) -> (SessionState, SessionStep) {
    let mut session = SessionState::new(event.user_id, &event.user_session, event.time);
    let step = SessionStep {
        started: true,
        first_purchase: event.event_type == EventType::Purchase,
        closed: None,
    };
    session.apply(event);
    (session, step)
}

/// Applies an event to a live session, or, when its last event is more than `timeout` ago, ends
/// it and starts a new one in its place. Training replay and the session actors both go
/// through here.
pub fn continue_or_restart(
    session: &mut SessionState,
    event: &Event,
    timeout: Millis,
) -> SessionStep {
    if event.time - session.last_event_at > timeout {
        let (mut fresh, mut step) = start(event);
        fresh.previous = Some(Box::new(PreviousSession::of(session)));
        step.closed = Some(Box::new(std::mem::replace(session, fresh)));
        return step;
    }
    let step = SessionStep {
        started: false,
        first_purchase: event.event_type == EventType::Purchase && session.counts.purchases == 0,
        closed: None,
    };
    session.apply(event);
    step
}

/// The session that ended under the same key when a shopper came back after the timeout with
/// the same session string: what counting its end needs. The new session keeps it, so that the
/// end is counted even if a crash loses the write that counted it (the store counts each end
/// once).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreviousSession {
    pub started_at: Millis,
    pub last_event_at: Millis,
    pub outcome: Outcome,
    pub cart_value: f64,
}

impl PreviousSession {
    /// What counting `session`'s end needs.
    pub fn of(session: &SessionState) -> PreviousSession {
        PreviousSession {
            started_at: session.started_at,
            last_event_at: session.last_event_at,
            outcome: session.outcome(),
            cart_value: session.cart_value(),
        }
    }
}

/// One shopper's session: counters, cart, view sequence and per-product state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionState {
    pub user_id: u64,
    /// The shop's session string; boxed, a million live sessions save 8 bytes each.
    pub session_id: Box<str>,
    pub started_at: Millis,
    pub last_event_at: Millis,
    pub counts: Counts,
    pub revenue: f64,
    /// Products touched in this session, in order of first touch; sessions touch few products,
    /// so a vector beats a map in both memory and speed.
    pub products: Vec<SessionProduct>,
    /// Distinct categories viewed, in order of first view.
    pub categories_viewed: Vec<u64>,
    /// The latest viewed product ids, oldest first.
    pub view_sequence: Vec<u64>,
    /// The session this one replaced under the same key, if any; not a feature.
    pub previous: Option<Box<PreviousSession>>,
}

impl SessionState {
    /// The session's key.
    pub fn key(&self) -> SessionKey {
        SessionKey::new(self.user_id, &self.session_id)
    }

    /// A session that starts with `event`'s time; apply the event next.
    pub fn new(user_id: u64, session_id: &str, started_at: Millis) -> Self {
        SessionState {
            user_id,
            session_id: session_id.into(),
            started_at,
            last_event_at: started_at,
            counts: Counts::default(),
            revenue: 0.0,
            products: Vec::new(),
            categories_viewed: Vec::new(),
            view_sequence: Vec::new(),
            previous: None,
        }
    }

    /// Applies one event of this session.
    pub fn apply(&mut self, event: &Event) {
        self.counts.record(event.event_type);
        self.last_event_at = self.last_event_at.max(event.time);
        let index = match self
            .products
            .iter()
            .position(|product| product.product_id == event.product_id)
        {
            Some(index) => index,
            None => {
                push_exact(
                    &mut self.products,
                    SessionProduct {
                        product_id: event.product_id,
                        price: event.price,
                        counts: Counts::default(),
                        in_cart: 0,
                        last_view_at: None,
                    },
                );
                self.products.len() - 1
            }
        };
        let product = &mut self.products[index];
        product.counts.record(event.event_type);
        product.price = event.price;
        match event.event_type {
            EventType::View => {
                product.last_view_at = Some(event.time);
                if !self.categories_viewed.contains(&event.category_id) {
                    push_exact(&mut self.categories_viewed, event.category_id);
                }
                if self.view_sequence.len() == VIEW_SEQUENCE_LENGTH {
                    self.view_sequence.remove(0);
                }
                push_exact(&mut self.view_sequence, event.product_id);
            }
            EventType::Cart => product.in_cart += 1,
            EventType::RemoveFromCart => product.in_cart = product.in_cart.saturating_sub(1),
            EventType::Purchase => {
                // A purchase empties that product's cart line; a purchase with no earlier cart
                // event (common in real data) simply has nothing to empty.
                product.in_cart = 0;
                self.revenue += event.price;
            }
        }
    }

    /// Units in the cart.
    pub fn cart_items(&self) -> u32 {
        self.products.iter().map(|product| product.in_cart).sum()
    }

    /// Value of the cart at the latest prices seen.
    pub fn cart_value(&self) -> f64 {
        self.products
            .iter()
            .map(|product| f64::from(product.in_cart) * product.price)
            .sum()
    }

    /// Distinct products viewed in the session.
    pub fn distinct_products_viewed(&self) -> usize {
        self.products
            .iter()
            .filter(|product| product.counts.views > 0)
            .count()
    }

    /// The state of one product within this session.
    pub fn product(&self, product_id: u64) -> Option<&SessionProduct> {
        self.products
            .iter()
            .find(|product| product.product_id == product_id)
    }

    /// How the session ends if nothing more happens.
    pub fn outcome(&self) -> Outcome {
        if self.counts.purchases > 0 {
            Outcome::Purchased
        } else if self.cart_items() > 0 {
            Outcome::Abandoned
        } else {
            Outcome::Browsed
        }
    }
}

/// Pushes without the slack of a growing vector: sessions hold a few items each, and a million
/// live sessions would otherwise carry room for several more in every list.
fn push_exact<T>(items: &mut Vec<T>, item: T) {
    items.reserve_exact(1);
    items.push(item);
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn event(time: Millis, event_type: EventType, product_id: u64, price: f64) -> Event {
        Event {
            time,
            event_type,
            product_id,
            category_id: product_id / 100,
            category_code: None,
            brand: None,
            price,
            user_id: 7,
            user_session: "s".into(),
            event_id: None,
        }
    }

    fn session_of(events: &[Event]) -> SessionState {
        let mut session = SessionState::new(7, "s", events[0].time);
        for event in events {
            session.apply(event);
        }
        session
    }

    #[test]
    fn cart_follows_carts_removes_and_purchases() {
        let session = session_of(&[
            event(0, EventType::View, 101, 10.0),
            event(1, EventType::Cart, 101, 10.0),
            event(2, EventType::Cart, 101, 12.0),
            event(3, EventType::Cart, 202, 5.0),
            event(4, EventType::RemoveFromCart, 202, 5.0),
            event(5, EventType::RemoveFromCart, 202, 5.0),
        ]);
        assert_eq!(session.cart_items(), 2);
        assert_eq!(session.cart_value(), 24.0);
        assert_eq!(session.outcome(), Outcome::Abandoned);
        let after_purchase = {
            let mut session = session.clone();
            session.apply(&event(6, EventType::Purchase, 101, 12.0));
            session
        };
        assert_eq!(after_purchase.cart_items(), 0);
        assert_eq!(after_purchase.revenue, 12.0);
        assert_eq!(after_purchase.outcome(), Outcome::Purchased);
    }

    #[test]
    fn purchase_without_cart_is_counted() {
        let session = session_of(&[event(0, EventType::Purchase, 101, 3.0)]);
        assert_eq!(session.counts.purchases, 1);
        assert_eq!(session.cart_items(), 0);
        assert_eq!(session.outcome(), Outcome::Purchased);
    }

    #[test]
    fn tracks_views_categories_and_sequence() {
        let events: Vec<Event> = (0..10)
            .map(|index| event(index * 1000, EventType::View, 100 + index as u64 * 50, 1.0))
            .collect();
        let session = session_of(&events);
        assert_eq!(session.distinct_products_viewed(), 10);
        assert_eq!(session.categories_viewed, vec![1, 2, 3, 4, 5]);
        assert_eq!(session.view_sequence.len(), VIEW_SEQUENCE_LENGTH);
        assert_eq!(*session.view_sequence.last().unwrap(), 550);
        assert_eq!(session.product(550).unwrap().last_view_at, Some(9000));
        assert_eq!(session.last_event_at, 9000);
        assert_eq!(session.outcome(), Outcome::Browsed);
    }
}
