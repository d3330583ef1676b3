//! A broker restart in the middle of a replay: the consumer reconnects with backoff, /ready
//! reports the outage, and the final state equals the offline replay's, with the service's real
//! 30-minute session timeout: every session's end is counted once in the stored tallies, as the
//! offline replay counts it, and the process's counters equal the tallies. Its own test binary,
//! because it stops the broker that the other bus tests use.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use propensity::online::serve::Service;
use propensity::online::store::EmbeddedStore;
use propensity_actors::event::Millis;

use common::broker;

/// The service's default session timeout: sessions end all through the replay, before and
/// after the restart.
const TIMEOUT: Millis = 30 * 60 * 1000;

#[actix_rt::test]
async fn a_broker_restart_mid_replay_loses_nothing() {
    let connection = broker::connect().await;
    let dir = tempfile::tempdir().unwrap();
    let model = common::small_model(dir.path(), TIMEOUT);
    let (_, events) = common::synthetic_events(dir.path(), 1500, 7, 12);
    let mut settings = common::settings(dir.path(), &model);
    settings.engine.session_timeout_seconds = (TIMEOUT / 1000) as u64;
    settings.engine.shards = 2;
    broker::use_private_topology(&mut settings, "broker-restart");
    let rabbitmq = settings.bus.rabbitmq.clone();
    broker::publish(&rabbitmq, &events).await;
    drop(connection);

    let service = Service::start(&settings).await.expect("the service starts");
    let started = Instant::now();
    while service.metrics.bus_acks.get() < events.len() as u64 / 4 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "consumption did not start"
        );
        actix::clock::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        service.metrics.bus_acks.get() < events.len() as u64,
        "the restart falls mid-replay"
    );
    broker::rabbitmqctl(&["stop_app"]);
    let started = Instant::now();
    while service.ready.load(Ordering::Relaxed) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "/ready stays ready without a broker"
        );
        actix::clock::sleep(Duration::from_millis(20)).await;
    }
    actix::clock::sleep(Duration::from_secs(1)).await;
    broker::rabbitmqctl(&["start_app"]);

    // Messages applied but not acknowledged before the restart come again; they count once.
    let connection = broker::connect().await;
    broker::wait_until_consumed(
        &connection,
        &rabbitmq,
        &service.metrics,
        Duration::from_secs(120),
    )
    .await;
    assert!(service.ready.load(Ordering::Relaxed), "/ready is back");
    assert!(
        service.metrics.bus_redeliveries.get() > 0,
        "the restart caused redeliveries"
    );
    let metrics = service.metrics.clone();
    service.stop().await.unwrap();
    assert_eq!(
        broker::ready_messages(&connection, &rabbitmq).await,
        0,
        "every message acknowledged"
    );
    let (offline, _) = common::offline_every_session(&events, TIMEOUT);
    let store = EmbeddedStore::open(Path::new(&settings.store.embedded_path)).unwrap();
    common::assert_stored_matches(store.dump().unwrap(), &offline);
    // Every session's end: counted in the tallies, or still open in the index at the stop; one
    // process lifetime, whose counters counted what the tallies hold.
    let counted_all = common::assert_ends_counted_once(
        &store,
        &metrics,
        rabbitmq.partitions,
        &events,
        TIMEOUT,
        "after a broker restart",
    )
    .await;
    assert!(
        counted_all > 100,
        "sessions ended all through the replay: {counted_all}"
    );
    broker::delete_topology(&connection, &rabbitmq).await;
}
