//! The feature code path: one state machine per entity and the functions that turn their states
//! into the model's feature vector. Training replay and online serving both call exactly these.

pub mod counts;
pub mod product;
pub mod session;
pub mod user;

use serde::Serialize;

pub use counts::{Counts, ratio};
pub use product::{CategoryState, ProductState, WindowTotals};
pub use session::{
    Outcome, PreviousSession, SessionKey, SessionProduct, SessionState, SessionStep,
};
pub use user::{RECENT_IDENTITIES, UserProduct, UserState};

/// Which entity a feature describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Entity {
    Session,
    SessionProduct,
    User,
    UserProduct,
    Product,
}

/// A feature's stable name and what it means.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct FeatureDefinition {
    pub name: &'static str,
    pub entity: Entity,
    pub description: &'static str,
}

const fn feature(
    name: &'static str,
    entity: Entity,
    description: &'static str,
) -> FeatureDefinition {
    FeatureDefinition {
        name,
        entity,
        description,
    }
}

/// Every feature, in the order of the feature vector. Names are stable: models refer to them.
pub const FEATURES: [FeatureDefinition; FEATURE_COUNT] = [
    feature(
        "session_events",
        Entity::Session,
        "events in the session so far",
    ),
    feature("session_views", Entity::Session, "views in the session"),
    feature(
        "session_carts",
        Entity::Session,
        "add-to-cart events in the session",
    ),
    feature(
        "session_removes",
        Entity::Session,
        "remove-from-cart events in the session",
    ),
    feature(
        "session_purchases",
        Entity::Session,
        "purchases in the session",
    ),
    feature(
        "session_cart_view_ratio",
        Entity::Session,
        "session carts divided by session views",
    ),
    feature(
        "session_seconds_since_start",
        Entity::Session,
        "seconds from the session's first event to its latest",
    ),
    feature(
        "session_distinct_products_viewed",
        Entity::Session,
        "distinct products viewed in the session",
    ),
    feature(
        "session_distinct_categories_viewed",
        Entity::Session,
        "distinct categories viewed in the session",
    ),
    feature("cart_items", Entity::Session, "units in the cart"),
    feature(
        "cart_value",
        Entity::Session,
        "value of the cart at the latest prices",
    ),
    feature(
        "session_product_views",
        Entity::SessionProduct,
        "views of this product in the session",
    ),
    feature(
        "session_product_carts",
        Entity::SessionProduct,
        "add-to-cart events for this product in the session",
    ),
    feature(
        "session_product_removes",
        Entity::SessionProduct,
        "remove-from-cart events for this product in the session",
    ),
    feature(
        "session_product_in_cart",
        Entity::SessionProduct,
        "units of this product in the cart",
    ),
    feature(
        "session_product_seconds_since_last_view",
        Entity::SessionProduct,
        "seconds since this product was last viewed in the session, -1 if never",
    ),
    feature(
        "session_product_view_share",
        Entity::SessionProduct,
        "share of the session's views that were of this product",
    ),
    feature(
        "user_events",
        Entity::User,
        "events of the user over their history",
    ),
    feature(
        "user_views",
        Entity::User,
        "views of the user over their history",
    ),
    feature(
        "user_carts",
        Entity::User,
        "add-to-cart events of the user over their history",
    ),
    feature(
        "user_removes",
        Entity::User,
        "remove-from-cart events of the user over their history",
    ),
    feature(
        "user_purchases",
        Entity::User,
        "purchases of the user over their history",
    ),
    feature(
        "user_cart_view_ratio",
        Entity::User,
        "user carts divided by user views",
    ),
    feature(
        "user_purchase_cart_ratio",
        Entity::User,
        "user purchases divided by user carts",
    ),
    feature(
        "user_earlier_sessions",
        Entity::User,
        "sessions of the user before this one",
    ),
    feature(
        "user_earlier_purchase_sessions",
        Entity::User,
        "sessions of the user with a purchase, before this one",
    ),
    feature(
        "user_seconds_since_last_purchase",
        Entity::User,
        "seconds since the user's latest purchase, -1 if none",
    ),
    feature(
        "user_lifetime_revenue",
        Entity::User,
        "total the user has spent",
    ),
    feature(
        "user_product_views",
        Entity::UserProduct,
        "views of this product by the user over their history",
    ),
    feature(
        "user_product_carts",
        Entity::UserProduct,
        "add-to-cart events for this product by the user over their history",
    ),
    feature(
        "user_product_removes",
        Entity::UserProduct,
        "remove-from-cart events for this product by the user over their history",
    ),
    feature(
        "user_product_purchases",
        Entity::UserProduct,
        "purchases of this product by the user over their history",
    ),
    feature(
        "user_product_earlier_views",
        Entity::UserProduct,
        "views of this product by the user in earlier sessions",
    ),
    feature(
        "product_events",
        Entity::Product,
        "events about the product, all users",
    ),
    feature(
        "product_views",
        Entity::Product,
        "views of the product, all users",
    ),
    feature(
        "product_carts",
        Entity::Product,
        "add-to-cart events for the product, all users",
    ),
    feature(
        "product_removes",
        Entity::Product,
        "remove-from-cart events for the product, all users",
    ),
    feature(
        "product_purchases",
        Entity::Product,
        "purchases of the product, all users",
    ),
    feature(
        "product_cart_view_ratio",
        Entity::Product,
        "product carts divided by product views",
    ),
    feature(
        "product_purchase_view_ratio",
        Entity::Product,
        "product purchases divided by product views",
    ),
    feature(
        "price",
        Entity::Product,
        "the product's price in its latest event",
    ),
    feature(
        "price_to_category_median",
        Entity::Product,
        "the product's price divided by the median price viewed in its category (each view counts), 1 if unknown",
    ),
];

/// Number of features in a vector.
pub const FEATURE_COUNT: usize = 42;
/// The first features come from the user side (session and user state); the rest from the catalog.
pub const USER_SIDE_COUNT: usize = 33;

/// A full feature vector.
pub type FeatureVector = [f64; FEATURE_COUNT];

/// Feature names in vector order.
pub fn feature_names() -> Vec<String> {
    FEATURES
        .iter()
        .map(|feature| feature.name.to_owned())
        .collect()
}

fn seconds(millis: i64) -> f64 {
    millis as f64 / 1000.0
}

/// Fills the user-side features from session and user state. "Now" is the session's latest
/// event, so the features describe the state right after it whenever they are read.
pub fn user_side_features(
    session: Option<&SessionState>,
    user: Option<&UserState>,
    product_id: u64,
    out: &mut [f64],
) {
    debug_assert_eq!(out.len(), USER_SIDE_COUNT);
    let empty_counts = Counts::default();
    let now = session
        .map(|session| session.last_event_at)
        .or(user.map(|user| user.last_event_at))
        .unwrap_or(0);
    let session_counts = session.map_or(&empty_counts, |session| &session.counts);
    let session_product = session.and_then(|session| session.product(product_id));
    let product_counts = session_product.map_or(&empty_counts, |product| &product.counts);
    let user_counts = user.map_or(&empty_counts, |user| &user.counts);
    let user_product = user.and_then(|user| user.product(product_id));
    let user_product_counts = user_product.map_or(&empty_counts, |product| &product.counts);
    let in_session_purchase = u32::from(session_counts.purchases > 0);

    out[0] = f64::from(session_counts.events);
    out[1] = f64::from(session_counts.views);
    out[2] = f64::from(session_counts.carts);
    out[3] = f64::from(session_counts.removes);
    out[4] = f64::from(session_counts.purchases);
    out[5] = ratio(session_counts.carts, session_counts.views);
    out[6] = session.map_or(0.0, |session| {
        seconds(session.last_event_at - session.started_at)
    });
    out[7] = session.map_or(0.0, |session| session.distinct_products_viewed() as f64);
    out[8] = session.map_or(0.0, |session| session.categories_viewed.len() as f64);
    out[9] = session.map_or(0.0, |session| f64::from(session.cart_items()));
    out[10] = session.map_or(0.0, SessionState::cart_value);
    out[11] = f64::from(product_counts.views);
    out[12] = f64::from(product_counts.carts);
    out[13] = f64::from(product_counts.removes);
    out[14] = session_product.map_or(0.0, |product| f64::from(product.in_cart));
    out[15] = session_product
        .and_then(|product| product.last_view_at)
        .map_or(-1.0, |last| seconds(now - last));
    out[16] = ratio(product_counts.views, session_counts.views);
    out[17] = f64::from(user_counts.events);
    out[18] = f64::from(user_counts.views);
    out[19] = f64::from(user_counts.carts);
    out[20] = f64::from(user_counts.removes);
    out[21] = f64::from(user_counts.purchases);
    out[22] = ratio(user_counts.carts, user_counts.views);
    out[23] = ratio(user_counts.purchases, user_counts.carts);
    out[24] = user.map_or(0.0, |user| f64::from(user.sessions.saturating_sub(1)));
    out[25] = user.map_or(0.0, |user| {
        f64::from(user.purchase_sessions.saturating_sub(in_session_purchase))
    });
    out[26] = user
        .and_then(|user| user.last_purchase_at)
        .map_or(-1.0, |last| seconds(now - last));
    out[27] = user.map_or(0.0, |user| user.revenue);
    out[28] = f64::from(user_product_counts.views);
    out[29] = f64::from(user_product_counts.carts);
    out[30] = f64::from(user_product_counts.removes);
    out[31] = f64::from(user_product_counts.purchases);
    out[32] = f64::from(
        user_product_counts
            .views
            .saturating_sub(product_counts.views),
    );
}

/// Fills the catalog-side features from product and category state.
pub fn catalog_features(
    product: Option<&ProductState>,
    category: Option<&CategoryState>,
    out: &mut [f64],
) {
    debug_assert_eq!(out.len(), FEATURE_COUNT - USER_SIDE_COUNT);
    let empty_counts = Counts::default();
    let counts = product.map_or(&empty_counts, |product| &product.counts);
    let price = product.map_or(0.0, |product| product.price);
    out[0] = f64::from(counts.events);
    out[1] = f64::from(counts.views);
    out[2] = f64::from(counts.carts);
    out[3] = f64::from(counts.removes);
    out[4] = f64::from(counts.purchases);
    out[5] = ratio(counts.carts, counts.views);
    out[6] = ratio(counts.purchases, counts.views);
    out[7] = price;
    out[8] = match category.and_then(CategoryState::median_price) {
        Some(median) if median > 0.0 => price / median,
        _ => 1.0,
    };
}

/// Assembles a full vector from both sides.
pub fn assemble(
    session: Option<&SessionState>,
    user: Option<&UserState>,
    product_id: u64,
    product: Option<&ProductState>,
    category: Option<&CategoryState>,
) -> FeatureVector {
    let mut vector = [0.0; FEATURE_COUNT];
    let (user_side, catalog_side) = vector.split_at_mut(USER_SIDE_COUNT);
    user_side_features(session, user, product_id, user_side);
    catalog_features(product, category, catalog_side);
    vector
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_described() {
        let mut names: Vec<_> = FEATURES.iter().map(|feature| feature.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FEATURE_COUNT);
        assert!(
            FEATURES
                .iter()
                .all(|feature| !feature.description.is_empty())
        );
        let user_side = FEATURES
            .iter()
            .take_while(|feature| !matches!(feature.entity, Entity::Product))
            .count();
        assert_eq!(user_side, USER_SIDE_COUNT);
    }

    #[test]
    fn unknown_entities_give_neutral_values() {
        let vector = assemble(None, None, 1, None, None);
        let index = |name: &str| {
            FEATURES
                .iter()
                .position(|feature| feature.name == name)
                .unwrap()
        };
        assert_eq!(
            vector[index("session_product_seconds_since_last_view")],
            -1.0
        );
        assert_eq!(vector[index("user_seconds_since_last_purchase")], -1.0);
        assert_eq!(vector[index("price_to_category_median")], 1.0);
        assert_eq!(vector[index("session_events")], 0.0);
    }
}
