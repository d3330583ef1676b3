//! The lifecycle of every entity actor ([`crate::user::UserActor`],
//! [`crate::session::SessionActor`]), in one place:
//!
//! 1. **Activating**: its shard starts it on the shard's arbiter at the first message for it; it
//!    loads its state from the store while its own mailbox holds whatever arrives for it
//!    (events, score requests). Other entities of the shard keep going meanwhile.
//! 2. **Active**: it applies the batches its shard hands it, one message per batch, and answers
//!    snapshots for the write-behind and score requests. Its state is on the read board
//!    ([`crate::board`]) from the moment it is loaded, for scores to read without a message.
//! 3. **Passivating**: once idle (a user) or ended (a session), its last state goes to the
//!    shard's write-behind and it stops, leaving the board and freeing its memory; the next
//!    message for it activates it again from the store.
//!
//! A failed load leaves the actor [`Phase::Failed`]: it refuses the events it is sent (they go
//! back to the bus or the HTTP client, to be retried), never applying them on fresh state, until
//! its shard drops it and the next message activates a new one.

use std::sync::Arc;

use actix::prelude::*;

use crate::event::Millis;
use crate::store::{StateStore, StoreError, StoreFuture};

/// What the entity actors of one shard share.
pub struct EntityContext {
    pub store: Arc<dyn StateStore>,
    pub session_timeout: Millis,
    /// Keep delivery guards, for a bus that redelivers what it did not see acknowledged.
    pub guard_deliveries: bool,
    /// Where an active entity publishes its state for scores to read (see [`crate::board`]).
    pub board: Arc<crate::board::Board>,
}

/// Where an entity actor is once activated: while it activates, its mailbox waits, so no
/// handler sees that phase; it is passivating once it stopped itself.
#[derive(Debug)]
pub enum Phase {
    /// Its state is in memory.
    Active,
    /// Its state could not be loaded: it refuses what it is sent. Boxed: a million live
    /// sessions pay a pointer for it, not the error's size.
    Failed(Box<StoreError>),
}

/// Activates an actor: its mailbox waits until `load` resolves, then `loaded` puts the state in
/// place. A failed load moves the actor to [`Phase::Failed`] instead.
pub fn activate<A, T>(
    ctx: &mut Context<A>,
    load: StoreFuture<Option<T>>,
    loaded: impl FnOnce(&mut A, Option<T>) + 'static,
    phase: fn(&mut A) -> &mut Phase,
) where
    A: Actor<Context = Context<A>>,
    T: 'static,
{
    ctx.wait(
        fut::wrap_future::<_, A>(load).map(move |result, actor: &mut A, _| match result {
            Ok(state) => loaded(actor, state),
            Err(error) => {
                tracing::warn!(%error, "an entity could not be loaded; its events are refused");
                *phase(actor) = Phase::Failed(Box::new(error));
            }
        }),
    );
}
