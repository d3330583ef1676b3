//! The handle to a running engine: N shard actors, one per arbiter, and the catalog actor on its
//! own arbiter. It routes events by a hash of user_id, so one user's events always land, in
//! order, on the same shard, and it gathers features for scoring from both sides.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::join_all;

use crate::catalog::{CatalogActor, CatalogFeatures, FlushCatalog, GetCatalogStats, GetProduct};
use crate::engine::SessionKey;
use crate::event::{Event, Millis};
use crate::features::{
    FEATURE_COUNT, FeatureVector, ProductState, SessionState, USER_SIDE_COUNT, UserState,
};
use crate::shard::{
    ApplyBatch, BatchApplied, FlushNow, GetSession, GetShardStats, GetUser, Refused, ShardActor,
    ShardSettings, UserSideFeatures,
};
use crate::store::{Observer, StateStore, StoreError};

/// Why the engine could not answer.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("engine actor stopped: {0}")]
    Mailbox(#[from] MailboxError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Events the engine did not apply, and why. `events` is empty when they cannot be retried
/// (an actor stopped); otherwise nothing of them was applied, and the rest of their batch was.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct IngestRefused {
    pub error: EngineError,
    pub events: Vec<Event>,
    /// The bus partition of each refused event, when the batch had them.
    pub sources: Vec<u16>,
}

/// Totals over every shard and the catalog.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct EngineStats {
    pub live_sessions: usize,
    pub users_in_memory: usize,
    pub products_in_memory: usize,
    pub watermark: Millis,
    pub store_healthy: bool,
}

/// A cheap, cloneable handle to the running engine.
#[derive(Clone)]
pub struct Engine {
    shards: Arc<Vec<Addr<ShardActor>>>,
    catalog: Addr<CatalogActor>,
    arbiters: Arc<std::sync::Mutex<Vec<Arbiter>>>,
}

/// The shard a user belongs to. The id is mixed first: shop user ids are often sequential.
pub fn shard_of(user_id: u64, shards: usize) -> usize {
    (xxhash_rust::xxh3::xxh3_64(&user_id.to_le_bytes()) % shards as u64) as usize
}

impl Engine {
    /// Starts `shards` shard arbiters and a catalog arbiter. Must run inside an actix system.
    pub fn start(
        shards: usize,
        settings: ShardSettings,
        store: Arc<dyn StateStore>,
        observer: Arc<dyn Observer>,
    ) -> Engine {
        let flush_interval = settings.flush_interval;
        let guard_deliveries = settings.guard_deliveries;
        let sources = settings.sources;
        let catalog_store = store.clone();
        let catalog_observer = observer.clone();
        let mut arbiters = vec![Arbiter::new()];
        let catalog = CatalogActor::start_in_arbiter(&arbiters[0].handle(), move |_| {
            CatalogActor::new(
                catalog_store,
                catalog_observer,
                flush_interval,
                guard_deliveries,
                sources,
            )
        });
        let shards = (0..shards.max(1))
            .map(|index| {
                let (settings, catalog, store, observer) = (
                    settings.clone(),
                    catalog.clone(),
                    store.clone(),
                    observer.clone(),
                );
                let arbiter = Arbiter::new();
                let shard = ShardActor::start_in_arbiter(&arbiter.handle(), move |_| {
                    ShardActor::new(index, settings, catalog, store, observer)
                });
                arbiters.push(arbiter);
                shard
            })
            .collect();
        Engine {
            shards: Arc::new(shards),
            catalog,
            arbiters: Arc::new(std::sync::Mutex::new(arbiters)),
        }
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    fn shard(&self, user_id: u64) -> &Addr<ShardActor> {
        &self.shards[shard_of(user_id, self.shards.len())]
    }

    /// Applies a batch of events; resolves when every shard has applied its part. One message
    /// per shard per batch keeps cross-thread traffic low.
    pub async fn ingest(&self, events: Vec<Event>) -> Result<BatchApplied, EngineError> {
        self.ingest_deliveries(events, Vec::new(), Vec::new())
            .await
            .map_err(|refused| refused.error)
    }

    /// Applies a batch of events from the bus; `redelivered[i]` tells whether event `i` may have
    /// been delivered before (missing entries are fresh), and `sources[i]` which bus partition
    /// it came from (empty: one source). Redelivered events are applied only to the entities
    /// that do not remember them, so a crash between flush and acknowledgement never counts an
    /// event twice.
    ///
    /// When a shard cannot load the state its part needs, the other shards still apply theirs,
    /// and the error carries the refused events: retried as redeliveries once the store
    /// answers, they complete the batch exactly once.
    pub async fn ingest_deliveries(
        &self,
        events: Vec<Event>,
        redelivered: Vec<bool>,
        sources: Vec<u16>,
    ) -> Result<BatchApplied, IngestRefused> {
        let count = self.shards.len();
        let any_redelivered = redelivered.iter().any(|flag| *flag);
        let mut parts: Vec<ApplyBatch> = (0..count)
            .map(|_| ApplyBatch {
                events: Vec::with_capacity(events.len() / count + 1),
                redelivered: Vec::new(),
                sources: Vec::new(),
            })
            .collect();
        for (index, event) in events.into_iter().enumerate() {
            let part = &mut parts[shard_of(event.user_id, count)];
            if any_redelivered {
                part.redelivered.resize(part.events.len(), false);
                part.redelivered
                    .push(redelivered.get(index).copied().unwrap_or(false));
            }
            if let Some(source) = sources.get(index) {
                part.sources.push(*source);
            }
            part.events.push(event);
        }
        let sends = parts
            .into_iter()
            .enumerate()
            .filter(|(_, part)| !part.events.is_empty())
            .map(|(index, part)| self.shards[index].send(part));
        let mut total = BatchApplied::default();
        let mut refused: Option<IngestRefused> = None;
        for result in join_all(sends).await {
            match result {
                Ok(Ok(applied)) => {
                    total.applied += applied.applied;
                    total.duplicates += applied.duplicates;
                }
                Ok(Err(Refused {
                    error,
                    events,
                    sources,
                })) => {
                    let refused = refused.get_or_insert_with(|| IngestRefused {
                        error: EngineError::Store(error),
                        events: Vec::new(),
                        sources: Vec::new(),
                    });
                    refused.events.extend(events);
                    refused.sources.extend(sources);
                }
                Err(error) => {
                    // The events went down with a stopped actor: nothing to retry here.
                    return Err(IngestRefused {
                        error: error.into(),
                        events: Vec::new(),
                        sources: Vec::new(),
                    });
                }
            }
        }
        match refused {
            Some(refused) => Err(refused),
            None => Ok(total),
        }
    }

    /// Feature vectors for scoring each product in a session, from current state.
    pub async fn features(
        &self,
        key: SessionKey,
        product_ids: Vec<u64>,
    ) -> Result<Vec<FeatureVector>, EngineError> {
        let user_side = self.shard(key.user_id).send(UserSideFeatures {
            key,
            product_ids: product_ids.clone(),
        });
        let catalog_side = self.catalog.send(CatalogFeatures {
            product_ids: product_ids.clone(),
        });
        let (user_side, catalog_side) = futures_util::future::join(user_side, catalog_side).await;
        let (user_side, catalog_side) = (user_side?, catalog_side?);
        let width = FEATURE_COUNT - USER_SIDE_COUNT;
        Ok((0..product_ids.len())
            .map(|index| {
                let mut vector = [0.0; FEATURE_COUNT];
                vector[..USER_SIDE_COUNT].copy_from_slice(
                    &user_side[index * USER_SIDE_COUNT..(index + 1) * USER_SIDE_COUNT],
                );
                vector[USER_SIDE_COUNT..]
                    .copy_from_slice(&catalog_side[index * width..(index + 1) * width]);
                vector
            })
            .collect())
    }

    /// A session's state.
    pub async fn session(&self, key: SessionKey) -> Result<Option<SessionState>, EngineError> {
        Ok(self.shard(key.user_id).send(GetSession { key }).await??)
    }

    /// A user's state.
    pub async fn user(&self, user_id: u64) -> Result<Option<UserState>, EngineError> {
        Ok(self.shard(user_id).send(GetUser { user_id }).await??)
    }

    /// A product's state.
    pub async fn product(&self, product_id: u64) -> Result<Option<ProductState>, EngineError> {
        Ok(self.catalog.send(GetProduct { product_id }).await??)
    }

    /// Makes everything applied so far durable; with `close_sessions`, ends every live session
    /// first. Returns the number of sessions closed.
    pub async fn flush(&self, close_sessions: bool) -> Result<usize, EngineError> {
        let mut closed = 0;
        for shard in self.shards.iter() {
            let mut close = close_sessions;
            loop {
                match shard
                    .send(FlushNow {
                        close_sessions: close,
                    })
                    .await?
                {
                    Ok(done) => {
                        closed += done.sessions_closed;
                        break;
                    }
                    Err(StoreError::Busy) => {
                        // A timed flush is running; the sessions were closed already if asked.
                        close = false;
                        actix::clock::sleep(Duration::from_millis(2)).await;
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        }
        // Shards sent their catalog batches before answering, so they are queued ahead of this.
        loop {
            match self.catalog.send(FlushCatalog).await? {
                Ok(_) => break,
                Err(StoreError::Busy) => actix::clock::sleep(Duration::from_millis(2)).await,
                Err(error) => return Err(error.into()),
            }
        }
        Ok(closed)
    }

    /// Tells every actor that the bus acknowledged everything applied before the last
    /// [`Engine::flush`], so delivery guards may forget older identities.
    pub async fn forget_acknowledged(&self) -> Result<(), EngineError> {
        for shard in self.shards.iter() {
            shard.send(crate::shard::ForgetAcknowledged).await?;
        }
        self.catalog.send(crate::shard::ForgetAcknowledged).await?;
        Ok(())
    }

    /// Drops every entity in memory, flushed or not; each rehydrates from the store on next use.
    /// For an instance that lost its bus connection: another may own its partitions now, and
    /// the bus redelivers what this one had not acknowledged. Stale state kept in memory would
    /// later overwrite that instance's writes.
    pub async fn drop_all(&self) -> Result<(), EngineError> {
        for shard in self.shards.iter() {
            shard.send(crate::shard::DropAll).await?;
        }
        self.catalog.send(crate::shard::DropAll).await?;
        Ok(())
    }

    /// Flushes, then stops every actor and waits for their threads, releasing the store.
    pub async fn stop(&self) -> Result<(), EngineError> {
        let flushed = self.flush(false).await;
        let arbiters: Vec<Arbiter> =
            std::mem::take(&mut *self.arbiters.lock().expect("arbiter list lock"));
        for arbiter in &arbiters {
            arbiter.stop();
        }
        // Joining blocks, so it runs off the caller's thread.
        let joined = std::thread::spawn(move || {
            for arbiter in arbiters {
                let _ = arbiter.join();
            }
        });
        while !joined.is_finished() {
            actix::clock::sleep(Duration::from_millis(5)).await;
        }
        flushed.map(|_| ())
    }

    /// Totals over every shard.
    pub async fn stats(&self) -> Result<EngineStats, EngineError> {
        let mut stats = EngineStats {
            store_healthy: true,
            ..EngineStats::default()
        };
        for shard in self.shards.iter() {
            let shard_stats = shard.send(GetShardStats).await?;
            stats.live_sessions += shard_stats.live_sessions;
            stats.users_in_memory += shard_stats.users;
            stats.watermark = stats.watermark.max(shard_stats.watermark);
            stats.store_healthy &= shard_stats.store_healthy;
        }
        let (products, healthy) = self.catalog.send(GetCatalogStats).await?;
        stats.products_in_memory = products;
        stats.store_healthy &= healthy;
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{CategoryState, ProductState, SessionState, UserState};
    use crate::store::{NoObserver, StateBatch, StoreFuture};

    /// A store that is down.
    struct DownStore;

    impl StateStore for DownStore {
        fn save(&self, _: StateBatch) -> StoreFuture<()> {
            Box::pin(async { Err(StoreError::Unavailable("down".into())) })
        }

        fn load_user_side(
            &self,
            _: Vec<u64>,
            _: Vec<SessionKey>,
        ) -> StoreFuture<(Vec<UserState>, Vec<SessionState>)> {
            Box::pin(async { Err(StoreError::Unavailable("down".into())) })
        }

        fn load_catalog(
            &self,
            _: Vec<u64>,
            _: Vec<u64>,
        ) -> StoreFuture<(Vec<ProductState>, Vec<CategoryState>)> {
            Box::pin(async { Err(StoreError::Unavailable("down".into())) })
        }
    }

    #[actix::test]
    async fn a_store_failure_is_an_error_not_an_unknown_entity_and_scoring_still_answers() {
        let settings = ShardSettings {
            session_timeout: crate::engine::DEFAULT_SESSION_TIMEOUT,
            user_idle: 3_600_000,
            flush_interval: Duration::from_secs(60),
            live_watermark: false,
            guard_deliveries: false,
            sources: crate::catalog::Sources::Single,
        };
        let engine = Engine::start(2, settings, Arc::new(DownStore), Arc::new(NoObserver));
        assert!(matches!(engine.user(5).await, Err(EngineError::Store(_))));
        assert!(matches!(
            engine.session(SessionKey::new(5, "s")).await,
            Err(EngineError::Store(_))
        ));
        assert!(matches!(
            engine.product(7).await,
            Err(EngineError::Store(_))
        ));
        let vectors = engine
            .features(SessionKey::new(5, "s"), vec![7])
            .await
            .unwrap();
        assert_eq!(vectors.len(), 1);
        // Events whose users cannot be loaded are refused, not applied on fresh state.
        assert!(matches!(
            engine.ingest(vec![view(5, 7)]).await,
            Err(EngineError::Store(_))
        ));
        engine.stop().await.ok();
    }

    fn view(user_id: u64, product_id: u64) -> Event {
        Event {
            time: 1_000,
            event_type: crate::event::EventType::View,
            product_id,
            category_id: 3,
            category_code: None,
            brand: None,
            price: 2.0,
            user_id,
            user_session: "s".into(),
            event_id: None,
        }
    }

    /// A store whose catalog reads fail while `catalog_down` is set; it holds what it saves.
    #[derive(Default)]
    struct CatalogOutage {
        catalog_down: std::sync::atomic::AtomicBool,
        products: std::sync::Mutex<Vec<ProductState>>,
    }

    impl StateStore for Arc<CatalogOutage> {
        fn save(&self, batch: StateBatch) -> StoreFuture<()> {
            self.products.lock().unwrap().extend(batch.products);
            Box::pin(async { Ok(()) })
        }

        fn load_user_side(
            &self,
            _: Vec<u64>,
            _: Vec<SessionKey>,
        ) -> StoreFuture<(Vec<UserState>, Vec<SessionState>)> {
            Box::pin(async { Ok((Vec::new(), Vec::new())) })
        }

        fn load_catalog(
            &self,
            _: Vec<u64>,
            _: Vec<u64>,
        ) -> StoreFuture<(Vec<ProductState>, Vec<CategoryState>)> {
            let down = self.catalog_down.load(std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                if down {
                    Err(StoreError::Timeout(100))
                } else {
                    Ok((Vec::new(), Vec::new()))
                }
            })
        }
    }

    /// A store whose user-side reads fail while `down` is set.
    #[derive(Default)]
    struct UserSideOutage {
        down: std::sync::atomic::AtomicBool,
    }

    impl StateStore for Arc<UserSideOutage> {
        fn save(&self, _: StateBatch) -> StoreFuture<()> {
            Box::pin(async { Ok(()) })
        }

        fn load_user_side(
            &self,
            _: Vec<u64>,
            _: Vec<SessionKey>,
        ) -> StoreFuture<(Vec<UserState>, Vec<SessionState>)> {
            let down = self.down.load(std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                if down {
                    Err(StoreError::Unavailable("down".into()))
                } else {
                    Ok((Vec::new(), Vec::new()))
                }
            })
        }

        fn load_catalog(
            &self,
            _: Vec<u64>,
            _: Vec<u64>,
        ) -> StoreFuture<(Vec<ProductState>, Vec<CategoryState>)> {
            Box::pin(async { Ok((Vec::new(), Vec::new())) })
        }
    }

    #[actix::test]
    async fn a_refused_part_of_a_batch_comes_back_and_its_retry_completes_the_batch_once() {
        let settings = ShardSettings {
            session_timeout: crate::engine::DEFAULT_SESSION_TIMEOUT,
            user_idle: 3_600_000,
            flush_interval: Duration::from_secs(60),
            live_watermark: false,
            guard_deliveries: true,
            sources: crate::catalog::Sources::Single,
        };
        let store = Arc::new(UserSideOutage::default());
        let engine = Engine::start(2, settings, Arc::new(store.clone()), Arc::new(NoObserver));
        // Two users on different shards; the first is in memory before the store goes away.
        let (known, unknown) = (
            1,
            (2..)
                .find(|user| shard_of(*user, 2) != shard_of(1, 2))
                .unwrap(),
        );
        engine.ingest(vec![view(known, 7)]).await.unwrap();
        store.down.store(true, std::sync::atomic::Ordering::SeqCst);

        let mut second = view(known, 7);
        second.time += 1;
        let batch = vec![second, view(unknown, 7)];
        let refused = engine
            .ingest_deliveries(batch.clone(), vec![false, false], Vec::new())
            .await
            .expect_err("the unknown user cannot be loaded");
        assert!(matches!(refused.error, EngineError::Store(_)));
        assert_eq!(
            refused.events,
            vec![view(unknown, 7)],
            "only the refused shard's part"
        );
        assert_eq!(engine.product(7).await.unwrap().unwrap().counts.views, 2);

        // Retried as redeliveries once the store answers: applied once, and a redelivery of the
        // whole batch (a lost acknowledgement) changes nothing.
        store.down.store(false, std::sync::atomic::Ordering::SeqCst);
        engine
            .ingest_deliveries(refused.events, vec![true], Vec::new())
            .await
            .unwrap();
        engine
            .ingest_deliveries(batch, vec![true, true], Vec::new())
            .await
            .unwrap();
        assert_eq!(engine.product(7).await.unwrap().unwrap().counts.views, 3);
        assert_eq!(engine.user(unknown).await.unwrap().unwrap().counts.views, 1);
        assert_eq!(engine.user(known).await.unwrap().unwrap().counts.views, 2);
        engine.stop().await.ok();
    }

    #[actix::test]
    async fn catalog_events_wait_for_a_failed_rehydration_and_block_acknowledgement() {
        let settings = ShardSettings {
            session_timeout: crate::engine::DEFAULT_SESSION_TIMEOUT,
            user_idle: 3_600_000,
            flush_interval: Duration::from_secs(60),
            live_watermark: false,
            guard_deliveries: true,
            sources: crate::catalog::Sources::Single,
        };
        let store = Arc::new(CatalogOutage::default());
        store
            .catalog_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let engine = Engine::start(1, settings, Arc::new(store.clone()), Arc::new(NoObserver));
        engine.ingest(vec![view(5, 7), view(6, 7)]).await.unwrap();
        assert!(
            engine.flush(false).await.is_err(),
            "nothing may be acknowledged while catalog events wait"
        );
        assert!(!engine.stats().await.unwrap().store_healthy);
        store
            .catalog_down
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let mut flushed = engine.flush(false).await;
        for _ in 0..100 {
            if flushed.is_ok() {
                break;
            }
            actix::clock::sleep(Duration::from_millis(20)).await;
            flushed = engine.flush(false).await;
        }
        flushed.expect("the parked events apply once the store answers");
        let product = engine.product(7).await.unwrap().expect("product 7");
        assert_eq!(product.counts.views, 2, "both events applied once");
        let stored = store.products.lock().unwrap().clone();
        assert_eq!(stored.last().map(|product| product.counts.views), Some(2));
        engine.stop().await.ok();
    }

    /// A store two engines share, holding the latest save of every entity and part.
    #[derive(Default)]
    struct SharedStore {
        users: std::sync::Mutex<std::collections::HashMap<u64, UserState>>,
        sessions: std::sync::Mutex<std::collections::HashMap<SessionKey, SessionState>>,
        products: std::sync::Mutex<std::collections::BTreeMap<(u64, u16), ProductState>>,
        categories: std::sync::Mutex<std::collections::BTreeMap<(u64, u16), CategoryState>>,
    }

    impl StateStore for Arc<SharedStore> {
        fn save(&self, batch: StateBatch) -> StoreFuture<()> {
            for user in batch.users {
                self.users.lock().unwrap().insert(user.user_id, user);
            }
            for session in batch.sessions {
                let key = SessionKey::new(session.user_id, &session.session_id);
                self.sessions.lock().unwrap().insert(key, session);
            }
            for product in batch.products {
                let key = (product.product_id, product.source);
                self.products.lock().unwrap().insert(key, product);
            }
            for category in batch.categories {
                let key = (category.category_id, category.source);
                self.categories.lock().unwrap().insert(key, category);
            }
            Box::pin(async { Ok(()) })
        }

        fn load_user_side(
            &self,
            users: Vec<u64>,
            sessions: Vec<SessionKey>,
        ) -> StoreFuture<(Vec<UserState>, Vec<SessionState>)> {
            let stored = self.users.lock().unwrap();
            let users = users
                .iter()
                .filter_map(|id| stored.get(id).cloned())
                .collect();
            let stored = self.sessions.lock().unwrap();
            let sessions = sessions
                .iter()
                .filter_map(|key| stored.get(key).cloned())
                .collect();
            Box::pin(async move { Ok((users, sessions)) })
        }

        fn load_catalog(
            &self,
            products: Vec<u64>,
            categories: Vec<u64>,
        ) -> StoreFuture<(Vec<ProductState>, Vec<CategoryState>)> {
            let stored = self.products.lock().unwrap();
            let products: Vec<ProductState> = stored
                .values()
                .filter(|part| products.contains(&part.product_id))
                .cloned()
                .collect();
            let stored = self.categories.lock().unwrap();
            let categories = stored
                .values()
                .filter(|part| {
                    categories.contains(&part.category_id)
                        || products
                            .iter()
                            .any(|product| product.category_id == part.category_id)
                })
                .cloned()
                .collect();
            Box::pin(async move { Ok((products, categories)) })
        }
    }

    #[actix::test]
    async fn instances_sharing_partitions_count_a_product_once_from_its_parts() {
        let settings = ShardSettings {
            session_timeout: crate::engine::DEFAULT_SESSION_TIMEOUT,
            user_idle: 3_600_000,
            flush_interval: Duration::from_secs(60),
            live_watermark: false,
            guard_deliveries: true,
            sources: crate::catalog::Sources::Shared {
                partitions: 2,
                remote_ttl: Duration::from_millis(20),
            },
        };
        let store = Arc::new(SharedStore::default());
        let start = || {
            Engine::start(
                1,
                settings.clone(),
                Arc::new(store.clone()),
                Arc::new(NoObserver),
            )
        };
        let (a, b) = (start(), start());
        let views = |user_id: u64, count: usize| {
            vec![view(user_id, 7); count]
                .into_iter()
                .enumerate()
                .map(|(index, mut event)| {
                    event.time += index as i64;
                    event
                })
                .collect::<Vec<_>>()
        };
        // Instance a consumes partition 0, instance b partition 1.
        let (first, second) = (views(1, 3), views(2, 2));
        a.ingest_deliveries(first.clone(), Vec::new(), vec![0; 3])
            .await
            .unwrap();
        b.ingest_deliveries(second.clone(), Vec::new(), vec![1; 2])
            .await
            .unwrap();
        a.flush(false).await.unwrap();
        b.flush(false).await.unwrap();
        let views_seen = |engine: Engine| async move {
            engine
                .product(7)
                .await
                .unwrap()
                .map_or(0, |product| product.counts.views)
        };
        assert_eq!(views_seen(a.clone()).await, 5, "a: its part and b's");
        assert_eq!(views_seen(b.clone()).await, 5, "b: its part and a's");
        assert_eq!(store.products.lock().unwrap().len(), 2, "one part each");

        // A redelivery of what a already applied counts nowhere; b's new events reach a once
        // its copy of b's part is older than the time to live.
        a.ingest_deliveries(first.clone(), vec![true; 3], vec![0; 3])
            .await
            .unwrap();
        let mut more = views(2, 4);
        more.drain(..2);
        b.ingest_deliveries(more, Vec::new(), vec![1; 2])
            .await
            .unwrap();
        b.flush(false).await.unwrap();
        let mut seen = 0;
        for _ in 0..100 {
            seen = views_seen(a.clone()).await;
            if seen == 7 {
                break;
            }
            actix::clock::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(seen, 7, "a sees b's later events");

        // After a lost connection a drops its state, and b takes partition 0 over from the store.
        a.drop_all().await.unwrap();
        let late = views(1, 5).split_off(3);
        b.ingest_deliveries(late, Vec::new(), vec![0; 2])
            .await
            .unwrap();
        b.flush(false).await.unwrap();
        assert_eq!(views_seen(b.clone()).await, 9, "b: both parts, continued");
        let part = store.products.lock().unwrap()[&(7, 0)].clone();
        assert_eq!(
            part.counts.views, 5,
            "partition 0's part continued from the store"
        );
        a.stop().await.ok();
        b.stop().await.ok();
    }
}
