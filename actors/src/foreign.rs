//! Read-only copies of the users and sessions another instance owns. When instances share the
//! bus's partitions, only the instance that consumes a user's partition runs that user's actors
//! and writes its state. Any other instance answers scores and reads for the user from a copy
//! of what the store holds, read again once it is older than `engine.foreign_state_max_age_ms`.
//! A copy starts no actor, so it is never written back, never ends a session and never counts
//! an outcome; the first event of the user (a takeover) activates the user's actors from the
//! store as any activation does, and the copies are forgotten as they age.

use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt};
use futures_util::future::join_all;

use crate::features::{SessionKey, UserState};
use crate::session::SessionView;
use crate::store::{StateStore, StoreError};

/// A value as read from the store, and when.
struct Copy<T> {
    read_at: Instant,
    value: T,
}

/// The copies a shard keeps of users and sessions it does not own.
pub struct ForeignCopies {
    max_age: Duration,
    partitions: u16,
    users: HashMap<u64, Copy<Option<UserState>>>,
    sessions: HashMap<SessionKey, Copy<Option<SessionView>>>,
}

fn fresh<K: Hash + Eq, T: Clone>(
    copies: &HashMap<K, Copy<T>>,
    key: &K,
    max_age: Duration,
) -> Option<T> {
    copies
        .get(key)
        .filter(|copy| copy.read_at.elapsed() < max_age)
        .map(|copy| copy.value.clone())
}

impl ForeignCopies {
    /// No copies yet; copies older than `max_age` are read again. `partitions`: the bus's.
    pub fn new(max_age: Duration, partitions: u16) -> Self {
        ForeignCopies {
            max_age,
            partitions,
            users: HashMap::new(),
            sessions: HashMap::new(),
        }
    }

    /// The user's copy if it is fresh enough (`Some(None)`: the store has no such user).
    pub fn user(&self, user_id: u64) -> Option<Option<UserState>> {
        fresh(&self.users, &user_id, self.max_age)
    }

    /// The session's copy if it is fresh enough.
    pub fn session(&self, key: SessionKey) -> Option<Option<SessionView>> {
        fresh(&self.sessions, &key, self.max_age)
    }

    /// Keeps a user as just read.
    pub fn keep_user(&mut self, user_id: u64, value: Option<UserState>, read_at: Instant) {
        self.users.insert(user_id, Copy { read_at, value });
    }

    /// Keeps a session as just read.
    pub fn keep_session(&mut self, key: SessionKey, value: Option<SessionView>, read_at: Instant) {
        self.sessions.insert(key, Copy { read_at, value });
    }

    /// Forgets the copies too old to answer from.
    pub fn sweep(&mut self) {
        let max_age = self.max_age;
        self.users
            .retain(|_, copy| copy.read_at.elapsed() < max_age);
        self.sessions
            .retain(|_, copy| copy.read_at.elapsed() < max_age);
    }

    /// Forgets every copy.
    pub fn clear(&mut self) {
        self.users.clear();
        self.sessions.clear();
    }

    /// Copies held.
    pub fn len(&self) -> usize {
        self.users.len() + self.sessions.len()
    }

    /// Whether no copy is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads what a copy of the user needs from the store.
    pub fn load_user(
        &self,
        store: Arc<dyn StateStore>,
        user_id: u64,
    ) -> impl Future<Output = Result<Option<UserState>, StoreError>> + use<> {
        async move { Ok(store.load_user(user_id).await?.map(|stored| stored.state)) }
    }

    /// Reads a session and tells live from ended by the owners' index (the session's partition
    /// is not known here, so every partition's entry for the key is read).
    pub fn load_session(
        &self,
        store: Arc<dyn StateStore>,
        key: SessionKey,
    ) -> impl Future<Output = Result<Option<SessionView>, StoreError>> + use<> {
        let partitions = self.partitions;
        async move {
            let Some(stored) = store.load_session(key).await? else {
                return Ok(None);
            };
            let entries =
                join_all((0..partitions).map(|source| store.load_index_entry(key, source))).await;
            let mut live = false;
            for entry in entries {
                live |= entry?
                    .open
                    .is_some_and(|open| open.started_at == stored.state.started_at);
            }
            Ok(Some(if live {
                SessionView::Live(stored.state)
            } else {
                SessionView::Ended(stored.state)
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_answer_until_they_are_too_old() {
        let mut copies = ForeignCopies::new(Duration::from_millis(50), 4);
        assert_eq!(copies.user(7), None, "nothing read yet");
        copies.keep_user(7, None, Instant::now());
        assert_eq!(
            copies.user(7),
            Some(None),
            "read: the store has no such user"
        );
        copies.keep_user(8, None, Instant::now() - Duration::from_millis(60));
        assert_eq!(copies.user(8), None, "too old: read again");
        copies.sweep();
        assert_eq!(copies.len(), 1);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(copies.user(7), None);
        copies.sweep();
        assert!(copies.is_empty());
    }
}
