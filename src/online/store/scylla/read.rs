//! Loads: one request per entity, `max_concurrency` reads in flight over the whole store, and
//! the rows they return decoded into states.

use anyhow::Result;
use futures_util::{StreamExt, TryStreamExt, stream};
use propensity_actors::delivery::{DeliveryGuard, Stored};
use propensity_actors::features::product::HourBucket;
use propensity_actors::features::{
    CategoryState, ProductState, PurchaseDays, SessionKey, SessionProduct, SessionState,
    UserProduct, UserState,
};
use propensity_actors::outcomes::{IndexEntry, OpenSession, OutcomeTally, TallyKey};
use propensity_actors::store::{LoadedCatalog, LoadedUserSide, StoreError};
use scylla::response::query_result::QueryRowsResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;

use super::values::*;
use super::{Core, store_error};

/// Lookups of one load, one request each.
pub(super) enum Lookup {
    User(u64),
    Session(SessionKey),
    Product(u64),
    Category(u64),
}

/// What a lookup found.
pub(super) enum Found {
    User(Option<Stored<UserState>>),
    Session(Option<Stored<SessionState>>),
    Products(Vec<Stored<ProductState>>),
    Categories(Vec<Stored<CategoryState>>),
}

impl Core {
    pub(super) async fn read(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        table: &str,
    ) -> Result<QueryRowsResult, StoreError> {
        let _permit = self.reads.acquire().await.map_err(|_| {
            StoreError::Unavailable(format!("reading {table}: the store is closing"))
        })?;
        let _in_flight = self.enter();
        let result = self
            .session
            .execute_unpaged(statement, values)
            .await
            .map_err(|error| {
                store_error(
                    error,
                    &format!("reading {table}"),
                    self.settings.read_timeout_ms,
                )
            })?;
        result
            .into_rows_result()
            .map_err(|error| StoreError::Corrupt(format!("reading {table}: {error}")))
    }

    pub(super) async fn lookup(&self, lookup: Lookup) -> Result<Found, StoreError> {
        let statements = &self.statements;
        match lookup {
            Lookup::User(user_id) => {
                let rows = self
                    .read(&statements.select_user, (to_bigint(user_id),), "users")
                    .await?;
                user_from_rows(&rows).map(Found::User)
            }
            Lookup::Session(key) => {
                let rows = self
                    .read(
                        &statements.select_session,
                        (to_bigint(key.user_id), to_bigint(key.session_hash)),
                        "sessions",
                    )
                    .await?;
                session_from_rows(key, &rows).map(Found::Session)
            }
            Lookup::Product(product_id) => {
                let rows = self
                    .read(
                        &statements.select_product,
                        (to_bigint(product_id),),
                        "products",
                    )
                    .await?;
                product_parts(&rows).map(Found::Products)
            }
            Lookup::Category(category_id) => {
                let rows = self
                    .read(
                        &statements.select_category,
                        (to_bigint(category_id),),
                        "categories",
                    )
                    .await?;
                category_parts(&rows).map(Found::Categories)
            }
        }
    }

    /// Runs the lookups, `max_concurrency` at a time, results in the order asked.
    pub(super) async fn lookup_all(&self, lookups: Vec<Lookup>) -> Result<Vec<Found>, StoreError> {
        stream::iter(lookups)
            .map(|lookup| self.lookup(lookup))
            .buffered(self.settings.max_concurrency)
            .try_collect()
            .await
    }

    pub(super) async fn load_user_side(
        &self,
        users: Vec<u64>,
        sessions: Vec<SessionKey>,
    ) -> Result<LoadedUserSide, StoreError> {
        let lookups = users
            .iter()
            .copied()
            .map(Lookup::User)
            .chain(sessions.into_iter().map(Lookup::Session))
            .collect();
        let mut loaded_users = Vec::new();
        let mut loaded_sessions = Vec::new();
        for found in self.lookup_all(lookups).await? {
            match found {
                Found::User(Some(user)) => loaded_users.push(user),
                Found::Session(Some(session)) => loaded_sessions.push(session),
                _ => {}
            }
        }
        Ok((loaded_users, loaded_sessions))
    }

    pub(super) async fn load_catalog(
        &self,
        products: Vec<u64>,
        categories: Vec<u64>,
    ) -> Result<LoadedCatalog, StoreError> {
        // The categories asked for load alongside the products; those of the loaded products
        // that were not asked for follow.
        let lookups = products
            .iter()
            .copied()
            .map(Lookup::Product)
            .chain(categories.iter().copied().map(Lookup::Category))
            .collect();
        let mut loaded_products = Vec::new();
        let mut loaded_categories = Vec::new();
        for found in self.lookup_all(lookups).await? {
            match found {
                Found::Products(parts) => loaded_products.extend(parts),
                Found::Categories(parts) => loaded_categories.extend(parts),
                _ => {}
            }
        }
        let mut missing: Vec<u64> = loaded_products
            .iter()
            .map(|product| product.state.category_id)
            .filter(|category_id| !categories.contains(category_id))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        for found in self
            .lookup_all(missing.into_iter().map(Lookup::Category).collect())
            .await?
        {
            if let Found::Categories(parts) = found {
                loaded_categories.extend(parts);
            }
        }
        Ok((loaded_products, loaded_categories))
    }
}

impl Core {
    /// What the index holds for some session keys of a partition.
    pub(super) async fn read_index_entries(
        &self,
        source: u16,
        keys: &[SessionKey],
    ) -> Result<Vec<(SessionKey, IndexEntry)>, StoreError> {
        stream::iter(keys.iter().copied())
            .map(|key| async move { Ok((key, self.load_index_entry(key, source).await?)) })
            .buffered(self.settings.max_concurrency)
            .try_collect()
            .await
    }

    /// What the index holds for one session key of a partition.
    pub(super) async fn load_index_entry(
        &self,
        key: SessionKey,
        source: u16,
    ) -> Result<IndexEntry, StoreError> {
        let rows = self
            .read(
                &self.statements.select_index_entry,
                (
                    i32::from(source),
                    to_bigint(key.user_id),
                    to_bigint(key.session_hash),
                ),
                "session_index",
            )
            .await?;
        let corrupt =
            |error: &dyn std::fmt::Display| StoreError::Corrupt(format!("session_index: {error}"));
        let mut entry = IndexEntry::default();
        type Row = (i32, Option<i64>, Option<i64>, Option<i64>);
        for row in rows.rows::<Row>().map_err(|error| corrupt(&error))? {
            match row.map_err(|error| corrupt(&error))? {
                (0, Some(started_at), Some(deadline), _) => {
                    entry.open = Some(OpenSession {
                        key,
                        source,
                        started_at,
                        deadline,
                    })
                }
                (2, _, _, ended_through) => entry.ended_through = ended_through,
                _ => {}
            }
        }
        Ok(entry)
    }

    /// Tally rows as stored (absent ones count nothing).
    pub(super) async fn read_tallies(
        &self,
        keys: &[TallyKey],
    ) -> Result<Vec<(TallyKey, OutcomeTally)>, StoreError> {
        stream::iter(keys.iter().copied())
            .map(|key| async move {
                let rows = self
                    .read(
                        &self.statements.select_tally,
                        (i32::from(key.source), key.hour, i64::from(key.writer)),
                        "session_index",
                    )
                    .await?;
                let row = rows
                    .maybe_first_row::<TallyColumns>()
                    .map_err(|error| StoreError::Corrupt(format!("session_index: {error}")))?;
                Ok((key, row.map(tally_from).transpose()?.unwrap_or_default()))
            })
            .buffered(self.settings.max_concurrency)
            .try_collect()
            .await
    }

    /// Every live session the index holds for a partition, page by page.
    pub(super) async fn load_open_sessions(
        &self,
        source: u16,
    ) -> Result<Vec<OpenSession>, StoreError> {
        let corrupt =
            |error: &dyn std::fmt::Display| StoreError::Corrupt(format!("session_index: {error}"));
        let pages = self
            .session
            .execute_iter(
                self.statements.select_open_sessions.clone(),
                (i32::from(source),),
            )
            .await
            .map_err(|error| StoreError::Unavailable(format!("reading session_index: {error}")))?;
        let mut rows = pages
            .rows_stream::<(i64, i64, Option<i64>, Option<i64>)>()
            .map_err(|error| corrupt(&error))?;
        let mut open = Vec::new();
        while let Some(row) = rows.next().await {
            let (user_id, session_hash, started_at, deadline) = row.map_err(|error| {
                StoreError::Unavailable(format!("reading session_index: {error}"))
            })?;
            if let (Some(started_at), Some(deadline)) = (started_at, deadline) {
                open.push(OpenSession {
                    key: SessionKey {
                        user_id: from_bigint(user_id),
                        session_hash: from_bigint(session_hash),
                    },
                    source,
                    started_at,
                    deadline,
                });
            }
        }
        Ok(open)
    }

    /// Every tally row of the hours `from_hour..=to_hour`, over every partition.
    pub(super) async fn load_tallies(
        &self,
        from_hour: i64,
        to_hour: i64,
    ) -> Result<Vec<(TallyKey, OutcomeTally)>, StoreError> {
        let corrupt =
            |error: &dyn std::fmt::Display| StoreError::Corrupt(format!("session_index: {error}"));
        let sources = self
            .read(&self.statements.select_sources, (), "session_index")
            .await?;
        let sources: Vec<i32> = sources
            .rows::<(i32,)>()
            .map_err(|error| corrupt(&error))?
            .map(|row| row.map(|(source,)| source).map_err(|error| corrupt(&error)))
            .collect::<Result<_, _>>()?;
        let mut tallies = Vec::new();
        for source in sources {
            let rows = self
                .read(
                    &self.statements.select_tallies,
                    (source, from_hour, to_hour),
                    "session_index",
                )
                .await?;
            type Row = (
                i64,
                i64,
                Option<i64>,
                Option<i64>,
                Option<i64>,
                Option<f64>,
                Option<f64>,
                Option<f64>,
            );
            for row in rows.rows::<Row>().map_err(|error| corrupt(&error))? {
                let (hour, writer, purchased, abandoned, browsed, pv, av, bv) =
                    row.map_err(|error| corrupt(&error))?;
                let source = u16::try_from(source)
                    .map_err(|_| corrupt(&format_args!("source {source} is out of range")))?;
                let writer = u16::try_from(writer)
                    .map_err(|_| corrupt(&format_args!("writer {writer} is out of range")))?;
                tallies.push((
                    TallyKey {
                        hour,
                        source,
                        writer,
                    },
                    tally_from((purchased, abandoned, browsed, pv, av, bv))?,
                ));
            }
        }
        Ok(tallies)
    }
}

/// A user from the rows of their partition, `None` when it is empty.
pub(super) fn user_from_rows(
    rows: &QueryRowsResult,
) -> Result<Option<Stored<UserState>>, StoreError> {
    let corrupt = |error: &dyn std::fmt::Display| StoreError::Corrupt(format!("users: {error}"));
    let mut user: Option<Stored<UserState>> = None;
    for row in rows.rows::<UserRow>().map_err(|error| corrupt(&error))? {
        let row = row.map_err(|error| corrupt(&error))?;
        let user = match &mut user {
            Some(user) => &mut user.state,
            None => {
                &mut user
                    .insert(Stored {
                        guard: decode_guard(row.guard.clone(), "users")?,
                        state: UserState {
                            user_id: from_bigint(row.user_id),
                            counts: counts(
                                [
                                    required(row.events, "users.events")?,
                                    required(row.views, "users.views")?,
                                    required(row.carts, "users.carts")?,
                                    required(row.removes, "users.removes")?,
                                    required(row.purchases, "users.purchases")?,
                                ],
                                "users",
                            )?,
                            sessions: from_count(
                                required(row.sessions, "users.sessions")?,
                                "users.sessions",
                            )?,
                            purchase_sessions: from_count(
                                required(row.purchase_sessions, "users.purchase_sessions")?,
                                "users.purchase_sessions",
                            )?,
                            revenue: required(row.revenue, "users.revenue")?,
                            first_event_at: required(row.first_event_at, "users.first_event_at")?,
                            last_event_at: required(row.last_event_at, "users.last_event_at")?,
                            last_purchase_at: row.last_purchase_at,
                            recent_identities: row
                                .recent_identities
                                .unwrap_or_default()
                                .into_iter()
                                .map(from_bigint)
                                .collect(),
                            products: Vec::new(),
                            // A row written before these columns existed reads as no purchase
                            // day yet.
                            purchase_days: PurchaseDays {
                                first_day: row.first_purchase_day,
                                last_day: row.last_purchase_day.unwrap_or_default(),
                                repeat_days: from_count(
                                    row.repeat_purchase_days.unwrap_or_default(),
                                    "users.repeat_purchase_days",
                                )?,
                                repeat_spend: row.repeat_spend.unwrap_or_default(),
                            },
                        },
                    })
                    .state
            }
        };
        let Some(product_id) = row.product_id else {
            continue;
        };
        user.products.push((
            from_bigint(product_id),
            UserProduct {
                counts: counts(
                    [
                        required(row.product_events, "users.product_events")?,
                        required(row.product_views, "users.product_views")?,
                        required(row.product_carts, "users.product_carts")?,
                        required(row.product_removes, "users.product_removes")?,
                        required(row.product_purchases, "users.product_purchases")?,
                    ],
                    "users",
                )?,
                last_event_at: required(row.product_last_event_at, "users.product_last_event_at")?,
            },
        ));
    }
    // Rows come in the order of the signed bigint; the history is sorted by the unsigned id.
    if let Some(user) = &mut user {
        user.state
            .products
            .sort_unstable_by_key(|(product_id, _)| *product_id);
        user.state.products.shrink_to_fit();
    }
    Ok(user)
}

/// Every part of a product: the rows of its partition.
pub(super) fn product_parts(
    rows: &QueryRowsResult,
) -> Result<Vec<Stored<ProductState>>, StoreError> {
    let corrupt = |error: &dyn std::fmt::Display| StoreError::Corrupt(format!("products: {error}"));
    let mut parts = Vec::new();
    for row in rows.rows::<ProductRow>().map_err(|error| corrupt(&error))? {
        let row = row.map_err(|error| corrupt(&error))?;
        let list = |values: Option<Vec<i64>>, column: &str| -> Result<Vec<u32>, StoreError> {
            values
                .unwrap_or_default()
                .into_iter()
                .map(|value| from_count(value, column))
                .collect()
        };
        let hours = row.hours.unwrap_or_default();
        let views = list(row.hour_views, "products.hour_views")?;
        let carts = list(row.hour_carts, "products.hour_carts")?;
        let purchases = list(row.hour_purchases, "products.hour_purchases")?;
        let revenue = row.hour_revenue.unwrap_or_default();
        if [views.len(), carts.len(), purchases.len(), revenue.len()]
            .iter()
            .any(|length| *length != hours.len())
        {
            return Err(corrupt(&format_args!(
                "product {} source {}: the hourly lists differ in length",
                row.product_id, row.source
            )));
        }
        let guard = decode_guard(row.guard, "products")?;
        let state = ProductState {
            product_id: from_bigint(row.product_id),
            source: u16::try_from(row.source)
                .map_err(|_| corrupt(&format_args!("source {} is out of range", row.source)))?,
            category_id: from_bigint(row.category_id),
            price: row.price,
            counts: counts(
                [row.events, row.views, row.carts, row.removes, row.purchases],
                "products",
            )?,
            revenue: row.revenue,
            last_event_at: row.last_event_at,
            hours: (0..hours.len())
                .map(|index| HourBucket {
                    hour: hours[index],
                    views: views[index],
                    carts: carts[index],
                    purchases: purchases[index],
                    revenue: revenue[index],
                })
                .collect(),
        };
        parts.push(Stored { state, guard });
    }
    Ok(parts)
}

/// Every part of a category: the rows of its partition.
pub(super) fn category_parts(
    rows: &QueryRowsResult,
) -> Result<Vec<Stored<CategoryState>>, StoreError> {
    let corrupt =
        |error: &dyn std::fmt::Display| StoreError::Corrupt(format!("categories: {error}"));
    let mut parts = Vec::new();
    for row in rows
        .rows::<CategoryRow>()
        .map_err(|error| corrupt(&error))?
    {
        let row = row.map_err(|error| corrupt(&error))?;
        let guard = decode_guard(row.guard, "categories")?;
        let state = CategoryState {
            category_id: from_bigint(row.category_id),
            source: u16::try_from(row.source)
                .map_err(|_| corrupt(&format_args!("source {} is out of range", row.source)))?,
            views: from_count(row.views, "categories.views")?,
            price_buckets: row
                .price_buckets
                .unwrap_or_default()
                .into_iter()
                .map(|count| from_count(count, "categories.price_buckets"))
                .collect::<Result<_, _>>()?,
        };
        parts.push(Stored { state, guard });
    }
    Ok(parts)
}

/// A session from its partition's rows: the static columns on every row, one row per product
/// (or a single row without a product for a session that touched none).
pub(super) fn session_from_rows(
    key: SessionKey,
    rows: &QueryRowsResult,
) -> Result<Option<Stored<SessionState>>, StoreError> {
    let corrupt = |error: &dyn std::fmt::Display| StoreError::Corrupt(format!("sessions: {error}"));
    let mut session: Option<SessionState> = None;
    let mut guard = DeliveryGuard::default();
    let mut products: Vec<(i32, SessionProduct)> = Vec::new();
    for row in rows.rows::<SessionRow>().map_err(|error| corrupt(&error))? {
        let row = row.map_err(|error| corrupt(&error))?;
        if session.is_none() {
            let session_id = required(row.session_id, "sessions.session_id")?;
            if SessionKey::new(key.user_id, &session_id) != key {
                return Err(StoreError::Corrupt(format!(
                    "sessions: the partition of {key:?} holds session {session_id:?}"
                )));
            }
            guard = decode_guard(row.guard, "sessions")?;
            let previous = decode_previous(row.previous)?;
            session = Some(SessionState {
                user_id: key.user_id,
                session_id: session_id.into(),
                started_at: required(row.started_at, "sessions.started_at")?,
                last_event_at: required(row.last_event_at, "sessions.last_event_at")?,
                counts: counts(
                    [
                        required(row.events, "sessions.events")?,
                        required(row.views, "sessions.views")?,
                        required(row.carts, "sessions.carts")?,
                        required(row.removes, "sessions.removes")?,
                        required(row.purchases, "sessions.purchases")?,
                    ],
                    "sessions",
                )?,
                revenue: required(row.revenue, "sessions.revenue")?,
                products: Vec::new(),
                categories_viewed: row
                    .categories_viewed
                    .unwrap_or_default()
                    .into_iter()
                    .map(from_bigint)
                    .collect(),
                view_sequence: row
                    .view_sequence
                    .unwrap_or_default()
                    .into_iter()
                    .map(from_bigint)
                    .collect(),
                previous,
            });
        }
        let Some(product_id) = row.product_id else {
            continue;
        };
        products.push((
            required(row.position, "sessions.position")?,
            SessionProduct {
                product_id: from_bigint(product_id),
                price: required(row.price, "sessions.price")?,
                counts: counts(
                    [
                        required(row.product_events, "sessions.product_events")?,
                        required(row.product_views, "sessions.product_views")?,
                        required(row.product_carts, "sessions.product_carts")?,
                        required(row.product_removes, "sessions.product_removes")?,
                        required(row.product_purchases, "sessions.product_purchases")?,
                    ],
                    "sessions",
                )?,
                in_cart: from_count(
                    required(row.in_cart, "sessions.in_cart")?,
                    "sessions.in_cart",
                )?,
                last_view_at: row.last_view_at,
            },
        ));
    }
    // Rows come in product id order; the session keeps its products in order of first touch.
    products.sort_by_key(|(position, _)| *position);
    Ok(session.map(|mut session| {
        session.products = products.into_iter().map(|(_, product)| product).collect();
        Stored {
            state: session,
            guard,
        }
    }))
}
