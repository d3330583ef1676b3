//! Values and rows as CQL stores them: ids and counters as bigint, guards as blobs, TTLs, and
//! the bound and decoded row shapes of every statement.

use anyhow::Result;
use propensity_actors::delivery::DeliveryGuard;
use propensity_actors::features::Counts;
use propensity_actors::features::PreviousSession;
use propensity_actors::outcomes::{OutcomeTally, TallyKey};
use propensity_actors::store::StoreError;
use scylla::serialize::row::SerializeRow;
use scylla::value::MaybeUnset;
use scylla::{DeserializeRow, SerializeRow};

// --- Values as CQL stores them -------------------------------------------------------------

/// An id or hash: the same 64 bits in a bigint.
pub(super) fn to_bigint(value: u64) -> i64 {
    value as i64
}

pub(super) fn from_bigint(value: i64) -> u64 {
    value as u64
}

pub(super) fn from_count(value: i64, column: &str) -> Result<u32, StoreError> {
    u32::try_from(value)
        .map_err(|_| StoreError::Corrupt(format!("{column} = {value} is not a count")))
}

pub(super) fn required<T>(value: Option<T>, column: &str) -> Result<T, StoreError> {
    value.ok_or_else(|| StoreError::Corrupt(format!("{column} is null")))
}

pub(super) fn encode_guard(guard: &DeliveryGuard) -> Vec<u8> {
    bincode::serialize(guard).expect("a delivery guard always serializes")
}

/// A row written before the guard column existed has none: it remembers nothing.
pub(super) fn decode_guard(
    bytes: Option<Vec<u8>>,
    table: &str,
) -> Result<DeliveryGuard, StoreError> {
    bytes.map_or(Ok(DeliveryGuard::default()), |bytes| {
        bincode::deserialize(&bytes)
            .map_err(|error| StoreError::Corrupt(format!("{table}.guard: {error}")))
    })
}

pub(super) fn ttl(seconds: u32) -> i32 {
    // Validated against the CQL maximum of 20 years, well within i32.
    seconds as i32
}

pub(super) type Values = Box<dyn SerializeRow + Send + Sync>;

#[derive(SerializeRow)]
pub(super) struct DeleteSession {
    pub(super) deleted_at: i64,
    pub(super) user_id: i64,
    pub(super) session_hash: i64,
}

#[derive(SerializeRow)]
pub(super) struct InsertSession {
    pub(super) user_id: i64,
    pub(super) session_hash: i64,
    pub(super) session_id: String,
    pub(super) started_at: i64,
    pub(super) last_event_at: i64,
    pub(super) events: i64,
    pub(super) views: i64,
    pub(super) carts: i64,
    pub(super) removes: i64,
    pub(super) purchases: i64,
    pub(super) revenue: f64,
    pub(super) categories_viewed: Vec<i64>,
    pub(super) view_sequence: Vec<i64>,
    pub(super) guard: Vec<u8>,
    pub(super) previous: Vec<u8>,
    pub(super) ttl: i32,
    pub(super) written_at: i64,
}

#[derive(SerializeRow)]
pub(super) struct InsertSessionProduct {
    pub(super) user_id: i64,
    pub(super) session_hash: i64,
    pub(super) product_id: i64,
    pub(super) position: i32,
    pub(super) price: f64,
    pub(super) product_events: i64,
    pub(super) product_views: i64,
    pub(super) product_carts: i64,
    pub(super) product_removes: i64,
    pub(super) product_purchases: i64,
    pub(super) in_cart: i64,
    pub(super) last_view_at: MaybeUnset<i64>,
    pub(super) ttl: i32,
    pub(super) written_at: i64,
}

#[derive(SerializeRow)]
pub(super) struct InsertUser {
    pub(super) user_id: i64,
    pub(super) events: i64,
    pub(super) views: i64,
    pub(super) carts: i64,
    pub(super) removes: i64,
    pub(super) purchases: i64,
    pub(super) sessions: i64,
    pub(super) purchase_sessions: i64,
    pub(super) revenue: f64,
    pub(super) first_event_at: i64,
    pub(super) last_event_at: i64,
    pub(super) last_purchase_at: Option<i64>,
    pub(super) recent_identities: Vec<i64>,
    pub(super) guard: Vec<u8>,
    pub(super) first_purchase_day: Option<i64>,
    pub(super) last_purchase_day: i64,
    pub(super) repeat_purchase_days: i64,
    pub(super) repeat_spend: f64,
    pub(super) ttl: i32,
    pub(super) written_at: i64,
}

#[derive(SerializeRow)]
pub(super) struct InsertUserProduct {
    pub(super) user_id: i64,
    pub(super) product_id: i64,
    pub(super) product_events: i64,
    pub(super) product_views: i64,
    pub(super) product_carts: i64,
    pub(super) product_removes: i64,
    pub(super) product_purchases: i64,
    pub(super) product_last_event_at: i64,
    pub(super) ttl: i32,
    pub(super) written_at: i64,
}

#[derive(SerializeRow)]
pub(super) struct InsertProduct {
    pub(super) product_id: i64,
    pub(super) source: i32,
    pub(super) category_id: i64,
    pub(super) price: f64,
    pub(super) events: i64,
    pub(super) views: i64,
    pub(super) carts: i64,
    pub(super) removes: i64,
    pub(super) purchases: i64,
    pub(super) revenue: f64,
    pub(super) last_event_at: i64,
    pub(super) hours: Vec<i64>,
    pub(super) hour_views: Vec<i64>,
    pub(super) hour_carts: Vec<i64>,
    pub(super) hour_purchases: Vec<i64>,
    pub(super) hour_revenue: Vec<f64>,
    pub(super) guard: Vec<u8>,
    pub(super) ttl: i32,
    pub(super) written_at: i64,
}

#[derive(SerializeRow)]
pub(super) struct InsertCategory {
    pub(super) category_id: i64,
    pub(super) source: i32,
    pub(super) views: i64,
    pub(super) price_buckets: Vec<i64>,
    pub(super) guard: Vec<u8>,
    pub(super) ttl: i32,
    pub(super) written_at: i64,
}

#[derive(DeserializeRow)]
pub(super) struct SessionRow {
    pub(super) session_id: Option<String>,
    pub(super) started_at: Option<i64>,
    pub(super) last_event_at: Option<i64>,
    pub(super) events: Option<i64>,
    pub(super) views: Option<i64>,
    pub(super) carts: Option<i64>,
    pub(super) removes: Option<i64>,
    pub(super) purchases: Option<i64>,
    pub(super) revenue: Option<f64>,
    pub(super) categories_viewed: Option<Vec<i64>>,
    pub(super) view_sequence: Option<Vec<i64>>,
    pub(super) guard: Option<Vec<u8>>,
    pub(super) previous: Option<Vec<u8>>,
    pub(super) product_id: Option<i64>,
    pub(super) position: Option<i32>,
    pub(super) price: Option<f64>,
    pub(super) product_events: Option<i64>,
    pub(super) product_views: Option<i64>,
    pub(super) product_carts: Option<i64>,
    pub(super) product_removes: Option<i64>,
    pub(super) product_purchases: Option<i64>,
    pub(super) in_cart: Option<i64>,
    pub(super) last_view_at: Option<i64>,
}

/// A row of a user's partition: the static user fields, and one product (none when the user's
/// partition holds no product row).
#[derive(DeserializeRow)]
pub(super) struct UserRow {
    pub(super) user_id: i64,
    pub(super) events: Option<i64>,
    pub(super) views: Option<i64>,
    pub(super) carts: Option<i64>,
    pub(super) removes: Option<i64>,
    pub(super) purchases: Option<i64>,
    pub(super) sessions: Option<i64>,
    pub(super) purchase_sessions: Option<i64>,
    pub(super) revenue: Option<f64>,
    pub(super) first_event_at: Option<i64>,
    pub(super) last_event_at: Option<i64>,
    pub(super) last_purchase_at: Option<i64>,
    pub(super) recent_identities: Option<Vec<i64>>,
    pub(super) guard: Option<Vec<u8>>,
    pub(super) first_purchase_day: Option<i64>,
    pub(super) last_purchase_day: Option<i64>,
    pub(super) repeat_purchase_days: Option<i64>,
    pub(super) repeat_spend: Option<f64>,
    pub(super) product_id: Option<i64>,
    pub(super) product_events: Option<i64>,
    pub(super) product_views: Option<i64>,
    pub(super) product_carts: Option<i64>,
    pub(super) product_removes: Option<i64>,
    pub(super) product_purchases: Option<i64>,
    pub(super) product_last_event_at: Option<i64>,
}

/// A product's part: one row of its partition.
#[derive(DeserializeRow)]
pub(super) struct ProductRow {
    pub(super) product_id: i64,
    pub(super) source: i32,
    pub(super) category_id: i64,
    pub(super) price: f64,
    pub(super) events: i64,
    pub(super) views: i64,
    pub(super) carts: i64,
    pub(super) removes: i64,
    pub(super) purchases: i64,
    pub(super) revenue: f64,
    pub(super) last_event_at: i64,
    pub(super) hours: Option<Vec<i64>>,
    pub(super) hour_views: Option<Vec<i64>>,
    pub(super) hour_carts: Option<Vec<i64>>,
    pub(super) hour_purchases: Option<Vec<i64>>,
    pub(super) hour_revenue: Option<Vec<f64>>,
    pub(super) guard: Option<Vec<u8>>,
}

/// A category's part: one row of its partition.
#[derive(DeserializeRow)]
pub(super) struct CategoryRow {
    pub(super) category_id: i64,
    pub(super) source: i32,
    pub(super) views: i64,
    pub(super) price_buckets: Option<Vec<i64>>,
    pub(super) guard: Option<Vec<u8>>,
}

pub(super) fn counts(
    [events, views, carts, removes, purchases]: [i64; 5],
    table: &str,
) -> Result<Counts, StoreError> {
    Ok(Counts {
        events: from_count(events, &format!("{table}.events"))?,
        views: from_count(views, &format!("{table}.views"))?,
        carts: from_count(carts, &format!("{table}.carts"))?,
        removes: from_count(removes, &format!("{table}.removes"))?,
        purchases: from_count(purchases, &format!("{table}.purchases"))?,
    })
}

pub(super) fn counts_values(counts: &Counts) -> [i64; 5] {
    [
        counts.events,
        counts.views,
        counts.carts,
        counts.removes,
        counts.purchases,
    ]
    .map(i64::from)
}

/// A live session's row in its partition's index.
#[derive(SerializeRow)]
pub(super) struct InsertIndexOpen {
    pub(super) source: i32,
    pub(super) user_id: i64,
    pub(super) session_hash: i64,
    pub(super) started_at: i64,
    pub(super) deadline: i64,
}

/// A live session's index row to remove: it ended.
#[derive(SerializeRow)]
pub(super) struct DeleteIndexOpen {
    pub(super) source: i32,
    pub(super) user_id: i64,
    pub(super) session_hash: i64,
}

/// The record of the latest ended session under a key.
#[derive(SerializeRow)]
pub(super) struct InsertIndexEnded {
    pub(super) source: i32,
    pub(super) user_id: i64,
    pub(super) session_hash: i64,
    pub(super) ended_through: i64,
    pub(super) ttl: i32,
}

/// A tally row, written whole.
#[derive(SerializeRow)]
pub(super) struct InsertTally {
    pub(super) source: i32,
    pub(super) hour: i64,
    pub(super) writer: i64,
    pub(super) purchased: i64,
    pub(super) abandoned: i64,
    pub(super) browsed: i64,
    pub(super) purchased_value: f64,
    pub(super) abandoned_value: f64,
    pub(super) browsed_value: f64,
}

/// A tally's counts and values, as read: purchased, abandoned, browsed, then their values.
pub(super) type TallyColumns = (
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
);

/// A tally from its columns (absent columns count nothing).
pub(super) fn tally_from(columns: TallyColumns) -> Result<OutcomeTally, StoreError> {
    let (purchased, abandoned, browsed, purchased_value, abandoned_value, browsed_value) = columns;
    let count = |value: Option<i64>, column: &str| -> Result<u64, StoreError> {
        u64::try_from(value.unwrap_or(0))
            .map_err(|_| StoreError::Corrupt(format!("session_index.{column} is negative")))
    };
    // In the order of Outcome::ALL: purchased, abandoned, browsed.
    Ok(OutcomeTally {
        sessions: [
            count(purchased, "purchased")?,
            count(abandoned, "abandoned")?,
            count(browsed, "browsed")?,
        ],
        cart_value: [
            purchased_value.unwrap_or(0.0),
            abandoned_value.unwrap_or(0.0),
            browsed_value.unwrap_or(0.0),
        ],
    })
}

/// A tally row to write.
pub(super) fn tally_row(key: TallyKey, tally: &OutcomeTally) -> InsertTally {
    InsertTally {
        source: i32::from(key.source),
        hour: key.hour,
        writer: i64::from(key.writer),
        purchased: tally.sessions[0] as i64,
        abandoned: tally.sessions[1] as i64,
        browsed: tally.sessions[2] as i64,
        purchased_value: tally.cart_value[0],
        abandoned_value: tally.cart_value[1],
        browsed_value: tally.cart_value[2],
    }
}

/// What a session replaced, as its `previous` column holds it (bincode; empty for none).
pub(super) fn encode_previous(previous: Option<&PreviousSession>) -> Vec<u8> {
    match previous {
        Some(previous) => bincode::serialize(previous).expect("a previous session serializes"),
        None => Vec::new(),
    }
}

/// What a session replaced, from its `previous` column.
pub(super) fn decode_previous(
    bytes: Option<Vec<u8>>,
) -> Result<Option<Box<PreviousSession>>, StoreError> {
    match bytes {
        Some(bytes) if !bytes.is_empty() => bincode::deserialize(&bytes)
            .map(|previous| Some(Box::new(previous)))
            .map_err(|error| StoreError::Corrupt(format!("sessions.previous: {error}"))),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_keep_their_bits_and_counts_their_range() {
        for id in [0, 1, u64::MAX, 1 << 63, 562_949_953_421_312] {
            assert_eq!(from_bigint(to_bigint(id)), id);
        }
        assert_eq!(from_count(i64::from(u32::MAX), "c").unwrap(), u32::MAX);
        assert!(matches!(from_count(-1, "c"), Err(StoreError::Corrupt(_))));
    }
}
