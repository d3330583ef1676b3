//! The online service: events in (HTTP or RabbitMQ), state through the actor engine into the
//! online store, scores out over HTTP.

pub mod drift;
pub mod http;
pub mod ingest;
pub mod live;
pub mod scoring;
pub mod serve;
pub mod store;
pub mod value;
