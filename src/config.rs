//! Settings: config/default.toml, then config/<env>.toml, then `PROPENSITY__SECTION__KEY`
//! environment variables. Unknown keys and invalid values are errors that name the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// The defaults, compiled in so the binary runs from any directory.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// The demo's overlay, built in so `propensity demo` behaves the same from any directory; a
/// `demo.toml` in the config directory replaces it.
pub const DEMO_TOML: &str = include_str!("../config/demo.toml");

/// Every setting of the service.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub http: HttpSettings,
    pub engine: EngineSettings,
    pub model: ModelSettings,
    pub scoring: ScoringSettings,
    pub alerting: AlertingSettings,
    pub drift: DriftSettings,
    pub value: ValueSettings,
    pub segments: SegmentsSettings,
    pub store: StoreSettings,
    pub bus: BusSettings,
    pub logging: LoggingSettings,
}

/// The HTTP API.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub listen: String,
    pub auth_token: String,
    pub protect_metrics: bool,
    pub body_limit_bytes: usize,
    pub max_batch: usize,
    pub workers: usize,
}

/// The actor engine.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    pub shards: usize,
    pub session_timeout_seconds: u64,
    pub user_idle_seconds: u64,
    pub flush_interval_ms: u64,
    pub live_watermark: bool,
    pub shared_catalog_ttl_ms: u64,
    pub foreign_state_max_age_ms: u64,
    pub watermark_quorum: usize,
    pub max_future_skew_seconds: u64,
}

impl EngineSettings {
    /// Shards to run: the configured number, or one per core.
    pub fn shard_count(&self) -> usize {
        if self.shards == 0 {
            std::thread::available_parallelism().map_or(1, |cores| cores.get())
        } else {
            self.shards
        }
    }

    /// In live mode, how far ahead of the wall clock an event may be dated; `None` in replay
    /// mode, where event time alone counts.
    pub fn max_future_skew(&self) -> Option<i64> {
        self.live_watermark
            .then(|| self.max_future_skew_seconds as i64 * 1000)
    }

    /// Session timeout in event-time milliseconds.
    pub fn session_timeout_millis(&self) -> i64 {
        self.session_timeout_seconds as i64 * 1000
    }

    /// The shard settings these imply. `bus_partitions`: the partitions of a bus that
    /// redelivers and that instances may share (RabbitMQ); `None` when this instance sees every
    /// event once.
    pub fn shard_settings(
        &self,
        bus_partitions: Option<u16>,
    ) -> propensity_actors::shard::ShardSettings {
        use propensity_actors::catalog::Sources;
        propensity_actors::shard::ShardSettings {
            session_timeout: self.session_timeout_millis(),
            user_idle: self.user_idle_seconds as i64 * 1000,
            flush_interval: Duration::from_millis(self.flush_interval_ms),
            live_watermark: self.live_watermark,
            guard_deliveries: bus_partitions.is_some(),
            sources: match bus_partitions {
                None => Sources::Single,
                Some(partitions) => Sources::Shared {
                    partitions,
                    remote_ttl: Duration::from_millis(self.shared_catalog_ttl_ms),
                },
            },
            watermark_quorum: self.watermark_quorum,
            foreign_max_age: Duration::from_millis(self.foreign_state_max_age_ms),
        }
    }
}

/// The model file and its reloading.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    pub path: PathBuf,
    pub reload_interval_seconds: u64,
    /// Where `train --report-dir` wrote the model's report; empty: `report/` beside the model.
    #[serde(default)]
    pub report_dir: PathBuf,
}

impl ModelSettings {
    /// The folder the console's model charts are read from.
    pub fn report_dir(&self) -> PathBuf {
        if !self.report_dir.as_os_str().is_empty() {
            return self.report_dir.clone();
        }
        self.path
            .parent()
            .unwrap_or_else(|| std::path::Path::new("."))
            .join("report")
    }
}

/// Propensity bands.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoringSettings {
    pub low_below: f64,
    pub high_from: f64,
}

/// What the alert rules compare against.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertingSettings {
    pub abandonment_ratio_threshold: f64,
}

/// The customer-value model in service.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueSettings {
    /// The model file written by `propensity value fit`; empty: no predicted value.
    pub model_path: PathBuf,
    pub reload_interval_seconds: u64,
}

/// The customer segments in service.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentsSettings {
    /// The segments file written by `propensity segments fit`; empty: no segment.
    pub model_path: PathBuf,
    pub reload_interval_seconds: u64,
}

/// The drift watch: live feature distributions against the model's training distributions.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftSettings {
    /// Length of the sliding window, in seconds.
    pub window_seconds: u64,
    /// Slots the window is cut into: it slides by one slot at a time.
    pub slots: u64,
    /// Fewest scores in the window before a PSI is exported (fewer say little).
    pub min_rows: u64,
}

/// Which online store.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    Embedded,
    Scylla,
}

/// The online store.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    pub kind: StoreKind,
    pub embedded_path: PathBuf,
    pub scylla: ScyllaSettings,
}

/// How a keyspace is replicated.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum ReplicationStrategy {
    /// One copy set for the whole cluster: a single datacenter, tests and demos.
    SimpleStrategy,
    /// `replication_factor` copies in each datacenter: production.
    NetworkTopologyStrategy,
}

/// A CQL consistency level, as the config spells it.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConsistencyLevel {
    One,
    Two,
    Three,
    Quorum,
    All,
    LocalQuorum,
    EachQuorum,
    LocalOne,
}

/// The ScyllaDB (or Cassandra) online store: `store.kind = "scylla"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScyllaSettings {
    /// Contact points, `host:port`: a list, or one comma-separated string (handy in
    /// `PROPENSITY__STORE__SCYLLA__NODES`).
    #[serde(deserialize_with = "list_or_commas")]
    pub nodes: Vec<String>,
    pub keyspace: String,
    pub replication_strategy: ReplicationStrategy,
    pub replication_factor: u32,
    /// With NetworkTopologyStrategy, the datacenters to replicate to; empty means every
    /// datacenter the cluster reports.
    pub datacenters: Vec<String>,
    pub read_consistency: ConsistencyLevel,
    pub write_consistency: ConsistencyLevel,
    pub connect_timeout_ms: u64,
    pub read_timeout_ms: u64,
    pub write_timeout_ms: u64,
    pub max_concurrency: usize,
    /// The most statements in one batch: a user's product rows beyond it go in batches of their
    /// own, written before the batch of the user's fields.
    pub max_batch_rows: usize,
    pub session_ttl_seconds: u32,
    pub purchased_session_ttl_seconds: u32,
    pub user_ttl_seconds: u32,
    pub product_ttl_seconds: u32,
    pub category_ttl_seconds: u32,
    pub apply_schema_on_start: bool,
}

/// A list of strings, or one string of comma-separated items.
fn list_or_commas<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCommas {
        List(Vec<String>),
        Commas(String),
    }
    Ok(match ListOrCommas::deserialize(deserializer)? {
        ListOrCommas::List(items) => items,
        ListOrCommas::Commas(text) => text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// The longest TTL CQL accepts: 20 years.
pub const MAX_TTL_SECONDS: u32 = 630_720_000;

impl ScyllaSettings {
    /// Checks values serde cannot; each error names its key.
    pub fn validate(&self) -> Result<()> {
        if self.nodes.is_empty() {
            bail!("invalid settings: store.scylla.nodes must list at least one host:port");
        }
        for node in &self.nodes {
            let port_ok = node
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                bail!("invalid settings: store.scylla.nodes entry {node:?} is not host:port");
            }
        }
        let keyspace_ok = !self.keyspace.is_empty()
            && self.keyspace.len() <= 48
            && self
                .keyspace
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !self.keyspace.starts_with(|c: char| c.is_ascii_digit());
        if !keyspace_ok {
            bail!(
                "invalid settings: store.scylla.keyspace {:?} must be 1 to 48 lowercase letters, digits or underscores, not starting with a digit",
                self.keyspace
            );
        }
        if self.replication_factor == 0 {
            bail!("invalid settings: store.scylla.replication_factor must be positive");
        }
        if self.replication_strategy == ReplicationStrategy::SimpleStrategy
            && !self.datacenters.is_empty()
        {
            bail!(
                "invalid settings: store.scylla.datacenters applies to NetworkTopologyStrategy only; empty it or change store.scylla.replication_strategy"
            );
        }
        for (key, value) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("read_timeout_ms", self.read_timeout_ms),
            ("write_timeout_ms", self.write_timeout_ms),
            ("max_concurrency", self.max_concurrency as u64),
            ("max_batch_rows", self.max_batch_rows as u64),
        ] {
            if value == 0 {
                bail!("invalid settings: store.scylla.{key} must be positive");
            }
        }
        for (key, value) in [
            ("session_ttl_seconds", self.session_ttl_seconds),
            (
                "purchased_session_ttl_seconds",
                self.purchased_session_ttl_seconds,
            ),
            ("user_ttl_seconds", self.user_ttl_seconds),
            ("product_ttl_seconds", self.product_ttl_seconds),
            ("category_ttl_seconds", self.category_ttl_seconds),
        ] {
            if value > MAX_TTL_SECONDS {
                bail!(
                    "invalid settings: store.scylla.{key} ({value}) exceeds the CQL maximum of {MAX_TTL_SECONDS} seconds"
                );
            }
        }
        Ok(())
    }
}

/// Which event bus.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BusKind {
    Http,
    Rabbitmq,
}

/// The event bus.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusSettings {
    pub kind: BusKind,
    pub rabbitmq: RabbitmqSettings,
}

/// RabbitMQ: the topology, the consumer and the publisher.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitmqSettings {
    pub url: String,
    pub connection_name: String,
    pub exchange: String,
    pub queue_prefix: String,
    pub partitions: u16,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub delivery_limit: u32,
    pub prefetch: u16,
    pub batch_size: usize,
    pub ack_interval_ms: u64,
    pub max_message_bytes: usize,
    pub reconnect_max_backoff_ms: u64,
    pub instance_index: u16,
    pub instance_count: u16,
    pub standby_delay_ms: u64,
}

impl RabbitmqSettings {
    /// The name of partition queue `partition`.
    pub fn queue(&self, partition: u16) -> String {
        format!("{}.{partition}", self.queue_prefix)
    }

    /// Whether this instance consumes `partition` first; it stands by for the others.
    pub fn prefers(&self, partition: u16) -> bool {
        partition % self.instance_count == self.instance_index
    }
}

/// Log output.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// Logging.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingSettings {
    pub level: String,
    pub format: LogFormat,
}

impl Settings {
    /// Loads the defaults, the overlay of `env` from `config_dir` when given, and the environment.
    pub fn load(config_dir: &Path, env: Option<&str>) -> Result<Settings> {
        Self::load_with(config_dir, env, std::env::vars())
    }

    /// As [`Settings::load`], with the environment variables given, for tests.
    pub fn load_with(
        config_dir: &Path,
        env: Option<&str>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(env) = env {
            let path = config_dir.join(format!("{env}.toml"));
            if env == "demo" && !path.exists() {
                builder =
                    builder.add_source(config::File::from_str(DEMO_TOML, config::FileFormat::Toml));
            } else if !path.exists() {
                bail!(
                    "no config overlay for environment {env:?}: {} does not exist",
                    path.display()
                );
            } else {
                builder = builder
                    .add_source(config::File::from(path.clone()).format(config::FileFormat::Toml));
            }
        }
        let overrides: std::collections::HashMap<String, String> = vars
            .into_iter()
            .filter(|(key, _)| key.starts_with("PROPENSITY__"))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("PROPENSITY")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(overrides)),
        );
        let settings: Settings = builder
            .build()
            .context("failed to read settings")?
            .try_deserialize()
            .map_err(|error| anyhow::anyhow!("invalid settings: {error}"))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks values serde cannot: each error names its key.
    pub fn validate(&self) -> Result<()> {
        let scoring = &self.scoring;
        if !(0.0..=1.0).contains(&scoring.low_below) || !(0.0..=1.0).contains(&scoring.high_from) {
            bail!("invalid settings: scoring.low_below and scoring.high_from must lie in [0, 1]");
        }
        if scoring.low_below > scoring.high_from {
            bail!(
                "invalid settings: scoring.low_below ({}) must not exceed scoring.high_from ({})",
                scoring.low_below,
                scoring.high_from
            );
        }
        if !(0.0..=1.0).contains(&self.alerting.abandonment_ratio_threshold) {
            bail!("invalid settings: alerting.abandonment_ratio_threshold must lie in [0, 1]");
        }
        if self.drift.slots == 0 || self.drift.slots > self.drift.window_seconds {
            bail!(
                "invalid settings: drift.slots must be between 1 and drift.window_seconds ({})",
                self.drift.window_seconds
            );
        }
        if self.engine.session_timeout_seconds == 0 {
            bail!("invalid settings: engine.session_timeout_seconds must be positive");
        }
        if self.engine.watermark_quorum == 0 {
            bail!("invalid settings: engine.watermark_quorum must be at least 1");
        }
        if self.engine.flush_interval_ms == 0 {
            bail!("invalid settings: engine.flush_interval_ms must be positive");
        }
        if self.http.body_limit_bytes < 1024 {
            bail!("invalid settings: http.body_limit_bytes must be at least 1024");
        }
        self.store.scylla.validate()?;
        let rabbitmq = &self.bus.rabbitmq;
        if !rabbitmq.url.starts_with("amqp://") && !rabbitmq.url.starts_with("amqps://") {
            bail!(
                "invalid settings: bus.rabbitmq.url {:?} is not an amqp:// URL",
                rabbitmq.url
            );
        }
        if rabbitmq.partitions == 0 {
            bail!("invalid settings: bus.rabbitmq.partitions must be positive");
        }
        if rabbitmq.delivery_limit == 0 {
            bail!("invalid settings: bus.rabbitmq.delivery_limit must be positive");
        }
        if rabbitmq.prefetch == 0 || rabbitmq.batch_size == 0 {
            bail!(
                "invalid settings: bus.rabbitmq.prefetch and bus.rabbitmq.batch_size must be positive"
            );
        }
        if rabbitmq.ack_interval_ms == 0 {
            bail!("invalid settings: bus.rabbitmq.ack_interval_ms must be positive");
        }
        if rabbitmq.max_message_bytes < 256 {
            bail!("invalid settings: bus.rabbitmq.max_message_bytes must be at least 256");
        }
        if rabbitmq.instance_count == 0 || rabbitmq.instance_index >= rabbitmq.instance_count {
            bail!(
                "invalid settings: bus.rabbitmq.instance_index ({}) must be below bus.rabbitmq.instance_count ({})",
                rabbitmq.instance_index,
                rabbitmq.instance_count
            );
        }
        for (key, name) in [
            ("exchange", &rabbitmq.exchange),
            ("queue_prefix", &rabbitmq.queue_prefix),
            ("dead_letter_exchange", &rabbitmq.dead_letter_exchange),
            ("dead_letter_queue", &rabbitmq.dead_letter_queue),
        ] {
            if name.is_empty() || name.len() > 200 {
                bail!("invalid settings: bus.rabbitmq.{key} must be a name of 1 to 200 bytes");
            }
        }
        if self.http.max_batch == 0 {
            bail!("invalid settings: http.max_batch must be positive");
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            bail!(
                "invalid settings: http.listen {:?} is not an address like 127.0.0.1:8080",
                self.http.listen
            );
        }
        if !["trace", "debug", "info", "warn", "error"]
            .iter()
            .any(|level| self.logging.level.starts_with(level))
            && !self.logging.level.contains('=')
        {
            bail!(
                "invalid settings: logging.level {:?} is not a log filter",
                self.logging.level
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
    }

    fn load(env: Option<&str>, vars: &[(&str, &str)]) -> Result<Settings> {
        Settings::load_with(
            &config_dir(),
            env,
            vars.iter()
                .map(|(key, value)| (key.to_string(), value.to_string())),
        )
    }

    #[test]
    fn every_file_in_config_loads() {
        let mut loaded = 0;
        for entry in std::fs::read_dir(config_dir()).unwrap() {
            let path = entry.unwrap().path();
            let env = path.file_stem().unwrap().to_str().unwrap().to_owned();
            let settings = load(if env == "default" { None } else { Some(&env) }, &[])
                .unwrap_or_else(|error| panic!("{}: {error:#}", path.display()));
            assert!(settings.engine.session_timeout_seconds > 0);
            loaded += 1;
        }
        assert!(loaded >= 3, "only {loaded} config files");
    }

    #[test]
    fn the_demo_overlay_is_built_in_for_any_working_directory() {
        let elsewhere = std::env::temp_dir().join("propensity-no-config-here");
        let built_in = Settings::load_with(&elsewhere, Some("demo"), Vec::new()).unwrap();
        let from_file = load(Some("demo"), &[]).unwrap();
        let defaults = load(None, &[]).unwrap();
        assert!(!built_in.engine.live_watermark);
        assert_ne!(
            built_in.engine.live_watermark,
            defaults.engine.live_watermark
        );
        assert_eq!(
            built_in.engine.live_watermark,
            from_file.engine.live_watermark
        );
        assert_eq!(built_in.logging.level, from_file.logging.level);
        // Any other missing overlay is still an error.
        let error = Settings::load_with(&elsewhere, Some("test"), Vec::new()).unwrap_err();
        assert!(
            format!("{error:#}").contains("test.toml does not exist"),
            "{error:#}"
        );
    }

    #[test]
    fn overlay_and_environment_override_defaults() {
        let settings = load(
            Some("test"),
            &[
                ("PROPENSITY__SCORING__HIGH_FROM", "0.7"),
                ("PROPENSITY__ENGINE__SHARDS", "3"),
            ],
        )
        .unwrap();
        assert_eq!(settings.http.listen, "127.0.0.1:0");
        assert_eq!(settings.scoring.high_from, 0.7);
        assert_eq!(settings.engine.shard_count(), 3);
        assert!(!settings.engine.live_watermark);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let error = load(None, &[("PROPENSITY__HTTP__LISTN", "x")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("listn"), "{error}");
        let error = load(None, &[("PROPENSITY__SCORING__LOW_BELOW", "0.9")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("scoring.low_below"), "{error}");
        let error = load(None, &[("PROPENSITY__ENGINE__SHARDS", "many")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("shards"), "{error}");
        let error = load(Some("nope"), &[]).unwrap_err().to_string();
        assert!(error.contains("nope.toml"), "{error}");
    }

    #[test]
    fn scylla_settings_are_checked_by_key() {
        let settings = load(
            None,
            &[
                ("PROPENSITY__STORE__SCYLLA__KEYSPACE", "shop_2"),
                ("PROPENSITY__STORE__SCYLLA__WRITE_CONSISTENCY", "one"),
                ("PROPENSITY__STORE__SCYLLA__NODES", "a:9042, b:9043"),
                (
                    "PROPENSITY__STORE__SCYLLA__REPLICATION_STRATEGY",
                    "NetworkTopologyStrategy",
                ),
            ],
        )
        .unwrap();
        assert_eq!(settings.store.scylla.keyspace, "shop_2");
        assert_eq!(settings.store.scylla.nodes, ["a:9042", "b:9043"]);
        assert_eq!(
            settings.store.scylla.write_consistency,
            ConsistencyLevel::One
        );
        assert_eq!(
            settings.store.scylla.read_consistency,
            ConsistencyLevel::LocalQuorum
        );
        for (key, value, named) in [
            ("KEYSPACE", "Shop", "store.scylla.keyspace"),
            ("KEYSPACE", "1shop", "store.scylla.keyspace"),
            ("NODES", "localhost", "store.scylla.nodes"),
            ("READ_TIMEOUT_MS", "0", "store.scylla.read_timeout_ms"),
            ("MAX_CONCURRENCY", "0", "store.scylla.max_concurrency"),
            ("MAX_BATCH_ROWS", "0", "store.scylla.max_batch_rows"),
            ("REPLICATION_FACTOR", "0", "store.scylla.replication_factor"),
            (
                "USER_TTL_SECONDS",
                "700000000",
                "store.scylla.user_ttl_seconds",
            ),
            ("READ_CONSISTENCY", "most", "read_consistency"),
            ("REPLICATION_STRATEGY", "simple", "replication_strategy"),
        ] {
            let variable = format!("PROPENSITY__STORE__SCYLLA__{key}");
            let error = load(None, &[(variable.as_str(), value)])
                .unwrap_err()
                .to_string();
            assert!(error.contains(named), "{key}={value}: {error}");
        }
    }
}
