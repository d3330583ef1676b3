//! The ScyllaDB (or Cassandra) online store, `store.kind = "scylla"`: the tables of
//! schema/propensity.cql, written and read with the statements of schema/queries.cql, prepared
//! once when the store opens.
//!
//! A save writes each entity (a session or a user: one partition, its own fields static and a
//! row per product, as one UNLOGGED single-partition batch, applied atomically; a product's or
//! a category's part: one row) at most `max_concurrency` requests at a time, in two stages:
//! users and categories first, sessions and products only once every write of the first stage
//! succeeded. The user side relies on that order to apply a redelivered event only where it is
//! missing ([`propensity_actors::features::DeliveryGuard`]). Every statement is idempotent: it
//! writes values, not increments, under an explicit write timestamp, and a partition that holds several
//! rows of one entity is replaced as a whole (a partition delete one microsecond older than the
//! rows written with it), so a session that restarts under the same key leaves no old rows.
//!
//! The driver runs on a small runtime of its own, so its connections never wait behind the
//! actor threads or a test's body, and the store works from any runtime or none.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use futures_util::{StreamExt, TryStreamExt, stream};
use propensity_actors::delivery::{DeliveryGuard, Stored};
use propensity_actors::features::product::HourBucket;
use propensity_actors::features::{
    CategoryState, Counts, ProductState, SessionKey, SessionProduct, SessionState, UserProduct,
    UserState,
};
use propensity_actors::store::{
    LoadedCatalog, LoadedUserSide, StateBatch, StateStore, StoreError, StoreFuture,
};
use scylla::client::execution_profile::{ExecutionProfile, ExecutionProfileHandle};
use scylla::client::session::Session;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::response::query_result::QueryRowsResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::MaybeUnset;
use scylla::{DeserializeRow, SerializeRow};

use crate::config::{ConsistencyLevel, ScyllaSettings};
use crate::online::store::cluster::connect;
use crate::online::store::schema;

/// The statements, each after a `-- name:` line, with a `{keyspace}` placeholder.
pub const QUERIES_CQL: &str = include_str!("../../../schema/queries.cql");

/// The ScyllaDB store; cheap to clone.
#[derive(Clone)]
pub struct ScyllaStore {
    core: Arc<Core>,
    // Declared after `core`: the driver's runtime outlives the session it runs.
    driver: Arc<DriverRuntime>,
}

/// The driver's own runtime, shut down without waiting when the last store handle goes (which
/// may happen inside another runtime, where waiting is not allowed).
struct DriverRuntime(Option<tokio::runtime::Runtime>);

impl DriverRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("the runtime lives until drop")
            .handle()
    }
}

impl Drop for DriverRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

struct Core {
    session: Session,
    statements: Statements,
    write_profile: ExecutionProfileHandle,
    settings: ScyllaSettings,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    /// Reads in flight over the whole store: entities activate one by one, and a burst of
    /// activations must queue here rather than in the cluster.
    reads: tokio::sync::Semaphore,
}

impl ScyllaStore {
    /// Connects, applies the schema when `apply_schema_on_start` says so, and prepares the
    /// statements. Works from any runtime or none.
    pub async fn open(settings: &ScyllaSettings) -> Result<ScyllaStore> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("scylla-driver")
            .enable_all()
            .build()
            .context("failed to start the ScyllaDB driver's runtime")?;
        let driver = Arc::new(DriverRuntime(Some(runtime)));
        let settings = settings.clone();
        let core = driver
            .handle()
            .spawn(Core::open(settings))
            .await
            .context("the ScyllaDB store failed to open")??;
        Ok(ScyllaStore {
            core: Arc::new(core),
            driver,
        })
    }

    /// The most requests this store ever had in flight at once: reads are bounded by
    /// `max_concurrency` over the whole store, writes by as many per flush. For tests and
    /// diagnostics.
    pub fn peak_requests_in_flight(&self) -> usize {
        self.core.peak_in_flight.load(Ordering::Relaxed)
    }

    /// Runs `work` on the driver's runtime.
    fn spawn<T, F>(&self, work: impl FnOnce(Arc<Core>) -> F) -> StoreFuture<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let work = work(self.core.clone());
        let driver = self.driver.clone();
        Box::pin(async move {
            let task = driver.handle().spawn(work);
            let result = task.await.unwrap_or_else(|error| {
                Err(StoreError::Unavailable(format!(
                    "store task failed: {error}"
                )))
            });
            // The runtime may only go once the task is done with it.
            drop(driver);
            result
        })
    }
}

impl StateStore for ScyllaStore {
    fn save(&self, batch: Arc<StateBatch>) -> StoreFuture<()> {
        self.spawn(|core| async move { core.save(&batch).await })
    }

    fn load_user_side(
        &self,
        users: Vec<u64>,
        sessions: Vec<SessionKey>,
    ) -> StoreFuture<LoadedUserSide> {
        self.spawn(|core| async move { core.load_user_side(users, sessions).await })
    }

    fn load_catalog(&self, products: Vec<u64>, categories: Vec<u64>) -> StoreFuture<LoadedCatalog> {
        self.spawn(|core| async move { core.load_catalog(products, categories).await })
    }
}

/// The prepared statements, named as in schema/queries.cql.
struct Statements {
    delete_session: PreparedStatement,
    insert_session: PreparedStatement,
    insert_session_product: PreparedStatement,
    select_session: PreparedStatement,
    delete_user: PreparedStatement,
    insert_user: PreparedStatement,
    insert_user_product: PreparedStatement,
    select_user: PreparedStatement,
    insert_product: PreparedStatement,
    select_product: PreparedStatement,
    insert_category: PreparedStatement,
    select_category: PreparedStatement,
}

/// The statements of schema/queries.cql by name, for `keyspace`.
pub fn queries(keyspace: &str) -> BTreeMap<String, String> {
    let mut queries = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in QUERIES_CQL.lines() {
        if let Some(name) = line.strip_prefix("-- name:") {
            queries.extend(current.take());
            current = Some((name.trim().to_owned(), String::new()));
        } else if let Some((_, text)) = current.as_mut() {
            let code = schema::strip_comments(line);
            if !code.trim().is_empty() {
                text.push_str(code.trim());
                text.push(' ');
            }
        }
    }
    queries.extend(current);
    queries
        .into_iter()
        .map(|(name, text)| {
            let statement = text.trim().trim_end_matches(';').trim();
            (name, statement.replace("{keyspace}", keyspace))
        })
        .collect()
}

fn consistency(level: ConsistencyLevel) -> Consistency {
    match level {
        ConsistencyLevel::One => Consistency::One,
        ConsistencyLevel::Two => Consistency::Two,
        ConsistencyLevel::Three => Consistency::Three,
        ConsistencyLevel::Quorum => Consistency::Quorum,
        ConsistencyLevel::All => Consistency::All,
        ConsistencyLevel::LocalQuorum => Consistency::LocalQuorum,
        ConsistencyLevel::EachQuorum => Consistency::EachQuorum,
        ConsistencyLevel::LocalOne => Consistency::LocalOne,
    }
}

impl Statements {
    async fn prepare(
        session: &Session,
        settings: &ScyllaSettings,
        read: &ExecutionProfileHandle,
        write: &ExecutionProfileHandle,
    ) -> Result<Statements> {
        let queries = queries(&settings.keyspace);
        let prepare = async |name: &str| -> Result<PreparedStatement> {
            let text = queries
                .get(name)
                .with_context(|| format!("schema/queries.cql has no statement {name}"))?;
            let mut statement = session.prepare(text.as_str()).await.with_context(|| {
                format!(
                    "failed to prepare {name} in keyspace {}; is the schema applied (`propensity schema apply`)?",
                    settings.keyspace
                )
            })?;
            let profile = if name.starts_with("select_") {
                read
            } else {
                write
            };
            statement.set_execution_profile_handle(Some(profile.clone()));
            // Plain values under explicit timestamps: running one twice changes nothing.
            statement.set_is_idempotent(true);
            Ok(statement)
        };
        Ok(Statements {
            delete_session: prepare("delete_session").await?,
            insert_session: prepare("insert_session").await?,
            insert_session_product: prepare("insert_session_product").await?,
            select_session: prepare("select_session").await?,
            delete_user: prepare("delete_user").await?,
            insert_user: prepare("insert_user").await?,
            insert_user_product: prepare("insert_user_product").await?,
            select_user: prepare("select_user").await?,
            insert_product: prepare("insert_product").await?,
            select_product: prepare("select_product").await?,
            insert_category: prepare("insert_category").await?,
            select_category: prepare("select_category").await?,
        })
    }
}

// --- Values as CQL stores them -------------------------------------------------------------

/// An id or hash: the same 64 bits in a bigint.
fn to_bigint(value: u64) -> i64 {
    value as i64
}

fn from_bigint(value: i64) -> u64 {
    value as u64
}

fn from_count(value: i64, column: &str) -> Result<u32, StoreError> {
    u32::try_from(value)
        .map_err(|_| StoreError::Corrupt(format!("{column} = {value} is not a count")))
}

fn required<T>(value: Option<T>, column: &str) -> Result<T, StoreError> {
    value.ok_or_else(|| StoreError::Corrupt(format!("{column} is null")))
}

fn encode_guard(guard: &DeliveryGuard) -> Vec<u8> {
    bincode::serialize(guard).expect("a delivery guard always serializes")
}

/// A row written before the guard column existed has none: it remembers nothing.
fn decode_guard(bytes: Option<Vec<u8>>, table: &str) -> Result<DeliveryGuard, StoreError> {
    bytes.map_or(Ok(DeliveryGuard::default()), |bytes| {
        bincode::deserialize(&bytes)
            .map_err(|error| StoreError::Corrupt(format!("{table}.guard: {error}")))
    })
}

fn ttl(seconds: u32) -> i32 {
    // Validated against the CQL maximum of 20 years, well within i32.
    seconds as i32
}

/// Write timestamps in microseconds, increasing by at least 2 per save across the process, so a
/// partition delete at `t - 1` never shadows the rows of an earlier save's `t`.
fn next_write_timestamp() -> i64 {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_micros() as i64);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 2);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(actual) => last = actual,
        }
    }
}

type Values = Box<dyn SerializeRow + Send + Sync>;

#[derive(SerializeRow)]
struct DeleteSession {
    deleted_at: i64,
    user_id: i64,
    session_hash: i64,
}

#[derive(SerializeRow)]
struct InsertSession {
    user_id: i64,
    session_hash: i64,
    session_id: String,
    started_at: i64,
    last_event_at: i64,
    events: i64,
    views: i64,
    carts: i64,
    removes: i64,
    purchases: i64,
    revenue: f64,
    categories_viewed: Vec<i64>,
    view_sequence: Vec<i64>,
    guard: Vec<u8>,
    ttl: i32,
    written_at: i64,
}

#[derive(SerializeRow)]
struct InsertSessionProduct {
    user_id: i64,
    session_hash: i64,
    product_id: i64,
    position: i32,
    category_id: i64,
    price: f64,
    product_events: i64,
    product_views: i64,
    product_carts: i64,
    product_removes: i64,
    product_purchases: i64,
    in_cart: i64,
    last_view_at: MaybeUnset<i64>,
    ttl: i32,
    written_at: i64,
}

#[derive(SerializeRow)]
struct InsertUser {
    user_id: i64,
    events: i64,
    views: i64,
    carts: i64,
    removes: i64,
    purchases: i64,
    sessions: i64,
    purchase_sessions: i64,
    revenue: f64,
    first_event_at: i64,
    last_event_at: i64,
    last_purchase_at: Option<i64>,
    recent_identities: Vec<i64>,
    guard: Vec<u8>,
    ttl: i32,
    written_at: i64,
}

#[derive(SerializeRow)]
struct DeleteUser {
    deleted_at: i64,
    user_id: i64,
}

#[derive(SerializeRow)]
struct InsertUserProduct {
    user_id: i64,
    product_id: i64,
    product_events: i64,
    product_views: i64,
    product_carts: i64,
    product_removes: i64,
    product_purchases: i64,
    product_last_event_at: i64,
    ttl: i32,
    written_at: i64,
}

#[derive(SerializeRow)]
struct InsertProduct {
    product_id: i64,
    source: i32,
    category_id: i64,
    price: f64,
    events: i64,
    views: i64,
    carts: i64,
    removes: i64,
    purchases: i64,
    revenue: f64,
    last_event_at: i64,
    hours: Vec<i64>,
    hour_views: Vec<i64>,
    hour_carts: Vec<i64>,
    hour_purchases: Vec<i64>,
    hour_revenue: Vec<f64>,
    guard: Vec<u8>,
    ttl: i32,
    written_at: i64,
}

#[derive(SerializeRow)]
struct InsertCategory {
    category_id: i64,
    source: i32,
    views: i64,
    price_buckets: Vec<i64>,
    guard: Vec<u8>,
    ttl: i32,
    written_at: i64,
}

#[derive(DeserializeRow)]
struct SessionRow {
    session_id: Option<String>,
    started_at: Option<i64>,
    last_event_at: Option<i64>,
    events: Option<i64>,
    views: Option<i64>,
    carts: Option<i64>,
    removes: Option<i64>,
    purchases: Option<i64>,
    revenue: Option<f64>,
    categories_viewed: Option<Vec<i64>>,
    view_sequence: Option<Vec<i64>>,
    guard: Option<Vec<u8>>,
    product_id: Option<i64>,
    position: Option<i32>,
    category_id: Option<i64>,
    price: Option<f64>,
    product_events: Option<i64>,
    product_views: Option<i64>,
    product_carts: Option<i64>,
    product_removes: Option<i64>,
    product_purchases: Option<i64>,
    in_cart: Option<i64>,
    last_view_at: Option<i64>,
}

/// A row of a user's partition: the static user fields, and one product (none when the user's
/// partition holds no product row).
#[derive(DeserializeRow)]
struct UserRow {
    user_id: i64,
    events: Option<i64>,
    views: Option<i64>,
    carts: Option<i64>,
    removes: Option<i64>,
    purchases: Option<i64>,
    sessions: Option<i64>,
    purchase_sessions: Option<i64>,
    revenue: Option<f64>,
    first_event_at: Option<i64>,
    last_event_at: Option<i64>,
    last_purchase_at: Option<i64>,
    recent_identities: Option<Vec<i64>>,
    guard: Option<Vec<u8>>,
    product_id: Option<i64>,
    product_events: Option<i64>,
    product_views: Option<i64>,
    product_carts: Option<i64>,
    product_removes: Option<i64>,
    product_purchases: Option<i64>,
    product_last_event_at: Option<i64>,
}

/// A product's part: one row of its partition.
#[derive(DeserializeRow)]
struct ProductRow {
    product_id: i64,
    source: i32,
    category_id: i64,
    price: f64,
    events: i64,
    views: i64,
    carts: i64,
    removes: i64,
    purchases: i64,
    revenue: f64,
    last_event_at: i64,
    hours: Option<Vec<i64>>,
    hour_views: Option<Vec<i64>>,
    hour_carts: Option<Vec<i64>>,
    hour_purchases: Option<Vec<i64>>,
    hour_revenue: Option<Vec<f64>>,
    guard: Option<Vec<u8>>,
}

/// A category's part: one row of its partition.
#[derive(DeserializeRow)]
struct CategoryRow {
    category_id: i64,
    source: i32,
    views: i64,
    price_buckets: Option<Vec<i64>>,
    guard: Option<Vec<u8>>,
}

fn counts(
    [events, views, carts, removes, purchases]: [i64; 5],
    table: &str,
) -> Result<Counts, StoreError> {
    Ok(Counts {
        events: from_count(events, &format!("{table}.events"))?,
        views: from_count(views, &format!("{table}.views"))?,
        carts: from_count(carts, &format!("{table}.carts"))?,
        removes: from_count(removes, &format!("{table}.removes"))?,
        purchases: from_count(purchases, &format!("{table}.purchases"))?,
    })
}

fn counts_values(counts: &Counts) -> [i64; 5] {
    [
        counts.events,
        counts.views,
        counts.carts,
        counts.removes,
        counts.purchases,
    ]
    .map(i64::from)
}

// --- Writes --------------------------------------------------------------------------------

/// One request of a save: a single statement or a single-partition batch.
enum Write {
    Single {
        table: &'static str,
        statement: PreparedStatement,
        values: Values,
    },
    Batch {
        table: &'static str,
        batch: Batch,
        values: Vec<Values>,
    },
}

/// Lookups of one load, one request each.
enum Lookup {
    User(u64),
    Session(SessionKey),
    Product(u64),
    Category(u64),
}

/// What a lookup found.
enum Found {
    User(Option<Stored<UserState>>),
    Session(Option<Stored<SessionState>>),
    Products(Vec<Stored<ProductState>>),
    Categories(Vec<Stored<CategoryState>>),
}

/// Counts a request in flight while alive.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The store's reading of a driver error: timeouts apart, the cluster is unavailable to us.
fn store_error(error: ExecutionError, action: &str, timeout_ms: u64) -> StoreError {
    match &error {
        ExecutionError::RequestTimeout(elapsed) => StoreError::Timeout(elapsed.as_millis() as u64),
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::ReadTimeout { .. } | DbError::WriteTimeout { .. },
            _,
        )) => StoreError::Timeout(timeout_ms),
        _ => StoreError::Unavailable(format!("{action}: {error}")),
    }
}

impl Core {
    async fn open(settings: ScyllaSettings) -> Result<Core> {
        let session = connect(&settings).await?;
        if settings.apply_schema_on_start {
            for line in schema::apply(&session, &settings).await? {
                tracing::info!("schema: {line}");
            }
        }
        let read = ExecutionProfile::builder()
            .consistency(consistency(settings.read_consistency))
            .request_timeout(Some(Duration::from_millis(settings.read_timeout_ms)))
            .build()
            .into_handle();
        let write = ExecutionProfile::builder()
            .consistency(consistency(settings.write_consistency))
            .request_timeout(Some(Duration::from_millis(settings.write_timeout_ms)))
            .build()
            .into_handle();
        let statements = Statements::prepare(&session, &settings, &read, &write).await?;
        let reads = settings.max_concurrency;
        Ok(Core {
            session,
            statements,
            write_profile: write,
            settings,
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
            reads: tokio::sync::Semaphore::new(reads),
        })
    }

    fn enter(&self) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }

    /// Every statement of one entity's partition in one batch. A single-partition batch is
    /// applied atomically, so a crash never leaves part of an entity written: its delivery
    /// guard always matches its data.
    fn partition_batch(
        &self,
        table: &'static str,
        rows: Vec<(&PreparedStatement, Values)>,
    ) -> Write {
        let mut batch = Batch::new(BatchType::Unlogged);
        let mut values = Vec::with_capacity(rows.len());
        for (statement, row) in rows {
            batch.append_statement(statement.clone());
            values.push(row);
        }
        batch.set_execution_profile_handle(Some(self.write_profile.clone()));
        batch.set_is_idempotent(true);
        Write::Batch {
            table,
            batch,
            values,
        }
    }

    fn session_write(&self, stored: &Stored<SessionState>, written_at: i64) -> Write {
        let (session, statements) = (&stored.state, &self.statements);
        let key = session.key();
        let (user_id, session_hash) = (to_bigint(key.user_id), to_bigint(key.session_hash));
        let ttl = ttl(if session.counts.purchases > 0 {
            self.settings.purchased_session_ttl_seconds
        } else {
            self.settings.session_ttl_seconds
        });
        let [events, views, carts, removes, purchases] = counts_values(&session.counts);
        let mut rows: Vec<(&PreparedStatement, Values)> = vec![
            (
                &statements.delete_session,
                Box::new(DeleteSession {
                    deleted_at: written_at - 1,
                    user_id,
                    session_hash,
                }),
            ),
            (
                &statements.insert_session,
                Box::new(InsertSession {
                    user_id,
                    session_hash,
                    session_id: session.session_id.to_string(),
                    started_at: session.started_at,
                    last_event_at: session.last_event_at,
                    events,
                    views,
                    carts,
                    removes,
                    purchases,
                    revenue: session.revenue,
                    categories_viewed: session
                        .categories_viewed
                        .iter()
                        .copied()
                        .map(to_bigint)
                        .collect(),
                    view_sequence: session
                        .view_sequence
                        .iter()
                        .copied()
                        .map(to_bigint)
                        .collect(),
                    guard: encode_guard(&stored.guard),
                    ttl,
                    written_at,
                }),
            ),
        ];
        for (position, product) in session.products.iter().enumerate() {
            let [events, views, carts, removes, purchases] = counts_values(&product.counts);
            rows.push((
                &statements.insert_session_product,
                Box::new(InsertSessionProduct {
                    user_id,
                    session_hash,
                    product_id: to_bigint(product.product_id),
                    position: position as i32,
                    category_id: to_bigint(product.category_id),
                    price: product.price,
                    product_events: events,
                    product_views: views,
                    product_carts: carts,
                    product_removes: removes,
                    product_purchases: purchases,
                    in_cart: i64::from(product.in_cart),
                    // The partition delete already cleared it: no need for a tombstone.
                    last_view_at: product
                        .last_view_at
                        .map_or(MaybeUnset::Unset, MaybeUnset::Set),
                    ttl,
                    written_at,
                }),
            ));
        }
        self.partition_batch("sessions", rows)
    }

    fn user_write(&self, stored: &Stored<UserState>, written_at: i64) -> Write {
        let (user, statements) = (&stored.state, &self.statements);
        let user_id = to_bigint(user.user_id);
        let ttl = ttl(self.settings.user_ttl_seconds);
        let [events, views, carts, removes, purchases] = counts_values(&user.counts);
        let mut rows: Vec<(&PreparedStatement, Values)> = vec![
            (
                &statements.delete_user,
                Box::new(DeleteUser {
                    deleted_at: written_at - 1,
                    user_id,
                }),
            ),
            (
                &statements.insert_user,
                Box::new(InsertUser {
                    user_id,
                    events,
                    views,
                    carts,
                    removes,
                    purchases,
                    sessions: i64::from(user.sessions),
                    purchase_sessions: i64::from(user.purchase_sessions),
                    revenue: user.revenue,
                    first_event_at: user.first_event_at,
                    last_event_at: user.last_event_at,
                    last_purchase_at: user.last_purchase_at,
                    recent_identities: user
                        .recent_identities
                        .iter()
                        .copied()
                        .map(to_bigint)
                        .collect(),
                    guard: encode_guard(&stored.guard),
                    ttl,
                    written_at,
                }),
            ),
        ];
        for (product_id, product) in &user.products {
            let [events, views, carts, removes, purchases] = counts_values(&product.counts);
            rows.push((
                &statements.insert_user_product,
                Box::new(InsertUserProduct {
                    user_id,
                    product_id: to_bigint(*product_id),
                    product_events: events,
                    product_views: views,
                    product_carts: carts,
                    product_removes: removes,
                    product_purchases: purchases,
                    product_last_event_at: product.last_event_at,
                    ttl,
                    written_at,
                }),
            ));
        }
        self.partition_batch("users", rows)
    }

    fn product_write(&self, stored: &Stored<ProductState>, written_at: i64) -> Write {
        let product = &stored.state;
        let [events, views, carts, removes, purchases] = counts_values(&product.counts);
        let hours = &product.hours;
        Write::Single {
            table: "products",
            statement: self.statements.insert_product.clone(),
            values: Box::new(InsertProduct {
                product_id: to_bigint(product.product_id),
                source: i32::from(product.source),
                category_id: to_bigint(product.category_id),
                price: product.price,
                events,
                views,
                carts,
                removes,
                purchases,
                revenue: product.revenue,
                last_event_at: product.last_event_at,
                hours: hours.iter().map(|bucket| bucket.hour).collect(),
                hour_views: hours.iter().map(|bucket| i64::from(bucket.views)).collect(),
                hour_carts: hours.iter().map(|bucket| i64::from(bucket.carts)).collect(),
                hour_purchases: hours
                    .iter()
                    .map(|bucket| i64::from(bucket.purchases))
                    .collect(),
                hour_revenue: hours.iter().map(|bucket| bucket.revenue).collect(),
                guard: encode_guard(&stored.guard),
                ttl: ttl(self.settings.product_ttl_seconds),
                written_at,
            }),
        }
    }

    fn category_write(&self, stored: &Stored<CategoryState>, written_at: i64) -> Write {
        let category = &stored.state;
        Write::Single {
            table: "categories",
            statement: self.statements.insert_category.clone(),
            values: Box::new(InsertCategory {
                category_id: to_bigint(category.category_id),
                source: i32::from(category.source),
                views: i64::from(category.views),
                price_buckets: category
                    .price_buckets
                    .iter()
                    .copied()
                    .map(i64::from)
                    .collect(),
                guard: encode_guard(&stored.guard),
                ttl: ttl(self.settings.category_ttl_seconds),
                written_at,
            }),
        }
    }

    async fn write(&self, write: Write) -> Result<(), StoreError> {
        let _in_flight = self.enter();
        let (table, result) = match &write {
            Write::Single {
                table,
                statement,
                values,
            } => (
                *table,
                self.session.execute_unpaged(statement, values).await,
            ),
            Write::Batch {
                table,
                batch,
                values,
            } => (*table, self.session.batch(batch, values).await),
        };
        result.map(drop).map_err(|error| {
            store_error(
                error,
                &format!("writing {table}"),
                self.settings.write_timeout_ms,
            )
        })
    }

    /// Runs the writes, `max_concurrency` at a time; the first failure ends the stage.
    async fn write_all(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        stream::iter(writes)
            .map(|write| self.write(write))
            .buffer_unordered(self.settings.max_concurrency)
            .try_for_each(|()| std::future::ready(Ok(())))
            .await
    }

    async fn save(&self, batch: &StateBatch) -> Result<(), StoreError> {
        let written_at = next_write_timestamp();
        // Stage 1: users and categories. Stage 2, only once stage 1 is durable: sessions and
        // products (see the module documentation).
        let mut first = Vec::new();
        for user in &batch.users {
            first.push(self.user_write(user, written_at));
        }
        for category in &batch.categories {
            first.push(self.category_write(category, written_at));
        }
        self.write_all(first).await?;
        let mut second = Vec::new();
        for session in &batch.sessions {
            second.push(self.session_write(session, written_at));
        }
        for product in &batch.products {
            second.push(self.product_write(product, written_at));
        }
        self.write_all(second).await
    }

    // --- Reads -------------------------------------------------------------------------------

    async fn read(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        table: &str,
    ) -> Result<QueryRowsResult, StoreError> {
        let _permit = self.reads.acquire().await.map_err(|_| {
            StoreError::Unavailable(format!("reading {table}: the store is closing"))
        })?;
        let _in_flight = self.enter();
        let result = self
            .session
            .execute_unpaged(statement, values)
            .await
            .map_err(|error| {
                store_error(
                    error,
                    &format!("reading {table}"),
                    self.settings.read_timeout_ms,
                )
            })?;
        result
            .into_rows_result()
            .map_err(|error| StoreError::Corrupt(format!("reading {table}: {error}")))
    }

    async fn lookup(&self, lookup: Lookup) -> Result<Found, StoreError> {
        let statements = &self.statements;
        match lookup {
            Lookup::User(user_id) => {
                let rows = self
                    .read(&statements.select_user, (to_bigint(user_id),), "users")
                    .await?;
                user_from_rows(&rows).map(Found::User)
            }
            Lookup::Session(key) => {
                let rows = self
                    .read(
                        &statements.select_session,
                        (to_bigint(key.user_id), to_bigint(key.session_hash)),
                        "sessions",
                    )
                    .await?;
                session_from_rows(key, &rows).map(Found::Session)
            }
            Lookup::Product(product_id) => {
                let rows = self
                    .read(
                        &statements.select_product,
                        (to_bigint(product_id),),
                        "products",
                    )
                    .await?;
                product_parts(&rows).map(Found::Products)
            }
            Lookup::Category(category_id) => {
                let rows = self
                    .read(
                        &statements.select_category,
                        (to_bigint(category_id),),
                        "categories",
                    )
                    .await?;
                category_parts(&rows).map(Found::Categories)
            }
        }
    }

    /// Runs the lookups, `max_concurrency` at a time, results in the order asked.
    async fn lookup_all(&self, lookups: Vec<Lookup>) -> Result<Vec<Found>, StoreError> {
        stream::iter(lookups)
            .map(|lookup| self.lookup(lookup))
            .buffered(self.settings.max_concurrency)
            .try_collect()
            .await
    }

    async fn load_user_side(
        &self,
        users: Vec<u64>,
        sessions: Vec<SessionKey>,
    ) -> Result<LoadedUserSide, StoreError> {
        let lookups = users
            .iter()
            .copied()
            .map(Lookup::User)
            .chain(sessions.into_iter().map(Lookup::Session))
            .collect();
        let mut loaded_users = Vec::new();
        let mut loaded_sessions = Vec::new();
        for found in self.lookup_all(lookups).await? {
            match found {
                Found::User(Some(user)) => loaded_users.push(user),
                Found::Session(Some(session)) => loaded_sessions.push(session),
                _ => {}
            }
        }
        Ok((loaded_users, loaded_sessions))
    }

    async fn load_catalog(
        &self,
        products: Vec<u64>,
        categories: Vec<u64>,
    ) -> Result<LoadedCatalog, StoreError> {
        // The categories asked for load alongside the products; those of the loaded products
        // that were not asked for follow.
        let lookups = products
            .iter()
            .copied()
            .map(Lookup::Product)
            .chain(categories.iter().copied().map(Lookup::Category))
            .collect();
        let mut loaded_products = Vec::new();
        let mut loaded_categories = Vec::new();
        for found in self.lookup_all(lookups).await? {
            match found {
                Found::Products(parts) => loaded_products.extend(parts),
                Found::Categories(parts) => loaded_categories.extend(parts),
                _ => {}
            }
        }
        let mut missing: Vec<u64> = loaded_products
            .iter()
            .map(|product| product.state.category_id)
            .filter(|category_id| !categories.contains(category_id))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        for found in self
            .lookup_all(missing.into_iter().map(Lookup::Category).collect())
            .await?
        {
            if let Found::Categories(parts) = found {
                loaded_categories.extend(parts);
            }
        }
        Ok((loaded_products, loaded_categories))
    }
}

/// A user from the rows of their partition, `None` when it is empty.
fn user_from_rows(rows: &QueryRowsResult) -> Result<Option<Stored<UserState>>, StoreError> {
    let corrupt = |error: &dyn std::fmt::Display| StoreError::Corrupt(format!("users: {error}"));
    let mut user: Option<Stored<UserState>> = None;
    for row in rows.rows::<UserRow>().map_err(|error| corrupt(&error))? {
        let row = row.map_err(|error| corrupt(&error))?;
        let user = match &mut user {
            Some(user) => &mut user.state,
            None => {
                &mut user
                    .insert(Stored {
                        guard: decode_guard(row.guard.clone(), "users")?,
                        state: UserState {
                            user_id: from_bigint(row.user_id),
                            counts: counts(
                                [
                                    required(row.events, "users.events")?,
                                    required(row.views, "users.views")?,
                                    required(row.carts, "users.carts")?,
                                    required(row.removes, "users.removes")?,
                                    required(row.purchases, "users.purchases")?,
                                ],
                                "users",
                            )?,
                            sessions: from_count(
                                required(row.sessions, "users.sessions")?,
                                "users.sessions",
                            )?,
                            purchase_sessions: from_count(
                                required(row.purchase_sessions, "users.purchase_sessions")?,
                                "users.purchase_sessions",
                            )?,
                            revenue: required(row.revenue, "users.revenue")?,
                            first_event_at: required(row.first_event_at, "users.first_event_at")?,
                            last_event_at: required(row.last_event_at, "users.last_event_at")?,
                            last_purchase_at: row.last_purchase_at,
                            recent_identities: row
                                .recent_identities
                                .unwrap_or_default()
                                .into_iter()
                                .map(from_bigint)
                                .collect(),
                            products: BTreeMap::new(),
                        },
                    })
                    .state
            }
        };
        let Some(product_id) = row.product_id else {
            continue;
        };
        user.products.insert(
            from_bigint(product_id),
            UserProduct {
                counts: counts(
                    [
                        required(row.product_events, "users.product_events")?,
                        required(row.product_views, "users.product_views")?,
                        required(row.product_carts, "users.product_carts")?,
                        required(row.product_removes, "users.product_removes")?,
                        required(row.product_purchases, "users.product_purchases")?,
                    ],
                    "users",
                )?,
                last_event_at: required(row.product_last_event_at, "users.product_last_event_at")?,
            },
        );
    }
    Ok(user)
}

/// Every part of a product: the rows of its partition.
fn product_parts(rows: &QueryRowsResult) -> Result<Vec<Stored<ProductState>>, StoreError> {
    let corrupt = |error: &dyn std::fmt::Display| StoreError::Corrupt(format!("products: {error}"));
    let mut parts = Vec::new();
    for row in rows.rows::<ProductRow>().map_err(|error| corrupt(&error))? {
        let row = row.map_err(|error| corrupt(&error))?;
        let list = |values: Option<Vec<i64>>, column: &str| -> Result<Vec<u32>, StoreError> {
            values
                .unwrap_or_default()
                .into_iter()
                .map(|value| from_count(value, column))
                .collect()
        };
        let hours = row.hours.unwrap_or_default();
        let views = list(row.hour_views, "products.hour_views")?;
        let carts = list(row.hour_carts, "products.hour_carts")?;
        let purchases = list(row.hour_purchases, "products.hour_purchases")?;
        let revenue = row.hour_revenue.unwrap_or_default();
        if [views.len(), carts.len(), purchases.len(), revenue.len()]
            .iter()
            .any(|length| *length != hours.len())
        {
            return Err(corrupt(&format_args!(
                "product {} source {}: the hourly lists differ in length",
                row.product_id, row.source
            )));
        }
        let guard = decode_guard(row.guard, "products")?;
        let state = ProductState {
            product_id: from_bigint(row.product_id),
            source: u16::try_from(row.source)
                .map_err(|_| corrupt(&format_args!("source {} is out of range", row.source)))?,
            category_id: from_bigint(row.category_id),
            price: row.price,
            counts: counts(
                [row.events, row.views, row.carts, row.removes, row.purchases],
                "products",
            )?,
            revenue: row.revenue,
            last_event_at: row.last_event_at,
            hours: (0..hours.len())
                .map(|index| HourBucket {
                    hour: hours[index],
                    views: views[index],
                    carts: carts[index],
                    purchases: purchases[index],
                    revenue: revenue[index],
                })
                .collect(),
        };
        parts.push(Stored { state, guard });
    }
    Ok(parts)
}

/// Every part of a category: the rows of its partition.
fn category_parts(rows: &QueryRowsResult) -> Result<Vec<Stored<CategoryState>>, StoreError> {
    let corrupt =
        |error: &dyn std::fmt::Display| StoreError::Corrupt(format!("categories: {error}"));
    let mut parts = Vec::new();
    for row in rows
        .rows::<CategoryRow>()
        .map_err(|error| corrupt(&error))?
    {
        let row = row.map_err(|error| corrupt(&error))?;
        let guard = decode_guard(row.guard, "categories")?;
        let state = CategoryState {
            category_id: from_bigint(row.category_id),
            source: u16::try_from(row.source)
                .map_err(|_| corrupt(&format_args!("source {} is out of range", row.source)))?,
            views: from_count(row.views, "categories.views")?,
            price_buckets: row
                .price_buckets
                .unwrap_or_default()
                .into_iter()
                .map(|count| from_count(count, "categories.price_buckets"))
                .collect::<Result<_, _>>()?,
        };
        parts.push(Stored { state, guard });
    }
    Ok(parts)
}

/// A session from its partition's rows: the static columns on every row, one row per product
/// (or a single row without a product for a session that touched none).
fn session_from_rows(
    key: SessionKey,
    rows: &QueryRowsResult,
) -> Result<Option<Stored<SessionState>>, StoreError> {
    let corrupt = |error: &dyn std::fmt::Display| StoreError::Corrupt(format!("sessions: {error}"));
    let mut session: Option<SessionState> = None;
    let mut guard = DeliveryGuard::default();
    let mut products: Vec<(i32, SessionProduct)> = Vec::new();
    for row in rows.rows::<SessionRow>().map_err(|error| corrupt(&error))? {
        let row = row.map_err(|error| corrupt(&error))?;
        if session.is_none() {
            let session_id = required(row.session_id, "sessions.session_id")?;
            if SessionKey::new(key.user_id, &session_id) != key {
                return Err(StoreError::Corrupt(format!(
                    "sessions: the partition of {key:?} holds session {session_id:?}"
                )));
            }
            guard = decode_guard(row.guard, "sessions")?;
            session = Some(SessionState {
                user_id: key.user_id,
                session_id: session_id.into(),
                started_at: required(row.started_at, "sessions.started_at")?,
                last_event_at: required(row.last_event_at, "sessions.last_event_at")?,
                counts: counts(
                    [
                        required(row.events, "sessions.events")?,
                        required(row.views, "sessions.views")?,
                        required(row.carts, "sessions.carts")?,
                        required(row.removes, "sessions.removes")?,
                        required(row.purchases, "sessions.purchases")?,
                    ],
                    "sessions",
                )?,
                revenue: required(row.revenue, "sessions.revenue")?,
                products: Vec::new(),
                categories_viewed: row
                    .categories_viewed
                    .unwrap_or_default()
                    .into_iter()
                    .map(from_bigint)
                    .collect(),
                view_sequence: row
                    .view_sequence
                    .unwrap_or_default()
                    .into_iter()
                    .map(from_bigint)
                    .collect(),
            });
        }
        let Some(product_id) = row.product_id else {
            continue;
        };
        products.push((
            required(row.position, "sessions.position")?,
            SessionProduct {
                product_id: from_bigint(product_id),
                category_id: from_bigint(required(row.category_id, "sessions.category_id")?),
                price: required(row.price, "sessions.price")?,
                counts: counts(
                    [
                        required(row.product_events, "sessions.product_events")?,
                        required(row.product_views, "sessions.product_views")?,
                        required(row.product_carts, "sessions.product_carts")?,
                        required(row.product_removes, "sessions.product_removes")?,
                        required(row.product_purchases, "sessions.product_purchases")?,
                    ],
                    "sessions",
                )?,
                in_cart: from_count(
                    required(row.in_cart, "sessions.in_cart")?,
                    "sessions.in_cart",
                )?,
                last_view_at: row.last_view_at,
            },
        ));
    }
    // Rows come in product id order; the session keeps its products in order of first touch.
    products.sort_by_key(|(position, _)| *position);
    Ok(session.map(|mut session| {
        session.products = products.into_iter().map(|(_, product)| product).collect();
        Stored {
            state: session,
            guard,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statement_is_named_and_in_the_keyspace() {
        let queries = queries("ks");
        assert_eq!(queries.len(), 12, "{:?}", queries.keys());
        for (name, statement) in &queries {
            assert!(statement.contains(" ks."), "{name}: {statement}");
            assert!(!statement.contains("--"), "{name}: {statement}");
            assert!(!statement.ends_with(';'), "{name}: {statement}");
        }
        assert!(queries["select_session"].starts_with("SELECT session_id,"));
    }

    #[test]
    fn ids_keep_their_bits_and_counts_their_range() {
        for id in [0, 1, u64::MAX, 1 << 63, 562_949_953_421_312] {
            assert_eq!(from_bigint(to_bigint(id)), id);
        }
        assert_eq!(from_count(i64::from(u32::MAX), "c").unwrap(), u32::MAX);
        assert!(matches!(from_count(-1, "c"), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn driver_errors_map_to_store_errors() {
        let timeout = store_error(
            ExecutionError::RequestTimeout(Duration::from_millis(100)),
            "reading users",
            100,
        );
        assert!(matches!(timeout, StoreError::Timeout(100)), "{timeout}");
        let server_timeout = store_error(
            ExecutionError::LastAttemptError(RequestAttemptError::DbError(
                DbError::WriteTimeout {
                    consistency: Consistency::LocalQuorum,
                    received: 0,
                    required: 1,
                    write_type: scylla::errors::WriteType::UnloggedBatch,
                },
                "timed out".into(),
            )),
            "writing sessions",
            250,
        );
        assert!(
            matches!(server_timeout, StoreError::Timeout(250)),
            "{server_timeout}"
        );
        let unavailable = store_error(
            ExecutionError::LastAttemptError(RequestAttemptError::DbError(
                DbError::Unavailable {
                    consistency: Consistency::LocalQuorum,
                    required: 2,
                    alive: 1,
                },
                "not enough replicas".into(),
            )),
            "writing sessions",
            250,
        );
        assert!(
            matches!(&unavailable, StoreError::Unavailable(message) if message.starts_with("writing sessions: ") && message.contains("not enough replicas")),
            "{unavailable}"
        );
    }

    #[test]
    fn write_timestamps_leave_room_for_the_partition_delete() {
        let first = next_write_timestamp();
        let second = next_write_timestamp();
        assert!(second - 1 > first, "{first} {second}");
    }
}
