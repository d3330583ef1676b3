//! The RabbitMQ bus against a real local broker: a replay equals the offline features, bad
//! messages are dead-lettered with their reasons while good ones around them are applied, the
//! service survives a broker restart and repeated SIGKILLs without losing or double-counting an
//! event. Each test declares a topology of its own and deletes it at the end.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use propensity::config::Settings;
use propensity::online::serve::Service;
use propensity::online::store::EmbeddedStore;
use propensity_actors::event::{Event, Millis};

use common::broker;

/// For the tests of a few hand-made events: their sessions never end while the test runs.
const LONG_TIMEOUT: Millis = 40 * 24 * 3600 * 1000;
/// The service's default session timeout, for the replay held against the offline one.
const TIMEOUT: Millis = 30 * 60 * 1000;

fn bus_settings(dir: &Path, model: &Path, test: &str) -> Settings {
    let mut settings = common::settings(dir, model);
    settings.engine.session_timeout_seconds = (LONG_TIMEOUT / 1000) as u64;
    settings.engine.shards = 2;
    broker::use_private_topology(&mut settings, test);
    settings
}

#[actix_rt::test]
async fn a_replay_through_rabbitmq_equals_the_offline_features() {
    let connection = broker::connect().await;
    let dir = tempfile::tempdir().unwrap();
    let model = common::small_model(dir.path(), TIMEOUT);
    let (_, events) = common::synthetic_events(dir.path(), 6600, 7, 11);
    assert!(events.len() >= 200_000, "only {} events", events.len());
    let mut settings = bus_settings(dir.path(), &model, "replay");
    settings.engine.session_timeout_seconds = (TIMEOUT / 1000) as u64;
    let rabbitmq = settings.bus.rabbitmq.clone();

    let service = Service::start(&settings).await.expect("the service starts");
    broker::publish(&rabbitmq, &events).await;
    broker::wait_for_acks(&service, events.len() as u64, Duration::from_secs(300)).await;
    assert_eq!(service.metrics.bus_redeliveries.get(), 0);
    assert_eq!(broker::ready_messages(&connection, &rabbitmq).await, 0);
    let metrics = service.metrics.clone();
    service.stop().await.unwrap();
    // With the real session timeout, sessions end all through the replay: the store holds
    // every session's last state, and every end once, as the offline replay does.
    let (offline, _) = common::offline_every_session(&events, TIMEOUT);
    let store = EmbeddedStore::open(&settings.store.embedded_path).unwrap();
    common::assert_stored_matches(store.dump().unwrap(), &offline);
    let counted = common::assert_ends_counted_once(
        &store,
        &metrics,
        rabbitmq.partitions,
        &events,
        TIMEOUT,
        "after the replay",
    )
    .await;
    assert!(
        counted > 1000,
        "sessions ended all through the replay: {counted}"
    );
    broker::delete_topology(&connection, &rabbitmq).await;
}

/// A JSON event with one field replaced (or removed, with `None`).
fn event_with(field: &str, value: Option<&str>) -> Vec<u8> {
    let mut object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
        r#"{"event_time":"2019-10-01 00:00:00 UTC","event_type":"view","product_id":1,"category_id":2,"category_code":null,"brand":null,"price":3.5,"user_id":7,"user_session":"s"}"#,
    )
    .unwrap();
    match value {
        Some(value) => {
            object.insert(field.into(), serde_json::from_str(value).unwrap());
        }
        None => {
            object.remove(field);
        }
    }
    serde_json::to_vec(&object).unwrap()
}

/// A bad message: body, routing key, content type, expected reason, and words its detail has.
type BadMessage = (
    Vec<u8>,
    &'static str,
    Option<&'static str>,
    &'static str,
    &'static str,
);

#[actix_rt::test]
async fn bad_messages_are_dead_lettered_with_their_reasons_and_good_ones_applied() {
    use lapin::BasicProperties;
    use lapin::options::BasicPublishOptions;

    let connection = broker::connect().await;
    let dir = tempfile::tempdir().unwrap();
    let model = common::small_model(dir.path(), LONG_TIMEOUT);
    let settings = bus_settings(dir.path(), &model, "dead-letters");
    let rabbitmq = settings.bus.rabbitmq.clone();
    let service = Service::start(&settings).await.expect("the service starts");

    // (body, routing key, content type, expected reason, words the detail must contain)
    let oversized = {
        let mut body = event_with("user_session", Some("\"s\""));
        body.truncate(body.len() - 1);
        body.extend(format!(",\"brand\":\"{}\"}}", "x".repeat(20_000)).bytes());
        body
    };
    let corpus: Vec<BadMessage> = vec![
        (b"hello".to_vec(), "7", None, "not_an_object", "object"),
        (b"42".to_vec(), "7", None, "not_an_object", "object"),
        (
            b"\"a string\"".to_vec(),
            "7",
            None,
            "not_an_object",
            "object",
        ),
        (b"{\"event_time\": ".to_vec(), "7", None, "bad_json", "EOF"),
        (b"{event_time: 1}".to_vec(), "7", None, "bad_json", "key"),
        (b"[{}]".to_vec(), "7", None, "batch_in_message", "array"),
        (Vec::new(), "7", None, "empty", "empty"),
        (b"  \n ".to_vec(), "7", None, "empty", "empty"),
        (
            b"{\"user_session\": \"\xff\xfe\"}".to_vec(),
            "7",
            None,
            "not_utf8",
            "UTF-8",
        ),
        (oversized, "7", None, "too_large", "exceeds"),
        (
            event_with("event_time", None),
            "7",
            None,
            "missing_field",
            "event_time",
        ),
        (
            event_with("user_id", None),
            "",
            None,
            "missing_field",
            "user_id",
        ),
        (
            event_with("product_id", None),
            "7",
            None,
            "missing_field",
            "product_id",
        ),
        (
            event_with("user_session", None),
            "7",
            None,
            "missing_field",
            "user_session",
        ),
        (
            event_with("price", None),
            "7",
            None,
            "missing_field",
            "price",
        ),
        (
            event_with("event_type", Some("\"click\"")),
            "7",
            None,
            "invalid_field",
            "event_type",
        ),
        (
            event_with("price", Some("-3")),
            "7",
            None,
            "invalid_field",
            "price",
        ),
        (
            event_with("price", Some("\"12.5\"")),
            "7",
            None,
            "invalid_field",
            "price",
        ),
        (
            String::from_utf8(event_with("price", Some("3.5")))
                .unwrap()
                .replace("3.5", "1e999")
                .into_bytes(),
            "7",
            None,
            "bad_json",
            "number",
        ),
        (
            event_with("user_id", Some("\"abc\"")),
            "7",
            None,
            "invalid_field",
            "user_id",
        ),
        (
            event_with("user_id", Some("-5")),
            "7",
            None,
            "invalid_field",
            "user_id",
        ),
        (
            event_with("product_id", Some("1.5")),
            "7",
            None,
            "invalid_field",
            "product_id",
        ),
        (
            event_with("event_time", Some("\"yesterday\"")),
            "7",
            None,
            "invalid_field",
            "event_time",
        ),
        (
            event_with("event_type", Some("3")),
            "7",
            None,
            "invalid_field",
            "event_type",
        ),
        (
            event_with("unexpected", Some("1")),
            "7",
            None,
            "bad_json",
            "unknown field `unexpected`",
        ),
        (
            event_with("user_session", Some("\"\"")),
            "7",
            None,
            "missing_field",
            "user_session",
        ),
        (
            event_with("category_id", Some("[1]")),
            "7",
            None,
            "invalid_field",
            "category_id",
        ),
        (
            event_with("user_id", Some("8")),
            "7",
            None,
            "routing_key_mismatch",
            "user_id 8",
        ),
        (
            event_with("user_id", Some("7")),
            "7",
            Some("text/plain"),
            "bad_content_type",
            "text/plain",
        ),
    ];
    let kinds: std::collections::BTreeSet<&str> = corpus.iter().map(|case| case.3).collect();
    assert!(
        corpus.len() >= 20 && kinds.len() >= 9,
        "{} cases of {} reasons",
        corpus.len(),
        kinds.len()
    );

    // Good events interleaved with the bad ones, each good one its own view by user 7.
    let good: Vec<Event> = (0..corpus.len() as i64 + 1)
        .map(|index| {
            Event::from_json(&event_with(
                "event_time",
                Some(&format!("\"2019-10-01 00:00:{index:02} UTC\"")),
            ))
            .unwrap()
        })
        .collect();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    let publish = |body: Vec<u8>, key: String, content_type: Option<&'static str>| {
        let channel = channel.clone();
        let exchange = rabbitmq.exchange.clone();
        async move {
            let mut properties = BasicProperties::default();
            if let Some(content_type) = content_type {
                properties = properties.with_content_type(content_type.into());
            }
            let confirm = channel
                .basic_publish(
                    exchange.as_str().into(),
                    key.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(confirm.is_ack());
        }
    };
    for (index, (body, key, content_type, _, _)) in corpus.iter().enumerate() {
        publish(good[index].to_json().into_bytes(), "7".into(), None).await;
        publish(body.clone(), key.to_string(), *content_type).await;
    }
    publish(good[corpus.len()].to_json().into_bytes(), "7".into(), None).await;

    broker::wait_for_acks(&service, good.len() as u64, Duration::from_secs(60)).await;
    let user = service
        .engine
        .user(7)
        .await
        .unwrap()
        .expect("user 7 exists");
    assert_eq!(
        user.counts.views,
        good.len() as u32,
        "every good event around the bad ones applied"
    );

    let mut letters = Vec::new();
    let started = Instant::now();
    while letters.len() < corpus.len() && started.elapsed() < Duration::from_secs(30) {
        letters.extend(broker::dead_letters(&connection, &rabbitmq).await);
        actix::clock::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        letters.len(),
        corpus.len(),
        "every bad message is dead-lettered once"
    );
    let mut wrong = Vec::new();
    for (body, _, _, reason, detail) in &corpus {
        let letter = letters
            .iter()
            .find(|letter| &letter.body == body)
            .unwrap_or_else(|| panic!("no dead letter for {:?}", String::from_utf8_lossy(body)));
        if &letter.reason != reason || !letter.detail.contains(detail) {
            wrong.push(format!(
                "{:?}: reason {} (want {reason}), detail {:?} (should mention {detail:?})",
                String::from_utf8_lossy(body),
                letter.reason,
                letter.detail
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "dead letters with wrong reasons:\n{}",
        wrong.join("\n")
    );
    let rejected: u64 = kinds
        .iter()
        .map(|reason| {
            service
                .metrics
                .events_rejected
                .with_label_values(&[reason])
                .get()
        })
        .sum();
    assert_eq!(
        rejected,
        corpus.len() as u64,
        "each dead letter is counted by reason"
    );
    assert_eq!(
        service.metrics.bus_redeliveries.get(),
        0,
        "no channel error forced a redelivery"
    );
    service.stop().await.unwrap();
    broker::delete_topology(&connection, &rabbitmq).await;
}

/// In live mode a message dated a day ahead of the service's clock comes from a wrong clock: it
/// is dead-lettered as `event_time_in_future`, and the messages around it are applied.
#[actix_rt::test]
async fn a_message_from_a_wrong_clock_is_dead_lettered_in_live_mode() {
    let connection = broker::connect().await;
    let dir = tempfile::tempdir().unwrap();
    let model = common::small_model(dir.path(), LONG_TIMEOUT);
    let mut settings = bus_settings(dir.path(), &model, "wrong-clock");
    settings.engine.live_watermark = true;
    let rabbitmq = settings.bus.rabbitmq.clone();
    let service = Service::start(&settings).await.expect("the service starts");

    // Whole seconds: the REES46 time format has no fraction.
    let now = chrono::Utc::now().timestamp() * 1000;
    let at = |user_id: u64, time: Millis| {
        let mut event =
            Event::from_json(&event_with("user_id", Some(&user_id.to_string()))).unwrap();
        event.time = time;
        event
    };
    let future = at(8, now + 24 * 3600 * 1000);
    broker::publish(
        &rabbitmq,
        &[at(7, now - 60_000), future.clone(), at(9, now - 60_000)],
    )
    .await;
    broker::wait_for_acks(&service, 2, Duration::from_secs(60)).await;
    let mut letters = Vec::new();
    let started = Instant::now();
    while letters.is_empty() && started.elapsed() < Duration::from_secs(30) {
        letters.extend(broker::dead_letters(&connection, &rabbitmq).await);
        actix::clock::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(letters.len(), 1, "the one wrong clock is dead-lettered");
    let letter = &letters[0];
    assert_eq!(letter.reason, "event_time_in_future", "{}", letter.detail);
    assert!(
        letter.detail.contains("ahead of the service's clock"),
        "{}",
        letter.detail
    );
    assert_eq!(
        Event::from_json(&letter.body).unwrap(),
        future,
        "the letter holds the message as sent"
    );
    for user in [7, 9] {
        assert!(
            service.engine.user(user).await.unwrap().is_some(),
            "user {user}'s event around it applied"
        );
    }
    assert!(service.engine.user(8).await.unwrap().is_none());
    assert_eq!(
        service
            .metrics
            .events_rejected
            .with_label_values(&["event_time_in_future"])
            .get(),
        1
    );
    service.stop().await.unwrap();
    broker::delete_topology(&connection, &rabbitmq).await;
}

/// A message the broker dead-letters itself, after `delivery_limit` deliveries without an
/// acknowledgement (a consumer crashing on it, played here by a test consumer that rejects it),
/// carries `x-death` and no reason of ours: the service counts it as `delivery_limit`, once. A
/// message the service dead-letters itself counts under its own reason only.
#[actix_rt::test]
async fn messages_the_broker_dead_letters_at_the_delivery_limit_are_counted() {
    use lapin::options::BasicNackOptions;
    let connection = broker::connect().await;
    let dir = tempfile::tempdir().unwrap();
    let model = common::small_model(dir.path(), LONG_TIMEOUT);
    let mut settings = bus_settings(dir.path(), &model, "delivery-limit");
    settings.bus.rabbitmq.delivery_limit = 1;
    let rabbitmq = settings.bus.rabbitmq.clone();
    let channel = connection.create_channel().await.unwrap();
    propensity::online::ingest::topology::declare(&channel, &rabbitmq)
        .await
        .unwrap();
    let crasher = Event::from_json(&event_with("user_id", Some("4242"))).unwrap();
    broker::publish(&rabbitmq, std::slice::from_ref(&crasher)).await;
    // Deliver it and give it back until the broker gives up on it. (Partition queues have a
    // single active consumer, which rules out basic.get: consume, on a channel of the test's.)
    let consumer_channel = connection.create_channel().await.unwrap();
    consumer_channel
        .basic_qos(1, lapin::options::BasicQosOptions::default())
        .await
        .unwrap();
    let mut deliveries = futures_util::stream::SelectAll::new();
    for partition in 0..rabbitmq.partitions {
        deliveries.push(
            consumer_channel
                .basic_consume(
                    rabbitmq.queue(partition).as_str().into(),
                    format!("crashing-consumer-{partition}").as_str().into(),
                    lapin::options::BasicConsumeOptions::default(),
                    lapin::types::FieldTable::default(),
                )
                .await
                .unwrap(),
        );
    }
    let mut rejections = 0;
    while let Ok(Some(delivery)) = tokio::time::timeout(
        Duration::from_secs(3),
        futures_util::StreamExt::next(&mut deliveries),
    )
    .await
    {
        delivery
            .unwrap()
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
            .unwrap();
        rejections += 1;
        assert!(rejections < 100, "the broker keeps redelivering");
    }
    consumer_channel.close(200, "done".into()).await.unwrap();
    assert_eq!(broker::ready_messages(&connection, &rabbitmq).await, 0);
    assert!(rejections >= 2, "delivered {rejections} times");

    let service = Service::start(&settings).await.expect("the service starts");
    // And one the service dead-letters itself.
    channel.confirm_select(Default::default()).await.unwrap();
    let confirm = channel
        .basic_publish(
            rabbitmq.exchange.as_str().into(),
            "4243".into(),
            lapin::options::BasicPublishOptions::default(),
            b"not json",
            lapin::BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    let counted = |reason: &str| {
        service
            .metrics
            .events_rejected
            .with_label_values(&[reason])
            .get()
    };
    let started = Instant::now();
    let ours = || {
        propensity::online::ingest::message::reasons()
            .filter(|reason| *reason != "delivery_limit")
            .map(|reason| (reason, counted(reason)))
            .filter(|(_, count)| *count > 0)
            .collect::<Vec<_>>()
    };
    while (counted("delivery_limit") < 1 || ours().is_empty())
        && started.elapsed() < Duration::from_secs(30)
    {
        actix::clock::sleep(Duration::from_millis(50)).await;
    }
    // Time for a double count to show.
    actix::clock::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        counted("delivery_limit"),
        1,
        "the broker's dead letter, once"
    );
    assert_eq!(
        ours(),
        [("not_an_object", 1)],
        "ours, under its own reason only"
    );
    let letters = broker::dead_letters(&connection, &rabbitmq).await;
    assert_eq!(
        letters.len(),
        2,
        "both stay in the dead-letter queue for people: {letters:?}"
    );
    assert_eq!(
        Event::from_json(
            &letters
                .iter()
                .find(|letter| letter.reason.is_empty())
                .unwrap()
                .body
        )
        .unwrap(),
        crasher
    );
    assert!(
        service.engine.user(4242).await.unwrap().is_none(),
        "never applied"
    );
    service.stop().await.unwrap();
    broker::delete_topology(&connection, &rabbitmq).await;
}
