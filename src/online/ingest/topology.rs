//! The broker topology, declared idempotently by every consumer and publisher at start-up
//! (schema/rabbitmq.md documents it):
//!
//! - `exchange`: durable, type `x-consistent-hash`; producers publish with the user_id as the
//!   routing key, so each user maps to one partition queue.
//! - `<queue_prefix>.<p>` for p in 0..partitions: durable quorum queues with single active
//!   consumer, an explicit delivery limit, and the dead-letter exchange; each bound with weight 1.
//! - `dead_letter_exchange` (durable fanout) and `dead_letter_queue` (durable quorum queue).
//! - `<dead_letter_queue>.counting` (durable classic queue, at most 100,000 messages), bound to the
//!   same exchange: the consumers take each dead letter from it once, to count the ones the
//!   broker itself dead-lettered at the delivery limit, and leave `dead_letter_queue` to people.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use crate::config::RabbitmqSettings;

/// The header carrying a dead letter's reason code.
pub const REASON_HEADER: &str = "x-propensity-reason";
/// The header carrying a dead letter's reason in words.
pub const DETAIL_HEADER: &str = "x-propensity-detail";

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Dead letters kept for counting while no instance consumes them; the oldest go first.
const COUNTING_MAX_LENGTH: i64 = 100_000;

/// The queue the consumers count dead letters from.
pub fn counting_queue(settings: &RabbitmqSettings) -> String {
    format!("{}.counting", settings.dead_letter_queue)
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

/// The arguments of a partition queue; declaring a queue again with other arguments fails, so
/// these must not change between releases without a migration.
pub fn partition_queue_arguments(settings: &RabbitmqSettings) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), text("quorum"));
    arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    arguments.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(i64::from(settings.delivery_limit)),
    );
    arguments.insert(
        "x-dead-letter-exchange".into(),
        text(&settings.dead_letter_exchange),
    );
    arguments
}

/// Declares the exchanges, queues and bindings; safe to run any number of times.
pub async fn declare(channel: &Channel, settings: &RabbitmqSettings) -> lapin::Result<()> {
    channel
        .exchange_declare(
            settings.dead_letter_exchange.as_str().into(),
            ExchangeKind::Fanout,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    let mut dead_letter_arguments = FieldTable::default();
    dead_letter_arguments.insert("x-queue-type".into(), text("quorum"));
    channel
        .queue_declare(
            settings.dead_letter_queue.as_str().into(),
            durable_queue(),
            dead_letter_arguments,
        )
        .await?;
    channel
        .queue_bind(
            settings.dead_letter_queue.as_str().into(),
            settings.dead_letter_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut counting_arguments = FieldTable::default();
    counting_arguments.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(COUNTING_MAX_LENGTH),
    );
    let counting = counting_queue(settings);
    channel
        .queue_declare(
            counting.as_str().into(),
            durable_queue(),
            counting_arguments,
        )
        .await?;
    channel
        .queue_bind(
            counting.as_str().into(),
            settings.dead_letter_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            settings.exchange.as_str().into(),
            ExchangeKind::Custom("x-consistent-hash".into()),
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    for partition in 0..settings.partitions {
        let queue = settings.queue(partition);
        channel
            .queue_declare(
                queue.as_str().into(),
                durable_queue(),
                partition_queue_arguments(settings),
            )
            .await?;
        // With the consistent-hash exchange the binding key is the queue's weight.
        channel
            .queue_bind(
                queue.as_str().into(),
                settings.exchange.as_str().into(),
                "1".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}
