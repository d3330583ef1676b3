//! The RabbitMQ consumer: one `select!` loop per connection over shutdown, deliveries, the batch
//! linger, retries, acknowledgement ticks, standby and backlog reads, each handled by a method of
//! [`Consuming`], the connection's state. Valid events go to the actor engine in batches; a
//! message is acknowledged only once a flush that started after it was applied has made its
//! state durable, so a crash at any instant loses nothing, and redelivered events are applied
//! only where they are missing (see `propensity_actors::delivery::DeliveryGuard`). Invalid
//! messages are republished to the dead-letter exchange with their reason, confirmed, and then
//! acknowledged.

use std::collections::BTreeMap;
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
use propensity_actors::store::StoreError;
use tokio::sync::watch;

use crate::config::RabbitmqSettings;
use crate::metrics::Metrics;
use crate::online::ingest::message::{self, Rejection};
use crate::online::ingest::settling::Settling;
use crate::online::ingest::topology;

/// How often queue depths are read for the backlog gauge.
const BACKLOG_INTERVAL: Duration = Duration::from_secs(5);
/// How long valid events wait for more before a partial batch is applied.
const BATCH_LINGER: Duration = Duration::from_millis(5);
/// The first and the longest wait before a batch the engine refused is retried.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Dead letters in flight to one instance for counting.
const COUNTING_PREFETCH: u16 = 64;

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
    /// In live mode, how far ahead of the wall clock an event may be dated, in milliseconds.
    max_future_skew: Option<i64>,
    engine: Engine,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

/// Starts consuming on the current actix system; reconnects with backoff until stopped.
/// `ready` is cleared while the broker is unreachable.
pub fn start(
    settings: RabbitmqSettings,
    max_future_skew: Option<i64>,
    engine: Engine,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
) -> ConsumerHandle {
    let (stop, stopped) = watch::channel(false);
    let context = Context {
        settings,
        max_future_skew,
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
    /// Per partition, whether its newest delivery here is a fresh one (see [`Settling`]).
    newest_fresh: BTreeMap<u16, bool>,
    count: u64,
}

/// What may be acknowledged once a flush is durable: per partition (one channel each, so
/// deliveries arrive in tag order), the acker of the newest applied delivery, and how many
/// applied deliveries that covers. One "everything up to here" acknowledgement per channel
/// then covers exactly what was applied, and never names a dead letter's tag, which was
/// acknowledged on its own.
///
/// `settled` tells whether delivery guards may forget once it is acknowledged: when the flush
/// began, every partition had applied all it redelivered, and no batch refused in part waited
/// for its retry (see [`Settling`]).
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
    let mut connection = Consuming::connect(context).await?;
    *connected = true;
    context.ready.store(true, Ordering::Relaxed);
    context.metrics.bus_connected.set(1);
    let settings = &context.settings;
    let mut standby_due = Box::pin(tokio::time::sleep(Duration::from_millis(
        settings.standby_delay_ms,
    )));
    let mut standby_pending = !connection.standby.is_empty();
    let mut linger = Box::pin(tokio::time::sleep(BATCH_LINGER));
    let mut retry_due = Box::pin(tokio::time::sleep(Duration::ZERO));
    let mut ack_tick = tokio::time::interval(Duration::from_millis(settings.ack_interval_ms));
    let mut backlog_tick = tokio::time::interval(BACKLOG_INTERVAL);
    loop {
        let refused = connection.refused.is_some();
        tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => return connection.stop().await,
            delivery = connection.consumers.next(), if !refused => {
                let (partition, delivery) = delivery.ok_or(SessionError::Cancelled)?;
                if connection.delivered(partition, delivery?).await? {
                    linger.as_mut().reset(tokio::time::Instant::now() + BATCH_LINGER);
                }
            }
            _ = &mut linger, if connection.lingering && !refused => connection.linger_over().await?,
            _ = &mut retry_due, if refused => connection.retry_refused().await?,
            _ = ack_tick.tick(), if connection.barrier.is_none() && connection.applied.count > 0 => {
                connection.start_barrier();
            }
            (covered, result) = async { connection.barrier.as_mut().expect("guarded").await }, if connection.barrier.is_some() => {
                connection.barrier_done(covered, result).await?;
            }
            _ = &mut standby_due, if standby_pending => {
                standby_pending = false;
                connection.stand_by().await?;
            }
            _ = backlog_tick.tick() => connection.read_backlog().await?,
            letter = connection.counting.next() => {
                let letter = letter.ok_or(SessionError::Cancelled)??;
                connection.count_dead_letter(letter).await?;
            }
        }
        if let Some(wait) = connection.arm_retry() {
            retry_due.as_mut().reset(tokio::time::Instant::now() + wait);
        }
    }
}

/// What one connection consumes and holds: its channels, the events received and not applied,
/// those applied and not acknowledged, and those the engine refused.
struct Consuming<'a> {
    context: &'a Context,
    connection: Connection,
    /// The channel the topology and backlog reads use.
    channel: Channel,
    dead_letters: Channel,
    /// The dead letters to count, from the counting queue (any instance takes each once).
    counting: Pin<Box<dyn futures_util::Stream<Item = lapin::Result<Delivery>> + Send>>,
    consumers: SelectAll<PartitionDeliveries>,
    /// One channel per partition consumed, so its deliveries arrive in tag order.
    channels: BTreeMap<u16, Channel>,
    /// Partitions subscribed to after `standby_delay_ms`, for when their owner stops.
    standby: Vec<u16>,
    pending: Pending,
    lingering: bool,
    applied: Applied,
    /// Whether delivery guards may forget (see [`Settling`]).
    settling: Settling,
    /// A flush under way, and the deliveries it covers.
    barrier: Option<Barrier>,
    /// Events the engine refused because the store could not load their state. Deliveries wait
    /// until a retry applies them; the prefetch limit then stops the broker, which keeps memory
    /// bounded however long the store is away.
    refused: Option<Pending>,
    retry_wait: Duration,
    retry_armed: bool,
}

/// One partition's deliveries, tagged with the partition.
type PartitionDeliveries =
    Pin<Box<dyn futures_util::Stream<Item = (u16, lapin::Result<Delivery>)> + Send>>;

impl<'a> Consuming<'a> {
    /// Connects, declares the topology and consumes the partitions this instance prefers.
    async fn connect(context: &'a Context) -> Result<Consuming<'a>, SessionError> {
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
        let counting_channel = connection.create_channel().await?;
        counting_channel
            .basic_qos(COUNTING_PREFETCH, BasicQosOptions { global: false })
            .await?;
        let counting = counting_channel
            .basic_consume(
                topology::counting_queue(settings).as_str().into(),
                format!(
                    "{}-{}-counting",
                    settings.connection_name, settings.instance_index
                )
                .as_str()
                .into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let (preferred, standby): (Vec<u16>, Vec<u16>) =
            (0..settings.partitions).partition(|partition| settings.prefers(*partition));
        let mut consuming = Consuming {
            context,
            connection,
            channel,
            dead_letters,
            counting: Box::pin(counting),
            consumers: SelectAll::new(),
            channels: BTreeMap::new(),
            standby,
            pending: Pending::default(),
            lingering: false,
            applied: Applied::default(),
            settling: Settling::new(preferred.iter().copied()),
            barrier: None,
            refused: None,
            retry_wait: RETRY_FIRST,
            retry_armed: false,
        };
        for partition in &preferred {
            consuming.consume(*partition).await?;
        }
        tracing::info!(
            partitions = ?preferred,
            standby = ?consuming.standby,
            "consuming from RabbitMQ"
        );
        Ok(consuming)
    }

    /// Consumes one partition queue on a channel of its own.
    async fn consume(&mut self, partition: u16) -> Result<(), SessionError> {
        let (channel, deliveries) =
            consume(&self.connection, &self.context.settings, partition).await?;
        self.channels.insert(partition, channel);
        self.consumers.push(Box::pin(deliveries));
        Ok(())
    }

    /// Takes a delivery: a valid event joins the pending batch (applied once it is full), an
    /// invalid one is dead-lettered. Returns whether the batch has just started lingering.
    async fn delivered(
        &mut self,
        partition: u16,
        delivery: Delivery,
    ) -> Result<bool, SessionError> {
        let (context, settings) = (self.context, &self.context.settings);
        context.metrics.bus_deliveries.inc();
        context.metrics.bus_unacked.inc();
        if delivery.redelivered {
            context.metrics.bus_redeliveries.inc();
        }
        // A standby subscription taking over a dead instance's partition starts with
        // redeliveries, whatever its backlog reads said before.
        self.settling.received(partition, delivery.redelivered);
        let content_type = delivery
            .properties
            .content_type()
            .as_ref()
            .map(|value| value.as_str());
        let parsed = message::parse(
            &delivery.data,
            delivery.routing_key.as_str(),
            content_type,
            settings.max_message_bytes,
        )
        .and_then(|event| message::check_clock(event, context.max_future_skew));
        match parsed {
            Ok(event) => {
                self.pending.deliveries.push(EventDelivery {
                    event,
                    redelivered: delivery.redelivered,
                    source: partition,
                });
                self.pending.newest.insert(partition, delivery.acker);
                self.pending
                    .newest_fresh
                    .insert(partition, !delivery.redelivered);
                self.pending.count += 1;
                if self.pending.deliveries.len() >= settings.batch_size {
                    self.refused = apply(
                        context,
                        &mut self.pending,
                        &mut self.applied,
                        &mut self.settling,
                    )
                    .await?;
                } else if !self.lingering {
                    self.lingering = true;
                    return Ok(true);
                }
            }
            Err(rejection) => {
                dead_letter(&self.dead_letters, settings, &delivery, &rejection).await?;
                delivery
                    .acker
                    .ack(BasicAckOptions { multiple: false })
                    .await?;
                context.metrics.bus_unacked.dec();
                context
                    .metrics
                    .events_rejected
                    .with_label_values(&[rejection.reason])
                    .inc();
                tracing::debug!(reason = rejection.reason, detail = %rejection.detail, "dead-lettered a message");
            }
        }
        Ok(false)
    }

    /// Counts a dead letter the broker made itself: one with `x-death` (the broker's record of
    /// why) and no reason of ours, which the consumer counted when it dead-lettered the
    /// message. Those are the messages delivered `delivery_limit` times without an
    /// acknowledgement (an instance crashing on them, say).
    async fn count_dead_letter(&mut self, letter: Delivery) -> Result<(), SessionError> {
        let headers = letter.properties.headers().clone().unwrap_or_default();
        let headers = headers.inner();
        if headers.contains_key("x-death") && !headers.contains_key(topology::REASON_HEADER) {
            self.context
                .metrics
                .events_rejected
                .with_label_values(&[message::DELIVERY_LIMIT])
                .inc();
            tracing::warn!(
                routing_key = %letter.routing_key,
                "the broker dead-lettered a message at the delivery limit"
            );
        }
        letter
            .acker
            .ack(BasicAckOptions { multiple: false })
            .await?;
        Ok(())
    }

    /// A partial batch waited long enough: apply it.
    async fn linger_over(&mut self) -> Result<(), SessionError> {
        self.lingering = false;
        self.refused = apply(
            self.context,
            &mut self.pending,
            &mut self.applied,
            &mut self.settling,
        )
        .await?;
        Ok(())
    }

    /// Retries what the engine refused, as redeliveries.
    async fn retry_refused(&mut self) -> Result<(), SessionError> {
        let mut batch = self.refused.take().expect("guarded");
        self.retry_armed = false;
        self.refused = apply(
            self.context,
            &mut batch,
            &mut self.applied,
            &mut self.settling,
        )
        .await?;
        if self.refused.is_none() {
            tracing::info!("the store answers again; taking deliveries");
            self.retry_wait = RETRY_FIRST;
            self.context.ready.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// When a refused batch waits and no retry is set, how long until the next one (backing
    /// off exponentially); deliveries and readiness wait meanwhile.
    fn arm_retry(&mut self) -> Option<Duration> {
        let batch = self.refused.as_ref()?;
        if self.retry_armed {
            return None;
        }
        self.retry_armed = true;
        if self.retry_wait == RETRY_FIRST {
            tracing::warn!(
                events = batch.deliveries.len(),
                "the store could not load the state of a batch; deliveries wait until it answers"
            );
        }
        self.context.ready.store(false, Ordering::Relaxed);
        let wait = self.retry_wait;
        self.retry_wait = (self.retry_wait * 2).min(RETRY_MAX);
        Some(wait)
    }

    /// Starts a flush covering everything applied so far.
    fn start_barrier(&mut self) {
        let (mut covered, engine) = (
            std::mem::take(&mut self.applied),
            self.context.engine.clone(),
        );
        covered.settled = self.settling.may_forget(self.refused.is_some());
        self.barrier = Some(Box::pin(async move {
            let result = engine.flush(false).await;
            (covered, result)
        }));
    }

    /// A flush ended: acknowledge what it made durable, or keep it for the next one.
    async fn barrier_done(
        &mut self,
        covered: Applied,
        result: Result<usize, EngineError>,
    ) -> Result<(), SessionError> {
        self.barrier = None;
        match result {
            Ok(_) => acknowledge(self.context, &self.channels, covered).await,
            // Another instance owns a partition now: reconnect, so that the broker redelivers
            // what this one applied and could not write, and the engine drops its state.
            Err(error @ EngineError::Store(StoreError::Fenced(_))) => Err(error.into()),
            // Not acknowledged: the broker stops delivering at the prefetch limit, which bounds
            // memory until the store is back.
            Err(error) => {
                tracing::warn!(%error, "flush failed; holding acknowledgements");
                // Acknowledged with what is applied next, after a flush that works.
                let newer = std::mem::replace(&mut self.applied, covered);
                self.applied.count += newer.count;
                self.applied.newest.extend(newer.newest);
                Ok(())
            }
        }
    }

    /// Subscribes to the other instances' partitions, idle until their owner stops.
    async fn stand_by(&mut self) -> Result<(), SessionError> {
        for partition in self.standby.clone() {
            self.consume(partition).await?;
            self.settling.subscribed(partition);
        }
        tracing::info!(partitions = ?self.standby, "standing by for other instances' partitions");
        Ok(())
    }

    /// Reads each partition's backlog for the gauge; two empty reads in a row settle it.
    async fn read_backlog(&mut self) -> Result<(), SessionError> {
        let settings = &self.context.settings;
        for partition in 0..settings.partitions {
            let queue = settings.queue(partition);
            let declared = self
                .channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            self.context
                .metrics
                .bus_backlog
                .with_label_values(&[&partition.to_string()])
                .set(i64::from(declared.message_count()));
            let holding = self.pending.newest.contains_key(&partition)
                || self
                    .refused
                    .as_ref()
                    .is_some_and(|refused| refused.newest.contains_key(&partition));
            self.settling
                .backlog(partition, declared.message_count(), holding);
        }
        Ok(())
    }

    /// Applies what is pending, makes everything applied durable, acknowledges it and closes
    /// the connection. Whatever the engine refuses now, the broker redelivers to the next
    /// consumer.
    async fn stop(mut self) -> Result<(), SessionError> {
        let context = self.context;
        apply(
            context,
            &mut self.pending,
            &mut self.applied,
            &mut self.settling,
        )
        .await?;
        if let Some(running) = self.barrier.take() {
            let (covered, result) = running.await;
            if result.is_ok() {
                acknowledge(context, &self.channels, covered).await?;
            }
        }
        if self.applied.count > 0 {
            match context.engine.flush(false).await {
                Ok(_) => {
                    let applied = std::mem::take(&mut self.applied);
                    acknowledge(context, &self.channels, applied).await?;
                }
                Err(error) => {
                    tracing::warn!(%error, "final flush failed; the broker redelivers what was not acknowledged")
                }
            }
        }
        let _ = self.connection.close(200, "shutting down".into()).await;
        Ok(())
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
    settling: &mut Settling,
) -> Result<Option<Pending>, SessionError> {
    if pending.deliveries.is_empty() {
        return Ok(None);
    }
    let Pending {
        deliveries,
        newest,
        newest_fresh,
        count,
    } = std::mem::take(pending);
    match context.engine.ingest_deliveries(deliveries).await {
        Ok(_) => {
            applied.count += count;
            applied.newest.extend(newest);
            settling.applied(&newest_fresh);
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
            newest_fresh,
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
