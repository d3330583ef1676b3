//! Saves: each entity as one request (a single-partition batch for sessions and users), in two
//! stages, under an explicit write timestamp.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use futures_util::{StreamExt, TryStreamExt, stream};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use propensity_actors::delivery::Stored;
use propensity_actors::event::Millis;
use propensity_actors::features::{
    CategoryState, ProductState, SessionKey, SessionState, UserState,
};
use propensity_actors::outcomes::{IndexEntry, OutcomeTally, SessionEnd, TallyKey};
use propensity_actors::store::{StateBatch, StoreError, Transition, apply_transitions};
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::MaybeUnset;

use super::values::*;
use super::{Core, store_error};

/// Transitions per single-partition batch of the session index: a few rows each, well under the
/// cluster's batch size limits.
const TRANSITIONS_PER_BATCH: usize = 100;

/// Session ends (key and start) sent in index batches whose write failed without saying whether
/// it applied (a timeout), or that applied in a save that failed later: per bus partition, with
/// the owner epoch they were sent under. A later save that finds one of them counted in the index
/// reports it as counted, so the counters count it: under this instance's epoch nobody else
/// writes the partition, and the end was not counted when its batch was built.
pub(super) type InDoubt = HashMap<u16, (i64, HashSet<(SessionKey, Millis)>)>;

/// Write timestamps in microseconds, increasing by at least 2 per save of a store, so a
/// partition delete at `t - 1` never shadows the rows of an earlier save's `t`.
#[derive(Default)]
pub(super) struct WriteClock {
    /// The latest timestamp used, or the least the next may be.
    last: AtomicI64,
}

impl WriteClock {
    /// The next save's timestamp.
    pub(super) fn next(&self) -> i64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_micros() as i64);
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 2);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(actual) => last = actual,
            }
        }
    }

    /// Makes every later timestamp greater than `floor` (a claimed partition's former owner
    /// wrote with timestamps up to it; see [`super::fence`]).
    pub(super) fn raise(&self, floor: i64) {
        self.last.fetch_max(floor, Ordering::Relaxed);
    }
}

/// One request of a save: a single statement or a single-partition batch.
pub(super) enum Write {
    Single {
        table: &'static str,
        statement: PreparedStatement,
        values: Values,
    },
    Batch {
        table: &'static str,
        batch: Batch,
        values: Vec<Values>,
    },
}

/// The last of each session key's states in a batch, in no particular order. Every write of a
/// save carries the same timestamp, and the cluster settles two writes of one cell under one
/// timestamp by comparing their values: a session listed twice (one that ended and started again
/// under its key, or an end its user's snapshot carries too) would load as a mix of both states,
/// one state's counts beside the other's delivery guard. The later one is what a save means, as
/// the embedded store, which writes in order, keeps it.
pub(super) fn latest_of_each_session(
    sessions: &[Stored<SessionState>],
) -> Vec<&Stored<SessionState>> {
    let mut seen = HashSet::with_capacity(sessions.len());
    sessions
        .iter()
        .rev()
        .filter(|session| seen.insert(session.state.key()))
        .collect()
}

impl Core {
    /// Every statement of one entity's partition in one batch. A single-partition batch is
    /// applied atomically, so a crash never leaves part of an entity written: its delivery
    /// guard always matches its data.
    pub(super) fn partition_batch(
        &self,
        table: &'static str,
        rows: Vec<(&PreparedStatement, Values)>,
    ) -> Write {
        let mut batch = Batch::new(BatchType::Unlogged);
        let mut values = Vec::with_capacity(rows.len());
        for (statement, row) in rows {
            batch.append_statement(statement.clone());
            values.push(row);
        }
        batch.set_execution_profile_handle(Some(self.write_profile.clone()));
        batch.set_is_idempotent(true);
        Write::Batch {
            table,
            batch,
            values,
        }
    }

    pub(super) fn session_write(&self, stored: &Stored<SessionState>, written_at: i64) -> Write {
        let (session, statements) = (&stored.state, &self.statements);
        let key = session.key();
        let (user_id, session_hash) = (to_bigint(key.user_id), to_bigint(key.session_hash));
        let ttl = ttl(if session.counts.purchases > 0 {
            self.settings.purchased_session_ttl_seconds
        } else {
            self.settings.session_ttl_seconds
        });
        let [events, views, carts, removes, purchases] = counts_values(&session.counts);
        let mut rows: Vec<(&PreparedStatement, Values)> = vec![
            (
                &statements.delete_session,
                Box::new(DeleteSession {
                    deleted_at: written_at - 1,
                    user_id,
                    session_hash,
                }),
            ),
            (
                &statements.insert_session,
                Box::new(InsertSession {
                    user_id,
                    session_hash,
                    session_id: session.session_id.to_string(),
                    started_at: session.started_at,
                    last_event_at: session.last_event_at,
                    events,
                    views,
                    carts,
                    removes,
                    purchases,
                    revenue: session.revenue,
                    categories_viewed: session
                        .categories_viewed
                        .iter()
                        .copied()
                        .map(to_bigint)
                        .collect(),
                    view_sequence: session
                        .view_sequence
                        .iter()
                        .copied()
                        .map(to_bigint)
                        .collect(),
                    guard: encode_guard(&stored.guard),
                    previous: encode_previous(session.previous.as_deref()),
                    ttl,
                    written_at,
                }),
            ),
        ];
        for (position, product) in session.products.iter().enumerate() {
            let [events, views, carts, removes, purchases] = counts_values(&product.counts);
            rows.push((
                &statements.insert_session_product,
                Box::new(InsertSessionProduct {
                    user_id,
                    session_hash,
                    product_id: to_bigint(product.product_id),
                    position: position as i32,
                    price: product.price,
                    product_events: events,
                    product_views: views,
                    product_carts: carts,
                    product_removes: removes,
                    product_purchases: purchases,
                    in_cart: i64::from(product.in_cart),
                    // The partition delete already cleared it: no need for a tombstone.
                    last_view_at: product
                        .last_view_at
                        .map_or(MaybeUnset::Unset, MaybeUnset::Set),
                    ttl,
                    written_at,
                }),
            ));
        }
        self.partition_batch("sessions", rows)
    }

    /// A user's save: their fields (and delivery guard) as static columns, with a row for each
    /// product in `changed` (every product when `None`). Rows past `max_batch_rows` go in
    /// batches of their own, returned first: the caller writes them before the last batch,
    /// which carries the guard, so the guard never claims rows that are not written yet.
    pub(super) fn user_writes(
        &self,
        stored: &Stored<UserState>,
        changed: Option<&BTreeSet<u64>>,
        written_at: i64,
    ) -> Vec<Write> {
        let (user, statements) = (&stored.state, &self.statements);
        let user_id = to_bigint(user.user_id);
        let ttl = ttl(self.settings.user_ttl_seconds);
        let [events, views, carts, removes, purchases] = counts_values(&user.counts);
        let fields: (&PreparedStatement, Values) = (
            &statements.insert_user,
            Box::new(InsertUser {
                user_id,
                events,
                views,
                carts,
                removes,
                purchases,
                sessions: i64::from(user.sessions),
                purchase_sessions: i64::from(user.purchase_sessions),
                revenue: user.revenue,
                first_event_at: user.first_event_at,
                last_event_at: user.last_event_at,
                last_purchase_at: user.last_purchase_at,
                recent_identities: user
                    .recent_identities
                    .iter()
                    .copied()
                    .map(to_bigint)
                    .collect(),
                guard: encode_guard(&stored.guard),
                first_purchase_day: user.purchase_days.first_day,
                last_purchase_day: user.purchase_days.last_day,
                repeat_purchase_days: i64::from(user.purchase_days.repeat_days),
                repeat_spend: user.purchase_days.repeat_spend,
                ttl,
                written_at,
            }),
        );
        let mut rows: Vec<(&PreparedStatement, Values)> = user
            .products
            .iter()
            .filter(|(product_id, _)| changed.is_none_or(|changed| changed.contains(product_id)))
            .map(|(product_id, product)| {
                let [events, views, carts, removes, purchases] = counts_values(&product.counts);
                let row: (&PreparedStatement, Values) = (
                    &statements.insert_user_product,
                    Box::new(InsertUserProduct {
                        user_id,
                        product_id: to_bigint(*product_id),
                        product_events: events,
                        product_views: views,
                        product_carts: carts,
                        product_removes: removes,
                        product_purchases: purchases,
                        product_last_event_at: product.last_event_at,
                        ttl,
                        written_at,
                    }),
                );
                row
            })
            .collect();
        let per_batch = self.settings.max_batch_rows.max(1);
        let mut writes = Vec::new();
        // The last batch: the fields and as many rows as fit beside them.
        let last = rows.split_off(rows.len().saturating_sub(per_batch - 1));
        while !rows.is_empty() {
            let chunk = rows.split_off(rows.len().saturating_sub(per_batch));
            writes.push(self.partition_batch("users", chunk));
        }
        let mut final_rows = vec![fields];
        final_rows.extend(last);
        writes.push(self.partition_batch("users", final_rows));
        writes
    }

    pub(super) fn product_write(&self, stored: &Stored<ProductState>, written_at: i64) -> Write {
        let product = &stored.state;
        let [events, views, carts, removes, purchases] = counts_values(&product.counts);
        let hours = &product.hours;
        Write::Single {
            table: "products",
            statement: self.statements.insert_product.clone(),
            values: Box::new(InsertProduct {
                product_id: to_bigint(product.product_id),
                source: i32::from(product.source),
                category_id: to_bigint(product.category_id),
                price: product.price,
                events,
                views,
                carts,
                removes,
                purchases,
                revenue: product.revenue,
                last_event_at: product.last_event_at,
                hours: hours.iter().map(|bucket| bucket.hour).collect(),
                hour_views: hours.iter().map(|bucket| i64::from(bucket.views)).collect(),
                hour_carts: hours.iter().map(|bucket| i64::from(bucket.carts)).collect(),
                hour_purchases: hours
                    .iter()
                    .map(|bucket| i64::from(bucket.purchases))
                    .collect(),
                hour_revenue: hours.iter().map(|bucket| bucket.revenue).collect(),
                guard: encode_guard(&stored.guard),
                ttl: ttl(self.settings.product_ttl_seconds),
                written_at,
            }),
        }
    }

    pub(super) fn category_write(&self, stored: &Stored<CategoryState>, written_at: i64) -> Write {
        let category = &stored.state;
        Write::Single {
            table: "categories",
            statement: self.statements.insert_category.clone(),
            values: Box::new(InsertCategory {
                category_id: to_bigint(category.category_id),
                source: i32::from(category.source),
                views: i64::from(category.views),
                price_buckets: category
                    .price_buckets
                    .iter()
                    .copied()
                    .map(i64::from)
                    .collect(),
                guard: encode_guard(&stored.guard),
                ttl: ttl(self.settings.category_ttl_seconds),
                written_at,
            }),
        }
    }

    pub(super) async fn write(&self, write: Write) -> Result<(), StoreError> {
        let _in_flight = self.enter();
        let (table, result) = match &write {
            Write::Single {
                table,
                statement,
                values,
            } => (
                *table,
                self.session.execute_unpaged(statement, values).await,
            ),
            Write::Batch {
                table,
                batch,
                values,
            } => {
                self.largest_batch
                    .fetch_max(values.len(), Ordering::Relaxed);
                (*table, self.session.batch(batch, values).await)
            }
        };
        result.map(drop).map_err(|error| {
            store_error(
                error,
                &format!("writing {table}"),
                self.settings.write_timeout_ms,
            )
        })
    }

    /// Runs the writes, `max_concurrency` at a time; the first failure ends the stage.
    pub(super) async fn write_all(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        stream::iter(writes)
            .map(|write| self.write(write))
            .buffer_unordered(self.settings.max_concurrency)
            .try_for_each(|()| std::future::ready(Ok(())))
            .await
    }

    pub(super) async fn save(&self, batch: &StateBatch) -> Result<Vec<SessionEnd>, StoreError> {
        let written_at = self.write_clock.next();
        // Nothing is written for a partition this instance no longer owns.
        self.check_windows(batch.partitions(), written_at).await?;
        // Stage 1: users and categories. Stage 2, only once stage 1 is durable: sessions and
        // products. Stage 3, once the sessions are durable: the index of live sessions and the
        // tallies (see the module documentation).
        // Before stage 1: the product rows of users with more than fit in one batch.
        let mut first = Vec::new();
        let mut heavy = Vec::new();
        for user in &batch.users {
            let changed = batch.changed_products.get(&user.state.user_id);
            let mut writes = self.user_writes(user, changed, written_at);
            first.extend(writes.pop());
            heavy.append(&mut writes);
        }
        self.write_all(heavy).await?;
        for category in &batch.categories {
            first.push(self.category_write(category, written_at));
        }
        self.write_all(first).await?;
        let mut second = Vec::new();
        for session in latest_of_each_session(&batch.sessions) {
            second.push(self.session_write(session, written_at));
        }
        for product in &batch.products {
            second.push(self.product_write(product, written_at));
        }
        self.write_all(second).await?;
        self.write_transitions(&batch.transitions).await
    }

    /// Applies the session transitions of each bus partition to its index and tallies: reads
    /// the index rows and tallies the ends need, applies the transitions in order, and writes
    /// what changed as single-partition batches, one after another. A single-partition batch is
    /// applied atomically, and every end is checked against the index as it is when its batch
    /// is built: a save that failed half way and is made again counts nothing twice.
    async fn write_transitions(
        &self,
        transitions: &[Transition],
    ) -> Result<Vec<SessionEnd>, StoreError> {
        let mut by_source: BTreeMap<u16, Vec<Transition>> = BTreeMap::new();
        for transition in transitions {
            let source = match transition {
                Transition::Open(open) => open.source,
                Transition::End(end) => end.tally.source,
            };
            by_source
                .entry(source)
                .or_default()
                .push(transition.clone());
        }
        let mut counted: Vec<SessionEnd> = Vec::new();
        for (source, transitions) in by_source {
            match self.write_source_transitions(source, &transitions).await {
                Ok(ends) => counted.extend(ends),
                Err(error) => {
                    // The partitions written before are counted in the store, but the caller
                    // hears only of the error: their ends are reported by the next save.
                    for end in counted {
                        self.doubt(end.tally.source, None, [(end.key, end.started_at)]);
                    }
                    return Err(error);
                }
            }
        }
        Ok(counted)
    }

    /// Adds ends to a partition's doubts, under `epoch` (default: the partition's current one).
    fn doubt(
        &self,
        source: u16,
        epoch: Option<i64>,
        ends: impl IntoIterator<Item = (SessionKey, Millis)>,
    ) {
        let Some(epoch) = epoch.or_else(|| self.owned(source).map(|owned| owned.epoch)) else {
            return;
        };
        let mut in_doubt = self.in_doubt.lock().expect("in-doubt lock");
        let entry = in_doubt
            .entry(source)
            .or_insert_with(|| (epoch, HashSet::new()));
        if entry.0 != epoch {
            *entry = (epoch, HashSet::new());
        }
        entry.1.extend(ends);
    }

    /// Reads the partition's owner row at serial consistency, which completes or voids any
    /// lightweight transaction still in progress on the partition.
    async fn settle_partition(&self, source: u16) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(
                &self.statements.select_partition_owner,
                (i32::from(source),),
            )
            .await
            .map_err(|error| {
                store_error(
                    error,
                    "settling a bus partition's writes",
                    self.settings.write_timeout_ms,
                )
            })?;
        Ok(())
    }

    /// Whether the partition has ends in doubt under `epoch`.
    fn has_doubts(&self, source: u16, epoch: i64) -> bool {
        self.in_doubt
            .lock()
            .expect("in-doubt lock")
            .get(&source)
            .is_some_and(|(doubted_under, ends)| *doubted_under == epoch && !ends.is_empty())
    }

    /// Takes one end out of the partition's doubts under `epoch`; whether it was there. Doubts
    /// of an earlier epoch count for nothing (another instance may have counted those ends
    /// since) and are dropped.
    fn take_doubt(&self, source: u16, epoch: i64, end: (SessionKey, Millis)) -> bool {
        let mut in_doubt = self.in_doubt.lock().expect("in-doubt lock");
        let Some((doubted_under, ends)) = in_doubt.get_mut(&source) else {
            return false;
        };
        if *doubted_under != epoch {
            in_doubt.remove(&source);
            return false;
        }
        let taken = ends.remove(&end);
        if ends.is_empty() {
            in_doubt.remove(&source);
        }
        taken
    }

    async fn write_source_transitions(
        &self,
        source: u16,
        transitions: &[Transition],
    ) -> Result<Vec<SessionEnd>, StoreError> {
        let epoch = self
            .owned(source)
            .filter(|owned| !owned.lost)
            .ok_or(StoreError::Fenced(source))?
            .epoch;
        let mut transition_keys: Vec<SessionKey> = Vec::new();
        let mut tally_keys: Vec<TallyKey> = Vec::new();
        for transition in transitions {
            match transition {
                Transition::Open(open) => transition_keys.push(open.key),
                Transition::End(end) => {
                    transition_keys.push(end.key);
                    tally_keys.push(end.tally);
                }
            }
        }
        transition_keys.sort_unstable();
        transition_keys.dedup();
        tally_keys.sort_unstable();
        tally_keys.dedup();
        let read = async {
            if self.has_doubts(source, epoch) {
                // A batch of this partition timed out and may still be in flight. Its fence
                // makes it a lightweight transaction, and a serial read of the partition settles
                // one in progress: committed now, or never. Without this it could land between
                // the reads below, after the index was read and before the tallies were, and
                // its ends would be tallied twice.
                self.settle_partition(source).await?;
            }
            let index = self.read_index_entries(source, &transition_keys).await?;
            let tallies = self.read_tallies(&tally_keys).await?;
            Ok::<_, StoreError>((index, tallies))
        };
        let (index, tallies) = read.await?;
        let mut index: HashMap<SessionKey, IndexEntry> = index.into_iter().collect();
        let mut tallies: HashMap<TallyKey, OutcomeTally> = tallies.into_iter().collect();
        // Each batch carries its transitions' index rows and the tallies as they stand after
        // them: whatever prefix of the batches lands, the index and the tallies agree.
        let statements = &self.statements;
        let mut counted = Vec::new();
        for chunk in transitions.chunks(TRANSITIONS_PER_BATCH) {
            // An end found counted that an earlier write of this instance may have counted: it
            // did, and the counters hear of it now.
            // Doubts are taken one end at a time: other actors save ends of this partition
            // concurrently, and theirs must stay for their own saves.
            let mut revived = Vec::new();
            for transition in chunk {
                if let Transition::End(end) = transition
                    && index
                        .get(&end.key)
                        .is_some_and(|entry| entry.has_ended(end.started_at))
                    && self.take_doubt(source, epoch, (end.key, end.started_at))
                {
                    revived.push(end.clone());
                }
            }
            let ended = apply_transitions(&mut index, &mut tallies, chunk);
            let mut touched: Vec<SessionKey> = chunk
                .iter()
                .map(|transition| match transition {
                    Transition::Open(open) => open.key,
                    Transition::End(end) => end.key,
                })
                .collect();
            touched.sort_unstable();
            touched.dedup();
            // The batch applies only while this instance's epoch is the partition's.
            let mut rows: Vec<(&PreparedStatement, Values)> =
                vec![self.fence_statement(source, epoch)];
            for key in touched {
                let (user_id, session_hash) = (to_bigint(key.user_id), to_bigint(key.session_hash));
                let entry = index.get(&key).copied().unwrap_or_default();
                match entry.open {
                    Some(open) => rows.push((
                        &statements.insert_index_open,
                        Box::new(InsertIndexOpen {
                            source: i32::from(source),
                            user_id,
                            session_hash,
                            started_at: open.started_at,
                            deadline: open.deadline,
                        }),
                    )),
                    None => rows.push((
                        &statements.delete_index_open,
                        Box::new(DeleteIndexOpen {
                            source: i32::from(source),
                            user_id,
                            session_hash,
                        }),
                    )),
                }
                if let Some(ended_through) = entry.ended_through {
                    rows.push((
                        &statements.insert_index_ended,
                        Box::new(InsertIndexEnded {
                            source: i32::from(source),
                            user_id,
                            session_hash,
                            ended_through,
                            ttl: ttl(self.settings.session_ttl_seconds),
                        }),
                    ));
                }
            }
            let mut written: Vec<TallyKey> = ended.iter().map(|end| end.tally).collect();
            written.sort_unstable();
            written.dedup();
            for key in written {
                rows.push((
                    &statements.insert_tally,
                    Box::new(tally_row(key, &tallies[&key])),
                ));
            }
            if let Err(error) = self.write_fenced(source, rows).await {
                if !matches!(error, StoreError::Fenced(_)) {
                    // This batch may have applied, and those before did.
                    self.doubt(
                        source,
                        Some(epoch),
                        counted
                            .iter()
                            .chain(&revived)
                            .chain(&ended)
                            .map(|end: &SessionEnd| (end.key, end.started_at)),
                    );
                }
                return Err(error);
            }
            for end in &ended {
                // Counted now, and heard of by the counters with this save.
                self.take_doubt(source, epoch, (end.key, end.started_at));
            }
            counted.extend(revived);
            counted.extend(ended);
        }
        Ok(counted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_timestamps_leave_room_for_the_partition_delete() {
        let clock = WriteClock::default();
        let first = clock.next();
        let second = clock.next();
        assert!(second - 1 > first, "{first} {second}");
    }
}
