//! `WriteBehind`: the one flushing mechanism of every stateful actor (the shards for users and
//! sessions, the catalog partitions for products and categories). The actor hands it a batch of
//! snapshots; it writes at most one batch at a time, keeps a batch whose write failed and writes
//! it again under newer state of the same entities, and tells whether the store is healthy.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use crate::outcomes::SessionEnd;
use crate::store::{Observer, StateBatch, StateStore, StoreError};

/// Write-behind state of one actor.
pub struct WriteBehind {
    store: Arc<dyn StateStore>,
    observer: Arc<dyn Observer>,
    /// A batch whose write failed, written again with the next one.
    failed: Option<Arc<StateBatch>>,
    saving: bool,
    last_error: Option<StoreError>,
}

/// A finished write, to hand back to [`WriteBehind::finish`].
pub struct SaveDone {
    batch: Arc<StateBatch>,
    result: Result<Vec<SessionEnd>, StoreError>,
    started: Instant,
}

/// What a write did.
#[derive(Debug, Default)]
pub struct Saved {
    /// Entities and transitions written.
    pub rows: usize,
    /// The session ends it counted; the observer heard of each.
    pub ended: Vec<SessionEnd>,
}

impl WriteBehind {
    /// Nothing written yet.
    pub fn new(store: Arc<dyn StateStore>, observer: Arc<dyn Observer>) -> Self {
        WriteBehind {
            store,
            observer,
            failed: None,
            saving: false,
            last_error: None,
        }
    }

    /// Whether a write is under way.
    pub fn is_saving(&self) -> bool {
        self.saving
    }

    /// Whether the last write succeeded (or none failed yet).
    pub fn is_healthy(&self) -> bool {
        self.last_error.is_none()
    }

    /// Whether a failed batch waits to be written again.
    pub fn has_failed_batch(&self) -> bool {
        self.failed.is_some()
    }

    /// Starts writing `batch` with whatever a failed write left (newer state wins); `None` when
    /// there is nothing to write or a write is under way (callers check [`Self::is_saving`]
    /// first and take their snapshots only then).
    pub fn begin(
        &mut self,
        mut batch: StateBatch,
    ) -> Option<impl Future<Output = SaveDone> + use<>> {
        if self.saving {
            return None;
        }
        if let Some(failed) = self.failed.take() {
            batch.absorb_older(Arc::unwrap_or_clone(failed));
        }
        if batch.is_empty() {
            return None;
        }
        self.saving = true;
        let batch = Arc::new(batch);
        let save = self.store.save(batch.clone());
        let started = Instant::now();
        Some(async move {
            let result = save.await;
            SaveDone {
                batch,
                result,
                started,
            }
        })
    }

    /// Records how a write ended: what it wrote, or the error (the batch is kept to write
    /// again). The observer hears of every session end the write counted.
    pub fn finish(&mut self, done: SaveDone) -> Result<Saved, StoreError> {
        self.saving = false;
        let rows = done.batch.len();
        self.observer.flushed(
            rows,
            done.started.elapsed().as_secs_f64(),
            done.result.as_ref().err(),
        );
        match done.result {
            Ok(ended) => {
                self.last_error = None;
                for end in &ended {
                    self.observer.session_ended(end);
                }
                Ok(Saved { rows, ended })
            }
            Err(StoreError::Fenced(source)) => {
                // Another instance owns a partition of the batch now: nothing of it may be
                // written, and the actor drops what it holds.
                tracing::error!(
                    source,
                    rows,
                    "bus partition {source} is owned by another instance: a batch was dropped"
                );
                Err(StoreError::Fenced(source))
            }
            Err(error) => {
                self.failed = Some(done.batch);
                self.last_error = Some(error.clone());
                Err(error)
            }
        }
    }

    /// Forgets everything not yet written (an instance that lost its bus connection).
    pub fn drop_pending(&mut self) {
        self.failed = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Stored;
    use crate::features::{SessionKey, UserState};
    use crate::store::{LoadedCatalog, LoadedUserSide, NoObserver, StoreFuture};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Records what it saves; fails while `down` is set.
    #[derive(Default)]
    struct Recorder {
        down: AtomicBool,
        saved: Mutex<Vec<Vec<u64>>>,
    }

    impl StateStore for Arc<Recorder> {
        fn save(&self, batch: Arc<StateBatch>) -> StoreFuture<Vec<SessionEnd>> {
            let down = self.down.load(Ordering::SeqCst);
            if !down {
                let users = batch.users.iter().map(|user| user.state.user_id).collect();
                self.saved.lock().unwrap().push(users);
            }
            Box::pin(async move {
                if down {
                    Err(StoreError::Timeout(1))
                } else {
                    Ok(Vec::new())
                }
            })
        }

        fn load_open_sessions(&self, _: u16) -> StoreFuture<Vec<crate::outcomes::OpenSession>> {
            Box::pin(async { Ok(Vec::new()) })
        }

        fn load_tallies(
            &self,
            _: i64,
            _: i64,
        ) -> StoreFuture<Vec<(crate::outcomes::TallyKey, crate::outcomes::OutcomeTally)>> {
            Box::pin(async { Ok(Vec::new()) })
        }

        fn load_index_entry(
            &self,
            _: SessionKey,
            _: u16,
        ) -> StoreFuture<crate::outcomes::IndexEntry> {
            Box::pin(async { Ok(Default::default()) })
        }

        fn load_user_side(&self, _: Vec<u64>, _: Vec<SessionKey>) -> StoreFuture<LoadedUserSide> {
            Box::pin(async { Ok((Vec::new(), Vec::new())) })
        }

        fn load_catalog(&self, _: Vec<u64>, _: Vec<u64>) -> StoreFuture<LoadedCatalog> {
            Box::pin(async { Ok((Vec::new(), Vec::new())) })
        }
    }

    fn users(ids: &[u64], first_event_at: i64) -> StateBatch {
        StateBatch {
            users: ids
                .iter()
                .map(|id| Stored::new(UserState::new(*id, first_event_at)))
                .collect(),
            ..StateBatch::default()
        }
    }

    #[actix::test]
    async fn a_failed_batch_is_written_again_under_newer_state() {
        let store = Arc::new(Recorder::default());
        let mut write_behind = WriteBehind::new(Arc::new(store.clone()), Arc::new(NoObserver));
        assert!(
            write_behind.begin(StateBatch::default()).is_none(),
            "nothing to write"
        );

        store.down.store(true, Ordering::SeqCst);
        let done = write_behind.begin(users(&[1, 2], 10)).unwrap().await;
        assert!(write_behind.finish(done).is_err());
        assert!(!write_behind.is_healthy() && write_behind.has_failed_batch());

        store.down.store(false, Ordering::SeqCst);
        let save = write_behind.begin(users(&[2, 3], 20)).unwrap();
        assert!(write_behind.is_saving());
        assert!(
            write_behind.begin(users(&[4], 20)).is_none(),
            "one write at a time"
        );
        let done = save.await;
        assert_eq!(
            write_behind.finish(done).unwrap().rows,
            3,
            "users 1, 2 and 3"
        );
        assert!(write_behind.is_healthy() && !write_behind.has_failed_batch());
        let mut saved = store.saved.lock().unwrap().pop().unwrap();
        saved.sort_unstable();
        assert_eq!(saved, vec![1, 2, 3]);
    }
}
