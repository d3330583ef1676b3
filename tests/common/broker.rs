//! RabbitMQ helpers for the bus tests: a private topology per test, publishing, queue depths,
//! dead letters, and clean-up. A broker that is not reachable fails the test with the reason.

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use propensity::config::{BusKind, RabbitmqSettings, Settings};
use propensity::online::ingest::Publisher;
use propensity_actors::event::Event;

/// The broker the tests use, as the README's test command starts it.
pub const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Connects to the test broker, or fails the test saying how to start it.
pub async fn connect() -> Connection {
    match Connection::connect(URL, ConnectionProperties::default()).await {
        Ok(connection) => connection,
        Err(error) => panic!(
            "RabbitMQ is not reachable at 127.0.0.1:5672 ({error}): start it with `docker/native/services.sh up rabbitmq` (the README's test command does)"
        ),
    }
}

/// Switches `settings` to the RabbitMQ bus with a topology of its own, named after `test`.
pub fn use_private_topology(settings: &mut Settings, test: &str) {
    let suffix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id();
    let base = format!("propensity-test.{test}.{suffix:08x}");
    settings.bus.kind = BusKind::Rabbitmq;
    let rabbitmq = &mut settings.bus.rabbitmq;
    rabbitmq.url = URL.into();
    rabbitmq.exchange = format!("{base}.events");
    rabbitmq.queue_prefix = format!("{base}.events");
    rabbitmq.dead_letter_exchange = format!("{base}.dead");
    rabbitmq.dead_letter_queue = format!("{base}.dead");
    rabbitmq.ack_interval_ms = 50;
}

/// Publishes the events with confirms, in batches.
pub async fn publish(settings: &RabbitmqSettings, events: &[Event]) {
    let publisher = Publisher::connect(settings)
        .await
        .unwrap_or_else(|error| panic!("cannot publish to RabbitMQ: {error}"));
    for chunk in events.chunks(2000) {
        publisher.publish(chunk).await.expect("the broker confirms");
    }
}

/// Messages ready (not delivered) in every partition queue together.
pub async fn ready_messages(connection: &Connection, settings: &RabbitmqSettings) -> u64 {
    let channel = connection.create_channel().await.unwrap();
    let mut total = 0;
    for partition in 0..settings.partitions {
        let queue = channel
            .queue_declare(
                settings.queue(partition).as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("the partition queue exists");
        total += u64::from(queue.message_count());
    }
    let _ = channel.close(200, "done".into()).await;
    total
}

/// A dead letter as the tests see it.
#[derive(Debug)]
pub struct DeadLetter {
    pub body: Vec<u8>,
    pub reason: String,
    pub detail: String,
}

fn header(headers: &FieldTable, name: &str) -> String {
    match headers.inner().get(name) {
        Some(AMQPValue::LongString(value)) => value.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// Takes every message in the dead-letter queue.
pub async fn dead_letters(connection: &Connection, settings: &RabbitmqSettings) -> Vec<DeadLetter> {
    let channel = connection.create_channel().await.unwrap();
    let mut letters = Vec::new();
    while let Some(message) = channel
        .basic_get(
            settings.dead_letter_queue.as_str().into(),
            BasicGetOptions::default(),
        )
        .await
        .unwrap()
    {
        let headers = message
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        letters.push(DeadLetter {
            body: message.delivery.data.clone(),
            reason: header(
                &headers,
                propensity::online::ingest::topology::REASON_HEADER,
            ),
            detail: header(
                &headers,
                propensity::online::ingest::topology::DETAIL_HEADER,
            ),
        });
        message
            .delivery
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
    }
    letters
}

/// Deletes the test's queues and exchanges.
pub async fn delete_topology(connection: &Connection, settings: &RabbitmqSettings) {
    let channel = connection.create_channel().await.unwrap();
    for partition in 0..settings.partitions {
        let _ = channel
            .queue_delete(
                settings.queue(partition).as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await;
    }
    let _ = channel
        .queue_delete(
            settings.dead_letter_queue.as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await;
    let _ = channel
        .queue_delete(
            propensity::online::ingest::topology::counting_queue(settings)
                .as_str()
                .into(),
            QueueDeleteOptions::default(),
        )
        .await;
    for exchange in [&settings.exchange, &settings.dead_letter_exchange] {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await;
    }
}

/// Waits until the partition queues are empty and the service holds no unacknowledged message.
pub async fn wait_until_consumed(
    connection: &Connection,
    settings: &RabbitmqSettings,
    metrics: &propensity::metrics::Metrics,
    limit: std::time::Duration,
) {
    let started = std::time::Instant::now();
    loop {
        let ready = ready_messages(connection, settings).await;
        let unacked = metrics.bus_unacked.get();
        if ready == 0 && unacked == 0 && metrics.bus_connected.get() == 1 {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "not consumed after {limit:?}: {ready} ready, {unacked} unacknowledged"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Waits until the service has acknowledged exactly `count` messages.
pub async fn wait_for_acks(
    service: &propensity::online::serve::Service,
    count: u64,
    limit: std::time::Duration,
) {
    let started = std::time::Instant::now();
    loop {
        let acked = service.metrics.bus_acks.get();
        if acked >= count {
            assert_eq!(
                acked, count,
                "acknowledged more messages than were published"
            );
            return;
        }
        assert!(
            started.elapsed() < limit,
            "only {acked} of {count} messages acknowledged after {limit:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Runs `rabbitmqctl` against the test broker's node; returns its output, or fails the test.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let output = std::process::Command::new("rabbitmqctl")
        .args(["-n", "rabbit@localhost"])
        .args(args)
        .output()
        .expect("rabbitmqctl runs (the README's test command installs RabbitMQ)");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The tag of the active consumer of each of the topology's partition queues that has one.
pub fn active_consumers(settings: &RabbitmqSettings) -> std::collections::BTreeMap<u16, String> {
    let output = rabbitmqctl(&[
        "list_consumers",
        "--formatter",
        "json",
        "queue_name",
        "consumer_tag",
        "active",
    ]);
    let consumers: Vec<serde_json::Value> = serde_json::from_str(&output)
        .unwrap_or_else(|error| panic!("rabbitmqctl list_consumers: {error}: {output}"));
    let mut active = std::collections::BTreeMap::new();
    for partition in 0..settings.partitions {
        let queue = settings.queue(partition);
        if let Some(consumer) = consumers
            .iter()
            .find(|consumer| consumer["queue_name"] == queue.as_str() && consumer["active"] == true)
        {
            active.insert(
                partition,
                consumer["consumer_tag"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
    }
    active
}

/// Publishes the events in the background, `chunk` at a time with confirms, one chunk every
/// `period`: live traffic that goes on while the test does something else.
pub fn publish_paced(
    settings: &RabbitmqSettings,
    events: &[Event],
    chunk: usize,
    period: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    let (settings, events) = (settings.clone(), events.to_vec());
    actix_rt::spawn(async move {
        let publisher = Publisher::connect(&settings)
            .await
            .unwrap_or_else(|error| panic!("cannot publish to RabbitMQ: {error}"));
        let mut tick = tokio::time::interval(period);
        for chunk in events.chunks(chunk) {
            tick.tick().await;
            publisher.publish(chunk).await.expect("the broker confirms");
        }
    })
}
