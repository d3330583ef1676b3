//! The read board: what the entity actors publish for scoring to read on the HTTP worker's own
//! thread, without a message to another thread and without waiting behind an ingest batch.
//!
//! Each live [`crate::session::SessionActor`] and [`crate::user::UserActor`] keeps its state in
//! a cell it shares with the board: it writes the cell under a short lock while it applies a
//! batch, and a score reads it under the same lock. An actor publishes its cell once loaded
//! (step 2 of [`crate::lifecycle`]) and withdraws it when it stops, so an entity that is
//! activating, failed or passivated is not on the board, and a read of it goes through the
//! actors as before. Each catalog partition shares its products and categories the same way.
//!
//! A read from the board sees a state the actors were in:
//! - a user's batch moves its sessions first, then the user's history; the user's cell counts
//!   batches begun and ended (a sequence lock), and a read that overlaps a batch of its user is
//!   not used;
//! - catalog batches go to the catalog partitions without a reply, so the board's products are
//!   those of the batches the partitions have applied: a score does not wait behind a batch of
//!   other shoppers' events. `POST /v1/events` answers once the catalog has applied its events
//!   ([`crate::engine::Engine::catalog_caught_up`]), so a client that sent events and then
//!   scores sees them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use foldhash::HashMap;
use parking_lot::RwLock;

use crate::features::{
    self, CategoryState, FEATURE_COUNT, ProductState, SessionKey, SessionState, USER_SIDE_COUNT,
    UserState,
};

/// A session's state, shared by its actor and the board.
#[derive(Default)]
pub struct SessionCell {
    pub state: RwLock<Option<SessionState>>,
}

/// A user's state, shared by its actor and the board.
#[derive(Default)]
pub struct UserCell {
    /// Odd while a batch of the user is being applied (to its sessions, then to it).
    batches: AtomicU64,
    pub state: RwLock<Option<UserState>>,
}

impl UserCell {
    /// A batch of the user starts: its sessions are about to change. It ends, applied to the
    /// user and its sessions (or abandoned), when the returned value is dropped.
    pub fn begin_batch(self: &Arc<Self>) -> UserBatch {
        self.batches.fetch_add(1, Ordering::SeqCst);
        UserBatch(self.clone())
    }
}

/// A batch of a user being applied; see [`UserCell::begin_batch`].
pub struct UserBatch(Arc<UserCell>);

impl Drop for UserBatch {
    fn drop(&mut self) {
        self.0.batches.fetch_add(1, Ordering::SeqCst);
    }
}

/// A catalog partition's products and categories, by part key (id, source).
#[derive(Default)]
pub struct CatalogMaps {
    pub products: HashMap<(u64, u16), crate::delivery::Stored<ProductState>>,
    pub categories: HashMap<(u64, u16), crate::delivery::Stored<CategoryState>>,
}

/// One catalog partition as the board sees it.
#[derive(Default)]
pub struct CatalogCell {
    /// Whether scores may read the maps: one source, every part in memory or in the store.
    readable: bool,
    pub maps: RwLock<CatalogMaps>,
}

/// Stripes of the session and user maps: publishing and withdrawing lock one stripe.
const STRIPES: usize = 64;

type Stripe<K, V> = RwLock<HashMap<K, Arc<V>>>;

/// The board of one engine.
pub struct Board {
    sessions: Vec<Stripe<SessionKey, SessionCell>>,
    users: Vec<Stripe<u64, UserCell>>,
    catalogs: Vec<Arc<CatalogCell>>,
}

fn stripe(user_id: u64) -> usize {
    (xxhash_rust::xxh3::xxh3_64(&user_id.to_le_bytes()) % STRIPES as u64) as usize
}

/// Publishes `cell` under `key`, in place of whatever was there (an actor that is stopping).
fn publish<K: std::hash::Hash + Eq, V>(stripe: &Stripe<K, V>, key: K, cell: &Arc<V>) {
    stripe.write().insert(key, cell.clone());
}

/// Withdraws `cell` from under `key`, unless another actor's cell took its place.
fn withdraw<K: std::hash::Hash + Eq, V>(stripe: &Stripe<K, V>, key: &K, cell: &Arc<V>) {
    let mut map = stripe.write();
    if map.get(key).is_some_and(|kept| Arc::ptr_eq(kept, cell)) {
        map.remove(key);
    }
}

impl Board {
    /// A board for `catalog_partitions` partitions; their maps are read by scores only when
    /// `catalog_readable` (one source: every part of a product is in memory or in the store).
    pub fn new(catalog_partitions: usize, catalog_readable: bool) -> Self {
        Board {
            sessions: (0..STRIPES).map(|_| RwLock::default()).collect(),
            users: (0..STRIPES).map(|_| RwLock::default()).collect(),
            catalogs: (0..catalog_partitions.max(1))
                .map(|_| {
                    Arc::new(CatalogCell {
                        readable: catalog_readable,
                        ..CatalogCell::default()
                    })
                })
                .collect(),
        }
    }

    pub fn publish_session(&self, key: SessionKey, cell: &Arc<SessionCell>) {
        publish(&self.sessions[stripe(key.user_id)], key, cell);
    }

    pub fn withdraw_session(&self, key: SessionKey, cell: &Arc<SessionCell>) {
        withdraw(&self.sessions[stripe(key.user_id)], &key, cell);
    }

    pub fn publish_user(&self, user_id: u64, cell: &Arc<UserCell>) {
        publish(&self.users[stripe(user_id)], user_id, cell);
    }

    pub fn withdraw_user(&self, user_id: u64, cell: &Arc<UserCell>) {
        withdraw(&self.users[stripe(user_id)], &user_id, cell);
    }

    /// Withdraws every user and session `owned` claims (a shard dropped its state).
    pub fn withdraw_all(&self, owned: impl Fn(u64) -> bool) {
        for stripe in &self.sessions {
            stripe.write().retain(|key, _| !owned(key.user_id));
        }
        for stripe in &self.users {
            stripe.write().retain(|user_id, _| !owned(*user_id));
        }
    }

    /// The cell of catalog partition `partition`.
    pub fn catalog(&self, partition: usize) -> &Arc<CatalogCell> {
        &self.catalogs[partition]
    }

    /// The user-side features of a session for each product, one after another, as
    /// [`crate::user::user_side_vectors`] computes them; `None` when the session or its user
    /// is not on the board, or a batch of the user is being applied.
    pub fn user_side(&self, key: SessionKey, product_ids: &[u64]) -> Option<crate::user::UserSide> {
        let stripe = stripe(key.user_id);
        let session = self.sessions[stripe].read().get(&key).cloned()?;
        let user = self.users[stripe].read().get(&key.user_id).cloned()?;
        let before = user.batches.load(Ordering::SeqCst);
        if before % 2 == 1 {
            return None;
        }
        let vectors = {
            let session = session.state.read();
            let user_state = user.state.read();
            crate::user::user_side(session.as_ref(), user_state.as_ref(), product_ids)
        };
        (user.batches.load(Ordering::SeqCst) == before).then_some(vectors)
    }

    /// The catalog-side features of each product, one after another; `None` when a product is
    /// not in memory (it may be in the store) or the catalog has several sources.
    pub fn catalog_side(&self, product_ids: &[u64]) -> Option<Vec<f64>> {
        let width = FEATURE_COUNT - USER_SIDE_COUNT;
        let mut out = vec![0.0; product_ids.len() * width];
        let partitions = self.catalogs.len();
        for (index, product_id) in product_ids.iter().enumerate() {
            let cell = &self.catalogs[crate::catalog::partition_of(*product_id, partitions)];
            if !cell.readable {
                return None;
            }
            let maps = cell.maps.read();
            let product = &maps.products.get(&(*product_id, 0))?.state;
            let category = maps
                .categories
                .get(&(product.category_id, 0))
                .map(|part| &part.state);
            features::catalog_features(
                Some(product),
                category,
                &mut out[index * width..(index + 1) * width],
            );
        }
        Some(out)
    }

    /// Whether the session and its user are both active, their state in memory.
    pub fn holds(&self, key: SessionKey) -> bool {
        let stripe = stripe(key.user_id);
        self.sessions[stripe].read().contains_key(&key)
            && self.users[stripe].read().contains_key(&key.user_id)
    }

    /// Sessions and users on the board, for tests and stats.
    pub fn counts(&self) -> (usize, usize) {
        (
            self.sessions.iter().map(|stripe| stripe.read().len()).sum(),
            self.users.iter().map(|stripe| stripe.read().len()).sum(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Stored;
    use crate::event::{Event, EventType};

    fn event(event_type: EventType, product_id: u64) -> Event {
        Event {
            time: 1_000,
            event_type,
            product_id,
            category_id: 9,
            category_code: None,
            brand: None,
            price: 25.0,
            user_id: 7,
            user_session: "s".into(),
            event_id: None,
        }
    }

    /// A board with user 7 and its session "s" on it, after a cart of product 1.
    fn board_with_session() -> (Board, SessionKey, Arc<SessionCell>, Arc<UserCell>) {
        let board = Board::new(1, true);
        let cart = event(EventType::Cart, 1);
        let key = SessionKey::of(&cart);
        let session = Arc::new(SessionCell::default());
        let mut state = SessionState::new(7, "s", cart.time);
        state.apply(&cart);
        *session.state.write() = Some(state);
        let user = Arc::new(UserCell::default());
        *user.state.write() = Some(UserState::new(7, cart.time));
        board.publish_session(key, &session);
        board.publish_user(7, &user);
        (board, key, session, user)
    }

    #[test]
    fn user_side_reads_what_the_actors_would_answer() {
        let (board, key, session, user) = board_with_session();
        let expected = crate::user::user_side_vectors(
            session.state.read().as_ref(),
            user.state.read().as_ref(),
            &[1, 2],
        );
        assert_eq!(
            board.user_side(key, &[1, 2]).map(|side| side.vectors),
            Some(expected)
        );
        // A session that is not on the board (loading, or never seen) is asked of its actors.
        assert_eq!(board.user_side(SessionKey::new(7, "other"), &[1]), None);
    }

    #[test]
    fn a_batch_of_the_user_in_flight_sends_reads_to_the_actors() {
        let (board, key, _, user) = board_with_session();
        let batch = user.begin_batch();
        assert_eq!(
            board.user_side(key, &[1]),
            None,
            "sessions moved, the user not yet"
        );
        drop(batch);
        assert!(board.user_side(key, &[1]).is_some());
    }

    #[test]
    fn a_stopping_actor_withdraws_only_its_own_cell() {
        let (board, key, old, _) = board_with_session();
        // A new actor for the key published its cell before the old one stopped.
        let new = Arc::new(SessionCell::default());
        board.publish_session(key, &new);
        board.withdraw_session(key, &old);
        assert_eq!(board.counts(), (1, 1));
        assert!(board.holds(key));
        board.withdraw_session(key, &new);
        assert_eq!(board.counts(), (0, 1));
        assert!(!board.holds(key));
        assert_eq!(board.user_side(key, &[1]), None);
    }

    #[test]
    fn a_dropped_shard_leaves_the_board() {
        let (board, key, _, _) = board_with_session();
        board.withdraw_all(|user_id| user_id != 7);
        assert_eq!(board.counts(), (1, 1));
        board.withdraw_all(|user_id| user_id == 7);
        assert_eq!(board.counts(), (0, 0));
        assert_eq!(board.user_side(key, &[1]), None);
    }

    #[test]
    fn catalog_reads_need_every_product_in_memory_and_one_source() {
        let board = Board::new(1, true);
        let view = event(EventType::View, 1);
        let cell = board.catalog(0);
        {
            let mut maps = cell.maps.write();
            let mut product = ProductState::new(&view, 0);
            product.apply(&view);
            let mut category = CategoryState::new(9, 0);
            category.add_view(view.price);
            maps.products.insert((1, 0), Stored::new(product));
            maps.categories.insert((9, 0), Stored::new(category));
        }
        let read = board
            .catalog_side(&[1])
            .expect("in memory, nothing pending");
        let maps = cell.maps.read();
        let mut expected = vec![0.0; FEATURE_COUNT - USER_SIDE_COUNT];
        features::catalog_features(
            Some(&maps.products[&(1, 0)].state),
            Some(&maps.categories[&(9, 0)].state),
            &mut expected,
        );
        drop(maps);
        assert_eq!(read, expected);
        // A product not in memory may be in the store: its partition's actor reads it.
        assert_eq!(board.catalog_side(&[1, 2]), None);
        // Several sources: parts of other instances are in the store, never read here.
        let shared = Board::new(1, false);
        *shared.catalog(0).maps.write() = std::mem::take(&mut *cell.maps.write());
        assert_eq!(shared.catalog_side(&[1]), None);
    }
}
