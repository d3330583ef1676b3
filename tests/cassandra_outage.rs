//! The online store goes away for 30 seconds in the middle of a RabbitMQ replay: Cassandra is
//! stopped with docker/native/services.sh and started again. Meanwhile the service must stop
//! taking deliveries (no more than the prefetch window of each partition unacknowledged), keep
//! its memory bounded, report not ready, and keep scoring from memory; once the store is back,
//! it must acknowledge every message and leave exactly the offline features in Cassandra, and
//! every session's end counted once as the offline replay counts it (the real 30-minute session
//! timeout), with nothing redelivered or dead-lettered on the way.
//!
//! Needs RabbitMQ and Cassandra as the README's test command starts them, and fails with the
//! command to run when either is missing. This file holds one test: it stops the node every
//! test of this binary would use.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use propensity::online::serve::Service;
use propensity_actors::SessionKey;
use propensity_actors::event::Millis;

use common::broker;

/// The service's default session timeout: sessions end all through the replay, the outage
/// included.
const TIMEOUT: Millis = 30 * 60 * 1000;
const OUTAGE: Duration = Duration::from_secs(30);

fn services(action: &str) {
    let script = common::root().join("docker/native/services.sh");
    let status = Command::new(&script)
        .args([action, "cassandra"])
        .status()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", script.display()));
    assert!(status.success(), "services.sh {action} cassandra: {status}");
}

/// Stops Cassandra; starts it again when dropped, so a failing test leaves the node running for
/// the tests after it.
struct Outage {
    over: bool,
}

impl Outage {
    /// Stops the node on a blocking thread: the consumer runs on the test's thread and must go
    /// on meanwhile.
    async fn begin() -> Outage {
        tokio::task::spawn_blocking(|| services("down"))
            .await
            .unwrap();
        Outage { over: false }
    }

    async fn end(&mut self) {
        tokio::task::spawn_blocking(|| services("up"))
            .await
            .unwrap();
        self.over = true;
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if !self.over {
            services("up");
        }
    }
}

/// This process's resident memory.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|value| value.parse().ok())
        .expect("a number of kB");
    kib * 1024
}

#[actix_rt::test]
async fn a_30_second_store_outage_mid_replay_loses_nothing_and_keeps_memory_bounded() {
    let connection = broker::connect().await;
    let keyspace = common::TestKeyspace::new();
    let dir = tempfile::tempdir().unwrap();
    let model = common::small_model(dir.path(), TIMEOUT);
    let (_, events) = common::synthetic_events(dir.path(), 3000, 7, 23);
    assert!(events.len() >= 80_000, "only {} events", events.len());
    let (offline, _) = common::offline_every_session(&events, TIMEOUT);

    let mut settings =
        common::bus_on_cassandra(dir.path(), &model, &keyspace, TIMEOUT, "store-outage");
    // Failing requests give up quickly, as they would in production.
    settings.store.scylla.read_timeout_ms = 500;
    settings.store.scylla.write_timeout_ms = 1_000;
    let rabbitmq = settings.bus.rabbitmq.clone();
    let window = i64::from(rabbitmq.partitions) * i64::from(rabbitmq.prefetch);

    let service = Service::start(&settings)
        .await
        .expect("the service starts on RabbitMQ and Cassandra");
    let url = service.url();
    let client = reqwest::Client::new();
    // Live traffic: the web tier keeps publishing through the outage, at a rate that spreads
    // the replay over about a minute.
    let publishing = broker::publish_paced(&rabbitmq, &events, 1000, Duration::from_millis(400));

    // Mid-replay: a tenth of the events acknowledged.
    let started = Instant::now();
    while service.metrics.bus_acks.get() < events.len() as u64 / 10 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the replay does not progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A session the engine holds in memory, to score during the outage: the latest applied
    // whose session and user are active.
    let in_memory = events
        .iter()
        .rev()
        .find(|event| service.engine.holds_in_memory(SessionKey::of(event)))
        .expect("a recently applied session in memory")
        .clone();
    let mut outage = Outage::begin().await;
    let outage_started = Instant::now();
    // A flush that completed as the node went down may still be acknowledged: count from a
    // moment later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let resident_at_start = resident_bytes();
    let acked_at_start = service.metrics.bus_acks.get();

    let mut deliveries_after_5s = None;
    let mut most_unacked = 0;
    let mut most_resident = resident_at_start;
    let mut not_ready_seen = false;
    let mut scores = 0;
    while outage_started.elapsed() < OUTAGE {
        tokio::time::sleep(Duration::from_millis(500)).await;
        most_unacked = most_unacked.max(service.metrics.bus_unacked.get());
        most_resident = most_resident.max(resident_bytes());
        if outage_started.elapsed() >= Duration::from_secs(5) && deliveries_after_5s.is_none() {
            deliveries_after_5s = Some(service.metrics.bus_deliveries.get());
        }
        let ready = client.get(format!("{url}/ready")).send().await.unwrap();
        not_ready_seen |= ready.status() == 503;
        let score = client
            .post(format!("{url}/v1/score"))
            .json(&serde_json::json!({
                "user_id": in_memory.user_id,
                "user_session": in_memory.user_session,
                "product_id": in_memory.product_id,
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(score.status(), 200, "scoring answers during the outage");
        let body: serde_json::Value = score.json().await.unwrap();
        assert!(body["propensity"].is_f64(), "{body}");
        scores += 1;
    }
    let deliveries_at_end = service.metrics.bus_deliveries.get();
    let acked_at_end = service.metrics.bus_acks.get();
    let backlog = broker::ready_messages(&connection, &rabbitmq).await;
    println!(
        "outage: {acked_at_start} acknowledged before, {acked_at_end} after; at most {most_unacked} unacknowledged (window {window}); {backlog} waiting in the broker; resident memory {} MiB at the start, at most {} MiB; {scores} scores answered",
        resident_at_start >> 20,
        most_resident >> 20
    );
    assert_eq!(
        acked_at_end, acked_at_start,
        "nothing acknowledged without the store"
    );
    assert!(
        most_unacked <= window,
        "{most_unacked} unacknowledged deliveries exceed the prefetch window of {window}"
    );
    assert_eq!(
        Some(deliveries_at_end),
        deliveries_after_5s,
        "deliveries stop while the store is away"
    );
    assert!(backlog > 0, "the rest of the replay waits in the broker");
    assert!(
        most_resident < resident_at_start + (256 << 20),
        "resident memory grew from {} MiB to {} MiB during the outage",
        resident_at_start >> 20,
        most_resident >> 20
    );
    assert!(not_ready_seen, "/ready reports the outage");

    outage.end().await;
    publishing.await.expect("every event published");
    broker::wait_for_acks(&service, events.len() as u64, Duration::from_secs(600)).await;
    let ready = client.get(format!("{url}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "ready again once the store answers");
    assert_eq!(service.metrics.bus_redeliveries.get(), 0);
    assert!(
        broker::dead_letters(&connection, &rabbitmq)
            .await
            .is_empty()
    );
    let metrics = service.metrics.clone();
    service.stop().await.unwrap();

    // Read back with the test keyspace's patient timeouts: the check, not the service, reads.
    let mut store_settings = settings.store.clone();
    store_settings.scylla = keyspace.settings.clone();
    let store = propensity::online::store::open(&store_settings)
        .await
        .expect("the keyspace opens again");
    common::assert_store_holds(store.as_ref(), &offline).await;
    // Every session's end once, the outage notwithstanding.
    let counted = common::assert_ends_counted_once(
        store.as_ref(),
        &metrics,
        rabbitmq.partitions,
        &events,
        TIMEOUT,
        "after a store outage",
    )
    .await;
    assert!(
        counted > 1000,
        "sessions ended all through the replay: {counted}"
    );
    broker::delete_topology(&connection, &rabbitmq).await;
}
