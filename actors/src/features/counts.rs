//! Event counters shared by every entity's state.

use serde::{Deserialize, Serialize};

use crate::event::EventType;

/// How many events of each type an entity has seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub events: u32,
    pub views: u32,
    pub carts: u32,
    pub removes: u32,
    pub purchases: u32,
}

impl Counts {
    /// Counts one event.
    pub fn record(&mut self, event_type: EventType) {
        self.events += 1;
        match event_type {
            EventType::View => self.views += 1,
            EventType::Cart => self.carts += 1,
            EventType::RemoveFromCart => self.removes += 1,
            EventType::Purchase => self.purchases += 1,
        }
    }

    /// Adds another entity's counts.
    pub fn add(&mut self, other: &Counts) {
        self.events += other.events;
        self.views += other.views;
        self.carts += other.carts;
        self.removes += other.removes;
        self.purchases += other.purchases;
    }
}

/// `numerator / denominator`, or 0 when there is nothing to divide by.
pub fn ratio(numerator: u32, denominator: u32) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        f64::from(numerator) / f64::from(denominator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_each_type() {
        let mut counts = Counts::default();
        for event_type in EventType::ALL {
            counts.record(event_type);
        }
        counts.record(EventType::View);
        assert_eq!(
            counts,
            Counts {
                events: 5,
                views: 2,
                carts: 1,
                removes: 1,
                purchases: 1
            }
        );
    }

    #[test]
    fn ratio_of_nothing_is_zero() {
        assert_eq!(ratio(3, 0), 0.0);
        assert_eq!(ratio(1, 4), 0.25);
    }
}
