//! A broker restart in the middle of a replay: the consumer reconnects with backoff, /ready
//! reports the outage, and the final state equals the offline replay's. Its own test binary,
//! because it stops the broker that the other bus tests use.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use propensity::online::serve::Service;
use propensity::online::store::EmbeddedStore;
use propensity_actors::event::Millis;

use common::broker;

const LONG_TIMEOUT: Millis = 40 * 24 * 3600 * 1000;

#[actix_rt::test]
async fn a_broker_restart_mid_replay_loses_nothing() {
    let connection = broker::connect().await;
    let dir = tempfile::tempdir().unwrap();
    let model = common::small_model(dir.path(), LONG_TIMEOUT);
    let (_, events) = common::synthetic_events(dir.path(), 1500, 7, 12);
    let mut settings = common::settings(dir.path(), &model);
    settings.engine.session_timeout_seconds = (LONG_TIMEOUT / 1000) as u64;
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
    let offline = propensity::offline::train::replay(
        events.iter().cloned(),
        LONG_TIMEOUT,
        &ProgressBar::hidden(),
    )
    .2;
    common::assert_engine_matches(&service.engine, &offline).await;
    service.stop().await.unwrap();
    assert_eq!(
        broker::ready_messages(&connection, &rabbitmq).await,
        0,
        "every message acknowledged"
    );
    let store = EmbeddedStore::open(Path::new(&settings.store.embedded_path)).unwrap();
    common::assert_stored_matches(store.dump().unwrap(), &offline);
    broker::delete_topology(&connection, &rabbitmq).await;
}
