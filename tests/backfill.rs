//! `propensity backfill` builds the store one full replay would: a backfill of the first part of
//! a history followed by the service consuming the rest gives the same store as a backfill of
//! all of it, equal to the offline replay; a second backfill over the same history changes
//! nothing, and a store that holds state is only rebuilt when asked to.

mod common;

use std::path::Path;

use propensity::config::Settings;
use propensity::online::serve::Service;
use propensity::online::store::EmbeddedStore;
use propensity::tools::backfill::{BackfillRequest, run};
use propensity_actors::event::Millis;
use propensity_actors::store::StateStore;

const TIMEOUT: Millis = 30 * 60 * 1000;

fn request(events: &Path, to: Option<Millis>, replace: bool) -> BackfillRequest {
    BackfillRequest {
        events: vec![events.to_owned()],
        from: None,
        to,
        replace,
        show_progress: false,
    }
}

/// Everything the store holds, one line per row in the store's order: entities, outcome
/// tallies by hour and the sessions the index holds open.
async fn contents(path: &Path, events: &[propensity_actors::event::Event]) -> Vec<String> {
    let store = EmbeddedStore::open(path).unwrap();
    let dump = store.dump().unwrap();
    let mut lines: Vec<String> = Vec::new();
    lines.extend(dump.users.iter().map(|row| format!("{row:?}")));
    lines.extend(dump.sessions.iter().map(|row| format!("{row:?}")));
    lines.extend(dump.products.iter().map(|row| format!("{row:?}")));
    lines.extend(dump.categories.iter().map(|row| format!("{row:?}")));
    let outcomes = common::stored_outcomes_with_open_ended(&store, 1, events).await;
    // Cart values to the cent: a tally added up in two lifetimes sums in another order.
    lines.extend(outcomes.iter().map(|(hour, tally)| {
        let values: Vec<String> = tally
            .cart_value
            .iter()
            .map(|value| format!("{value:.2}"))
            .collect();
        format!("{hour} {:?} {values:?}", tally.sessions)
    }));
    let mut open: Vec<String> = store
        .load_open_sessions(0)
        .await
        .unwrap()
        .iter()
        .map(|open| format!("{open:?}"))
        .collect();
    open.sort();
    lines.extend(open);
    lines
}

/// Equal contents, or the first row that differs.
fn assert_same(actual: &[String], expected: &[String], what: &str) {
    if let Some((index, (a, e))) = actual
        .iter()
        .zip(expected)
        .enumerate()
        .find(|(_, (a, e))| a != e)
    {
        panic!("{what}: row {index} differs:\n{a}\nexpected:\n{e}");
    }
    let extra = if actual.len() > expected.len() {
        &actual[expected.len()..]
    } else {
        &expected[actual.len()..]
    };
    assert!(
        actual.len() == expected.len(),
        "{what}: {} rows, expected {}; the extra ones:\n{}",
        actual.len(),
        expected.len(),
        extra.join("\n")
    );
}

#[actix_rt::test]
async fn a_backfill_then_live_traffic_equals_one_full_replay_and_reruns_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (events_path, events) = common::synthetic_events(dir.path(), 600, 3, 21);
    let model = common::small_model(dir.path(), TIMEOUT);
    let settings_for = |name: &str| -> Settings {
        let mut settings = common::settings(dir.path(), &model);
        settings.store.embedded_path = dir.path().join(name);
        settings.engine.shards = 2;
        settings
    };

    // All of it, backfilled.
    let full = settings_for("full.redb");
    let report = run(&request(&events_path, None, false), &full)
        .await
        .unwrap();
    assert_eq!(report.events as usize, events.len());
    assert!(report.live_sessions > 0, "sessions are open at the end");
    let full_contents = contents(&full.store.embedded_path, &events).await;
    let (offline, _) = common::offline_every_session(&events, TIMEOUT);
    common::assert_stored_matches(
        EmbeddedStore::open(&full.store.embedded_path)
            .unwrap()
            .dump()
            .unwrap(),
        &offline,
    );

    // The first 60%, backfilled; the rest through a service on that store.
    let cut = events[events.len() * 3 / 5].time;
    let split = settings_for("split.redb");
    let report = run(&request(&events_path, Some(cut), false), &split)
        .await
        .unwrap();
    let (before, after): (Vec<_>, Vec<_>) =
        events.iter().cloned().partition(|event| event.time < cut);
    assert_eq!(
        (report.events as usize, report.skipped as usize),
        (before.len(), after.len())
    );
    let service = Service::start(&split).await.unwrap();
    let client = reqwest::Client::new();
    for chunk in after.chunks(500) {
        common::post_events(&client, &service.url(), chunk).await;
    }
    service.stop().await.unwrap();
    assert_same(
        &contents(&split.store.embedded_path, &events).await,
        &full_contents,
        "backfill, then live",
    );

    // Again over the same history: refused without --replace, identical with it.
    let error = run(&request(&events_path, None, false), &full)
        .await
        .unwrap_err();
    assert!(
        format!("{error:#}").contains("already holds a store")
            && format!("{error:#}").contains("--replace"),
        "{error:#}"
    );
    run(&request(&events_path, None, true), &full)
        .await
        .unwrap();
    assert_same(
        &contents(&full.store.embedded_path, &events).await,
        &full_contents,
        "backfilled twice",
    );
    assert!(
        !dir.path().join("full.redb.backfill").exists(),
        "the building file was moved into place"
    );

    // A store a service has open is not swapped underneath it.
    let service = Service::start(&full).await.unwrap();
    let error = run(&request(&events_path, None, true), &full)
        .await
        .unwrap_err();
    assert!(format!("{error:#}").contains("in use"), "{error:#}");
    service.stop().await.unwrap();
}

/// The same on Cassandra: a backfill into a new keyspace holds the offline replay's state and
/// outcomes, a second one is refused without `--replace` and changes nothing with it.
#[actix_rt::test]
async fn a_backfill_into_cassandra_equals_the_offline_replay_and_reruns_change_nothing() {
    let keyspace = common::TestKeyspace::new();
    let dir = tempfile::tempdir().unwrap();
    let (events_path, events) = common::synthetic_events(dir.path(), 300, 2, 23);
    let model = common::small_model(dir.path(), TIMEOUT);
    let mut settings = common::settings(dir.path(), &model);
    settings.store.kind = propensity::config::StoreKind::Scylla;
    settings.store.scylla = keyspace.settings.clone();
    // The default: backfill must replay in event time whatever the service's watermark.
    settings.engine.live_watermark = true;

    let report = run(&request(&events_path, None, false), &settings)
        .await
        .unwrap();
    assert_eq!(report.events as usize, events.len());
    assert_eq!(report.store, format!("keyspace {}", keyspace.name()));
    let (offline, _) = common::offline_every_session(&events, TIMEOUT);
    let store = propensity::online::store::ScyllaStore::open(&keyspace.settings)
        .await
        .unwrap();
    common::assert_store_holds(&store, &offline).await;
    let outcomes = common::stored_outcomes_with_open_ended(&store, 1, &events).await;
    common::assert_same_tallies(
        &outcomes,
        &common::offline_tallies(&events, TIMEOUT),
        "backfilled",
    );
    drop(store);

    let error = run(&request(&events_path, None, false), &settings)
        .await
        .unwrap_err();
    assert!(
        format!("{error:#}").contains("already holds state"),
        "{error:#}"
    );
    run(&request(&events_path, None, true), &settings)
        .await
        .unwrap();
    let store = propensity::online::store::ScyllaStore::open(&keyspace.settings)
        .await
        .unwrap();
    common::assert_store_holds(&store, &offline).await;
    let again = common::stored_outcomes_with_open_ended(&store, 1, &events).await;
    common::assert_same_tallies(&again, &outcomes, "backfilled twice");
}
