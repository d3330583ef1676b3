//! Online stores behind the actors' `StateStore` seam: an embedded redb file by default, or
//! ScyllaDB (or Cassandra) with its schema in schema/propensity.cql.

pub mod cluster;
pub mod embedded;
pub mod schema;
pub mod scylla;

use std::sync::Arc;

use anyhow::Result;
use propensity_actors::store::StateStore;

use crate::config::{StoreKind, StoreSettings};

pub use embedded::EmbeddedStore;
pub use scylla::ScyllaStore;

/// Opens the configured store.
pub async fn open(settings: &StoreSettings) -> Result<Arc<dyn StateStore>> {
    match settings.kind {
        StoreKind::Embedded => Ok(Arc::new(EmbeddedStore::open(&settings.embedded_path)?)),
        StoreKind::Scylla => Ok(Arc::new(ScyllaStore::open(&settings.scylla).await?)),
    }
}
