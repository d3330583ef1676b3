//! End to end on embedded defaults: 100k synthetic events through the HTTP collector and the
//! actors must give exactly the offline replay's state, abandonment count and propensities, and
//! the state must survive a restart.

mod common;

use std::collections::{BTreeMap, HashMap};

use indicatif::ProgressBar;
use propensity::online::serve::Service;
use propensity_actors::SessionKey;
use propensity_actors::event::{Event, EventType, Millis};
use propensity_actors::features::SessionState;

/// Sessions never time out inside this replay, so both paths hold every session at the end and
/// the comparison covers all of them; the timeout logic has its own unit tests.
const LONG_TIMEOUT: Millis = 40 * 24 * 3600 * 1000;

/// Abandoned carts computed straight from the events: per (user, session), the cart at the end.
/// A session's cart (units per product) and whether it purchased.
type CartAndPurchase = (HashMap<u64, u32>, bool);

fn abandoned_directly(events: &[Event]) -> u64 {
    let mut sessions: HashMap<(u64, &str), CartAndPurchase> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for event in events {
        if !seen.insert(event.identity()) {
            continue;
        }
        let (cart, purchased) = sessions
            .entry((event.user_id, &event.user_session))
            .or_default();
        match event.event_type {
            EventType::View => {}
            EventType::Cart => *cart.entry(event.product_id).or_default() += 1,
            EventType::RemoveFromCart => {
                let units = cart.entry(event.product_id).or_default();
                *units = units.saturating_sub(1);
            }
            EventType::Purchase => {
                *purchased = true;
                cart.insert(event.product_id, 0);
            }
        }
    }
    sessions
        .values()
        .filter(|(cart, purchased)| !purchased && cart.values().any(|units| *units > 0))
        .count() as u64
}

#[actix_rt::test]
async fn online_state_scores_and_abandonment_equal_the_offline_replay() {
    let dir = tempfile::tempdir().unwrap();
    let (events_path, events) = common::synthetic_events(dir.path(), 3300, 7, 7);
    assert!(events.len() >= 100_000, "only {} events", events.len());
    let (model_path, model) = common::train_model(dir.path(), &events_path, LONG_TIMEOUT);

    // Offline: the training replay's engine.
    let (_, stats, offline) = propensity::offline::train::replay(
        events.iter().cloned(),
        LONG_TIMEOUT,
        &ProgressBar::hidden(),
    );
    let abandoned = abandoned_directly(&events);
    assert!(abandoned > 100, "the data has abandoned carts: {abandoned}");
    assert_eq!(
        stats.abandoned_carts, abandoned,
        "offline replay counts abandonment as the events say"
    );

    // Online: the same events through the HTTP collector in batches.
    let mut settings = common::settings(dir.path(), &model_path);
    settings.engine.session_timeout_seconds = (LONG_TIMEOUT / 1000) as u64;
    settings.engine.shards = 2;
    let service = Service::start(&settings).await.expect("the service starts");
    let url = service.url();
    let client = reqwest::Client::new();
    for chunk in events.chunks(2000) {
        common::post_events(&client, &url, chunk).await;
    }
    service.engine.flush(false).await.unwrap();

    // Every entity's state equals the offline one (users may be answered from the store).
    for (user_id, user) in &offline.users.users {
        assert_eq!(
            service.engine.user(*user_id).await.unwrap().as_ref(),
            Some(user),
            "user {user_id}"
        );
    }
    for ((product_id, _), product) in &offline.catalog.products {
        let online = service.engine.product(*product_id).await.unwrap();
        common::assert_same_product(online.as_ref(), product, "in the engine");
    }
    let offline_sessions: BTreeMap<SessionKey, &SessionState> = offline
        .users
        .sessions
        .iter()
        .map(|(key, session)| (*key, session))
        .collect();
    for (key, session) in &offline_sessions {
        assert_eq!(
            service.engine.session(*key).await.unwrap().as_ref(),
            Some(*session),
            "session {key:?}"
        );
    }

    // Every scoring point answers over HTTP with the offline propensity, batched per session.
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
    let mut scored = 0;
    for ((user_id, user_session), product_ids) in &products_by_session {
        let response: serde_json::Value = client
            .post(format!("{url}/v1/score"))
            .json(&serde_json::json!({"user_id": user_id, "user_session": user_session, "product_ids": product_ids, "explain": false}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(response["model_version"], model.version.as_str());
        let key = SessionKey::new(*user_id, user_session);
        for item in response["scores"].as_array().expect("scores") {
            let product_id = item["product_id"].as_u64().unwrap();
            let expected = model.score(&offline.features(key, product_id));
            assert_eq!(
                item["propensity"].as_f64().unwrap(),
                expected,
                "{user_id}/{user_session}/{product_id}"
            );
            scored += 1;
        }
    }
    assert_eq!(
        scored,
        products_by_session.values().map(Vec::len).sum::<usize>()
    );

    // Ending every session counts exactly the abandoned carts.
    let closed = service.engine.flush(true).await.unwrap();
    assert_eq!(closed, offline_sessions.len());
    let counted = service
        .metrics
        .sessions_closed
        .with_label_values(&["abandoned"])
        .get();
    assert_eq!(counted, abandoned);
    let metrics_text = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics_text.contains("propensity_abandonment_ratio_alert_threshold 0.8"));
    assert!(metrics_text.contains(&format!(
        "propensity_sessions_closed_total{{outcome=\"abandoned\"}} {abandoned}"
    )));
    service.stop().await.unwrap();
}

async fn get_text(client: &reqwest::Client, url: String) -> String {
    let response = client.get(url).send().await.expect("the service answers");
    response.text().await.expect("a text body")
}

async fn post_json(
    client: &reqwest::Client,
    url: String,
    body: &serde_json::Value,
) -> serde_json::Value {
    let response = client
        .post(url)
        .json(body)
        .send()
        .await
        .expect("the service answers");
    response.json().await.expect("a JSON body")
}

/// What the API says about one probe: its score, session, user and product.
async fn snapshot(
    client: &reqwest::Client,
    url: &str,
    probe: &Event,
) -> (serde_json::Value, String, String, String) {
    let request = serde_json::json!({"user_id": probe.user_id, "user_session": probe.user_session, "product_id": probe.product_id});
    (
        post_json(client, format!("{url}/v1/score"), &request).await,
        get_text(
            client,
            format!("{url}/v1/sessions/{}/{}", probe.user_id, probe.user_session),
        )
        .await,
        get_text(client, format!("{url}/v1/users/{}", probe.user_id)).await,
        get_text(client, format!("{url}/v1/products/{}", probe.product_id)).await,
    )
}

#[actix_rt::test]
async fn a_restarted_service_keeps_its_state_and_scores() {
    let dir = tempfile::tempdir().unwrap();
    let (events_path, events) = common::synthetic_events(dir.path(), 300, 3, 11);
    let (model_path, _) = common::train_model(dir.path(), &events_path, LONG_TIMEOUT);
    let mut settings = common::settings(dir.path(), &model_path);
    settings.engine.session_timeout_seconds = (LONG_TIMEOUT / 1000) as u64;
    let client = reqwest::Client::new();
    let probe = events
        .iter()
        .rev()
        .find(|event| event.event_type == EventType::Cart)
        .expect("a cart event")
        .clone();

    let before = {
        let service = Service::start(&settings).await.unwrap();
        for chunk in events.chunks(1000) {
            common::post_events(&client, &service.url(), chunk).await;
        }
        let before = snapshot(&client, &service.url(), &probe).await;
        service.stop().await.unwrap();
        before
    };
    assert!(before.0["propensity"].as_f64().is_some(), "{}", before.0);
    assert!(before.1.contains("\"cart\""), "{}", before.1);

    let service = Service::start(&settings).await.unwrap();
    let url = service.url();
    let after = snapshot(&client, &url, &probe).await;
    assert_eq!(
        after.0, before.0,
        "the same score, path and model after a restart"
    );
    assert_eq!(after.1, before.1, "the same session");
    assert_eq!(after.2, before.2, "the same user");
    assert_eq!(after.3, before.3, "the same product");

    // One more event after the restart builds on the rehydrated state, not on nothing.
    let mut next = probe.clone();
    next.time += 1000;
    next.event_type = EventType::View;
    common::post_events(&client, &url, std::slice::from_ref(&next)).await;
    let user: serde_json::Value =
        serde_json::from_str(&get_text(&client, format!("{url}/v1/users/{}", probe.user_id)).await)
            .unwrap();
    let user_before: serde_json::Value = serde_json::from_str(&before.2).unwrap();
    assert_eq!(
        user["counts"]["events"].as_u64().unwrap(),
        user_before["counts"]["events"].as_u64().unwrap() + 1
    );
    service.stop().await.unwrap();
}
