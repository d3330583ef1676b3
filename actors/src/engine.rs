//! `Engine`: the handle to the running actors. It starts one arbiter per shard, each running a
//! [`ShardActor`] (the registry of its users' and sessions' actors) and a [`CatalogActor`] (one
//! partition of the products); routes each batch by a hash of user_id, so one user's events
//! always land, in order, on the same shard; and gathers features for scoring from a user's
//! shard and its products' partitions.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::join_all;

use crate::board::Board;
use crate::catalog::{
    CatalogActor, CatalogFeatures, CaughtUp, FlushCatalog, GetCatalogStats, GetProduct,
    partition_of,
};
use crate::clock::EventClock;
use crate::delivery::Delivery;
use crate::event::{Event, Millis};
use crate::features::{
    FEATURE_COUNT, FeatureVector, ProductState, SessionKey, SessionState, USER_SIDE_COUNT,
    UserState,
};
use crate::lifecycle::EntityContext;
use crate::messages::{BatchApplied, DropAll, ForgetAcknowledged, Refused};
use crate::shard::{
    ApplyBatch, Due, FlushNow, GetSession, GetShardStats, GetUser, ScoreFeatures, ShardActor,
    ShardSettings,
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

/// Deliveries the engine did not apply, and why. `deliveries` is empty when they cannot be
/// retried (an actor stopped); otherwise nothing of them was applied, and the rest of their
/// batch was.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct IngestRefused {
    pub error: EngineError,
    pub deliveries: Vec<Delivery>,
}

/// Totals over every shard and catalog partition.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct EngineStats {
    pub live_sessions: usize,
    pub users_in_memory: usize,
    pub products_in_memory: usize,
    pub watermark: Millis,
    pub store_healthy: bool,
}

/// Feature vectors for scoring, and whether they were read from the board alone (no message to
/// an actor) or asked of the actors, at least in part.
pub struct FeatureRead {
    pub vectors: Vec<FeatureVector>,
    pub on_board: bool,
    /// The shopper's purchase days, for the customer-value model; `None` for one not seen yet.
    pub purchases: Option<crate::user::ShopperPurchases>,
}

/// A cheap, cloneable handle to the running engine.
#[derive(Clone)]
pub struct Engine {
    shards: Arc<Vec<Addr<ShardActor>>>,
    catalogs: Arc<Vec<Addr<CatalogActor>>>,
    store: Arc<dyn StateStore>,
    arbiters: Arc<std::sync::Mutex<Vec<Arbiter>>>,
    /// Event time per bus partition, kept where every event of a partition passes, before the
    /// events split over shards: every shard ends sessions by the same time, the one history
    /// replay keeps (see [`crate::clock`]).
    clocks: Arc<SourceClocks>,
    /// What the entity actors publish for scores to read on the caller's thread.
    board: Arc<Board>,
}

/// The event clocks of the bus partitions.
struct SourceClocks {
    quorum: usize,
    clocks: std::sync::Mutex<std::collections::BTreeMap<u16, EventClock>>,
}

impl SourceClocks {
    /// Observes a batch's events in order; returns the watermarks of the partitions it touched.
    fn observe(&self, deliveries: &[Delivery]) -> Vec<(u16, Millis)> {
        let mut clocks = self.clocks.lock().expect("clock lock");
        let mut touched: Vec<u16> = Vec::new();
        for delivery in deliveries {
            clocks
                .entry(delivery.source)
                .or_insert_with(|| EventClock::new(self.quorum))
                .observe(delivery.event.user_id, delivery.event.time);
            if !touched.contains(&delivery.source) {
                touched.push(delivery.source);
            }
        }
        touched
            .into_iter()
            .map(|source| (source, clocks[&source].watermark()))
            .collect()
    }

    /// Every partition's watermark.
    fn watermarks(&self) -> Vec<(u16, Millis)> {
        let clocks = self.clocks.lock().expect("clock lock");
        clocks
            .iter()
            .map(|(source, clock)| (*source, clock.watermark()))
            .collect()
    }
}

/// Feature vectors from the user-side and catalog-side values of `count` products.
fn assemble(count: usize, user_side: &[f64], catalog_side: &[f64]) -> Vec<FeatureVector> {
    let width = FEATURE_COUNT - USER_SIDE_COUNT;
    (0..count)
        .map(|index| {
            let mut vector = [0.0; FEATURE_COUNT];
            vector[..USER_SIDE_COUNT].copy_from_slice(
                &user_side[index * USER_SIDE_COUNT..(index + 1) * USER_SIDE_COUNT],
            );
            vector[USER_SIDE_COUNT..]
                .copy_from_slice(&catalog_side[index * width..(index + 1) * width]);
            vector
        })
        .collect()
}

/// The shard a user belongs to. The id is mixed first: shop user ids are often sequential.
pub fn shard_of(user_id: u64, shards: usize) -> usize {
    (xxhash_rust::xxh3::xxh3_64(&user_id.to_le_bytes()) % shards as u64) as usize
}

impl Engine {
    /// Starts `shards` arbiters, each with a shard and a catalog partition. Must run inside an
    /// actix system.
    pub fn start(
        shards: usize,
        settings: ShardSettings,
        store: Arc<dyn StateStore>,
        observer: Arc<dyn Observer>,
    ) -> Engine {
        let count = shards.max(1);
        let arbiters: Vec<Arbiter> = (0..count).map(|_| Arbiter::new()).collect();
        let board = Arc::new(Board::new(
            count,
            matches!(settings.sources, crate::catalog::Sources::Single),
        ));
        let catalogs: Arc<Vec<Addr<CatalogActor>>> = Arc::new(
            arbiters
                .iter()
                .enumerate()
                .map(|(partition, arbiter)| {
                    let (store, observer, settings) =
                        (store.clone(), observer.clone(), settings.clone());
                    let cell = board.catalog(partition).clone();
                    CatalogActor::start_in_arbiter(&arbiter.handle(), move |_| {
                        CatalogActor::new(
                            (partition, count),
                            store,
                            observer,
                            settings.flush_interval,
                            settings.guard_deliveries,
                            settings.sources,
                            cell,
                        )
                    })
                })
                .collect(),
        );
        let clocks = Arc::new(SourceClocks {
            quorum: settings.watermark_quorum,
            clocks: Default::default(),
        });
        let entities = Arc::new(EntityContext {
            store: store.clone(),
            session_timeout: settings.session_timeout,
            guard_deliveries: settings.guard_deliveries,
            board: board.clone(),
        });
        let shards = arbiters
            .iter()
            .enumerate()
            .map(|(index, arbiter)| {
                let (settings, entities, catalogs, observer) = (
                    settings.clone(),
                    entities.clone(),
                    catalogs.clone(),
                    observer.clone(),
                );
                ShardActor::start_in_arbiter(&arbiter.handle(), move |_| {
                    ShardActor::new((index, count), settings, entities, catalogs, observer)
                })
            })
            .collect();
        Engine {
            shards: Arc::new(shards),
            catalogs,
            store,
            arbiters: Arc::new(std::sync::Mutex::new(arbiters)),
            clocks,
            board,
        }
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    fn shard(&self, user_id: u64) -> &Addr<ShardActor> {
        &self.shards[shard_of(user_id, self.shards.len())]
    }

    fn catalog(&self, product_id: u64) -> &Addr<CatalogActor> {
        &self.catalogs[partition_of(product_id, self.catalogs.len())]
    }

    /// Resolves once every catalog partition has handled the batches sent to it before: the
    /// board's products then hold their events.
    pub async fn catalog_caught_up(&self) -> Result<(), EngineError> {
        for result in join_all(self.catalogs.iter().map(|catalog| catalog.send(CaughtUp))).await {
            result?;
        }
        Ok(())
    }

    /// Applies a batch of events delivered once (offline, HTTP); resolves when every shard has
    /// applied its part.
    pub async fn ingest(&self, events: Vec<Event>) -> Result<BatchApplied, EngineError> {
        self.ingest_deliveries(events.into_iter().map(Delivery::fresh).collect())
            .await
            .map_err(|refused| refused.error)
    }

    /// Applies a batch of deliveries from the bus, one message per shard. Redelivered events are
    /// applied only to the entities that do not remember them, so a crash between flush and
    /// acknowledgement never counts an event twice.
    ///
    /// When the store cannot load the state some deliveries need, the rest still apply, and the
    /// error carries the refused ones: retried as redeliveries once the store answers, they
    /// complete the batch exactly once.
    pub async fn ingest_deliveries(
        &self,
        deliveries: Vec<Delivery>,
    ) -> Result<BatchApplied, IngestRefused> {
        let count = self.shards.len();
        let watermarks: Arc<[(u16, Millis)]> = self.clocks.observe(&deliveries).into();
        let mut parts: Vec<Vec<Delivery>> = (0..count)
            .map(|_| Vec::with_capacity(deliveries.len() / count + 1))
            .collect();
        for delivery in deliveries {
            parts[shard_of(delivery.event.user_id, count)].push(delivery);
        }
        let sends = parts
            .into_iter()
            .enumerate()
            .filter(|(_, part)| !part.is_empty())
            .map(|(index, deliveries)| {
                self.shards[index].send(ApplyBatch {
                    deliveries,
                    watermarks: watermarks.clone(),
                })
            });
        let mut total = BatchApplied::default();
        let mut refused: Option<IngestRefused> = None;
        for result in join_all(sends).await {
            match result {
                Ok(Ok(applied)) => {
                    total.applied += applied.applied;
                    total.duplicates += applied.duplicates;
                }
                Ok(Err(Refused { error, deliveries })) if !deliveries.is_empty() => {
                    refused
                        .get_or_insert_with(|| IngestRefused {
                            error: EngineError::Store(error),
                            deliveries: Vec::new(),
                        })
                        .deliveries
                        .extend(deliveries);
                }
                Ok(Err(Refused { error, .. })) => {
                    return Err(IngestRefused {
                        error: EngineError::Store(error),
                        deliveries: Vec::new(),
                    });
                }
                Err(error) => {
                    // The events went down with a stopped actor: nothing to retry here.
                    return Err(IngestRefused {
                        error: error.into(),
                        deliveries: Vec::new(),
                    });
                }
            }
        }
        match refused {
            Some(refused) => Err(refused),
            None => Ok(total),
        }
    }

    /// Feature vectors for scoring each product in a session, from current state: read on the
    /// caller's thread from the board when the session, its user and the products are on it
    /// (see [`crate::board`]), else asked of their actors.
    pub async fn features(
        &self,
        key: SessionKey,
        product_ids: Vec<u64>,
    ) -> Result<Vec<FeatureVector>, EngineError> {
        Ok(self.read_features(key, product_ids).await?.vectors)
    }

    /// As [`Engine::features`], saying where they were read.
    pub async fn read_features(
        &self,
        key: SessionKey,
        product_ids: Vec<u64>,
    ) -> Result<FeatureRead, EngineError> {
        let user_side = self.board.user_side(key, &product_ids);
        let catalog_side = self.board.catalog_side(&product_ids);
        if let (Some(user_side), Some(catalog_side)) = (&user_side, &catalog_side) {
            return Ok(FeatureRead {
                vectors: assemble(product_ids.len(), &user_side.vectors, catalog_side),
                on_board: true,
                purchases: user_side.purchases,
            });
        }
        let user_side = async {
            match user_side {
                Some(values) => Ok::<_, MailboxError>(values),
                None => {
                    self.shard(key.user_id)
                        .send(ScoreFeatures {
                            key,
                            product_ids: product_ids.clone(),
                        })
                        .await
                }
            }
        };
        let catalog_side = async {
            match catalog_side {
                Some(values) => Ok(values),
                None => self.catalog_features(&product_ids).await,
            }
        };
        let (user_side, catalog_side) = futures_util::future::join(user_side, catalog_side).await;
        let user_side = user_side?;
        Ok(FeatureRead {
            vectors: assemble(product_ids.len(), &user_side.vectors, &catalog_side?),
            on_board: false,
            purchases: user_side.purchases,
        })
    }

    /// Features of `product_ids` for a shopper with no history and no session yet: the catalog's
    /// side read as [`Engine::features`] reads it, the shopper's side computed from nothing. No
    /// shard is asked and no store is read for a shopper who does not exist.
    pub async fn new_shopper_features(
        &self,
        product_ids: Vec<u64>,
    ) -> Result<Vec<FeatureVector>, EngineError> {
        let catalog_side = match self.board.catalog_side(&product_ids) {
            Some(values) => values,
            None => self.catalog_features(&product_ids).await?,
        };
        let mut user_side = vec![0.0; product_ids.len() * USER_SIDE_COUNT];
        for (product_id, out) in product_ids
            .iter()
            .zip(user_side.chunks_exact_mut(USER_SIDE_COUNT))
        {
            crate::features::user_side_features(None, None, *product_id, out);
        }
        Ok(assemble(product_ids.len(), &user_side, &catalog_side))
    }

    /// The catalog-side features of each product, one after another, from their partitions.
    async fn catalog_features(&self, product_ids: &[u64]) -> Result<Vec<f64>, EngineError> {
        // One request per catalog partition, with the positions of its products.
        let partitions = self.catalogs.len();
        let mut by_partition: Vec<(Vec<usize>, Vec<u64>)> = vec![Default::default(); partitions];
        for (position, product_id) in product_ids.iter().enumerate() {
            let part = &mut by_partition[partition_of(*product_id, partitions)];
            part.0.push(position);
            part.1.push(*product_id);
        }
        let answers = join_all(
            by_partition
                .into_iter()
                .enumerate()
                .filter(|(_, (positions, _))| !positions.is_empty())
                .map(|(partition, (positions, product_ids))| {
                    let sent = self.catalogs[partition].send(CatalogFeatures { product_ids });
                    async move { (positions, sent.await) }
                }),
        )
        .await;
        let width = FEATURE_COUNT - USER_SIDE_COUNT;
        let mut out = vec![0.0; product_ids.len() * width];
        for (positions, values) in answers {
            let values = values?;
            for (slot, position) in positions.into_iter().enumerate() {
                out[position * width..(position + 1) * width]
                    .copy_from_slice(&values[slot * width..(slot + 1) * width]);
            }
        }
        Ok(out)
    }

    /// Whether the session and its user are active, their state in memory (not loading,
    /// failed or passivated).
    pub fn holds_in_memory(&self, key: SessionKey) -> bool {
        self.board.holds(key)
    }

    /// A session's state, live or last.
    pub async fn session(&self, key: SessionKey) -> Result<Option<SessionState>, EngineError> {
        Ok(self
            .session_view(key)
            .await?
            .map(|view| view.state().clone()))
    }

    /// A session as reads see it: live, or ended with its last state.
    pub async fn session_view(
        &self,
        key: SessionKey,
    ) -> Result<Option<crate::session::SessionView>, EngineError> {
        Ok(self.shard(key.user_id).send(GetSession { key }).await??)
    }

    /// A user's state.
    pub async fn user(&self, user_id: u64) -> Result<Option<UserState>, EngineError> {
        Ok(self.shard(user_id).send(GetUser { user_id }).await??)
    }

    /// A product's state.
    pub async fn product(&self, product_id: u64) -> Result<Option<ProductState>, EngineError> {
        Ok(self
            .catalog(product_id)
            .send(GetProduct { product_id })
            .await??)
    }

    /// Makes everything applied so far durable; with `close_sessions`, ends every live session
    /// first (the end of a replay, or shutdown). Returns the number of sessions ended.
    pub async fn flush(&self, close_sessions: bool) -> Result<usize, EngineError> {
        self.flush_ending(if close_sessions {
            Due::All
        } else {
            Due::Buckets
        })
        .await
    }

    /// Ends every session whose deadline is before its partition's watermark, to the
    /// millisecond, then makes everything durable: the stored sessions, index and tallies are
    /// then exactly those of the events applied. Returns the number of sessions ended.
    pub async fn end_due_sessions(&self) -> Result<usize, EngineError> {
        self.flush_ending(Due::Exactly).await
    }

    async fn flush_ending(&self, due: Due) -> Result<usize, EngineError> {
        let mut closed = 0;
        let watermarks: Arc<[(u16, Millis)]> = self.clocks.watermarks().into();
        for shard in self.shards.iter() {
            loop {
                let flush = FlushNow {
                    due,
                    watermarks: watermarks.clone(),
                };
                match shard.send(flush).await? {
                    Ok(done) => {
                        closed += done.sessions_closed;
                        break;
                    }
                    Err(StoreError::Busy) => {
                        // A timed flush is running; this one follows it.
                        actix::clock::sleep(Duration::from_millis(2)).await;
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        }
        // Shards sent their catalog batches before answering, so they are queued ahead of this.
        for catalog in self.catalogs.iter() {
            loop {
                match catalog.send(FlushCatalog).await? {
                    Ok(_) => break,
                    Err(StoreError::Busy) => actix::clock::sleep(Duration::from_millis(2)).await,
                    Err(error) => return Err(error.into()),
                }
            }
        }
        Ok(closed)
    }

    /// Outcome tallies of the hours `from_hour..=to_hour` (hours since the epoch), as stored,
    /// summed over partitions and shards.
    pub async fn outcomes(
        &self,
        from_hour: i64,
        to_hour: i64,
    ) -> Result<std::collections::BTreeMap<i64, crate::outcomes::OutcomeTally>, EngineError> {
        let rows = self.store.load_tallies(from_hour, to_hour).await?;
        Ok(crate::outcomes::by_hour(
            rows.iter().map(|(key, tally)| (key, tally)),
        ))
    }

    /// Tells every actor that the bus acknowledged everything applied before the last
    /// [`Engine::flush`], so delivery guards may forget older identities.
    pub async fn forget_acknowledged(&self) -> Result<(), EngineError> {
        for shard in self.shards.iter() {
            shard.send(ForgetAcknowledged).await?;
        }
        for catalog in self.catalogs.iter() {
            catalog.send(ForgetAcknowledged).await?;
        }
        Ok(())
    }

    /// Drops every entity in memory, flushed or not; each activates from the store on next use.
    /// For an instance that lost its bus connection: another may own its partitions now, and
    /// the bus redelivers what this one had not acknowledged. Stale state kept in memory would
    /// later overwrite that instance's writes.
    pub async fn drop_all(&self) -> Result<(), EngineError> {
        // Event time too: the bus redelivers older events than the clocks have seen, and
        // sessions must not end by the time of events that are not applied any more.
        self.clocks.clocks.lock().expect("clock lock").clear();
        for shard in self.shards.iter() {
            shard.send(DropAll).await?;
        }
        for catalog in self.catalogs.iter() {
            catalog.send(DropAll).await?;
        }
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

    /// Totals over every shard and catalog partition.
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
        for catalog in self.catalogs.iter() {
            let (products, healthy) = catalog.send(GetCatalogStats).await?;
            stats.products_in_memory += products;
            stats.store_healthy &= healthy;
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Sources;
    use crate::delivery::Stored;
    use crate::event::EventType;
    use crate::features::CategoryState;
    use crate::outcomes::{IndexEntry, OpenSession, OutcomeTally, SessionEnd, TallyKey};
    use crate::replay::{DEFAULT_SESSION_TIMEOUT, ReplayEngine};
    use crate::store::{LoadedCatalog, LoadedUserSide, NoObserver, StateBatch, StoreFuture};
    use std::collections::{BTreeMap, HashMap};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// What of a save lands in a [`TestStore`]: a flush cut short writes only its first stages.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Durable {
        Nothing,
        Users,
        UsersAndSessions,
        Categories,
        Products,
        Everything,
    }

    /// A store in memory that engines of one test share, with switches for outages.
    struct TestStore {
        users: Mutex<HashMap<u64, Stored<UserState>>>,
        sessions: Mutex<HashMap<SessionKey, Stored<SessionState>>>,
        products: Mutex<BTreeMap<(u64, u16), Stored<ProductState>>>,
        categories: Mutex<BTreeMap<(u64, u16), Stored<CategoryState>>>,
        index: Mutex<HashMap<SessionKey, IndexEntry>>,
        tallies: Mutex<HashMap<TallyKey, OutcomeTally>>,
        durable: Mutex<Durable>,
        user_side_down: AtomicBool,
        catalog_down: AtomicBool,
        /// Loads of this user wait while `holding` is set.
        held_user: Mutex<Option<u64>>,
        /// Loads of this session wait while `holding` is set.
        held_session: Mutex<Option<SessionKey>>,
        holding: Arc<AtomicBool>,
        /// Saves wait, unwritten, while this is set.
        saves_held: Arc<AtomicBool>,
    }

    impl Default for TestStore {
        fn default() -> Self {
            TestStore {
                users: Mutex::default(),
                sessions: Mutex::default(),
                products: Mutex::default(),
                categories: Mutex::default(),
                index: Mutex::default(),
                tallies: Mutex::default(),
                durable: Mutex::new(Durable::Everything),
                user_side_down: AtomicBool::new(false),
                catalog_down: AtomicBool::new(false),
                held_user: Mutex::new(None),
                held_session: Mutex::new(None),
                holding: Arc::new(AtomicBool::new(false)),
                saves_held: Arc::new(AtomicBool::new(false)),
            }
        }
    }

    impl StateStore for Arc<TestStore> {
        fn save(&self, batch: Arc<StateBatch>) -> StoreFuture<Vec<SessionEnd>> {
            if self.saves_held.load(Ordering::SeqCst) {
                let (store, held) = (self.clone(), self.saves_held.clone());
                return Box::pin(async move {
                    while held.load(Ordering::SeqCst) {
                        actix::clock::sleep(Duration::from_millis(1)).await;
                    }
                    store.save(batch).await
                });
            }
            use Durable::*;
            let durable = *self.durable.lock().unwrap();
            if matches!(durable, Users | UsersAndSessions | Everything) {
                for user in &batch.users {
                    self.users
                        .lock()
                        .unwrap()
                        .insert(user.state.user_id, user.clone());
                }
            }
            if matches!(durable, UsersAndSessions | Everything) {
                for session in &batch.sessions {
                    self.sessions
                        .lock()
                        .unwrap()
                        .insert(session.state.key(), session.clone());
                }
            }
            if matches!(durable, Categories | Products | Everything) {
                for category in &batch.categories {
                    let key = (category.state.category_id, category.state.source);
                    self.categories
                        .lock()
                        .unwrap()
                        .insert(key, category.clone());
                }
            }
            if matches!(durable, Products | Everything) {
                for product in &batch.products {
                    let key = (product.state.product_id, product.state.source);
                    self.products.lock().unwrap().insert(key, product.clone());
                }
            }
            let counted = if durable == Everything {
                crate::store::apply_transitions(
                    &mut self.index.lock().unwrap(),
                    &mut self.tallies.lock().unwrap(),
                    &batch.transitions,
                )
            } else {
                Vec::new()
            };
            Box::pin(async move { Ok(counted) })
        }

        fn load_open_sessions(&self, source: u16) -> StoreFuture<Vec<OpenSession>> {
            let open = self
                .index
                .lock()
                .unwrap()
                .values()
                .filter_map(|entry| entry.open)
                .filter(|open| open.source == source)
                .collect();
            Box::pin(async move { Ok(open) })
        }

        fn load_index_entry(&self, key: SessionKey, _: u16) -> StoreFuture<IndexEntry> {
            let entry = self
                .index
                .lock()
                .unwrap()
                .get(&key)
                .copied()
                .unwrap_or_default();
            Box::pin(async move { Ok(entry) })
        }

        fn load_tallies(
            &self,
            from_hour: i64,
            to_hour: i64,
        ) -> StoreFuture<Vec<(TallyKey, OutcomeTally)>> {
            let rows = self
                .tallies
                .lock()
                .unwrap()
                .iter()
                .filter(|(key, _)| (from_hour..=to_hour).contains(&key.hour))
                .map(|(key, tally)| (*key, *tally))
                .collect();
            Box::pin(async move { Ok(rows) })
        }

        fn load_user_side(
            &self,
            users: Vec<u64>,
            sessions: Vec<SessionKey>,
        ) -> StoreFuture<LoadedUserSide> {
            let down = self.user_side_down.load(Ordering::SeqCst);
            let held = *self.held_user.lock().unwrap();
            let held_session = *self.held_session.lock().unwrap();
            let hold = (held.is_some_and(|held| users.contains(&held))
                || held_session.is_some_and(|held| sessions.contains(&held)))
            .then(|| self.holding.clone());
            let stored = self.users.lock().unwrap();
            let users: Vec<_> = users
                .iter()
                .filter_map(|id| stored.get(id).cloned())
                .collect();
            let stored = self.sessions.lock().unwrap();
            let sessions: Vec<_> = sessions
                .iter()
                .filter_map(|key| stored.get(key).cloned())
                .collect();
            Box::pin(async move {
                if let Some(holding) = hold {
                    while holding.load(Ordering::SeqCst) {
                        actix::clock::sleep(Duration::from_millis(1)).await;
                    }
                }
                if down {
                    return Err(StoreError::Unavailable("down".into()));
                }
                Ok((users, sessions))
            })
        }

        fn load_catalog(
            &self,
            products: Vec<u64>,
            categories: Vec<u64>,
        ) -> StoreFuture<LoadedCatalog> {
            let down = self.catalog_down.load(Ordering::SeqCst);
            let stored = self.products.lock().unwrap();
            let products: Vec<Stored<ProductState>> = stored
                .values()
                .filter(|part| products.contains(&part.state.product_id))
                .cloned()
                .collect();
            let stored = self.categories.lock().unwrap();
            let categories = stored
                .values()
                .filter(|part| {
                    categories.contains(&part.state.category_id)
                        || products
                            .iter()
                            .any(|product| product.state.category_id == part.state.category_id)
                })
                .cloned()
                .collect();
            Box::pin(async move {
                if down {
                    return Err(StoreError::Timeout(100));
                }
                Ok((products, categories))
            })
        }
    }

    fn settings(guard_deliveries: bool) -> ShardSettings {
        ShardSettings {
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            user_idle: 3_600_000,
            flush_interval: Duration::from_secs(60),
            live_watermark: false,
            guard_deliveries,
            sources: Sources::Single,
            watermark_quorum: 1,
            foreign_max_age: Duration::from_millis(20),
        }
    }

    fn start(shards: usize, settings: ShardSettings, store: &Arc<TestStore>) -> Engine {
        Engine::start(
            shards,
            settings,
            Arc::new(store.clone()),
            Arc::new(NoObserver),
        )
    }

    fn view(user_id: u64, product_id: u64) -> Event {
        Event {
            time: 1_000,
            event_type: EventType::View,
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

    fn redelivered(events: &[Event]) -> Vec<Delivery> {
        events
            .iter()
            .map(|event| Delivery {
                redelivered: true,
                ..Delivery::fresh(event.clone())
            })
            .collect()
    }

    /// A user on the same shard as `user_id` (of `shards`), and one on another.
    fn neighbours(user_id: u64, shards: usize) -> (u64, u64) {
        let same = (user_id + 1..)
            .find(|other| shard_of(*other, shards) == shard_of(user_id, shards))
            .unwrap();
        let other = (user_id + 1..)
            .find(|other| shard_of(*other, shards) != shard_of(user_id, shards))
            .unwrap();
        (same, other)
    }

    #[actix::test]
    async fn a_store_failure_is_an_error_not_an_unknown_entity_and_scoring_still_answers() {
        let store = Arc::new(TestStore::default());
        store.user_side_down.store(true, Ordering::SeqCst);
        store.catalog_down.store(true, Ordering::SeqCst);
        let engine = start(2, settings(false), &store);
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
        assert!(matches!(engine.user(5).await, Err(EngineError::Store(_))));
        engine.stop().await.ok();
    }

    #[actix::test]
    async fn a_refused_part_of_a_batch_comes_back_and_its_retry_completes_the_batch_once() {
        let store = Arc::new(TestStore::default());
        let engine = start(2, settings(true), &store);
        // Two users; the first is in memory before the store goes away.
        let (known, (_, unknown)) = (1, neighbours(1, 2));
        engine.ingest(vec![view(known, 7)]).await.unwrap();
        store.user_side_down.store(true, Ordering::SeqCst);

        let mut second = view(known, 7);
        second.time += 1;
        let batch = vec![second, view(unknown, 7)];
        let refused = engine
            .ingest_deliveries(batch.iter().cloned().map(Delivery::fresh).collect())
            .await
            .expect_err("the unknown user cannot be loaded");
        assert!(matches!(refused.error, EngineError::Store(_)));
        assert_eq!(
            refused.deliveries,
            vec![Delivery::fresh(view(unknown, 7))],
            "only the unknown user's events"
        );
        assert_eq!(engine.product(7).await.unwrap().unwrap().counts.views, 2);

        // Retried as redeliveries once the store answers: applied once, and a redelivery of the
        // whole batch (a lost acknowledgement) changes nothing.
        store.user_side_down.store(false, Ordering::SeqCst);
        engine
            .ingest_deliveries(redelivered(&[view(unknown, 7)]))
            .await
            .unwrap();
        engine.ingest_deliveries(redelivered(&batch)).await.unwrap();
        assert_eq!(engine.product(7).await.unwrap().unwrap().counts.views, 3);
        assert_eq!(engine.user(unknown).await.unwrap().unwrap().counts.views, 1);
        assert_eq!(engine.user(known).await.unwrap().unwrap().counts.views, 2);
        engine.stop().await.ok();
    }

    /// An ended session leaves the shard's hands only once the store has it: while its write is
    /// in flight, reads still find it (a flush used to hand it to the write and forget it, and
    /// the session answered 404 until the write was durable).
    #[actix::test]
    async fn an_ended_session_is_readable_while_its_write_is_in_flight() {
        use crate::session::SessionView;
        let store = Arc::new(TestStore::default());
        let engine = start(1, settings(false), &store);
        let key = SessionKey::new(5, "s");
        engine.ingest(vec![view(5, 7)]).await.unwrap();
        // Much later, another shopper moves event time past the session's deadline.
        let mut later = view(6, 8);
        later.time += 2 * DEFAULT_SESSION_TIMEOUT;
        engine.ingest(vec![later]).await.unwrap();

        // The flush that ends it waits on the store.
        store.saves_held.store(true, Ordering::SeqCst);
        let flush = {
            let engine = engine.clone();
            actix::spawn(async move { engine.end_due_sessions().await })
        };
        actix::clock::sleep(Duration::from_millis(50)).await;
        assert!(!flush.is_finished(), "the write is held");
        assert!(store.sessions.lock().unwrap().get(&key).is_none());
        match engine.session_view(key).await.unwrap() {
            Some(SessionView::Ended(session)) => assert_eq!(session.counts.views, 1),
            other => panic!("the ended session while its write is in flight: {other:?}"),
        }

        store.saves_held.store(false, Ordering::SeqCst);
        flush.await.unwrap().unwrap();
        assert!(store.sessions.lock().unwrap().get(&key).is_some());
        assert!(matches!(
            engine.session_view(key).await.unwrap(),
            Some(SessionView::Ended(_))
        ));
        engine.stop().await.ok();
    }

    /// Between the shard handing a session's end to its user and hearing back, neither the shard
    /// nor the store has its last state: a read then waits for the end instead of answering
    /// "no such session" (it did, and a shopper's ended session flickered to 404).
    #[actix::test]
    async fn a_session_read_while_it_ends_waits_for_its_end() {
        use crate::session::SessionView;
        let store = Arc::new(TestStore::default());
        let engine = start(1, settings(false), &store);
        let key = SessionKey::new(5, "s");
        engine.ingest(vec![view(5, 7)]).await.unwrap();

        // The user is busy: a score of its other session waits on that session's load, so the
        // end of "s" will wait in the user's mailbox.
        let other = SessionKey::new(5, "t");
        *store.held_session.lock().unwrap() = Some(other);
        store.holding.store(true, Ordering::SeqCst);
        let score = {
            let engine = engine.clone();
            actix::spawn(async move { engine.features(other, vec![7]).await })
        };
        actix::clock::sleep(Duration::from_millis(20)).await;
        // Another shopper moves event time past the deadline of "s": the shard ends it.
        let mut later = view(6, 8);
        later.time += 2 * DEFAULT_SESSION_TIMEOUT;
        engine.ingest(vec![later]).await.unwrap();
        let read = {
            let engine = engine.clone();
            actix::spawn(async move { engine.session_view(key).await })
        };
        // A flush meanwhile makes that end durable too: the user, busy, answers its snapshot
        // after the end, with the last state of "s" in it.
        let flush = {
            let engine = engine.clone();
            actix::spawn(async move { engine.end_due_sessions().await })
        };
        actix::clock::sleep(Duration::from_millis(50)).await;
        assert!(!score.is_finished(), "the score waits on the held load");
        assert!(!read.is_finished(), "the read waits for the end");
        assert!(!flush.is_finished(), "the flush waits for the end");

        store.holding.store(false, Ordering::SeqCst);
        score.await.unwrap().unwrap();
        match read.await.unwrap().unwrap() {
            Some(SessionView::Ended(session)) => assert_eq!(session.counts.views, 1),
            other => panic!("the session read while it ended: {other:?}"),
        }
        flush.await.unwrap().unwrap();
        assert!(
            store.sessions.lock().unwrap().contains_key(&key),
            "the end is durable once the flush returns"
        );
        engine.stop().await.ok();
    }

    #[actix::test]
    async fn a_user_whose_load_is_held_back_holds_back_no_other_user_of_its_shard() {
        let store = Arc::new(TestStore::default());
        let engine = start(2, settings(false), &store);
        let (slow, (fast, _)) = (11, neighbours(11, 2));
        *store.held_user.lock().unwrap() = Some(slow);
        store.holding.store(true, Ordering::SeqCst);
        let held = {
            let engine = engine.clone();
            actix::spawn(async move { engine.ingest(vec![view(slow, 7)]).await })
        };
        actix::clock::sleep(Duration::from_millis(20)).await;
        let mut later = view(fast, 8);
        later.time += 5;
        // The other user's events apply and score while the first user still loads.
        let applied = engine.ingest(vec![later]).await.unwrap();
        assert_eq!(applied.applied, 1);
        let vector = engine
            .features(SessionKey::new(fast, "s"), vec![8])
            .await
            .unwrap();
        let session_views = crate::features::FEATURES
            .iter()
            .position(|feature| feature.name == "session_views")
            .unwrap();
        assert_eq!(vector[0][session_views], 1.0);
        assert!(!held.is_finished(), "the held user's batch still waits");

        store.holding.store(false, Ordering::SeqCst);
        assert_eq!(held.await.unwrap().unwrap().applied, 1);
        assert_eq!(engine.user(slow).await.unwrap().unwrap().counts.views, 1);
        engine.stop().await.ok();
    }

    #[actix::test]
    async fn a_new_shopper_is_scored_from_the_catalog_alone_without_a_user_load() {
        let store = Arc::new(TestStore::default());
        let engine = start(2, settings(false), &store);
        engine.ingest(vec![view(5, 7), view(6, 8)]).await.unwrap();
        engine.catalog_caught_up().await.unwrap();
        let nobody = SessionKey::new(0, "");
        let through_the_shard = engine.features(nobody, vec![7, 8, 9]).await.unwrap();
        // A load of user 0 now waits forever: the new shopper's features must not need one.
        *store.held_user.lock().unwrap() = Some(0);
        store.holding.store(true, Ordering::SeqCst);
        engine.flush(false).await.unwrap();
        engine.drop_all().await.unwrap();
        let vectors = actix::clock::timeout(
            Duration::from_secs(10),
            engine.new_shopper_features(vec![7, 8, 9]),
        )
        .await
        .expect("a new shopper's features wait for no user load")
        .unwrap();
        assert_eq!(vectors, through_the_shard);
        store.holding.store(false, Ordering::SeqCst);
        engine.stop().await.ok();
    }

    #[actix::test]
    async fn catalog_events_wait_for_a_failed_rehydration_and_block_acknowledgement() {
        let store = Arc::new(TestStore::default());
        store.catalog_down.store(true, Ordering::SeqCst);
        let engine = start(1, settings(true), &store);
        engine.ingest(vec![view(5, 7), view(6, 7)]).await.unwrap();
        assert!(
            engine.flush(false).await.is_err(),
            "nothing may be acknowledged while catalog events wait"
        );
        assert!(!engine.stats().await.unwrap().store_healthy);
        store.catalog_down.store(false, Ordering::SeqCst);
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
        let stored = store.products.lock().unwrap()[&(7, 0)].clone();
        assert_eq!(stored.state.counts.views, 2);
        engine.stop().await.ok();
    }

    #[actix::test]
    async fn sessions_end_at_their_deadline_and_idle_users_leave_memory() {
        let store = Arc::new(TestStore::default());
        let engine = start(1, settings(false), &store);
        let mut cart = view(1, 7);
        cart.event_type = EventType::Cart;
        engine.ingest(vec![cart]).await.unwrap();
        let mut other = view(2, 7);
        other.time = 1_000 + 20 * 60_000;
        engine.ingest(vec![other]).await.unwrap();
        assert_eq!(engine.stats().await.unwrap().live_sessions, 2);
        // Two hours later in event time: both sessions ended, and both users have been idle
        // for longer than an hour.
        let mut much_later = view(3, 8);
        much_later.time = 1_000 + 2 * 3_600_000;
        engine.ingest(vec![much_later]).await.unwrap();
        let mut ended = 0;
        for _ in 0..100 {
            ended = 2 - (engine.stats().await.unwrap().live_sessions - 1);
            if ended == 2 {
                break;
            }
            actix::clock::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(ended, 2, "both earlier sessions ended");
        engine.flush(false).await.unwrap();
        let stats = engine.stats().await.unwrap();
        assert_eq!(stats.users_in_memory, 1, "only the latest user stays");
        let stored = store.sessions.lock().unwrap()[&SessionKey::new(1, "s")].clone();
        assert_eq!(
            stored.state.cart_items(),
            1,
            "the ended session was written"
        );
        // A passivated user activates again from the store, unchanged.
        assert_eq!(engine.user(1).await.unwrap().unwrap().counts.carts, 1);
        engine.stop().await.ok();
    }

    fn shop_event(
        seconds: i64,
        event_type: EventType,
        user_id: u64,
        session: &str,
        product_id: u64,
    ) -> Event {
        let (category_id, price) = match product_id {
            100 => (10, 50.0),
            101 => (10, 20.0),
            102 => (10, 200.0),
            _ => (20, 5.0),
        };
        Event {
            time: seconds * 1000,
            event_type,
            product_id,
            category_id,
            category_code: None,
            brand: None,
            price,
            user_id,
            user_session: session.into(),
            event_id: None,
        }
    }

    /// A crash after a flush cut short at every stage, at every point of a stream: the bus
    /// redelivers everything, and every entity ends up as if each event had been applied once.
    #[actix::test]
    async fn redelivery_after_a_cut_short_flush_counts_every_event_once() {
        use EventType::*;
        let events = [
            shop_event(0, View, 1, "a", 100),
            shop_event(10, Cart, 1, "a", 100),
            shop_event(10, Cart, 1, "a", 100),
            shop_event(20, Purchase, 1, "a", 100),
            shop_event(30, View, 2, "x", 101),
            shop_event(40, View, 2, "x", 102),
            shop_event(4000, View, 1, "b", 101),
            shop_event(4010, Cart, 1, "b", 200),
            shop_event(4020, Purchase, 1, "b", 200),
        ];
        let mut clean = ReplayEngine::new(DEFAULT_SESSION_TIMEOUT);
        for event in &events {
            clean.apply(event);
        }
        for cut in 0..=events.len() {
            for durable in [
                Durable::Nothing,
                Durable::Users,
                Durable::UsersAndSessions,
                Durable::Categories,
                Durable::Products,
                Durable::Everything,
            ] {
                // Before the crash: the first `cut` events applied, part of them made durable.
                let store = Arc::new(TestStore::default());
                *store.durable.lock().unwrap() = durable;
                let engine = start(2, settings(true), &store);
                engine
                    .ingest_deliveries(events[..cut].iter().cloned().map(Delivery::fresh).collect())
                    .await
                    .unwrap();
                engine.flush(false).await.unwrap();
                engine.drop_all().await.unwrap();
                engine.stop().await.ok();
                // Nothing was acknowledged: the bus redelivers every event.
                *store.durable.lock().unwrap() = Durable::Everything;
                let restarted = start(2, settings(true), &store);
                restarted
                    .ingest_deliveries(redelivered(&events))
                    .await
                    .unwrap();
                restarted.flush(false).await.unwrap();
                let context = format!("cut {cut}, durable {durable:?}");
                for (user_id, user) in &clean.users.users {
                    let online = restarted.user(*user_id).await.unwrap();
                    assert_eq!(online.as_ref(), Some(user), "user {user_id}: {context}");
                }
                for (key, session) in &clean.users.sessions {
                    let online = restarted.session(*key).await.unwrap();
                    assert_eq!(online.as_ref(), Some(session), "session {key:?}: {context}");
                }
                for ((product_id, _), product) in &clean.catalog.products {
                    let online = restarted.product(*product_id).await.unwrap();
                    assert_eq!(
                        online.as_ref(),
                        Some(product),
                        "product {product_id}: {context}"
                    );
                }
                for (key, category) in &clean.catalog.categories {
                    let stored = store.categories.lock().unwrap()[key].clone();
                    assert_eq!(&stored.state, category, "category {key:?}: {context}");
                }
                restarted.stop().await.ok();
            }
        }
    }

    #[actix::test]
    async fn a_fresh_delivery_is_never_mistaken_for_a_redelivery() {
        let store = Arc::new(TestStore::default());
        let engine = start(1, settings(true), &store);
        let view = view(42, 5);
        engine.ingest(vec![view.clone()]).await.unwrap();
        // The same event again is a duplicate, and the same event redelivered (the guard
        // remembers it) changes nothing either.
        assert_eq!(
            engine.ingest(vec![view.clone()]).await.unwrap().duplicates,
            1
        );
        engine
            .ingest_deliveries(redelivered(std::slice::from_ref(&view)))
            .await
            .unwrap();
        assert_eq!(engine.user(42).await.unwrap().unwrap().counts.views, 1);
        let session = engine
            .session(SessionKey::of(&view))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(session.counts.views, 1);
        engine.stop().await.ok();
    }

    #[actix::test]
    async fn instances_sharing_partitions_count_a_product_once_from_its_parts() {
        let settings = ShardSettings {
            sources: Sources::Shared {
                partitions: 2,
                remote_ttl: Duration::from_millis(20),
            },
            ..settings(true)
        };
        let store = Arc::new(TestStore::default());
        let (a, b) = (
            start(1, settings.clone(), &store),
            start(1, settings, &store),
        );
        let views = |user_id: u64, count: usize, source: u16| {
            (0..count)
                .map(|index| {
                    let mut event = view(user_id, 7);
                    event.time += index as i64;
                    Delivery {
                        source,
                        ..Delivery::fresh(event)
                    }
                })
                .collect::<Vec<_>>()
        };
        // Instance a consumes partition 0, instance b partition 1.
        let first = views(1, 3, 0);
        a.ingest_deliveries(first.clone()).await.unwrap();
        b.ingest_deliveries(views(2, 2, 1)).await.unwrap();
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
        let again = first
            .iter()
            .map(|delivery| Delivery {
                redelivered: true,
                ..delivery.clone()
            })
            .collect();
        a.ingest_deliveries(again).await.unwrap();
        let mut more = views(2, 4, 1);
        more.drain(..2);
        b.ingest_deliveries(more).await.unwrap();
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
        let late = views(1, 5, 0).split_off(3);
        b.ingest_deliveries(late).await.unwrap();
        b.flush(false).await.unwrap();
        assert_eq!(views_seen(b.clone()).await, 9, "b: both parts, continued");
        let part = store.products.lock().unwrap()[&(7, 0)].clone();
        assert_eq!(
            part.state.counts.views, 5,
            "partition 0's part continued from the store"
        );
        a.stop().await.ok();
        b.stop().await.ok();
    }
}
