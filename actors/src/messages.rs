//! Payloads that cross actors: what a batch did, what was refused, and the broadcasts every
//! stateful actor handles. Messages only one actor handles live in its file.

use actix::prelude::*;

use crate::delivery::Delivery;
use crate::store::StoreError;

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
