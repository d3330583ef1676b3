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
/// acknowledgement before the last one. Empty, as it always is outside the bus, it takes one
/// pointer: a million live sessions pay 8 bytes each for it, not 32.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(from = "Recorded", into = "Recorded")]
pub struct DeliveryGuard(Option<Box<Recorded>>);

/// What a non-empty guard holds, and the stored form of every guard.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Recorded {
    identities: Vec<u64>,
    /// How many of the identities were recorded before the latest acknowledgement.
    older: u32,
}

impl From<Recorded> for DeliveryGuard {
    fn from(recorded: Recorded) -> Self {
        DeliveryGuard((!recorded.identities.is_empty()).then(|| Box::new(recorded)))
    }
}

impl From<DeliveryGuard> for Recorded {
    fn from(guard: DeliveryGuard) -> Self {
        guard.0.map(|recorded| *recorded).unwrap_or_default()
    }
}

impl DeliveryGuard {
    /// Whether the entity applied an event with this identity recently.
    pub fn contains(&self, identity: u64) -> bool {
        self.0
            .as_ref()
            .is_some_and(|recorded| recorded.identities.contains(&identity))
    }

    /// Remembers an applied event.
    pub fn record(&mut self, identity: u64) {
        self.0.get_or_insert_default().identities.push(identity);
    }

    /// How many identities are remembered.
    pub fn len(&self) -> usize {
        self.0
            .as_ref()
            .map_or(0, |recorded| recorded.identities.len())
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The bus acknowledged every event applied so far, after a flush of every entity: the
    /// identities recorded before the previous acknowledgement can go (one acknowledgement is
    /// kept in reserve, in case it was lost with its connection). A guard left empty frees its
    /// memory.
    pub fn forget_acknowledged(&mut self) {
        if let Some(recorded) = &mut self.0 {
            recorded.identities.drain(..recorded.older as usize);
            recorded.older = recorded.identities.len() as u32;
            if recorded.identities.is_empty() {
                self.0 = None;
            }
        }
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

    #[test]
    fn stores_as_before_and_takes_one_pointer() {
        assert_eq!(std::mem::size_of::<DeliveryGuard>(), 8);
        let mut guard = DeliveryGuard::default();
        guard.record(7);
        guard.forget_acknowledged();
        guard.record(8);
        let text = serde_json::to_string(&guard).unwrap();
        assert_eq!(text, r#"{"identities":[7,8],"older":1}"#);
        let back: DeliveryGuard = serde_json::from_str(&text).unwrap();
        assert!(back.contains(7) && back.contains(8) && back.len() == 2);
        let empty = serde_json::to_string(&DeliveryGuard::default()).unwrap();
        assert_eq!(empty, r#"{"identities":[],"older":0}"#);
        assert!(
            serde_json::from_str::<DeliveryGuard>(&empty)
                .unwrap()
                .is_empty()
        );
    }
}
