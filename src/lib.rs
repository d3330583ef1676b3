//! `propensity`: real-time purchase propensity and cart-abandonment monitoring.
//!
//! The domain (events, feature state machines, actors) lives in the `propensity-actors` crate;
//! this crate is the service and its command line around it, in three roles:
//!
//! - [`online`]: the running service.
//!   - [`online::serve`]: starts and stops the whole service.
//!   - [`online::http`]: the actix-web API.
//!   - [`online::ingest`]: RabbitMQ topology, consumer (at-least-once, dead letters), publisher.
//!   - [`online::store`]: the online stores behind the actors' `StateStore` seam: embedded redb,
//!     or ScyllaDB/Cassandra with its schema.
//!   - [`online::scoring`]: the scoring actor, bands and actions, model hot reload.
//!   - [`online::drift`]: live feature distributions against the training ones (PSI).
//! - [`offline`]: training on history.
//!   - [`offline::history`]: the history reader: CSV files as one event-time-ordered stream,
//!     sorting unsorted ones.
//!   - [`offline::train`]: history replay through the feature engine, labels, time split, fit,
//!     report.
//!   - [`offline::model`]: the decision tree, its calibration, scoring, explanation and metrics
//!     (the online scoring actor serves it).
//!   - [`offline::value`]: customer value from purchase histories: per-customer summaries, the
//!     BG/NBD and Gamma-Gamma models (fit, `P(alive)`, expected purchases and spend), the holdout
//!     check and the `value fit` command.
//! - [`tools`]: commands around the two.
//!   - [`tools::generate`]: the synthetic REES46 clickstream and its oracle probabilities.
//!   - [`tools::describe`]: what each feature is and how the model saw it in training.
//!   - [`tools::backfill`]: a new online store rebuilt from history through the actors.
//!   - [`tools::demo`]: generate, train, serve and replay in one command.
//!
//! Shared by all three: [`config`] (the settings tree and its loading from config/ and the
//! environment) and [`metrics`] (every Prometheus metric).

pub mod config;
pub mod metrics;
pub mod offline;
pub mod online;
pub mod tools;
