//! `SessionActor`: one live session (cart, view sequence, per-product state) on the arbiter of
//! the shard that owns its user. Its user actor hands it the session's part of each batch and
//! hears back what each event did; the shard ends it when its partition's watermark passes its
//! deadline. Its lifecycle is that of [`crate::lifecycle`].

use std::sync::Arc;

use actix::prelude::*;

use crate::board::SessionCell;
use crate::delivery::{self, BatchPart, DeliveryGuard, Stored};
use crate::event::Millis;
use crate::features::{SessionKey, SessionState, SessionStep};
use crate::lifecycle::{self, EntityContext, Phase};
use crate::messages::{ForgetAcknowledged, SessionSeen};
use crate::store::StoreError;

/// What a shard knows of the sessions under a key when it activates its actor.
#[derive(Clone, Copy, Debug, Default)]
pub struct Known {
    /// The start of the live session, if the shard knows one.
    pub open: Option<Millis>,
    /// The start of a session that ended and is not written yet.
    pub ended: Option<Millis>,
}

/// One session.
pub struct SessionActor {
    key: SessionKey,
    /// `None` until the session's first event, and when the stored session under this key
    /// has ended: ended stays ended, it was counted when it ended. Shared with the read board
    /// once loaded.
    session: Arc<SessionCell>,
    /// A stored session that had ended, kept for reads (`GET /v1/sessions`) until an event
    /// starts a new one.
    ended: Option<Box<SessionState>>,
    guard: DeliveryGuard,
    phase: Phase,
    context: Arc<EntityContext>,
}

impl SessionActor {
    /// A session actor with no state yet.
    fn new(key: SessionKey, context: Arc<EntityContext>) -> Self {
        SessionActor {
            key,
            session: Arc::default(),
            ended: None,
            guard: DeliveryGuard::default(),
            phase: Phase::Active,
            context,
        }
    }

    /// Starts a session actor on the current arbiter; `source` is its user's bus partition. A
    /// stored session is live if its shard knows it (or a later one) to be; ended if its shard
    /// knows it (or a later one) to have ended; when the shard knows neither, the store's index
    /// says.
    pub fn activate(
        key: SessionKey,
        known: Known,
        source: u16,
        context: Arc<EntityContext>,
    ) -> Addr<Self> {
        SessionActor::create(move |ctx| {
            let store = context.store.clone();
            let load: crate::store::StoreFuture<Option<(Stored<SessionState>, bool)>> =
                Box::pin(async move {
                    let Some(stored) = store.load_session(key).await? else {
                        return Ok(None);
                    };
                    let started_at = stored.state.started_at;
                    let live = match known {
                        Known {
                            ended: Some(ended), ..
                        } if started_at <= ended => false,
                        Known {
                            open: Some(open), ..
                        } => started_at >= open,
                        _ => !store
                            .load_index_entry(key, source)
                            .await?
                            .has_ended(started_at),
                    };
                    Ok(Some((stored, live)))
                });
            lifecycle::activate(
                ctx,
                load,
                move |actor: &mut SessionActor, stored| {
                    if let Some((stored, live)) = stored {
                        if live {
                            *actor.session.state.write() = Some(stored.state);
                        } else {
                            actor.ended = Some(Box::new(stored.state));
                        }
                        // Kept either way: a redelivered event of an ended session is known.
                        actor.guard = stored.guard;
                    }
                    actor
                        .context
                        .board
                        .publish_session(actor.key, &actor.session);
                },
                |actor| &mut actor.phase,
            );
            SessionActor::new(key, context)
        })
    }

    fn snapshot(&self) -> Option<Stored<SessionState>> {
        self.session.state.read().as_ref().map(|session| Stored {
            state: session.clone(),
            guard: self.guard.clone(),
        })
    }
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        self.context.board.withdraw_session(self.key, &self.session);
    }
}

/// The session's events of one batch, in order, each admitted by its user. A session that could
/// not be loaded refuses them all, with the store's error.
#[derive(Message)]
#[rtype(result = "Result<SessionApplied, StoreError>")]
pub struct SessionEvents {
    pub part: BatchPart,
    /// Each delivery's identity, in the part's order (the user computed them).
    pub identities: Vec<u64>,
}

/// What each event did to the session, in the part's order.
#[derive(MessageResponse)]
pub struct SessionApplied {
    pub steps: Vec<SessionStep>,
    /// The session now: its deadline follows its latest event.
    pub seen: Option<SessionSeen>,
}

impl Handler<SessionEvents> for SessionActor {
    type Result = Result<SessionApplied, StoreError>;

    fn handle(&mut self, message: SessionEvents, _: &mut Self::Context) -> Self::Result {
        if let Phase::Failed(error) = &self.phase {
            return Err(StoreError::clone(error));
        }
        self.ended = None;
        let mut session = self.session.state.write();
        let steps = message
            .part
            .iter()
            .zip(&message.identities)
            .map(|(delivery, identity)| {
                delivery::apply_to_session(
                    &mut session,
                    &mut self.guard,
                    &delivery.event,
                    *identity,
                    delivery.redelivered,
                    self.context.session_timeout,
                    self.context.guard_deliveries,
                )
            })
            .collect();
        Ok(SessionApplied {
            steps,
            seen: session.as_ref().map(SessionSeen::of),
        })
    }
}

/// The session's state and guard for the write-behind; `None` when it has no state.
#[derive(Message)]
#[rtype(result = "Option<Stored<SessionState>>")]
pub struct SessionSnapshot;

impl Handler<SessionSnapshot> for SessionActor {
    type Result = Option<Stored<SessionState>>;

    fn handle(&mut self, _: SessionSnapshot, _: &mut Self::Context) -> Self::Result {
        self.snapshot()
    }
}

/// Ends the session if it has been idle for longer than the timeout at `watermark` (always,
/// with `force`), then stops the actor.
#[derive(Message)]
#[rtype(result = "Closing")]
pub struct CloseSession {
    pub watermark: Millis,
    pub force: bool,
}

/// What a close request did.
#[derive(Debug, MessageResponse)]
pub enum Closing {
    /// The session ended (with its final state; `None`: it had none) and its actor stops.
    Closed(Option<Stored<SessionState>>),
    /// Events arrived since its deadline was computed; this is its latest.
    Open { last_event_at: Millis },
}

impl Handler<CloseSession> for SessionActor {
    type Result = Closing;

    fn handle(&mut self, message: CloseSession, ctx: &mut Self::Context) -> Closing {
        if let Some(session) = self.session.state.read().as_ref()
            && !message.force
            && session.last_event_at >= message.watermark - self.context.session_timeout
        {
            return Closing::Open {
                last_event_at: session.last_event_at,
            };
        }
        ctx.stop();
        Closing::Closed(self.snapshot())
    }
}

/// The live session now, for scoring; an error when it could not be loaded.
#[derive(Message)]
#[rtype(result = "Result<Option<SessionState>, StoreError>")]
pub struct ReadSession;

impl Handler<ReadSession> for SessionActor {
    type Result = Result<Option<SessionState>, StoreError>;

    fn handle(&mut self, _: ReadSession, _: &mut Self::Context) -> Self::Result {
        match &self.phase {
            Phase::Failed(error) => Err(StoreError::clone(error)),
            _ => Ok(self.session.state.read().clone()),
        }
    }
}

/// The session as `GET /v1/sessions` shows it: live, or ended (with its last state).
#[derive(Clone, Debug, PartialEq)]
pub enum SessionView {
    Live(SessionState),
    Ended(SessionState),
}

impl SessionView {
    /// The session's state, live or last.
    pub fn state(&self) -> &SessionState {
        match self {
            SessionView::Live(state) | SessionView::Ended(state) => state,
        }
    }
}

/// The session as a read sees it: the live one, else the ended one kept from the store.
#[derive(Message)]
#[rtype(result = "Result<Option<SessionView>, StoreError>")]
pub struct ViewSession;

impl Handler<ViewSession> for SessionActor {
    type Result = Result<Option<SessionView>, StoreError>;

    fn handle(&mut self, _: ViewSession, _: &mut Self::Context) -> Self::Result {
        if let Phase::Failed(error) = &self.phase {
            return Err(StoreError::clone(error));
        }
        Ok(match (self.session.state.read().as_ref(), &self.ended) {
            (Some(live), _) => Some(SessionView::Live(live.clone())),
            (None, Some(ended)) => Some(SessionView::Ended(SessionState::clone(ended))),
            (None, None) => None,
        })
    }
}

impl Handler<ForgetAcknowledged> for SessionActor {
    type Result = ();

    fn handle(&mut self, _: ForgetAcknowledged, _: &mut Self::Context) {
        self.guard.forget_acknowledged();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Delivery;
    use crate::event::{Event, EventType};
    use crate::store::{LoadedCatalog, LoadedUserSide, StateBatch, StateStore, StoreFuture};

    /// A store holding one session, or failing.
    struct OneSession(Result<Option<Stored<SessionState>>, StoreError>);

    impl StateStore for OneSession {
        fn save(&self, _: Arc<StateBatch>) -> StoreFuture<Vec<crate::outcomes::SessionEnd>> {
            Box::pin(async { Ok(Vec::new()) })
        }

        fn load_open_sessions(&self, _: u16) -> StoreFuture<Vec<crate::outcomes::OpenSession>> {
            Box::pin(async { Ok(Vec::new()) })
        }

        fn load_index_entry(
            &self,
            _: SessionKey,
            _: u16,
        ) -> StoreFuture<crate::outcomes::IndexEntry> {
            // The stored session ended at minute 0 and was counted.
            Box::pin(async {
                Ok(crate::outcomes::IndexEntry {
                    open: None,
                    ended_through: Some(0),
                })
            })
        }

        fn load_tallies(
            &self,
            _: i64,
            _: i64,
        ) -> StoreFuture<Vec<(crate::outcomes::TallyKey, crate::outcomes::OutcomeTally)>> {
            Box::pin(async { Ok(Vec::new()) })
        }

        fn load_user_side(&self, _: Vec<u64>, _: Vec<SessionKey>) -> StoreFuture<LoadedUserSide> {
            let loaded = self.0.clone();
            Box::pin(async move { Ok((Vec::new(), loaded?.into_iter().collect())) })
        }

        fn load_catalog(&self, _: Vec<u64>, _: Vec<u64>) -> StoreFuture<LoadedCatalog> {
            Box::pin(async { Ok((Vec::new(), Vec::new())) })
        }
    }

    fn cart(minute: i64) -> Delivery {
        Delivery::fresh(Event {
            time: minute * 60_000,
            event_type: EventType::Cart,
            product_id: 5,
            category_id: 1,
            category_code: None,
            brand: None,
            price: 10.0,
            user_id: 7,
            user_session: "s".into(),
            event_id: None,
        })
    }

    fn start(store: OneSession, open: Option<Millis>) -> Addr<SessionActor> {
        let context = Arc::new(EntityContext {
            store: Arc::new(store),
            session_timeout: 30 * 60_000,
            guard_deliveries: false,
            board: Arc::new(crate::board::Board::new(1, true)),
        });
        let known = Known { open, ended: None };
        SessionActor::activate(SessionKey::new(7, "s"), known, 0, context)
    }

    fn events(deliveries: Vec<Delivery>) -> SessionEvents {
        let identities = deliveries
            .iter()
            .map(|delivery| delivery.event.identity())
            .collect();
        SessionEvents {
            part: BatchPart::whole(deliveries.into()),
            identities,
        }
    }

    #[actix::test]
    async fn continues_a_stored_session_and_closes_once_idle() {
        let mut stored = SessionState::new(7, "s", 0);
        stored.apply(&cart(0).event);
        let session = start(OneSession(Ok(Some(Stored::new(stored)))), Some(0));
        let applied = session.send(events(vec![cart(20)])).await.unwrap().unwrap();
        assert!(!applied.steps[0].started, "the stored session continues");
        assert_eq!(applied.seen.unwrap().last_event_at, 20 * 60_000);
        let state = session.send(ReadSession).await.unwrap().unwrap().unwrap();
        assert_eq!(state.cart_items(), 2);

        let not_yet = session
            .send(CloseSession {
                watermark: 45 * 60_000,
                force: false,
            })
            .await
            .unwrap();
        assert!(matches!(not_yet, Closing::Open { last_event_at } if last_event_at == 20 * 60_000));
        let Closing::Closed(Some(last)) = session
            .send(CloseSession {
                watermark: 51 * 60_000,
                force: false,
            })
            .await
            .unwrap()
        else {
            panic!("idle for 31 minutes: the session ends");
        };
        assert_eq!(last.state.cart_items(), 2);
        assert!(
            session.send(ReadSession).await.is_err(),
            "the actor stopped"
        );
    }

    /// Its shard knows no live session under the key: the stored one had ended.
    #[actix::test]
    async fn a_stored_session_that_had_ended_stays_ended() {
        let mut stored = SessionState::new(7, "s", 0);
        stored.apply(&cart(0).event);
        let session = start(OneSession(Ok(Some(Stored::new(stored)))), None);
        let applied = session.send(events(vec![cart(41)])).await.unwrap().unwrap();
        assert!(applied.steps[0].started, "a new session under the same key");
        assert!(
            applied.steps[0].closed.is_none(),
            "the old one was counted already"
        );
        let state = session.send(ReadSession).await.unwrap().unwrap().unwrap();
        assert_eq!(state.cart_items(), 1);
    }

    #[actix::test]
    async fn a_failed_load_refuses_events_without_applying_them() {
        let session = start(OneSession(Err(StoreError::Timeout(100))), None);
        let refused = session
            .send(events(vec![cart(1), cart(2)]))
            .await
            .unwrap()
            .err()
            .expect("refused");
        assert!(matches!(refused, StoreError::Timeout(100)));
        assert!(
            session.send(ReadSession).await.unwrap().is_err(),
            "nothing loaded"
        );
    }
}
