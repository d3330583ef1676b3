//! The RabbitMQ consumer: one `select!` loop over shutdown, deliveries, batch and acknowledgement
//! ticks. Valid events go to the actor engine in batches; a message is acknowledged only once a
//! flush that started after it was applied has made its state durable, so a crash at any instant
//! loses nothing, and redelivered events are applied only where they are missing (see
//! `propensity_actors::features::DeliveryGuard`). Invalid messages are republished to the
//! dead-letter exchange with their reason, confirmed, and then acknowledged.

use std::collections::{BTreeMap, BTreeSet};
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
use lapin::{Acker, Channel, Connection, ConnectionProperties};
use propensity_actors::delivery::Delivery as EventDelivery;
use propensity_actors::engine::{Engine, EngineError};
use tokio::sync::watch;

use crate::config::RabbitmqSettings;
use crate::metrics::Metrics;
use crate::online::ingest::message::{self, Rejection};
use crate::online::ingest::topology;

/// How often queue depths are read for the backlog gauge.
const BACKLOG_INTERVAL: Duration = Duration::from_secs(5);
/// How long valid events wait for more before a partial batch is applied.
const BATCH_LINGER: Duration = Duration::from_millis(5);
/// The first and the longest wait before a batch the engine refused is retried.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

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
                    // Another instance may take these partitions over now; state kept from
                    // them would be stale when they come back, and would overwrite its writes.
                    if let Err(error) = context.engine.drop_all().await {
                        tracing::warn!(%error, "could not drop the engine's state");
                    }
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

/// Valid events received and not yet applied, and the acknowledgement they ride with: per
/// partition, the acker of the newest delivery (a channel's deliveries arrive in tag order, so
/// one "everything up to here" acknowledgement covers them all) and how many deliveries.
#[derive(Default)]
struct Pending {
    deliveries: Vec<EventDelivery>,
    newest: BTreeMap<u16, Acker>,
    count: u64,
}

/// What may be acknowledged once a flush is durable: per partition (one channel each, so
/// deliveries arrive in tag order), the acker of the newest applied delivery, and how many
/// applied deliveries that covers. One "everything up to here" acknowledgement per channel
/// then covers exactly what was applied, and never names a dead letter's tag, which was
/// acknowledged on its own.
///
/// `settled` tells whether every partition had delivered all it redelivered when the flush
/// began: only then may delivery guards forget. Redelivered messages come first in each queue,
/// but partitions start at different times, so one partition's acknowledgement must not let a
/// guard forget an identity another partition is about to redeliver.
#[derive(Default)]
struct Applied {
    newest: BTreeMap<u16, Acker>,
    count: u64,
    settled: bool,
}

type Barrier = Pin<Box<dyn Future<Output = (Applied, Result<usize, EngineError>)>>>;

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
    let dead_letters = connection.create_channel().await?;
    dead_letters
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut consumers = SelectAll::new();
    let mut channels = BTreeMap::new();
    let (preferred, standby): (Vec<u16>, Vec<u16>) =
        (0..settings.partitions).partition(|partition| settings.prefers(*partition));
    for partition in &preferred {
        let (channel, deliveries) = consume(&connection, settings, *partition).await?;
        channels.insert(*partition, channel);
        consumers.push(deliveries);
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
    let mut applied = Applied::default();
    // Partitions that may still redeliver: settled by a fresh delivery, or by two backlog reads
    // in a row that find nothing ready.
    let mut unsettled: BTreeSet<u16> = preferred.iter().copied().collect();
    let mut found_empty: BTreeSet<u16> = BTreeSet::new();
    let mut barrier: Option<Barrier> = None;
    // Events the engine refused because the store could not load their users or sessions.
    // Deliveries wait until a retry applies them; the prefetch limit then stops the broker, which
    // keeps memory bounded however long the store is away.
    let mut refused: Option<Pending> = None;
    let mut retry_due = Box::pin(tokio::time::sleep(Duration::ZERO));
    let mut retry_wait = RETRY_FIRST;
    let mut retry_armed = false;
    let mut ack_tick = tokio::time::interval(Duration::from_millis(settings.ack_interval_ms));
    let mut backlog_tick = tokio::time::interval(BACKLOG_INTERVAL);

    loop {
        tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => {
                // Whatever the engine refuses now, the broker redelivers to the next consumer.
                apply(context, &mut pending, &mut applied).await?;
                if let Some(running) = barrier.take() {
                    let (covered, result) = running.await;
                    if result.is_ok() {
                        acknowledge(context, &channels, covered).await?;
                    }
                }
                if applied.count > 0 {
                    match context.engine.flush(false).await {
                        Ok(_) => acknowledge(context, &channels, std::mem::take(&mut applied)).await?,
                        Err(error) => tracing::warn!(%error, "final flush failed; the broker redelivers what was not acknowledged"),
                    }
                }
                let _ = connection.close(200, "shutting down".into()).await;
                return Ok(());
            }
            delivery = consumers.next(), if refused.is_none() => {
                let (partition, delivery) = match delivery {
                    Some((partition, delivery)) => (partition, delivery?),
                    None => return Err(SessionError::Cancelled),
                };
                context.metrics.bus_deliveries.inc();
                context.metrics.bus_unacked.inc();
                if delivery.redelivered {
                    // Redeliveries come first in a queue: until a fresh delivery follows, more
                    // may come. A standby subscription taking over a dead instance's partition
                    // starts this way, whatever its backlog reads said before.
                    context.metrics.bus_redeliveries.inc();
                    unsettled.insert(partition);
                    found_empty.remove(&partition);
                } else {
                    unsettled.remove(&partition);
                }
                let content_type = delivery.properties.content_type().as_ref().map(|value| value.as_str());
                match message::parse(&delivery.data, delivery.routing_key.as_str(), content_type, settings.max_message_bytes) {
                    Ok(event) => {
                        pending.deliveries.push(EventDelivery { event, redelivered: delivery.redelivered, source: partition });
                        pending.newest.insert(partition, delivery.acker);
                        pending.count += 1;
                        if pending.deliveries.len() >= settings.batch_size {
                            refused = apply(context, &mut pending, &mut applied).await?;
                        } else if !lingering {
                            linger.as_mut().reset(tokio::time::Instant::now() + BATCH_LINGER);
                            lingering = true;
                        }
                    }
                    Err(rejection) => {
                        dead_letter(&dead_letters, settings, &delivery, &rejection).await?;
                        delivery.acker.ack(BasicAckOptions { multiple: false }).await?;
                        context.metrics.bus_unacked.dec();
                        context.metrics.events_rejected.with_label_values(&[rejection.reason]).inc();
                        tracing::debug!(reason = rejection.reason, detail = %rejection.detail, "dead-lettered a message");
                    }
                }
            }
            _ = &mut linger, if lingering && refused.is_none() => {
                lingering = false;
                refused = apply(context, &mut pending, &mut applied).await?;
            }
            _ = &mut retry_due, if refused.is_some() => {
                let mut batch = refused.take().expect("guarded");
                retry_armed = false;
                refused = apply(context, &mut batch, &mut applied).await?;
                if refused.is_none() {
                    tracing::info!("the store answers again; taking deliveries");
                    retry_wait = RETRY_FIRST;
                    context.ready.store(true, Ordering::Relaxed);
                }
            }
            _ = ack_tick.tick(), if barrier.is_none() && applied.count > 0 => {
                // Everything applied so far is in the flush this starts.
                let (mut covered, engine) = (std::mem::take(&mut applied), context.engine.clone());
                covered.settled = unsettled.is_empty();
                barrier = Some(Box::pin(async move { let result = engine.flush(false).await; (covered, result) }));
            }
            (covered, result) = async { barrier.as_mut().expect("guarded").await }, if barrier.is_some() => {
                barrier = None;
                match result {
                    Ok(_) => acknowledge(context, &channels, covered).await?,
                    // Not acknowledged: the broker stops delivering at the prefetch limit, which
                    // bounds memory until the store is back.
                    Err(error) => {
                        tracing::warn!(%error, "flush failed; holding acknowledgements");
                        // Acknowledged with what is applied next, after a flush that works.
                        let newer = std::mem::replace(&mut applied, covered);
                        applied.count += newer.count;
                        applied.newest.extend(newer.newest);
                    }
                }
            }
            _ = &mut standby_due, if standby_pending => {
                standby_pending = false;
                for partition in &standby {
                    let (channel, deliveries) = consume(&connection, settings, *partition).await?;
                    channels.insert(*partition, channel);
                    consumers.push(deliveries);
                    unsettled.insert(*partition);
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
                    if declared.message_count() > 0 {
                        found_empty.remove(&partition);
                    } else if !found_empty.insert(partition) {
                        unsettled.remove(&partition);
                    }
                }
            }
        }
        if let Some(batch) = &refused
            && !retry_armed
        {
            retry_armed = true;
            if retry_wait == RETRY_FIRST {
                tracing::warn!(
                    events = batch.deliveries.len(),
                    "the store could not load the state of a batch; deliveries wait until it answers"
                );
            }
            context.ready.store(false, Ordering::Relaxed);
            retry_due
                .as_mut()
                .reset(tokio::time::Instant::now() + retry_wait);
            retry_wait = (retry_wait * 2).min(RETRY_MAX);
        }
    }
}

/// Consumes one partition queue on a channel of its own, so its deliveries arrive in tag order.
async fn consume(
    connection: &Connection,
    settings: &RabbitmqSettings,
    partition: u16,
) -> lapin::Result<(
    Channel,
    impl futures_util::Stream<Item = (u16, lapin::Result<Delivery>)> + use<>,
)> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(settings.prefetch, BasicQosOptions { global: false })
        .await?;
    let consumer = channel
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
        .await?;
    Ok((channel, consumer.map(move |delivery| (partition, delivery))))
}

/// Applies the pending batch. What the engine refused for want of the store comes back, to be
/// retried as redeliveries: the entities that applied part of the batch skip it then. The
/// batch's deliveries are acknowledged once all of it is applied.
async fn apply(
    context: &Context,
    pending: &mut Pending,
    applied: &mut Applied,
) -> Result<Option<Pending>, SessionError> {
    if pending.deliveries.is_empty() {
        return Ok(None);
    }
    let Pending {
        deliveries,
        newest,
        count,
    } = std::mem::take(pending);
    match context.engine.ingest_deliveries(deliveries).await {
        Ok(_) => {
            applied.count += count;
            applied.newest.extend(newest);
            Ok(None)
        }
        Err(refused) if !refused.deliveries.is_empty() => Ok(Some(Pending {
            deliveries: refused
                .deliveries
                .into_iter()
                .map(|delivery| EventDelivery {
                    redelivered: true,
                    ..delivery
                })
                .collect(),
            newest,
            count,
        })),
        Err(refused) => Err(refused.error.into()),
    }
}

/// Acknowledges what a completed flush made durable, then lets delivery guards forget what the
/// acknowledgement before covered.
async fn acknowledge(
    context: &Context,
    channels: &BTreeMap<u16, Channel>,
    covered: Applied,
) -> Result<(), SessionError> {
    for (partition, acker) in &covered.newest {
        acker.ack(BasicAckOptions { multiple: true }).await?;
        // An acknowledgement has no reply; a synchronous call on the same channel does, and the
        // broker handles a channel's frames in order. Only then may guards forget: an
        // acknowledgement lost with a dying connection would otherwise bring the message back
        // after its identity was forgotten.
        if let Some(channel) = channels.get(partition) {
            channel
                .basic_qos(context.settings.prefetch, BasicQosOptions { global: false })
                .await?;
        }
    }
    context.metrics.bus_acks.inc_by(covered.count);
    context.metrics.bus_unacked.sub(covered.count as i64);
    if covered.settled {
        context.engine.forget_acknowledged().await?;
    }
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
