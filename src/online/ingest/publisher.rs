//! Publishes events to the exchange with publisher confirms: `POST /v1/events` when the bus is
//! RabbitMQ, and the load tool's `publish`. A publish resolves only once the broker has confirmed
//! every message, so a producer that saw success knows the events are in durable queues.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use propensity_actors::event::Event;
use tokio::sync::Mutex;

use crate::config::RabbitmqSettings;
use crate::online::ingest::topology;

/// Why events could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker unavailable: {0}")]
    Unavailable(#[from] lapin::Error),
    #[error("the broker refused {0} of the messages")]
    Refused(usize),
}

/// A confirmed publisher; cheap to share, reconnects on the next publish after a failure.
pub struct Publisher {
    settings: RabbitmqSettings,
    channel: Mutex<Option<(Connection, Channel)>>,
}

/// The routing key of an event: its user_id, so the consistent-hash exchange keeps each user's
/// events in one partition queue.
pub fn routing_key(event: &Event) -> String {
    event.user_id.to_string()
}

/// The message properties every event is published with.
pub fn properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
}

impl Publisher {
    /// Connects, declares the topology and enables confirms.
    pub async fn connect(settings: &RabbitmqSettings) -> Result<Publisher, PublishError> {
        let publisher = Publisher {
            settings: settings.clone(),
            channel: Mutex::new(None),
        };
        publisher.channel().await?;
        Ok(publisher)
    }

    async fn channel(&self) -> Result<Channel, PublishError> {
        let mut guard = self.channel.lock().await;
        if let Some((connection, channel)) = guard.as_ref()
            && connection.status().connected()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let connection = Connection::connect(
            &self.settings.url,
            ConnectionProperties::default().with_connection_name(
                format!("{}-publisher", self.settings.connection_name).into(),
            ),
        )
        .await?;
        let channel = connection.create_channel().await?;
        topology::declare(&channel, &self.settings).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        *guard = Some((connection, channel.clone()));
        Ok(channel)
    }

    /// Publishes the events, one message each, and waits for the broker to confirm all of them.
    pub async fn publish(&self, events: &[Event]) -> Result<(), PublishError> {
        let channel = self.channel().await?;
        let result = publish_on(&channel, &self.settings.exchange, events).await;
        if result.is_err() {
            // The next publish reconnects.
            self.channel.lock().await.take();
        }
        result
    }
}

async fn publish_on(
    channel: &Channel,
    exchange: &str,
    events: &[Event],
) -> Result<(), PublishError> {
    let mut confirms = Vec::with_capacity(events.len());
    for event in events {
        confirms.push(
            channel
                .basic_publish(
                    exchange.into(),
                    routing_key(event).as_str().into(),
                    BasicPublishOptions::default(),
                    event.to_json().as_bytes(),
                    properties(),
                )
                .await?,
        );
    }
    let mut refused = 0;
    for confirm in confirms {
        if !confirm.await?.is_ack() {
            refused += 1;
        }
    }
    if refused > 0 {
        return Err(PublishError::Refused(refused));
    }
    Ok(())
}
