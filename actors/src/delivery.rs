//! Delivery bookkeeping: what the bus says about each event, and the guards that make applying a
//! redelivered event idempotent per entity. None of it is domain state: it rides beside the
//! states ([`Stored`]), and the feature state machines never see it.
//!
//! A broker redelivers every message it has not seen acknowledged, and the service acknowledges
//! only after a durable flush. A redelivered event may therefore already be in an entity's stored
//! state, or in some entities' state and not in others' when a flush was cut short. Each entity
//! remembers the identities of the events it applied since the durable flush before its last one,
//! and stores them with its state; a redelivered event is applied only to the entities that do
//! not remember it. Offline replay records nothing: nothing is ever redelivered there.

use serde::{Deserialize, Serialize};

use crate::event::{Event, EventType, Millis};
use crate::features::session::{self, SessionStep};
use crate::features::{SessionState, UserState};

/// One event as the bus handed it over.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub event: Event,
    /// The bus may have delivered it before (a crash or a lost acknowledgement): it is applied
    /// only to the entities that do not remember it.
    pub redelivered: bool,
    /// The bus partition it came from; the catalog keeps a part of each product per partition
    /// (see [`crate::features::product`]). 0 offline and on the HTTP bus.
    pub source: u16,
}

impl Delivery {
    /// An event delivered for the first time, from the only source (offline, HTTP).
    pub fn fresh(event: Event) -> Delivery {
        Delivery {
            event,
            redelivered: false,
            source: 0,
        }
    }
}

/// Part of a batch of deliveries: the whole batch, shared by every actor that takes a part of
/// it, and the positions of this part in it, in order. Deliveries are never copied on their way
/// from the shard to users, sessions and catalog partitions.
#[derive(Clone, Debug)]
pub struct BatchPart {
    batch: std::sync::Arc<[Delivery]>,
    positions: Vec<u32>,
}

impl BatchPart {
    /// The whole batch.
    pub fn whole(batch: std::sync::Arc<[Delivery]>) -> BatchPart {
        let positions = (0..batch.len() as u32).collect();
        BatchPart { batch, positions }
    }

    /// The deliveries at `positions` (in the batch, in order) of the same batch.
    pub fn part(&self, positions: Vec<u32>) -> BatchPart {
        BatchPart {
            batch: self.batch.clone(),
            positions,
        }
    }

    /// The positions of this part in the batch, in order.
    pub fn positions(&self) -> &[u32] {
        &self.positions
    }

    /// The delivery at a position of the batch.
    pub fn at(&self, position: u32) -> &Delivery {
        &self.batch[position as usize]
    }

    /// This part's deliveries, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Delivery> + '_ {
        self.positions.iter().map(|position| self.at(*position))
    }

    /// How many deliveries this part holds.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// Whether this part holds none.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Copies of this part's deliveries, for a caller that retries them.
    pub fn to_vec(&self) -> Vec<Delivery> {
        self.iter().cloned().collect()
    }
}

/// An entity's state with the guard that rides with it: what the store saves and loads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stored<T> {
    pub state: T,
    pub guard: DeliveryGuard,
}

impl<T> Stored<T> {
    /// A state that remembers no delivery.
    pub fn new(state: T) -> Self {
        Stored {
            state,
            guard: DeliveryGuard::default(),
        }
    }
}

/// How a user takes an event: the first of the three steps every event goes through (then its
/// session, then the user's history).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The user applied an event with the same identity recently: nothing changes anywhere.
    Duplicate,
    /// Apply it to the session and the user.
    New,
    /// A redelivery the user's state already holds: only the session applies it, if it lacks it.
    HeldByUser,
}

/// Decides whether an event is new to its user (`None`: the user has no state yet).
pub fn admit(
    user: Option<&UserState>,
    guard: &DeliveryGuard,
    identity: u64,
    redelivered: bool,
) -> Admission {
    if redelivered && guard.contains(identity) {
        Admission::HeldByUser
    } else if user.is_some_and(|user| user.has_seen(identity)) {
        Admission::Duplicate
    } else {
        Admission::New
    }
}

/// Applies an admitted event to its session, unless the session's guard remembers it; `record`
/// makes the guard remember it (a bus that redelivers).
pub fn apply_to_session(
    session: &mut Option<SessionState>,
    guard: &mut DeliveryGuard,
    event: &Event,
    identity: u64,
    redelivered: bool,
    timeout: Millis,
    record: bool,
) -> SessionStep {
    if redelivered && guard.contains(identity) {
        // Stores make users durable before sessions, so a session never holds an event its user
        // lacks; should it happen, the user still counts the event once.
        let purchases = session
            .as_ref()
            .map_or(0, |session| session.counts.purchases);
        return SessionStep {
            started: false,
            first_purchase: event.event_type == EventType::Purchase && purchases <= 1,
            closed: None,
        };
    }
    let step = session::enter(session, event, timeout);
    if record {
        guard.record(identity);
    }
    step
}

/// Applies an admitted event to the user's history after its session took it (`user` is
/// created on the user's first event).
pub fn apply_to_user(
    user: &mut UserState,
    guard: &mut DeliveryGuard,
    event: &Event,
    identity: u64,
    admission: Admission,
    step: &SessionStep,
    record: bool,
) {
    if admission != Admission::New {
        return;
    }
    if step.started {
        user.start_session();
    }
    user.apply(event, identity, step.first_purchase);
    if record {
        guard.record(identity);
    }
}

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
