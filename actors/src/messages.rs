//! Payloads that cross actors: what a batch did, what was refused, and the broadcasts every
//! stateful actor handles. Messages only one actor handles live in its file.

use actix::prelude::*;

use crate::delivery::Delivery;
use crate::event::Millis;
use crate::features::{PreviousSession, SessionKey, SessionState};
use crate::store::StoreError;

/// A live session as its actor last saw it: which one (its key and start), its latest event, and
/// the session it replaced under the same key, whose end must be counted if it is not yet.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionSeen {
    pub key: SessionKey,
    pub started_at: Millis,
    pub last_event_at: Millis,
    pub previous: Option<PreviousSession>,
}

impl SessionSeen {
    /// How `session` looks now.
    pub fn of(session: &SessionState) -> SessionSeen {
        SessionSeen {
            key: session.key(),
            started_at: session.started_at,
            last_event_at: session.last_event_at,
            previous: session.previous.as_deref().cloned(),
        }
    }
}

/// What a batch did.
#[derive(Clone, Copy, Debug, Default, MessageResponse)]
pub struct BatchApplied {
    pub applied: u64,
    pub duplicates: u64,
}

/// Deliveries not applied, none of them, because the store could not load the state they need;
/// they come back so the caller can retry them (as redeliveries: the entities that applied
/// other events of their batch skip nothing they lack).
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Refused {
    pub error: StoreError,
    pub deliveries: Vec<Delivery>,
}

/// The bus acknowledged everything applied before the last flush: delivery guards forget what
/// the acknowledgement before covered.
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct ForgetAcknowledged;

/// Drops everything in memory, flushed or not, to activate from the store on next use: an
/// instance that lost its bus connection may no longer own its partitions, and whatever it had
/// not flushed the bus redelivers to whichever instance does.
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct DropAll;
