//! A shopper's history across sessions and their per-product history: the state machine behind
//! the user and user-product features.

use serde::{Deserialize, Serialize};

use super::counts::Counts;
use crate::event::{Event, EventType, Millis};

/// How many recent event identities a user remembers to drop duplicates and redeliveries.
pub const RECENT_IDENTITIES: usize = 32;

/// What a user did with one product over their whole history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UserProduct {
    pub counts: Counts,
    pub last_event_at: Millis,
}

/// One shopper's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserState {
    pub user_id: u64,
    pub counts: Counts,
    /// Sessions started, the current one included.
    pub sessions: u32,
    /// Sessions that ended or are going on with at least one purchase.
    pub purchase_sessions: u32,
    pub revenue: f64,
    pub first_event_at: Millis,
    pub last_event_at: Millis,
    pub last_purchase_at: Option<Millis>,
    /// Identities of the latest events applied, newest last.
    pub recent_identities: Vec<u64>,
    /// Every product the user touched, by id, ascending: a sorted vector takes two thirds of
    /// the memory of a B-tree map at the few dozen products a shopper touches (and stores the
    /// same bytes).
    pub products: Vec<(u64, UserProduct)>,
}

impl UserState {
    /// A user first seen at `time`.
    pub fn new(user_id: u64, time: Millis) -> Self {
        UserState {
            user_id,
            counts: Counts::default(),
            sessions: 0,
            purchase_sessions: 0,
            revenue: 0.0,
            first_event_at: time,
            last_event_at: time,
            last_purchase_at: None,
            recent_identities: Vec::with_capacity(RECENT_IDENTITIES),
            products: Vec::new(),
        }
    }

    /// Whether an event with this identity was applied recently.
    pub fn has_seen(&self, identity: u64) -> bool {
        self.recent_identities.contains(&identity)
    }

    /// Applies one event; `first_purchase_of_session` tells whether it is the session's first.
    pub fn apply(&mut self, event: &Event, identity: u64, first_purchase_of_session: bool) {
        self.counts.record(event.event_type);
        self.last_event_at = self.last_event_at.max(event.time);
        if self.recent_identities.len() == RECENT_IDENTITIES {
            self.recent_identities.remove(0);
        }
        self.recent_identities.push(identity);
        let index = match self
            .products
            .binary_search_by_key(&event.product_id, |(id, _)| *id)
        {
            Ok(index) => index,
            Err(index) => {
                self.products.reserve_exact(1);
                self.products
                    .insert(index, (event.product_id, UserProduct::default()));
                index
            }
        };
        let product = &mut self.products[index].1;
        product.counts.record(event.event_type);
        product.last_event_at = product.last_event_at.max(event.time);
        if event.event_type == EventType::Purchase {
            self.revenue += event.price;
            self.last_purchase_at = Some(
                self.last_purchase_at
                    .map_or(event.time, |last| last.max(event.time)),
            );
            if first_purchase_of_session {
                self.purchase_sessions += 1;
            }
        }
    }

    /// Records the start of a new session.
    pub fn start_session(&mut self) {
        self.sessions += 1;
    }

    /// The user's history with one product.
    pub fn product(&self, product_id: u64) -> Option<&UserProduct> {
        self.products
            .binary_search_by_key(&product_id, |(id, _)| *id)
            .ok()
            .map(|index| &self.products[index].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(time: Millis, event_type: EventType, product_id: u64) -> Event {
        Event {
            time,
            event_type,
            product_id,
            category_id: 1,
            category_code: None,
            brand: None,
            price: 4.0,
            user_id: 9,
            user_session: "s".into(),
            event_id: None,
        }
    }

    #[test]
    fn accumulates_history_and_products() {
        let mut user = UserState::new(9, 0);
        user.start_session();
        user.apply(&event(0, EventType::View, 1), 11, false);
        user.apply(&event(5, EventType::Purchase, 1), 12, true);
        user.apply(&event(9, EventType::Purchase, 2), 13, false);
        assert_eq!(user.counts.purchases, 2);
        assert_eq!(user.purchase_sessions, 1);
        assert_eq!(user.revenue, 8.0);
        assert_eq!(user.last_purchase_at, Some(9));
        assert_eq!(user.product(1).unwrap().counts.views, 1);
        assert_eq!(user.product(1).unwrap().counts.purchases, 1);
        assert_eq!(user.product(2).unwrap().last_event_at, 9);
        assert!(user.has_seen(12));
        assert!(!user.has_seen(14));
    }

    #[test]
    fn remembers_a_bounded_number_of_identities() {
        let mut user = UserState::new(9, 0);
        for identity in 0..(RECENT_IDENTITIES as u64 + 5) {
            user.apply(&event(0, EventType::View, 1), identity, false);
        }
        assert_eq!(user.recent_identities.len(), RECENT_IDENTITIES);
        assert!(!user.has_seen(4));
        assert!(user.has_seen(5));
    }
}
