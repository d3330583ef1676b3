//! Crash safety: `propensity serve` is killed with SIGKILL at random points of a replay through
//! RabbitMQ, at least five times, and restarted each time, with the real 30-minute session
//! timeout. The final state in the store must equal the offline replay's, and so must the
//! sessions' ends: every session is counted once as ended or still open in the index, nothing
//! lost, nothing counted twice.

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use propensity::config::Settings;
use propensity::online::store::EmbeddedStore;
use propensity_actors::event::Millis;
use propensity_actors::store::StateStore;
use rand::{Rng, SeedableRng};

use common::broker;

/// The service's default session timeout: sessions end all through the replay.
const TIMEOUT: Millis = 30 * 60 * 1000;
const KILLS: usize = 6;

/// Starts `propensity serve` as a child process with the test's settings.
fn spawn_service(settings: &Settings, port: u16, log: &Path) -> Child {
    let rabbitmq = &settings.bus.rabbitmq;
    let vars = [
        ("HTTP__LISTEN", format!("127.0.0.1:{port}")),
        ("MODEL__PATH", settings.model.path.display().to_string()),
        (
            "STORE__EMBEDDED_PATH",
            settings.store.embedded_path.display().to_string(),
        ),
        (
            "ENGINE__SESSION_TIMEOUT_SECONDS",
            settings.engine.session_timeout_seconds.to_string(),
        ),
        ("ENGINE__SHARDS", "2".into()),
        ("BUS__KIND", "rabbitmq".into()),
        ("BUS__RABBITMQ__URL", rabbitmq.url.clone()),
        ("BUS__RABBITMQ__EXCHANGE", rabbitmq.exchange.clone()),
        ("BUS__RABBITMQ__QUEUE_PREFIX", rabbitmq.queue_prefix.clone()),
        (
            "BUS__RABBITMQ__DEAD_LETTER_EXCHANGE",
            rabbitmq.dead_letter_exchange.clone(),
        ),
        (
            "BUS__RABBITMQ__DEAD_LETTER_QUEUE",
            rabbitmq.dead_letter_queue.clone(),
        ),
        ("BUS__RABBITMQ__ACK_INTERVAL_MS", "50".into()),
        ("BUS__RABBITMQ__PREFETCH", "500".into()),
        ("BUS__RABBITMQ__BATCH_SIZE", "200".into()),
    ];
    common::spawn_serve(&common::root().join("config"), "test", &vars, log)
}

#[actix_rt::test]
async fn sigkill_at_random_points_loses_nothing_and_counts_nothing_twice() {
    let connection = broker::connect().await;
    let dir = tempfile::tempdir().unwrap();
    let model = common::small_model(dir.path(), TIMEOUT);
    let (_, events) = common::synthetic_events(dir.path(), 3300, 7, 13);
    let mut settings = common::settings(dir.path(), &model);
    assert_eq!(settings.engine.session_timeout_seconds, 1800, "the default");
    broker::use_private_topology(&mut settings, "crash");
    let rabbitmq = settings.bus.rabbitmq.clone();
    broker::publish(&rabbitmq, &events).await;
    let total = events.len() as u64;
    assert_eq!(broker::ready_messages(&connection, &rabbitmq).await, total);

    let log = dir.path().join("serve.log");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut kills = 0;
    let started = Instant::now();
    while kills < KILLS {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the kill rounds took too long"
        );
        let before = broker::ready_messages(&connection, &rabbitmq).await;
        let mut child = spawn_service(&settings, common::free_port(), &log);
        // Let it consume for a random while, but no more than a share of the replay that
        // leaves room for every kill however fast it consumes, then kill it wherever it is.
        let lifetime = Duration::from_millis(rng.gen_range(700..2200));
        let share = total / (KILLS as u64 + 2);
        let born = Instant::now();
        let mut ready = before;
        while born.elapsed() < lifetime && before.saturating_sub(ready) < share {
            actix::clock::sleep(Duration::from_millis(20)).await;
            ready = broker::ready_messages(&connection, &rabbitmq).await;
        }
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        assert!(
            ready > 0,
            "the replay ended before kill {}; use more events",
            kills + 1
        );
        if ready < before {
            kills += 1;
        }
    }

    // A last, uninterrupted run finishes the replay and shuts down cleanly.
    let port = common::free_port();
    let mut child = spawn_service(&settings, port, &log);
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let ready = broker::ready_messages(&connection, &rabbitmq).await;
        let unacked = common::metric(&client, port, "propensity_bus_unacked_messages").await;
        let connected = common::metric(&client, port, "propensity_bus_connected").await;
        if ready == 0 && unacked == Some(0.0) && connected == Some(1.0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the final run did not finish: {ready} ready, {unacked:?} unacknowledged; log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        actix::clock::sleep(Duration::from_millis(100)).await;
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "serve exits cleanly on SIGTERM: {exit}");
    assert_eq!(
        broker::ready_messages(&connection, &rabbitmq).await,
        0,
        "every message acknowledged"
    );
    assert!(
        broker::dead_letters(&connection, &rabbitmq)
            .await
            .is_empty(),
        "no message dead-lettered (the delivery limit is above the number of kills)"
    );

    let (offline, _) = common::offline_every_session(&events, TIMEOUT);
    let store = EmbeddedStore::open(&settings.store.embedded_path).unwrap();
    common::assert_stored_matches(store.dump().unwrap(), &offline);
    let ended = common::stored_outcomes_with_open_ended(&store, rabbitmq.partitions, &events).await;
    let expected = common::offline_tallies(&events, TIMEOUT);
    let counted: u64 = store
        .load_tallies(i64::MIN, i64::MAX)
        .await
        .unwrap()
        .iter()
        .map(|(_, tally)| tally.sessions.iter().sum::<u64>())
        .sum();
    assert!(
        counted > 1000,
        "sessions ended all through the replay and its crashes: {counted}"
    );
    common::assert_same_tallies(&ended, &expected, "after six SIGKILLs");
    broker::delete_topology(&connection, &rabbitmq).await;
}
