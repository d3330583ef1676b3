//! `ShardActor`: the registry and router of one partition of the users, on its own arbiter. It
//! activates a [`UserActor`] per live user and a [`SessionActor`] per live session on that
//! arbiter, hands each batch on as one message per user (the user hands each of its sessions
//! one), ends sessions once the event-time watermark passes their deadline, passivates idle
//! users, writes the state of users and sessions behind ([`WriteBehind`]) and forwards what was
//! applied to the catalog partitions. It owns none of the entities' fields: only their addresses
//! and deadlines.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use futures_util::future::{Either, join_all};

use crate::catalog::{CatalogActor, CatalogBatch, Sources};
use crate::delivery::{BatchPart, Delivery, Stored};
use crate::event::Millis;
use crate::features::{SessionKey, SessionState, UserState};
use crate::lifecycle::EntityContext;
use crate::messages::{BatchApplied, DropAll, ForgetAcknowledged, Refused};
use crate::session::{Closing, SessionActor};
use crate::store::{Observer, StateBatch, StoreError};
use crate::user::{
    CloseSessions, Passivate, ReadUser, ReadUserSession, SessionHandle, UserActor, UserApplied,
    UserEvents, UserSideFeatures, UserSnapshot, UserSnapshotTaken,
};
use crate::write_behind::{SaveDone, WriteBehind};

/// How the engine behaves; shared by every shard and catalog partition.
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
    pub sources: Sources,
}

/// A live user.
struct UserEntry {
    addr: Addr<UserActor>,
    /// Batches handed to it and not answered yet.
    in_flight: u32,
    /// Its sessions with an actor.
    live_sessions: u32,
    /// Its latest event (or, activated by a read, the watermark then).
    last_active: Millis,
}

/// A live session.
struct SessionEntry {
    addr: Addr<SessionActor>,
    /// It ends once the watermark passes this: its latest event plus the session timeout.
    deadline: Millis,
}

/// Keys by the coarse time their deadline falls in: ending what is due costs what is due, not
/// what is live. A key whose deadline moves is queued again under its new bucket; its old entry
/// is skipped when it comes up.
struct Deadlines<K> {
    width: Millis,
    buckets: BTreeMap<i64, Vec<K>>,
}

impl<K> Deadlines<K> {
    fn new(width: Millis) -> Self {
        Deadlines {
            width: width.max(1),
            buckets: BTreeMap::new(),
        }
    }

    fn bucket(&self, deadline: Millis) -> i64 {
        deadline.div_euclid(self.width)
    }

    /// Queues `key` under `deadline` unless it is queued in that bucket already (`previous`).
    fn push(&mut self, key: K, deadline: Millis, previous: Option<Millis>) {
        let bucket = self.bucket(deadline);
        if previous.is_some_and(|previous| self.bucket(previous) == bucket) {
            return;
        }
        self.buckets.entry(bucket).or_default().push(key);
    }

    /// The keys of every bucket that lies wholly before `now`.
    fn due(&mut self, now: Millis) -> Vec<K> {
        let mut due = Vec::new();
        while let Some(entry) = self.buckets.first_entry() {
            if (*entry.key() + 1).saturating_mul(self.width) > now {
                break;
            }
            due.extend(entry.remove());
        }
        due
    }
}

/// One partition of users.
pub struct ShardActor {
    index: usize,
    settings: ShardSettings,
    entities: Arc<EntityContext>,
    observer: Arc<dyn Observer>,
    catalogs: Arc<Vec<Addr<CatalogActor>>>,
    users: HashMap<u64, UserEntry>,
    sessions: HashMap<SessionKey, SessionEntry>,
    session_deadlines: Deadlines<SessionKey>,
    idle_users: Deadlines<u64>,
    watermark: Millis,
    write_behind: WriteBehind,
    /// Users that changed since their last snapshot.
    dirty: HashSet<u64>,
    /// Users whose guards (or their sessions') may remember deliveries, with the
    /// acknowledgements left before they remember none.
    guarded: HashMap<u64, u8>,
    /// Sessions that ended, to be written with the next flush.
    ended: Vec<Stored<SessionState>>,
    /// A flush is taking snapshots or writing.
    flushing: bool,
    /// Bumped by [`DropAll`]: answers from actors of an earlier generation are ignored.
    generation: u64,
}

impl ShardActor {
    /// A shard with no entity yet.
    pub fn new(
        index: usize,
        settings: ShardSettings,
        entities: Arc<EntityContext>,
        catalogs: Arc<Vec<Addr<CatalogActor>>>,
        observer: Arc<dyn Observer>,
    ) -> Self {
        let minute = 60_000;
        ShardActor {
            index,
            session_deadlines: Deadlines::new(minute.max(settings.session_timeout / 8)),
            idle_users: Deadlines::new(minute.max(settings.user_idle / 8)),
            settings,
            write_behind: WriteBehind::new(entities.store.clone(), observer.clone()),
            entities,
            observer,
            catalogs,
            users: HashMap::new(),
            sessions: HashMap::new(),
            watermark: Millis::MIN,
            dirty: HashSet::new(),
            guarded: HashMap::new(),
            ended: Vec::new(),
            flushing: false,
            generation: 0,
        }
    }

    /// The user's entry, activating its actor if it has none.
    fn user(&mut self, user_id: u64) -> &mut UserEntry {
        let (entities, watermark) = (&self.entities, self.watermark);
        let idle_users = &mut self.idle_users;
        let user_idle = self.settings.user_idle;
        self.users.entry(user_id).or_insert_with(|| {
            idle_users.push(user_id, watermark.saturating_add(user_idle), None);
            UserEntry {
                addr: UserActor::new(user_id, entities.clone()).start(),
                in_flight: 0,
                live_sessions: 0,
                last_active: watermark,
            }
        })
    }

    /// The session's actor, activating it if it has none (its user must be live).
    fn session(&mut self, key: SessionKey) -> SessionHandle {
        if let Some(entry) = self.sessions.get(&key) {
            return (key, entry.addr.clone());
        }
        let addr = SessionActor::activate(key, self.watermark, self.entities.clone());
        let deadline = self.watermark.saturating_add(self.settings.session_timeout);
        self.session_deadlines.push(key, deadline, None);
        self.sessions.insert(
            key,
            SessionEntry {
                addr: addr.clone(),
                deadline,
            },
        );
        self.user(key.user_id).live_sessions += 1;
        (key, addr)
    }

    /// Moves a session's deadline after it applied events.
    fn session_active(&mut self, key: SessionKey, last_event_at: Millis) {
        if let Some(entry) = self.sessions.get_mut(&key) {
            let deadline = last_event_at.saturating_add(self.settings.session_timeout);
            if deadline > entry.deadline {
                self.session_deadlines
                    .push(key, deadline, Some(entry.deadline));
                entry.deadline = deadline;
            }
        }
    }

    /// Records what a user's batch did; `sessions` are those handed over with it.
    fn user_applied(
        &mut self,
        (user_id, sessions, batch): (u64, Vec<SessionKey>, &BatchPart),
        reply: UserApplied,
        accepted: &mut Vec<u32>,
        refused: &mut Option<(StoreError, Vec<u32>)>,
        total: &mut BatchApplied,
    ) {
        total.duplicates += reply.duplicates;
        total.applied += reply.accepted.len() as u64;
        let latest = reply
            .accepted
            .iter()
            .map(|position| batch.at(*position).event.time)
            .max();
        if let Some(latest) = latest {
            self.watermark = self.watermark.max(latest);
        }
        if let Some(entry) = self.users.get_mut(&user_id) {
            entry.in_flight -= 1;
            if let Some(latest) = latest.filter(|latest| *latest > entry.last_active) {
                let deadline = latest.saturating_add(self.settings.user_idle);
                let previous = entry.last_active.saturating_add(self.settings.user_idle);
                self.idle_users.push(user_id, deadline, Some(previous));
                entry.last_active = latest;
            }
        }
        if reply.user_failed {
            // The next message activates the user, and its sessions, again. They applied
            // nothing of this batch.
            self.users.remove(&user_id);
            for key in &sessions {
                self.sessions.remove(key);
            }
        }
        for key in reply.failed_sessions {
            if self.sessions.remove(&key).is_some()
                && let Some(user) = self.users.get_mut(&user_id)
            {
                user.live_sessions = user.live_sessions.saturating_sub(1);
            }
        }
        for (key, last_event_at) in reply.last_events {
            self.session_active(key, last_event_at);
        }
        for closed in &reply.closed {
            self.observer.session_closed(closed);
        }
        if reply.changed {
            self.dirty.insert(user_id);
            if self.settings.guard_deliveries {
                self.guarded.insert(user_id, 2);
            }
        }
        accepted.extend(reply.accepted);
        if let Some(error) = reply.refusal {
            refused
                .get_or_insert_with(|| (error, Vec::new()))
                .1
                .extend(reply.refused);
        }
    }

    /// Ends the sessions whose deadline the watermark passed (every session, with `force`):
    /// through their users, so that every event routed to them before is applied first.
    /// Resolves to the number of sessions ended.
    fn close_sessions(&mut self, force: bool) -> impl ActorFuture<Self, Output = usize> + use<> {
        let due: Vec<SessionKey> = if force {
            self.sessions.keys().copied().collect()
        } else {
            self.session_deadlines.due(self.watermark)
        };
        let mut by_user: HashMap<u64, Vec<SessionHandle>> = HashMap::new();
        for key in due {
            let Some(entry) = self.sessions.get(&key) else {
                continue;
            };
            if !force && entry.deadline >= self.watermark {
                // Its deadline moved; it is queued again under the new one.
                continue;
            }
            let user_busy = self
                .users
                .get(&key.user_id)
                .is_some_and(|user| user.in_flight > 0);
            if !force && user_busy {
                // Events on their way may move its deadline: look again once they are applied.
                self.session_deadlines
                    .buckets
                    .entry(self.session_deadlines.bucket(self.watermark))
                    .or_default()
                    .push(key);
                continue;
            }
            let entry = self.sessions.remove(&key).expect("checked above");
            by_user
                .entry(key.user_id)
                .or_default()
                .push((key, entry.addr));
        }
        let (watermark, generation) = (self.watermark, self.generation);
        let closes: Vec<_> = by_user
            .into_iter()
            .filter_map(|(user_id, sessions)| {
                let user = self.users.get(&user_id)?;
                let handles = sessions.clone();
                let sent = user.addr.send(CloseSessions {
                    sessions,
                    watermark,
                    force,
                });
                Some(async move { (user_id, handles, sent.await) })
            })
            .collect();
        fut::wrap_future::<_, Self>(join_all(closes)).map(move |answers, actor, _| {
            if generation != actor.generation {
                return 0;
            }
            let mut ended = 0;
            for (user_id, handles, answer) in answers {
                let closings = answer.unwrap_or_default();
                for (key, closing) in closings {
                    match closing {
                        Closing::Closed(last) => {
                            ended += 1;
                            if let Some(user) = actor.users.get_mut(&user_id) {
                                user.live_sessions = user.live_sessions.saturating_sub(1);
                            }
                            if let Some(last) = last {
                                actor.observer.session_closed(&last.state);
                                actor.ended.push(last);
                            }
                        }
                        Closing::Open { last_event_at } => {
                            let addr = handles
                                .iter()
                                .find(|(handle, _)| *handle == key)
                                .map(|(_, addr)| addr.clone())
                                .expect("a handle per session closed");
                            let deadline =
                                last_event_at.saturating_add(actor.settings.session_timeout);
                            actor.session_deadlines.push(key, deadline, None);
                            actor.sessions.insert(key, SessionEntry { addr, deadline });
                        }
                    }
                }
            }
            ended
        })
    }

    /// Ends what is due, in the background.
    fn expire(&mut self, ctx: &mut Context<Self>) {
        if self
            .session_deadlines
            .buckets
            .first_key_value()
            .is_some_and(|(bucket, _)| {
                (bucket + 1).saturating_mul(self.session_deadlines.width) <= self.watermark
            })
        {
            ctx.spawn(self.close_sessions(false).map(|_, _, _| ()));
        }
    }

    /// Takes snapshots of every changed user and its sessions, then writes them with the ended
    /// sessions. Resolves to the rows written.
    fn flush(&mut self) -> impl ActorFuture<Self, Output = Result<usize, StoreError>> + use<> {
        self.flushing = true;
        let generation = self.generation;
        let snapshots: Vec<_> = std::mem::take(&mut self.dirty)
            .into_iter()
            .filter_map(|user_id| self.users.get(&user_id))
            .map(|user| user.addr.send(UserSnapshot))
            .collect();
        fut::wrap_future::<_, Self>(join_all(snapshots)).then(move |answers, actor, _| {
            let mut batch = StateBatch::default();
            if generation == actor.generation {
                for answer in answers {
                    let UserSnapshotTaken { user, sessions } = answer.unwrap_or_default();
                    batch.users.extend(user);
                    batch.sessions.extend(sessions);
                }
                // Ended sessions go after the live ones: a key ended and started again in
                // this batch keeps the new session.
                let mut ended = std::mem::take(&mut actor.ended);
                ended.append(&mut batch.sessions);
                batch.sessions = ended;
            }
            match actor.write_behind.begin(batch) {
                Some(save) => Either::Left(fut::wrap_future::<_, Self>(save).map(
                    |done: SaveDone, actor, _| {
                        actor.flushing = false;
                        let result = actor.write_behind.finish(done);
                        if result.is_ok() {
                            actor.passivate_idle_users();
                        }
                        result
                    },
                )),
                None => {
                    actor.flushing = false;
                    Either::Right(fut::ready(Ok(0)))
                }
            }
        })
    }

    /// Stops the actors of users idle for longer than `user_idle` whose state is durable and
    /// who have no live session; they activate from the store on their next message.
    fn passivate_idle_users(&mut self) {
        if self.write_behind.has_failed_batch() {
            return;
        }
        let idle_before = self.watermark.saturating_sub(self.settings.user_idle);
        for user_id in self.idle_users.due(self.watermark) {
            let Some(entry) = self.users.get(&user_id) else {
                continue;
            };
            if entry.last_active >= idle_before {
                continue;
            }
            if entry.in_flight > 0 || entry.live_sessions > 0 || self.dirty.contains(&user_id) {
                // Not idle after all: look again in a while.
                let again = self.watermark.saturating_add(self.settings.user_idle / 8);
                self.idle_users.push(user_id, again, None);
                continue;
            }
            let entry = self.users.remove(&user_id).expect("checked above");
            self.guarded.remove(&user_id);
            entry.addr.do_send(Passivate);
        }
    }
}

impl Actor for ShardActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(64);
        ctx.run_interval(self.settings.flush_interval, |actor, ctx| {
            if actor.settings.live_watermark {
                actor.watermark = actor.watermark.max(chrono::Utc::now().timestamp_millis());
                actor.expire(ctx);
            }
            if !actor.flushing && !actor.write_behind.is_saving() {
                ctx.spawn(actor.flush().map(|_, _, _| ()));
            }
        });
        tracing::debug!(shard = self.index, "shard started");
    }
}

/// Deliveries of one shard's users, in order. Deliveries whose user or session cannot be
/// loaded come back refused; the rest of the batch is applied.
#[derive(Message)]
#[rtype(result = "Result<BatchApplied, Refused>")]
pub struct ApplyBatch {
    pub deliveries: Vec<Delivery>,
}

impl Handler<ApplyBatch> for ShardActor {
    type Result = ResponseActFuture<Self, Result<BatchApplied, Refused>>;

    fn handle(&mut self, message: ApplyBatch, _: &mut Self::Context) -> Self::Result {
        let batch = BatchPart::whole(message.deliveries.into());
        // One message per user: the positions of its deliveries, in their order.
        let mut order: Vec<u64> = Vec::new();
        let mut by_user: HashMap<u64, Vec<u32>> = HashMap::new();
        for (position, delivery) in batch.iter().enumerate() {
            let user_id = delivery.event.user_id;
            by_user
                .entry(user_id)
                .or_insert_with(|| {
                    order.push(user_id);
                    Vec::new()
                })
                .push(position as u32);
        }
        let mut sends = Vec::with_capacity(order.len());
        for user_id in order {
            let positions = by_user.remove(&user_id).expect("grouped above");
            self.user(user_id);
            let mut sessions: Vec<SessionHandle> = Vec::new();
            for position in &positions {
                let key = SessionKey::of(&batch.at(*position).event);
                if !sessions.iter().any(|(known, _)| *known == key) {
                    sessions.push(self.session(key));
                }
            }
            let keys: Vec<SessionKey> = sessions.iter().map(|(key, _)| *key).collect();
            let user = self.user(user_id);
            user.in_flight += 1;
            let sent = user.addr.send(UserEvents {
                part: batch.part(positions),
                sessions,
            });
            sends.push(async move { (user_id, keys, sent.await) });
        }
        let generation = self.generation;
        Box::pin(fut::wrap_future::<_, Self>(join_all(sends)).map(
            move |answers, actor, ctx| {
                if generation != actor.generation {
                    return Err(Refused {
                        error: StoreError::Unavailable(
                            "the engine dropped its state while the batch applied".into(),
                        ),
                        deliveries: Vec::new(),
                    });
                }
                let mut total = BatchApplied::default();
                let mut accepted = Vec::with_capacity(batch.len());
                let mut refused = None;
                for (user_id, sessions, answer) in answers {
                    match answer {
                        Ok(reply) => actor.user_applied(
                            (user_id, sessions, &batch),
                            reply,
                            &mut accepted,
                            &mut refused,
                            &mut total,
                        ),
                        Err(error) => {
                            if let Some(entry) = actor.users.get_mut(&user_id) {
                                entry.in_flight -= 1;
                            }
                            tracing::error!(shard = actor.index, %error, "a user actor stopped under a batch");
                            return Err(Refused {
                                error: StoreError::Unavailable(error.to_string()),
                                deliveries: Vec::new(),
                            });
                        }
                    }
                }
                // The catalog applies them in the order they came in.
                accepted.sort_unstable();
                let accepted = batch.part(accepted);
                actor.observer.events_applied(&accepted, total.duplicates);
                if !accepted.is_empty() {
                    let batch = CatalogBatch { part: accepted };
                    for catalog in actor.catalogs.iter() {
                        catalog.do_send(batch.clone());
                    }
                }
                actor.expire(ctx);
                match refused {
                    Some((error, mut positions)) => {
                        positions.sort_unstable();
                        Err(Refused {
                            error,
                            deliveries: batch.part(positions).to_vec(),
                        })
                    }
                    None => Ok(total),
                }
            },
        ))
    }
}

/// The user-side features of a session for each of some products.
#[derive(Message)]
#[rtype(result = "Vec<f64>")]
pub struct ScoreFeatures {
    pub key: SessionKey,
    pub product_ids: Vec<u64>,
}

impl Handler<ScoreFeatures> for ShardActor {
    type Result = ResponseFuture<Vec<f64>>;

    fn handle(&mut self, message: ScoreFeatures, _: &mut Self::Context) -> Self::Result {
        let session = self.session(message.key);
        let width = crate::features::USER_SIDE_COUNT * message.product_ids.len();
        let sent = self.user(message.key.user_id).addr.send(UserSideFeatures {
            session,
            product_ids: message.product_ids,
        });
        Box::pin(async move { sent.await.unwrap_or_else(|_| vec![0.0; width]) })
    }
}

/// A session's state, from its actor or the store; a store failure is an error, not "unknown".
#[derive(Message)]
#[rtype(result = "Result<Option<SessionState>, StoreError>")]
pub struct GetSession {
    pub key: SessionKey,
}

impl Handler<GetSession> for ShardActor {
    type Result = ResponseFuture<Result<Option<SessionState>, StoreError>>;

    fn handle(&mut self, message: GetSession, _: &mut Self::Context) -> Self::Result {
        let live = self.sessions.get(&message.key).and_then(|session| {
            let user = self.users.get(&message.key.user_id)?;
            Some(user.addr.send(ReadUserSession(session.addr.clone())))
        });
        match live {
            Some(read) => Box::pin(async move {
                read.await
                    .map_err(|error| StoreError::Unavailable(error.to_string()))?
            }),
            None => {
                let load = self.entities.store.load_session(message.key);
                Box::pin(async move { Ok(load.await?.map(|stored| stored.state)) })
            }
        }
    }
}

/// A user's state, from its actor or the store.
#[derive(Message)]
#[rtype(result = "Result<Option<UserState>, StoreError>")]
pub struct GetUser {
    pub user_id: u64,
}

impl Handler<GetUser> for ShardActor {
    type Result = ResponseFuture<Result<Option<UserState>, StoreError>>;

    fn handle(&mut self, message: GetUser, _: &mut Self::Context) -> Self::Result {
        match self.users.get(&message.user_id) {
            Some(user) => {
                let read = user.addr.send(ReadUser);
                Box::pin(async move {
                    read.await
                        .map_err(|error| StoreError::Unavailable(error.to_string()))?
                })
            }
            None => {
                let load = self.entities.store.load_user(message.user_id);
                Box::pin(async move { Ok(load.await?.map(|stored| stored.state)) })
            }
        }
    }
}

/// Makes everything applied so far durable; with `close_sessions`, first ends every live
/// session (end of a replay, or shutdown).
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
    type Result = ResponseActFuture<Self, Result<FlushDone, StoreError>>;

    fn handle(&mut self, message: FlushNow, _: &mut Self::Context) -> Self::Result {
        if self.flushing || self.write_behind.is_saving() {
            return Box::pin(fut::ready(Err(StoreError::Busy)));
        }
        self.flushing = true;
        let closing = message.close_sessions.then(|| self.close_sessions(true));
        Box::pin(
            async {}
                .into_actor(self)
                .then(move |_, _, _| match closing {
                    Some(closing) => Either::Left(closing),
                    None => Either::Right(fut::ready(0)),
                })
                .then(|sessions_closed, actor, _| {
                    actor.flush().map(move |result, _, _| {
                        result.map(|rows| FlushDone {
                            rows,
                            sessions_closed,
                        })
                    })
                }),
        )
    }
}

impl Handler<ForgetAcknowledged> for ShardActor {
    type Result = ();

    fn handle(&mut self, message: ForgetAcknowledged, _: &mut Self::Context) {
        let users = &self.users;
        self.guarded.retain(|user_id, left| {
            let Some(user) = users.get(user_id) else {
                return false;
            };
            user.addr.do_send(message);
            *left -= 1;
            *left > 0
        });
    }
}

impl Handler<DropAll> for ShardActor {
    type Result = ();

    fn handle(&mut self, _: DropAll, _: &mut Self::Context) {
        self.generation += 1;
        // Dropping the addresses stops the actors once their mailboxes are empty.
        self.users = HashMap::new();
        self.sessions = HashMap::new();
        self.session_deadlines.buckets.clear();
        self.idle_users.buckets.clear();
        self.dirty = HashSet::new();
        self.guarded = HashMap::new();
        self.ended = Vec::new();
        self.write_behind.drop_pending();
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
            live_sessions: self.sessions.len(),
            users: self.users.len(),
            watermark: self.watermark,
            store_healthy: self.write_behind.is_healthy(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_come_due_by_bucket_and_skip_nothing() {
        let mut deadlines = Deadlines::new(10);
        deadlines.push(1, 5, None);
        deadlines.push(2, 15, None);
        deadlines.push(2, 17, Some(15));
        deadlines.push(3, 25, None);
        assert!(deadlines.due(9).is_empty(), "bucket 0 ends at 10");
        assert_eq!(deadlines.due(10), vec![1]);
        assert_eq!(deadlines.due(30), vec![2, 3], "2 queued once in its bucket");
        assert!(deadlines.buckets.is_empty());
    }
}
