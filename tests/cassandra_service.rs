//! End to end on Cassandra (`store.kind = "scylla"`): a synthetic clickstream through the HTTP
//! collector and the actors must give exactly the offline replay's state and propensities, and a
//! new service on the same keyspace must rehydrate every session, user and product from
//! Cassandra and score exactly as the first did. Sessions end with the real 30-minute timeout,
//! before and after the restart: the stored outcome tallies equal the offline replay's, and the
//! two lifetimes' counters add up to them.
//!
//! Fails, saying how to start it, when Cassandra is not reachable on 127.0.0.1:9042.

mod common;

use std::collections::BTreeMap;

use indicatif::ProgressBar;
use propensity::config::StoreKind;
use propensity::online::serve::Service;
use propensity_actors::SessionKey;
use propensity_actors::event::{Event, Millis};
use propensity_actors::features::Outcome;
use propensity_actors::outcomes::HOUR;

/// The service's default session timeout: sessions end all through the replay.
const TIMEOUT: Millis = 30 * 60 * 1000;

/// Scores every (session, product) scoring point over HTTP, one request per session.
async fn score_everything(
    client: &reqwest::Client,
    url: &str,
    events: &[Event],
) -> BTreeMap<(u64, String, u64), f64> {
    let mut products_by_session: BTreeMap<(u64, String), Vec<u64>> = BTreeMap::new();
    for event in events
        .iter()
        .filter(|event| event.event_type.is_scoring_point())
    {
        let products = products_by_session
            .entry((event.user_id, event.user_session.clone()))
            .or_default();
        if !products.contains(&event.product_id) {
            products.push(event.product_id);
        }
    }
    let mut scores = BTreeMap::new();
    for ((user_id, user_session), product_ids) in products_by_session {
        let response: serde_json::Value = client
            .post(format!("{url}/v1/score"))
            .json(&serde_json::json!({"user_id": user_id, "user_session": user_session, "product_ids": product_ids, "explain": false}))
            .send()
            .await
            .expect("the service answers")
            .json()
            .await
            .expect("a JSON body");
        let items = response["scores"]
            .as_array()
            .unwrap_or_else(|| panic!("no scores: {response}"));
        assert_eq!(items.len(), product_ids.len(), "{response}");
        for item in items {
            scores.insert(
                (
                    user_id,
                    user_session.clone(),
                    item["product_id"].as_u64().unwrap(),
                ),
                item["propensity"].as_f64().unwrap(),
            );
        }
    }
    scores
}

#[actix_rt::test]
async fn the_service_on_cassandra_equals_the_offline_replay_and_survives_a_restart() {
    let keyspace = common::TestKeyspace::new();
    let dir = tempfile::tempdir().unwrap();
    let (events_path, events) = common::synthetic_events(dir.path(), 600, 3, 13);
    assert!(events.len() > 10_000, "only {} events", events.len());
    let (model_path, model) = common::train_model(dir.path(), &events_path, TIMEOUT);
    let (_, _, mut offline) =
        propensity::offline::train::replay(events.iter().cloned(), TIMEOUT, &ProgressBar::hidden());

    let mut settings = common::settings(dir.path(), &model_path);
    settings.store.kind = StoreKind::Scylla;
    settings.store.scylla = keyspace.settings.clone();
    assert_eq!(settings.engine.session_timeout_seconds, 1800, "the default");
    settings.engine.shards = 2;
    let counted = |metrics: &propensity::metrics::Metrics, outcome: Outcome| {
        metrics
            .sessions_closed
            .with_label_values(&[outcome.as_str()])
            .get()
    };
    let client = reqwest::Client::new();

    // The first service: events in, state and scores checked against the offline replay.
    let before = {
        let service = Service::start(&settings)
            .await
            .expect("the service starts on Cassandra");
        let url = service.url();
        for chunk in events.chunks(1000) {
            common::post_events(&client, &url, chunk).await;
        }
        // Both end exactly the sessions idle for longer than the timeout at the last event.
        service.engine.end_due_sessions().await.unwrap();
        offline.users.end_due();
        common::assert_engine_matches(&service.engine, &offline).await;
        let scores = score_everything(&client, &url, &events).await;
        for ((user_id, user_session, product_id), propensity) in &scores {
            let key = SessionKey::new(*user_id, user_session);
            assert_eq!(
                *propensity,
                model.score(&offline.features(key, *product_id)),
                "{user_id}/{user_session}/{product_id}"
            );
        }
        let metrics = service.metrics.clone();
        service.stop().await.unwrap();
        (scores, metrics)
    };
    let (before, first_lifetime) = before;
    assert!(
        counted(&first_lifetime, Outcome::Abandoned) > 0,
        "sessions ended before the restart"
    );
    assert!(before.len() > 1000, "{} scoring points", before.len());

    // A new service on the same keyspace starts empty and rehydrates on demand: scoring first,
    // then every entity.
    let service = Service::start(&settings)
        .await
        .expect("the service starts again");
    let after = score_everything(&client, &service.url(), &events).await;
    assert_eq!(after.len(), before.len());
    for (point, propensity) in &before {
        assert_eq!(after.get(point), Some(propensity), "{point:?}");
    }
    common::assert_engine_matches(&service.engine, &offline).await;

    // The new service ends the sessions the first left open, from the index: every session's
    // end is stored once, and counted once over both lifetimes.
    service.engine.flush(true).await.unwrap();
    let stored = service
        .engine
        .outcomes(
            events[0].time.div_euclid(HOUR),
            events.last().unwrap().time.div_euclid(HOUR),
        )
        .await
        .unwrap();
    common::assert_same_tallies(
        &stored,
        &common::offline_tallies(&events, TIMEOUT),
        "after a restart",
    );
    common::assert_counted_over_lifetimes(
        &[&first_lifetime, &service.metrics],
        stored.values(),
        "over both lifetimes",
    );
    service.stop().await.unwrap();
}
