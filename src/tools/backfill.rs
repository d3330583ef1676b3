//! `propensity backfill`: rebuilds an online store from history through the same actors and
//! state machines as the service, so the store reads as if the service had consumed it.
//!
//! It never writes into a store a service is using. It builds the store that `[store]` names,
//! which should be a new one (another `store.embedded_path`, another `store.scylla.keyspace`);
//! the service is then pointed at it and restarted. A store that already holds state is refused
//! unless `--replace` says to rebuild it from scratch, which is what makes a second run over the
//! same history give the same store: the embedded file is built beside the old one and renamed
//! over it at the end, and a keyspace has its tables truncated first.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use propensity_actors::engine::Engine;
use propensity_actors::event::{Millis, format_time};
use propensity_actors::store::StateStore;
use serde::Serialize;

use crate::config::{Settings, StoreKind};
use crate::offline::history::ordered_events;
use crate::offline::train::{EVENTS, progress_bar, scan_history};
use crate::online::store::{EmbeddedStore, ScyllaStore};

/// Events handed to the engine at a time.
const BATCH: usize = 4096;

/// What to backfill.
#[derive(Clone, Debug)]
pub struct BackfillRequest {
    pub events: Vec<PathBuf>,
    /// Only events at or after this time.
    pub from: Option<Millis>,
    /// Only events before this time.
    pub to: Option<Millis>,
    /// Rebuild a store that already holds state.
    pub replace: bool,
    pub show_progress: bool,
}

/// What a backfill did.
#[derive(Clone, Debug, Serialize)]
pub struct BackfillReport {
    /// The store it built: a file or a keyspace.
    pub store: String,
    pub events: u64,
    pub duplicates: u64,
    /// Rows of the history outside `--from`/`--to`.
    pub skipped: u64,
    pub first_event: Option<String>,
    pub last_event: Option<String>,
    /// Sessions not ended by the end of the period: they continue when the service consumes
    /// what follows.
    pub live_sessions: usize,
    pub seconds: f64,
    pub events_per_second: f64,
}

/// Runs a backfill into the store of `settings`. Must run inside an actix system.
pub async fn run(request: &BackfillRequest, settings: &Settings) -> Result<BackfillReport> {
    if request.events.is_empty() {
        bail!("no event files given: pass --events FILE...");
    }
    if let (Some(from), Some(to)) = (request.from, request.to)
        && from >= to
    {
        bail!(
            "--from {} is not before --to {}",
            format_time(from),
            format_time(to)
        );
    }
    let history = scan_history(&request.events, request.show_progress)?;
    // History replays in event time: the wall clock must end no session here.
    let mut settings = settings.clone();
    settings.engine.live_watermark = false;
    let settings = &settings;
    let (store, target, finish) = open_target(settings, request.replace).await?;

    let started = Instant::now();
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let engine = Engine::start(
        settings.engine.shard_count(),
        settings.engine.shard_settings(None),
        store.clone(),
        metrics.clone(),
    );
    let progress = progress_bar(request.show_progress, history.rows(), "backfill", EVENTS);
    let spill = tempfile::tempdir().context("failed to create a directory for sorting")?;
    let mut report = BackfillReport {
        store: target.clone(),
        events: 0,
        duplicates: 0,
        skipped: 0,
        first_event: None,
        last_event: None,
        live_sessions: 0,
        seconds: 0.0,
        events_per_second: 0.0,
    };
    let mut batch = Vec::with_capacity(BATCH);
    let (mut first, mut last) = (None, None);
    for event in ordered_events(&history, spill.path())? {
        progress.inc(1);
        let inside = request.from.is_none_or(|from| event.time >= from)
            && request.to.is_none_or(|to| event.time < to);
        if !inside {
            report.skipped += 1;
            continue;
        }
        first.get_or_insert(event.time);
        last = Some(event.time);
        batch.push(event);
        if batch.len() == BATCH {
            let applied = engine.ingest(std::mem::take(&mut batch)).await?;
            report.events += applied.applied;
            report.duplicates += applied.duplicates;
        }
    }
    if !batch.is_empty() {
        let applied = engine.ingest(batch).await?;
        report.events += applied.applied;
        report.duplicates += applied.duplicates;
    }
    progress.finish_and_clear();
    let stats = engine.stats().await?;
    engine
        .stop()
        .await
        .context("failed to write the backfilled state to the store")?;
    drop(store);
    finish()?;
    report.seconds = started.elapsed().as_secs_f64();
    report.events_per_second = report.events as f64 / report.seconds.max(1e-9);
    report.first_event = first.map(format_time);
    report.last_event = last.map(format_time);
    report.live_sessions = stats.live_sessions;
    Ok(report)
}

/// The store to build into, its name, and what to do once it is written.
type Target = (Arc<dyn StateStore>, String, Box<dyn FnOnce() -> Result<()>>);

async fn open_target(settings: &Settings, replace: bool) -> Result<Target> {
    match settings.store.kind {
        StoreKind::Embedded => {
            let path = settings.store.embedded_path.clone();
            if path.exists() {
                if !replace {
                    bail!(
                        "{} already holds a store: point store.embedded_path at a new file, or pass --replace to rebuild it",
                        path.display()
                    );
                }
                // A store a service has open is locked: refuse rather than swap it underneath.
                EmbeddedStore::open(&path).with_context(|| {
                    format!(
                        "{} is in use or unreadable; stop the service using it first",
                        path.display()
                    )
                })?;
            }
            let building = building_path(&path);
            if building.exists() {
                std::fs::remove_file(&building)
                    .with_context(|| format!("failed to remove {}", building.display()))?;
            }
            let store = Arc::new(EmbeddedStore::open(&building)?);
            let finish = move || {
                std::fs::rename(&building, &path).with_context(|| {
                    format!(
                        "failed to move the new store {} to {}",
                        building.display(),
                        path.display()
                    )
                })
            };
            Ok((
                store,
                path_name(&settings.store.embedded_path),
                Box::new(finish),
            ))
        }
        StoreKind::Scylla => {
            let scylla = &settings.store.scylla;
            let session = crate::online::store::cluster::connect(scylla).await?;
            crate::online::store::schema::apply(&session, scylla).await?;
            let schema = crate::online::store::schema::Schema::for_keyspace(&scylla.keyspace)?;
            let mut holding = Vec::new();
            for table in &schema.tables {
                let rows = session
                    .query_unpaged(
                        format!("SELECT * FROM {}.{} LIMIT 1", scylla.keyspace, table.name),
                        (),
                    )
                    .await
                    .with_context(|| format!("failed to read {}.{}", scylla.keyspace, table.name))?
                    .into_rows_result()
                    .map(|rows| rows.rows_num())
                    .unwrap_or(0);
                if rows > 0 {
                    holding.push(table.name.clone());
                }
            }
            if !holding.is_empty() {
                if !replace {
                    bail!(
                        "keyspace {} already holds state (in {}): name a new store.scylla.keyspace, or pass --replace to rebuild it",
                        scylla.keyspace,
                        holding.join(", ")
                    );
                }
                for table in &schema.tables {
                    session
                        .query_unpaged(format!("TRUNCATE {}.{}", scylla.keyspace, table.name), ())
                        .await
                        .with_context(|| {
                            format!("failed to truncate {}.{}", scylla.keyspace, table.name)
                        })?;
                }
            }
            let store = Arc::new(ScyllaStore::open(scylla).await?);
            Ok((
                store,
                format!("keyspace {}", scylla.keyspace),
                Box::new(|| Ok(())),
            ))
        }
    }
}

/// Where the embedded store is built before it replaces `path`.
fn building_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".backfill");
    PathBuf::from(name)
}

fn path_name(path: &Path) -> String {
    path.display().to_string()
}

/// Prints the summary, or one JSON object with `--json`.
pub fn print_report(report: &BackfillReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
        return Ok(());
    }
    println!(
        "backfilled {} events ({} duplicates dropped, {} outside the period) into {} in {:.1} s ({:.0} events/s)",
        report.events,
        report.duplicates,
        report.skipped,
        report.store,
        report.seconds,
        report.events_per_second
    );
    if let (Some(first), Some(last)) = (&report.first_event, &report.last_event) {
        println!("history {first} to {last}");
    }
    println!(
        "{} sessions still open: they continue when the service consumes what follows",
        report.live_sessions
    );
    Ok(())
}
