//! Scale-out: two `propensity serve` processes share four partition queues and one Cassandra
//! keyspace. Each consumes its own partitions (the broker's consumer list shows who is active
//! where) while the web tier publishes; then one is killed with SIGKILL, and the other's standby
//! subscriptions take over its partitions, rehydrate its users from Cassandra and finish the
//! replay. Every user, session, product and category stored must then equal the offline replay's:
//! nothing lost, nothing counted twice across the handover. Products and categories are stored
//! as one part per partition, each written by the partition's consumer only; their sums are
//! compared. A third instance started at the end, consuming nothing, must serve the busiest
//! products' counts from the other instances' parts in the store.
//!
//! Needs RabbitMQ and Cassandra as the README's test command starts them; fails with the command
//! to run when either is missing.

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use propensity::config::{RabbitmqSettings, Settings};
use propensity_actors::event::Millis;

use common::broker;

/// The service's default session timeout: sessions end all through the replay, on both
/// instances and after the takeover.
const TIMEOUT: Millis = 30 * 60 * 1000;

/// A config overlay `scaleout.toml` in `dir` for both instances; returns the config dir.
fn write_overlay(dir: &Path, settings: &Settings) -> std::path::PathBuf {
    let rabbitmq = &settings.bus.rabbitmq;
    let scylla = &settings.store.scylla;
    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    let overlay = format!(
        r#"[engine]
flush_interval_ms = 100
live_watermark = false
session_timeout_seconds = {timeout}
shards = 2

[model]
path = "{model}"

[logging]
level = "warn"

[store]
kind = "scylla"

[store.scylla]
nodes = ["{node}"]
keyspace = "{keyspace}"
read_timeout_ms = 5000
write_timeout_ms = 10000

[bus]
kind = "rabbitmq"

[bus.rabbitmq]
url = "{url}"
exchange = "{exchange}"
queue_prefix = "{queue_prefix}"
dead_letter_exchange = "{dead_letter_exchange}"
dead_letter_queue = "{dead_letter_queue}"
ack_interval_ms = 50
prefetch = 500
batch_size = 200
instance_count = 2
standby_delay_ms = 1000
"#,
        timeout = TIMEOUT / 1000,
        model = settings.model.path.display(),
        node = common::CASSANDRA_NODE,
        keyspace = scylla.keyspace,
        url = rabbitmq.url,
        exchange = rabbitmq.exchange,
        queue_prefix = rabbitmq.queue_prefix,
        dead_letter_exchange = rabbitmq.dead_letter_exchange,
        dead_letter_queue = rabbitmq.dead_letter_queue,
    );
    std::fs::write(config_dir.join("scaleout.toml"), overlay).unwrap();
    config_dir
}

fn spawn_instance(config_dir: &Path, index: u16, port: u16, log: &Path) -> Child {
    let vars = [
        ("HTTP__LISTEN", format!("127.0.0.1:{port}")),
        ("BUS__RABBITMQ__INSTANCE_INDEX", index.to_string()),
    ];
    common::spawn_serve(config_dir, "scaleout", &vars, log)
}

/// The consumer tag an instance uses on a partition.
fn tag(rabbitmq: &RabbitmqSettings, index: u16, partition: u16) -> String {
    format!("{}-{index}-p{partition}", rabbitmq.connection_name)
}

/// Prints the instances' warnings and errors if the test fails: a failure around a takeover is
/// rare, and the log says what the store and the bus did at the time.
struct LogOnFailure(std::path::PathBuf);

impl Drop for LogOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let text = std::fs::read_to_string(&self.0).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|line| line.contains("WARN") || line.contains("ERROR"))
            .collect();
        eprintln!(
            "the instances' warnings and errors ({} lines, the last 200):",
            lines.len()
        );
        for line in &lines[lines.len().saturating_sub(200)..] {
            eprintln!("{line}");
        }
    }
}

async fn is_ready(client: &reqwest::Client, port: u16) -> bool {
    client
        .get(format!("http://127.0.0.1:{port}/ready"))
        .send()
        .await
        .is_ok_and(|response| response.status() == 200)
}

#[actix_rt::test]
async fn two_instances_split_the_partitions_and_one_takes_over_when_the_other_dies() {
    let connection = broker::connect().await;
    let keyspace = common::TestKeyspace::new();
    let dir = tempfile::tempdir().unwrap();
    let model = common::small_model(dir.path(), TIMEOUT);
    let (_, events) = common::synthetic_events(dir.path(), 3000, 7, 29);
    let (offline, _) = common::offline_every_session(&events, TIMEOUT);
    let settings = common::bus_on_cassandra(dir.path(), &model, &keyspace, TIMEOUT, "scale-out");
    let rabbitmq = settings.bus.rabbitmq.clone();
    assert_eq!(rabbitmq.partitions, 4);
    // The schema, once, before two instances start on it.
    drop(
        propensity::online::store::open(&settings.store)
            .await
            .expect("the keyspace is created"),
    );
    let config_dir = write_overlay(dir.path(), &settings);
    let log = dir.path().join("serve.log");
    let _log_on_failure = LogOnFailure(log.clone());
    let client = reqwest::Client::new();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    let (port_a, port_b) = (common::free_port(), common::free_port());
    let mut survivor = spawn_instance(&config_dir, 0, port_a, &log);
    let mut victim = spawn_instance(&config_dir, 1, port_b, &log);
    let started = Instant::now();
    while !(is_ready(&client, port_a).await && is_ready(&client, port_b).await) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the instances are not ready; log: {}",
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The web tier publishes over about half a minute.
    let publishing = broker::publish_paced(&rabbitmq, &events, 1000, Duration::from_millis(300));

    // Both consume, each its own partitions.
    let split: std::collections::BTreeMap<u16, String> = (0..4)
        .map(|partition| (partition, tag(&rabbitmq, partition % 2, partition)))
        .collect();
    let started = Instant::now();
    loop {
        let acked_a = common::metric(&client, port_a, "propensity_bus_acks_total").await;
        let acked_b = common::metric(&client, port_b, "propensity_bus_acks_total").await;
        let both = acked_a.unwrap_or(0.0) > 0.0 && acked_b.unwrap_or(0.0) > 0.0;
        if both && broker::active_consumers(&rabbitmq) == split {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the partitions are not split: active consumers {:?}, acknowledged {acked_a:?} and {acked_b:?}; log: {}",
            broker::active_consumers(&rabbitmq),
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A third of the replay in, the second instance dies.
    let started = Instant::now();
    loop {
        let acked_a = common::metric(&client, port_a, "propensity_bus_acks_total").await;
        let acked_b = common::metric(&client, port_b, "propensity_bus_acks_total").await;
        if acked_a.unwrap_or(0.0) + acked_b.unwrap_or(0.0) >= events.len() as f64 / 3.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the replay does not progress; log: {}",
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    victim.kill().expect("SIGKILL");
    victim.wait().unwrap();
    let killed = Instant::now();
    let everything: std::collections::BTreeMap<u16, String> = (0..4)
        .map(|partition| (partition, tag(&rabbitmq, 0, partition)))
        .collect();
    loop {
        if broker::active_consumers(&rabbitmq) == everything {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "no takeover: active consumers {:?}; log: {}",
            broker::active_consumers(&rabbitmq),
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let takeover = killed.elapsed();

    // The survivor finishes the replay.
    publishing.await.expect("every event published");
    let started = Instant::now();
    loop {
        let ready = broker::ready_messages(&connection, &rabbitmq).await;
        let unacked = common::metric(&client, port_a, "propensity_bus_unacked_messages").await;
        if ready == 0 && unacked == Some(0.0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the survivor did not finish: {ready} ready, {unacked:?} unacknowledged; log: {}",
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An instance that consumes nothing (the survivor holds every partition) answers for the
    // busiest products from the parts in the store, as the survivor does from memory.
    let port_c = common::free_port();
    let mut late = spawn_instance(&config_dir, 1, port_c, &log);
    let started = Instant::now();
    while !is_ready(&client, port_c).await {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the late instance is not ready; log: {}",
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut busiest: Vec<_> = offline.catalog.products.values().collect();
    busiest.sort_by_key(|product| std::cmp::Reverse(product.counts.events));
    for product in busiest.iter().take(5) {
        let want = serde_json::to_value(product.counts).unwrap();
        for (port, who) in [(port_a, "the survivor"), (port_c, "the late instance")] {
            let answer: serde_json::Value = client
                .get(format!(
                    "http://127.0.0.1:{port}/v1/products/{}",
                    product.product_id
                ))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(
                answer["counts"], want,
                "product {} from {who}: {answer}",
                product.product_id
            );
        }
    }
    assert_eq!(
        common::metric(&client, port_c, "propensity_bus_acks_total").await,
        Some(0.0),
        "the late instance consumed nothing"
    );
    late.kill().expect("SIGKILL");
    late.wait().unwrap();

    let redeliveries = common::metric(&client, port_a, "propensity_bus_redeliveries_total").await;
    println!(
        "takeover of the dead instance's partitions after {} ms; the survivor saw {redeliveries:?} redeliveries",
        takeover.as_millis()
    );
    let status = Command::new("kill")
        .args(["-TERM", &survivor.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = survivor.wait().unwrap();
    assert!(exit.success(), "serve exits cleanly on SIGTERM: {exit}");
    assert!(
        broker::dead_letters(&connection, &rabbitmq)
            .await
            .is_empty(),
        "nothing dead-lettered"
    );

    // The read behind each conditional write of the index stops at the partition's claim
    // marker: it never steps over the tombstones of ended sessions (Cassandra warns from 1,000).
    let stepped_over: Vec<String> = log_text()
        .lines()
        .filter(|line| line.contains("tombstone") && line.contains("SELECT epoch"))
        .map(str::to_owned)
        .collect();
    assert!(
        stepped_over.is_empty(),
        "the fence's reads stepped over tombstones: {stepped_over:?}"
    );
    let store = propensity::online::store::open(&settings.store)
        .await
        .expect("the keyspace opens again");
    common::assert_store_holds(store.as_ref(), &offline).await;
    // Every session's end is in the store once: counted as ended by whichever instance owned
    // its partition when its time came, or still open in the index.
    let ended = common::stored_outcomes_with_open_ended(store.as_ref(), 4, &events).await;
    common::assert_same_tallies(
        &ended,
        &common::offline_tallies(&events, TIMEOUT),
        "after a takeover",
    );
    broker::delete_topology(&connection, &rabbitmq).await;
}
