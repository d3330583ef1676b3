//! The domain of `propensity`: clickstream events, the feature state machines that training and
//! serving share, and the actix actors that own them online.
//!
//! - [`event`]: the REES46 event, its CSV and JSON forms and their parse errors.
//! - [`features`]: one state machine per entity and the feature vector built from them.
//! - [`engine`]: the user side, the catalog and the single-threaded engine used by training.
//! - [`store`]: the store and observer seams the actors talk through.
//! - [`shard`], [`catalog`]: the actors that own the user side and the catalog online.
//! - [`router`]: the handle that starts the actors, routes events and gathers features.

pub mod catalog;
pub mod engine;
pub mod event;
pub mod features;
pub mod router;
pub mod shard;
pub mod store;

pub use engine::{Applied, Catalog, FeatureEngine, SessionKey, UserSide};
pub use event::{Event, EventType, Millis, ParseError};
pub use router::{Engine, EngineError, EngineStats};
pub use store::{NoObserver, Observer, StateBatch, StateStore, StoreError};
