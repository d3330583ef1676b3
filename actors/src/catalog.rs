//! `CatalogActor`: one partition of the products (by product id), on the arbiter of one shard.
//! Shards send every partition the events they accepted, one message per batch; each partition
//! applies the events of its own products, and every view to its category. Categories are small
//! and every product's features need its category's median price, so each partition keeps every
//! category in memory and scores its products without asking another; only the category's home
//! partition (by category id) writes it.
//!
//! On a bus whose partitions several instances share, the catalog keeps a part of each product
//! and category per partition it consumes (see [`crate::features::product`]), and writes only
//! those; the parts of partitions other instances consume it reads from the store for scoring,
//! and reads again once they are older than the configured time to live.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use crate::board::{CatalogCell, CatalogMaps};
use crate::delivery::{BatchPart, Delivery, DeliveryGuard, Stored};
use crate::event::Event;
use crate::features::{self, CategoryState, ProductState};
use crate::messages::{DropAll, ForgetAcknowledged};
use crate::store::{Observer, StateBatch, StateStore, StoreError};
use crate::write_behind::{SaveDone, WriteBehind};

/// A product's or category's part: its id and the source (bus partition) whose events it counts.
pub type PartKey = (u64, u16);

/// The catalog partition a product or category belongs to. The id is mixed first: shop ids are
/// often sequential.
pub fn partition_of(id: u64, partitions: usize) -> usize {
    (xxhash_rust::xxh3::xxh3_64(&id.to_le_bytes()) % partitions.max(1) as u64) as usize
}

/// What changed since the last flush and what delivery guards remember, of the product and
/// category parts in memory (those are in the partition's [`CatalogCell`], for scores to read).
#[derive(Default)]
struct Parts {
    dirty_products: HashSet<PartKey>,
    dirty_categories: HashSet<PartKey>,
    guarded_products: HashSet<PartKey>,
    guarded_categories: HashSet<PartKey>,
}

impl Parts {
    /// The bus acknowledged everything applied so far: delivery guards forget what the
    /// acknowledgement before this one covered.
    fn forget_acknowledged(&mut self, maps: &mut CatalogMaps) {
        forget_acknowledged(&mut self.guarded_products, &mut maps.products);
        forget_acknowledged(&mut self.guarded_categories, &mut maps.categories);
    }
}

/// Lets the guards of the parts in `guarded` forget what the acknowledgement before the last
/// covered, and keeps in `guarded` only those that still remember something.
fn forget_acknowledged<T>(guarded: &mut HashSet<PartKey>, parts: &mut HashMap<PartKey, Stored<T>>) {
    guarded.retain(|key| {
        parts.get_mut(key).is_some_and(|part| {
            part.guard.forget_acknowledged();
            !part.guard.is_empty()
        })
    });
}

/// Applies a delivery to a part unless its guard remembers it; records it when guarding.
/// Returns whether the part changed.
fn apply_part<T>(
    part: &mut Stored<T>,
    identity: Option<u64>,
    redelivered: bool,
    guard_deliveries: bool,
    apply: impl FnOnce(&mut T),
) -> bool {
    let remembered = |guard: &DeliveryGuard| {
        redelivered && identity.is_some_and(|identity| guard.contains(identity))
    };
    if remembered(&part.guard) {
        return false;
    }
    apply(&mut part.state);
    if let Some(identity) = identity.filter(|_| guard_deliveries) {
        part.guard.record(identity);
    }
    true
}

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

/// One partition of the products, and every category.
pub struct CatalogActor {
    partition: usize,
    partitions: usize,
    /// The parts in memory, shared with the read board.
    cell: Arc<CatalogCell>,
    state: Parts,
    guard_deliveries: bool,
    sources: Sources,
    /// Sources whose parts this instance writes, by index.
    local: Vec<bool>,
    remote_products: HashMap<u64, Remote<ProductState>>,
    remote_categories: HashMap<u64, Remote<CategoryState>>,
    /// Products whose remote parts are being read again.
    refreshing: HashSet<u64>,
    store: Arc<dyn StateStore>,
    flush_interval: Duration,
    write_behind: WriteBehind,
    /// Batches waiting, in order, for a failed rehydration to succeed: applying them on fresh
    /// state would overwrite the stored history at the next flush.
    parked: Vec<CatalogBatch>,
    retry_scheduled: bool,
    /// Set when a save found a partition owned by another instance: nothing more is applied
    /// or flushed until the engine drops its state (the consumer reconnects).
    fenced: Option<u16>,
}

/// How long a parked batch waits before rehydration is tried again.
const REHYDRATION_RETRY: Duration = Duration::from_millis(250);

impl CatalogActor {
    /// Partition `partition` of `partitions`, empty, flushing every `flush_interval`.
    pub fn new(
        (partition, partitions): (usize, usize),
        store: Arc<dyn StateStore>,
        observer: Arc<dyn Observer>,
        flush_interval: Duration,
        guard_deliveries: bool,
        sources: Sources,
        cell: Arc<CatalogCell>,
    ) -> Self {
        let local = match sources {
            Sources::Single => vec![true],
            Sources::Shared { partitions, .. } => vec![false; usize::from(partitions.max(1))],
        };
        CatalogActor {
            partition,
            partitions: partitions.max(1),
            state: Parts::default(),
            cell,
            guard_deliveries,
            sources,
            local,
            remote_products: HashMap::new(),
            remote_categories: HashMap::new(),
            refreshing: HashSet::new(),
            write_behind: WriteBehind::new(store.clone(), observer),
            store,
            flush_interval,
            parked: Vec::new(),
            retry_scheduled: false,
            fenced: None,
        }
    }

    /// Whether this partition keeps the product.
    fn owns_product(&self, product_id: u64) -> bool {
        partition_of(product_id, self.partitions) == self.partition
    }

    /// Whether this partition writes the category (every partition keeps it).
    fn writes_category(&self, category_id: u64) -> bool {
        partition_of(category_id, self.partitions) == self.partition
    }

    fn take_dirty(&mut self) -> StateBatch {
        let mut batch = StateBatch::default();
        let maps = self.cell.maps.read();
        for key in std::mem::take(&mut self.state.dirty_products) {
            if let Some(product) = maps.products.get(&key) {
                batch.products.push(product.clone());
            }
        }
        for key in std::mem::take(&mut self.state.dirty_categories) {
            if let Some(category) = maps.categories.get(&key) {
                batch.categories.push(category.clone());
            }
        }
        batch
    }

    fn flush(&mut self) -> Option<ResponseActFuture<Self, Result<usize, StoreError>>> {
        if self.write_behind.is_saving() {
            return None;
        }
        let batch = self.take_dirty();
        let save = self.write_behind.begin(batch)?;
        Some(Box::pin(fut::wrap_future::<_, Self>(save).map(
            |done: SaveDone, actor, _| {
                let result = actor.write_behind.finish(done);
                if let Err(StoreError::Fenced(source)) = result {
                    actor.drop_state();
                    actor.fenced = Some(source);
                }
                result.map(|saved| saved.rows)
            },
        )))
    }

    /// The products (of this partition) and categories with a part of a source in `events`
    /// that is not in memory.
    fn missing<'a>(
        &self,
        events: impl Iterator<Item = (&'a Event, u16)> + Clone,
    ) -> (Vec<u64>, Vec<u64>) {
        let maps = self.cell.maps.read();
        let mut products: Vec<u64> = events
            .clone()
            .filter(|(event, source)| {
                self.owns_product(event.product_id)
                    && !maps.products.contains_key(&(event.product_id, *source))
            })
            .map(|(event, _)| event.product_id)
            .collect();
        products.sort_unstable();
        products.dedup();
        let mut categories: Vec<u64> = events
            .filter(|(event, source)| {
                event.event_type == crate::event::EventType::View
                    && !maps.categories.contains_key(&(event.category_id, *source))
            })
            .map(|(event, _)| event.category_id)
            .collect();
        categories.sort_unstable();
        categories.dedup();
        (products, categories)
    }

    fn apply(&mut self, batch: &CatalogBatch) {
        let cell = self.cell.clone();
        // One event at a time: a score reading the partition waits for one event, not for a
        // batch (nor for this thread to be scheduled again, were it preempted mid-batch).
        for delivery in batch.part.iter() {
            self.apply_delivery(&mut cell.maps.write(), delivery);
        }
    }

    /// Applies a delivery to the parts of its source: a view to its category, the event to its
    /// product when this partition owns it. A redelivered event is applied only to the parts
    /// that do not remember it.
    fn apply_delivery(&mut self, maps: &mut CatalogMaps, delivery: &Delivery) {
        let event = &delivery.event;
        let (source, redelivered) = (delivery.source, delivery.redelivered);
        let owns_product = self.owns_product(event.product_id);
        if !owns_product && !event.event_type.is_view() {
            return;
        }
        // Offline and on the HTTP bus nothing is redelivered or guarded: no hashing per event.
        let identity = (redelivered || self.guard_deliveries).then(|| event.identity());
        let guard_deliveries = self.guard_deliveries;
        if event.event_type.is_view() {
            let key = (event.category_id, source);
            let category = maps
                .categories
                .entry(key)
                .or_insert_with(|| Stored::new(CategoryState::new(event.category_id, source)));
            if apply_part(
                category,
                identity,
                redelivered,
                guard_deliveries,
                |category| category.add_view(event.price),
            ) {
                if guard_deliveries {
                    self.state.guarded_categories.insert(key);
                }
                if self.writes_category(event.category_id) {
                    self.state.dirty_categories.insert(key);
                }
            }
        }
        if !owns_product {
            return;
        }
        let key = (event.product_id, source);
        let product = maps
            .products
            .entry(key)
            .or_insert_with(|| Stored::new(ProductState::new(event, source)));
        if apply_part(
            product,
            identity,
            redelivered,
            guard_deliveries,
            |product| product.apply(event),
        ) {
            if guard_deliveries {
                self.state.guarded_products.insert(key);
            }
            self.state.dirty_products.insert(key);
        }
    }

    /// Marks the sources of a batch as consumed here: their parts are written here from now on.
    fn take_sources(&mut self, batch: &CatalogBatch) {
        for delivery in batch.part.iter() {
            let source = usize::from(delivery.source);
            if source >= self.local.len() {
                // More partitions than configured: count them too rather than lose events.
                self.local.resize(source + 1, false);
            }
            self.local[source] = true;
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
    fn rehydrate(
        &mut self,
        products: Vec<Stored<ProductState>>,
        categories: Vec<Stored<CategoryState>>,
    ) {
        let shared = matches!(self.sources, Sources::Shared { .. });
        let now = Instant::now();
        let cell = self.cell.clone();
        let mut maps = cell.maps.write();
        let mut remote_products: HashMap<u64, Vec<ProductState>> = HashMap::new();
        for product in products {
            let key = (product.state.product_id, product.state.source);
            if shared {
                remote_products
                    .entry(key.0)
                    .or_default()
                    .push(product.state.clone());
            }
            if self.is_local(key.1) {
                maps.products.entry(key).or_insert(product);
            }
        }
        let mut remote_categories: HashMap<u64, Vec<CategoryState>> = HashMap::new();
        for category in categories {
            let key = (category.state.category_id, category.state.source);
            if shared {
                remote_categories
                    .entry(key.0)
                    .or_default()
                    .push(category.state.clone());
            }
            if self.is_local(key.1) {
                maps.categories.entry(key).or_insert(category);
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
        let maps = self.cell.maps.read();
        let product = ProductState::merged(
            self.local_sources()
                .filter_map(|source| maps.products.get(&(product_id, source)))
                .map(|part| &part.state)
                .chain(
                    self.remote_products
                        .get(&product_id)
                        .into_iter()
                        .flat_map(|remote| &remote.parts)
                        .filter(|part| {
                            !(in_memory(part.source)
                                && maps.products.contains_key(&(product_id, part.source)))
                        }),
                ),
        );
        let category = product.as_ref().and_then(|product| {
            let category_id = product.category_id;
            CategoryState::merged(
                self.local_sources()
                    .filter_map(|source| maps.categories.get(&(category_id, source)))
                    .map(|part| &part.state)
                    .chain(
                        self.remote_categories
                            .get(&category_id)
                            .into_iter()
                            .flat_map(|remote| &remote.parts)
                            .filter(|part| {
                                !(in_memory(part.source)
                                    && maps.categories.contains_key(&(category_id, part.source)))
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

/// Deliveries a shard accepted, for the products' and categories' state; every partition gets the
/// same batch and takes its part.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct CatalogBatch {
    pub part: BatchPart,
}

impl CatalogBatch {
    fn sourced(&self) -> impl Iterator<Item = (&Event, u16)> + Clone {
        self.part.positions().iter().map(|position| {
            let delivery = self.part.at(*position);
            (&delivery.event, delivery.source)
        })
    }
}

impl Handler<CatalogBatch> for CatalogActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, message: CatalogBatch, _: &mut Self::Context) -> Self::Result {
        if self.fenced.is_some() {
            return AtomicResponse::new(Box::pin(fut::ready(())));
        }
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
                    let maps = actor.cell.maps.read();
                    let product = maps.products.get(&(*product_id, 0));
                    let category = product
                        .and_then(|product| maps.categories.get(&(product.state.category_id, 0)));
                    features::catalog_features(
                        product.map(|part| &part.state),
                        category.map(|part| &part.state),
                        slice,
                    );
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
        let maps = self.cell.maps.read();
        product_ids
            .iter()
            .copied()
            .filter(|id| !maps.products.contains_key(&(*id, 0)))
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

/// Answers once every batch sent before it is handled (applied, or held for the store).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CaughtUp;

impl Handler<CaughtUp> for CatalogActor {
    type Result = ();

    fn handle(&mut self, _: CaughtUp, _: &mut Self::Context) {}
}

/// Flushes dirty products and categories now.
#[derive(Message)]
#[rtype(result = "Result<usize, StoreError>")]
pub struct FlushCatalog;

impl Handler<FlushCatalog> for CatalogActor {
    type Result = AtomicResponse<Self, Result<usize, StoreError>>;

    fn handle(&mut self, _: FlushCatalog, _: &mut Self::Context) -> Self::Result {
        if let Some(source) = self.fenced {
            return AtomicResponse::new(Box::pin(fut::ready(Err(StoreError::Fenced(source)))));
        }
        if !self.parked.is_empty() {
            // Events the shards accepted are not applied yet: nothing may be acknowledged.
            return AtomicResponse::new(Box::pin(fut::ready(Err(StoreError::Unavailable(
                "catalog events wait for the store to rehydrate their products".into(),
            )))));
        }
        if self.write_behind.is_saving() {
            return AtomicResponse::new(Box::pin(fut::ready(Err(StoreError::Busy))));
        }
        match self.flush() {
            Some(flush) => AtomicResponse::new(flush),
            None => AtomicResponse::new(Box::pin(fut::ready(Ok(0)))),
        }
    }
}

impl Handler<DropAll> for CatalogActor {
    type Result = ();

    fn handle(&mut self, _: DropAll, _: &mut Self::Context) {
        self.drop_state();
        self.fenced = None;
    }
}

impl CatalogActor {
    /// Forgets every part and everything not yet written (the instance lost its bus
    /// connection, or a partition to another instance).
    fn drop_state(&mut self) {
        self.state = Parts::default();
        *self.cell.maps.write() = CatalogMaps::default();
        self.write_behind.drop_pending();
        self.parked.clear();
        self.remote_products.clear();
        self.remote_categories.clear();
        if let Sources::Shared { .. } = self.sources {
            // Partitions become this instance's again with their next delivery.
            self.local.fill(false);
        }
    }
}

impl Handler<ForgetAcknowledged> for CatalogActor {
    type Result = ();

    fn handle(&mut self, _: ForgetAcknowledged, _: &mut Self::Context) {
        let cell = self.cell.clone();
        self.state.forget_acknowledged(&mut cell.maps.write());
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
            self.cell.maps.read().products.len(),
            self.write_behind.is_healthy() && self.parked.is_empty(),
        ))
    }
}
