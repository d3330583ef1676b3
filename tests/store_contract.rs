//! The store contract: the same checks against the embedded store (a temporary redb file) and
//! the ScyllaDB store on a real Cassandra node (a fresh keyspace, dropped at the end). States
//! come from replaying a synthetic clickstream through the online engine's state machines, so
//! they are realistic, delivery guards included; a few hand-made ones cover the edges.
//!
//! The Cassandra tests fail, saying how to start it, when no node answers on 127.0.0.1:9042.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use propensity::online::store::{EmbeddedStore, ScyllaStore};
use propensity_actors::delivery::{DeliveryGuard, Stored};
use propensity_actors::event::{Event, EventType, Millis};
use propensity_actors::features::{CategoryState, ProductState, SessionState, UserState};
use propensity_actors::outcomes::SessionEnd;
use propensity_actors::store::{StateBatch, StateStore, StoreError};
use propensity_actors::{Applied, ReplayEngine, SessionKey};
use serde::Serialize;

const TIMEOUT: Millis = 30 * 60 * 1000;

/// Every state of a replayed clickstream, as the online engine holds it.
struct World {
    batch: StateBatch,
}

impl World {
    /// Replays `users` shoppers over `days` with delivery guards recorded, and marks two
    /// acknowledgements on the way so guards hold both older and newer identities.
    fn replay(users: u64, days: u32, seed: u64) -> World {
        let dir = tempfile::tempdir().unwrap();
        let (_, events) = common::synthetic_events(dir.path(), users, days, seed);
        let mut guarded = Guarded::default();
        let third = events.len() / 3;
        for (index, event) in events.iter().enumerate() {
            if index == third || index == 2 * third {
                guarded.forget_acknowledged();
            }
            // Parts of three sources, as three bus partitions would write them.
            guarded.apply(event, (event.user_id % 3) as u16);
        }
        World {
            batch: guarded.batch(),
        }
    }

    fn session_keys(&self) -> Vec<SessionKey> {
        self.batch
            .sessions
            .iter()
            .map(|session| session.state.key())
            .collect()
    }

    fn user_ids(&self) -> Vec<u64> {
        self.batch
            .users
            .iter()
            .map(|user| user.state.user_id)
            .collect()
    }

    fn product_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .batch
            .products
            .iter()
            .map(|product| product.state.product_id)
            .collect();
        ids.dedup();
        ids
    }
}

/// States as the online actors hold them: the feature state machines fed through history
/// replay's engine, and beside each entity the delivery guard a redelivering bus makes it keep.
#[derive(Default)]
struct Guarded {
    engine: Option<ReplayEngine>,
    user_guards: HashMap<u64, DeliveryGuard>,
    session_guards: HashMap<SessionKey, DeliveryGuard>,
    products: HashMap<(u64, u16), Stored<ProductState>>,
    categories: HashMap<(u64, u16), Stored<CategoryState>>,
}

impl Guarded {
    fn engine(&mut self) -> &mut ReplayEngine {
        self.engine
            .get_or_insert_with(|| ReplayEngine::new(TIMEOUT))
    }

    /// Applies an event from the bus partition `source`.
    fn apply(&mut self, event: &Event, source: u16) {
        if !matches!(self.engine().users.apply(event), Applied::Changed { .. }) {
            return;
        }
        let identity = event.identity();
        self.user_guards
            .entry(event.user_id)
            .or_default()
            .record(identity);
        self.session_guards
            .entry(SessionKey::of(event))
            .or_default()
            .record(identity);
        if event.event_type.is_view() {
            let category = self
                .categories
                .entry((event.category_id, source))
                .or_insert_with(|| Stored::new(CategoryState::new(event.category_id, source)));
            category.state.add_view(event.price);
            category.guard.record(identity);
        }
        let product = self
            .products
            .entry((event.product_id, source))
            .or_insert_with(|| Stored::new(ProductState::new(event, source)));
        product.state.apply(event);
        product.guard.record(identity);
    }

    fn forget_acknowledged(&mut self) {
        let guards = self
            .user_guards
            .values_mut()
            .chain(self.session_guards.values_mut())
            .chain(self.products.values_mut().map(|part| &mut part.guard))
            .chain(self.categories.values_mut().map(|part| &mut part.guard));
        for guard in guards {
            guard.forget_acknowledged();
        }
    }

    fn user(&mut self, user_id: u64) -> Stored<UserState> {
        Stored {
            state: self.engine().users.users[&user_id].clone(),
            guard: self.user_guards.get(&user_id).cloned().unwrap_or_default(),
        }
    }

    fn session(&mut self, key: SessionKey) -> Stored<SessionState> {
        Stored {
            state: self.engine().users.sessions[&key].clone(),
            guard: self.session_guards.get(&key).cloned().unwrap_or_default(),
        }
    }

    /// Every state, sorted.
    fn batch(&mut self) -> StateBatch {
        let users: Vec<u64> = self.engine().users.users.keys().copied().collect();
        let sessions: Vec<SessionKey> = self.engine().users.sessions.keys().copied().collect();
        let mut batch = StateBatch {
            users: users.into_iter().map(|id| self.user(id)).collect(),
            sessions: sessions.into_iter().map(|key| self.session(key)).collect(),
            products: self.products.values().cloned().collect(),
            categories: self.categories.values().cloned().collect(),
            ..StateBatch::default()
        };
        sort(&mut batch);
        batch
    }
}

/// Saves a copy of the batch.
async fn save(store: &dyn StateStore, batch: &StateBatch) -> Result<Vec<SessionEnd>, StoreError> {
    store.save(Arc::new(batch.clone())).await
}

fn sort(batch: &mut StateBatch) {
    batch.sessions.sort_by_key(|session| session.state.key());
    batch.users.sort_by_key(|user| user.state.user_id);
    batch
        .products
        .sort_by_key(|product| (product.state.product_id, product.state.source));
    batch
        .categories
        .sort_by_key(|category| (category.state.category_id, category.state.source));
}

/// Exactly equal: the same bytes, every float bit and the delivery guards included (state
/// equality ignores guards by design); the Debug text makes a difference readable.
fn assert_same<T: Serialize + std::fmt::Debug>(loaded: &[T], saved: &[T], what: &str) {
    assert_eq!(loaded.len(), saved.len(), "{what}: how many");
    for (loaded, saved) in loaded.iter().zip(saved) {
        assert_eq!(format!("{loaded:?}"), format!("{saved:?}"), "{what}");
        assert_eq!(
            bincode::serialize(loaded).unwrap(),
            bincode::serialize(saved).unwrap(),
            "{what}: bytes"
        );
    }
}

async fn load_everything(store: &dyn StateStore, world: &World) -> StateBatch {
    let (users, sessions) = store
        .load_user_side(world.user_ids(), world.session_keys())
        .await
        .expect("the user side loads");
    let (products, categories) = store
        .load_catalog(world.product_ids(), Vec::new())
        .await
        .expect("the catalog loads");
    let mut loaded = StateBatch {
        sessions,
        users,
        products,
        categories,
        ..StateBatch::default()
    };
    sort(&mut loaded);
    loaded
}

fn event(
    time: Millis,
    event_type: EventType,
    user_id: u64,
    session: &str,
    product_id: u64,
) -> Event {
    Event {
        time,
        event_type,
        product_id,
        category_id: u64::MAX - product_id % 3,
        category_code: None,
        brand: None,
        price: 0.1 + 0.2 + product_id as f64 / 7.0,
        user_id,
        user_session: session.to_owned(),
        event_id: None,
    }
}

/// Hand-made states at the edges: ids above i64::MAX, a unicode session string, a session that
/// touched no product, products never viewed (no last view), a user who never bought.
fn edge_states() -> StateBatch {
    let user_id = u64::MAX;
    let mut guarded = Guarded::default();
    let events = [
        event(1_000, EventType::Cart, user_id, "séance ✓", 1 << 63),
        event(2_000, EventType::Cart, user_id, "séance ✓", 5),
        event(3_000, EventType::RemoveFromCart, user_id, "séance ✓", 5),
    ];
    for event in &events {
        guarded.apply(event, 0);
    }
    let mut batch = guarded.batch();
    batch
        .sessions
        .push(Stored::new(SessionState::new(42, "an empty session", -5)));
    sort(&mut batch);
    batch
}

// --- The contract ----------------------------------------------------------------------------

/// Every entity of a replayed clickstream, and the edge states, load back exactly as saved.
async fn saved_state_loads_back_exactly(store: &dyn StateStore) {
    let world = World::replay(120, 3, 5);
    assert!(
        world.batch.sessions.len() > 100,
        "{}",
        world.batch.sessions.len()
    );
    assert!(
        world.batch.users.iter().any(|user| user.guard.len() > 2)
            && world
                .batch
                .products
                .iter()
                .any(|product| product.guard.len() > 2),
        "guards hold identities"
    );
    assert!(
        world.batch.sessions.iter().any(|session| {
            session.state.products.len() > 2 && session.state.counts.purchases > 0
        }),
        "some sessions bought among several products"
    );
    save(store, &world.batch).await.expect("the save works");
    let loaded = load_everything(store, &world).await;
    assert_same(&loaded.users, &world.batch.users, "users");
    assert_same(&loaded.sessions, &world.batch.sessions, "sessions");
    assert_same(&loaded.products, &world.batch.products, "products");
    assert_same(&loaded.categories, &world.batch.categories, "categories");

    let edges = World {
        batch: edge_states(),
    };
    assert!(
        edges
            .batch
            .sessions
            .iter()
            .any(|s| s.state.products.is_empty())
    );
    assert!(
        edges.batch.sessions[0..]
            .iter()
            .flat_map(|s| &s.state.products)
            .all(|p| p.last_view_at.is_none())
    );
    save(store, &edges.batch).await.expect("the save works");
    let loaded = load_everything(store, &edges).await;
    assert_same(&loaded.users, &edges.batch.users, "edge users");
    assert_same(&loaded.sessions, &edges.batch.sessions, "edge sessions");
    assert_same(&loaded.products, &edges.batch.products, "edge products");
    assert_same(
        &loaded.categories,
        &edges.batch.categories,
        "edge categories",
    );
}

/// Asking for what was never saved gives nothing, and known entities still come back.
async fn missing_entities_load_as_nothing(store: &dyn StateStore) {
    let (users, sessions) = store
        .load_user_side(
            vec![9_000_001, 9_000_002],
            vec![SessionKey::new(9_000_001, "none")],
        )
        .await
        .unwrap();
    assert!(users.is_empty() && sessions.is_empty());
    let (products, categories) = store
        .load_catalog(vec![9_000_003], vec![9_000_004])
        .await
        .unwrap();
    assert!(products.is_empty() && categories.is_empty());

    let known = Stored::new(UserState::new(9_000_005, 10));
    let batch = StateBatch {
        users: vec![known.clone()],
        ..StateBatch::default()
    };
    save(store, &batch).await.unwrap();
    let (users, _) = store
        .load_user_side(vec![9_000_006, 9_000_005, 9_000_007], Vec::new())
        .await
        .unwrap();
    assert_eq!(users, vec![known]);
}

/// A later save of an entity replaces the earlier one; a session restarted under the same key
/// (after a timeout) keeps none of the old session's products.
async fn a_newer_save_overwrites(store: &dyn StateStore) {
    let user_id = 9_100_000;
    let first_events = [
        event(1_000, EventType::View, user_id, "s", 11),
        event(2_000, EventType::Cart, user_id, "s", 12),
        event(3_000, EventType::View, user_id, "s", 13),
    ];
    let mut guarded = Guarded::default();
    for event in &first_events {
        guarded.apply(event, 0);
    }
    let key = SessionKey::new(user_id, "s");
    let snapshot = |guarded: &mut Guarded| {
        let product = guarded.products[&(11, 0)].clone();
        let category = guarded.categories[&(product.state.category_id, 0)].clone();
        StateBatch {
            sessions: vec![guarded.session(key)],
            users: vec![guarded.user(user_id)],
            products: vec![product],
            categories: vec![category],
            ..StateBatch::default()
        }
    };
    save(store, &snapshot(&mut guarded)).await.unwrap();

    // Much later, the same session string starts a new session touching one other product.
    let later = event(TIMEOUT * 3, EventType::Purchase, user_id, "s", 11);
    guarded.apply(&later, 0);
    let newer = snapshot(&mut guarded);
    assert_eq!(newer.sessions[0].state.products.len(), 1);
    save(store, &newer).await.unwrap();

    let (users, sessions) = store
        .load_user_side(vec![user_id], vec![key])
        .await
        .unwrap();
    assert_same(&sessions, &newer.sessions, "the newer session");
    assert_same(&users, &newer.users, "the newer user");
    let (products, categories) = store.load_catalog(vec![11], Vec::new()).await.unwrap();
    assert_same(&products, &newer.products, "the newer product");
    assert_same(&categories, &newer.categories, "the newer category");
    assert_eq!(products[0].state.counts.purchases, 1);
}

/// A save that lists a session twice (it ended and started again under its key between two
/// flushes, or its end rides along twice) stores the later state whole, delivery guard included,
/// and not a mix of the two.
async fn the_later_of_two_states_in_one_save_wins(store: &dyn StateStore) {
    let user_id = 9_150_000;
    let mut guarded = Guarded::default();
    for (time, kind, product) in [
        (1_000, EventType::View, 21),
        (2_000, EventType::Cart, 22),
        (3_000, EventType::View, 23),
        (4_000, EventType::Cart, 21),
    ] {
        guarded.apply(&event(time, kind, user_id, "twice", product), 0);
    }
    let key = SessionKey::new(user_id, "twice");
    let ended = guarded.session(key);
    guarded.forget_acknowledged();
    guarded.forget_acknowledged();
    guarded.apply(
        &event(TIMEOUT * 3, EventType::View, user_id, "twice", 24),
        0,
    );
    let restarted = guarded.session(key);
    assert!(restarted.state.counts.events < ended.state.counts.events);
    let batch = StateBatch {
        sessions: vec![ended, restarted.clone()],
        users: vec![guarded.user(user_id)],
        ..StateBatch::default()
    };
    save(store, &batch).await.unwrap();
    let (_, sessions) = store.load_user_side(Vec::new(), vec![key]).await.unwrap();
    assert_same(
        &sessions,
        &[restarted],
        "the later of two states of a session",
    );
}

/// Loading products brings their categories, and asked-for categories come on their own.
async fn loaded_products_bring_their_categories(store: &dyn StateStore) {
    let mut guarded = Guarded::default();
    let events: Vec<Event> = (0..6)
        .map(|index| {
            let mut event = event(
                1_000 + index,
                EventType::View,
                9_200_000,
                "c",
                9_200_100 + index as u64,
            );
            event.category_id = 9_200_200 + index as u64 % 2;
            event
        })
        .collect();
    for event in &events {
        guarded.apply(event, 0);
    }
    let batch = StateBatch {
        users: Vec::new(),
        sessions: Vec::new(),
        ..guarded.batch()
    };
    save(store, &batch).await.unwrap();

    let (products, mut categories) = store
        .load_catalog(vec![9_200_100, 9_200_102], Vec::new())
        .await
        .unwrap();
    assert_eq!(products.len(), 2);
    categories.sort_by_key(|category| category.state.category_id);
    assert_same(
        &categories,
        &batch.categories[..1],
        "the products' one category",
    );

    let (products, mut categories) = store
        .load_catalog(vec![9_200_101], vec![9_200_200, 9_200_299])
        .await
        .unwrap();
    assert_eq!(products.len(), 1);
    categories.sort_by_key(|category| category.state.category_id);
    assert_same(
        &categories,
        &batch.categories,
        "asked for and of the product, once each",
    );
}

/// Thousands of entities in one save all load back; returns the rows written per second.
async fn a_large_batch_round_trips(store: &dyn StateStore) -> f64 {
    let world = World::replay(1500, 4, 9);
    let entities = world.batch.len();
    assert!(entities > 5000, "{entities} entities");
    let rows = world
        .batch
        .users
        .iter()
        .map(|u| 1 + u.state.products.len())
        .sum::<usize>()
        + world
            .batch
            .sessions
            .iter()
            .map(|s| 1 + s.state.products.len())
            .sum::<usize>()
        + world
            .batch
            .products
            .iter()
            .map(|p| 1 + p.state.hours.len())
            .sum::<usize>()
        + world.batch.categories.len();
    let started = Instant::now();
    save(store, &world.batch).await.expect("the save works");
    let seconds = started.elapsed().as_secs_f64();
    let rate = rows as f64 / seconds;
    eprintln!(
        "saved {entities} entities ({rows} rows) in {seconds:.2} s: {rate:.0} rows/s, {:.0} entities/s",
        entities as f64 / seconds
    );
    let started = Instant::now();
    let loaded = load_everything(store, &world).await;
    eprintln!(
        "loaded them back in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_same(&loaded.users, &world.batch.users, "users");
    assert_same(&loaded.sessions, &world.batch.sessions, "sessions");
    assert_same(&loaded.products, &world.batch.products, "products");
    assert_same(&loaded.categories, &world.batch.categories, "categories");
    rate
}

/// Session ends count once: an open indexes a session; an end counts it in its tally and takes
/// it out of the index, in one step; an end (or open) of a session that ended already changes
/// nothing, whether it comes again in the same batch, in a batch made again, or later.
async fn session_ends_count_once(store: &dyn StateStore) {
    use propensity_actors::features::Outcome;
    use propensity_actors::outcomes::{OpenSession, OutcomeTally, TallyKey};
    use propensity_actors::store::Transition;
    let source = 3;
    let (first, second) = (
        SessionKey::new(9_600_000, "a"),
        SessionKey::new(9_600_001, "b"),
    );
    let open = |key, started_at| {
        Transition::Open(OpenSession {
            key,
            source,
            started_at,
            deadline: started_at + TIMEOUT,
        })
    };
    let tally = TallyKey {
        hour: 500_000,
        source,
        writer: 1,
    };
    let end = |key, started_at, outcome| {
        Transition::End(SessionEnd {
            key,
            started_at,
            outcome,
            cart_value: 2.5,
            tally,
        })
    };
    let transitions = |transitions: Vec<Transition>| StateBatch {
        transitions,
        ..StateBatch::default()
    };
    let tallies = || async {
        store
            .load_tallies(tally.hour, tally.hour)
            .await
            .expect("tallies load")
    };

    let opened = transitions(vec![open(first, 1_000), open(second, 2_000)]);
    assert!(save(store, &opened).await.unwrap().is_empty());
    let mut live = store.load_open_sessions(source).await.unwrap();
    live.sort_by_key(|open| open.started_at);
    assert_eq!(
        live.iter().map(|open| open.key).collect::<Vec<_>>(),
        [first, second]
    );
    assert!(
        store
            .load_open_sessions(source + 1)
            .await
            .unwrap()
            .is_empty()
    );

    let ended = transitions(vec![end(first, 1_000, Outcome::Abandoned)]);
    assert_eq!(save(store, &ended).await.unwrap().len(), 1, "counted");
    assert_eq!(
        save(store, &ended).await.unwrap().len(),
        0,
        "made again: nothing"
    );
    let again = transitions(vec![
        open(first, 1_000),
        end(first, 1_000, Outcome::Abandoned),
    ]);
    assert!(
        save(store, &again).await.unwrap().is_empty(),
        "ended stays ended"
    );
    let rows = tallies().await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let mut expected = OutcomeTally::default();
    expected.sessions[1] = 1;
    expected.cart_value[1] = 2.5;
    assert_eq!(rows[0], (tally, expected));
    let entry = store.load_index_entry(first, source).await.unwrap();
    assert!(entry.open.is_none() && entry.has_ended(1_000));

    // The same key, later: a new session, opened and ended within one batch, and the second
    // one ending twice in the same batch.
    let later = transitions(vec![
        open(first, 9_000),
        end(first, 9_000, Outcome::Purchased),
        end(second, 2_000, Outcome::Browsed),
        end(second, 2_000, Outcome::Browsed),
    ]);
    assert_eq!(save(store, &later).await.unwrap().len(), 2);
    let rows = tallies().await;
    assert_eq!(rows[0].1.sessions, [1, 1, 1], "{rows:?}");
    assert!(store.load_open_sessions(source).await.unwrap().is_empty());
}

/// Claims the bus partitions the contract writes, as a service does before it applies their
/// events (the ScyllaDB store writes nothing for a partition it does not own).
async fn own_partitions(store: &dyn StateStore) {
    for source in 0..8 {
        store
            .own_partition(source, 0)
            .await
            .expect("the partition is claimed");
    }
}

/// Runs every contract check against one store, naming each as it goes.
async fn honours_the_contract(store: &dyn StateStore) -> f64 {
    own_partitions(store).await;
    eprintln!("contract: session ends count once");
    session_ends_count_once(store).await;
    eprintln!("contract: saved state loads back exactly");
    saved_state_loads_back_exactly(store).await;
    eprintln!("contract: missing entities load as nothing");
    missing_entities_load_as_nothing(store).await;
    eprintln!("contract: a newer save overwrites");
    a_newer_save_overwrites(store).await;
    eprintln!("contract: the later of two states in one save wins");
    the_later_of_two_states_in_one_save_wins(store).await;
    eprintln!("contract: loaded products bring their categories");
    loaded_products_bring_their_categories(store).await;
    eprintln!("contract: a large batch round-trips");
    a_large_batch_round_trips(store).await
}

// --- The stores ------------------------------------------------------------------------------

#[tokio::test]
async fn the_embedded_store_honours_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("state.redb")).unwrap();
    honours_the_contract(&store).await;
    // The embedded store has no TTLs: a session with a purchase stays as long as one without.
    let sessions = store.dump().unwrap().sessions;
    assert!(
        sessions
            .iter()
            .any(|session| session.state.counts.purchases > 0)
    );
}

#[tokio::test]
async fn the_cassandra_store_honours_the_contract() {
    let keyspace = common::TestKeyspace::new();
    let mut settings = keyspace.settings.clone();
    settings.max_concurrency = 16;
    let store = ScyllaStore::open(&settings)
        .await
        .unwrap_or_else(|error| panic!("the store opens on {}: {error:#}", keyspace.name()));
    honours_the_contract(&store).await;
    let peak = store.peak_requests_in_flight();
    assert!(
        (2..=settings.max_concurrency).contains(&peak),
        "requests in flight peaked at {peak}, the bound is {}",
        settings.max_concurrency
    );
}

/// What Cassandra reports as the time to live of a stored session's cells.
async fn session_ttls(
    session: &scylla::client::session::Session,
    keyspace: &str,
    key: SessionKey,
) -> Vec<(Option<i32>, Option<i32>)> {
    session
        .query_unpaged(
            format!(
                "SELECT TTL(started_at), TTL(in_cart) FROM {keyspace}.sessions WHERE user_id = ? AND session_hash = ?"
            ),
            (key.user_id as i64, key.session_hash as i64),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(Option<i32>, Option<i32>)>()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test]
async fn cassandra_sessions_live_a_day_after_a_purchase_and_thirty_days_otherwise() {
    let keyspace = common::TestKeyspace::new();
    let settings = &keyspace.settings;
    assert_eq!(settings.session_ttl_seconds, 30 * 24 * 3600, "the default");
    assert_eq!(
        settings.purchased_session_ttl_seconds,
        24 * 3600,
        "the default"
    );
    let store = ScyllaStore::open(settings).await.expect("the store opens");
    own_partitions(&store).await;
    let mut guarded = Guarded::default();
    for event in [
        event(1_000, EventType::Cart, 9_300_000, "browsing", 1),
        event(1_000, EventType::View, 9_300_001, "buying", 1),
        event(2_000, EventType::Cart, 9_300_001, "buying", 2),
        event(3_000, EventType::Purchase, 9_300_001, "buying", 2),
    ] {
        guarded.apply(&event, 0);
    }
    let batch = StateBatch {
        sessions: guarded.batch().sessions,
        ..StateBatch::default()
    };
    save(&store, &batch).await.unwrap();
    let session = propensity::online::store::cluster::connect(settings)
        .await
        .unwrap();
    for (key, expected, rows) in [
        (
            SessionKey::new(9_300_000, "browsing"),
            settings.session_ttl_seconds,
            1,
        ),
        (
            SessionKey::new(9_300_001, "buying"),
            settings.purchased_session_ttl_seconds,
            2,
        ),
    ] {
        let ttls = session_ttls(&session, keyspace.name(), key).await;
        assert_eq!(ttls.len(), rows, "{key:?}");
        for (session_ttl, product_ttl) in ttls {
            for ttl in [session_ttl, product_ttl] {
                let ttl = ttl.expect("the cells have a TTL") as u32;
                // The TTL counts down from the write, a few seconds ago at most.
                assert!(
                    ttl <= expected && ttl + 300 > expected,
                    "{key:?}: TTL {ttl}, expected {expected}"
                );
            }
        }
    }
}

#[tokio::test]
async fn cassandra_writes_users_before_sessions_and_categories_before_products() {
    let keyspace = common::TestKeyspace::new();
    let store = ScyllaStore::open(&keyspace.settings)
        .await
        .expect("the store opens");
    own_partitions(&store).await;
    let session = propensity::online::store::cluster::connect(&keyspace.settings)
        .await
        .unwrap();
    // Without the users and categories tables the first stage fails, so the second, which would
    // succeed, must not run.
    for table in ["users", "categories"] {
        session
            .query_unpaged(format!("DROP TABLE {}.{table}", keyspace.name()), ())
            .await
            .unwrap();
    }
    let mut guarded = Guarded::default();
    let first = event(1_000, EventType::View, 9_400_000, "s", 9_400_001);
    guarded.apply(&first, 0);
    let everything = guarded.batch();
    let user_batch = StateBatch {
        users: everything.users.clone(),
        sessions: everything.sessions.clone(),
        ..StateBatch::default()
    };
    let error = save(&store, &user_batch).await.unwrap_err();
    assert!(
        matches!(&error, StoreError::Unavailable(message) if message.contains("writing users")),
        "{error}"
    );
    let catalog_batch = StateBatch {
        products: everything.products,
        categories: everything.categories,
        ..StateBatch::default()
    };
    let error = save(&store, &catalog_batch).await.unwrap_err();
    assert!(
        matches!(&error, StoreError::Unavailable(message) if message.contains("writing categories")),
        "{error}"
    );
    let count = |table: &'static str| {
        let session = &session;
        let keyspace = keyspace.name().to_owned();
        async move {
            session
                .query_unpaged(format!("SELECT COUNT(*) FROM {keyspace}.{table}"), ())
                .await
                .unwrap()
                .into_rows_result()
                .unwrap()
                .single_row::<(i64,)>()
                .unwrap()
                .0
        }
    };
    assert_eq!(count("sessions").await, 0, "no session was written");
    assert_eq!(count("products").await, 0, "no product was written");
}

#[tokio::test]
async fn cassandra_schema_apply_is_idempotent_and_adds_missing_columns() {
    let keyspace = common::TestKeyspace::new();
    let settings = &keyspace.settings;
    let session = propensity::online::store::cluster::connect(settings)
        .await
        .unwrap();
    let created = propensity::online::store::schema::apply(&session, settings)
        .await
        .unwrap();
    assert!(created[0].contains("created"), "{created:?}");
    assert_eq!(
        created
            .iter()
            .filter(|line| line.ends_with(": created"))
            .count(),
        5
    );
    let again = propensity::online::store::schema::apply(&session, settings)
        .await
        .unwrap();
    assert_eq!(
        again
            .iter()
            .filter(|line| line.ends_with(": up to date"))
            .count(),
        5,
        "{again:?}"
    );

    // A keyspace from before delivery guards: the upgrade adds them, static where it should.
    for table in ["sessions", "users", "products", "categories"] {
        session
            .query_unpaged(
                format!("ALTER TABLE {}.{table} DROP guard", keyspace.name()),
                (),
            )
            .await
            .unwrap();
    }
    let upgraded = propensity::online::store::schema::apply(&session, settings)
        .await
        .unwrap();
    let added: Vec<&String> = upgraded
        .iter()
        .filter(|line| line.contains("added column"))
        .collect();
    assert_eq!(added.len(), 4, "{upgraded:?}");
    assert!(
        upgraded.contains(&format!(
            "table {}.sessions: added column guard blob STATIC",
            keyspace.name()
        )),
        "{upgraded:?}"
    );
    // The store works on the upgraded keyspace.
    let store = ScyllaStore::open(settings).await.expect("the store opens");
    own_partitions(&store).await;
    let user = Stored::new(UserState::new(9_500_000, 1));
    let batch = StateBatch {
        users: vec![user.clone()],
        ..StateBatch::default()
    };
    save(&store, &batch).await.unwrap();
    let (users, _) = store
        .load_user_side(vec![9_500_000], Vec::new())
        .await
        .unwrap();
    assert_eq!(users, vec![user]);

    // A type CQL cannot change is refused, naming the column.
    let refusal = |table: &'static str, create: &'static str| {
        let (session, keyspace) = (&session, keyspace.name().to_owned());
        async move {
            for statement in [
                format!("DROP TABLE {keyspace}.{table}"),
                format!("CREATE TABLE {keyspace}.{table} {create}"),
            ] {
                session.query_unpaged(statement, ()).await.unwrap();
            }
            let error = propensity::online::store::schema::apply(session, settings)
                .await
                .unwrap_err()
                .to_string();
            // Back to the schema's layout, so the next case meets only its own table.
            session
                .query_unpaged(format!("DROP TABLE {keyspace}.{table}"), ())
                .await
                .unwrap();
            error
        }
    };
    let error = refusal(
        "categories",
        "(category_id bigint, source int, views bigint, price_buckets text, guard blob, PRIMARY KEY ((category_id), source))",
    )
    .await;
    assert!(
        error.contains("categories: column price_buckets is a regular text in the database"),
        "{error}"
    );

    // A users table of the earlier layout, one row per user with the product history elsewhere,
    // cannot become a partition with a row per product in place: refused, naming the key.
    let error = refusal(
        "users",
        "(user_id bigint PRIMARY KEY, events bigint, guard blob)",
    )
    .await;
    assert!(
        error.contains("users: key column product_id is missing"),
        "{error}"
    );

    // A products table of the layout before parts (one partition per product, hours as rows,
    // written by whichever instance flushed last): refused, naming the key it lacks.
    let error = refusal(
        "products",
        "(product_id bigint, hour bigint, events bigint STATIC, PRIMARY KEY ((product_id), hour))",
    )
    .await;
    assert!(
        error.contains("products: key column source is missing"),
        "{error}"
    );
}

#[tokio::test]
async fn an_unreachable_cluster_is_a_clear_error() {
    let mut settings = common::scylla_settings();
    settings.nodes = vec!["127.0.0.1:1".to_owned()];
    let error = match ScyllaStore::open(&settings).await {
        Ok(_) => panic!("nothing listens on port 1"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains("not reachable at 127.0.0.1:1 (store.scylla.nodes)"),
        "{error}"
    );
}

/// The ownership fence: a paused instance wakes after another took its partition over. What it
/// still holds and writes lands under the new owner's writes, and its session ends count
/// nothing; once its write window has passed it writes nothing at all.
#[tokio::test]
async fn cassandra_fences_a_former_owner_out() {
    use propensity_actors::features::Outcome;
    use propensity_actors::store::Transition;
    let keyspace = common::TestKeyspace::new();
    let former = ScyllaStore::open(&keyspace.settings)
        .await
        .expect("the store opens");
    let owner = ScyllaStore::open(&keyspace.settings)
        .await
        .expect("the store opens");
    let source = 2;
    let first = former.own_partition(source, 0).await.unwrap();
    assert_eq!(
        former.own_partition(source, 0).await.unwrap(),
        first,
        "the same lease: the same epoch"
    );
    // The shopper's events: the former owner applied the first, the new owner both.
    let mut guarded = Guarded::default();
    guarded.apply(
        &event(1_000, EventType::Cart, 9_800_000, "s", 9_800_001),
        source,
    );
    let mut held = guarded.batch();
    held.sources.insert(source);
    let session = held.sessions[0].state.clone();
    held.transitions
        .push(Transition::End(SessionEnd::of(&session, source, 0)));
    guarded.apply(
        &event(2_000, EventType::View, 9_800_000, "s", 9_800_002),
        source,
    );
    let mut newer = guarded.batch();
    newer.sources.insert(source);

    let epoch = owner.own_partition(source, 0).await.unwrap();
    assert!(
        epoch > first,
        "a claim raises the epoch: {first} then {epoch}"
    );
    save(&owner, &newer).await.expect("the owner writes");
    let late = save(&former, &held).await;
    assert!(
        matches!(late, Err(StoreError::Fenced(fenced)) if fenced == source),
        "{late:?}"
    );
    let (users, sessions) = owner
        .load_user_side(vec![9_800_000], vec![session.key()])
        .await
        .unwrap();
    assert_eq!(
        users[0].state, newer.users[0].state,
        "the owner's user stays"
    );
    assert_eq!(
        sessions[0].state, newer.sessions[0].state,
        "the owner's session stays"
    );
    let tallies = owner.load_tallies(i64::MIN, i64::MAX).await.unwrap();
    assert!(
        tallies
            .iter()
            .all(|(_, tally)| tally.sessions_with(Outcome::Abandoned) == 0),
        "the former owner counted nothing: {tallies:?}"
    );
    let entry = owner.load_index_entry(session.key(), source).await.unwrap();
    assert!(!entry.has_ended(session.started_at), "{entry:?}");

    // Past its window, the former owner cannot write the partition at all.
    tokio::time::sleep(std::time::Duration::from_millis(2_200)).await;
    let users_only = StateBatch {
        users: held.users.clone(),
        sources: held.sources.clone(),
        ..StateBatch::default()
    };
    let late = save(&former, &users_only).await;
    assert!(
        matches!(late, Err(StoreError::Fenced(fenced)) if fenced == source),
        "{late:?}"
    );
    let (users, _) = owner
        .load_user_side(vec![9_800_000], Vec::new())
        .await
        .unwrap();
    assert_eq!(users[0].state, newer.users[0].state);
    // Another partition stays the former owner's.
    former.own_partition(source + 1, 0).await.unwrap();
    let elsewhere = StateBatch {
        transitions: vec![Transition::End(SessionEnd::of(&session, source + 1, 0))],
        ..StateBatch::default()
    };
    assert_eq!(save(&former, &elsewhere).await.unwrap().len(), 1);
}

/// Each product row of a user, with the write time of its counts, as Cassandra holds them.
async fn user_product_writetimes(
    session: &scylla::client::session::Session,
    keyspace: &str,
    user_id: u64,
) -> HashMap<i64, i64> {
    session
        .query_unpaged(
            format!(
                "SELECT product_id, WRITETIME(product_events) FROM {keyspace}.users WHERE user_id = ?"
            ),
            (user_id as i64,),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(i64, i64)>()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// A shopper with 20,000 products, through the engine onto Cassandra: no batch holds more than
/// `max_batch_rows` statements, and once saved, one more event rewrites the row of its product
/// (and the user's fields), not the other 19,999.
#[actix_rt::test]
async fn a_heavy_users_saves_write_only_changed_rows_in_bounded_batches() {
    let keyspace = common::TestKeyspace::new();
    let settings = keyspace.settings.clone();
    assert_eq!(settings.max_batch_rows, 1000, "the default");
    let store = ScyllaStore::open(&settings).await.expect("the store opens");
    let app = propensity::config::Settings::load_with(
        &common::root().join("config"),
        Some("test"),
        Vec::new(),
    )
    .unwrap();
    let engine = propensity_actors::Engine::start(
        1,
        app.engine.shard_settings(None),
        Arc::new(store.clone()),
        Arc::new(propensity_actors::store::NoObserver),
    );
    let user_id = 9_500_000;
    let first_product = 1_000_000;
    let products = 20_000;
    // One view a second of a new product; a new session every 100 views.
    let events: Vec<Event> = (0..products)
        .map(|index| {
            event(
                1_000 * index as Millis,
                EventType::View,
                user_id,
                &format!("s{}", index / 100),
                first_product + index,
            )
        })
        .collect();
    for chunk in events.chunks(1000) {
        engine.ingest(chunk.to_vec()).await.unwrap();
    }
    engine.flush(false).await.unwrap();
    let largest = store.largest_batch_statements();
    assert!(
        (2..=settings.max_batch_rows).contains(&largest),
        "the largest batch held {largest} statements"
    );
    let session = propensity::online::store::cluster::connect(&settings)
        .await
        .unwrap();
    let before = user_product_writetimes(&session, keyspace.name(), user_id).await;
    assert_eq!(before.len(), products as usize);

    let touched = first_product + 4_321;
    engine
        .ingest(vec![event(
            1_000 * products as Millis,
            EventType::Cart,
            user_id,
            &format!("s{}", products / 100 - 1),
            touched,
        )])
        .await
        .unwrap();
    engine.flush(false).await.unwrap();
    let after = user_product_writetimes(&session, keyspace.name(), user_id).await;
    let mut rewritten: Vec<i64> = after
        .iter()
        .filter(|(product_id, written)| before.get(product_id) != Some(written))
        .map(|(product_id, _)| *product_id)
        .collect();
    rewritten.sort_unstable();
    assert_eq!(
        rewritten.len(),
        1,
        "{} rows rewritten for one event, the first {:?}",
        rewritten.len(),
        &rewritten[..rewritten.len().min(5)]
    );
    assert_eq!(
        rewritten,
        vec![touched as i64],
        "only the touched product's row"
    );

    // What Cassandra holds is the whole history, the new cart included.
    let (users, _) = store
        .load_user_side(vec![user_id], Vec::new())
        .await
        .unwrap();
    let user = &users[0].state;
    assert_eq!(user.products.len(), products as usize);
    assert_eq!(user.counts.carts, 1);
    assert_eq!(user.product(touched).unwrap().counts.carts, 1);
    assert_eq!(user.product(touched).unwrap().counts.views, 1);
    engine.stop().await.ok();
}
