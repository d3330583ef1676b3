//! `CatalogActor`: owns product and category state for the whole service. Shards send it the
//! events they accepted in batches, so its updates are cheap and it is never on a per-event
//! cross-thread path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::engine::Catalog;
use crate::event::Event;
use crate::features::{self, CategoryState, ProductState};
use crate::store::{Observer, StateBatch, StateStore, StoreError};

/// Products and categories.
pub struct CatalogActor {
    state: Catalog,
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
    ) -> Self {
        let mut state = Catalog::new(true);
        state.guard_deliveries = guard_deliveries;
        CatalogActor {
            state,
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

    fn missing<'a>(&self, events: impl Iterator<Item = &'a Event> + Clone) -> (Vec<u64>, Vec<u64>) {
        let mut products: Vec<u64> = events
            .clone()
            .map(|event| event.product_id)
            .filter(|id| !self.state.products.contains_key(id))
            .collect();
        products.sort_unstable();
        products.dedup();
        let mut categories: Vec<u64> = events
            .map(|event| event.category_id)
            .filter(|id| !self.state.categories.contains_key(id))
            .collect();
        categories.sort_unstable();
        categories.dedup();
        (products, categories)
    }

    fn apply(&mut self, batch: &CatalogBatch) {
        for (index, event) in batch.events.iter().enumerate() {
            let redelivered = batch.redelivered.get(index).copied().unwrap_or(false);
            self.state.apply(event, redelivered);
        }
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
            self.missing(self.parked.iter().flat_map(|batch| batch.events.iter()));
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

    fn rehydrate(&mut self, products: Vec<ProductState>, categories: Vec<CategoryState>) {
        for product in products {
            self.state
                .products
                .entry(product.product_id)
                .or_insert(product);
        }
        for category in categories {
            self.state
                .categories
                .entry(category.category_id)
                .or_insert(category);
        }
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
    }
}

/// Events a shard accepted, for the products' and categories' state.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CatalogBatch {
    pub events: Vec<Event>,
    /// Which events the bus redelivered, by index; missing entries are fresh deliveries.
    pub redelivered: Vec<bool>,
}

impl Handler<CatalogBatch> for CatalogActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, message: CatalogBatch, _: &mut Self::Context) -> Self::Result {
        if !self.parked.is_empty() {
            // Behind batches that wait for the store: keep the order.
            self.parked.push(message);
            return AtomicResponse::new(Box::pin(fut::ready(())));
        }
        let (products, categories) = self.missing(message.events.iter());
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

    fn handle(&mut self, message: CatalogFeatures, _: &mut Self::Context) -> Self::Result {
        let width = features::FEATURE_COUNT - features::USER_SIDE_COUNT;
        let compute = move |actor: &CatalogActor, product_ids: &[u64]| {
            let mut out = vec![0.0; product_ids.len() * width];
            for (index, product_id) in product_ids.iter().enumerate() {
                actor
                    .state
                    .features(*product_id, &mut out[index * width..(index + 1) * width]);
            }
            out
        };
        let missing: Vec<u64> = message
            .product_ids
            .iter()
            .copied()
            .filter(|id| !self.state.products.contains_key(id))
            .collect();
        if missing.is_empty() {
            return AtomicResponse::new(Box::pin(fut::ready(compute(self, &message.product_ids))));
        }
        AtomicResponse::new(Box::pin(
            self.store
                .load_catalog(missing, Vec::new())
                .into_actor(self)
                .map(move |loaded, actor, _| {
                    // Scoring keeps answering from what is in memory when the store fails.
                    match loaded {
                        Ok((products, categories)) => actor.rehydrate(products, categories),
                        Err(error) => tracing::warn!(%error, "store unavailable while scoring; using what is in memory"),
                    }
                    compute(actor, &message.product_ids)
                }),
        ))
    }
}

/// One product's state.
#[derive(Message)]
#[rtype(result = "Result<Option<ProductState>, StoreError>")]
pub struct GetProduct {
    pub product_id: u64,
}

impl Handler<GetProduct> for CatalogActor {
    type Result = ResponseActFuture<Self, Result<Option<ProductState>, StoreError>>;

    fn handle(&mut self, message: GetProduct, _: &mut Self::Context) -> Self::Result {
        if let Some(product) = self.state.products.get(&message.product_id) {
            return Box::pin(fut::ready(Ok(Some(product.clone()))));
        }
        Box::pin(
            self.store
                .load_catalog(vec![message.product_id], Vec::new())
                .into_actor(self)
                .map(|loaded, _, _| loaded.map(|(mut products, _)| products.pop())),
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
