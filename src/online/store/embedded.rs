//! The embedded online store: one redb file, a table per entity, values in bincode (each
//! entity's state with its delivery guard, [`Stored`]). Durable on commit, so a restarted
//! service activates its entities from it. The file records its layout version; a file of
//! another layout is refused with what to do rather than misread.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use propensity_actors::delivery::Stored;
use propensity_actors::features::{ProductState, SessionKey};
use propensity_actors::outcomes::{IndexEntry, OpenSession, OutcomeTally, SessionEnd, TallyKey};
use propensity_actors::store::{
    LoadedCatalog, LoadedUserSide, StateBatch, StateStore, StoreError, StoreFuture, Transition,
};
use redb::{Database, ReadOnlyTable, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

const SESSIONS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("sessions");
const USERS: TableDefinition<u64, &[u8]> = TableDefinition::new("users");
/// A product's part per source (bus partition): (product_id, source).
const PRODUCTS: TableDefinition<(u64, u16), &[u8]> = TableDefinition::new("product_parts");
/// A category's part per source: (category_id, source).
const CATEGORIES: TableDefinition<(u64, u16), &[u8]> = TableDefinition::new("category_parts");
/// The index of live sessions: (user_id, session_hash) -> its [`IndexEntry`].
const OPEN_SESSIONS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("open_sessions");
/// Outcome tallies: (hour, source, writer) -> [`OutcomeTally`].
const TALLIES: TableDefinition<(i64, u16, u16), &[u8]> = TableDefinition::new("outcome_tallies");
/// What the file holds: `layout` is [`LAYOUT`].
const META: TableDefinition<&str, u32> = TableDefinition::new("meta");

/// The layout of the values this version reads and writes. Files written before the version
/// was recorded have layout 1; layout 2 dropped the category of each product of a session (no
/// feature reads it, and a million live sessions saved its bytes) and keeps a user's product
/// history as a sorted list (the same bytes as the map before); layout 3 added the session a
/// session replaced, the index of live sessions and the outcome tallies; layout 4 added a user's
/// purchase days (for the customer-value models).
pub const LAYOUT: u32 = 4;

/// A redb-backed store; cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStore {
    database: Arc<Database>,
    /// The tables as of the latest commit, for reads: an entity actor activates with one
    /// lookup, without opening a transaction and its tables each time. Taken again after every
    /// commit, so a read never misses a write that has completed.
    snapshot: Arc<RwLock<Arc<Snapshot>>>,
}

/// Every table as one read transaction sees it.
struct Snapshot {
    sessions: ReadOnlyTable<(u64, u64), &'static [u8]>,
    open_sessions: ReadOnlyTable<(u64, u64), &'static [u8]>,
    tallies: ReadOnlyTable<(i64, u16, u16), &'static [u8]>,
    users: ReadOnlyTable<u64, &'static [u8]>,
    products: ReadOnlyTable<(u64, u16), &'static [u8]>,
    categories: ReadOnlyTable<(u64, u16), &'static [u8]>,
}

impl Snapshot {
    fn take(database: &Database) -> Result<Snapshot, StoreError> {
        let transaction = database.begin_read().map_err(unavailable)?;
        Ok(Snapshot {
            sessions: transaction.open_table(SESSIONS).map_err(unavailable)?,
            open_sessions: transaction.open_table(OPEN_SESSIONS).map_err(unavailable)?,
            tallies: transaction.open_table(TALLIES).map_err(unavailable)?,
            users: transaction.open_table(USERS).map_err(unavailable)?,
            products: transaction.open_table(PRODUCTS).map_err(unavailable)?,
            categories: transaction.open_table(CATEGORIES).map_err(unavailable)?,
        })
    }
}

fn unavailable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("entity state always serializes")
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    bincode::deserialize(bytes).map_err(|error| StoreError::Corrupt(error.to_string()))
}

impl EmbeddedStore {
    /// Opens or creates the store file, creating its directory.
    pub fn open(path: &Path) -> Result<EmbeddedStore> {
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("failed to create {}", parent.display()))?;
        }
        let database = Database::create(path)
            .with_context(|| format!("failed to open the embedded store {}", path.display()))?;
        let transaction = database.begin_write()?;
        // A new file has no table yet; one with tables and no recorded layout has layout 1.
        let new_file = transaction.list_tables()?.next().is_none();
        {
            let mut meta = transaction.open_table(META)?;
            let recorded = meta.get("layout")?.map(|version| version.value());
            let layout = recorded.unwrap_or(if new_file { LAYOUT } else { 1 });
            if layout != LAYOUT {
                anyhow::bail!(
                    "the embedded store {} has layout {layout}, and this version reads layout {LAYOUT}: \
                     delete the file (the service rebuilds its state from the events it consumes) \
                     or point store.embedded_path elsewhere",
                    path.display()
                );
            }
            meta.insert("layout", LAYOUT)?;
        }
        transaction.open_table(SESSIONS)?;
        transaction.open_table(USERS)?;
        transaction.open_table(PRODUCTS)?;
        transaction.open_table(CATEGORIES)?;
        transaction.open_table(OPEN_SESSIONS)?;
        transaction.open_table(TALLIES)?;
        transaction.commit()?;
        let snapshot = Snapshot::take(&database)?;
        Ok(EmbeddedStore {
            database: Arc::new(database),
            snapshot: Arc::new(RwLock::new(Arc::new(snapshot))),
        })
    }

    fn save_now(&self, batch: &StateBatch) -> Result<Vec<SessionEnd>, StoreError> {
        let transaction = self.database.begin_write().map_err(unavailable)?;
        let counted;
        {
            counted = Self::apply_transitions(&transaction, &batch.transitions)?;
            let mut sessions = transaction.open_table(SESSIONS).map_err(unavailable)?;
            for session in &batch.sessions {
                let key = session.state.key();
                sessions
                    .insert((key.user_id, key.session_hash), encode(session).as_slice())
                    .map_err(unavailable)?;
            }
            let mut users = transaction.open_table(USERS).map_err(unavailable)?;
            for user in &batch.users {
                users
                    .insert(user.state.user_id, encode(user).as_slice())
                    .map_err(unavailable)?;
            }
            let mut products = transaction.open_table(PRODUCTS).map_err(unavailable)?;
            for product in &batch.products {
                products
                    .insert(
                        (product.state.product_id, product.state.source),
                        encode(product).as_slice(),
                    )
                    .map_err(unavailable)?;
            }
            let mut categories = transaction.open_table(CATEGORIES).map_err(unavailable)?;
            for category in &batch.categories {
                categories
                    .insert(
                        (category.state.category_id, category.state.source),
                        encode(category).as_slice(),
                    )
                    .map_err(unavailable)?;
            }
        }
        transaction.commit().map_err(unavailable)?;
        let snapshot = Snapshot::take(&self.database)?;
        *self.snapshot.write().expect("snapshot lock") = Arc::new(snapshot);
        Ok(counted)
    }

    /// Applies session transitions in the write transaction, in order: the index entries and
    /// tallies they touch are read, changed and written back with the rest of the batch.
    fn apply_transitions(
        transaction: &redb::WriteTransaction,
        transitions: &[Transition],
    ) -> Result<Vec<SessionEnd>, StoreError> {
        if transitions.is_empty() {
            return Ok(Vec::new());
        }
        let mut open_table = transaction.open_table(OPEN_SESSIONS).map_err(unavailable)?;
        let mut tally_table = transaction.open_table(TALLIES).map_err(unavailable)?;
        let mut index: HashMap<SessionKey, IndexEntry> = HashMap::new();
        let mut tallies: HashMap<TallyKey, OutcomeTally> = HashMap::new();
        for transition in transitions {
            let key = match transition {
                Transition::Open(open) => open.key,
                Transition::End(end) => end.key,
            };
            if let std::collections::hash_map::Entry::Vacant(vacant) = index.entry(key) {
                let stored = open_table
                    .get((key.user_id, key.session_hash))
                    .map_err(unavailable)?
                    .map(|bytes| decode::<IndexEntry>(bytes.value()))
                    .transpose()?;
                vacant.insert(stored.unwrap_or_default());
            }
            if let Transition::End(end) = transition {
                let tally = end.tally;
                if let std::collections::hash_map::Entry::Vacant(vacant) = tallies.entry(tally) {
                    let stored = tally_table
                        .get((tally.hour, tally.source, tally.writer))
                        .map_err(unavailable)?
                        .map(|bytes| decode::<OutcomeTally>(bytes.value()))
                        .transpose()?;
                    vacant.insert(stored.unwrap_or_default());
                }
            }
        }
        let counted =
            propensity_actors::store::apply_transitions(&mut index, &mut tallies, transitions);
        for (key, entry) in index {
            open_table
                .insert((key.user_id, key.session_hash), encode(&entry).as_slice())
                .map_err(unavailable)?;
        }
        for end in &counted {
            let tally = end.tally;
            tally_table
                .insert(
                    (tally.hour, tally.source, tally.writer),
                    encode(&tallies[&tally]).as_slice(),
                )
                .map_err(unavailable)?;
        }
        Ok(counted)
    }

    fn load_open_sessions_now(&self, source: u16) -> Result<Vec<OpenSession>, StoreError> {
        let snapshot = self.snapshot();
        let mut open = Vec::new();
        for row in snapshot.open_sessions.iter().map_err(unavailable)? {
            let entry: IndexEntry = decode(row.map_err(unavailable)?.1.value())?;
            if let Some(session) = entry.open.filter(|session| session.source == source) {
                open.push(session);
            }
        }
        Ok(open)
    }

    fn load_index_entry_now(&self, key: SessionKey) -> Result<IndexEntry, StoreError> {
        let snapshot = self.snapshot();
        let entry = snapshot
            .open_sessions
            .get((key.user_id, key.session_hash))
            .map_err(unavailable)?
            .map(|bytes| decode::<IndexEntry>(bytes.value()))
            .transpose()?;
        Ok(entry.unwrap_or_default())
    }

    fn load_tallies_now(
        &self,
        from_hour: i64,
        to_hour: i64,
    ) -> Result<Vec<(TallyKey, OutcomeTally)>, StoreError> {
        let snapshot = self.snapshot();
        let mut rows = Vec::new();
        for row in snapshot
            .tallies
            .range((from_hour, 0, 0)..=(to_hour, u16::MAX, u16::MAX))
            .map_err(unavailable)?
        {
            let (key, value) = row.map_err(unavailable)?;
            let (hour, source, writer) = key.value();
            rows.push((
                TallyKey {
                    hour,
                    source,
                    writer,
                },
                decode(value.value())?,
            ));
        }
        Ok(rows)
    }

    /// The tables as of the latest commit.
    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().expect("snapshot lock").clone()
    }

    fn load_user_side_now(
        &self,
        user_ids: &[u64],
        keys: &[SessionKey],
    ) -> Result<LoadedUserSide, StoreError> {
        let snapshot = self.snapshot();
        let mut users = Vec::new();
        for user_id in user_ids {
            if let Some(bytes) = snapshot.users.get(user_id).map_err(unavailable)? {
                users.push(decode(bytes.value())?);
            }
        }
        let mut sessions = Vec::new();
        for key in keys {
            if let Some(bytes) = snapshot
                .sessions
                .get((key.user_id, key.session_hash))
                .map_err(unavailable)?
            {
                sessions.push(decode(bytes.value())?);
            }
        }
        Ok((users, sessions))
    }

    fn load_catalog_now(
        &self,
        product_ids: &[u64],
        category_ids: &[u64],
    ) -> Result<LoadedCatalog, StoreError> {
        let snapshot = self.snapshot();
        let mut products: Vec<Stored<ProductState>> = Vec::new();
        for product_id in product_ids {
            for row in snapshot
                .products
                .range((*product_id, 0)..=(*product_id, u16::MAX))
                .map_err(unavailable)?
            {
                products.push(decode(row.map_err(unavailable)?.1.value())?);
            }
        }
        // The categories of loaded products come along: a product's features need its category.
        let mut category_ids = category_ids.to_vec();
        category_ids.extend(products.iter().map(|product| product.state.category_id));
        category_ids.sort_unstable();
        category_ids.dedup();
        let mut categories = Vec::new();
        for category_id in &category_ids {
            for row in snapshot
                .categories
                .range((*category_id, 0)..=(*category_id, u16::MAX))
                .map_err(unavailable)?
            {
                categories.push(decode(row.map_err(unavailable)?.1.value())?);
            }
        }
        Ok((products, categories))
    }

    /// Every stored session, user, product part and category part, for tests and inspection.
    pub fn dump(&self) -> Result<StateBatch, StoreError> {
        let transaction = self.database.begin_read().map_err(unavailable)?;
        let mut batch = StateBatch::default();
        for row in transaction
            .open_table(SESSIONS)
            .map_err(unavailable)?
            .iter()
            .map_err(unavailable)?
        {
            batch
                .sessions
                .push(decode(row.map_err(unavailable)?.1.value())?);
        }
        for row in transaction
            .open_table(USERS)
            .map_err(unavailable)?
            .iter()
            .map_err(unavailable)?
        {
            batch
                .users
                .push(decode(row.map_err(unavailable)?.1.value())?);
        }
        for row in transaction
            .open_table(PRODUCTS)
            .map_err(unavailable)?
            .iter()
            .map_err(unavailable)?
        {
            batch
                .products
                .push(decode(row.map_err(unavailable)?.1.value())?);
        }
        for row in transaction
            .open_table(CATEGORIES)
            .map_err(unavailable)?
            .iter()
            .map_err(unavailable)?
        {
            batch
                .categories
                .push(decode(row.map_err(unavailable)?.1.value())?);
        }
        Ok(batch)
    }
}

/// Runs blocking store work off the actor threads.
fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> StoreFuture<T> {
    Box::pin(async move {
        tokio::task::spawn_blocking(work)
            .await
            .unwrap_or_else(|error| {
                Err(StoreError::Unavailable(format!(
                    "store task failed: {error}"
                )))
            })
    })
}

impl StateStore for EmbeddedStore {
    fn save(&self, batch: Arc<StateBatch>) -> StoreFuture<Vec<SessionEnd>> {
        let store = self.clone();
        blocking(move || store.save_now(&batch))
    }

    fn load_open_sessions(&self, source: u16) -> StoreFuture<Vec<OpenSession>> {
        Box::pin(std::future::ready(self.load_open_sessions_now(source)))
    }

    fn load_index_entry(&self, key: SessionKey, _: u16) -> StoreFuture<IndexEntry> {
        Box::pin(std::future::ready(self.load_index_entry_now(key)))
    }

    fn load_tallies(
        &self,
        from_hour: i64,
        to_hour: i64,
    ) -> StoreFuture<Vec<(TallyKey, OutcomeTally)>> {
        Box::pin(std::future::ready(
            self.load_tallies_now(from_hour, to_hour),
        ))
    }

    // Reads answer at once on the caller's thread: a read transaction over redb's cached pages
    // takes microseconds, less than handing it to another thread, and an entity actor's
    // activation waits for it.
    fn load_user_side(
        &self,
        users: Vec<u64>,
        sessions: Vec<SessionKey>,
    ) -> StoreFuture<LoadedUserSide> {
        Box::pin(std::future::ready(
            self.load_user_side_now(&users, &sessions),
        ))
    }

    fn load_catalog(&self, products: Vec<u64>, categories: Vec<u64>) -> StoreFuture<LoadedCatalog> {
        Box::pin(std::future::ready(
            self.load_catalog_now(&products, &categories),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use propensity_actors::event::{Event, EventType};
    use propensity_actors::features::{CategoryState, SessionState, UserState};

    fn event() -> Event {
        Event {
            time: 1_000,
            event_type: EventType::Cart,
            product_id: 5,
            category_id: 6,
            category_code: None,
            brand: None,
            price: 3.5,
            user_id: 7,
            user_session: "s".into(),
            event_id: None,
        }
    }

    #[tokio::test]
    async fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let mut session = Stored::new(SessionState::new(7, "s", 1_000));
        session.state.apply(&event());
        session.guard.record(9);
        let mut user = Stored::new(UserState::new(7, 1_000));
        user.state.apply(&event(), 9, false);
        user.guard.record(9);
        let mut product = Stored::new(ProductState::new(&event(), 0));
        product.state.apply(&event());
        let mut other_part = Stored::new(ProductState::new(&event(), 3));
        other_part.state.apply(&event());
        let mut category = Stored::new(CategoryState::new(6, 0));
        category.state.add_view(3.5);
        {
            let store = EmbeddedStore::open(&path).unwrap();
            let batch = StateBatch {
                sessions: vec![session.clone()],
                users: vec![user.clone()],
                products: vec![product.clone(), other_part.clone()],
                categories: vec![category.clone()],
                ..StateBatch::default()
            };
            store.save(Arc::new(batch)).await.unwrap();
        }
        let store = EmbeddedStore::open(&path).unwrap();
        let (users, sessions) = store
            .load_user_side(
                vec![7, 8],
                vec![SessionKey::new(7, "s"), SessionKey::new(7, "t")],
            )
            .await
            .unwrap();
        assert_eq!(users, vec![user]);
        assert_eq!(sessions, vec![session]);
        assert!(sessions[0].guard.contains(9), "guards round-trip");
        let (products, categories) = store.load_catalog(vec![5, 4], Vec::new()).await.unwrap();
        assert_eq!(products, vec![product, other_part]);
        assert_eq!(categories, vec![category]);
    }

    #[test]
    fn a_file_of_another_layout_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        drop(EmbeddedStore::open(&path).unwrap());
        {
            let database = Database::create(&path).unwrap();
            let transaction = database.begin_write().unwrap();
            transaction
                .open_table(META)
                .unwrap()
                .insert("layout", LAYOUT + 1)
                .unwrap();
            transaction.commit().unwrap();
        }
        let error = EmbeddedStore::open(&path)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            error.contains(&format!("has layout {}", LAYOUT + 1))
                && error.contains("delete the file"),
            "{error}"
        );
    }
}
