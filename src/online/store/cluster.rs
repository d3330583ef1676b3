//! The connection to a ScyllaDB (or Cassandra) cluster, `[store.scylla]`: one driver session
//! builder shared by the store, the schema commands and the tests, so that the store and its
//! schema depend on it rather than on each other.

use std::time::Duration;

use anyhow::Result;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

use crate::config::ScyllaSettings;

/// Connects to the configured contact points, with the driver's default 30 s request timeout
/// (the store's statements carry their own), for schema work and the store.
pub async fn connect(settings: &ScyllaSettings) -> Result<Session> {
    SessionBuilder::new()
        .known_nodes(&settings.nodes)
        .connection_timeout(Duration::from_millis(settings.connect_timeout_ms))
        .build()
        .await
        .map_err(|error| {
            // The driver's message already holds its causes.
            anyhow::anyhow!(
                "ScyllaDB/Cassandra is not reachable at {} (store.scylla.nodes): {error}",
                settings.nodes.join(", ")
            )
        })
}
