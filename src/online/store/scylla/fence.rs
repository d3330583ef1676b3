//! The ownership fence: no write of an instance that lost a bus partition lands over the writes
//! of the instance that took it over.
//!
//! Each partition's row set in `session_index` carries, in static columns, the partition's
//! owner epoch and the end of the owner's write window (a write timestamp, microseconds). An
//! instance that starts consuming a partition claims it with a lightweight transaction that
//! raises the epoch, conditioned on the epoch and window it read, so of two claimants one wins
//! and the other reads again. Then:
//!
//! - the state it writes (users, sessions, products, categories) carries write timestamps after
//!   the former owner's window, and the former owner writes only with timestamps inside its
//!   window, which it extends (a lightweight transaction conditioned on its epoch, at most once
//!   per [`WINDOW`]) only while it still owns the partition: whatever the former owner writes
//!   late is older than anything the new owner writes, and loses;
//! - the index of live sessions and the outcome tallies are written as single-partition
//!   batches conditioned on the writer's epoch: a former owner's late batch applies nothing,
//!   so an end is never counted by an instance that no longer owns its partition.
//!
//! The former owner's save then fails with [`StoreError::Fenced`], and it drops what it holds.

use std::time::{SystemTime, UNIX_EPOCH};

use propensity_actors::store::StoreError;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};

use super::values::Values;
use super::{Core, store_error};

/// How far ahead an owner's write window reaches when it is claimed or extended, in write
/// timestamp microseconds: at most one extension per partition per this long.
pub(super) const WINDOW: i64 = 2_000_000;

/// How many times a claim reads again after another instance's claim or extension won.
const CLAIM_ATTEMPTS: usize = 20;

/// A partition this instance owns.
#[derive(Clone, Copy, Debug)]
pub(super) struct Owned {
    /// The engine's ownership period it was claimed for.
    lease: u64,
    pub(super) epoch: i64,
    /// Writes with timestamps up to this are inside the window.
    window_end: i64,
    /// Another instance claimed it since: nothing more is written for it until it is claimed
    /// again.
    pub(super) lost: bool,
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_micros() as i64)
}

/// Whether a conditional statement or batch applied: the first column of its answer.
fn applied(result: scylla::response::query_result::QueryResult) -> Result<bool, StoreError> {
    let rows = result
        .into_rows_result()
        .map_err(|error| StoreError::Corrupt(format!("a conditional write's answer: {error}")))?;
    let row = rows
        .first_row::<Row>()
        .map_err(|error| StoreError::Corrupt(format!("a conditional write's answer: {error}")))?;
    Ok(matches!(
        row.columns.first(),
        Some(Some(CqlValue::Boolean(true)))
    ))
}

impl Core {
    /// The epoch of a partition this instance owns.
    pub(super) fn owned(&self, source: u16) -> Option<Owned> {
        self.owned
            .lock()
            .expect("ownership lock")
            .get(&source)
            .copied()
    }

    /// Claims a bus partition for the engine's ownership period `lease` (see
    /// `StateStore::own_partition`); returns the epoch.
    pub(super) async fn own_partition(&self, source: u16, lease: u64) -> Result<u64, StoreError> {
        let _claiming = self.claiming.lock().await;
        if let Some(owned) = self.owned(source)
            && owned.lease == lease
            && !owned.lost
        {
            return Ok(owned.epoch as u64);
        }
        let statements = &self.statements;
        let error = |error| {
            store_error(
                error,
                "claiming a bus partition",
                self.settings.write_timeout_ms,
            )
        };
        for _ in 0..CLAIM_ATTEMPTS {
            let current = self
                .session
                .execute_unpaged(&statements.select_partition_owner, (i32::from(source),))
                .await
                .map_err(error)?
                .into_rows_result()
                .map_err(|error| StoreError::Corrupt(format!("session_index owner: {error}")))?
                .maybe_first_row::<(Option<i64>, Option<i64>)>()
                .map_err(|error| StoreError::Corrupt(format!("session_index owner: {error}")))?;
            let (epoch, previous_window) = match current {
                Some((Some(epoch), Some(window))) => (epoch, Some(window)),
                _ => (0, None),
            };
            let window_end = now_micros().max(previous_window.unwrap_or(0)) + WINDOW;
            let next = epoch + 1;
            let result = match previous_window {
                None => {
                    self.session
                        .execute_unpaged(
                            &statements.claim_new_partition,
                            (i32::from(source), next, window_end, &self.owner_name),
                        )
                        .await
                }
                Some(previous_window) => {
                    self.session
                        .execute_unpaged(
                            &statements.claim_partition,
                            (
                                next,
                                window_end,
                                &self.owner_name,
                                i32::from(source),
                                epoch,
                                previous_window,
                            ),
                        )
                        .await
                }
            };
            if applied(result.map_err(error)?)? {
                // Every write from now on is later than anything the former owner may write.
                self.write_clock.raise(previous_window.unwrap_or(0) + 2);
                self.owned.lock().expect("ownership lock").insert(
                    source,
                    Owned {
                        lease,
                        epoch: next,
                        window_end,
                        lost: false,
                    },
                );
                tracing::info!(source, epoch = next, "bus partition claimed");
                return Ok(next as u64);
            }
        }
        Err(StoreError::Unavailable(format!(
            "could not claim bus partition {source}: other claims kept winning"
        )))
    }

    /// Checks that this instance still owns every partition a save writes at `written_at`,
    /// extending its window where the timestamp is past it.
    pub(super) async fn check_windows(
        &self,
        sources: impl IntoIterator<Item = u16>,
        written_at: i64,
    ) -> Result<(), StoreError> {
        for source in sources {
            let owned = self.owned(source).ok_or_else(|| {
                StoreError::Unavailable(format!(
                    "bus partition {source} is not claimed by this instance"
                ))
            })?;
            if owned.lost {
                return Err(StoreError::Fenced(source));
            }
            if written_at <= owned.window_end {
                continue;
            }
            let _claiming = self.claiming.lock().await;
            let Some(owned) = self.owned(source).filter(|owned| !owned.lost) else {
                return Err(StoreError::Fenced(source));
            };
            if written_at <= owned.window_end {
                continue;
            }
            let window_end = written_at + WINDOW;
            let result = self
                .session
                .execute_unpaged(
                    &self.statements.extend_partition,
                    (window_end, i32::from(source), owned.epoch),
                )
                .await
                .map_err(|error| {
                    store_error(
                        error,
                        "extending a write window",
                        self.settings.write_timeout_ms,
                    )
                })?;
            if !applied(result)? {
                self.lose(source);
                return Err(StoreError::Fenced(source));
            }
            if let Some(owned) = self.owned.lock().expect("ownership lock").get_mut(&source) {
                owned.window_end = window_end;
            }
        }
        Ok(())
    }

    /// The statement that makes a batch of the partition's index apply only under `epoch`.
    pub(super) fn fence_statement(&self, source: u16, epoch: i64) -> (&PreparedStatement, Values) {
        (
            &self.statements.fence_partition,
            Box::new((epoch, i32::from(source), epoch)),
        )
    }

    /// Runs a conditional batch of the partition's index; a batch that did not apply means
    /// another instance owns the partition now.
    pub(super) async fn write_fenced(
        &self,
        source: u16,
        rows: Vec<(&PreparedStatement, Values)>,
    ) -> Result<(), StoreError> {
        let super::write::Write::Batch { batch, values, .. } =
            self.partition_batch("session_index", rows)
        else {
            unreachable!("a partition batch");
        };
        let mut batch = batch;
        // A conditional batch is not idempotent: a retry could apply it twice.
        batch.set_is_idempotent(false);
        let _in_flight = self.enter();
        let result = self.session.batch(&batch, values).await.map_err(|error| {
            store_error(
                error,
                "writing session_index",
                self.settings.write_timeout_ms,
            )
        })?;
        if applied(result)? {
            Ok(())
        } else {
            self.lose(source);
            Err(StoreError::Fenced(source))
        }
    }

    /// Records that another instance claimed the partition since this one did.
    fn lose(&self, source: u16) {
        if let Some(owned) = self.owned.lock().expect("ownership lock").get_mut(&source) {
            owned.lost = true;
        }
        tracing::warn!(source, "bus partition lost to another instance");
    }
}
