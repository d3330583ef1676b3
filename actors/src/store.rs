//! The seam between the actors and the online store: what they save and load, as a trait the
//! service implements (embedded, ScyllaDB) and tests replace with a collector; and the observer
//! seam metrics listen on.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::delivery::{BatchPart, Stored};
use crate::features::{CategoryState, ProductState, SessionKey, SessionState, UserState};

/// A boxed future a store returns; stores run on any runtime thread.
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

/// Why the store could not serve a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store timed out after {0} ms")]
    Timeout(u64),
    #[error("a flush is under way")]
    Busy,
    #[error("stored state is corrupt: {0}")]
    Corrupt(String),
}

/// Dirty state coalesced per entity since the last flush, with each entity's delivery guard.
#[derive(Debug, Default, Clone)]
pub struct StateBatch {
    pub sessions: Vec<Stored<SessionState>>,
    pub users: Vec<Stored<UserState>>,
    pub products: Vec<Stored<ProductState>>,
    pub categories: Vec<Stored<CategoryState>>,
}

impl StateBatch {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
            && self.users.is_empty()
            && self.products.is_empty()
            && self.categories.is_empty()
    }

    /// Entities in the batch.
    pub fn len(&self) -> usize {
        self.sessions.len() + self.users.len() + self.products.len() + self.categories.len()
    }

    /// Adds the entities of an older batch (one whose write failed) that this batch does not
    /// already hold: newer state of the same entity wins, and each entity is written once.
    pub fn absorb_older(&mut self, older: StateBatch) {
        fn keep_missing<T, K: std::hash::Hash + Eq>(
            newer: &mut Vec<T>,
            older: Vec<T>,
            key: impl Fn(&T) -> K,
        ) {
            let present: std::collections::HashSet<K> = newer.iter().map(&key).collect();
            newer.extend(
                older
                    .into_iter()
                    .filter(|item| !present.contains(&key(item))),
            );
        }
        keep_missing(&mut self.sessions, older.sessions, |session| {
            session.state.key()
        });
        keep_missing(&mut self.users, older.users, |user| user.state.user_id);
        keep_missing(&mut self.products, older.products, |product| {
            (product.state.product_id, product.state.source)
        });
        keep_missing(&mut self.categories, older.categories, |category| {
            (category.state.category_id, category.state.source)
        });
    }
}

/// Users and sessions as loaded, each with its guard.
pub type LoadedUserSide = (Vec<Stored<UserState>>, Vec<Stored<SessionState>>);
/// Product and category parts as loaded, each with its guard.
pub type LoadedCatalog = (Vec<Stored<ProductState>>, Vec<Stored<CategoryState>>);

/// Durable home of the entities' state: actors flush to it and activate from it.
pub trait StateStore: Send + Sync + 'static {
    /// Writes the batch durably; resolves once it is safe to acknowledge the events behind it.
    ///
    /// A store that cannot write the batch atomically writes it in stages, each starting only
    /// once the one before is durable: users before sessions, categories before products. A
    /// redelivered event is then applied only where it is missing (see
    /// [`crate::delivery::DeliveryGuard`]). The embedded store writes a batch in one
    /// transaction; the ScyllaDB store writes users (their per-product rows included) and
    /// categories, and only once all of those succeeded, sessions and products.
    fn save(&self, batch: Arc<StateBatch>) -> StoreFuture<()>;
    /// Loads the users and sessions that exist among those asked for.
    fn load_user_side(
        &self,
        users: Vec<u64>,
        sessions: Vec<SessionKey>,
    ) -> StoreFuture<LoadedUserSide>;
    /// Loads every stored part (one per source) of the products and categories asked for, plus
    /// every part of the categories of the loaded products.
    fn load_catalog(&self, products: Vec<u64>, categories: Vec<u64>) -> StoreFuture<LoadedCatalog>;

    /// Loads one user; `None` when the store has never seen them.
    fn load_user(&self, user_id: u64) -> StoreFuture<Option<Stored<UserState>>> {
        let load = self.load_user_side(vec![user_id], Vec::new());
        Box::pin(async move { Ok(load.await?.0.pop()) })
    }

    /// Loads one session; `None` when the store holds none under that key.
    fn load_session(&self, key: SessionKey) -> StoreFuture<Option<Stored<SessionState>>> {
        let load = self.load_user_side(Vec::new(), vec![key]);
        Box::pin(async move { Ok(load.await?.1.pop()) })
    }
}

/// Hears about what the engine does, for metrics; every method defaults to nothing.
pub trait Observer: Send + Sync + 'static {
    /// A session ended with this outcome and cart value.
    fn session_closed(&self, _session: &SessionState) {}
    /// Events were applied (those given) and duplicates dropped.
    fn events_applied(&self, _accepted: &BatchPart, _duplicates: u64) {}
    /// A flush finished.
    fn flushed(&self, _rows: usize, _seconds: f64, _error: Option<&StoreError>) {}
}

/// An observer that ignores everything.
pub struct NoObserver;

impl Observer for NoObserver {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_batch_gives_way_to_newer_state() {
        let mut newer = StateBatch {
            users: vec![Stored::new(UserState::new(1, 50))],
            sessions: vec![Stored::new(SessionState::new(1, "a", 50))],
            ..StateBatch::default()
        };
        let older = StateBatch {
            users: vec![
                Stored::new(UserState::new(1, 10)),
                Stored::new(UserState::new(2, 10)),
            ],
            sessions: vec![
                Stored::new(SessionState::new(1, "a", 10)),
                Stored::new(SessionState::new(1, "b", 10)),
            ],
            categories: vec![Stored::new(CategoryState::new(3, 0))],
            ..StateBatch::default()
        };
        newer.absorb_older(older);
        assert_eq!(newer.len(), 5);
        assert_eq!(
            newer
                .users
                .iter()
                .find(|user| user.state.user_id == 1)
                .unwrap()
                .state
                .first_event_at,
            50
        );
        assert_eq!(
            newer
                .sessions
                .iter()
                .find(|session| &*session.state.session_id == "a")
                .unwrap()
                .state
                .started_at,
            50
        );
        assert!(
            newer
                .sessions
                .iter()
                .any(|session| &*session.state.session_id == "b")
        );
    }
}
