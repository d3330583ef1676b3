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
use crate::foreign::ForeignCopies;
use crate::lifecycle::EntityContext;
use crate::messages::{BatchApplied, DropAll, ForgetAcknowledged, Refused, SessionSeen};
use crate::outcomes::{OpenSession, SessionEnd};
use crate::session::{CloseSession, Closing, Known, SessionActor, SessionView};
use crate::store::{Observer, StateBatch, StoreError, Transition};
use crate::user::{
    CloseSessions, Passivate, ReadUser, ReadUserSession, SessionHandle, UserActor, UserApplied,
    UserEvents, UserSide, UserSideFeatures, UserSnapshot, UserSnapshotTaken,
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
    /// How many distinct users must have reached an event time before sessions end by it
    /// (see [`crate::clock`]).
    pub watermark_quorum: usize,
    /// When instances share the partitions: how old a copy of another instance's user or
    /// session may be when it answers a read (see [`crate::foreign`]).
    pub foreign_max_age: Duration,
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
    /// Its bus partition, once an event of it came (0 until then).
    source: u16,
}

/// A live session: in memory, or only in the store's index of live sessions (after a restart
/// or a takeover) until its next event or its end activates it.
struct SessionEntry {
    addr: Option<Addr<SessionActor>>,
    /// It ends once its partition's watermark passes this: its latest event plus the session
    /// timeout. Read from the index, it may be early; ending then checks the session itself.
    deadline: Millis,
    /// The bus partition of its user.
    source: u16,
    /// The start of the session the index holds under this key, once known.
    indexed: Option<Millis>,
}

/// A session on its way to its end.
#[derive(Clone)]
struct Ending {
    key: SessionKey,
    addr: Addr<SessionActor>,
    source: u16,
    indexed: Option<Millis>,
}

/// Event time of one bus partition, and the sessions it ends.
struct SourceClock {
    /// The partition's event time, as the engine's clock of the partition gave it (see
    /// [`crate::clock`]), or the wall clock in live mode.
    watermark: Millis,
    deadlines: Deadlines<SessionKey>,
}

impl SourceClock {
    fn watermark(&self) -> Millis {
        self.watermark
    }
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

    /// The keys of every bucket that starts at or before `now`: every key due by `now`, and
    /// some due later, for a caller that checks each and queues those again.
    fn due_through(&mut self, now: Millis) -> Vec<K> {
        let mut due = Vec::new();
        while let Some(entry) = self.buckets.first_entry() {
            if entry.key().saturating_mul(self.width) > now {
                break;
            }
            due.extend(entry.remove());
        }
        due
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

/// Which sessions a flush ends first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// Those in deadline buckets wholly before their partition's watermark: cheap, and late by
    /// at most a bucket.
    Buckets,
    /// Every session whose deadline is before its partition's watermark, to the millisecond (a
    /// flush asked for: what is durable is exactly what is due).
    Exactly,
    /// Every live session (the end of a replay, or shutdown).
    All,
}

/// One partition of users.
pub struct ShardActor {
    index: usize,
    settings: ShardSettings,
    entities: Arc<EntityContext>,
    observer: Arc<dyn Observer>,
    catalogs: Arc<Vec<Addr<CatalogActor>>>,
    /// How many shards share the users, for this one to know its own.
    shards: usize,
    users: HashMap<u64, UserEntry>,
    sessions: HashMap<SessionKey, SessionEntry>,
    /// Per bus partition: each partition's events come in order, so each has its own event time.
    clocks: HashMap<u16, SourceClock>,
    idle_users: Deadlines<u64>,
    /// The latest event time over every partition, for users' idleness.
    watermark: Millis,
    write_behind: WriteBehind,
    /// Session transitions since the last flush, in order, for the store's index and tallies.
    transitions: Vec<Transition>,
    /// Users that changed since their last snapshot.
    dirty: HashSet<u64>,
    /// Users whose guards (or their sessions') may remember deliveries, with the
    /// acknowledgements left before they remember none.
    guarded: HashMap<u64, u8>,
    /// Sessions that ended, to be written with the next flush; reads and activations see them
    /// here until then.
    ended: HashMap<SessionKey, Stored<SessionState>>,
    /// Sessions whose end is on its way through their user, with the reads waiting for it: until
    /// the end is answered, neither the shard nor the store has the session's last state. An
    /// event for one of them meanwhile starts a new session: its actor takes whatever the store
    /// holds as ended.
    closing: HashMap<SessionKey, Vec<tokio::sync::oneshot::Sender<()>>>,
    /// A flush is taking snapshots or writing.
    flushing: bool,
    /// Bumped by [`DropAll`]: answers from actors of an earlier generation are ignored.
    generation: u64,
    /// When instances share the partitions: copies of the users and sessions of others.
    foreign: Option<ForeignCopies>,
    /// Set when a save found a partition owned by another instance: nothing more is applied
    /// or flushed until the engine drops its state (the consumer reconnects, and the broker
    /// redelivers what was not acknowledged).
    fenced: Option<u16>,
}

impl ShardActor {
    /// Shard `index` of `shards`, with no entity yet.
    pub fn new(
        (index, shards): (usize, usize),
        settings: ShardSettings,
        entities: Arc<EntityContext>,
        catalogs: Arc<Vec<Addr<CatalogActor>>>,
        observer: Arc<dyn Observer>,
    ) -> Self {
        let minute = 60_000;
        let foreign = match settings.sources {
            Sources::Single => None,
            Sources::Shared { partitions, .. } => {
                Some(ForeignCopies::new(settings.foreign_max_age, partitions))
            }
        };
        ShardActor {
            foreign,
            index,
            shards,
            clocks: HashMap::new(),
            transitions: Vec::new(),
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
            ended: HashMap::new(),
            closing: HashMap::new(),
            flushing: false,
            generation: 0,
            fenced: None,
        }
    }

    /// Whether reads of this session go to a copy: instances share the partitions and this
    /// one runs neither the user nor the session (it does not consume their partition, or has
    /// not seen them since it does).
    fn is_foreign(&self, key: SessionKey) -> bool {
        self.foreign.is_some()
            && !self.users.contains_key(&key.user_id)
            && !self.sessions.contains_key(&key)
            && !self.ended.contains_key(&key)
            && !self.closing.contains_key(&key)
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
                source: 0,
            }
        })
    }

    /// A partition's clock, started at the first event time it sees.
    fn clock(&mut self, source: u16) -> &mut SourceClock {
        let width = 60_000.max(self.settings.session_timeout / 8);
        self.clocks.entry(source).or_insert_with(|| SourceClock {
            watermark: Millis::MIN,
            deadlines: Deadlines::new(width),
        })
    }

    /// The session's actor, activating it if it has none (its user must be live); `source` is
    /// its user's bus partition.
    fn session(&mut self, key: SessionKey, source: u16) -> SessionHandle {
        if let Some(addr) = self.sessions.get(&key).and_then(|entry| entry.addr.clone()) {
            return (key, addr);
        }
        let watermark = self.clock(source).watermark();
        let known = Known {
            open: self.sessions.get(&key).and_then(|entry| entry.indexed),
            ended: if self.closing.contains_key(&key) {
                // Whatever it was, it is ending now.
                Some(Millis::MAX)
            } else {
                self.ended.get(&key).map(|last| last.state.started_at)
            },
        };
        let addr = SessionActor::activate(key, known, source, self.entities.clone());
        match self.sessions.get_mut(&key) {
            // Known from the index: it stays due when the index says.
            Some(entry) => {
                entry.addr = Some(addr.clone());
                entry.source = source;
            }
            None => {
                let deadline = watermark.saturating_add(self.settings.session_timeout);
                self.clock(source).deadlines.push(key, deadline, None);
                self.sessions.insert(
                    key,
                    SessionEntry {
                        addr: Some(addr.clone()),
                        deadline,
                        source,
                        indexed: None,
                    },
                );
            }
        }
        self.user(key.user_id).live_sessions += 1;
        (key, addr)
    }

    /// Records how a session looks after it applied events: its deadline moves with its latest
    /// event, and a session the index does not hold yet is indexed, after the end of the one it
    /// replaced, if any, which the store counts unless it did already.
    fn session_seen(&mut self, seen: &SessionSeen) {
        let timeout = self.settings.session_timeout;
        let writer = self.index as u16;
        let Some(entry) = self.sessions.get_mut(&seen.key) else {
            return;
        };
        let source = entry.source;
        let deadline = seen.last_event_at.saturating_add(timeout);
        if entry.indexed != Some(seen.started_at) {
            if let Some(previous) = &seen.previous {
                self.transitions
                    .push(Transition::End(SessionEnd::of_previous(
                        seen.key, previous, source, writer,
                    )));
            }
            self.transitions.push(Transition::Open(OpenSession {
                key: seen.key,
                source,
                started_at: seen.started_at,
                deadline,
            }));
            entry.indexed = Some(seen.started_at);
        }
        if deadline > entry.deadline {
            let previous = entry.deadline;
            entry.deadline = deadline;
            self.clock(source)
                .deadlines
                .push(seen.key, deadline, Some(previous));
        }
    }

    /// Reads the index of live sessions of the partitions this shard sees for the first time,
    /// so that their sessions end when their deadline passes even if no event of theirs comes
    /// again (after a restart or a takeover); `then` runs once they are registered. The shard
    /// takes no other message meanwhile: an event of an indexed session must find it known.
    fn claim(
        &mut self,
        sources: Vec<u16>,
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut Self, &mut Context<Self>, Option<StoreError>) + 'static,
    ) {
        for source in &sources {
            self.clock(*source);
        }
        let store = self.entities.store.clone();
        let generation = self.generation;
        let loads = join_all(sources.into_iter().map(move |source| {
            // Owner first: from then on no former owner's write lands over this one's.
            let own = store.own_partition(source, generation);
            let store = store.clone();
            async move {
                match own.await {
                    Ok(_) => (source, Ok(store.load_open_sessions(source).await)),
                    Err(error) => (source, Err(error)),
                }
            }
        }));
        ctx.wait(
            fut::wrap_future::<_, Self>(loads).map(move |loaded, actor, ctx| {
                let mut refused = None;
                if generation == actor.generation {
                    for (source, claimed) in loaded {
                        match claimed {
                            Ok(open) => actor.index_open(source, open),
                            Err(error) => {
                                // Not this instance's yet: the next delivery claims it again.
                                tracing::warn!(shard = actor.index, source, %error, "could not claim a bus partition");
                                actor.clocks.remove(&source);
                                refused = Some(error);
                            }
                        }
                    }
                }
                then(actor, ctx, refused);
            }),
        );
    }

    /// Registers a partition's live sessions as the index holds them.
    fn index_open(&mut self, source: u16, loaded: Result<Vec<OpenSession>, StoreError>) {
        let (index, shards) = (self.index, self.shards);
        match loaded {
            Ok(open) => {
                let mut indexed = 0;
                for open in open {
                    if crate::engine::shard_of(open.key.user_id, shards) != index
                        || self.sessions.contains_key(&open.key)
                    {
                        continue;
                    }
                    indexed += 1;
                    self.clock(source)
                        .deadlines
                        .push(open.key, open.deadline, None);
                    self.sessions.insert(
                        open.key,
                        SessionEntry {
                            addr: None,
                            deadline: open.deadline,
                            source,
                            indexed: Some(open.started_at),
                        },
                    );
                }
                tracing::debug!(
                    shard = index,
                    source,
                    indexed,
                    "live sessions of a partition indexed"
                );
            }
            Err(error) => {
                // Its sessions still end when an event of theirs comes; after a reconnection
                // the index is read again.
                tracing::warn!(shard = index, source, %error, "could not read the index of live sessions");
            }
        }
    }

    /// Moves the clocks of the partitions this shard has claimed to the engine's watermarks.
    fn advance_clocks(&mut self, watermarks: &[(u16, Millis)]) {
        for (source, watermark) in watermarks {
            if let Some(clock) = self.clocks.get_mut(source) {
                clock.watermark = clock.watermark.max(*watermark);
            }
        }
    }

    /// Drops the actor of a session that could not be loaded; returns whether it had one. An
    /// indexed session stays known, to end when due; any other is forgotten until its next
    /// event (it has nothing to end).
    fn forget_failed_session(&mut self, key: SessionKey) -> bool {
        let Some(entry) = self.sessions.get_mut(&key) else {
            return false;
        };
        let had_actor = entry.addr.take().is_some();
        if entry.indexed.is_none() {
            self.sessions.remove(&key);
        }
        had_actor
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
        let mut latest = None;
        for position in &reply.accepted {
            latest = latest.max(Some(batch.at(*position).event.time));
        }
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
                self.forget_failed_session(*key);
            }
        }
        for key in reply.failed_sessions {
            // The next message activates it again.
            if self.forget_failed_session(key)
                && let Some(user) = self.users.get_mut(&user_id)
            {
                user.live_sessions = user.live_sessions.saturating_sub(1);
            }
        }
        for seen in &reply.sessions {
            self.session_seen(seen);
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

    /// Ends the sessions that are due (all of them, with [`Due::All`]): through their users, so
    /// that every event routed to them before is applied first. Resolves to the number ended.
    fn close_sessions(&mut self, due: Due) -> impl ActorFuture<Self, Output = usize> + use<> {
        let force = due == Due::All;
        let mut candidates: Vec<SessionKey> = Vec::new();
        if force {
            candidates.extend(self.sessions.keys().copied());
        } else {
            for clock in self.clocks.values_mut() {
                let watermark = clock.watermark();
                candidates.extend(match due {
                    Due::Buckets => clock.deadlines.due(watermark),
                    _ => clock.deadlines.due_through(watermark),
                });
            }
        }
        let mut by_user: HashMap<u64, (Millis, Vec<Ending>)> = HashMap::new();
        for key in candidates {
            let Some(entry) = self.sessions.get(&key) else {
                continue;
            };
            let (source, deadline) = (entry.source, entry.deadline);
            let watermark = self.clock(source).watermark();
            if !force && deadline >= watermark {
                if due == Due::Exactly {
                    // Not due yet: back in its bucket.
                    self.clock(source).deadlines.push(key, deadline, None);
                }
                // Otherwise its deadline moved, and it is queued again under the new one.
                continue;
            }
            let user_busy = self
                .users
                .get(&key.user_id)
                .is_some_and(|user| user.in_flight > 0);
            if !force && user_busy {
                // Events on their way may move its deadline: look again once they are applied.
                self.clock(source).deadlines.push(key, watermark, None);
                continue;
            }
            // A session known only from the index activates to end.
            let (_, addr) = self.session(key, source);
            let entry = self.sessions.remove(&key).expect("checked above");
            self.closing.insert(key, Vec::new());
            by_user
                .entry(key.user_id)
                .or_insert_with(|| (watermark, Vec::new()))
                .1
                .push(Ending {
                    key,
                    addr,
                    source,
                    indexed: entry.indexed,
                });
        }
        let generation = self.generation;
        // Their users' next snapshots carry the last states of the sessions ending now: a flush
        // writes them whether or not the shard has heard back by then.
        self.dirty.extend(by_user.keys().copied());
        let closes: Vec<_> = by_user
            .into_iter()
            .filter_map(|(user_id, (watermark, ending))| {
                let user = self.users.get(&user_id)?;
                let sessions: Vec<SessionHandle> = ending
                    .iter()
                    .map(|ending| (ending.key, ending.addr.clone()))
                    .collect();
                let sent = user.addr.send(CloseSessions {
                    sessions,
                    watermark,
                    force,
                });
                Some(async move { (user_id, ending, sent.await) })
            })
            .collect();
        fut::wrap_future::<_, Self>(join_all(closes)).map(move |answers, actor, ctx| {
            if generation != actor.generation {
                return 0;
            }
            let mut ended = 0;
            for (user_id, ending, answer) in answers {
                for ending in &ending {
                    // Waiting reads ask again after this answer is taken in: by then the
                    // session is in `ended`, or the shard's again.
                    for waiting in actor.closing.remove(&ending.key).unwrap_or_default() {
                        let _ = waiting.send(());
                    }
                }
                for (key, closing) in answer.unwrap_or_default() {
                    let Ending {
                        addr,
                        source,
                        indexed,
                        ..
                    } = ending
                        .iter()
                        .find(|ending| ending.key == key)
                        .cloned()
                        .expect("an answer per session asked");
                    match closing {
                        Closing::Closed(last) => {
                            if let Some(user) = actor.users.get_mut(&user_id) {
                                user.live_sessions = user.live_sessions.saturating_sub(1);
                            }
                            // A session with no state (read or scored, never an event) ends
                            // without an outcome.
                            if let Some(last) = last {
                                ended += 1;
                                actor.session_ended(source, indexed, &last.state);
                                actor.ended.insert(key, last);
                            }
                        }
                        Closing::Open { .. } if actor.sessions.contains_key(&key) => {
                            // An event came meanwhile and started another actor for the key:
                            // this one cannot hand over to it, so it ends now.
                            tracing::warn!(
                                user = key.user_id,
                                "a session reopened while it was ending; ending it now"
                            );
                            let addr = addr.clone();
                            ctx.spawn(
                                fut::wrap_future::<_, Self>(addr.send(CloseSession {
                                    watermark: Millis::MAX,
                                    force: true,
                                }))
                                .map(move |closing, actor, _| {
                                    if let Ok(Closing::Closed(Some(last))) = closing
                                        && generation == actor.generation
                                    {
                                        actor.session_ended(source, indexed, &last.state);
                                    }
                                }),
                            );
                        }
                        Closing::Open { last_event_at } => {
                            let deadline =
                                last_event_at.saturating_add(actor.settings.session_timeout);
                            actor.clock(source).deadlines.push(key, deadline, None);
                            actor.sessions.insert(
                                key,
                                SessionEntry {
                                    addr: Some(addr),
                                    deadline,
                                    source,
                                    indexed,
                                },
                            );
                        }
                    }
                }
            }
            ended
        })
    }

    /// Records the end of a session (its last state): the store counts it once. A session the
    /// index never held (it was restored from before the index knew it) is indexed first.
    fn session_ended(&mut self, source: u16, indexed: Option<Millis>, last: &SessionState) {
        let writer = self.index as u16;
        let key = last.key();
        if indexed != Some(last.started_at) {
            if let Some(previous) = &last.previous {
                self.transitions
                    .push(Transition::End(SessionEnd::of_previous(
                        key, previous, source, writer,
                    )));
            }
            self.transitions.push(Transition::Open(OpenSession {
                key,
                source,
                started_at: last.started_at,
                deadline: last
                    .last_event_at
                    .saturating_add(self.settings.session_timeout),
            }));
        }
        self.transitions
            .push(Transition::End(SessionEnd::of(last, source, writer)));
    }

    /// Ends what is due, in the background.
    fn expire(&mut self, ctx: &mut Context<Self>) {
        let due = self.clocks.values().any(|clock| {
            clock
                .deadlines
                .buckets
                .first_key_value()
                .is_some_and(|(bucket, _)| {
                    (bucket + 1).saturating_mul(clock.deadlines.width) <= clock.watermark()
                })
        });
        if due {
            ctx.spawn(self.close_sessions(Due::Buckets).map(|_, _, _| ()));
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
            let mut written_ended = Vec::new();
            if generation == actor.generation {
                for answer in answers {
                    let UserSnapshotTaken {
                        user,
                        changed_products,
                        sessions,
                    } = answer.unwrap_or_default();
                    if let Some(user) = &user {
                        batch
                            .changed_products
                            .insert(user.state.user_id, changed_products);
                    }
                    batch.users.extend(user);
                    batch.sessions.extend(sessions);
                }
                // Ended sessions go after the live ones: a key ended and started again in
                // this batch keeps the new session. They stay in `ended`, where reads find
                // them, until the write is durable: until then the store does not have them.
                let mut ended: Vec<Stored<SessionState>> = actor.ended.values().cloned().collect();
                written_ended = ended
                    .iter()
                    .map(|last| {
                        (
                            last.state.key(),
                            last.state.last_event_at,
                            last.state.counts.events,
                        )
                    })
                    .collect();
                ended.append(&mut batch.sessions);
                batch.sessions = ended;
                batch.transitions = std::mem::take(&mut actor.transitions);
                batch.sources = batch
                    .users
                    .iter()
                    .map(|user| user.state.user_id)
                    .chain(batch.sessions.iter().map(|session| session.state.user_id))
                    .filter_map(|user_id| actor.users.get(&user_id))
                    .map(|user| user.source)
                    .collect();
            }
            match actor.write_behind.begin(batch) {
                Some(save) => Either::Left(fut::wrap_future::<_, Self>(save).map(
                    |done: SaveDone, actor, _| {
                        actor.flushing = false;
                        let result = actor.write_behind.finish(done);
                        match &result {
                            Ok(_) => {
                                // Durable now: the store answers for them. One that ended again
                                // meanwhile waits for the next flush.
                                for (key, last_event_at, events) in written_ended {
                                    if actor.ended.get(&key).is_some_and(|last| {
                                        (last.state.last_event_at, last.state.counts.events)
                                            == (last_event_at, events)
                                    }) {
                                        actor.ended.remove(&key);
                                    }
                                }
                                actor.passivate_idle_users()
                            }
                            Err(StoreError::Fenced(source)) => {
                                actor.drop_state();
                                actor.fenced = Some(*source);
                            }
                            Err(_) => {}
                        }
                        result.map(|saved| saved.rows)
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
        if matches!(self.settings.sources, Sources::Single) {
            // Every event comes to this instance: its sessions are this shard's from the start.
            self.claim(vec![0], ctx, |_, _, _| {});
        }
        ctx.run_interval(self.settings.flush_interval, |actor, ctx| {
            if actor.settings.live_watermark {
                let now = chrono::Utc::now().timestamp_millis();
                actor.watermark = actor.watermark.max(now);
                for clock in actor.clocks.values_mut() {
                    clock.watermark = clock.watermark.max(now);
                }
                actor.expire(ctx);
            }
            if !actor.flushing && !actor.write_behind.is_saving() {
                ctx.spawn(actor.flush().map(|_, _, _| ()));
            }
            if let Some(copies) = actor.foreign.as_mut() {
                copies.sweep();
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
    /// The event time of the batch's partitions once it is applied (the engine keeps it).
    pub watermarks: Arc<[(u16, Millis)]>,
}

impl Handler<ApplyBatch> for ShardActor {
    type Result = ResponseActFuture<Self, Result<BatchApplied, Refused>>;

    fn handle(&mut self, message: ApplyBatch, ctx: &mut Self::Context) -> Self::Result {
        if let Some(source) = self.fenced {
            return Box::pin(fut::ready(Err(Refused {
                error: StoreError::Fenced(source),
                deliveries: Vec::new(),
            })));
        }
        let mut unclaimed: Vec<u16> = message
            .deliveries
            .iter()
            .map(|delivery| delivery.source)
            .filter(|source| !self.clocks.contains_key(source))
            .collect();
        if unclaimed.is_empty() {
            return Box::pin(self.dispatch(message.deliveries, message.watermarks));
        }
        unclaimed.sort_unstable();
        unclaimed.dedup();
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.claim(unclaimed, ctx, move |actor, ctx, refused| {
            if let Some(error) = refused {
                // Applied by no one: retried once the store answers.
                let _ = reply.send(Err(Refused {
                    error,
                    deliveries: message.deliveries,
                }));
                return;
            }
            let dispatched = actor.dispatch(message.deliveries, message.watermarks);
            ctx.spawn(dispatched.map(move |result, _, _| {
                let _ = reply.send(result);
            }));
        });
        Box::pin(fut::wrap_future::<_, Self>(async move {
            answer.await.unwrap_or_else(|_| {
                Err(Refused {
                    error: StoreError::Unavailable("the shard stopped".into()),
                    deliveries: Vec::new(),
                })
            })
        }))
    }
}

impl ShardActor {
    /// Hands each user of the batch its part, and gathers what they did.
    fn dispatch(
        &mut self,
        deliveries: Vec<Delivery>,
        watermarks: Arc<[(u16, Millis)]>,
    ) -> impl ActorFuture<Self, Output = Result<BatchApplied, Refused>> + use<> {
        let batch = BatchPart::whole(deliveries.into());
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
                let delivery = batch.at(*position);
                let key = SessionKey::of(&delivery.event);
                if !sessions.iter().any(|(known, _)| *known == key) {
                    sessions.push(self.session(key, delivery.source));
                }
            }
            let keys: Vec<SessionKey> = sessions.iter().map(|(key, _)| *key).collect();
            let source = batch.at(positions[0]).source;
            let user = self.user(user_id);
            user.in_flight += 1;
            user.source = source;
            let sent = user.addr.send(UserEvents {
                part: batch.part(positions),
                sessions,
            });
            sends.push(async move { (user_id, keys, sent.await) });
        }
        let generation = self.generation;
        fut::wrap_future::<_, Self>(join_all(sends)).map(
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
                // Time moves once the batch is applied: its sessions' deadlines moved first.
                actor.advance_clocks(&watermarks);
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
        )
    }
}

/// The user-side features of a session for each of some products.
#[derive(Message)]
#[rtype(result = "UserSide")]
pub struct ScoreFeatures {
    pub key: SessionKey,
    pub product_ids: Vec<u64>,
}

impl Handler<ScoreFeatures> for ShardActor {
    type Result = ResponseActFuture<Self, UserSide>;

    fn handle(&mut self, message: ScoreFeatures, _: &mut Self::Context) -> Self::Result {
        if self.is_foreign(message.key) {
            return self.score_foreign(message);
        }
        // A session scored before any event of it belongs to its user's partition, if known.
        let user_source = self
            .users
            .get(&message.key.user_id)
            .map_or(0, |user| user.source);
        let source = self
            .sessions
            .get(&message.key)
            .map_or(user_source, |entry| entry.source);
        let session = self.session(message.key, source);
        let width = crate::features::USER_SIDE_COUNT * message.product_ids.len();
        let sent = self.user(message.key.user_id).addr.send(UserSideFeatures {
            session,
            product_ids: message.product_ids,
        });
        Box::pin(fut::wrap_future(async move {
            sent.await.unwrap_or_else(|_| UserSide {
                vectors: vec![0.0; width],
                purchases: None,
            })
        }))
    }
}

impl ShardActor {
    /// Scores from copies of a user and session another instance owns; what cannot be read
    /// counts as unknown, as a session that cannot be loaded does.
    fn score_foreign(&mut self, message: ScoreFeatures) -> ResponseActFuture<Self, UserSide> {
        let key = message.key;
        let user = self.foreign_user(key.user_id);
        let session = self.foreign_session(key);
        Box::pin(
            user.then(move |user, _, _| session.map(move |session, _, _| (user, session)))
                .map(move |(user, session), _, _| {
                    let session = match session {
                        Ok(Some(SessionView::Live(state))) => Some(state),
                        _ => None,
                    };
                    crate::user::user_side(
                        session.as_ref(),
                        user.ok().flatten().as_ref(),
                        &message.product_ids,
                    )
                }),
        )
    }

    /// A copy of a user another instance owns: kept, or read from the store and kept.
    fn foreign_user(
        &mut self,
        user_id: u64,
    ) -> impl ActorFuture<Self, Output = Result<Option<UserState>, StoreError>> + use<> {
        let copies = self.foreign.as_ref().expect("copies when instances share");
        let kept = copies.user(user_id);
        let load = kept
            .is_none()
            .then(|| copies.load_user(self.entities.store.clone(), user_id));
        fut::wrap_future::<_, Self>(async move {
            match (kept, load) {
                (Some(user), _) => Ok((user, None)),
                (None, Some(load)) => {
                    let read_at = std::time::Instant::now();
                    load.await.map(|user| (user, Some(read_at)))
                }
                (None, None) => unreachable!("loaded when not kept"),
            }
        })
        .map(move |loaded, actor, _| {
            let (user, read_at) = loaded?;
            if let (Some(read_at), Some(copies)) = (read_at, actor.foreign.as_mut()) {
                copies.keep_user(user_id, user.clone(), read_at);
            }
            Ok(user)
        })
    }

    /// A copy of a session another instance owns: kept, or read from the store and kept.
    fn foreign_session(
        &mut self,
        key: SessionKey,
    ) -> impl ActorFuture<Self, Output = Result<Option<SessionView>, StoreError>> + use<> {
        let copies = self.foreign.as_ref().expect("copies when instances share");
        let kept = copies.session(key);
        let load = kept
            .is_none()
            .then(|| copies.load_session(self.entities.store.clone(), key));
        fut::wrap_future::<_, Self>(async move {
            match (kept, load) {
                (Some(view), _) => Ok((view, None)),
                (None, Some(load)) => {
                    let read_at = std::time::Instant::now();
                    load.await.map(|view| (view, Some(read_at)))
                }
                (None, None) => unreachable!("loaded when not kept"),
            }
        })
        .map(move |loaded, actor, _| {
            let (view, read_at) = loaded?;
            if let (Some(read_at), Some(copies)) = (read_at, actor.foreign.as_mut()) {
                copies.keep_session(key, view.clone(), read_at);
            }
            Ok(view)
        })
    }
}

/// A session as reads see it, live or ended, from its actor or the store; a store failure is an
/// error, not "unknown".
#[derive(Message)]
#[rtype(result = "Result<Option<SessionView>, StoreError>")]
pub struct GetSession {
    pub key: SessionKey,
}

impl Handler<GetSession> for ShardActor {
    type Result = ResponseActFuture<Self, Result<Option<SessionView>, StoreError>>;

    fn handle(&mut self, message: GetSession, _: &mut Self::Context) -> Self::Result {
        if self.is_foreign(message.key) {
            return Box::pin(self.foreign_session(message.key));
        }
        if let Some(waiting) = self.closing.get_mut(&message.key) {
            // Ending: its last state is with its actor, on its way here.
            let (ended, told) = tokio::sync::oneshot::channel();
            waiting.push(ended);
            return Box::pin(
                fut::wrap_future::<_, Self>(told)
                    .then(move |_, actor, ctx| actor.handle(message, ctx)),
            );
        }
        let entry = self.sessions.get(&message.key);
        // The start of the live session the shard knows under this key, if any.
        let open = entry.and_then(|entry| entry.indexed);
        // A session that ended and is not written yet.
        let pending = self
            .ended
            .get(&message.key)
            .map(|last| SessionView::Ended(last.state.clone()));
        let live = entry.and_then(|session| {
            let user = self.users.get(&message.key.user_id)?;
            Some(user.addr.send(ReadUserSession(session.addr.clone()?)))
        });
        let load = self.entities.store.load_session(message.key);
        Box::pin(fut::wrap_future(async move {
            if let Some(read) = live
                && let Some(view) = read
                    .await
                    .map_err(|error| StoreError::Unavailable(error.to_string()))??
            {
                return Ok(Some(view));
            }
            if pending.is_some() {
                return Ok(pending);
            }
            Ok(load.await?.map(|stored| {
                if open == Some(stored.state.started_at) {
                    SessionView::Live(stored.state)
                } else {
                    SessionView::Ended(stored.state)
                }
            }))
        }))
    }
}

/// A user's state, from its actor or the store.
#[derive(Message)]
#[rtype(result = "Result<Option<UserState>, StoreError>")]
pub struct GetUser {
    pub user_id: u64,
}

impl Handler<GetUser> for ShardActor {
    type Result = ResponseActFuture<Self, Result<Option<UserState>, StoreError>>;

    fn handle(&mut self, message: GetUser, _: &mut Self::Context) -> Self::Result {
        match self.users.get(&message.user_id) {
            Some(user) => {
                let read = user.addr.send(ReadUser);
                Box::pin(fut::wrap_future(async move {
                    read.await
                        .map_err(|error| StoreError::Unavailable(error.to_string()))?
                }))
            }
            None if self.foreign.is_some() => Box::pin(self.foreign_user(message.user_id)),
            None => {
                let load = self.entities.store.load_user(message.user_id);
                Box::pin(fut::wrap_future(async move {
                    Ok(load.await?.map(|stored| stored.state))
                }))
            }
        }
    }
}

/// Ends the sessions that are due, then makes everything applied so far durable.
#[derive(Message)]
#[rtype(result = "Result<FlushDone, StoreError>")]
pub struct FlushNow {
    pub due: Due,
    /// The engine's watermarks now: a shard that saw no event of late ends by them too.
    pub watermarks: Arc<[(u16, Millis)]>,
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
        if let Some(source) = self.fenced {
            return Box::pin(fut::ready(Err(StoreError::Fenced(source))));
        }
        if self.flushing || self.write_behind.is_saving() {
            return Box::pin(fut::ready(Err(StoreError::Busy)));
        }
        self.flushing = true;
        self.advance_clocks(&message.watermarks);
        let closing = self.close_sessions(message.due);
        Box::pin(async {}.into_actor(self).then(move |_, _, _| closing).then(
            |sessions_closed, actor, _| {
                actor.flush().map(move |result, _, _| {
                    result.map(|rows| FlushDone {
                        rows,
                        sessions_closed,
                    })
                })
            },
        ))
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
        self.drop_state();
        self.fenced = None;
    }
}

impl ShardActor {
    /// Forgets every entity and everything not yet written (the instance lost its bus
    /// connection, or a partition to another instance); partitions are claimed again with
    /// their next delivery.
    fn drop_state(&mut self) {
        self.generation += 1;
        // Dropping the addresses stops the actors once their mailboxes are empty; scores stop
        // reading them now.
        let (index, shards) = (self.index, self.shards);
        self.entities
            .board
            .withdraw_all(|user_id| crate::engine::shard_of(user_id, shards) == index);
        self.users = HashMap::new();
        self.sessions = HashMap::new();
        self.clocks = HashMap::new();
        self.transitions = Vec::new();
        self.idle_users.buckets.clear();
        self.dirty = HashSet::new();
        self.guarded = HashMap::new();
        self.ended = HashMap::new();
        self.closing = HashMap::new();
        if let Some(copies) = self.foreign.as_mut() {
            copies.clear();
        }
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
