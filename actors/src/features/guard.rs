//! Delivery bookkeeping that makes applying a redelivered event idempotent per entity.
//!
//! A broker redelivers every message it has not seen acknowledged, and the service acknowledges
//! only after a durable flush. A redelivered event may therefore already be in an entity's stored
//! state, or in some entities' state and not in others' when a flush was cut short. Each entity
//! remembers the identities of the events it applied since the durable flush before its last one,
//! and stores them with its state; a redelivered event is applied only to the entities that do
//! not remember it. Offline replay records nothing: nothing is ever redelivered there.

use serde::{Deserialize, Serialize};

/// Identities an entity applied and the bus may deliver again: those recorded since the
/// acknowledgement before the last one.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DeliveryGuard {
    identities: Vec<u64>,
    /// How many of the identities were recorded before the latest acknowledgement.
    older: u32,
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

    /// How many identities are remembered.
    pub fn len(&self) -> usize {
        self.identities.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
    }

    /// The bus acknowledged every event applied so far, after a flush of every entity: the
    /// identities recorded before the previous acknowledgement can go (one acknowledgement is
    /// kept in reserve, in case it was lost with its connection).
    pub fn forget_acknowledged(&mut self) {
        self.identities.drain(..self.older as usize);
        self.older = self.identities.len() as u32;
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
    fn keeps_identities_until_the_acknowledgement_after_theirs() {
        let mut guard = DeliveryGuard::default();
        guard.record(1);
        guard.record(2);
        guard.forget_acknowledged();
        assert!(
            guard.contains(1) && guard.contains(2),
            "one acknowledgement in reserve"
        );
        guard.record(3);
        guard.forget_acknowledged();
        assert!(!guard.contains(1) && !guard.contains(2));
        assert!(guard.contains(3));
        guard.forget_acknowledged();
        assert!(guard.is_empty());
    }
}
