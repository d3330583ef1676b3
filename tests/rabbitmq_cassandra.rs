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
use propensity_actors::features::Outcome;

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
    let ended =
        common::stored_outcomes_with_open_ended(store.as_ref(), rabbitmq.partitions, &events).await;
    common::assert_same_tallies(
        &ended,
        &common::offline_tallies(&events, TIMEOUT),
        "after the replay",
    );
    let stored = store.load_tallies(i64::MIN, i64::MAX).await.unwrap();
    let mut counted_all = 0;
    for outcome in Outcome::ALL {
        let counted = metrics
            .sessions_closed
            .with_label_values(&[outcome.as_str()])
            .get();
        let tallied: u64 = stored
            .iter()
            .map(|(_, tally)| tally.sessions_with(outcome))
            .sum();
        assert_eq!(
            counted,
            tallied,
            "{} sessions counted and tallied",
            outcome.as_str()
        );
        counted_all += counted;
    }
    assert!(
        counted_all > 1000,
        "sessions ended all through the replay: {counted_all}"
    );
    broker::delete_topology(&connection, &rabbitmq).await;
}
