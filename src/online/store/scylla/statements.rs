//! The statements the store prepares once when it opens: schema/queries.cql by name.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use scylla::client::execution_profile::ExecutionProfileHandle;
use scylla::client::session::Session;
use scylla::statement::Consistency;
use scylla::statement::prepared::PreparedStatement;

use crate::config::{ConsistencyLevel, ScyllaSettings};
use crate::online::store::schema;

/// The statements, each after a `-- name:` line, with a `{keyspace}` placeholder.
pub const QUERIES_CQL: &str = include_str!("../../../../schema/queries.cql");

/// The prepared statements, named as in schema/queries.cql.
pub(super) struct Statements {
    pub(super) delete_session: PreparedStatement,
    pub(super) insert_session: PreparedStatement,
    pub(super) insert_session_product: PreparedStatement,
    pub(super) select_session: PreparedStatement,
    pub(super) insert_user: PreparedStatement,
    pub(super) insert_user_product: PreparedStatement,
    pub(super) select_user: PreparedStatement,
    pub(super) insert_product: PreparedStatement,
    pub(super) select_product: PreparedStatement,
    pub(super) insert_category: PreparedStatement,
    pub(super) select_category: PreparedStatement,
    pub(super) select_index_entry: PreparedStatement,
    pub(super) insert_index_open: PreparedStatement,
    pub(super) delete_index_open: PreparedStatement,
    pub(super) insert_index_ended: PreparedStatement,
    pub(super) select_open_sessions: PreparedStatement,
    pub(super) select_tally: PreparedStatement,
    pub(super) insert_tally: PreparedStatement,
    pub(super) select_tallies: PreparedStatement,
    pub(super) select_sources: PreparedStatement,
    pub(super) select_partition_owner: PreparedStatement,
    pub(super) claim_new_partition: PreparedStatement,
    pub(super) claim_partition: PreparedStatement,
    pub(super) extend_partition: PreparedStatement,
    pub(super) fence_partition: PreparedStatement,
}

/// The statements of schema/queries.cql by name, for `keyspace`.
pub fn queries(keyspace: &str) -> BTreeMap<String, String> {
    let mut queries = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in QUERIES_CQL.lines() {
        if let Some(name) = line.strip_prefix("-- name:") {
            queries.extend(current.take());
            current = Some((name.trim().to_owned(), String::new()));
        } else if let Some((_, text)) = current.as_mut() {
            let code = schema::strip_comments(line);
            if !code.trim().is_empty() {
                text.push_str(code.trim());
                text.push(' ');
            }
        }
    }
    queries.extend(current);
    queries
        .into_iter()
        .map(|(name, text)| {
            let statement = text.trim().trim_end_matches(';').trim();
            (name, statement.replace("{keyspace}", keyspace))
        })
        .collect()
}

pub(super) fn consistency(level: ConsistencyLevel) -> Consistency {
    match level {
        ConsistencyLevel::One => Consistency::One,
        ConsistencyLevel::Two => Consistency::Two,
        ConsistencyLevel::Three => Consistency::Three,
        ConsistencyLevel::Quorum => Consistency::Quorum,
        ConsistencyLevel::All => Consistency::All,
        ConsistencyLevel::LocalQuorum => Consistency::LocalQuorum,
        ConsistencyLevel::EachQuorum => Consistency::EachQuorum,
        ConsistencyLevel::LocalOne => Consistency::LocalOne,
    }
}

impl Statements {
    pub(super) async fn prepare(
        session: &Session,
        settings: &ScyllaSettings,
        read: &ExecutionProfileHandle,
        write: &ExecutionProfileHandle,
    ) -> Result<Statements> {
        let queries = queries(&settings.keyspace);
        let prepare = async |name: &str| -> Result<PreparedStatement> {
            let text = queries
                .get(name)
                .with_context(|| format!("schema/queries.cql has no statement {name}"))?;
            let mut statement = session.prepare(text.as_str()).await.with_context(|| {
                format!(
                    "failed to prepare {name} in keyspace {}; is the schema applied (`propensity schema apply`)?",
                    settings.keyspace
                )
            })?;
            let profile = if name.starts_with("select_") {
                read
            } else {
                write
            };
            statement.set_execution_profile_handle(Some(profile.clone()));
            if name.ends_with("_partition") {
                // Lightweight transactions: a retry could see its own first attempt.
                statement.set_is_idempotent(false);
            } else {
                // Plain values under explicit timestamps: running one twice changes nothing.
                statement.set_is_idempotent(true);
            }
            if name == "select_partition_owner" {
                // What the claims' transactions decided, not what one replica saw.
                statement.set_consistency(Consistency::LocalSerial);
            }
            Ok(statement)
        };
        Ok(Statements {
            delete_session: prepare("delete_session").await?,
            insert_session: prepare("insert_session").await?,
            insert_session_product: prepare("insert_session_product").await?,
            select_session: prepare("select_session").await?,
            insert_user: prepare("insert_user").await?,
            insert_user_product: prepare("insert_user_product").await?,
            select_user: prepare("select_user").await?,
            insert_product: prepare("insert_product").await?,
            select_product: prepare("select_product").await?,
            insert_category: prepare("insert_category").await?,
            select_category: prepare("select_category").await?,
            select_index_entry: prepare("select_index_entry").await?,
            insert_index_open: prepare("insert_index_open").await?,
            delete_index_open: prepare("delete_index_open").await?,
            insert_index_ended: prepare("insert_index_ended").await?,
            select_open_sessions: prepare("select_open_sessions").await?,
            select_tally: prepare("select_tally").await?,
            insert_tally: prepare("insert_tally").await?,
            select_tallies: prepare("select_tallies").await?,
            select_sources: prepare("select_sources").await?,
            select_partition_owner: prepare("select_partition_owner").await?,
            claim_new_partition: prepare("claim_new_partition").await?,
            claim_partition: prepare("claim_partition").await?,
            extend_partition: prepare("extend_partition").await?,
            fence_partition: prepare("fence_partition").await?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statement_is_named_and_in_the_keyspace() {
        let queries = queries("ks");
        assert_eq!(queries.len(), 25, "{:?}", queries.keys());
        for (name, statement) in &queries {
            assert!(statement.contains(" ks."), "{name}: {statement}");
            assert!(!statement.contains("--"), "{name}: {statement}");
            assert!(!statement.ends_with(';'), "{name}: {statement}");
        }
        assert!(queries["select_session"].starts_with("SELECT session_id,"));
    }
}
