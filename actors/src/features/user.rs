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

/// Milliseconds in a calendar day (UTC).
pub const DAY_MILLIS: Millis = 86_400_000;

/// A shopper's purchases counted in purchase days, as the customer-value models see them: several
/// purchases on one calendar day (UTC) are one purchase day whose spend is their total, and the
/// first day's spend is not a repeat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PurchaseDays {
    /// The day of the first purchase (days since 1970-01-01), `None` before any.
    pub first_day: Option<i64>,
    /// The latest purchase day.
    pub last_day: i64,
    /// Purchase days after the first: the models' frequency `x`.
    pub repeat_days: u32,
    /// Total spend of those days.
    pub repeat_spend: f64,
}

impl PurchaseDays {
    /// Counts a purchase of `price` at `time`. A purchase on a day before the latest one (events
    /// of a shopper out of order) adds its spend to the latest day's unless it is before the
    /// first, where it is left out.
    pub fn record(&mut self, time: Millis, price: f64) {
        let day = time.div_euclid(DAY_MILLIS);
        let Some(first_day) = self.first_day else {
            self.first_day = Some(day);
            self.last_day = day;
            return;
        };
        if day <= first_day {
            return;
        }
        if day > self.last_day {
            self.repeat_days += 1;
            self.last_day = day;
        }
        self.repeat_spend += price;
    }

    /// The mean spend of a repeat purchase day, `None` without one.
    pub fn mean_repeat_spend(&self) -> Option<f64> {
        (self.repeat_days > 0).then(|| self.repeat_spend / f64::from(self.repeat_days))
    }
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
    /// Purchases by day, for the customer-value models.
    pub purchase_days: PurchaseDays,
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
            purchase_days: PurchaseDays::default(),
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
            self.purchase_days.record(event.time, event.price);
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

    /// The days of the customer-value models: the first day's spend is no repeat, and a day's
    /// purchases are one purchase day (as `propensity value fit` summarises them).
    #[test]
    fn counts_purchase_days() {
        let mut days = PurchaseDays::default();
        for (day, price) in [(10, 1.0), (10, 1.5), (17, 5.0), (17, 3.0), (24, 2.0)] {
            days.record(day * DAY_MILLIS + 3_600_000, price);
        }
        assert_eq!(days.first_day, Some(10));
        assert_eq!(days.last_day, 24);
        assert_eq!(days.repeat_days, 2);
        assert_eq!(days.mean_repeat_spend(), Some(5.0));
        assert_eq!(PurchaseDays::default().mean_repeat_spend(), None);
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
