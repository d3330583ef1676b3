//! The domain of `propensity`: clickstream events, the feature state machines that training and
//! serving share, and the actix actors that own them online.
//!
//! Plain Rust, no actors:
//! - [`event`]: the REES46 event, its CSV and JSON forms and their parse errors.
//! - [`features`]: one state machine per entity (session, user, product, category) and the
//!   feature vector built from them.
//! - [`delivery`]: what the bus says of each event, the delivery guards that ride beside the
//!   states ([`delivery::Stored`]), and the three steps every event goes through (user admission,
//!   session, user history), shared by training replay and the actors.
//! - [`clock`]: event time as far as events can be trusted, the watermark that ends sessions.
//! - [`foreign`]: read-only copies of the users and sessions another instance owns.
//! - [`replay`]: history replay's single-threaded engine, as training uses it.
//! - [`outcomes`]: how sessions ended, tallied by hour of event time, and the index of live
//!   sessions their owners end them by.
//! - [`store`]: the store and observer seams the actors talk through.
//! - [`write_behind`]: the one flushing mechanism of every stateful actor.
//!
//! The actors, each in its own file, and how they start:
//! - [`lifecycle`]: activating, active, passivating: how an entity actor lives.
//! - [`board`]: the states active entities publish for scores to read without a message.
//! - [`user`], [`session`]: `UserActor` and `SessionActor`, one per live user and session.
//! - [`shard`]: `ShardActor`, the registry and router of one partition of the users.
//! - [`catalog`]: `CatalogActor`, one partition of the products (and every category).
//! - [`messages`]: payloads that cross actors.
//! - [`engine`]: `Engine`, the handle that starts the arbiters, routes batches and gathers
//!   features.

pub mod board;
pub mod catalog;
pub mod clock;
pub mod delivery;
pub mod engine;
pub mod event;
pub mod features;
pub mod foreign;
pub mod lifecycle;
pub mod messages;
pub mod outcomes;
pub mod replay;
pub mod session;
pub mod shard;
pub mod store;
pub mod user;
pub mod write_behind;

pub use delivery::{Delivery, Stored};
pub use engine::{Engine, EngineError, EngineStats};
pub use event::{Event, EventType, Millis, ParseError};
pub use features::SessionKey;
pub use replay::{Applied, ReplayEngine};
pub use store::{NoObserver, Observer, StateBatch, StateStore, StoreError};
