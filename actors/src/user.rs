//! `UserActor`: one live shopper (history across sessions, per-product history) on the arbiter of
//! its shard. It is where a user's events keep their order: the shard hands it each batch of the
//! user's events as one message; it drops duplicates, hands each of its sessions that session's
//! part as one message, and once they answered applies every event to the user's history in the
//! original order. Score requests and reads of its sessions go through it too, so they see every
//! event routed before them. Its lifecycle is that of [`crate::lifecycle`].

use std::collections::BTreeSet;
use std::sync::Arc;

use actix::prelude::*;
use futures_util::future::join_all;

use crate::board::UserCell;
use crate::delivery::{self, Admission, BatchPart, DeliveryGuard, Stored};
use crate::event::Millis;
use crate::features::{self, RECENT_IDENTITIES, SessionKey, SessionState, SessionStep, UserState};
use crate::lifecycle::{self, EntityContext, Phase};
use crate::messages::{ForgetAcknowledged, SessionSeen};
use crate::session::{
    CloseSession, Closing, ReadSession, SessionActor, SessionApplied, SessionEvents,
    SessionSnapshot, SessionView, ViewSession,
};
use crate::store::StoreError;

/// A session actor and its key.
pub type SessionHandle = (SessionKey, Addr<SessionActor>);

/// One user.
pub struct UserActor {
    user_id: u64,
    /// `None` until the user's first event (or until loaded). Shared with the read board once
    /// loaded.
    user: Arc<UserCell>,
    guard: DeliveryGuard,
    phase: Phase,
    /// Whether the user changed since its last snapshot.
    dirty: bool,
    /// The products whose history with the user changed since its last snapshot: a store
    /// writes only their rows (a shopper may have touched thousands).
    changed_products: BTreeSet<u64>,
    /// Sessions that applied events since the user's last snapshot.
    dirty_sessions: Vec<SessionHandle>,
    /// The last states of sessions that ended since the user's last snapshot: the next snapshot
    /// has them, so a flush after their end writes them even before their shard hears of it.
    closed_sessions: Vec<Stored<SessionState>>,
    /// Sessions whose guards may remember deliveries, with the acknowledgements left before
    /// they remember none (a guard keeps one acknowledgement in reserve).
    guarded_sessions: Vec<(SessionHandle, u8)>,
    context: Arc<EntityContext>,
}

impl UserActor {
    /// A user actor that activates from the store.
    pub fn new(user_id: u64, context: Arc<EntityContext>) -> Self {
        UserActor {
            user_id,
            user: Arc::default(),
            guard: DeliveryGuard::default(),
            phase: Phase::Active,
            dirty: false,
            changed_products: BTreeSet::new(),
            dirty_sessions: Vec::new(),
            closed_sessions: Vec::new(),
            guarded_sessions: Vec::new(),
            context,
        }
    }

    /// Decides, in order, which deliveries are new to the user, as applying them one by one
    /// would: an identity counts as seen from the event that first brought it.
    fn admit(&self, part: &BatchPart, identities: &[u64]) -> Vec<Admission> {
        let mut recent: Vec<u64> = self
            .user
            .state
            .read()
            .as_ref()
            .map(|user| user.recent_identities.clone())
            .unwrap_or_default();
        part.iter()
            .zip(identities)
            .map(|(delivery, identity)| {
                if delivery.redelivered && self.guard.contains(*identity) {
                    return Admission::HeldByUser;
                }
                if recent.contains(identity) {
                    return Admission::Duplicate;
                }
                if recent.len() == RECENT_IDENTITIES {
                    recent.remove(0);
                }
                recent.push(*identity);
                Admission::New
            })
            .collect()
    }

    /// Applies the admitted deliveries to the user's history, in their original order, with
    /// what their sessions said of each: `applied[i]` is the step of the part's `i`-th delivery,
    /// `None` for a duplicate or a delivery its session refused.
    fn apply(
        &mut self,
        part: &BatchPart,
        identities: &[u64],
        admissions: &[Admission],
        applied: Vec<Option<SessionStep>>,
        reply: &mut UserApplied,
    ) {
        let cell = self.user.clone();
        let mut user = cell.state.write();
        for (index, step) in applied.into_iter().enumerate() {
            let Some(mut step) = step else {
                continue;
            };
            let position = part.positions()[index];
            let event = &part.at(position).event;
            if admissions[index] == Admission::New {
                let user = user.get_or_insert_with(|| UserState::new(self.user_id, event.time));
                delivery::apply_to_user(
                    user,
                    &mut self.guard,
                    event,
                    identities[index],
                    admissions[index],
                    &step,
                    self.context.guard_deliveries,
                );
                self.dirty = true;
                self.changed_products.insert(event.product_id);
            }
            // The shard learns of a session that replaced another from the new one's
            // `previous`, whether or not this step is the one that replaced it.
            step.closed = None;
            reply.accepted.push(position);
        }
    }

    fn remember(list: &mut Vec<SessionHandle>, handle: &SessionHandle) {
        if !list.iter().any(|(key, _)| *key == handle.0) {
            list.push(handle.clone());
        }
    }
}

impl Actor for UserActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let load = self.context.store.load_user(self.user_id);
        lifecycle::activate(
            ctx,
            load,
            |actor: &mut UserActor, stored| {
                if let Some(stored) = stored {
                    *actor.user.state.write() = Some(stored.state);
                    actor.guard = stored.guard;
                }
                actor.context.board.publish_user(actor.user_id, &actor.user);
            },
            |actor| &mut actor.phase,
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.context.board.withdraw_user(self.user_id, &self.user);
    }
}

/// One session's part of a user's batch.
#[derive(Default)]
struct SessionPart {
    /// The session's index among the batch's session handles.
    session: usize,
    /// Positions in the batch.
    positions: Vec<u32>,
    /// Indexes in the user's part.
    indexes: Vec<usize>,
    identities: Vec<u64>,
}

/// The user's events of one batch, in order, and the actors of the sessions they name.
#[derive(Message)]
#[rtype(result = "UserApplied")]
pub struct UserEvents {
    pub part: BatchPart,
    pub sessions: Vec<SessionHandle>,
}

/// What a batch did to a user and its sessions.
#[derive(Default, MessageResponse)]
pub struct UserApplied {
    /// Positions in the batch of the deliveries applied (to at least the entities that lacked
    /// them), in order: for the catalog.
    pub accepted: Vec<u32>,
    pub duplicates: u64,
    /// Positions of the deliveries not applied, for want of the store, and why.
    pub refused: Vec<u32>,
    pub refusal: Option<StoreError>,
    /// The user could not be loaded: its shard drops it.
    pub user_failed: bool,
    /// Sessions that could not be loaded: the shard drops them.
    pub failed_sessions: Vec<SessionKey>,
    /// Each session that applied events, as it is now.
    pub sessions: Vec<SessionSeen>,
    /// Whether the user or its sessions changed: the shard marks it dirty.
    pub changed: bool,
}

impl Handler<UserEvents> for UserActor {
    type Result = AtomicResponse<Self, UserApplied>;

    fn handle(&mut self, message: UserEvents, _: &mut Self::Context) -> Self::Result {
        let UserEvents { part, sessions } = message;
        if let Phase::Failed(error) = &self.phase {
            let reply = UserApplied {
                refused: part.positions().to_vec(),
                refusal: Some(StoreError::clone(error)),
                user_failed: true,
                ..UserApplied::default()
            };
            return AtomicResponse::new(Box::pin(fut::ready(reply)));
        }
        let identities: Vec<u64> = part
            .iter()
            .map(|delivery| delivery.event.identity())
            .collect();
        let admissions = self.admit(&part, &identities);
        // Until the user has applied the batch too, scores read it through this actor.
        let batch = self.user.begin_batch();
        let mut parts: Vec<SessionPart> = Vec::new();
        let mut duplicates = 0;
        for (index, (delivery, admission)) in part.iter().zip(&admissions).enumerate() {
            if *admission == Admission::Duplicate {
                duplicates += 1;
                continue;
            }
            let key = SessionKey::of(&delivery.event);
            let session = sessions
                .iter()
                .position(|(candidate, _)| *candidate == key)
                .expect("the shard hands over every session of the batch");
            let slot = match parts.iter().position(|of| of.session == session) {
                Some(slot) => slot,
                None => {
                    parts.push(SessionPart {
                        session,
                        ..SessionPart::default()
                    });
                    parts.len() - 1
                }
            };
            let session_part = &mut parts[slot];
            session_part.positions.push(part.positions()[index]);
            session_part.indexes.push(index);
            session_part.identities.push(identities[index]);
        }
        let sends = parts.into_iter().map(|session_part| {
            let handle = sessions[session_part.session].clone();
            let sent = handle.1.send(SessionEvents {
                part: part.part(session_part.positions),
                identities: session_part.identities,
            });
            let indexes = session_part.indexes;
            async move { (handle, indexes, sent.await) }
        });
        AtomicResponse::new(Box::pin(fut::wrap_future::<_, Self>(join_all(sends)).map(
            move |answers, actor, _| {
                let mut reply = UserApplied {
                    duplicates,
                    ..UserApplied::default()
                };
                let mut applied: Vec<Option<SessionStep>> = (0..part.len()).map(|_| None).collect();
                for (handle, indexes, answer) in answers {
                    let answer = answer
                        .unwrap_or_else(|error| Err(StoreError::Unavailable(error.to_string())));
                    match answer {
                        Ok(SessionApplied { steps, seen }) => {
                            for (index, step) in indexes.into_iter().zip(steps) {
                                applied[index] = Some(step);
                            }
                            reply.sessions.extend(seen);
                            UserActor::remember(&mut actor.dirty_sessions, &handle);
                            if actor.context.guard_deliveries {
                                actor
                                    .guarded_sessions
                                    .retain(|((key, _), _)| *key != handle.0);
                                actor.guarded_sessions.push((handle.clone(), 2));
                            }
                        }
                        Err(error) => {
                            // A session that could not be loaded (or whose actor stopped): its
                            // shard drops it, and the events are retried on a new one.
                            reply.failed_sessions.push(handle.0);
                            reply
                                .refused
                                .extend(indexes.into_iter().map(|index| part.positions()[index]));
                            reply.refusal.get_or_insert(error);
                        }
                    }
                }
                actor.apply(&part, &identities, &admissions, applied, &mut reply);
                drop(batch);
                reply.changed = actor.dirty || !actor.dirty_sessions.is_empty();
                reply
            },
        )))
    }
}

/// The user's and its changed sessions' state and guards, for the write-behind.
#[derive(Message)]
#[rtype(result = "UserSnapshotTaken")]
pub struct UserSnapshot;

/// A user's snapshot.
#[derive(Default, MessageResponse)]
pub struct UserSnapshotTaken {
    pub user: Option<Stored<UserState>>,
    /// With `user`: the products whose rows changed since the user's last snapshot.
    pub changed_products: BTreeSet<u64>,
    pub sessions: Vec<Stored<SessionState>>,
}

impl Handler<UserSnapshot> for UserActor {
    type Result = AtomicResponse<Self, UserSnapshotTaken>;

    fn handle(&mut self, _: UserSnapshot, _: &mut Self::Context) -> Self::Result {
        // Sessions first, the user after: the user is never behind its sessions in the store
        // (stores that write in stages write users first).
        let sessions = std::mem::take(&mut self.dirty_sessions)
            .into_iter()
            .map(|(_, session)| session.send(SessionSnapshot));
        AtomicResponse::new(Box::pin(
            fut::wrap_future::<_, Self>(join_all(sessions)).map(|answers, actor, _| {
                let user = actor.dirty.then(|| {
                    actor.user.state.read().as_ref().map(|user| Stored {
                        state: user.clone(),
                        guard: actor.guard.clone(),
                    })
                });
                actor.dirty = false;
                UserSnapshotTaken {
                    user: user.flatten(),
                    changed_products: std::mem::take(&mut actor.changed_products),
                    // Sessions that ended since, then the live ones.
                    sessions: std::mem::take(&mut actor.closed_sessions)
                        .into_iter()
                        .chain(
                            answers
                                .into_iter()
                                .filter_map(|answer| answer.ok().flatten()),
                        )
                        .collect(),
                }
            }),
        ))
    }
}

/// Ends those of the user's sessions that are idle at `watermark` (all of them, with `force`),
/// after every event routed before this request.
#[derive(Message)]
#[rtype(result = "Vec<(SessionKey, Closing)>")]
pub struct CloseSessions {
    pub sessions: Vec<SessionHandle>,
    pub watermark: Millis,
    pub force: bool,
}

impl Handler<CloseSessions> for UserActor {
    type Result = AtomicResponse<Self, Vec<(SessionKey, Closing)>>;

    fn handle(&mut self, message: CloseSessions, _: &mut Self::Context) -> Self::Result {
        let (watermark, force) = (message.watermark, message.force);
        let closes = message.sessions.into_iter().map(move |(key, session)| {
            let sent = session.send(CloseSession { watermark, force });
            async move {
                // A stopped actor has nothing more to hand over.
                (key, sent.await.unwrap_or(Closing::Closed(None)))
            }
        });
        AtomicResponse::new(Box::pin(fut::wrap_future::<_, Self>(join_all(closes)).map(
            |closings, actor, _| {
                for (key, closing) in &closings {
                    if let Closing::Closed(Some(last)) = closing {
                        actor.closed_sessions.push(last.clone());
                        // The user is written with it: the stored user's guard is never older
                        // than the stored guard of one of its sessions, so a redelivery the
                        // session forgot is one the user forgot too (and knows as a duplicate).
                        actor.dirty = true;
                    }
                    if matches!(closing, Closing::Closed(_)) {
                        actor.dirty_sessions.retain(|(dirty, _)| dirty != key);
                        actor
                            .guarded_sessions
                            .retain(|((guarded, _), _)| guarded != key);
                    }
                }
                closings
            },
        )))
    }
}

/// The user-side features of a session for each of some products, after every event routed
/// before this request.
#[derive(Message)]
#[rtype(result = "UserSide")]
pub struct UserSideFeatures {
    pub session: SessionHandle,
    pub product_ids: Vec<u64>,
}

impl Handler<UserSideFeatures> for UserActor {
    type Result = AtomicResponse<Self, UserSide>;

    fn handle(&mut self, message: UserSideFeatures, _: &mut Self::Context) -> Self::Result {
        let read = message.session.1.send(ReadSession);
        AtomicResponse::new(Box::pin(fut::wrap_future::<_, Self>(read).map(
            move |session, actor, _| {
                // Scoring answers from what is known when the session could not be loaded.
                let session = session.ok().and_then(Result::ok).flatten();
                user_side(
                    session.as_ref(),
                    actor.user.state.read().as_ref(),
                    &message.product_ids,
                )
            },
        )))
    }
}

/// What a score reads of a shopper: the user-side features of each product, and what the
/// customer-value model needs.
#[derive(Clone, Debug, Default, PartialEq, MessageResponse)]
pub struct UserSide {
    /// The user-side features of each product, one after another.
    pub vectors: Vec<f64>,
    /// The shopper's purchase days and latest event, `None` for a shopper not seen yet.
    pub purchases: Option<ShopperPurchases>,
}

/// A shopper's purchase days as of their latest event.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ShopperPurchases {
    pub days: features::PurchaseDays,
    pub last_event_at: Millis,
}

/// [`user_side_vectors`], with the shopper's purchase days.
pub fn user_side(
    session: Option<&SessionState>,
    user: Option<&UserState>,
    product_ids: &[u64],
) -> UserSide {
    UserSide {
        vectors: user_side_vectors(session, user, product_ids),
        purchases: user.map(|user| ShopperPurchases {
            days: user.purchase_days,
            last_event_at: user.last_event_at,
        }),
    }
}

/// The user-side features of a session for each of `product_ids`, one after another.
pub fn user_side_vectors(
    session: Option<&SessionState>,
    user: Option<&UserState>,
    product_ids: &[u64],
) -> Vec<f64> {
    let width = features::USER_SIDE_COUNT;
    let mut out = vec![0.0; product_ids.len() * width];
    for (index, product_id) in product_ids.iter().enumerate() {
        features::user_side_features(
            session,
            user,
            *product_id,
            &mut out[index * width..(index + 1) * width],
        );
    }
    out
}

/// The user's state now; an error when it could not be loaded.
#[derive(Message)]
#[rtype(result = "Result<Option<UserState>, StoreError>")]
pub struct ReadUser;

impl Handler<ReadUser> for UserActor {
    type Result = Result<Option<UserState>, StoreError>;

    fn handle(&mut self, _: ReadUser, _: &mut Self::Context) -> Self::Result {
        match &self.phase {
            Phase::Failed(error) => Err(StoreError::clone(error)),
            _ => Ok(self.user.state.read().clone()),
        }
    }
}

/// One of the user's sessions now, after every event routed before this request.
#[derive(Message)]
#[rtype(result = "Result<Option<SessionView>, StoreError>")]
pub struct ReadUserSession(pub Addr<SessionActor>);

impl Handler<ReadUserSession> for UserActor {
    type Result = AtomicResponse<Self, Result<Option<SessionView>, StoreError>>;

    fn handle(&mut self, message: ReadUserSession, _: &mut Self::Context) -> Self::Result {
        let read = message.0.send(ViewSession);
        AtomicResponse::new(Box::pin(fut::wrap_future::<_, Self>(read).map(
            |session, _, _| session.map_err(|error| StoreError::Unavailable(error.to_string()))?,
        )))
    }
}

impl Handler<ForgetAcknowledged> for UserActor {
    type Result = ();

    fn handle(&mut self, message: ForgetAcknowledged, _: &mut Self::Context) {
        self.guard.forget_acknowledged();
        for ((_, session), left) in &mut self.guarded_sessions {
            session.do_send(message);
            *left -= 1;
        }
        self.guarded_sessions.retain(|(_, left)| *left > 0);
    }
}

/// Stops the actor: its state is durable and it is idle.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Passivate;

impl Handler<Passivate> for UserActor {
    type Result = ();

    fn handle(&mut self, _: Passivate, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
