//! Event sources besides `POST /v1/events`: RabbitMQ through lapin. The topology, the consumer
//! that feeds the actor engine with at-least-once delivery, the confirmed publisher, and the
//! checks that send a bad message to the dead-letter queue with its reason.

pub mod consumer;
pub mod message;
pub mod publisher;
mod settling;
pub mod topology;

pub use consumer::ConsumerHandle;
pub use publisher::{PublishError, Publisher};
