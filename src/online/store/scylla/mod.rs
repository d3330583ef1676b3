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
//! writes values, not increments, under an explicit write timestamp. A session's partition is
//! replaced as a whole (a partition delete one microsecond older than the rows written with it),
//! so a session that restarts under the same key leaves no old rows; a user's history only grows,
//! and a save writes only the rows of the products that changed (`max_batch_rows` to a batch).
//!
//! The driver runs on a small runtime of its own, so its connections never wait behind the
//! actor threads or a test's body, and the store works from any runtime or none.
//!
//! The module is split by concern: [`statements`] (the prepared statements of
//! schema/queries.cql), [`values`] (values and rows as CQL stores them), [`write`] (saves),
//! [`read`] (loads and the rows they decode) and [`fence`] (bus partition ownership: no write
//! of a former owner lands over the new owner's).

mod fence;
mod read;
mod statements;
mod values;
mod write;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use propensity_actors::features::SessionKey;
use propensity_actors::outcomes::{IndexEntry, OpenSession, OutcomeTally, SessionEnd, TallyKey};
use propensity_actors::store::{
    LoadedCatalog, LoadedUserSide, StateBatch, StateStore, StoreError, StoreFuture,
};
use scylla::client::execution_profile::{ExecutionProfile, ExecutionProfileHandle};
use scylla::client::session::Session;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};

use crate::config::ScyllaSettings;
use crate::online::store::cluster::connect;
use crate::online::store::schema;

pub use statements::{QUERIES_CQL, queries};
use statements::{Statements, consistency};

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
    /// The most statements written in one batch.
    largest_batch: AtomicUsize,
    /// Reads in flight over the whole store: entities activate one by one, and a burst of
    /// activations must queue here rather than in the cluster.
    reads: tokio::sync::Semaphore,
    /// The bus partitions this instance owns (see [`fence`]).
    owned: std::sync::Mutex<std::collections::HashMap<u16, fence::Owned>>,
    /// One claim or window extension at a time.
    claiming: tokio::sync::Mutex<()>,
    /// How this instance names itself in the partitions it owns.
    owner_name: String,
    /// The write timestamps of its saves.
    write_clock: write::WriteClock,
    /// Session ends sent in index batches whose write failed without saying whether it applied
    /// (see [`write`]).
    in_doubt: std::sync::Mutex<write::InDoubt>,
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

    /// The most statements this store wrote in one batch. A user's batches hold at most
    /// `max_batch_rows`; a session's hold all its products. For tests and diagnostics.
    pub fn largest_batch_statements(&self) -> usize {
        self.core.largest_batch.load(Ordering::Relaxed)
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
    fn save(&self, batch: Arc<StateBatch>) -> StoreFuture<Vec<SessionEnd>> {
        self.spawn(|core| async move { core.save(&batch).await })
    }

    fn own_partition(&self, source: u16, lease: u64) -> StoreFuture<u64> {
        self.spawn(move |core| async move { core.own_partition(source, lease).await })
    }

    fn load_open_sessions(&self, source: u16) -> StoreFuture<Vec<OpenSession>> {
        self.spawn(move |core| async move { core.load_open_sessions(source).await })
    }

    fn load_index_entry(&self, key: SessionKey, source: u16) -> StoreFuture<IndexEntry> {
        self.spawn(move |core| async move { core.load_index_entry(key, source).await })
    }

    fn load_tallies(
        &self,
        from_hour: i64,
        to_hour: i64,
    ) -> StoreFuture<Vec<(TallyKey, OutcomeTally)>> {
        self.spawn(move |core| async move { core.load_tallies(from_hour, to_hour).await })
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

/// Counts a request in flight while alive.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The store's reading of a driver error: timeouts apart, the cluster is unavailable to us.
pub(super) fn store_error(error: ExecutionError, action: &str, timeout_ms: u64) -> StoreError {
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
            largest_batch: AtomicUsize::new(0),
            reads: tokio::sync::Semaphore::new(reads),
            owned: Default::default(),
            claiming: tokio::sync::Mutex::new(()),
            owner_name: format!(
                "{} pid {}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into()),
                std::process::id()
            ),
            write_clock: Default::default(),
            in_doubt: Default::default(),
        })
    }

    fn enter(&self) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scylla::statement::Consistency;

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
}
