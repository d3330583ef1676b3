//! `propensity-load`: measures the service. `ingest` drives events through the embedded actor
//! path as fast as it takes them and reports events/s and memory per live session; `score` puts
//! open-loop load on `/v1/score` at a fixed rate and reports latency percentiles corrected for
//! coordinated omission; `bench` runs both on fresh synthetic data and writes a Markdown report.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use propensity::config::Settings;
use propensity::serve::Service;
use propensity_actors::event::{CsvEvents, Event};

/// Load generation and benchmarks for propensity.
#[derive(Parser)]
#[command(name = "propensity-load", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

mod replay;

#[derive(Subcommand)]
enum Command {
    /// Send a REES46 CSV or a synthetic stream to RabbitMQ (with confirms) or to POST /v1/events,
    /// at full speed, a fixed rate (--rate) or in accelerated event time (--speed).
    Replay(replay::ReplayArgs),
    /// Push a synthetic stream through the embedded actor path at full speed.
    Ingest(IngestArgs),
    /// Open-loop load on /v1/score of a running service at a fixed rate.
    Score(ScoreArgs),
    /// Generate data, train, start the service in-process, run ingest and score at several rates,
    /// and write a Markdown report.
    Bench {
        /// Where the report goes.
        #[arg(long, default_value = "docs/benchmarks.md")]
        report: PathBuf,
        /// Shoppers in the synthetic stream (about 7 events per user per day).
        #[arg(long, default_value_t = 20_000)]
        users: u64,
        /// Days in the synthetic stream.
        #[arg(long, default_value_t = 7)]
        days: u32,
        /// Seconds per scoring rate.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Working directory for data, model and state.
        #[arg(long, default_value = "var/bench")]
        work_dir: PathBuf,
    },
}

#[derive(clap::Args, Clone)]
struct IngestArgs {
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
    #[arg(long, default_value = "var/bench")]
    work_dir: PathBuf,
}

#[derive(clap::Args, Clone)]
struct ScoreArgs {
    /// Base URL of the service.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Requests per second, sent on a fixed schedule whatever the answers' speed.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds of load (bounded: at most 300).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Requests allowed in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// A REES46 CSV whose (user, session, product) triples are scored; default: synthetic ids.
    #[arg(long)]
    events: Option<PathBuf>,
}

/// What an ingest run measured.
struct IngestResult {
    events: usize,
    /// Until every shard applied its events.
    seconds: f64,
    /// Until the catalog applied them too and every entity was flushed to the store.
    durable_seconds: f64,
    live_sessions: usize,
    users: usize,
    rss_growth_bytes: i64,
    /// Live heap after the run minus before, the events given excluded.
    heap_growth_bytes: i64,
}

/// Heap held by the events themselves (vector slots and their strings).
fn events_heap_estimate(events: &[Event]) -> i64 {
    let strings: usize = events
        .iter()
        .map(|event| {
            event.user_session.capacity()
                + event.category_code.as_ref().map_or(0, String::capacity)
                + event.brand.as_ref().map_or(0, String::capacity)
                + event.event_id.as_ref().map_or(0, String::capacity)
        })
        .sum();
    (std::mem::size_of_val(events) + strings) as i64
}

/// What a scoring run measured, in microseconds: from the scheduled time (corrected for
/// coordinated omission) and, for comparison, from the moment the request was sent.
struct ScoreResult {
    sent_p50: u64,
    sent_p99: u64,
    rate: u64,
    sent: u64,
    errors: u64,
    achieved_rate: f64,
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

/// A store that accepts every write and holds nothing: isolates the engine's own memory from the
/// embedded store's page cache when memory per session is measured.
struct DiscardStore;

impl propensity_actors::store::StateStore for DiscardStore {
    fn save(
        &self,
        _: propensity_actors::store::StateBatch,
    ) -> propensity_actors::store::StoreFuture<()> {
        Box::pin(async { Ok(()) })
    }

    fn load_user_side(
        &self,
        _: Vec<u64>,
        _: Vec<propensity_actors::engine::SessionKey>,
    ) -> propensity_actors::store::StoreFuture<(
        Vec<propensity_actors::features::UserState>,
        Vec<propensity_actors::features::SessionState>,
    )> {
        Box::pin(async { Ok((Vec::new(), Vec::new())) })
    }

    fn load_catalog(
        &self,
        _: Vec<u64>,
        _: Vec<u64>,
    ) -> propensity_actors::store::StoreFuture<(
        Vec<propensity_actors::features::ProductState>,
        Vec<propensity_actors::features::CategoryState>,
    )> {
        Box::pin(async { Ok((Vec::new(), Vec::new())) })
    }
}

/// Counts live heap bytes, so memory per session is measured as what the state holds, not as
/// resident pages the allocator kept after a burst.
struct CountingAllocator;

static LIVE_HEAP_BYTES: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

// The only unsafe code of the workspace: a global allocator must implement an unsafe trait. It
// forwards every call to the system allocator unchanged and only adds up sizes.
#[allow(unsafe_code)]
unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE_HEAP_BYTES.fetch_add(layout.size() as i64, std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: std::alloc::Layout) {
        LIVE_HEAP_BYTES.fetch_sub(layout.size() as i64, std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.dealloc(pointer, layout) }
    }

    unsafe fn realloc(
        &self,
        pointer: *mut u8,
        layout: std::alloc::Layout,
        new_size: usize,
    ) -> *mut u8 {
        LIVE_HEAP_BYTES.fetch_add(
            new_size as i64 - layout.size() as i64,
            std::sync::atomic::Ordering::Relaxed,
        );
        unsafe { std::alloc::System.realloc(pointer, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn heap_bytes() -> i64 {
    LIVE_HEAP_BYTES.load(std::sync::atomic::Ordering::Relaxed)
}

fn resident_bytes() -> i64 {
    // Second field of /proc/self/statm: resident pages.
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|text| {
            text.split_whitespace()
                .nth(1)
                .and_then(|pages| pages.parse::<i64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn read_events(path: &Path) -> Result<Vec<Event>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("failed to open {}", path.display()))?;
    CsvEvents::new(std::io::BufReader::new(file))
        .map(|event| event.map_err(anyhow::Error::from))
        .collect()
}

fn synthetic(work_dir: &Path, users: u64, days: u32) -> Result<PathBuf> {
    std::fs::create_dir_all(work_dir)?;
    let path = work_dir.join(format!("events-{users}x{days}.csv"));
    if !path.exists() {
        propensity::generate::generate_files(users, days, 1, &path, None::<&Path>, true)?;
    }
    Ok(path)
}

fn bench_settings(work_dir: &Path, model: &Path, shards: usize) -> Result<Settings> {
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
async fn measure_memory(settings: &Settings, events: Vec<Event>) -> Result<IngestResult> {
    let service = Service::start_with_store(settings, Arc::new(DiscardStore)).await?;
    let result = ingest(&service, events, 4096).await?;
    service.stop().await?;
    Ok(result)
}

async fn ingest(service: &Service, events: Vec<Event>, batch: usize) -> Result<IngestResult> {
    let count = events.len();
    let rss_before = resident_bytes();
    // The events themselves are moved into the engine and dropped there; count from here.
    let heap_before = heap_bytes() - events_heap_estimate(&events);
    let mut chunks = Vec::with_capacity(count / batch + 1);
    let mut events = events.into_iter().peekable();
    while events.peek().is_some() {
        chunks.push(events.by_ref().take(batch).collect::<Vec<_>>());
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
    })
}

async fn score_load(
    args: &ScoreArgs,
    targets: Arc<Vec<(u64, String, u64)>>,
) -> Result<ScoreResult> {
    if args.seconds > 300 {
        bail!("--seconds is bounded at 300");
    }
    if args.rate == 0 {
        bail!("--rate must be positive");
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let total = args.rate * args.seconds;
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let semaphore = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let histogram = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let service_histogram = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let url = format!("{}/v1/score", args.url.trim_end_matches('/'));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for index in 0..total {
        // Latency counts from when the request was due, not from when it could be sent: a slow
        // server delays the sender too, and that wait is the user's (coordinated omission).
        let due = started + interval * index as u32;
        // Tokio's timer ticks in milliseconds; sleep to just before the due time, then yield until
        // it, so the schedule itself adds no millisecond of latency.
        if let Some(wait) = due
            .checked_duration_since(Instant::now())
            .and_then(|wait| wait.checked_sub(Duration::from_millis(1)))
        {
            tokio::time::sleep(wait).await;
        }
        while Instant::now() < due {
            tokio::task::yield_now().await;
        }
        let permit = semaphore.clone().acquire_owned().await?;
        let (user_id, user_session, product_id) = targets[index as usize % targets.len()].clone();
        let (client, url, histogram, service_histogram, errors) = (
            client.clone(),
            url.clone(),
            histogram.clone(),
            service_histogram.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let body = serde_json::json!({"user_id": user_id, "user_session": user_session, "product_id": product_id, "explain": false});
            let sent = Instant::now();
            let ok = match client.post(&url).json(&body).send().await {
                Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
                Err(_) => false,
            };
            if !ok {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let micros = due.elapsed().as_micros() as u64;
            histogram.lock().expect("histogram lock").saturating_record(micros.max(1));
            let service_micros = sent.elapsed().as_micros() as u64;
            service_histogram.lock().expect("histogram lock").saturating_record(service_micros.max(1));
            drop(permit);
        }));
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let histogram = histogram.lock().expect("histogram lock");
    let service_histogram = service_histogram.lock().expect("histogram lock");
    Ok(ScoreResult {
        sent_p50: service_histogram.value_at_quantile(0.5),
        sent_p99: service_histogram.value_at_quantile(0.99),
        rate: args.rate,
        sent: total,
        errors: errors.load(std::sync::atomic::Ordering::Relaxed),
        achieved_rate: total as f64 / elapsed,
        p50: histogram.value_at_quantile(0.5),
        p99: histogram.value_at_quantile(0.99),
        p999: histogram.value_at_quantile(0.999),
        max: histogram.max(),
    })
}

/// Runs the load generator on its own thread and runtime, so it does not share the service's
/// actor thread.
async fn score_in_own_thread(
    args: ScoreArgs,
    targets: Arc<Vec<(u64, String, u64)>>,
) -> Result<ScoreResult> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(score_load(&args, targets)));
        let _ = sender.send(result);
    });
    receiver.await.context("the load thread died")?
}

fn targets_from(events: &[Event]) -> Vec<(u64, String, u64)> {
    events
        .iter()
        .filter(|event| event.event_type.is_scoring_point())
        .step_by(7)
        .map(|event| (event.user_id, event.user_session.clone(), event.product_id))
        .collect()
}

fn print_ingest(result: &IngestResult) {
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

fn print_score(result: &ScoreResult) {
    println!(
        "score at {}/s: sent {} ({} errors) at {:.0}/s achieved; latency p50 {} us, p99 {} us, p99.9 {} us, max {} us",
        result.rate,
        result.sent,
        result.errors,
        result.achieved_rate,
        result.p50,
        result.p99,
        result.p999,
        result.max
    );
}

async fn run_bench(
    report: &Path,
    users: u64,
    days: u32,
    seconds: u64,
    work_dir: &Path,
) -> Result<()> {
    let events_path = synthetic(work_dir, users, days)?;
    let model = work_dir.join("model.json");
    println!("training on {}", events_path.display());
    let request = propensity::train::TrainRequest {
        events: vec![events_path.clone()],
        model_out: model.clone(),
        split_at: None,
        export_features: None,
        report_dir: None,
        truth: None,
        session_timeout: 30 * 60 * 1000,
        options: propensity::model::TrainOptions::default(),
        show_progress: true,
    };
    let (train_report, _) = propensity::train::run(&request)?;
    let events = read_events(&events_path)?;
    let targets = Arc::new(targets_from(&events));
    let settings = bench_settings(work_dir, &model, 0)?;
    let service = Service::start(&settings).await?;
    let memory_events = events.clone();
    let ingest_result = ingest(&service, events, 4096).await?;
    print_ingest(&ingest_result);
    let memory_result = measure_memory(&settings, memory_events).await?;
    println!("state memory (store discarding writes):");
    print_ingest(&memory_result);
    // One unmeasured second warms connections and caches.
    let warm_up = ScoreArgs {
        url: service.url(),
        rate: 1000,
        seconds: 1,
        concurrency: 256,
        events: None,
    };
    score_in_own_thread(warm_up, targets.clone()).await?;
    let mut score_results = Vec::new();
    for rate in [1_000, 10_000, 20_000] {
        let args = ScoreArgs {
            url: service.url(),
            rate,
            seconds,
            concurrency: 256,
            events: None,
        };
        let result = score_in_own_thread(args, targets.clone()).await?;
        print_score(&result);
        score_results.push(result);
    }
    service.stop().await?;

    let mut text = String::new();
    text.push_str("# Benchmarks\n\n");
    text.push_str(&format!(
        "Measured by `cargo run --release -p propensity-load -- bench` on {} ({} cores), {}.\n\
         Load generator and service share the machine: both numbers include that contention.\n\n",
        std::env::consts::ARCH,
        std::thread::available_parallelism().map_or(1, |cores| cores.get()),
        chrono_like_now()
    ));
    text.push_str("| measure | result | goal |\n|---|---|---|\n");
    text.push_str(&format!(
        "| training: feature generation (parse + replay + rows) | {:.0} events/s over {} events | 1M events/s |\n",
        train_report.feature_events_per_second, train_report.events
    ));
    text.push_str(&format!(
        "| training: fit time | {:.1} s for {} rows | none |\n",
        train_report.fit_seconds, train_report.fit_rows
    ));
    text.push_str(&format!(
        "| embedded events/s through the full actor path | {:.0} events/s ({} events, batches of 4096); {:.0} events/s until the catalog caught up and all state was flushed to the embedded store | ≥ 500k events/s |\n",
        ingest_result.events as f64 / ingest_result.seconds,
        ingest_result.events,
        ingest_result.events as f64 / ingest_result.durable_seconds
    ));
    text.push_str(&format!(
        "| memory per live session (live heap growth / live sessions, with {} users and all products) | {:.0} bytes at {} sessions | ≤ 2 KB |\n",
        memory_result.users,
        memory_result.heap_growth_bytes as f64 / memory_result.live_sessions.max(1) as f64,
        memory_result.live_sessions
    ));
    for result in &score_results {
        text.push_str(&format!(
            "| /v1/score at {}/s (achieved {:.0}/s, {} errors), latency from schedule | p50 {} µs, p99 {} µs, p99.9 {} µs (from send: p50 {} µs, p99 {} µs) | p99 ≤ 1 ms at 10k/s |\n",
            result.rate, result.achieved_rate, result.errors, result.p50, result.p99, result.p999, result.sent_p50, result.sent_p99
        ));
    }
    text.push_str(&format!(
        "\nModel on this data: validation ROC-AUC {:.4}, average precision {:.4}.\n",
        train_report.validation.roc_auc, train_report.validation.average_precision
    ));
    if let Some(parent) = report.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(report, text)
        .with_context(|| format!("failed to write {}", report.display()))?;
    println!("wrote {}", report.display());
    Ok(())
}

fn chrono_like_now() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    propensity_actors::event::format_time(seconds as i64 * 1000)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Replay(args) => actix_rt::System::new().block_on(async move {
            let path = match &args.events {
                Some(path) => path.clone(),
                None => synthetic(&args.work_dir, args.users, args.days)?,
            };
            let events = read_events(&path)?;
            let result = replay::replay(&args, events).await?;
            println!(
                "replayed {} events in {:.1} s ({:.0} events/s, every one confirmed)",
                result.events,
                result.seconds,
                result.events as f64 / result.seconds.max(1e-9)
            );
            Ok(())
        }),
        Command::Ingest(args) => actix_rt::System::new().block_on(async move {
            let path = match &args.events {
                Some(path) => path.clone(),
                None => synthetic(&args.work_dir, args.users, args.days)?,
            };
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
            let settings = bench_settings(&args.work_dir, &model, args.shards)?;
            if args.discard_writes {
                let result = measure_memory(&settings, events).await?;
                print_ingest(&result);
                return Ok(());
            }
            let service = Service::start(&settings).await?;
            let result = ingest(&service, events, args.batch).await?;
            print_ingest(&result);
            service.stop().await
        }),
        Command::Score(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let targets = match &args.events {
                    Some(path) => targets_from(&read_events(path)?),
                    None => (0..1000)
                        .map(|index| (index, format!("session-{index}"), 1000 + index % 50))
                        .collect(),
                };
                let result = score_load(&args, Arc::new(targets)).await?;
                print_score(&result);
                Ok(())
            })
        }
        Command::Bench {
            report,
            users,
            days,
            seconds,
            work_dir,
        } => actix_rt::System::new()
            .block_on(async move { run_bench(&report, users, days, seconds, &work_dir).await }),
    }
}
