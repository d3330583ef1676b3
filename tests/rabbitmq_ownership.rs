//! Ownership: only the instance that consumes a user's partition runs the user's actors and
//! writes its state. Another instance on the same Cassandra keyspace, consuming nothing, answers
//! reads and scores for those users from read-only copies no older than
//! `engine.foreign_state_max_age_ms`, writes nothing back, and ends and counts no session, even
//! in live mode with its wall clock years past every session's deadline. The store then holds
//! exactly the offline replay's state and outcomes.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use propensity::online::serve::Service;
use propensity_actors::event::{Event, Millis};
use propensity_actors::features::Outcome;

use common::broker;

/// The service's default session timeout.
const TIMEOUT: Millis = 30 * 60 * 1000;
/// How old the reader's copies may be.
const MAX_AGE: Duration = Duration::from_millis(300);

async fn get(client: &reqwest::Client, url: String) -> (u16, serde_json::Value) {
    let response = client.get(url).send().await.expect("the service answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

/// The latest event of each of up to `count` users of `events`, spread over them.
fn sample(events: &[Event], count: usize) -> Vec<Event> {
    let mut latest: BTreeMap<u64, &Event> = BTreeMap::new();
    for event in events {
        latest.insert(event.user_id, event);
    }
    let step = (latest.len() / count).max(1);
    latest
        .values()
        .step_by(step)
        .map(|event| (*event).clone())
        .collect()
}

#[actix_rt::test]
async fn a_non_owner_answers_from_fresh_copies_and_writes_nothing() {
    let connection = broker::connect().await;
    let keyspace = common::TestKeyspace::new();
    let dir = tempfile::tempdir().unwrap();
    let model = common::small_model(dir.path(), TIMEOUT);
    let (_, events) = common::synthetic_events(dir.path(), 600, 3, 17);
    let owner_settings = common::bus_on_cassandra(dir.path(), &model, &keyspace, TIMEOUT, "owner");
    let rabbitmq = owner_settings.bus.rabbitmq.clone();
    // The reader consumes a topology nobody publishes to: it owns no user. It runs in live
    // mode: an instance that ran the users it reads would end their sessions and count them.
    let reader_dir = tempfile::tempdir().unwrap();
    let mut reader_settings =
        common::bus_on_cassandra(reader_dir.path(), &model, &keyspace, TIMEOUT, "reader");
    reader_settings.engine.live_watermark = true;
    reader_settings.engine.foreign_state_max_age_ms = MAX_AGE.as_millis() as u64;
    let owner = Service::start(&owner_settings)
        .await
        .expect("the owner starts");
    let reader = Service::start(&reader_settings)
        .await
        .expect("the reader starts");
    let store = propensity::online::store::open(&owner_settings.store)
        .await
        .expect("the keyspace opens");
    let client = reqwest::Client::new();

    let parts: Vec<&[Event]> = events.chunks(events.len() / 4 + 1).collect();
    let mut published = 0;
    let mut compared = 0;
    for (round, part) in parts.iter().enumerate() {
        // Users of this part, and some of the previous one: the reader holds copies of them
        // from before the part is applied.
        let mut probes = sample(part, 15);
        if round > 0 {
            probes.extend(sample(parts[round - 1], 15));
        }
        for probe in &probes {
            get(
                &client,
                format!("{}/v1/users/{}", reader.url(), probe.user_id),
            )
            .await;
        }
        broker::publish(&rabbitmq, part).await;
        published += part.len() as u64;
        // Acknowledged only once durable: the store holds the part.
        broker::wait_for_acks(&owner, published, Duration::from_secs(120)).await;
        // What the store holds now is what the reader answers once its copies are too old.
        actix::clock::sleep(MAX_AGE + Duration::from_millis(100)).await;
        for probe in &probes {
            let user = format!("/v1/users/{}", probe.user_id);
            let session = format!("/v1/sessions/{}/{}", probe.user_id, probe.user_session);
            for path in [user, session] {
                let (owner_status, owner_view) =
                    get(&client, format!("{}{path}", owner.url())).await;
                let (status, view) = get(&client, format!("{}{path}", reader.url())).await;
                assert_eq!(owner_status, 200, "{path}: {owner_view}");
                assert_eq!(
                    (status, &view),
                    (owner_status, &owner_view),
                    "the reader's {path} after {MAX_AGE:?}, in round {round}"
                );
                compared += 1;
            }
            // Scores answer from the copies too.
            let response: serde_json::Value = client
                .post(format!("{}/v1/score", reader.url()))
                .json(&serde_json::json!({"user_id": probe.user_id, "user_session": probe.user_session, "product_id": probe.product_id}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert!(response["propensity"].is_f64(), "{response}");
        }
    }
    assert!(compared > 100, "{compared} reads compared");

    // The reader ran no actor, wrote nothing, and ended and counted no session.
    let stats = reader.engine.stats().await.unwrap();
    assert_eq!(
        (stats.users_in_memory, stats.live_sessions),
        (0, 0),
        "the reader runs no user or session"
    );
    assert_eq!(
        reader.metrics.flush_rows.get(),
        0,
        "the reader wrote nothing"
    );
    for outcome in Outcome::ALL {
        assert_eq!(
            reader
                .metrics
                .sessions_closed
                .with_label_values(&[outcome.as_str()])
                .get(),
            0,
            "the reader counted no {} session",
            outcome.as_str()
        );
    }
    reader.stop().await.unwrap();
    owner.stop().await.unwrap();

    // The store holds the owner's state and outcomes: the offline replay's.
    let (offline, _) = common::offline_every_session(&events, TIMEOUT);
    common::assert_store_holds(store.as_ref(), &offline).await;
    let ended =
        common::stored_outcomes_with_open_ended(store.as_ref(), rabbitmq.partitions, &events).await;
    common::assert_same_tallies(
        &ended,
        &common::offline_tallies(&events, TIMEOUT),
        "with a reader on the side",
    );
    broker::delete_topology(&connection, &rabbitmq).await;
    broker::delete_topology(&connection, &reader_settings.bus.rabbitmq).await;
}
