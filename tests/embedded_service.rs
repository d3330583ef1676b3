//! End to end on embedded defaults: 100k synthetic events through the HTTP collector and the
//! actors must give exactly the offline replay's state, abandonment count, outcome tallies and
//! propensities, with the real 30-minute session timeout; and state and outcomes must survive a
//! restart in the middle of a replay.

mod common;

use std::collections::{BTreeMap, HashMap};

use indicatif::ProgressBar;
use propensity::online::serve::Service;
use propensity_actors::SessionKey;
use propensity_actors::event::{Event, EventType, Millis};
use propensity_actors::features::SessionState;

/// The service's default session timeout: sessions end all through the replay, on both paths.
const TIMEOUT: Millis = 30 * 60 * 1000;

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
    let (model_path, model) = common::train_model(dir.path(), &events_path, TIMEOUT);

    // Offline: the training replay's engine.
    let (_, stats, mut offline) =
        propensity::offline::train::replay(events.iter().cloned(), TIMEOUT, &ProgressBar::hidden());
    let abandoned = abandoned_directly(&events);
    assert!(abandoned > 100, "the data has abandoned carts: {abandoned}");
    assert_eq!(
        stats.abandoned_carts, abandoned,
        "offline replay counts abandonment as the events say"
    );

    // Online: the same events through the HTTP collector in batches.
    let mut settings = common::settings(dir.path(), &model_path);
    settings.engine.session_timeout_seconds = (TIMEOUT / 1000) as u64;
    settings.engine.shards = 2;
    let service = Service::start(&settings).await.expect("the service starts");
    let url = service.url();
    let client = reqwest::Client::new();
    for chunk in events.chunks(2000) {
        common::post_events(&client, &url, chunk).await;
    }
    // Both end exactly the sessions idle for longer than the timeout at the last event.
    service.engine.end_due_sessions().await.unwrap();
    offline.users.end_due();

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
    // Live sessions were read from the board, the ended ones through their actors: both
    // agree with the replay.
    let (on_board, through_actors) = feature_reads(&service);
    assert!(
        on_board > 0 && on_board + through_actors == products_by_session.len() as u64,
        "{on_board} scores from the board, {through_actors} through the actors"
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
    let metrics_text = common::metrics_text(&client, &url).await;
    assert!(metrics_text.contains("propensity_abandonment_ratio_alert_threshold 0.8"));
    assert!(metrics_text.contains(&format!(
        "propensity_sessions_closed_total{{outcome=\"abandoned\"}} {abandoned}"
    )));

    // The stored tallies hold every session's end in its hour, as the offline replay's; the
    // counters count each end once.
    let expected = common::offline_tallies(&events, TIMEOUT);
    let stored = all_outcomes(&service, &events).await;
    common::assert_same_tallies(&stored, &expected, "after the replay");
    common::assert_counted_over_lifetimes(&[&service.metrics], stored.values(), "after the replay");
    let response: serde_json::Value = client
        .get(format!("{url}/v1/outcomes"))
        .query(&[
            ("from", "2019-10-01 00:00:00 UTC"),
            ("to", "2019-10-01 23:59:59 UTC"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let day = expected
        .range(..expected.keys().next().unwrap() + 24)
        .fold(0, |sum, (_, tally)| sum + tally.sessions[1]);
    assert_eq!(
        response["total"]["abandoned"].as_u64(),
        Some(day),
        "{response}"
    );
    service.stop().await.unwrap();
}

/// Every stored tally over the span of `events`, by hour.
async fn all_outcomes(
    service: &Service,
    events: &[Event],
) -> BTreeMap<i64, propensity_actors::outcomes::OutcomeTally> {
    use propensity_actors::outcomes::HOUR;
    let first = events.first().unwrap().time.div_euclid(HOUR);
    let last = events.last().unwrap().time.div_euclid(HOUR);
    service.engine.outcomes(first, last).await.unwrap()
}

async fn get_text(client: &reqwest::Client, url: String) -> String {
    let response = client.get(url).send().await.expect("the service answers");
    response.text().await.expect("a text body")
}

/// Scores whose features were read from the board, and through the actors.
fn feature_reads(service: &Service) -> (u64, u64) {
    let reads = &service.metrics.score_feature_reads;
    (
        reads.with_label_values(&["board"]).get(),
        reads.with_label_values(&["actors"]).get(),
    )
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
    let (model_path, _) = common::train_model(dir.path(), &events_path, TIMEOUT);
    let mut settings = common::settings(dir.path(), &model_path);
    settings.engine.session_timeout_seconds = (TIMEOUT / 1000) as u64;
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
        // The first reads activated whatever was not in memory; the same score again comes
        // from the board, and equals what the actors answered.
        let reads = feature_reads(&service);
        let again = snapshot(&client, &service.url(), &probe).await;
        assert_eq!(again, before, "the board answers as the actors did");
        assert_eq!(
            feature_reads(&service),
            (reads.0 + 1, reads.1),
            "active entities are scored from the board"
        );
        service.stop().await.unwrap();
        before
    };
    assert!(before.0["propensity"].as_f64().is_some(), "{}", before.0);
    assert!(before.1.contains("\"cart\""), "{}", before.1);

    let service = Service::start(&settings).await.unwrap();
    let url = service.url();
    let after = snapshot(&client, &url, &probe).await;
    assert_eq!(
        feature_reads(&service),
        (0, 1),
        "entities not in memory are scored through their actors, which load them"
    );
    assert_eq!(
        after.0, before.0,
        "the same score, path and model after a restart (from the board, then the actors)"
    );
    assert_eq!(after.1, before.1, "the same session");
    assert_eq!(after.2, before.2, "the same user");
    // The product's windows end at the stream's watermark, which a restarted service learns
    // again from the next events; until then they end at the product's own latest event.
    let without_windows = |text: &str| {
        let mut product: serde_json::Value = serde_json::from_str(text).unwrap();
        product.as_object_mut().unwrap().remove("windows");
        product
    };
    assert_eq!(
        without_windows(&after.3),
        without_windows(&before.3),
        "the same product"
    );

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

/// Sessions open when the service stops end after it starts again, once their shoppers have
/// been idle for the timeout: the stored tallies equal the offline replay's, and the counters of
/// the two lifetimes add up to them.
#[actix_rt::test]
async fn outcomes_survive_a_restart_in_the_middle_of_a_replay() {
    use propensity_actors::features::Outcome;
    let dir = tempfile::tempdir().unwrap();
    let (_, events) = common::synthetic_events(dir.path(), 600, 3, 13);
    let model_path = common::small_model(dir.path(), TIMEOUT);
    let settings = common::settings(dir.path(), &model_path);
    assert_eq!(settings.engine.session_timeout_seconds, 1800, "the default");
    let client = reqwest::Client::new();
    let counted = |metrics: &propensity::metrics::Metrics, outcome: Outcome| {
        metrics
            .sessions_closed
            .with_label_values(&[outcome.as_str()])
            .get()
    };
    let (first, second) = events.split_at(events.len() / 2);
    let first_lifetime = {
        let service = Service::start(&settings).await.unwrap();
        for chunk in first.chunks(500) {
            common::post_events(&client, &service.url(), chunk).await;
        }
        let live = service.engine.stats().await.unwrap().live_sessions;
        assert!(live > 10, "sessions are open at the stop: {live}");
        let metrics = service.metrics.clone();
        service.stop().await.unwrap();
        metrics
    };
    let service = Service::start(&settings).await.unwrap();
    for chunk in second.chunks(500) {
        common::post_events(&client, &service.url(), chunk).await;
    }
    service.engine.flush(true).await.unwrap();
    let stored = all_outcomes(&service, &events).await;
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
    assert!(
        counted(&first_lifetime, Outcome::Abandoned) > 0,
        "sessions ended before the restart too"
    );
    service.stop().await.unwrap();
}

/// One event per shopper, carting product 1, at `time` (milliseconds since the epoch).
fn cart_at(user_id: u64, time: Millis) -> Event {
    Event {
        time,
        event_type: EventType::Cart,
        product_id: 1,
        category_id: 2,
        category_code: None,
        brand: None,
        price: 9.5,
        user_id,
        user_session: format!("s{user_id}"),
        event_id: None,
    }
}

async fn is_live(service: &Service, user_id: u64) -> bool {
    use propensity_actors::session::SessionView;
    let key = SessionKey::new(user_id, &format!("s{user_id}"));
    match service.engine.session_view(key).await.unwrap() {
        Some(SessionView::Live(_)) => true,
        Some(SessionView::Ended(_)) => false,
        None => panic!("session of user {user_id} is unknown"),
    }
}

/// A shopper whose device clock is years ahead must not end everybody's sessions. Replaying
/// history, event time moves only as far as three shoppers agree, so one such event changes
/// nothing and later honest events still end the sessions they should; in live mode the event
/// is refused with a 400 that says why, and nothing of its batch is applied.
#[actix_rt::test]
async fn a_wrong_clock_ends_no_session() {
    use propensity_actors::features::Outcome;
    let dir = tempfile::tempdir().unwrap();
    let model_path = common::small_model(dir.path(), TIMEOUT);
    let mut settings = common::settings(dir.path(), &model_path);
    settings.engine.shards = 2;
    assert_eq!(settings.engine.watermark_quorum, 3, "the default");
    let client = reqwest::Client::new();
    let ten = chrono::DateTime::parse_from_rfc3339("2019-10-01T10:00:00Z")
        .unwrap()
        .timestamp_millis();
    let minute = 60_000;

    let service = Service::start(&settings).await.unwrap();
    let url = service.url();
    let honest: Vec<Event> = (1..=3)
        .map(|user| cart_at(user, ten + user as i64))
        .collect();
    common::post_events(&client, &url, &honest).await;
    common::post_events(
        &client,
        &url,
        &[cart_at(4, ten + 10 * 365 * 24 * 60 * minute)],
    )
    .await;
    service.engine.end_due_sessions().await.unwrap();
    for user in 1..=4 {
        assert!(
            is_live(&service, user).await,
            "one shopper in 2029 ends no session (user {user})"
        );
    }
    // An hour later two more shoppers arrive: with the one from 2029, three agree that it is
    // past the first three sessions' deadlines.
    common::post_events(
        &client,
        &url,
        &[cart_at(5, ten + 60 * minute), cart_at(6, ten + 61 * minute)],
    )
    .await;
    service.engine.end_due_sessions().await.unwrap();
    for user in 1..=3 {
        assert!(
            !is_live(&service, user).await,
            "user {user}'s session ended after the quiet hour"
        );
    }
    for user in 4..=6 {
        assert!(
            is_live(&service, user).await,
            "user {user} is still shopping"
        );
    }
    let hour = ten.div_euclid(propensity_actors::outcomes::HOUR);
    let tallies = service.engine.outcomes(hour, hour + 1).await.unwrap();
    let abandoned: u64 = tallies
        .values()
        .map(|tally| tally.sessions_with(Outcome::Abandoned))
        .sum();
    assert_eq!(abandoned, 3, "{tallies:?}");
    service.stop().await.unwrap();

    // Live mode: the wall clock is the reference, and an event from a day ahead is refused.
    let live_dir = tempfile::tempdir().unwrap();
    let mut live = common::settings(live_dir.path(), &model_path);
    live.engine.live_watermark = true;
    let service = Service::start(&live).await.unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let batch = serde_json::Value::Array(
        [cart_at(7, now - minute), cart_at(8, now + 24 * 60 * minute)]
            .iter()
            .map(|event| serde_json::from_str(&event.to_json()).unwrap())
            .collect(),
    );
    let response = client
        .post(format!("{}/v1/events", service.url()))
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("event 1") && error.contains("ahead of the service's clock"),
        "{body}"
    );
    assert_eq!(
        service
            .metrics
            .events_rejected
            .with_label_values(&["event_time_in_future"])
            .get(),
        1
    );
    for user in [7, 8] {
        let key = SessionKey::new(user, &format!("s{user}"));
        assert!(
            service.engine.session_view(key).await.unwrap().is_none(),
            "nothing of the refused batch is applied (user {user})"
        );
    }
    // The same batch without the wrong clock is taken.
    common::post_events(&client, &service.url(), &[cart_at(7, now - minute)]).await;
    assert!(is_live(&service, 7).await);
    service.stop().await.unwrap();
}

/// A model file replaced while scores stream in: every request is answered, each answer names
/// the model that scored it, and once a client has seen the new model it never sees the old
/// one again.
#[actix_rt::test]
async fn a_model_swapped_under_load_answers_every_request_with_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let (events_path, events) = common::synthetic_events(dir.path(), 200, 2, 21);
    let (model_path, model) = common::train_model(dir.path(), &events_path, TIMEOUT);
    let mut settings = common::settings(dir.path(), &model_path);
    settings.engine.session_timeout_seconds = (TIMEOUT / 1000) as u64;
    assert_eq!(
        settings.model.reload_interval_seconds, 1,
        "config/test.toml"
    );
    let service = Service::start(&settings).await.unwrap();
    let url = service.url();
    let client = reqwest::Client::new();
    for chunk in events.chunks(1000) {
        common::post_events(&client, &url, chunk).await;
    }
    let targets: Vec<serde_json::Value> = events
        .iter()
        .filter(|event| event.event_type.is_scoring_point())
        .map(|event| serde_json::json!({"user_id": event.user_id, "user_session": event.user_session, "product_id": event.product_id, "explain": false}))
        .collect();
    let targets = std::sync::Arc::new(targets);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(6);
    let clients: Vec<_> = (0..8)
        .map(|worker| {
            let (client, url, targets) = (client.clone(), url.clone(), targets.clone());
            tokio::spawn(async move {
                let mut answers: Vec<(u16, Option<String>)> = Vec::new();
                let mut index = worker;
                while std::time::Instant::now() < deadline {
                    let response = client
                        .post(format!("{url}/v1/score"))
                        .json(&targets[index % targets.len()])
                        .send()
                        .await
                        .unwrap();
                    let status = response.status().as_u16();
                    let body: serde_json::Value = response.json().await.unwrap_or_default();
                    answers.push((status, body["model_version"].as_str().map(str::to_owned)));
                    index += 8;
                }
                answers
            })
        })
        .collect();
    // A new model (same tree, its own version) replaces the file while the clients score.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let mut next = model.clone();
    next.version = format!("{}-swapped", model.version);
    next.save(&model_path).unwrap();

    let mut answered = 0;
    let mut saw_new = 0;
    for client in clients {
        let answers = client.await.unwrap();
        let mut switched = false;
        for (status, version) in answers {
            assert_eq!(status, 200, "every score is answered during the swap");
            let version = version.expect("every answer names its model");
            if version == next.version {
                switched = true;
                saw_new += 1;
            } else {
                assert_eq!(version, model.version, "only the two models answer");
                assert!(!switched, "a client saw the old model after the new one");
            }
            answered += 1;
        }
    }
    assert!(saw_new > 0, "the new model answered ({answered} answers)");
    assert!(answered > saw_new, "the old model answered before the swap");
    let metrics = get_text(&client, format!("{url}/metrics")).await;
    assert!(
        metrics.contains(&format!(
            "propensity_model_info{{version=\"{}\"}} 1",
            next.version
        )),
        "{metrics}"
    );
    service.stop().await.unwrap();
}

/// `GET /v1/products/{id}` windows end at the stream's watermark: a product bought once and
/// untouched for a day and a half shows its purchase in neither window, while other shoppers'
/// events move event time on.
#[actix_rt::test]
async fn product_windows_end_at_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = common::small_model(dir.path(), TIMEOUT);
    let settings = common::settings(dir.path(), &model_path);
    let client = reqwest::Client::new();
    let start = chrono::DateTime::parse_from_rfc3339("2019-10-01T10:00:00Z")
        .unwrap()
        .timestamp_millis();
    let hour = 60 * 60 * 1000;
    let event_at = |user_id: u64, product_id: u64, event_type: EventType, time: Millis| Event {
        event_type,
        product_id,
        ..cart_at(user_id, time)
    };
    let service = Service::start(&settings).await.unwrap();
    let url = service.url();
    common::post_events(
        &client,
        &url,
        &[
            event_at(1, 77, EventType::View, start),
            event_at(1, 77, EventType::Purchase, start + 1000),
        ],
    )
    .await;
    let windows = |body: serde_json::Value| {
        let windows = &body["windows"];
        (
            windows["last_hour"]["purchases"].as_u64().unwrap(),
            windows["last_24_hours"]["purchases"].as_u64().unwrap(),
        )
    };
    let product = |client: reqwest::Client, url: String| async move {
        client
            .get(format!("{url}/v1/products/77"))
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    assert_eq!(windows(product(client.clone(), url.clone()).await), (1, 1));
    // Three other shoppers, 36 hours later, make the watermark.
    let later: Vec<Event> = (2..=4)
        .map(|user| event_at(user, 5, EventType::View, start + 36 * hour))
        .collect();
    common::post_events(&client, &url, &later).await;
    let body = product(client.clone(), url.clone()).await;
    assert_eq!(windows(body.clone()), (0, 0), "{body}");
    assert_eq!(
        body["windows"]["as_of"],
        propensity_actors::event::format_time(start + 36 * hour),
        "{body}"
    );
    assert_eq!(body["counts"]["purchases"], 1, "the totals keep it: {body}");
    service.stop().await.unwrap();
}
