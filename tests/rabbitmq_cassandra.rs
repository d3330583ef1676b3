//! The production path end to end: over 200,000 events published to a real RabbitMQ, consumed
//! by the service with acknowledgements after durable flushes into a real Cassandra, must leave
//! in Cassandra exactly the features of the offline replay, read back by a store opened afresh,
//! with the service's real 30-minute session timeout: every session's end is counted once in the
//! stored tallies, as the offline replay counts it, and the counters equal the tallies.
//!
//! Fails with the command to run when the broker or the CQL node is not reachable.

mod common;

use std::time::Duration;

use propensity::online::serve::Service;
use propensity_actors::event::Millis;

use common::broker;

/// The service's default session timeout: sessions end all through the replay.
const TIMEOUT: Millis = 30 * 60 * 1000;

#[actix_rt::test]
async fn a_200k_replay_through_rabbitmq_into_cassandra_stores_the_offline_features() {
    let connection = broker::connect().await;
    let keyspace = common::TestKeyspace::new();
    let dir = tempfile::tempdir().unwrap();
    let model = common::small_model(dir.path(), TIMEOUT);
    let (_, events) = common::synthetic_events(dir.path(), 6600, 7, 17);
    assert!(events.len() >= 200_000, "only {} events", events.len());
    let (offline, _) = common::offline_every_session(&events, TIMEOUT);

    let settings = common::bus_on_cassandra(dir.path(), &model, &keyspace, TIMEOUT, "cassandra");
    let rabbitmq = settings.bus.rabbitmq.clone();

    let service = Service::start(&settings)
        .await
        .expect("the service starts on RabbitMQ and Cassandra");
    broker::publish(&rabbitmq, &events).await;
    broker::wait_for_acks(&service, events.len() as u64, Duration::from_secs(600)).await;
    assert_eq!(service.metrics.bus_redeliveries.get(), 0);
    assert_eq!(broker::ready_messages(&connection, &rabbitmq).await, 0);
    let metrics = service.metrics.clone();
    service.stop().await.unwrap();

    // Everything acknowledged is in Cassandra, as a new store reads it.
    let store = propensity::online::store::open(&settings.store)
        .await
        .expect("the keyspace opens again");
    common::assert_store_holds(store.as_ref(), &offline).await;
    // Every session's end: counted in the tallies, or still open in the index at the stop.
    let counted_all = common::assert_ends_counted_once(
        store.as_ref(),
        &metrics,
        rabbitmq.partitions,
        &events,
        TIMEOUT,
        "after the replay",
    )
    .await;
    assert!(
        counted_all > 1000,
        "sessions ended all through the replay: {counted_all}"
    );
    broker::delete_topology(&connection, &rabbitmq).await;
}
