//! The benchmarks of `bench --rabbitmq`: the broker's own ceiling measured by RabbitMQ PerfTest
//! (load/perftest.sh), our end-to-end events/s draining a backlog through the service, and
//! freshness, the time from publishing a purchase to seeing it in the online store.
//!
//! Every exchange, queue and keyspace is named after this process (`propensity-bench-<pid>`), so
//! runs never touch anyone else's, and all of them are deleted afterwards.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use propensity::config::{BusKind, RabbitmqSettings, Settings, StoreKind};
use propensity::online::ingest::Publisher;
use propensity::online::serve::{Service, redact};
use propensity_actors::event::{Event, EventType};

/// Publishing connections: each carries the users with `user_id % PUBLISH_LANES` equal to its
/// index, so every user's events stay in order.
const PUBLISH_LANES: u64 = 8;
/// Events per confirmed publish.
const PUBLISH_BATCH: usize = 500;
/// How often freshness probes are published and the store is polled for them.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Probes' product and user ids: far above any the generator uses.
const PROBE_ID_BASE: u64 = 9_000_000_000_000;
/// A drain or a probe making no progress for this long fails the run.
const STALL_LIMIT: Duration = Duration::from_secs(60);

fn prefix() -> String {
    format!("propensity-bench-{}", std::process::id())
}

/// `base` with the RabbitMQ bus at `url` on an exchange and queues of this run's own.
pub fn private_settings(base: &Settings, url: &str) -> Settings {
    let mut settings = base.clone();
    let prefix = prefix();
    settings.bus.kind = BusKind::Rabbitmq;
    let rabbitmq = &mut settings.bus.rabbitmq;
    rabbitmq.url = url.to_owned();
    rabbitmq.connection_name = prefix.clone();
    rabbitmq.exchange = format!("{prefix}.events");
    rabbitmq.queue_prefix = format!("{prefix}.events");
    rabbitmq.dead_letter_exchange = format!("{prefix}.dead");
    rabbitmq.dead_letter_queue = format!("{prefix}.dead");
    settings
}

/// `settings` with the ScyllaDB/Cassandra store at `node`, in a keyspace of this run's own.
pub fn with_scylla(settings: &Settings, node: &str) -> Settings {
    let mut settings = settings.clone();
    settings.store.kind = StoreKind::Scylla;
    settings.store.scylla.nodes = vec![node.to_owned()];
    settings.store.scylla.keyspace = prefix().replace('-', "_");
    settings.store.scylla.apply_schema_on_start = true;
    settings
}

/// Fails with a clear message when the broker does not answer.
pub async fn check_broker(url: &str) -> Result<()> {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .with_context(|| {
            format!(
                "RabbitMQ is not reachable at {} (--rabbitmq): start the broker, or leave out --rabbitmq to bench without it",
                redact(url)
            )
        })?;
    let _ = connection.close(200, "bye".into()).await;
    Ok(())
}

/// What PerfTest measured: draining a backlog of persistent messages from quorum queues.
pub struct PerfTestResult {
    pub messages: usize,
    pub message_bytes: usize,
    pub queues: u16,
    pub publish_rate: f64,
    pub consume_rate: f64,
    pub command: String,
}

fn perftest_queue_pattern() -> String {
    format!("{}.perftest.%d", prefix())
}

fn perftest_exchange() -> String {
    format!("{}.perftest", prefix())
}

/// Runs load/perftest.sh twice, as our own run goes: publish a backlog of `messages` persistent
/// messages of `message_bytes` with confirms, then drain it with manual multi-acks, one consumer
/// per queue and our prefetch. Blocks.
pub fn perftest(
    settings: &RabbitmqSettings,
    messages: usize,
    message_bytes: usize,
) -> Result<PerfTestResult> {
    let queues = settings.partitions.max(1);
    let common = vec![
        "--uri".to_owned(),
        settings.url.clone(),
        "--quorum-queue".to_owned(),
        "--queue-pattern".to_owned(),
        perftest_queue_pattern(),
        "--queue-pattern-from".to_owned(),
        "1".to_owned(),
        "--queue-pattern-to".to_owned(),
        queues.to_string(),
        "--auto-delete".to_owned(),
        "false".to_owned(),
        "--exchange".to_owned(),
        perftest_exchange(),
    ];
    let mut publish = common.clone();
    publish.extend(
        [
            "--producers",
            &queues.to_string(),
            "--consumers",
            "0",
            "--pmessages",
            &(messages / usize::from(queues)).to_string(),
            "--flag",
            "persistent",
            "--confirm",
            &PUBLISH_BATCH.to_string(),
            "--size",
            &message_bytes.to_string(),
        ]
        .map(str::to_owned),
    );
    let mut consume = common;
    consume.extend(
        [
            "--producers",
            "0",
            "--consumers",
            &queues.to_string(),
            "--multi-ack-every",
            "100",
            "--qos",
            &settings.prefetch.to_string(),
            "--exit-when",
            "empty",
        ]
        .map(str::to_owned),
    );
    let publish_output = run_perftest(&publish)?;
    let consume_output = run_perftest(&consume)?;
    Ok(PerfTestResult {
        messages,
        message_bytes,
        queues,
        publish_rate: rate_in(&publish_output, "sending rate avg:")?,
        consume_rate: rate_in(&consume_output, "receiving rate avg:")?,
        command: format!(
            "load/perftest.sh {} ; load/perftest.sh {}",
            redact_arguments(&publish),
            redact_arguments(&consume)
        ),
    })
}

fn redact_arguments(arguments: &[String]) -> String {
    arguments
        .iter()
        .map(|argument| {
            if argument.starts_with("amqp") {
                redact(argument)
            } else {
                argument.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn run_perftest(arguments: &[String]) -> Result<String> {
    println!("perftest: load/perftest.sh {}", redact_arguments(arguments));
    let output = Command::new("load/perftest.sh")
        .args(arguments)
        .output()
        .context("failed to run load/perftest.sh (run the bench from the repository's root)")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "load/perftest.sh failed ({}): {}{}",
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}

/// The messages per second PerfTest printed after `label`, as in
/// `id: test-1, receiving rate avg: 5895 msg/s`.
fn rate_in(output: &str, label: &str) -> Result<f64> {
    output
        .lines()
        .find_map(|line| {
            let rest = &line[line.find(label)? + label.len()..];
            rest.split_whitespace().next()?.parse().ok()
        })
        .with_context(|| format!("PerfTest printed no \"{label}\": {output}"))
}

/// The average size of the events' JSON messages, in bytes.
pub fn average_message_bytes(events: &[Event]) -> usize {
    let total: usize = events.iter().map(|event| event.to_json().len()).sum();
    total / events.len().max(1)
}

/// Publishes `events` with confirms over [`PUBLISH_LANES`] connections on a thread of its own,
/// at `rate` events/s in all (as fast as confirms allow when `None`); then returns the events/s
/// achieved. When `probes` is given, one purchase of a new product is published every
/// [`PROBE_INTERVAL`] meanwhile and sent there with the moment its publish started.
fn publish_in_own_thread(
    settings: RabbitmqSettings,
    events: Vec<Event>,
    rate: Option<f64>,
    probes: Option<mpsc::Sender<(u64, Instant)>>,
) -> std::thread::JoinHandle<Result<f64>> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        runtime.block_on(publish(settings, events, rate, probes))
    })
}

async fn publish(
    settings: RabbitmqSettings,
    events: Vec<Event>,
    rate: Option<f64>,
    probes: Option<mpsc::Sender<(u64, Instant)>>,
) -> Result<f64> {
    let count = events.len();
    let first_time = events.first().map_or(0, |event| event.time);
    let last_time = events.last().map_or(0, |event| event.time);
    let mut lanes: Vec<Vec<Event>> = vec![Vec::new(); PUBLISH_LANES as usize];
    for event in events {
        lanes[(event.user_id % PUBLISH_LANES) as usize].push(event);
    }
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    let lane_rate = rate.map(|rate| rate / PUBLISH_LANES as f64);
    for lane in lanes {
        let publisher = connect(&settings).await?;
        tasks.spawn(async move {
            let mut sent = 0usize;
            for chunk in lane.chunks(PUBLISH_BATCH) {
                if let Some(lane_rate) = lane_rate {
                    let due = Duration::from_secs_f64(sent as f64 / lane_rate);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
                publisher.publish(chunk).await?;
                sent += chunk.len();
            }
            anyhow::Ok(())
        });
    }
    if let (Some(probes), Some(rate)) = (probes, rate) {
        let publisher = connect(&settings).await?;
        let seconds = count as f64 / rate;
        tasks.spawn(async move {
            let mut index = 0u64;
            while (index as f64) * PROBE_INTERVAL.as_secs_f64() < seconds {
                let due = PROBE_INTERVAL * index as u32;
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
                // Event time moves with the stream's, so the probe changes no session's fate.
                let progress = (due.as_secs_f64() / seconds).min(1.0);
                let time = first_time + ((last_time - first_time) as f64 * progress) as i64;
                let probe = Event {
                    time,
                    event_type: EventType::Purchase,
                    product_id: PROBE_ID_BASE + index,
                    category_id: 1,
                    category_code: None,
                    brand: None,
                    price: 1.0,
                    user_id: PROBE_ID_BASE + index,
                    user_session: format!("freshness-{index}"),
                    event_id: None,
                };
                let published_at = Instant::now();
                publisher.publish(std::slice::from_ref(&probe)).await?;
                // The receiver stops listening only once it gave up.
                let _ = probes.send((probe.product_id, published_at));
                index += 1;
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.context("a publishing task panicked")??;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

async fn connect(settings: &RabbitmqSettings) -> Result<Publisher> {
    Publisher::connect(settings)
        .await
        .with_context(|| format!("failed to connect to RabbitMQ at {}", redact(&settings.url)))
}

/// What the end-to-end run measured.
pub struct EndToEnd {
    pub events: usize,
    pub publish_rate: f64,
    /// From starting the service to every event acknowledged.
    pub seconds: f64,
}

/// Publishes `events` to the topology of `settings`, then starts the service on it and times
/// until every event has been applied, flushed to the store and acknowledged.
pub async fn end_to_end(settings: &Settings, events: Vec<Event>) -> Result<EndToEnd> {
    let count = events.len();
    println!(
        "bus: publishing {count} events to {}",
        settings.bus.rabbitmq.exchange
    );
    let publish_rate = publish_in_own_thread(settings.bus.rabbitmq.clone(), events, None, None)
        .join()
        .map_err(|_| anyhow::anyhow!("the publishing thread panicked"))??;
    println!("bus: published at {publish_rate:.0} events/s; draining through the service");
    let started = Instant::now();
    let service = Service::start(settings).await?;
    let mut last_progress = (0, Instant::now());
    loop {
        let acknowledged = service.metrics.bus_acks.get() as usize;
        if acknowledged >= count {
            break;
        }
        if acknowledged > last_progress.0 {
            last_progress = (acknowledged, Instant::now());
        } else if last_progress.1.elapsed() > STALL_LIMIT {
            bail!(
                "the service acknowledged {acknowledged} of {count} events and then nothing for {} s",
                STALL_LIMIT.as_secs()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    service.stop().await?;
    Ok(EndToEnd {
        events: count,
        publish_rate,
        seconds,
    })
}

/// What the freshness run measured, in milliseconds from the start of a probe's publish to the
/// first poll that found it in the store.
pub struct Freshness {
    pub probes: usize,
    pub publish_rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub store: &'static str,
    /// Polls of the store that failed (timed out) and were tried again.
    pub read_errors: usize,
}

/// Starts the service on `settings`, publishes `events` at `rate` events/s with a purchase probe
/// every 100 ms, and polls the service's store for each probe's product until it appears.
pub async fn freshness(settings: &Settings, events: Vec<Event>, rate: f64) -> Result<Freshness> {
    let service = Service::start(settings).await?;
    let waiting_since = Instant::now();
    while !service.ready.load(Ordering::Relaxed) {
        if waiting_since.elapsed() > STALL_LIMIT {
            bail!("the service's consumer did not connect to RabbitMQ");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    println!(
        "freshness: publishing {} events at {rate:.0} events/s with a purchase probe every {} ms",
        events.len(),
        PROBE_INTERVAL.as_millis()
    );
    let (probes, published) = mpsc::channel();
    let publishing = publish_in_own_thread(
        settings.bus.rabbitmq.clone(),
        events,
        Some(rate),
        Some(probes),
    );
    let mut outstanding: HashMap<u64, Instant> = HashMap::new();
    let mut latencies_ms = Vec::new();
    let mut last_progress = Instant::now();
    let mut read_errors = 0usize;
    let mut last_error = None;
    loop {
        let mut publishing_done = false;
        loop {
            match published.try_recv() {
                Ok((product_id, at)) => {
                    outstanding.insert(product_id, at);
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    publishing_done = true;
                    break;
                }
            }
        }
        if !outstanding.is_empty() {
            // A read that times out is tried again at the next poll: the stall limit catches a
            // store that never answers.
            let products = match service
                .store
                .load_catalog(outstanding.keys().copied().collect(), Vec::new())
                .await
            {
                Ok((products, _)) => products,
                Err(error) => {
                    read_errors += 1;
                    last_error = Some(error.to_string());
                    Vec::new()
                }
            };
            let seen_at = Instant::now();
            for product in products.into_iter().map(|stored| stored.state) {
                if product.counts.purchases > 0
                    && let Some(published_at) = outstanding.remove(&product.product_id)
                {
                    latencies_ms.push((seen_at - published_at).as_secs_f64() * 1000.0);
                    last_progress = seen_at;
                }
            }
        }
        if publishing_done && outstanding.is_empty() {
            break;
        }
        if !outstanding.is_empty() && last_progress.elapsed() > STALL_LIMIT {
            bail!(
                "{} freshness probes never reached the store ({} did; {read_errors} reads failed, the last with: {})",
                outstanding.len(),
                latencies_ms.len(),
                last_error.as_deref().unwrap_or("no error")
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let publish_rate = publishing
        .join()
        .map_err(|_| anyhow::anyhow!("the publishing thread panicked"))??;
    service.stop().await?;
    if latencies_ms.is_empty() {
        bail!("no freshness probe was published");
    }
    latencies_ms.sort_by(f64::total_cmp);
    Ok(Freshness {
        probes: latencies_ms.len(),
        publish_rate,
        p50_ms: percentile(&latencies_ms, 0.5),
        p99_ms: percentile(&latencies_ms, 0.99),
        max_ms: *latencies_ms.last().expect("a latency"),
        store: match settings.store.kind {
            StoreKind::Embedded => "embedded",
            StoreKind::Scylla => "scylla",
        },
        read_errors,
    })
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], quantile: f64) -> f64 {
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Deletes this run's queues and exchanges, PerfTest's included; reports what it could not.
pub async fn delete_topology(settings: &RabbitmqSettings) {
    let connection = match Connection::connect(&settings.url, ConnectionProperties::default()).await
    {
        Ok(connection) => connection,
        Err(error) => {
            eprintln!("could not connect to delete the bench's queues: {error}");
            return;
        }
    };
    let mut queues: Vec<String> = (0..settings.partitions)
        .map(|partition| settings.queue(partition))
        .collect();
    queues.push(settings.dead_letter_queue.clone());
    queues.extend(
        (1..=settings.partitions.max(1))
            .map(|index| perftest_queue_pattern().replace("%d", &index.to_string())),
    );
    let exchanges = [
        settings.exchange.clone(),
        settings.dead_letter_exchange.clone(),
        perftest_exchange(),
    ];
    // A failed deletion closes its channel, so each gets a channel of its own.
    for queue in &queues {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    for exchange in &exchanges {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
    let _ = connection.close(200, "bye".into()).await;
}

/// Drops this run's keyspace; a failure is reported, not fatal.
pub fn drop_keyspace(settings: &Settings) {
    if let Err(error) = propensity::online::store::schema::drop_keyspace(&settings.store.scylla) {
        eprintln!(
            "could not drop keyspace {}: {error:#}",
            settings.store.scylla.keyspace
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perftest_rates_are_read_from_its_summary() {
        let output = "test stopped (Consumer queue(s) empty [2])\n\
                      id: test-202320-987, sending rate avg: 0 msg/s\n\
                      id: test-202320-987, receiving rate avg: 5895 msg/s\n";
        assert_eq!(rate_in(output, "receiving rate avg:").unwrap(), 5895.0);
        assert_eq!(rate_in(output, "sending rate avg:").unwrap(), 0.0);
        assert!(rate_in("nothing", "receiving rate avg:").is_err());
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }
}
