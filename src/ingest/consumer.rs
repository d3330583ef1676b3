//! The RabbitMQ consumer: one `select!` loop over shutdown, deliveries, batch and acknowledgement
//! ticks. Valid events go to the actor engine in batches; a message is acknowledged only once a
//! flush that started after it was applied has made its state durable, so a crash at any instant
//! loses nothing, and redelivered events are applied only where they are missing (see
//! `propensity_actors::features::DeliveryGuard`). Invalid messages are republished to the
//! dead-letter exchange with their reason, confirmed, and then acknowledged.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::SelectAll;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};
use propensity_actors::event::Event;
use propensity_actors::router::{Engine, EngineError};
use tokio::sync::watch;

use crate::config::RabbitmqSettings;
use crate::ingest::message::{self, Rejection};
use crate::ingest::topology;
use crate::metrics::Metrics;

/// How often queue depths are read for the backlog gauge.
const BACKLOG_INTERVAL: Duration = Duration::from_secs(5);
/// How long valid events wait for more before a partial batch is applied.
const BATCH_LINGER: Duration = Duration::from_millis(5);

/// Why a consumer session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    #[error("the actor engine failed: {0}")]
    Engine(#[from] EngineError),
    #[error("the broker cancelled the consumers")]
    Cancelled,
    #[error("the broker did not confirm a dead letter")]
    DeadLetterRefused,
}

/// A running consumer; [`ConsumerHandle::stop`] drains it.
pub struct ConsumerHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ConsumerHandle {
    /// Stops taking deliveries, makes everything applied durable, acknowledges it, and closes
    /// the connection; unapplied deliveries return to their queues.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Everything a consumer session needs.
#[derive(Clone)]
struct Context {
    settings: RabbitmqSettings,
    engine: Engine,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

/// Starts consuming on the current actix system; reconnects with backoff until stopped.
/// `ready` is cleared while the broker is unreachable.
pub fn start(
    settings: RabbitmqSettings,
    engine: Engine,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
) -> ConsumerHandle {
    let (stop, stopped) = watch::channel(false);
    let context = Context {
        settings,
        engine,
        metrics,
        ready,
    };
    let task = tokio::task::spawn_local(run(context, stopped));
    ConsumerHandle { stop, task }
}

async fn run(context: Context, mut stopped: watch::Receiver<bool>) {
    let max_backoff = Duration::from_millis(context.settings.reconnect_max_backoff_ms);
    let mut backoff = Duration::from_millis(100).min(max_backoff);
    loop {
        let mut connected = false;
        let result = session(&context, &mut stopped, &mut connected).await;
        context.ready.store(false, Ordering::Relaxed);
        context.metrics.bus_connected.set(0);
        // The broker returns what this connection had not acknowledged.
        context.metrics.bus_unacked.set(0);
        match result {
            Ok(()) => return,
            Err(error) => {
                if connected {
                    backoff = Duration::from_millis(100).min(max_backoff);
                }
                tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "RabbitMQ consumer disconnected");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        backoff = (backoff * 2).min(max_backoff);
    }
}

/// Valid events received and not yet applied, with their delivery tags.
#[derive(Default)]
struct Pending {
    events: Vec<Event>,
    redelivered: Vec<bool>,
    tags: Vec<u64>,
}

/// Which deliveries of a channel may be acknowledged. Tags count up from 1 on a channel, but
/// deliveries of several consumers arrive interleaved in any order, so one acknowledgement of
/// "everything up to T" is safe only once every tag up to T has been applied or dead-lettered.
#[derive(Default)]
struct AckWindow {
    /// Every tag up to this one is done.
    done_through: u64,
    /// Tags done above `done_through`.
    done_above: BTreeSet<u64>,
    /// Tags applied and not acknowledged yet.
    applied: BTreeSet<u64>,
    /// Every tag up to this one is acknowledged.
    acked_through: u64,
}

impl AckWindow {
    fn done(&mut self, tag: u64) {
        if tag <= self.done_through {
            return;
        }
        self.done_above.insert(tag);
        while self.done_above.remove(&(self.done_through + 1)) {
            self.done_through += 1;
        }
    }

    fn applied(&mut self, tag: u64) {
        self.applied.insert(tag);
        self.done(tag);
    }

    /// The tag one acknowledgement of "everything up to it" may name once a flush is durable:
    /// the newest applied tag with nothing undone below it. It is never a dead letter's tag,
    /// which was acknowledged on its own; naming it again would be a channel error.
    fn ack_target(&self) -> Option<u64> {
        self.applied
            .range(..=self.done_through)
            .next_back()
            .copied()
    }

    /// Records an acknowledgement of everything through `tag`; returns how many applied
    /// messages it covered.
    fn acked(&mut self, tag: u64) -> u64 {
        let rest = self.applied.split_off(&(tag + 1));
        let covered = self.applied.len() as u64;
        self.applied = rest;
        self.acked_through = self.acked_through.max(tag);
        covered
    }
}

type Barrier = Pin<Box<dyn Future<Output = (u64, Result<usize, EngineError>)>>>;

/// One connection's life: returns Ok when stopped, an error when the connection fails.
async fn session(
    context: &Context,
    stopped: &mut watch::Receiver<bool>,
    connected: &mut bool,
) -> Result<(), SessionError> {
    let settings = &context.settings;
    let connection = Connection::connect(
        &settings.url,
        ConnectionProperties::default().with_connection_name(
            format!(
                "{}-{}-consumer",
                settings.connection_name, settings.instance_index
            )
            .into(),
        ),
    )
    .await?;
    let channel = connection.create_channel().await?;
    topology::declare(&channel, settings).await?;
    channel
        .basic_qos(settings.prefetch, BasicQosOptions { global: false })
        .await?;
    let dead_letters = connection.create_channel().await?;
    dead_letters
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut consumers = SelectAll::new();
    let (preferred, standby): (Vec<u16>, Vec<u16>) =
        (0..settings.partitions).partition(|partition| settings.prefers(*partition));
    for partition in &preferred {
        consumers.push(consume(&channel, settings, *partition).await?);
    }
    *connected = true;
    context.ready.store(true, Ordering::Relaxed);
    context.metrics.bus_connected.set(1);
    tracing::info!(
        partitions = ?preferred,
        standby = ?standby,
        "consuming from RabbitMQ"
    );

    let mut standby_due = Box::pin(tokio::time::sleep(Duration::from_millis(
        settings.standby_delay_ms,
    )));
    let mut standby_pending = !standby.is_empty();
    let mut pending = Pending::default();
    let mut linger = Box::pin(tokio::time::sleep(BATCH_LINGER));
    let mut lingering = false;
    let mut window = AckWindow::default();
    let mut barrier: Option<Barrier> = None;
    let mut ack_tick = tokio::time::interval(Duration::from_millis(settings.ack_interval_ms));
    let mut backlog_tick = tokio::time::interval(BACKLOG_INTERVAL);

    loop {
        tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => {
                apply(context, &mut pending, &mut window).await?;
                if let Some(running) = barrier.take() {
                    let (tag, result) = running.await;
                    if result.is_ok() {
                        acknowledge(&channel, context, &mut window, tag).await?;
                    }
                }
                if let Some(tag) = window.ack_target() {
                    match context.engine.flush(false).await {
                        Ok(_) => acknowledge(&channel, context, &mut window, tag).await?,
                        Err(error) => tracing::warn!(%error, "final flush failed; the broker redelivers what was not acknowledged"),
                    }
                }
                let _ = connection.close(200, "shutting down".into()).await;
                return Ok(());
            }
            delivery = consumers.next() => {
                let delivery = match delivery {
                    Some(delivery) => delivery?,
                    None => return Err(SessionError::Cancelled),
                };
                context.metrics.bus_deliveries.inc();
                context.metrics.bus_unacked.inc();
                if delivery.redelivered {
                    context.metrics.bus_redeliveries.inc();
                }
                let content_type = delivery.properties.content_type().as_ref().map(|value| value.as_str());
                match message::parse(&delivery.data, delivery.routing_key.as_str(), content_type, settings.max_message_bytes) {
                    Ok(event) => {
                        pending.events.push(event);
                        pending.redelivered.push(delivery.redelivered);
                        pending.tags.push(delivery.delivery_tag);
                        if pending.events.len() >= settings.batch_size {
                            apply(context, &mut pending, &mut window).await?;
                        } else if !lingering {
                            linger.as_mut().reset(tokio::time::Instant::now() + BATCH_LINGER);
                            lingering = true;
                        }
                    }
                    Err(rejection) => {
                        dead_letter(&dead_letters, settings, &delivery, &rejection).await?;
                        channel.basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: false }).await?;
                        window.done(delivery.delivery_tag);
                        context.metrics.bus_unacked.dec();
                        context.metrics.events_rejected.with_label_values(&[rejection.reason]).inc();
                        tracing::debug!(reason = rejection.reason, detail = %rejection.detail, "dead-lettered a message");
                    }
                }
            }
            _ = &mut linger, if lingering => {
                lingering = false;
                apply(context, &mut pending, &mut window).await?;
            }
            _ = ack_tick.tick(), if barrier.is_none() && window.ack_target().is_some() => {
                // Everything applied through this tag is in the flush this starts.
                let (tag, engine) = (window.ack_target().expect("guarded"), context.engine.clone());
                barrier = Some(Box::pin(async move { (tag, engine.flush(false).await) }));
            }
            (tag, result) = async { barrier.as_mut().expect("guarded").await }, if barrier.is_some() => {
                barrier = None;
                match result {
                    Ok(_) => acknowledge(&channel, context, &mut window, tag).await?,
                    // Not acknowledged: the broker stops delivering at the prefetch limit, which
                    // bounds memory until the store is back.
                    Err(error) => tracing::warn!(%error, "flush failed; holding acknowledgements"),
                }
            }
            _ = &mut standby_due, if standby_pending => {
                standby_pending = false;
                for partition in &standby {
                    consumers.push(consume(&channel, settings, *partition).await?);
                }
                tracing::info!(partitions = ?standby, "standing by for other instances' partitions");
            }
            _ = backlog_tick.tick() => {
                for partition in 0..settings.partitions {
                    let queue = settings.queue(partition);
                    let declared = channel.queue_declare(
                        queue.as_str().into(),
                        QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() },
                        FieldTable::default(),
                    ).await?;
                    context.metrics.bus_backlog.with_label_values(&[&partition.to_string()]).set(i64::from(declared.message_count()));
                }
            }
        }
    }
}

async fn consume(
    channel: &Channel,
    settings: &RabbitmqSettings,
    partition: u16,
) -> lapin::Result<lapin::Consumer> {
    channel
        .basic_consume(
            settings.queue(partition).as_str().into(),
            format!(
                "{}-{}-p{partition}",
                settings.connection_name, settings.instance_index
            )
            .as_str()
            .into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
}

async fn apply(
    context: &Context,
    pending: &mut Pending,
    window: &mut AckWindow,
) -> Result<(), SessionError> {
    if pending.events.is_empty() {
        return Ok(());
    }
    let batch = std::mem::take(pending);
    context
        .engine
        .ingest_deliveries(batch.events, batch.redelivered)
        .await?;
    for tag in batch.tags {
        window.applied(tag);
    }
    Ok(())
}

/// Acknowledges everything through `tag`, which a completed flush made durable.
async fn acknowledge(
    channel: &Channel,
    context: &Context,
    window: &mut AckWindow,
    tag: u64,
) -> Result<(), SessionError> {
    if tag <= window.acked_through {
        return Ok(());
    }
    channel
        .basic_ack(tag, BasicAckOptions { multiple: true })
        .await?;
    let count = window.acked(tag);
    context.metrics.bus_acks.inc_by(count);
    context.metrics.bus_unacked.sub(count as i64);
    Ok(())
}

async fn dead_letter(
    channel: &Channel,
    settings: &RabbitmqSettings,
    delivery: &Delivery,
    rejection: &Rejection,
) -> Result<(), SessionError> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        topology::REASON_HEADER.into(),
        AMQPValue::LongString(rejection.reason.into()),
    );
    headers.insert(
        topology::DETAIL_HEADER.into(),
        AMQPValue::LongString(rejection.detail.as_str().into()),
    );
    let properties = delivery
        .properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2);
    let confirm = channel
        .basic_publish(
            settings.dead_letter_exchange.as_str().into(),
            delivery.routing_key.clone(),
            BasicPublishOptions::default(),
            &delivery.data,
            properties,
        )
        .await?
        .await?;
    if !confirm.is_ack() {
        return Err(SessionError::DeadLetterRefused);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledges_only_through_the_first_gap() {
        let mut window = AckWindow::default();
        // Deliveries of two consumers interleave: 1, 2 and 4 are applied, 3 is still queued.
        for tag in [1, 2, 4] {
            window.applied(tag);
        }
        assert_eq!(window.ack_target(), Some(2));
        assert_eq!(window.acked(2), 2);
        assert_eq!(window.ack_target(), None, "4 waits for 3");
        // 3 was dead-lettered (acknowledged on its own), then 5 applied, then 6 dead-lettered.
        window.done(3);
        window.applied(5);
        window.done(6);
        assert_eq!(window.done_through, 6);
        assert_eq!(window.ack_target(), Some(5), "never a dead letter's tag");
        assert_eq!(window.acked(5), 2);
        assert_eq!(window.ack_target(), None);
        assert_eq!(window.acked_through, 5);
    }
}
