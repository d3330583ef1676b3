//! `ShardActor`: owns the sessions and users of one partition of user ids on its own arbiter, so
//! each user's events apply in order on one thread. It forwards the events it accepted to the
//! catalog, flushes dirty state to the store, ends idle sessions at the watermark and evicts
//! idle users, who rehydrate from the store on their next event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::catalog::{CatalogActor, CatalogBatch};
use crate::engine::{Applied, SessionKey, UserSide};
use crate::event::{Event, Millis};
use crate::features::{self, SessionState, UserState};
use crate::store::{Observer, StateBatch, StateStore, StoreError};

/// How a shard behaves; shared by every shard of an engine.
#[derive(Clone, Debug)]
pub struct ShardSettings {
    pub session_timeout: Millis,
    /// Users idle this long in event time leave memory once flushed.
    pub user_idle: Millis,
    pub flush_interval: Duration,
    /// Live mode: the wall clock advances the watermark when no events arrive.
    pub live_watermark: bool,
    /// Keep delivery guards, for a bus that redelivers what it did not see acknowledged.
    pub guard_deliveries: bool,
    /// Whether instances share the bus's partitions, and so the catalog's state.
    pub sources: crate::catalog::Sources,
}

/// One partition of users.
pub struct ShardActor {
    index: usize,
    state: UserSide,
    settings: ShardSettings,
    catalog: Addr<CatalogActor>,
    store: Arc<dyn StateStore>,
    observer: Arc<dyn Observer>,
    flushing: bool,
    /// Sessions that ended with changes not yet flushed.
    closed_unflushed: Vec<SessionState>,
    /// A batch whose flush failed, written again with the next one.
    failed_batch: Option<StateBatch>,
    last_flush_error: Option<StoreError>,
}

impl ShardActor {
    /// A shard with no state yet.
    pub fn new(
        index: usize,
        settings: ShardSettings,
        catalog: Addr<CatalogActor>,
        store: Arc<dyn StateStore>,
        observer: Arc<dyn Observer>,
    ) -> Self {
        ShardActor {
            index,
            state: {
                let mut state = UserSide::new(settings.session_timeout, true);
                state.guard_deliveries = settings.guard_deliveries;
                state
            },
            settings,
            catalog,
            store,
            observer,
            flushing: false,
            closed_unflushed: Vec::new(),
            failed_batch: None,
            last_flush_error: None,
        }
    }

    /// Which users and sessions of `events` are not in memory and may be in the store.
    fn missing(&self, events: &[Event]) -> (Vec<u64>, Vec<SessionKey>) {
        let mut users: Vec<u64> = events
            .iter()
            .map(|event| event.user_id)
            .filter(|user_id| !self.state.users.contains_key(user_id))
            .collect();
        users.sort_unstable();
        users.dedup();
        let mut sessions: Vec<SessionKey> = events
            .iter()
            .map(SessionKey::of)
            .filter(|key| !self.state.sessions.contains_key(key))
            .collect();
        sessions.sort_unstable();
        sessions.dedup();
        (users, sessions)
    }

    /// Puts loaded state in memory, never over newer state. A stored session that had already
    /// ended stays ended: it was counted when it closed.
    fn rehydrate(&mut self, users: Vec<UserState>, sessions: Vec<SessionState>) {
        for user in users {
            self.state.users.entry(user.user_id).or_insert(user);
        }
        let deadline = self
            .state
            .watermark()
            .saturating_sub(self.settings.session_timeout);
        for session in sessions {
            if session.last_event_at >= deadline {
                let key = SessionKey::new(session.user_id, &session.session_id);
                self.state.sessions.entry(key).or_insert(session);
            }
        }
    }

    fn apply(
        &mut self,
        events: Vec<Event>,
        redelivered: Vec<bool>,
        sources: Vec<u16>,
    ) -> BatchApplied {
        let mut accepted = Vec::with_capacity(events.len());
        let mut accepted_redelivered = Vec::new();
        let mut accepted_sources = Vec::new();
        let mut duplicates = 0;
        for (index, event) in events.into_iter().enumerate() {
            let again = redelivered.get(index).copied().unwrap_or(false);
            match self.state.apply(&event, again) {
                Applied::Duplicate => duplicates += 1,
                Applied::Changed { closed } => {
                    if let Some(session) = closed {
                        self.observer.session_closed(&session);
                    }
                    if again {
                        accepted_redelivered.resize(accepted.len(), false);
                        accepted_redelivered.push(true);
                    }
                    if let Some(source) = sources.get(index) {
                        accepted_sources.push(*source);
                    }
                    accepted.push(event);
                }
            }
        }
        self.expire(false);
        let applied = accepted.len() as u64;
        self.observer.events_applied(&accepted, duplicates);
        if !accepted.is_empty() {
            self.catalog.do_send(CatalogBatch {
                events: accepted,
                redelivered: accepted_redelivered,
                sources: accepted_sources,
            });
        }
        BatchApplied {
            applied,
            duplicates,
        }
    }

    fn expire(&mut self, force: bool) -> usize {
        let closed = if force {
            self.state.close_all_sessions()
        } else {
            self.state.expire_sessions(false)
        };
        let count = closed.len();
        for session in closed {
            self.observer.session_closed(&session);
            let key = SessionKey::new(session.user_id, &session.session_id);
            if self.state.dirty_sessions.remove(&key) {
                self.closed_unflushed.push(session);
            }
        }
        count
    }

    /// Takes everything not yet durable as one batch, coalesced per entity: a failed batch's
    /// entries give way to newer state of the same entity.
    fn take_dirty(&mut self) -> StateBatch {
        let mut batch = StateBatch::default();
        for key in std::mem::take(&mut self.state.dirty_sessions) {
            if let Some(session) = self.state.sessions.get(&key) {
                batch.sessions.push(session.clone());
            }
        }
        // An ended session left the dirty set when it ended, so it is never in the batch twice.
        batch.sessions.append(&mut self.closed_unflushed);
        for user_id in std::mem::take(&mut self.state.dirty_users) {
            if let Some(user) = self.state.users.get(&user_id) {
                batch.users.push(user.clone());
            }
        }
        if let Some(failed) = self.failed_batch.take() {
            batch.absorb_older(failed);
        }
        batch
    }

    /// Drops users idle for longer than `user_idle` whose state is flushed and who have no live
    /// session.
    fn evict_idle_users(&mut self) {
        let deadline = self
            .state
            .watermark()
            .saturating_sub(self.settings.user_idle);
        let live: std::collections::HashSet<u64> =
            self.state.sessions.keys().map(|key| key.user_id).collect();
        let dirty = &self.state.dirty_users;
        self.state.users.retain(|user_id, user| {
            user.last_event_at >= deadline || live.contains(user_id) || dirty.contains(user_id)
        });
    }

    /// Starts a flush of everything not yet durable, unless one is running.
    fn flush(&mut self) -> Option<ResponseActFuture<Self, Result<usize, StoreError>>> {
        if self.flushing {
            return None;
        }
        let batch = self.take_dirty();
        if batch.is_empty() {
            return None;
        }
        self.flushing = true;
        let rows = batch.len();
        let started = Instant::now();
        let retry = batch.clone();
        Some(Box::pin(self.store.save(batch).into_actor(self).map(
            move |result, actor, _| {
                actor.flushing = false;
                actor.observer.flushed(
                    rows,
                    started.elapsed().as_secs_f64(),
                    result.as_ref().err(),
                );
                match result {
                    Ok(()) => {
                        actor.last_flush_error = None;
                        actor.evict_idle_users();
                        Ok(rows)
                    }
                    Err(error) => {
                        actor.failed_batch = Some(retry);
                        actor.last_flush_error = Some(error.clone());
                        Err(error)
                    }
                }
            },
        )))
    }
}

impl Actor for ShardActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(64);
        ctx.run_interval(self.settings.flush_interval, |actor, ctx| {
            if actor.settings.live_watermark {
                actor
                    .state
                    .advance_watermark(chrono::Utc::now().timestamp_millis());
                actor.expire(false);
            }
            if let Some(flush) = actor.flush() {
                ctx.spawn(flush.map(|_, _, _| ()));
            }
        });
        tracing::debug!(shard = self.index, "shard started");
    }
}

/// Events of one shard's users, in order. Fails, applying nothing, when the users or sessions
/// it needs cannot be loaded: applying them on fresh state would overwrite the stored history.
#[derive(Message)]
#[rtype(result = "Result<BatchApplied, Refused>")]
pub struct ApplyBatch {
    pub events: Vec<Event>,
    /// Which events the bus redelivered, by index; missing entries are fresh deliveries.
    pub redelivered: Vec<bool>,
    /// The bus partition of each event, by index, or empty: one source (see
    /// [`crate::catalog::Sources`]).
    pub sources: Vec<u16>,
}

/// A batch a shard did not apply, none of it, because the store could not load the users or
/// sessions it needs; the events come back so the caller can retry them.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Refused {
    pub error: StoreError,
    pub events: Vec<Event>,
    pub sources: Vec<u16>,
}

/// What a batch did.
#[derive(Clone, Copy, Debug, Default, MessageResponse)]
pub struct BatchApplied {
    pub applied: u64,
    pub duplicates: u64,
}

impl Handler<ApplyBatch> for ShardActor {
    type Result = AtomicResponse<Self, Result<BatchApplied, Refused>>;

    fn handle(&mut self, message: ApplyBatch, _: &mut Self::Context) -> Self::Result {
        let (users, sessions) = self.missing(&message.events);
        if users.is_empty() && sessions.is_empty() {
            let applied = self.apply(message.events, message.redelivered, message.sources);
            return AtomicResponse::new(Box::pin(fut::ready(Ok(applied))));
        }
        // Atomic: no later batch may run before this one's state is loaded and applied.
        AtomicResponse::new(Box::pin(self.store.load_user_side(users, sessions).into_actor(self).map(
            move |loaded, actor, _| match loaded {
                Ok((users, sessions)) => {
                    actor.rehydrate(users, sessions);
                    Ok(actor.apply(message.events, message.redelivered, message.sources))
                }
                Err(error) => {
                    tracing::warn!(shard = actor.index, %error, "rehydration failed; the batch is refused");
                    Err(Refused { error, events: message.events, sources: message.sources })
                }
            },
        )))
    }
}

/// The user-side features for a session and each of some products.
#[derive(Message)]
#[rtype(result = "Vec<f64>")]
pub struct UserSideFeatures {
    pub key: SessionKey,
    pub product_ids: Vec<u64>,
}

impl Handler<UserSideFeatures> for ShardActor {
    type Result = AtomicResponse<Self, Vec<f64>>;

    fn handle(&mut self, message: UserSideFeatures, _: &mut Self::Context) -> Self::Result {
        let compute = |actor: &ShardActor, message: &UserSideFeatures| {
            let mut out = vec![0.0; message.product_ids.len() * features::USER_SIDE_COUNT];
            for (index, product_id) in message.product_ids.iter().enumerate() {
                let slice = &mut out
                    [index * features::USER_SIDE_COUNT..(index + 1) * features::USER_SIDE_COUNT];
                actor.state.features(message.key, *product_id, slice);
            }
            out
        };
        let user_missing = !self.state.users.contains_key(&message.key.user_id);
        let session_missing = !self.state.sessions.contains_key(&message.key);
        if !user_missing && !session_missing {
            return AtomicResponse::new(Box::pin(fut::ready(compute(self, &message))));
        }
        // Scoring a user or session not in memory answers from the store, or from nothing.
        let users = if user_missing {
            vec![message.key.user_id]
        } else {
            Vec::new()
        };
        let sessions = if session_missing {
            vec![message.key]
        } else {
            Vec::new()
        };
        AtomicResponse::new(Box::pin(
            self.store
                .load_user_side(users, sessions)
                .into_actor(self)
                .map(move |loaded, actor, _| {
                    // Scoring keeps answering from what is in memory when the store fails.
                    match loaded {
                        Ok((users, sessions)) => actor.rehydrate(users, sessions),
                        Err(error) => tracing::warn!(%error, "store unavailable while scoring; using what is in memory"),
                    }
                    compute(actor, &message)
                }),
        ))
    }
}

/// A session's state, from memory or the store; a store failure is an error, not "unknown".
#[derive(Message)]
#[rtype(result = "Result<Option<SessionState>, StoreError>")]
pub struct GetSession {
    pub key: SessionKey,
}

impl Handler<GetSession> for ShardActor {
    type Result = ResponseActFuture<Self, Result<Option<SessionState>, StoreError>>;

    fn handle(&mut self, message: GetSession, _: &mut Self::Context) -> Self::Result {
        if let Some(session) = self.state.sessions.get(&message.key) {
            return Box::pin(fut::ready(Ok(Some(session.clone()))));
        }
        Box::pin(
            self.store
                .load_user_side(Vec::new(), vec![message.key])
                .into_actor(self)
                .map(|loaded, _, _| loaded.map(|(_, mut sessions)| sessions.pop())),
        )
    }
}

/// A user's state, from memory or the store.
#[derive(Message)]
#[rtype(result = "Result<Option<UserState>, StoreError>")]
pub struct GetUser {
    pub user_id: u64,
}

impl Handler<GetUser> for ShardActor {
    type Result = ResponseActFuture<Self, Result<Option<UserState>, StoreError>>;

    fn handle(&mut self, message: GetUser, _: &mut Self::Context) -> Self::Result {
        if let Some(user) = self.state.users.get(&message.user_id) {
            return Box::pin(fut::ready(Ok(Some(user.clone()))));
        }
        Box::pin(
            self.store
                .load_user_side(vec![message.user_id], Vec::new())
                .into_actor(self)
                .map(|loaded, _, _| loaded.map(|(mut users, _)| users.pop())),
        )
    }
}

/// Flushes dirty state now; with `close_sessions`, first ends every live session (end of a
/// replay, or shutdown).
#[derive(Message)]
#[rtype(result = "Result<FlushDone, StoreError>")]
pub struct FlushNow {
    pub close_sessions: bool,
}

/// What a forced flush did.
#[derive(Clone, Copy, Debug, Default)]
pub struct FlushDone {
    pub rows: usize,
    pub sessions_closed: usize,
}

impl Handler<FlushNow> for ShardActor {
    type Result = AtomicResponse<Self, Result<FlushDone, StoreError>>;

    fn handle(&mut self, message: FlushNow, _: &mut Self::Context) -> Self::Result {
        let sessions_closed = if message.close_sessions {
            self.expire(true)
        } else {
            0
        };
        if self.flushing {
            return AtomicResponse::new(Box::pin(fut::ready(Err(StoreError::Busy))));
        }
        match self.flush() {
            Some(flush) => AtomicResponse::new(Box::pin(flush.map(move |result, _, _| {
                result.map(|rows| FlushDone {
                    rows,
                    sessions_closed,
                })
            }))),
            None => AtomicResponse::new(Box::pin(fut::ready(Ok(FlushDone {
                rows: 0,
                sessions_closed,
            })))),
        }
    }
}

/// The bus acknowledged everything applied so far, after a flush of every actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ForgetAcknowledged;

impl Handler<ForgetAcknowledged> for ShardActor {
    type Result = ();

    fn handle(&mut self, _: ForgetAcknowledged, _: &mut Self::Context) {
        self.state.forget_acknowledged();
    }
}

/// Drops everything in memory, flushed or not, to rehydrate from the store on next use: an
/// instance that lost its bus connection may no longer own its partitions, and whatever it had
/// not flushed the bus redelivers to whichever instance does.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DropAll;

impl Handler<DropAll> for ShardActor {
    type Result = ();

    fn handle(&mut self, _: DropAll, _: &mut Self::Context) {
        self.state.drop_all();
        self.closed_unflushed.clear();
        self.failed_batch = None;
    }
}

/// Counts of what the shard holds.
#[derive(Message)]
#[rtype(result = "ShardStats")]
pub struct GetShardStats;

/// What a shard holds now.
#[derive(Clone, Copy, Debug, Default, MessageResponse)]
pub struct ShardStats {
    pub live_sessions: usize,
    pub users: usize,
    pub watermark: Millis,
    pub store_healthy: bool,
}

impl Handler<GetShardStats> for ShardActor {
    type Result = ShardStats;

    fn handle(&mut self, _: GetShardStats, _: &mut Self::Context) -> ShardStats {
        ShardStats {
            live_sessions: self.state.sessions.len(),
            users: self.state.users.len(),
            watermark: self.state.watermark(),
            store_healthy: self.last_flush_error.is_none(),
        }
    }
}
