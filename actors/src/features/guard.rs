//! Delivery bookkeeping that makes applying a redelivered event idempotent per entity.
//!
//! A broker redelivers every message it has not seen acknowledged, and the service acknowledges
//! only after a durable flush. A redelivered event may therefore already be in an entity's stored
//! state, or in some entities' state and not in others' when a flush was cut short. Each entity
//! remembers the identities of the events it applied since the durable flush before its last one,
//! and stores them with its state; a redelivered event is applied only to the entities that do
//! not remember it. Offline replay records nothing: nothing is ever redelivered there.

use serde::{Deserialize, Serialize};

/// Identities an entity applied recently, in three runs: those of the flush before the last, those
/// of the last durable flush, and those applied since.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DeliveryGuard {
    identities: Vec<u64>,
    /// Length of the first run: applied before the flush before the last.
    older: u32,
    /// Length of the second run: made durable by the last flush.
    last: u32,
}

impl DeliveryGuard {
    /// Whether the entity applied an event with this identity recently.
    pub fn contains(&self, identity: u64) -> bool {
        self.identities.contains(&identity)
    }

    /// Remembers an applied event.
    pub fn record(&mut self, identity: u64) {
        self.identities.push(identity);
    }

    /// How many identities are remembered; a snapshot taken for a flush passes this to
    /// [`Self::flushed`] once the flush is durable.
    pub fn len(&self) -> usize {
        self.identities.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
    }

    /// A flush made a snapshot holding the first `snapshot_len` identities durable: the run
    /// before the last flush is no longer needed.
    pub fn flushed(&mut self, snapshot_len: usize) {
        let older = self.older as usize;
        let previous = older + self.last as usize;
        if snapshot_len < previous || snapshot_len > self.identities.len() {
            // A snapshot older than the last durable flush: that flush already moved on.
            return;
        }
        self.identities.drain(..older);
        self.older = self.last;
        self.last = (snapshot_len - previous) as u32;
    }
}

/// Delivery bookkeeping is not state: two entities with equal features are equal whatever
/// deliveries they remember, so online state compares equal to an offline replay's.
impl PartialEq for DeliveryGuard {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_two_flushes_and_what_came_after() {
        let mut guard = DeliveryGuard::default();
        for identity in [1, 2, 3] {
            guard.record(identity);
        }
        guard.flushed(3);
        guard.record(4);
        guard.record(5);
        let snapshot = guard.len();
        guard.record(6);
        guard.flushed(snapshot);
        // Flushes remembered: [1 2 3] and [4 5]; 6 came after.
        assert!((1..=6).all(|identity| guard.contains(identity)));
        guard.flushed(guard.len());
        assert!(!guard.contains(3));
        assert!((4..=6).all(|identity| guard.contains(identity)));
        guard.flushed(guard.len());
        assert!(!guard.contains(5));
        assert!(guard.contains(6));
        guard.flushed(guard.len());
        assert!(guard.is_empty());
    }

    #[test]
    fn a_stale_snapshot_changes_nothing() {
        let mut guard = DeliveryGuard::default();
        guard.record(1);
        guard.record(2);
        guard.flushed(2);
        guard.record(3);
        guard.flushed(1);
        assert!((1..=3).all(|identity| guard.contains(identity)));
    }
}
