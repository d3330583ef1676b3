//! The ScyllaDB store's schema: schema/propensity.cql filled in from `[store.scylla]`, and applying
//! it idempotently. Applying creates what is missing, alters the keyspace's replication when the
//! settings changed, and adds the columns an older keyspace lacks; it refuses, naming the column,
//! what CQL cannot change in place (a key or a column's type). `propensity schema apply` runs it,
//! and so does the service at start-up when `store.scylla.apply_schema_on_start` is set.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use scylla::client::session::Session;

use crate::config::{ReplicationStrategy, ScyllaSettings};

/// The schema, with `{keyspace}` and `{replication}` placeholders.
pub const SCHEMA_CQL: &str = include_str!("../../../schema/propensity.cql");

const SIMPLE_STRATEGY: &str = "org.apache.cassandra.locator.SimpleStrategy";
const NETWORK_TOPOLOGY_STRATEGY: &str = "org.apache.cassandra.locator.NetworkTopologyStrategy";

/// Where a column sits in its table, named as `system_schema.columns.kind` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnKind {
    PartitionKey,
    Clustering,
    Static,
    Regular,
}

impl ColumnKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::PartitionKey => "partition_key",
            Self::Clustering => "clustering",
            Self::Static => "static",
            Self::Regular => "regular",
        }
    }
}

/// A column as the schema declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnDefinition {
    pub name: String,
    /// The CQL type without spaces, e.g. `frozen<list<bigint>>`.
    pub cql_type: String,
    pub kind: ColumnKind,
}

/// A table as the schema declares it.
#[derive(Clone, Debug)]
pub struct TableDefinition {
    pub name: String,
    pub columns: Vec<ColumnDefinition>,
    /// Its `CREATE TABLE IF NOT EXISTS` statement.
    pub create: String,
}

/// The schema of one keyspace.
#[derive(Clone, Debug)]
pub struct Schema {
    pub keyspace: String,
    /// `CREATE KEYSPACE IF NOT EXISTS ...` with `{replication}` still to fill in.
    keyspace_statement: String,
    pub tables: Vec<TableDefinition>,
}

impl Schema {
    /// The schema for `keyspace`.
    pub fn for_keyspace(keyspace: &str) -> Result<Schema> {
        let text = strip_comments(SCHEMA_CQL).replace("{keyspace}", keyspace);
        let mut keyspace_statement = None;
        let mut tables = Vec::new();
        for statement in text
            .split(';')
            .map(str::trim)
            .filter(|statement| !statement.is_empty())
        {
            let normalized = statement.split_whitespace().collect::<Vec<_>>().join(" ");
            if normalized.starts_with("CREATE KEYSPACE IF NOT EXISTS ") {
                keyspace_statement = Some(normalized);
            } else if normalized.starts_with("CREATE TABLE IF NOT EXISTS ") {
                tables.push(parse_table(keyspace, &normalized)?);
            } else {
                bail!("schema/propensity.cql has an unexpected statement: {normalized}");
            }
        }
        Ok(Schema {
            keyspace: keyspace.to_owned(),
            keyspace_statement: keyspace_statement
                .context("schema/propensity.cql creates no keyspace")?,
            tables,
        })
    }

    /// The table named `name`.
    pub fn table(&self, name: &str) -> Option<&TableDefinition> {
        self.tables.iter().find(|table| table.name == name)
    }

    /// Every statement, in order, with the replication filled in: what `cqlsh` would run.
    pub fn statements(&self, replication: &BTreeMap<String, String>) -> Vec<String> {
        std::iter::once(
            self.keyspace_statement
                .replace("{replication}", &replication_cql(replication)),
        )
        .chain(self.tables.iter().map(|table| table.create.clone()))
        .collect()
    }
}

/// The text without its `--` comments.
pub(crate) fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|line| line.split_once("--").map_or(line, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Splits at the commas outside any parentheses or angle brackets.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (index, character) in text.char_indices() {
        match character {
            '(' | '<' => depth += 1,
            ')' | '>' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(text[start..index].trim());
                start = index + 1;
            }
            _ => {}
        }
    }
    parts.push(text[start..].trim());
    parts.retain(|part| !part.is_empty());
    parts
}

fn parse_table(keyspace: &str, statement: &str) -> Result<TableDefinition> {
    let prefix = format!("CREATE TABLE IF NOT EXISTS {keyspace}.");
    let rest = statement
        .strip_prefix(&prefix)
        .with_context(|| format!("a table outside keyspace {keyspace}: {statement}"))?;
    let open = rest.find('(').context("a table without columns")?;
    let name = rest[..open].trim().to_owned();
    let mut depth = 0;
    let mut close = None;
    for (index, character) in rest.char_indices().skip(open) {
        match character {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    close = Some(index);
                    break;
                }
            }
            _ => {}
        }
    }
    let close = close.with_context(|| format!("table {name}: unbalanced parentheses"))?;
    let mut columns = Vec::new();
    let mut key = None;
    for item in split_top_level(&rest[open + 1..close]) {
        if let Some(primary_key) = item.strip_prefix("PRIMARY KEY") {
            key = Some(parse_primary_key(primary_key)?);
            continue;
        }
        let tokens: Vec<&str> = item.split_whitespace().collect();
        let (is_static, type_tokens) = match tokens.split_last() {
            Some((&"STATIC", rest)) => (true, &rest[1.min(rest.len())..]),
            _ => (false, &tokens[1.min(tokens.len())..]),
        };
        if type_tokens.is_empty() {
            bail!("table {name}: column {item:?} has no type");
        }
        columns.push(ColumnDefinition {
            name: tokens[0].to_owned(),
            cql_type: type_tokens.concat(),
            kind: if is_static {
                ColumnKind::Static
            } else {
                ColumnKind::Regular
            },
        });
    }
    let (partition, clustering) =
        key.with_context(|| format!("table {name} has no PRIMARY KEY"))?;
    for column in &mut columns {
        if partition.contains(&column.name) {
            column.kind = ColumnKind::PartitionKey;
        } else if clustering.contains(&column.name) {
            column.kind = ColumnKind::Clustering;
        }
    }
    for key_column in partition.iter().chain(&clustering) {
        if !columns.iter().any(|column| &column.name == key_column) {
            bail!("table {name}: key column {key_column} is not declared");
        }
    }
    Ok(TableDefinition {
        name,
        columns,
        create: statement.to_owned(),
    })
}

/// `((a, b), c)` or `(a, c)`: the partition key and clustering columns.
fn parse_primary_key(text: &str) -> Result<(Vec<String>, Vec<String>)> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|text| text.strip_suffix(')'))
        .with_context(|| format!("PRIMARY KEY {text} is not parenthesized"))?;
    let parts = split_top_level(inner);
    let (first, clustering) = parts.split_first().context("an empty PRIMARY KEY")?;
    let partition = match first.strip_prefix('(').and_then(|p| p.strip_suffix(')')) {
        Some(list) => split_top_level(list)
            .into_iter()
            .map(str::to_owned)
            .collect(),
        None => vec![(*first).to_owned()],
    };
    Ok((
        partition,
        clustering
            .iter()
            .map(|column| (*column).to_owned())
            .collect(),
    ))
}

/// Renders a replication map as CQL.
fn replication_cql(replication: &BTreeMap<String, String>) -> String {
    let entries: Vec<String> = replication
        .iter()
        .map(|(key, value)| {
            let value = if key == "class" {
                value.rsplit('.').next().unwrap_or(value)
            } else {
                value
            };
            format!("'{key}': '{value}'")
        })
        .collect();
    format!("{{{}}}", entries.join(", "))
}

/// The replication the settings ask for, as `system_schema.keyspaces` shows it.
/// `datacenters` are the cluster's, used with NetworkTopologyStrategy when the settings list none.
pub fn desired_replication(
    settings: &ScyllaSettings,
    cluster_datacenters: &[String],
) -> Result<BTreeMap<String, String>> {
    let factor = settings.replication_factor.to_string();
    let mut replication = BTreeMap::new();
    match settings.replication_strategy {
        ReplicationStrategy::SimpleStrategy => {
            replication.insert("class".to_owned(), SIMPLE_STRATEGY.to_owned());
            replication.insert("replication_factor".to_owned(), factor);
        }
        ReplicationStrategy::NetworkTopologyStrategy => {
            replication.insert("class".to_owned(), NETWORK_TOPOLOGY_STRATEGY.to_owned());
            let datacenters = if settings.datacenters.is_empty() {
                cluster_datacenters
            } else {
                &settings.datacenters
            };
            if datacenters.is_empty() {
                bail!(
                    "NetworkTopologyStrategy needs datacenters: the cluster reported none; list them in store.scylla.datacenters"
                );
            }
            for datacenter in datacenters {
                replication.insert(datacenter.clone(), factor.clone());
            }
        }
    }
    Ok(replication)
}

/// Whether two replication maps mean the same (the class may be short or fully qualified).
fn same_replication(current: &BTreeMap<String, String>, wanted: &BTreeMap<String, String>) -> bool {
    let short = |map: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        map.iter()
            .map(|(key, value)| {
                let value = if key == "class" {
                    value.rsplit('.').next().unwrap_or(value).to_owned()
                } else {
                    value.clone()
                };
                (key.clone(), value)
            })
            .collect()
    };
    short(current) == short(wanted)
}

async fn cluster_datacenters(session: &Session) -> Result<Vec<String>> {
    let mut datacenters = Vec::new();
    for query in [
        "SELECT data_center FROM system.local",
        "SELECT data_center FROM system.peers",
    ] {
        let rows = session
            .query_unpaged(query, ())
            .await
            .with_context(|| format!("failed to run {query}"))?
            .into_rows_result()
            .with_context(|| format!("{query} returned no rows"))?;
        for row in rows.rows::<(Option<String>,)>()? {
            if let (Some(datacenter),) = row? {
                datacenters.push(datacenter);
            }
        }
    }
    datacenters.sort();
    datacenters.dedup();
    Ok(datacenters)
}

/// Drops the keyspace of `settings` if it exists, for tests and benchmark runs that made one of
/// their own. Blocks: it runs on a thread and runtime of its own, so it may be called from inside
/// another runtime (a `Drop` in an async test, say).
pub fn drop_keyspace(settings: &ScyllaSettings) -> Result<()> {
    let keyspace = settings.keyspace.clone();
    let settings = settings.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let session = crate::online::store::cluster::connect(&settings).await?;
            session
                .query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", settings.keyspace), ())
                .await
                .with_context(|| format!("failed to drop keyspace {}", settings.keyspace))?;
            Ok(())
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread dropping keyspace {keyspace} panicked"))?
}

/// Creates or upgrades the keyspace and tables; returns one line per thing it looked at, saying
/// what it did.
pub async fn apply(session: &Session, settings: &ScyllaSettings) -> Result<Vec<String>> {
    let schema = Schema::for_keyspace(&settings.keyspace)?;
    let keyspace = &schema.keyspace;
    let mut report = Vec::new();
    let datacenters = match settings.replication_strategy {
        ReplicationStrategy::NetworkTopologyStrategy if settings.datacenters.is_empty() => {
            cluster_datacenters(session).await?
        }
        _ => Vec::new(),
    };
    let wanted = desired_replication(settings, &datacenters)?;
    let current = session
        .query_unpaged(
            "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = ?",
            (keyspace,),
        )
        .await
        .context("failed to read system_schema.keyspaces")?
        .into_rows_result()?
        .maybe_first_row::<(BTreeMap<String, String>,)>()?;
    match current {
        None => {
            session
                .query_unpaged(schema.statements(&wanted)[0].clone(), ())
                .await
                .with_context(|| format!("failed to create keyspace {keyspace}"))?;
            report.push(format!(
                "keyspace {keyspace}: created with replication {}",
                replication_cql(&wanted)
            ));
        }
        Some((current,)) if same_replication(&current, &wanted) => {
            report.push(format!(
                "keyspace {keyspace}: exists, replication {} as configured",
                replication_cql(&wanted)
            ));
        }
        Some((current,)) => {
            session
                .query_unpaged(
                    format!(
                        "ALTER KEYSPACE {keyspace} WITH replication = {}",
                        replication_cql(&wanted)
                    ),
                    (),
                )
                .await
                .with_context(|| {
                    format!("failed to alter the replication of keyspace {keyspace}")
                })?;
            report.push(format!(
                "keyspace {keyspace}: replication changed from {} to {}; run `nodetool repair -full {keyspace}` on every node so existing rows reach their new replicas",
                replication_cql(&current),
                replication_cql(&wanted)
            ));
        }
    }
    for table in &schema.tables {
        report.extend(apply_table(session, keyspace, table).await?);
    }
    Ok(report)
}

async fn apply_table(
    session: &Session,
    keyspace: &str,
    table: &TableDefinition,
) -> Result<Vec<String>> {
    let name = format!("{keyspace}.{}", table.name);
    let rows = session
        .query_unpaged(
            "SELECT column_name, kind, type FROM system_schema.columns WHERE keyspace_name = ? AND table_name = ?",
            (keyspace, &table.name),
        )
        .await
        .context("failed to read system_schema.columns")?
        .into_rows_result()?;
    let mut existing: BTreeMap<String, (String, String)> = BTreeMap::new();
    for row in rows.rows::<(String, String, String)>()? {
        let (column, kind, cql_type) = row?;
        existing.insert(column, (kind, cql_type.replace(' ', "").to_lowercase()));
    }
    if existing.is_empty() {
        session
            .query_unpaged(table.create.clone(), ())
            .await
            .with_context(|| format!("failed to create table {name}"))?;
        return Ok(vec![format!("table {name}: created")]);
    }
    let mut report = Vec::new();
    for column in &table.columns {
        let wanted_type = column.cql_type.to_lowercase();
        match existing.get(&column.name) {
            Some((kind, cql_type)) => {
                if kind != column.kind.as_str() || cql_type != &wanted_type {
                    bail!(
                        "table {name}: column {} is a {kind} {cql_type} in the database but a {} {wanted_type} in the schema; CQL cannot change that in place, so migrate the table by hand",
                        column.name,
                        column.kind.as_str()
                    );
                }
            }
            None if matches!(column.kind, ColumnKind::Regular | ColumnKind::Static) => {
                let suffix = if column.kind == ColumnKind::Static {
                    " STATIC"
                } else {
                    ""
                };
                session
                    .query_unpaged(
                        format!(
                            "ALTER TABLE {name} ADD {} {}{suffix}",
                            column.name, column.cql_type
                        ),
                        (),
                    )
                    .await
                    .with_context(|| format!("failed to add column {} to {name}", column.name))?;
                report.push(format!(
                    "table {name}: added column {} {}{suffix}",
                    column.name, column.cql_type
                ));
            }
            None => bail!(
                "table {name}: key column {} is missing in the database; migrate the table by hand",
                column.name
            ),
        }
    }
    for column in existing.keys() {
        if !table
            .columns
            .iter()
            .any(|declared| &declared.name == column)
        {
            report.push(format!(
                "table {name}: column {column} is not in the schema; left in place"
            ));
        }
    }
    if report.is_empty() {
        report.push(format!("table {name}: up to date"));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_file_parses_into_its_tables() {
        let schema = Schema::for_keyspace("ks").unwrap();
        let names: Vec<&str> = schema
            .tables
            .iter()
            .map(|table| table.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "sessions",
                "users",
                "products",
                "categories",
                "session_index"
            ]
        );
        let sessions = schema.table("sessions").unwrap();
        let kind = |name: &str| {
            sessions
                .columns
                .iter()
                .find(|column| column.name == name)
                .unwrap()
                .kind
        };
        assert_eq!(kind("user_id"), ColumnKind::PartitionKey);
        assert_eq!(kind("session_hash"), ColumnKind::PartitionKey);
        assert_eq!(kind("product_id"), ColumnKind::Clustering);
        assert_eq!(kind("guard"), ColumnKind::Static);
        assert_eq!(kind("in_cart"), ColumnKind::Regular);
        let lists = sessions
            .columns
            .iter()
            .find(|column| column.name == "view_sequence")
            .unwrap();
        assert_eq!(lists.cql_type, "frozen<list<bigint>>");
        let products = schema.table("products").unwrap();
        let product_kind = |name: &str| {
            products
                .columns
                .iter()
                .find(|column| column.name == name)
                .unwrap_or_else(|| panic!("{name}"))
                .kind
        };
        assert_eq!(product_kind("source"), ColumnKind::Clustering);
        assert_eq!(product_kind("hour_revenue"), ColumnKind::Regular);
        let index = schema.table("session_index").unwrap();
        let keys: Vec<(&str, ColumnKind)> = index
            .columns
            .iter()
            .filter(|column| column.kind != ColumnKind::Regular)
            .map(|column| (column.name.as_str(), column.kind))
            .collect();
        assert_eq!(
            keys,
            [
                ("source", ColumnKind::PartitionKey),
                ("kind", ColumnKind::Clustering),
                ("a", ColumnKind::Clustering),
                ("b", ColumnKind::Clustering),
                ("epoch", ColumnKind::Static),
                ("window_end", ColumnKind::Static),
                ("owner", ColumnKind::Static)
            ]
        );
        for table in &schema.tables {
            assert!(
                table
                    .columns
                    .iter()
                    .any(|c| c.kind == ColumnKind::PartitionKey),
                "{}",
                table.name
            );
            assert!(table.create.contains("IF NOT EXISTS ks."), "{}", table.name);
        }
    }

    #[test]
    fn replication_follows_the_settings() {
        let mut settings =
            crate::config::Settings::load_with(std::path::Path::new("config"), None, Vec::new())
                .unwrap()
                .store
                .scylla;
        let simple = desired_replication(&settings, &[]).unwrap();
        assert_eq!(
            replication_cql(&simple),
            "{'class': 'SimpleStrategy', 'replication_factor': '1'}"
        );
        let statements = Schema::for_keyspace("ks").unwrap().statements(&simple);
        assert_eq!(
            statements[0],
            "CREATE KEYSPACE IF NOT EXISTS ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': '1'}"
        );
        settings.replication_strategy = ReplicationStrategy::NetworkTopologyStrategy;
        settings.replication_factor = 3;
        let topology =
            desired_replication(&settings, &["dc1".to_owned(), "dc2".to_owned()]).unwrap();
        assert_eq!(
            replication_cql(&topology),
            "{'class': 'NetworkTopologyStrategy', 'dc1': '3', 'dc2': '3'}"
        );
        assert!(desired_replication(&settings, &[]).is_err());
        let mut stored = topology.clone();
        stored.insert("class".into(), "NetworkTopologyStrategy".into());
        assert!(same_replication(&stored, &topology));
        stored.insert("dc2".into(), "1".into());
        assert!(!same_replication(&stored, &topology));
    }
}
