//! The drift watch end to end: a replay like the training data keeps the PSI of its features
//! under the alert threshold; the same replay with prices shifted takes the price features over
//! it, read from the service's own /metrics.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use propensity::online::serve::Service;
use propensity_actors::event::Event;

/// The FeatureDrift alert's threshold (docker/prometheus/rules.yml).
const THRESHOLD: f64 = 0.2;

/// Replays `events` through a fresh service, scoring every scoring point's product right after
/// its batch, and returns the PSI per feature from /metrics.
async fn replay_and_read_drift(
    dir: &Path,
    model: &Path,
    events: &[Event],
) -> BTreeMap<String, f64> {
    let mut settings = common::settings(dir, model);
    settings.drift.min_rows = 500;
    let service = Service::start(&settings).await.unwrap();
    let url = service.url();
    let client = reqwest::Client::new();
    let mut scored = 0;
    for chunk in batches(events) {
        common::post_events(&client, &url, chunk).await;
        let mut by_session: BTreeMap<(u64, &str), Vec<u64>> = BTreeMap::new();
        for event in chunk
            .iter()
            .filter(|event| event.event_type.is_scoring_point())
        {
            by_session
                .entry((event.user_id, event.user_session.as_str()))
                .or_default()
                .push(event.product_id);
        }
        for ((user_id, user_session), product_ids) in by_session {
            scored += product_ids.len();
            let response = client
                .post(format!("{url}/v1/score"))
                .json(&serde_json::json!({
                    "user_id": user_id,
                    "user_session": user_session,
                    "product_ids": product_ids,
                    "explain": false,
                }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
    }
    let metrics = common::metrics_text(&client, &url).await;
    service.stop().await.unwrap();
    let window: f64 =
        common_metric(&metrics, "propensity_drift_window_scores").expect("window gauge");
    assert_eq!(window as usize, scored, "every scored product is counted");
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("propensity_feature_drift_psi{feature=\""))
        .map(|rest| {
            let (feature, value) = rest.split_once("\"} ").unwrap();
            (feature.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// Cuts `events` into batches of consecutive events with at most one per session, so that a
/// product scored after its batch sees its session as right after its event, as a shop's page
/// would (training scores every scoring point right after it).
fn batches(events: &[Event]) -> Vec<&[Event]> {
    let mut batches = Vec::new();
    let mut start = 0;
    let mut sessions = std::collections::HashSet::new();
    for (index, event) in events.iter().enumerate() {
        if !sessions.insert((event.user_id, event.user_session.as_str())) {
            batches.push(&events[start..index]);
            start = index;
            sessions.clear();
            sessions.insert((event.user_id, event.user_session.as_str()));
        }
    }
    batches.push(&events[start..]);
    batches
}

fn common_metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[actix_rt::test]
async fn shifted_prices_cross_the_drift_threshold_and_unshifted_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::small_model(dir.path(), 30 * 60 * 1000);
    let replay_dir = dir.path().join("replay");
    std::fs::create_dir_all(&replay_dir).unwrap();
    let (_, events) = common::synthetic_events(&replay_dir, 300, 2, 5);

    let like_training = replay_and_read_drift(&dir.path().join("a"), &model, &events).await;
    let shifted: Vec<Event> = events
        .iter()
        .map(|event| Event {
            price: event.price * 5.0,
            ..event.clone()
        })
        .collect();
    let drifted = replay_and_read_drift(&dir.path().join("b"), &model, &shifted).await;
    eprintln!("PSI like training: {like_training:?}");
    eprintln!("PSI with prices x5: {drifted:?}");
    assert_eq!(like_training.len(), 43, "every feature and the propensity");
    for (feature, psi) in &like_training {
        assert!(
            *psi < THRESHOLD,
            "{feature} drifts on data like training's: {psi}"
        );
    }
    // The price, and the money features computed from it.
    for feature in ["price", "cart_value", "user_lifetime_revenue"] {
        assert!(
            drifted[feature] > THRESHOLD,
            "{feature}: {}",
            drifted[feature]
        );
    }
    // A ratio to the category's median price does not move when every price does, and counts
    // do not move at all.
    assert!(drifted["price_to_category_median"] < THRESHOLD);
    assert_eq!(drifted["session_views"], like_training["session_views"]);
}
