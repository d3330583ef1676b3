//! The seam between the actors and the online store: what they save and load, as a trait the
//! service implements (embedded, ScyllaDB) and tests replace with a collector; and the observer
//! seam metrics listen on.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::delivery::{BatchPart, Stored};
use crate::features::{CategoryState, ProductState, SessionKey, SessionState, UserState};
use crate::outcomes::{IndexEntry, OpenSession, OutcomeTally, SessionEnd, TallyKey};

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
    /// Another instance took the bus partition over: this one must not write it any more.
    #[error("bus partition {0} is owned by another instance now; nothing of it was written")]
    Fenced(u16),
}

/// A change to the index of live sessions that the owner of a bus partition finds and ends them
/// by after a restart or a takeover.
#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    /// A session started: index it, with its deadline.
    Open(OpenSession),
    /// A session ended: if the index still holds this very session, take it out and count it
    /// in its tally, in one atomic step; otherwise it was counted already, and nothing happens.
    End(SessionEnd),
}

/// Dirty state coalesced per entity since the last flush, with each entity's delivery guard,
/// and the session transitions since, in the order they happened.
#[derive(Debug, Default, Clone)]
pub struct StateBatch {
    pub sessions: Vec<Stored<SessionState>>,
    pub users: Vec<Stored<UserState>>,
    pub products: Vec<Stored<ProductState>>,
    pub categories: Vec<Stored<CategoryState>>,
    pub transitions: Vec<Transition>,
    /// The bus partitions of the users and sessions written (products, categories and
    /// transitions carry theirs): the store checks that this instance still owns each.
    pub sources: std::collections::BTreeSet<u16>,
    /// For users of `users`: the products whose history with the user changed since the user
    /// was last written. A store that keeps a row per product writes only those; a user not
    /// listed here has every row written.
    pub changed_products: std::collections::BTreeMap<u64, std::collections::BTreeSet<u64>>,
}

impl StateBatch {
    /// Every bus partition the batch writes.
    pub fn partitions(&self) -> std::collections::BTreeSet<u16> {
        let mut sources = self.sources.clone();
        sources.extend(self.products.iter().map(|product| product.state.source));
        sources.extend(self.categories.iter().map(|category| category.state.source));
        sources.extend(self.transitions.iter().map(|transition| match transition {
            Transition::Open(open) => open.source,
            Transition::End(end) => end.tally.source,
        }));
        sources
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
            && self.users.is_empty()
            && self.products.is_empty()
            && self.categories.is_empty()
            && self.transitions.is_empty()
    }

    /// Entities and transitions in the batch.
    pub fn len(&self) -> usize {
        self.sessions.len()
            + self.users.len()
            + self.products.len()
            + self.categories.len()
            + self.transitions.len()
    }

    /// Adds the entities of an older batch (one whose write failed) that this batch does not
    /// already hold: newer state of the same entity wins, and each entity is written once. The
    /// older batch's transitions go first: they happened first.
    pub fn absorb_older(&mut self, mut older: StateBatch) {
        older.transitions.append(&mut self.transitions);
        self.transitions = older.transitions;
        self.sources.append(&mut older.sources);
        // The rows the older batch would have written are still unwritten: a user in both
        // writes the union, or every row when either batch said every row.
        let newer_users: std::collections::HashSet<u64> =
            self.users.iter().map(|user| user.state.user_id).collect();
        for user in &older.users {
            let user_id = user.state.user_id;
            match older.changed_products.remove(&user_id) {
                Some(older_changed) if newer_users.contains(&user_id) => {
                    if let Some(changed) = self.changed_products.get_mut(&user_id) {
                        changed.extend(older_changed);
                    }
                }
                Some(older_changed) => {
                    self.changed_products.insert(user_id, older_changed);
                }
                None => {
                    self.changed_products.remove(&user_id);
                }
            }
        }
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

/// Applies session transitions, in order, to the index entries and tallies they touch, as every
/// store must. An open indexes the session, unless it has ended already. An end of a session
/// that has not ended yet counts it in its tally and records it as ended (taking it out of the
/// index if the index holds it); an end of one that has, counts nothing. `index` holds the
/// entries of the transitions' keys (absent: nothing known) and `tallies` the rows of their ends
/// (absent: nothing counted yet); both are updated in place. Returns the ends counted.
pub fn apply_transitions(
    index: &mut std::collections::HashMap<SessionKey, IndexEntry>,
    tallies: &mut std::collections::HashMap<TallyKey, OutcomeTally>,
    transitions: &[Transition],
) -> Vec<SessionEnd> {
    let mut counted = Vec::new();
    for transition in transitions {
        match transition {
            Transition::Open(open) => {
                let entry = index.entry(open.key).or_default();
                if !entry.has_ended(open.started_at) {
                    entry.open = Some(*open);
                }
            }
            Transition::End(end) => {
                let entry = index.entry(end.key).or_default();
                if entry.has_ended(end.started_at) {
                    continue;
                }
                if entry
                    .open
                    .is_some_and(|open| open.started_at <= end.started_at)
                {
                    entry.open = None;
                }
                entry.ended_through = Some(end.started_at);
                tallies.entry(end.tally).or_default().count(end);
                counted.push(end.clone());
            }
        }
    }
    counted
}

/// Users and sessions as loaded, each with its guard.
pub type LoadedUserSide = (Vec<Stored<UserState>>, Vec<Stored<SessionState>>);
/// Product and category parts as loaded, each with its guard.
pub type LoadedCatalog = (Vec<Stored<ProductState>>, Vec<Stored<CategoryState>>);

/// Durable home of the entities' state: actors flush to it and activate from it.
pub trait StateStore: Send + Sync + 'static {
    /// Writes the batch durably; resolves, with the session ends it counted, once it is safe to
    /// acknowledge the events behind it.
    ///
    /// A store that cannot write the batch atomically writes it in stages, each starting only
    /// once the one before is durable: users before sessions, categories before products,
    /// sessions before the transitions of the session index. A redelivered event is then
    /// applied only where it is missing (see [`crate::delivery::DeliveryGuard`]), and a session
    /// end is counted once (see [`Transition::End`]): a session's state is durable before its
    /// end is counted, and a session that replaced another under the same key keeps what
    /// counting that end needs ([`crate::features::PreviousSession`]). Transitions apply in
    /// order, each end with its tally in one atomic step. The embedded store writes a batch in
    /// one transaction.
    fn save(&self, batch: Arc<StateBatch>) -> StoreFuture<Vec<SessionEnd>>;
    /// Loads the users and sessions that exist among those asked for.
    fn load_user_side(
        &self,
        users: Vec<u64>,
        sessions: Vec<SessionKey>,
    ) -> StoreFuture<LoadedUserSide>;
    /// Loads every stored part (one per source) of the products and categories asked for, plus
    /// every part of the categories of the loaded products.
    fn load_catalog(&self, products: Vec<u64>, categories: Vec<u64>) -> StoreFuture<LoadedCatalog>;

    /// Makes this instance the owner of a bus partition before it applies any event of it, so
    /// that no write of a former owner lands over its writes from then on (see the ScyllaDB
    /// store's fence). `lease` tells ownership periods apart: asking again with the same lease
    /// answers the same epoch; a new lease (after the engine dropped its state) claims anew.
    /// Returns the partition's epoch. A store only one process can open needs no fence.
    fn own_partition(&self, _source: u16, _lease: u64) -> StoreFuture<u64> {
        Box::pin(async { Ok(0) })
    }

    /// Every live session the index holds for a bus partition.
    fn load_open_sessions(&self, source: u16) -> StoreFuture<Vec<OpenSession>>;

    /// What the index holds for one session key of a bus partition.
    fn load_index_entry(&self, key: SessionKey, source: u16) -> StoreFuture<IndexEntry>;

    /// Every tally row of the hours `from_hour..=to_hour`.
    fn load_tallies(
        &self,
        from_hour: i64,
        to_hour: i64,
    ) -> StoreFuture<Vec<(TallyKey, OutcomeTally)>>;

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
    /// A session ended, and its end was counted in the store (once, whatever instance counts it).
    fn session_ended(&self, _end: &SessionEnd) {}
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

    /// The rows a failed write would have written are written with the next one: the union of
    /// both batches' changed products, or every row when either said every row.
    #[test]
    fn an_older_batch_leaves_its_changed_rows_to_the_newer() {
        let users = |ids: &[u64]| -> Vec<Stored<UserState>> {
            ids.iter()
                .map(|id| Stored::new(UserState::new(*id, 0)))
                .collect()
        };
        let changed = |entries: &[(u64, &[u64])]| {
            entries
                .iter()
                .map(|(user, products)| (*user, products.iter().copied().collect()))
                .collect::<std::collections::BTreeMap<u64, std::collections::BTreeSet<u64>>>()
        };
        let mut newer = StateBatch {
            users: users(&[1, 2, 3]),
            changed_products: changed(&[(1, &[10]), (2, &[20]), (3, &[30])]),
            ..StateBatch::default()
        };
        let older = StateBatch {
            // 1: both list rows; 2: the older wrote every row; 4: only in the older; 5: only in
            // the older, every row.
            users: users(&[1, 2, 4, 5]),
            changed_products: changed(&[(1, &[11]), (4, &[40])]),
            ..StateBatch::default()
        };
        newer.absorb_older(older);
        assert_eq!(
            newer.changed_products,
            changed(&[(1, &[10, 11]), (3, &[30]), (4, &[40])])
        );
        assert_eq!(newer.users.len(), 5);
    }
}
