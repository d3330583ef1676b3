//! The domain of `propensity`: clickstream events, the feature state machines that training and
//! serving share, and the actix actors that own them online.
//!
//! - [`event`]: the REES46 event, its CSV and JSON forms and their parse errors.
//! - [`features`]: one state machine per entity and the feature vector built from them.
//! - [`engine`]: the user side, the catalog and the single-threaded engine used by training.

pub mod engine;
pub mod event;
pub mod features;

pub use engine::{Applied, Catalog, FeatureEngine, SessionKey, UserSide};
pub use event::{Event, EventType, Millis, ParseError};
