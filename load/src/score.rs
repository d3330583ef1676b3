//! `propensity-load score`: load on `/v1/score`. The open loop sends on a fixed schedule and
//! measures latency from when each request was due (corrected for coordinated omission); the
//! closed loop finds the throughput. Both can run on a thread and runtime of their own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use propensity_actors::event::Event;

use crate::events::read_events;

/// Options of `score`.
#[derive(clap::Args, Clone)]
pub struct ScoreArgs {
    /// Base URL of the service.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Requests per second, sent on a fixed schedule whatever the answers' speed.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Seconds of load (bounded: at most 300).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Requests allowed in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// A REES46 CSV whose (user, session, product) triples are scored; default: synthetic ids.
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// What each request asks.
    #[arg(long, value_enum, default_value_t = Endpoint::Score)]
    pub endpoint: Endpoint,
    /// Pin the load generator's thread to this CPU (as `taskset` would), so that it and the
    /// service stop trading places on the same core.
    #[arg(long)]
    pub pin_cpu: Option<usize>,
    /// Count the answers by the model version they name.
    #[arg(skip)]
    pub track_versions: bool,
}

/// The request a load run sends.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/score`, one product, explanation off.
    Score,
    /// `POST /v1/score`, one product, explanation on.
    ScoreExplained,
    /// `POST /v1/score` ranking 50 products of the session, explanation off.
    Rank50,
    /// `GET /health`: the HTTP stack alone, the floor a score cannot beat.
    Health,
}

/// Products per ranking request of [`Endpoint::Rank50`].
const RANKED: usize = 50;

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Health => "/health",
            _ => "/v1/score",
        }
    }

    /// The request for the `index`-th target.
    fn request(
        self,
        client: &reqwest::Client,
        url: &str,
        targets: &[(u64, String, u64)],
        index: usize,
    ) -> reqwest::RequestBuilder {
        let (user_id, user_session, product_id) = &targets[index % targets.len()];
        let body = match self {
            Endpoint::Health => return client.get(url),
            Endpoint::Score => {
                serde_json::json!({"user_id": user_id, "user_session": user_session, "product_id": product_id, "explain": false})
            }
            Endpoint::ScoreExplained => {
                serde_json::json!({"user_id": user_id, "user_session": user_session, "product_id": product_id, "explain": true})
            }
            Endpoint::Rank50 => {
                let product_ids: Vec<u64> = (0..RANKED)
                    .map(|offset| targets[(index + offset) % targets.len()].2)
                    .collect();
                serde_json::json!({"user_id": user_id, "user_session": user_session, "product_ids": product_ids, "explain": false})
            }
        };
        client.post(url).json(&body)
    }

    /// How reports name it.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Score => "/v1/score",
            Endpoint::ScoreExplained => "/v1/score with explanation",
            Endpoint::Rank50 => "/v1/score ranking 50 products",
            Endpoint::Health => "GET /health",
        }
    }
}

/// What a scoring run measured, in microseconds: from the scheduled time (corrected for
/// coordinated omission) and, for comparison, from the moment the request was sent.
pub struct ScoreResult {
    pub sent_p50: u64,
    pub sent_p99: u64,
    pub rate: u64,
    pub sent: u64,
    pub errors: u64,
    pub achieved_rate: f64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    /// Answers by the model version they name (with `track_versions`).
    pub versions: std::collections::BTreeMap<String, u64>,
    histogram: Histogram<u64>,
    service_histogram: Histogram<u64>,
    seconds: f64,
}

impl ScoreResult {
    fn new(
        rate: u64,
        sent: u64,
        errors: u64,
        seconds: f64,
        histogram: Histogram<u64>,
        service_histogram: Histogram<u64>,
        versions: std::collections::BTreeMap<String, u64>,
    ) -> Self {
        ScoreResult {
            sent_p50: service_histogram.value_at_quantile(0.5),
            sent_p99: service_histogram.value_at_quantile(0.99),
            rate,
            sent,
            errors,
            achieved_rate: sent as f64 / seconds,
            p50: histogram.value_at_quantile(0.5),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
            versions,
            histogram,
            service_histogram,
            seconds,
        }
    }

    /// The two runs as one (slices of one measure, taken in turns with another).
    pub fn merge(mut self, other: ScoreResult) -> ScoreResult {
        self.histogram
            .add(&other.histogram)
            .expect("histograms of the same bounds");
        self.service_histogram
            .add(&other.service_histogram)
            .expect("histograms of the same bounds");
        for (version, count) in other.versions {
            *self.versions.entry(version).or_default() += count;
        }
        ScoreResult::new(
            self.rate,
            self.sent + other.sent,
            self.errors + other.errors,
            self.seconds + other.seconds,
            self.histogram,
            self.service_histogram,
            self.versions,
        )
    }
}

/// Open-loop load on `/v1/score` at `args.rate` requests/s for `args.seconds`, over `targets`.
pub async fn score_load(
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
    let url = format!("{}{}", args.url.trim_end_matches('/'), args.endpoint.path());
    let endpoint = args.endpoint;
    let runtime = tokio::runtime::Handle::current();
    let (recorded, service_recorded, failed) =
        (histogram.clone(), service_histogram.clone(), errors.clone());
    let versions = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let (seen, track_versions) = (versions.clone(), args.track_versions);
    // The schedule runs on a thread of its own that sleeps until each request is due: a loop
    // that polled the clock instead would burn a core the service needs, and the timer of the
    // async runtime ticks in whole milliseconds.
    let schedule = tokio::task::spawn_blocking(move || {
        // Sleeps end up to the thread's timer slack late (50 µs by default): 1 µs here, so that
        // lateness is not counted against the service.
        if let Err(error) = nix::sys::prctl::set_timerslack(1_000) {
            eprintln!("warning: the schedule may run up to 50 µs late: {error}");
        }
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(total as usize);
        for index in 0..total {
            // Latency counts from when the request was due, not from when it could be sent: a
            // slow server delays the sender too, and that wait is the user's (coordinated
            // omission).
            let due = started + interval * index as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let request = endpoint.request(&client, &url, &targets, index as usize);
            let (semaphore, histogram, service_histogram, errors, versions) = (
                semaphore.clone(),
                recorded.clone(),
                service_recorded.clone(),
                failed.clone(),
                seen.clone(),
            );
            tasks.push(runtime.spawn(async move {
                let Ok(_permit) = semaphore.acquire_owned().await else {
                    return;
                };
                let sent = Instant::now();
                let ok = match request.send().await {
                    Ok(response) if response.status().is_success() => {
                        match response.bytes().await {
                            Ok(body) if track_versions => {
                                let version = serde_json::from_slice::<serde_json::Value>(&body)
                                    .ok()
                                    .and_then(|body| {
                                        body["model_version"].as_str().map(str::to_owned)
                                    })
                                    .unwrap_or_default();
                                *versions
                                    .lock()
                                    .expect("version lock")
                                    .entry(version)
                                    .or_default() += 1;
                                true
                            }
                            Ok(_) => true,
                            Err(_) => false,
                        }
                    }
                    _ => false,
                };
                if !ok {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let micros = due.elapsed().as_micros() as u64;
                histogram
                    .lock()
                    .expect("histogram lock")
                    .saturating_record(micros.max(1));
                let service_micros = sent.elapsed().as_micros() as u64;
                service_histogram
                    .lock()
                    .expect("histogram lock")
                    .saturating_record(service_micros.max(1));
            }));
        }
        (started, tasks)
    });
    let (started, tasks) = schedule.await?;
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let histogram = histogram.lock().expect("histogram lock").clone();
    let service_histogram = service_histogram.lock().expect("histogram lock").clone();
    let versions = versions.lock().expect("version lock").clone();
    Ok(ScoreResult::new(
        args.rate,
        total,
        errors.load(std::sync::atomic::Ordering::Relaxed),
        elapsed,
        histogram,
        service_histogram,
        versions,
    ))
}

/// Runs a load generator on a thread and runtime of its own, so it does not share the
/// service's actor thread.
async fn in_own_thread<T, F>(
    pin_cpu: Option<usize>,
    load: impl FnOnce() -> F + Send + 'static,
) -> Result<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T>>,
{
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        // Both of the load's threads (this one schedules, the worker sends) go on the CPU.
        let pinned = match pin_cpu {
            Some(cpu) => pin_to(cpu),
            None => Ok(()),
        };
        let result = pinned
            .and_then(|()| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .on_thread_start(move || {
                        if let Some(cpu) = pin_cpu {
                            let _ = pin_to(cpu);
                        }
                    })
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
            })
            .and_then(|runtime| runtime.block_on(load()));
        let _ = sender.send(result);
    });
    receiver.await.context("the load thread died")?
}

/// [`score_load`] on a thread of its own.
pub async fn score_in_own_thread(
    args: ScoreArgs,
    targets: Arc<Vec<(u64, String, u64)>>,
) -> Result<ScoreResult> {
    in_own_thread(args.pin_cpu, move || async move {
        score_load(&args, targets).await
    })
    .await
}

/// Pins the calling thread to one CPU, as `taskset -c CPU` does for a process.
fn pin_to(cpu: usize) -> Result<()> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let Some(core) = cores.iter().find(|core| core.id == cpu) else {
        bail!(
            "--pin-cpu {cpu}: this process may run on CPUs {:?}",
            cores.iter().map(|core| core.id).collect::<Vec<_>>()
        );
    };
    if !core_affinity::set_for_current(*core) {
        bail!("could not pin the load generator to CPU {cpu}");
    }
    Ok(())
}

/// The (user, session, product) triples to score: every seventh scoring point of `events`.
pub fn targets_from(events: &[Event]) -> Vec<(u64, String, u64)> {
    events
        .iter()
        .filter(|event| event.event_type.is_scoring_point())
        .step_by(7)
        .map(|event| (event.user_id, event.user_session.clone(), event.product_id))
        .collect()
}

/// Prints what a load run measured.
pub fn print_score(endpoint: Endpoint, result: &ScoreResult) {
    println!(
        "{} at {}/s: sent {} ({} errors) at {:.0}/s achieved; latency p50 {} us, p99 {} us, p99.9 {} us, max {} us",
        endpoint.label(),
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

/// `propensity-load score`: open-loop load on a running service, then the latencies.
pub async fn run(args: ScoreArgs) -> Result<()> {
    let targets = match &args.events {
        Some(path) => targets_from(&read_events(path)?),
        None => (0..1000)
            .map(|index| (index, format!("session-{index}"), 1000 + index % 50))
            .collect(),
    };
    let result = score_load(&args, Arc::new(targets)).await?;
    print_score(args.endpoint, &result);
    Ok(())
}
