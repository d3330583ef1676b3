//! Test harness: synthetic data, a trained model and settings for a service on port 0.

#![allow(dead_code)]

pub mod broker;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use propensity::config::Settings;
use propensity_actors::event::{CsvEvents, Event};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Settings of the `test` overlay with the store and model in `dir`.
pub fn settings(dir: &Path, model: &Path) -> Settings {
    let mut settings = Settings::load_with(&root().join("config"), Some("test"), Vec::new())
        .expect("test settings load");
    settings.store.embedded_path = dir.join("state.redb");
    settings.model.path = model.to_owned();
    settings
}

/// Generates a synthetic clickstream into `dir` and reads it back, in time order.
pub fn synthetic_events(dir: &Path, users: u64, days: u32, seed: u64) -> (PathBuf, Vec<Event>) {
    let path = dir.join("events.csv");
    propensity::tools::generate::generate_files(
        users,
        days,
        seed,
        &path,
        Some(&dir.join("truth.csv")),
        false,
    )
    .expect("generation works");
    let file = std::fs::File::open(&path).unwrap();
    let events: Vec<Event> = CsvEvents::new(std::io::BufReader::new(file))
        .map(|event| event.expect("generated rows parse"))
        .collect();
    assert!(
        events.windows(2).all(|pair| pair[0].time <= pair[1].time),
        "generated events are in time order"
    );
    (path, events)
}

/// Trains a model on `events_path` into `dir`.
pub fn train_model(
    dir: &Path,
    events_path: &Path,
    session_timeout: i64,
) -> (PathBuf, propensity::offline::model::Model) {
    train(dir, events_path, session_timeout, None)
}

/// Trains a model on `events_path` into `dir`, with its report in `dir/report`, where the service
/// looks for it by default (`model.report_dir`).
pub fn train_model_with_report(
    dir: &Path,
    events_path: &Path,
    session_timeout: i64,
) -> (PathBuf, propensity::offline::model::Model) {
    train(dir, events_path, session_timeout, Some(dir.join("report")))
}

fn train(
    dir: &Path,
    events_path: &Path,
    session_timeout: i64,
    report_dir: Option<PathBuf>,
) -> (PathBuf, propensity::offline::model::Model) {
    let model_out = dir.join("model.json");
    let request = propensity::offline::train::TrainRequest {
        events: vec![events_path.to_owned()],
        model_out: model_out.clone(),
        split_at: None,
        export_features: None,
        report_dir,
        truth: None,
        session_timeout,
        options: propensity::offline::model::TrainOptions::default(),
        max_fit_rows: propensity::offline::train::DEFAULT_MAX_FIT_ROWS,
        show_progress: false,
    };
    let (_, model) = propensity::offline::train::run(&request).expect("training works");
    (model_out, model)
}

/// A port free on loopback now, for a child process to listen on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A model trained on a small data set of its own, in `dir/model`, for tests that compare
/// state rather than scores.
pub fn small_model(dir: &Path, session_timeout: i64) -> PathBuf {
    let model_dir = dir.join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    let (path, _) = synthetic_events(&model_dir, 300, 3, 99);
    train_model(&model_dir, &path, session_timeout).0
}

/// The CDNOW sample beside the repository.
pub const CDNOW_SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/data/cdnow/CDNOW_sample.txt"
);

/// A customer-value model and segments fitted on the CDNOW sample into `dir`: their paths and
/// the segments' names.
pub fn fit_customer_value(dir: &Path) -> (PathBuf, PathBuf, Vec<String>) {
    use propensity::offline::value::input::{InputFormat, parse_day};
    assert!(
        Path::new(CDNOW_SAMPLE).exists(),
        "the CDNOW sample is missing: {CDNOW_SAMPLE} (it lives beside the repository in shared/data/cdnow)"
    );
    let value = dir.join("value.json");
    propensity::offline::value::fit::run(&propensity::offline::value::fit::FitRequest {
        inputs: vec![PathBuf::from(CDNOW_SAMPLE)],
        format: InputFormat::Cdnow,
        model_out: value.clone(),
        calibration_end: parse_day("1997-09-30"),
        holdout_end: None,
        report_dir: None,
    })
    .expect("the CDNOW sample fits");
    let segments = dir.join("segments.json");
    let report = propensity::offline::value::segments::run(
        &propensity::offline::value::segments::SegmentRequest {
            inputs: vec![PathBuf::from(CDNOW_SAMPLE)],
            format: InputFormat::Cdnow,
            value_model: value.clone(),
            model_out: segments.clone(),
            k_min: 2,
            k_max: 4,
            report_dir: None,
            seed: 7,
        },
    )
    .expect("the CDNOW sample segments");
    let names = report.segments.iter().map(|s| s.name.clone()).collect();
    (value, segments, names)
}

/// Posts events as one batch to the HTTP collector and checks they were accepted.
pub async fn post_events(client: &reqwest::Client, url: &str, events: &[Event]) {
    let body = Event::json_array(events);
    let response = client
        .post(format!("{url}/v1/events"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the collector answers");
    let status = response.status();
    assert_eq!(status, 202, "{}", response.text().await.unwrap_or_default());
}

/// Checks that every user, session and product of the offline replay has the same state in the
/// running engine (answered from memory or the store).
pub async fn assert_engine_matches(
    engine: &propensity_actors::engine::Engine,
    offline: &propensity_actors::ReplayEngine,
) {
    for (user_id, user) in &offline.users.users {
        assert_eq!(
            engine.user(*user_id).await.unwrap().as_ref(),
            Some(user),
            "user {user_id}"
        );
    }
    for (key, session) in &offline.users.sessions {
        assert_eq!(
            engine.session(*key).await.unwrap().as_ref(),
            Some(session),
            "session {key:?}"
        );
    }
    for ((product_id, _), product) in &offline.catalog.products {
        let online = engine.product(*product_id).await.unwrap();
        assert_same_product(online.as_ref(), product, "in the engine");
    }
}

/// Checks that a whole product (merged from its parts) equals the offline replay's, up to the
/// rounding of revenue summed in another order.
pub fn assert_same_product(
    actual: Option<&propensity_actors::features::ProductState>,
    expected: &propensity_actors::features::ProductState,
    context: &str,
) {
    use propensity_actors::features::product::HourBucket;
    let product_id = expected.product_id;
    let actual = actual.unwrap_or_else(|| panic!("product {product_id} {context}: missing"));
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0);
    assert!(
        close(actual.revenue, expected.revenue)
            && actual.hours.len() == expected.hours.len()
            && actual
                .hours
                .iter()
                .zip(&expected.hours)
                .all(|(a, b)| close(a.revenue, b.revenue)),
        "product {product_id} {context}: revenue {actual:?} against {expected:?}"
    );
    let without_revenue = |product: &propensity_actors::features::ProductState| {
        propensity_actors::features::ProductState {
            source: 0,
            revenue: 0.0,
            hours: product
                .hours
                .iter()
                .map(|bucket| HourBucket {
                    revenue: 0.0,
                    ..*bucket
                })
                .collect(),
            ..product.clone()
        }
    };
    assert_eq!(
        without_revenue(actual),
        without_revenue(expected),
        "product {product_id} {context}"
    );
}

/// Whole products and categories from their parts, by id.
pub fn merge_parts(
    products: &[propensity_actors::Stored<propensity_actors::features::ProductState>],
    categories: &[propensity_actors::Stored<propensity_actors::features::CategoryState>],
) -> (
    BTreeMap<u64, propensity_actors::features::ProductState>,
    BTreeMap<u64, propensity_actors::features::CategoryState>,
) {
    use propensity_actors::features::{CategoryState, ProductState};
    let mut product_parts: BTreeMap<u64, Vec<&ProductState>> = BTreeMap::new();
    for part in products.iter().map(|stored| &stored.state) {
        product_parts.entry(part.product_id).or_default().push(part);
    }
    let mut category_parts: BTreeMap<u64, Vec<&CategoryState>> = BTreeMap::new();
    for part in categories.iter().map(|stored| &stored.state) {
        category_parts
            .entry(part.category_id)
            .or_default()
            .push(part);
    }
    (
        product_parts
            .into_iter()
            .map(|(id, parts)| (id, ProductState::merged(parts).expect("a part")))
            .collect(),
        category_parts
            .into_iter()
            .map(|(id, parts)| (id, CategoryState::merged(parts).expect("a part")))
            .collect(),
    )
}

/// Checks whole categories against the offline replay's.
fn assert_same_categories(
    whole: &BTreeMap<u64, propensity_actors::features::CategoryState>,
    offline: &propensity_actors::ReplayEngine,
    context: &str,
) {
    for (category_id, category) in whole {
        let expected = offline
            .catalog
            .categories
            .get(&(*category_id, 0))
            .unwrap_or_else(|| panic!("category {category_id} {context}: not in the replay"));
        assert_eq!(
            (category.views, &category.price_buckets),
            (expected.views, &expected.price_buckets),
            "category {category_id} {context}"
        );
    }
}

/// Checks that a store holds exactly the offline replay's users, sessions, products and
/// categories.
pub fn assert_stored_matches(
    stored: propensity_actors::store::StateBatch,
    offline: &propensity_actors::ReplayEngine,
) {
    assert_eq!(
        stored.users.len(),
        offline.users.users.len(),
        "stored users"
    );
    for user in stored.users.iter().map(|stored| &stored.state) {
        assert_eq!(
            Some(user),
            offline.users.users.get(&user.user_id),
            "user {}",
            user.user_id
        );
    }
    assert_eq!(
        stored.sessions.len(),
        offline.users.sessions.len(),
        "stored sessions"
    );
    for session in stored.sessions.iter().map(|stored| &stored.state) {
        let key = session.key();
        assert_eq!(
            Some(session),
            offline.users.sessions.get(&key),
            "session {key:?}"
        );
    }
    let (products, categories) = merge_parts(&stored.products, &stored.categories);
    assert_eq!(
        products.len(),
        offline.catalog.products.len(),
        "stored products"
    );
    for ((product_id, _), product) in &offline.catalog.products {
        assert_same_product(products.get(product_id), product, "in the store");
    }
    assert_eq!(
        categories.len(),
        offline.catalog.categories.len(),
        "stored categories"
    );
    assert_same_categories(&categories, offline, "in the store");
}

/// Checks that a store returns exactly the offline replay's state for every user, session,
/// product and category the replay knows, read back through the store's own loads.
pub async fn assert_store_holds(
    store: &dyn propensity_actors::store::StateStore,
    offline: &propensity_actors::ReplayEngine,
) {
    assert_store_holds_user_side(store, offline).await;
    assert_store_holds_catalog(store, offline).await;
}

/// [`assert_store_holds`] for users and sessions only.
pub async fn assert_store_holds_user_side(
    store: &dyn propensity_actors::store::StateStore,
    offline: &propensity_actors::ReplayEngine,
) {
    let users: Vec<u64> = offline.users.users.keys().copied().collect();
    for chunk in users.chunks(500) {
        let (loaded, _) = store
            .load_user_side(chunk.to_vec(), Vec::new())
            .await
            .expect("users load");
        assert_eq!(loaded.len(), chunk.len(), "stored users of a chunk");
        for user in loaded.into_iter().map(|stored| stored.state) {
            assert_eq!(
                Some(&user),
                offline.users.users.get(&user.user_id),
                "user {}",
                user.user_id
            );
        }
    }
    let sessions: Vec<_> = offline.users.sessions.keys().copied().collect();
    for chunk in sessions.chunks(500) {
        let (_, loaded) = store
            .load_user_side(Vec::new(), chunk.to_vec())
            .await
            .expect("sessions load");
        assert_eq!(loaded.len(), chunk.len(), "stored sessions of a chunk");
        for session in loaded.into_iter().map(|stored| stored.state) {
            let key = session.key();
            assert_eq!(
                Some(&session),
                offline.users.sessions.get(&key),
                "session {key:?}"
            );
        }
    }
}

/// [`assert_store_holds`] for products and categories only.
pub async fn assert_store_holds_catalog(
    store: &dyn propensity_actors::store::StateStore,
    offline: &propensity_actors::ReplayEngine,
) {
    let products: Vec<u64> = offline.catalog.products.keys().map(|key| key.0).collect();
    let categories: Vec<u64> = offline.catalog.categories.keys().map(|key| key.0).collect();
    for chunk in products.chunks(500) {
        let (loaded, _) = store
            .load_catalog(chunk.to_vec(), Vec::new())
            .await
            .expect("products load");
        let (whole, _) = merge_parts(&loaded, &[]);
        assert_eq!(whole.len(), chunk.len(), "stored products of a chunk");
        for product_id in chunk {
            assert_same_product(
                whole.get(product_id),
                &offline.catalog.products[&(*product_id, 0)],
                "in the store",
            );
        }
    }
    for chunk in categories.chunks(500) {
        let (_, loaded) = store
            .load_catalog(Vec::new(), chunk.to_vec())
            .await
            .expect("categories load");
        let (_, whole) = merge_parts(&[], &loaded);
        assert_eq!(whole.len(), chunk.len(), "stored categories of a chunk");
        assert_same_categories(&whole, offline, "in the store");
    }
}

/// Settings for a service on the RabbitMQ bus (a topology of its own, named after `test`) and
/// the keyspace's Cassandra store, with two shards and sessions that never time out in a replay
/// of `session_timeout` milliseconds.
pub fn bus_on_cassandra(
    dir: &Path,
    model: &Path,
    keyspace: &TestKeyspace,
    session_timeout: i64,
    test: &str,
) -> Settings {
    let mut settings = settings(dir, model);
    settings.engine.session_timeout_seconds = (session_timeout / 1000) as u64;
    settings.engine.shards = 2;
    settings.store.kind = propensity::config::StoreKind::Scylla;
    settings.store.scylla = keyspace.settings.clone();
    broker::use_private_topology(&mut settings, test);
    settings
}

/// Where the Cassandra tests find their node (docker/native/services.sh up cassandra).
pub const CASSANDRA_NODE: &str = "127.0.0.1:9042";

/// Fails the test, saying how to start Cassandra, when nothing listens on [`CASSANDRA_NODE`].
pub fn require_cassandra() {
    let address: std::net::SocketAddr = CASSANDRA_NODE.parse().unwrap();
    if let Err(error) =
        std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_secs(2))
    {
        panic!(
            "Cassandra is not reachable on {CASSANDRA_NODE}: start it with docker/native/services.sh up cassandra ({error})"
        );
    }
}

/// The `[store.scylla]` settings of the `test` overlay.
pub fn scylla_settings() -> propensity::config::ScyllaSettings {
    Settings::load_with(&root().join("config"), Some("test"), Vec::new())
        .expect("test settings load")
        .store
        .scylla
}

/// A fresh keyspace `propensity_test_<random>` on the test node, dropped when this goes, even
/// when the test fails. Its settings give Cassandra seconds rather than the production
/// milliseconds: the node shares two cores with the compiler and the tests.
pub struct TestKeyspace {
    pub settings: propensity::config::ScyllaSettings,
}

impl TestKeyspace {
    /// Settings for a new keyspace (created by whoever opens a store on it first).
    pub fn new() -> TestKeyspace {
        require_cassandra();
        let mut settings = scylla_settings();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let unique = xxhash_rust::xxh3::xxh3_64(
            format!(
                "{nanos} {} {:?}",
                std::process::id(),
                std::thread::current().id()
            )
            .as_bytes(),
        );
        settings.keyspace = format!("propensity_test_{unique:016x}");
        settings.nodes = vec![CASSANDRA_NODE.to_owned()];
        settings.read_timeout_ms = 5_000;
        settings.write_timeout_ms = 10_000;
        settings.apply_schema_on_start = true;
        TestKeyspace { settings }
    }

    /// The keyspace's name.
    pub fn name(&self) -> &str {
        &self.settings.keyspace
    }
}

impl Drop for TestKeyspace {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("PROPENSITY_KEEP_FAILED_KEYSPACE").is_some()
        {
            eprintln!(
                "kept keyspace {} of the failed test (PROPENSITY_KEEP_FAILED_KEYSPACE)",
                self.settings.keyspace
            );
            return;
        }
        if let Err(error) = propensity::online::store::schema::drop_keyspace(&self.settings) {
            eprintln!(
                "could not drop keyspace {}: {error:#}",
                self.settings.keyspace
            );
        }
    }
}

/// Starts `propensity serve` as a child process: `--config-dir config_dir --env env`, each
/// `(KEY, value)` of `vars` as the override `PROPENSITY__KEY`, stderr appended to `log`.
pub fn spawn_serve(
    config_dir: &Path,
    env: &str,
    vars: &[(&str, String)],
    log: &Path,
) -> std::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_propensity"))
        .arg("--config-dir")
        .arg(config_dir)
        .args(["--env", env, "serve"])
        .envs(
            vars.iter()
                .map(|(key, value)| (format!("PROPENSITY__{key}"), value)),
        )
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("propensity serve starts")
}

/// The text of a service's /metrics at `url` (`http://host:port`).
pub async fn metrics_text(client: &reqwest::Client, url: &str) -> String {
    client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("/metrics has a body")
}

/// A metric's value from a service's /metrics on `port`, if it answers.
pub async fn metric(client: &reqwest::Client, port: u16, name: &str) -> Option<f64> {
    let text = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

/// Every session of `events` ended and tallied by hour, as the service tallies them: a session
/// ends once idle for longer than `timeout`, and those still open when the events run out end
/// then (as `Engine::flush(true)` ends them).
pub fn offline_tallies(
    events: &[Event],
    timeout: i64,
) -> BTreeMap<i64, propensity_actors::outcomes::OutcomeTally> {
    use propensity_actors::outcomes::{HOUR, OutcomeTally, SessionEnd};
    let (_, ended) = offline_every_session(events, timeout);
    let mut tallies: BTreeMap<i64, OutcomeTally> = BTreeMap::new();
    for session in &ended {
        tallies
            .entry(session.last_event_at.div_euclid(HOUR))
            .or_default()
            .count(&SessionEnd::of(session, 0, 0));
    }
    tallies
}

/// The offline replay of `events` with `timeout`, with every session ended at the end: the
/// engine, whose sessions are each key's latest session as a store that keeps ended sessions
/// holds them, and every session in the order they ended.
pub fn offline_every_session(
    events: &[Event],
    timeout: i64,
) -> (
    propensity_actors::ReplayEngine,
    Vec<propensity_actors::features::SessionState>,
) {
    use propensity_actors::{Applied, ReplayEngine};
    let mut engine = ReplayEngine::new(timeout);
    let mut ended = Vec::new();
    for event in events {
        if let Applied::Changed {
            closed: Some(closed),
        } = engine.apply(event)
        {
            ended.push(closed);
        }
        ended.extend(engine.users.expire_sessions());
    }
    let mut live: Vec<_> = engine.users.sessions.values().cloned().collect();
    live.sort_by_key(|session| (session.last_event_at, session.key()));
    for session in ended.iter().chain(&live) {
        engine.users.sessions.insert(session.key(), session.clone());
    }
    ended.extend(live);
    (engine, ended)
}

/// Checks stored tallies against the offline ones hour by hour: exact counts, cart values to
/// rounding (summed in another order).
pub fn assert_same_tallies(
    online: &BTreeMap<i64, propensity_actors::outcomes::OutcomeTally>,
    offline: &BTreeMap<i64, propensity_actors::outcomes::OutcomeTally>,
    context: &str,
) {
    let hours = |tallies: &BTreeMap<i64, propensity_actors::outcomes::OutcomeTally>| {
        tallies.keys().copied().collect::<Vec<_>>()
    };
    assert_eq!(
        hours(online),
        hours(offline),
        "hours with ended sessions {context}"
    );
    for (hour, expected) in offline {
        let actual = &online[hour];
        assert_eq!(
            actual.sessions, expected.sessions,
            "sessions of hour {hour} {context}"
        );
        for (a, b) in actual.cart_value.iter().zip(&expected.cart_value) {
            assert!(
                (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0),
                "cart value of hour {hour} {context}: {a} against {b}"
            );
        }
    }
}

/// Every session's end as a store holds it: the tallies of the sessions it counted as ended,
/// plus the end of every session its index still holds open (as they will end once their
/// shoppers have been idle for the timeout), by hour. Whenever the service stopped, crashed or
/// handed partitions over, this equals [`offline_tallies`] over the events it consumed: no
/// session is lost, and none is counted twice or both counted and open.
pub async fn stored_outcomes_with_open_ended(
    store: &dyn propensity_actors::store::StateStore,
    sources: u16,
    events: &[Event],
) -> BTreeMap<i64, propensity_actors::outcomes::OutcomeTally> {
    use propensity_actors::outcomes::{HOUR, SessionEnd};
    let mut tallies: BTreeMap<i64, propensity_actors::outcomes::OutcomeTally> = BTreeMap::new();
    let first = events.iter().map(|event| event.time).min().unwrap();
    let last = events.iter().map(|event| event.time).max().unwrap();
    for (key, tally) in store
        .load_tallies(first.div_euclid(HOUR), last.div_euclid(HOUR))
        .await
        .expect("tallies load")
    {
        tallies.entry(key.hour).or_default().add(&tally);
    }
    let mut open_keys = std::collections::HashSet::new();
    for source in 0..sources {
        for open in store
            .load_open_sessions(source)
            .await
            .expect("the index loads")
        {
            assert!(
                open_keys.insert(open.key),
                "session {:?} is open in two partitions",
                open.key
            );
            let session = store
                .load_session(open.key)
                .await
                .expect("the session loads")
                .unwrap_or_else(|| panic!("open session {:?} has no state", open.key));
            assert_eq!(
                session.state.started_at, open.started_at,
                "the index and the state of {:?} agree on which session is open",
                open.key
            );
            tallies
                .entry(session.state.last_event_at.div_euclid(HOUR))
                .or_default()
                .count(&SessionEnd::of(&session.state, source, 0));
        }
    }
    tallies
}

/// Every session's end is in the store once, as the offline replay of `events` with `timeout`
/// ends it (counted in the tallies, or open in the index when the service stopped), and the
/// counters of `metrics`, one process lifetime, counted exactly what the tallies hold. Returns
/// the ends counted.
pub async fn assert_ends_counted_once(
    store: &dyn propensity_actors::store::StateStore,
    metrics: &propensity::metrics::Metrics,
    sources: u16,
    events: &[Event],
    timeout: i64,
    context: &str,
) -> u64 {
    let ended = stored_outcomes_with_open_ended(store, sources, events).await;
    assert_same_tallies(&ended, &offline_tallies(events, timeout), context);
    let stored = store.load_tallies(i64::MIN, i64::MAX).await.unwrap();
    assert_counted_over_lifetimes(&[metrics], stored.iter().map(|(_, tally)| tally), context)
}

/// The ends the counters of `lifetimes` (one process each) counted, summed, equal the tallies
/// `stored`, outcome by outcome. Returns the ends counted.
pub fn assert_counted_over_lifetimes<'a>(
    lifetimes: &[&propensity::metrics::Metrics],
    stored: impl IntoIterator<Item = &'a propensity_actors::outcomes::OutcomeTally>,
    context: &str,
) -> u64 {
    let stored: Vec<_> = stored.into_iter().collect();
    let mut counted_all = 0;
    for outcome in propensity_actors::features::Outcome::ALL {
        let counted: u64 = lifetimes
            .iter()
            .map(|metrics| {
                metrics
                    .sessions_closed
                    .with_label_values(&[outcome.as_str()])
                    .get()
            })
            .sum();
        let tallied: u64 = stored
            .iter()
            .map(|tally| tally.sessions_with(outcome))
            .sum();
        assert_eq!(
            counted,
            tallied,
            "{} sessions counted and tallied {context}",
            outcome.as_str()
        );
        counted_all += counted;
    }
    counted_all
}
