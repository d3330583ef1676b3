//! `propensity`: real-time purchase propensity and cart-abandonment monitoring.
//!
//! The domain (events, feature state machines, actors) lives in the `propensity-actors` crate;
//! this crate is the service and its command line around it:
//! - [`config`]: the settings tree and its loading from config/ and the environment.
//! - [`generate`]: the synthetic REES46 clickstream and its oracle probabilities.
//! - [`replay`]: event-time-ordered streams over CSV files, sorting unsorted ones.
//! - [`train`]: history replay through the feature engine, labels, time split, fit, report.
//! - [`model`]: the decision tree, its calibration, scoring, explanation and metrics.
//! - [`scoring`]: the scoring actor, bands and actions, model hot reload.
//! - [`store`]: online store implementations (embedded redb).
//! - [`ingest`]: RabbitMQ topology, consumer (at-least-once, dead letters) and publisher.
//! - [`http`]: the actix-web API.
//! - [`metrics`]: every Prometheus metric.
//! - [`serve`]: starts and stops the whole service.
//! - [`demo`]: generate, train, serve and replay in one command.

pub mod config;
pub mod demo;
pub mod generate;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod model;
pub mod replay;
pub mod scoring;
pub mod serve;
pub mod store;
pub mod train;
