//! `CatalogActor`: owns product and category state for the whole service. Shards send it the
//! events they accepted in batches, so its updates are cheap and it is never on a per-event
//! cross-thread path.
//!
//! On a bus whose partitions several instances share, the catalog keeps a part of each product
//! and category per partition it consumes (see [`crate::features::product`]), and writes only
//! those; the parts of partitions other instances consume it reads from the store for scoring,
//! and reads again once they are older than the configured time to live.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use crate::engine::Catalog;
use crate::event::Event;
use crate::features::{self, CategoryState, ProductState};
use crate::store::{Observer, StateBatch, StateStore, StoreError};

/// Which sources (user partitions) the catalog keeps parts for.
#[derive(Clone, Copy, Debug)]
pub enum Sources {
    /// Every event comes to this instance: one part, source 0, always in memory.
    Single,
    /// The bus has this many partitions; the ones this instance consumes become local with
    /// their first delivery, the others are read from the store.
    Shared {
        partitions: u16,
        remote_ttl: Duration,
    },
}

/// Parts other instances write, as last read from the store.
struct Remote<T> {
    read_at: Instant,
    parts: Vec<T>,
}

/// Products and categories.
pub struct CatalogActor {
    state: Catalog,
    sources: Sources,
    /// Sources whose parts this instance writes, by index.
    local: Vec<bool>,
    remote_products: HashMap<u64, Remote<ProductState>>,
    remote_categories: HashMap<u64, Remote<CategoryState>>,
    /// Products whose remote parts are being read again.
    refreshing: HashSet<u64>,
    store: Arc<dyn StateStore>,
    observer: Arc<dyn Observer>,
    flush_interval: Duration,
    flushing: bool,
    failed_batch: Option<StateBatch>,
    last_flush_error: Option<StoreError>,
    /// Batches waiting, in order, for a failed rehydration to succeed: applying them on fresh
    /// state would overwrite the stored history at the next flush.
    parked: Vec<CatalogBatch>,
    retry_scheduled: bool,
}

/// How long a parked batch waits before rehydration is tried again.
const REHYDRATION_RETRY: Duration = Duration::from_millis(250);

impl CatalogActor {
    /// An empty catalog that flushes every `flush_interval`.
    pub fn new(
        store: Arc<dyn StateStore>,
        observer: Arc<dyn Observer>,
        flush_interval: Duration,
        guard_deliveries: bool,
        sources: Sources,
    ) -> Self {
        let mut state = Catalog::new(true);
        state.guard_deliveries = guard_deliveries;
        let local = match sources {
            Sources::Single => vec![true],
            Sources::Shared { partitions, .. } => vec![false; usize::from(partitions.max(1))],
        };
        CatalogActor {
            state,
            sources,
            local,
            remote_products: HashMap::new(),
            remote_categories: HashMap::new(),
            refreshing: HashSet::new(),
            store,
            observer,
            flush_interval,
            flushing: false,
            failed_batch: None,
            last_flush_error: None,
            parked: Vec::new(),
            retry_scheduled: false,
        }
    }

    fn take_dirty(&mut self) -> StateBatch {
        let mut batch = StateBatch::default();
        for product_id in std::mem::take(&mut self.state.dirty_products) {
            if let Some(product) = self.state.products.get(&product_id) {
                batch.products.push(product.clone());
            }
        }
        for category_id in std::mem::take(&mut self.state.dirty_categories) {
            if let Some(category) = self.state.categories.get(&category_id) {
                batch.categories.push(category.clone());
            }
        }
        if let Some(failed) = self.failed_batch.take() {
            batch.absorb_older(failed);
        }
        batch
    }

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
        let retry = batch.clone();
        let started = Instant::now();
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

    /// The products and categories with a part of a source in `events` that is not in memory.
    fn missing<'a>(
        &self,
        events: impl Iterator<Item = (&'a Event, u16)> + Clone,
    ) -> (Vec<u64>, Vec<u64>) {
        let mut products: Vec<u64> = events
            .clone()
            .filter(|(event, source)| {
                !self
                    .state
                    .products
                    .contains_key(&(event.product_id, *source))
            })
            .map(|(event, _)| event.product_id)
            .collect();
        products.sort_unstable();
        products.dedup();
        let mut categories: Vec<u64> = events
            .filter(|(event, source)| {
                event.event_type == crate::event::EventType::View
                    && !self
                        .state
                        .categories
                        .contains_key(&(event.category_id, *source))
            })
            .map(|(event, _)| event.category_id)
            .collect();
        categories.sort_unstable();
        categories.dedup();
        (products, categories)
    }

    fn apply(&mut self, batch: &CatalogBatch) {
        for (index, event) in batch.events.iter().enumerate() {
            let redelivered = batch.redelivered.get(index).copied().unwrap_or(false);
            self.state.apply(event, redelivered, batch.source(index));
        }
    }

    /// Marks the sources of a batch as consumed here: their parts are written here from now on.
    fn take_sources(&mut self, batch: &CatalogBatch) {
        for source in batch
            .sources
            .iter()
            .copied()
            .chain(batch.sources.is_empty().then_some(0))
        {
            match self.local.get_mut(usize::from(source)) {
                Some(local) => *local = true,
                None => {
                    // More partitions than configured: count them too rather than lose events.
                    self.local.resize(usize::from(source) + 1, false);
                    self.local[usize::from(source)] = true;
                }
            }
        }
    }

    fn local_sources(&self) -> impl Iterator<Item = u16> + Clone + '_ {
        self.local
            .iter()
            .enumerate()
            .filter(|(_, local)| **local)
            .map(|(source, _)| source as u16)
    }

    /// Parks a batch whose rehydration failed and schedules another try.
    fn park(&mut self, batch: CatalogBatch, error: &StoreError, ctx: &mut Context<Self>) {
        if self.parked.is_empty() {
            tracing::warn!(%error, "catalog rehydration failed; holding events until the store answers");
        }
        self.parked.push(batch);
        if !self.retry_scheduled {
            self.retry_scheduled = true;
            ctx.run_later(REHYDRATION_RETRY, |actor, ctx| {
                actor.retry_scheduled = false;
                actor.retry_parked(ctx);
            });
        }
    }

    /// Loads what the parked batches need and applies them in order, or parks them again.
    fn retry_parked(&mut self, ctx: &mut Context<Self>) {
        let (products, categories) =
            self.missing(self.parked.iter().flat_map(CatalogBatch::sourced));
        let load = self.store.load_catalog(products, categories);
        ctx.spawn(load.into_actor(self).map(|loaded, actor, ctx| {
            let parked = std::mem::take(&mut actor.parked);
            match loaded {
                Ok((products, categories)) => {
                    actor.rehydrate(products, categories);
                    for batch in &parked {
                        actor.apply(batch);
                    }
                }
                Err(error) => {
                    for batch in parked {
                        actor.park(batch, &error, ctx);
                    }
                }
            }
        }));
    }

    /// Puts loaded parts in memory: those of local sources where memory has none (memory is
    /// newer), and all of them as the remote view of their products and categories.
    fn rehydrate(&mut self, products: Vec<ProductState>, categories: Vec<CategoryState>) {
        let shared = matches!(self.sources, Sources::Shared { .. });
        let now = Instant::now();
        let mut remote_products: HashMap<u64, Vec<ProductState>> = HashMap::new();
        for product in products {
            if self.is_local(product.source) {
                self.state
                    .products
                    .entry((product.product_id, product.source))
                    .or_insert_with(|| product.clone());
            }
            if shared {
                remote_products
                    .entry(product.product_id)
                    .or_default()
                    .push(product);
            }
        }
        let mut remote_categories: HashMap<u64, Vec<CategoryState>> = HashMap::new();
        for category in categories {
            if self.is_local(category.source) {
                self.state
                    .categories
                    .entry((category.category_id, category.source))
                    .or_insert_with(|| category.clone());
            }
            if shared {
                remote_categories
                    .entry(category.category_id)
                    .or_default()
                    .push(category);
            }
        }
        for (product_id, parts) in remote_products {
            self.remote_products.insert(
                product_id,
                Remote {
                    read_at: now,
                    parts,
                },
            );
        }
        for (category_id, parts) in remote_categories {
            self.remote_categories.insert(
                category_id,
                Remote {
                    read_at: now,
                    parts,
                },
            );
        }
    }

    /// Whether this instance writes the parts of `source`.
    fn is_local(&self, source: u16) -> bool {
        self.local
            .get(usize::from(source))
            .copied()
            .unwrap_or(false)
    }

    /// Records that the store holds no part of these products (yet), so they are not read
    /// again before the time to live is up.
    fn remember_absent(&mut self, product_ids: &[u64]) {
        if matches!(self.sources, Sources::Single) {
            return;
        }
        let now = Instant::now();
        for product_id in product_ids {
            self.remote_products
                .entry(*product_id)
                .or_insert_with(|| Remote {
                    read_at: now,
                    parts: Vec::new(),
                });
        }
    }

    /// A whole product and its category: the parts of local sources from memory, the others
    /// (and local ones memory has none of, stored before this instance took the source) as
    /// last read from the store.
    fn whole(&self, product_id: u64) -> (Option<ProductState>, Option<CategoryState>) {
        let in_memory = |source: u16| self.is_local(source);
        let product = ProductState::merged(
            self.local_sources()
                .filter_map(|source| self.state.products.get(&(product_id, source)))
                .chain(
                    self.remote_products
                        .get(&product_id)
                        .into_iter()
                        .flat_map(|remote| &remote.parts)
                        .filter(|part| {
                            !(in_memory(part.source)
                                && self.state.products.contains_key(&(product_id, part.source)))
                        }),
                ),
        );
        let category = product.as_ref().and_then(|product| {
            let category_id = product.category_id;
            CategoryState::merged(
                self.local_sources()
                    .filter_map(|source| self.state.categories.get(&(category_id, source)))
                    .chain(
                        self.remote_categories
                            .get(&category_id)
                            .into_iter()
                            .flat_map(|remote| &remote.parts)
                            .filter(|part| {
                                !(in_memory(part.source)
                                    && self
                                        .state
                                        .categories
                                        .contains_key(&(category_id, part.source)))
                            }),
                    ),
            )
        });
        (product, category)
    }

    /// Products whose stored parts were never read, and those due to be read again.
    fn remote_due(&self, product_ids: &[u64]) -> (Vec<u64>, Vec<u64>) {
        let Sources::Shared { remote_ttl, .. } = self.sources else {
            return (Vec::new(), Vec::new());
        };
        let (mut missing, mut stale) = (Vec::new(), Vec::new());
        for product_id in product_ids {
            match self.remote_products.get(product_id) {
                None => missing.push(*product_id),
                Some(remote) if remote.read_at.elapsed() >= remote_ttl => {
                    if !self.refreshing.contains(product_id) {
                        stale.push(*product_id)
                    }
                }
                Some(_) => {}
            }
        }
        missing.sort_unstable();
        missing.dedup();
        stale.sort_unstable();
        stale.dedup();
        (missing, stale)
    }

    /// Reads stale remote parts again in the background; scores use the older ones meanwhile.
    fn refresh(&mut self, stale: Vec<u64>, ctx: &mut Context<Self>) {
        if stale.is_empty() {
            return;
        }
        self.refreshing.extend(stale.iter().copied());
        let load = self.store.load_catalog(stale.clone(), Vec::new());
        ctx.spawn(load.into_actor(self).map(move |loaded, actor, _| {
            for product_id in &stale {
                actor.refreshing.remove(product_id);
            }
            match loaded {
                Ok((products, categories)) => {
                    for product_id in &stale {
                        actor.remote_products.remove(product_id);
                    }
                    actor.rehydrate(products, categories);
                    actor.remember_absent(&stale);
                }
                Err(error) => tracing::warn!(%error, "store unavailable; scoring with older parts of products"),
            }
        }));
    }

    /// Drops remote parts nobody scored for a while.
    fn sweep_remote(&mut self) {
        let Sources::Shared { remote_ttl, .. } = self.sources else {
            return;
        };
        let keep = remote_ttl * 10;
        self.remote_products
            .retain(|_, remote| remote.read_at.elapsed() < keep);
        self.remote_categories
            .retain(|_, remote| remote.read_at.elapsed() < keep);
    }
}

impl Actor for CatalogActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.flush_interval, |actor, ctx| {
            if let Some(flush) = actor.flush() {
                ctx.spawn(flush.map(|_, _, _| ()));
            }
        });
        if let Sources::Shared { remote_ttl, .. } = self.sources {
            ctx.run_interval(remote_ttl * 10, |actor, _| actor.sweep_remote());
        }
    }
}

/// Events a shard accepted, for the products' and categories' state.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CatalogBatch {
    pub events: Vec<Event>,
    /// Which events the bus redelivered, by index; missing entries are fresh deliveries.
    pub redelivered: Vec<bool>,
    /// The bus partition each event came from, by index; empty when there is one source (0).
    pub sources: Vec<u16>,
}

impl CatalogBatch {
    fn source(&self, index: usize) -> u16 {
        self.sources.get(index).copied().unwrap_or(0)
    }

    fn sourced(&self) -> impl Iterator<Item = (&Event, u16)> + Clone {
        self.events
            .iter()
            .enumerate()
            .map(|(index, event)| (event, self.source(index)))
    }
}

impl Handler<CatalogBatch> for CatalogActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, message: CatalogBatch, _: &mut Self::Context) -> Self::Result {
        self.take_sources(&message);
        if !self.parked.is_empty() {
            // Behind batches that wait for the store: keep the order.
            self.parked.push(message);
            return AtomicResponse::new(Box::pin(fut::ready(())));
        }
        let (products, categories) = self.missing(message.sourced());
        if products.is_empty() && categories.is_empty() {
            self.apply(&message);
            return AtomicResponse::new(Box::pin(fut::ready(())));
        }
        AtomicResponse::new(Box::pin(
            self.store
                .load_catalog(products, categories)
                .into_actor(self)
                .map(move |loaded, actor, ctx| match loaded {
                    Ok((products, categories)) => {
                        actor.rehydrate(products, categories);
                        actor.apply(&message);
                    }
                    Err(error) => actor.park(message, &error, ctx),
                }),
        ))
    }
}

/// The catalog-side features of some products.
#[derive(Message)]
#[rtype(result = "Vec<f64>")]
pub struct CatalogFeatures {
    pub product_ids: Vec<u64>,
}

impl Handler<CatalogFeatures> for CatalogActor {
    type Result = AtomicResponse<Self, Vec<f64>>;

    fn handle(&mut self, message: CatalogFeatures, ctx: &mut Self::Context) -> Self::Result {
        let compute = move |actor: &CatalogActor, product_ids: &[u64]| {
            let width = features::FEATURE_COUNT - features::USER_SIDE_COUNT;
            let mut out = vec![0.0; product_ids.len() * width];
            for (index, product_id) in product_ids.iter().enumerate() {
                let slice = &mut out[index * width..(index + 1) * width];
                if matches!(actor.sources, Sources::Single) {
                    // One part, in memory: no copies.
                    actor.state.features(*product_id, slice);
                } else {
                    let (product, category) = actor.whole(*product_id);
                    features::catalog_features(product.as_ref(), category.as_ref(), slice);
                }
            }
            out
        };
        let mut missing = self.missing_in_memory(&message.product_ids);
        let (remote_missing, stale) = self.remote_due(&message.product_ids);
        self.refresh(stale, ctx);
        missing.extend(remote_missing);
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return AtomicResponse::new(Box::pin(fut::ready(compute(self, &message.product_ids))));
        }
        AtomicResponse::new(Box::pin(
            self.store
                .load_catalog(missing.clone(), Vec::new())
                .into_actor(self)
                .map(move |loaded, actor, _| {
                    // Scoring keeps answering from what is in memory when the store fails.
                    match loaded {
                        Ok((products, categories)) => {
                            actor.rehydrate(products, categories);
                            actor.remember_absent(&missing);
                        }
                        Err(error) => tracing::warn!(%error, "store unavailable while scoring; using what is in memory"),
                    }
                    compute(actor, &message.product_ids)
                }),
        ))
    }
}

impl CatalogActor {
    /// Products with no part in memory at all, when there is one source: they may be stored.
    fn missing_in_memory(&self, product_ids: &[u64]) -> Vec<u64> {
        if !matches!(self.sources, Sources::Single) {
            return Vec::new();
        }
        product_ids
            .iter()
            .copied()
            .filter(|id| !self.state.products.contains_key(&(*id, 0)))
            .collect()
    }
}

/// One whole product (every source's part merged).
#[derive(Message)]
#[rtype(result = "Result<Option<ProductState>, StoreError>")]
pub struct GetProduct {
    pub product_id: u64,
}

impl Handler<GetProduct> for CatalogActor {
    type Result = ResponseActFuture<Self, Result<Option<ProductState>, StoreError>>;

    fn handle(&mut self, message: GetProduct, _: &mut Self::Context) -> Self::Result {
        let product_id = message.product_id;
        let mut missing = self.missing_in_memory(&[product_id]);
        let (remote_missing, stale) = self.remote_due(&[product_id]);
        missing.extend(remote_missing);
        missing.extend(stale);
        if missing.is_empty() {
            return Box::pin(fut::ready(Ok(self.whole(product_id).0)));
        }
        Box::pin(
            self.store
                .load_catalog(vec![product_id], Vec::new())
                .into_actor(self)
                .map(move |loaded, actor, _| {
                    let (products, categories) = loaded?;
                    actor.remote_products.remove(&product_id);
                    actor.rehydrate(products, categories);
                    actor.remember_absent(&[product_id]);
                    Ok(actor.whole(product_id).0)
                }),
        )
    }
}

/// Flushes dirty products and categories now.
#[derive(Message)]
#[rtype(result = "Result<usize, StoreError>")]
pub struct FlushCatalog;

impl Handler<FlushCatalog> for CatalogActor {
    type Result = AtomicResponse<Self, Result<usize, StoreError>>;

    fn handle(&mut self, _: FlushCatalog, _: &mut Self::Context) -> Self::Result {
        if !self.parked.is_empty() {
            // Events the shards accepted are not applied yet: nothing may be acknowledged.
            return AtomicResponse::new(Box::pin(fut::ready(Err(StoreError::Unavailable(
                "catalog events wait for the store to rehydrate their products".into(),
            )))));
        }
        if self.flushing {
            return AtomicResponse::new(Box::pin(fut::ready(Err(StoreError::Busy))));
        }
        match self.flush() {
            Some(flush) => AtomicResponse::new(flush),
            None => AtomicResponse::new(Box::pin(fut::ready(Ok(0)))),
        }
    }
}

impl Handler<crate::shard::DropAll> for CatalogActor {
    type Result = ();

    fn handle(&mut self, _: crate::shard::DropAll, _: &mut Self::Context) {
        self.state.drop_all();
        self.failed_batch = None;
        self.parked.clear();
        self.remote_products.clear();
        self.remote_categories.clear();
        if let Sources::Shared { .. } = self.sources {
            // Partitions become this instance's again with their next delivery.
            self.local.fill(false);
        }
    }
}

impl Handler<crate::shard::ForgetAcknowledged> for CatalogActor {
    type Result = ();

    fn handle(&mut self, _: crate::shard::ForgetAcknowledged, _: &mut Self::Context) {
        self.state.forget_acknowledged();
    }
}

/// Product count and store health.
#[derive(Message)]
#[rtype(result = "(usize, bool)")]
pub struct GetCatalogStats;

impl Handler<GetCatalogStats> for CatalogActor {
    type Result = MessageResult<GetCatalogStats>;

    fn handle(&mut self, _: GetCatalogStats, _: &mut Self::Context) -> Self::Result {
        MessageResult((
            self.state.products.len(),
            self.last_flush_error.is_none() && self.parked.is_empty(),
        ))
    }
}
