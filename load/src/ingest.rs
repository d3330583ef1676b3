//! `propensity-load ingest`: pushes events through the embedded actor path of an in-process
//! service at full speed and measures events/s, the time until everything is durable, and the
//! memory the live state takes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail};
use propensity::config::Settings;
use propensity::online::serve::Service;
use propensity_actors::event::Event;

use crate::events::{read_events, synthetic};
use crate::memory::{DiscardStore, SizeCensus, events_heap_estimate, heap_bytes, resident_bytes};

/// Options of `ingest`.
#[derive(clap::Args, Clone)]
pub struct IngestArgs {
    /// A REES46 CSV to replay; default: generate one.
    #[arg(long)]
    events: Option<PathBuf>,
    #[arg(long, default_value_t = 20_000)]
    users: u64,
    #[arg(long, default_value_t = 7)]
    days: u32,
    /// Events per batch handed to the engine.
    #[arg(long, default_value_t = 4096)]
    batch: usize,
    /// Shards; 0 = one per core.
    #[arg(long, default_value_t = 0)]
    shards: usize,
    /// Use a store that keeps nothing, to measure the engine's own memory.
    #[arg(long)]
    discard_writes: bool,
    /// End sessions after this many minutes of event-time inactivity, as the service does
    /// (30), so their ends are indexed and counted; default: every session stays live, to
    /// measure memory over all of them.
    #[arg(long)]
    session_timeout_minutes: Option<u64>,
    /// Write to ScyllaDB or Cassandra at this node (`host:port`) instead of the embedded store,
    /// in a keyspace of this run's own, dropped afterwards.
    #[arg(long, conflicts_with = "discard_writes")]
    scylla: Option<String>,
    /// Also count the live heap's growth by allocation size and print the classes that grew
    /// most, per live session: where memory per session goes. Every allocation then updates a
    /// counter shared by all threads, so the run's events/s are not comparable to others'.
    #[arg(long)]
    heap_by_size: bool,
    #[arg(long, default_value = "var/bench")]
    work_dir: PathBuf,
}

/// What an ingest run measured.
pub struct IngestResult {
    pub events: usize,
    /// Until every shard applied its events.
    pub seconds: f64,
    /// Until the catalog applied them too and every entity was flushed to the store.
    pub durable_seconds: f64,
    pub live_sessions: usize,
    pub users: usize,
    pub rss_growth_bytes: i64,
    /// Live heap after the run minus before, the events given excluded.
    pub heap_growth_bytes: i64,
    /// The live allocations' change by size (empty unless counted, see `--heap-by-size`). The
    /// events given are in it: their strings and their vector show as freed.
    pub by_size: SizeCensus,
}

/// Settings of a service started to be measured: on a free port, every session kept live, the
/// embedded store in `work_dir` started afresh.
pub fn bench_settings(work_dir: &Path, model: &Path, shards: usize) -> Result<Settings> {
    let mut settings = Settings::load_with(Path::new("config"), None, Vec::new())?;
    settings.http.listen = "127.0.0.1:0".into();
    settings.engine.shards = shards;
    settings.engine.live_watermark = false;
    // Every session stays live, so memory per live session is measured over all of them.
    settings.engine.session_timeout_seconds = 90 * 24 * 3600;
    settings.engine.user_idle_seconds = 90 * 24 * 3600;
    settings.store.embedded_path = work_dir.join("state.redb");
    settings.model.path = model.to_owned();
    settings.logging.level = "warn".into();
    let _ = std::fs::remove_file(&settings.store.embedded_path);
    Ok(settings)
}

/// Ingests into a second engine whose store keeps nothing, so the live heap it adds is the
/// entities' state alone.
pub async fn measure_memory(settings: &Settings, events: Vec<Event>) -> Result<IngestResult> {
    let service = Service::start_with_store(settings, Arc::new(DiscardStore)).await?;
    let result = ingest(&service, events, 4096).await?;
    service.stop().await?;
    Ok(result)
}

/// Ingests `events` in batches of `batch`, two in flight, and measures until every shard applied
/// them and until they are durable.
pub async fn ingest(service: &Service, events: Vec<Event>, batch: usize) -> Result<IngestResult> {
    let count = events.len();
    let rss_before = resident_bytes();
    // The events themselves are moved into the engine and dropped there; count from here.
    let heap_before = heap_bytes() - events_heap_estimate(&events);
    let census_before = SizeCensus::now();
    let mut chunks = Vec::with_capacity(count / batch + 1);
    {
        // The input's own buffer must be gone before the heap is read again: the estimate above
        // took it out of the baseline already.
        let mut events = events.into_iter().peekable();
        while events.peek().is_some() {
            chunks.push(events.by_ref().take(batch).collect::<Vec<_>>());
        }
    }
    let started = Instant::now();
    // Two batches in flight keep every shard busy while the next one is split.
    let mut in_flight = std::collections::VecDeque::new();
    for chunk in chunks {
        let engine = service.engine.clone();
        in_flight.push_back(tokio::task::spawn_local(async move {
            engine.ingest(chunk).await
        }));
        if in_flight.len() >= 2 {
            in_flight.pop_front().expect("a task").await??;
        }
    }
    for task in in_flight {
        task.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    // Wait until the catalog has caught up and everything is durable, so later measurements do
    // not pay for this one's backlog.
    service.engine.flush(false).await?;
    let durable_seconds = started.elapsed().as_secs_f64();
    let stats = service.engine.stats().await?;
    Ok(IngestResult {
        events: count,
        seconds,
        durable_seconds,
        live_sessions: stats.live_sessions,
        users: stats.users_in_memory,
        rss_growth_bytes: resident_bytes() - rss_before,
        heap_growth_bytes: heap_bytes() - heap_before,
        by_size: SizeCensus::now().since(&census_before),
    })
}

/// Prints what an ingest run measured, and with `by_size` where its memory went.
fn print_run(result: &IngestResult, by_size: bool) {
    print_ingest(result);
    if by_size {
        result.by_size.print(result.live_sessions, 25);
    }
}

/// Prints what an ingest run measured.
pub fn print_ingest(result: &IngestResult) {
    println!(
        "ingest: {} events in {:.2} s = {:.0} events/s through the actor path ({:.2} s until caught up and durable in the store); {} live sessions, {} users; live heap grew {:.1} MiB = {:.0} bytes per live session (users and products included; RSS grew {:.1} MiB)",
        result.events,
        result.seconds,
        result.events as f64 / result.seconds,
        result.durable_seconds,
        result.live_sessions,
        result.users,
        result.heap_growth_bytes as f64 / 1048576.0,
        result.heap_growth_bytes as f64 / result.live_sessions.max(1) as f64,
        result.rss_growth_bytes as f64 / 1048576.0
    );
}

/// `propensity-load ingest`: reads or generates the events and ingests them into a service
/// started in-process.
pub async fn run(args: IngestArgs) -> Result<()> {
    let path = match &args.events {
        Some(path) => path.clone(),
        None => synthetic(&args.work_dir, args.users, args.days)?,
    };
    if args.heap_by_size {
        crate::memory::count_by_size();
    }
    let events = read_events(&path)?;
    // The engine does not score here, but the service needs a model to start.
    let model = args.work_dir.join("model.json");
    if !model.exists() {
        bail!(
            "no model at {}: run `propensity train --events {} --model-out {}` first",
            model.display(),
            path.display(),
            model.display()
        );
    }
    let mut settings = bench_settings(&args.work_dir, &model, args.shards)?;
    if let Some(minutes) = args.session_timeout_minutes {
        settings.engine.session_timeout_seconds = minutes * 60;
    }
    if let Some(node) = &args.scylla {
        settings = crate::bus::with_scylla(&settings, node);
        // Batches of a whole replay, not a shop's trickle: the serving timeouts are too short.
        settings.store.scylla.read_timeout_ms = 5_000;
        settings.store.scylla.write_timeout_ms = 30_000;
    }
    if args.discard_writes {
        let result = measure_memory(&settings, events).await?;
        print_run(&result, args.heap_by_size);
        return Ok(());
    }
    let service = Service::start(&settings).await?;
    let result = ingest(&service, events, args.batch).await;
    let metrics = service.metrics.clone();
    let stopped = service.stop().await;
    if args.scylla.is_some() {
        crate::bus::drop_keyspace(&settings);
    }
    let result = result?;
    stopped?;
    print_run(&result, args.heap_by_size);
    let flushes = &metrics.flush_latency;
    let count = flushes.get_sample_count();
    println!(
        "flushes: {count}, mean {:.1} ms ({} store, sessions end after {})",
        flushes.get_sample_sum() * 1000.0 / count.max(1) as f64,
        if args.scylla.is_some() {
            "scylla"
        } else {
            "embedded"
        },
        match args.session_timeout_minutes {
            Some(minutes) => format!("{minutes} minutes idle"),
            None => "never".to_owned(),
        }
    );
    Ok(())
}
