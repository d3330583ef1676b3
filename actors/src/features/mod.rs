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
pub use user::{DAY_MILLIS, PurchaseDays, RECENT_IDENTITIES, UserProduct, UserState};

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
    /// The events and event fields it is computed from.
    pub inputs: &'static str,
    pub window: Window,
    pub unit: Unit,
}

/// The stretch of history a feature summarises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    /// The current session, up to its latest event.
    Session,
    /// The user's whole history, the current session included.
    UserHistory,
    /// The user's sessions before the current one.
    EarlierSessions,
    /// Every user's events on the product, since the product was first seen.
    ProductHistory,
    /// The product's latest event.
    LatestEvent,
    /// Every view in the product's category, since it was first seen.
    CategoryHistory,
}

impl Window {
    /// The window in words.
    pub fn describe(self) -> &'static str {
        match self {
            Window::Session => "the current session, up to its latest event",
            Window::UserHistory => "the user's whole history, this session included",
            Window::EarlierSessions => "the user's sessions before this one",
            Window::ProductHistory => "every user's events on the product, all time",
            Window::LatestEvent => "the product's latest event",
            Window::CategoryHistory => "every view in the product's category, all time",
        }
    }
}

/// What kind of number a feature is; it fixes the type and range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Count,
    /// A quotient of two counts, 0 when the denominator is 0.
    Ratio,
    /// A part of a whole.
    Share,
    Seconds,
    /// Seconds since something, -1 when it never happened.
    SecondsOrNever,
    /// In the events' currency.
    Money,
    /// A price over a reference price, 1 when the reference is unknown.
    PriceRatio,
}

impl Unit {
    /// The values a feature of this unit takes, in words.
    pub fn range(self) -> &'static str {
        match self {
            Unit::Count => "integer, 0 or more",
            Unit::Ratio => "real, 0 or more (0 when the denominator is 0)",
            Unit::Share => "real, 0 to 1",
            Unit::Seconds => "real, 0 or more",
            Unit::SecondsOrNever => "real, 0 or more, or -1 when it never happened",
            Unit::Money => "real, 0 or more, in the events' currency",
            Unit::PriceRatio => "real, 0 or more (1 when the category's median price is unknown)",
        }
    }
}

/// Every feature, in the order of the feature vector. Names are stable: models refer to them.
pub const FEATURES: [FeatureDefinition; FEATURE_COUNT] = [
    FeatureDefinition {
        name: "session_events",
        entity: Entity::Session,
        description: "events in the session so far",
        inputs: "every event",
        window: Window::Session,
        unit: Unit::Count,
    },
    FeatureDefinition {
        name: "session_views",
        entity: Entity::Session,
        description: "views in the session",
        inputs: "view",
        window: Window::Session,
        unit: Unit::Count,
    },
    FeatureDefinition {
        name: "session_carts",
        entity: Entity::Session,
        description: "add-to-cart events in the session",
        inputs: "cart",
        window: Window::Session,
        unit: Unit::Count,
    },
    FeatureDefinition {
        name: "session_removes",
        entity: Entity::Session,
        description: "remove-from-cart events in the session",
        inputs: "remove_from_cart",
        window: Window::Session,
        unit: Unit::Count,
    },
    FeatureDefinition {
        name: "session_purchases",
        entity: Entity::Session,
        description: "purchases in the session",
        inputs: "purchase",
        window: Window::Session,
        unit: Unit::Count,
    },
    FeatureDefinition {
        name: "session_cart_view_ratio",
        entity: Entity::Session,
        description: "session carts divided by session views",
        inputs: "cart, view",
        window: Window::Session,
        unit: Unit::Ratio,
    },
    FeatureDefinition {
        name: "session_seconds_since_start",
        entity: Entity::Session,
        description: "seconds from the session's first event to its latest",
        inputs: "event_time",
        window: Window::Session,
        unit: Unit::Seconds,
    },
    FeatureDefinition {
        name: "session_distinct_products_viewed",
        entity: Entity::Session,
        description: "distinct products viewed in the session",
        inputs: "view (product_id)",
        window: Window::Session,
        unit: Unit::Count,
    },
    FeatureDefinition {
        name: "session_distinct_categories_viewed",
        entity: Entity::Session,
        description: "distinct categories viewed in the session",
        inputs: "view (category_id)",
        window: Window::Session,
        unit: Unit::Count,
    },
    FeatureDefinition {
        name: "cart_items",
        entity: Entity::Session,
        description: "units in the cart",
        inputs: "cart, remove_from_cart, purchase",
        window: Window::Session,
        unit: Unit::Count,
    },
    FeatureDefinition {
        name: "cart_value",
        entity: Entity::Session,
        description: "value of the cart at the latest prices",
        inputs: "cart, remove_from_cart, purchase (price)",
        window: Window::Session,
        unit: Unit::Money,
    },
    FeatureDefinition {
        name: "session_product_views",
        entity: Entity::SessionProduct,
        description: "views of this product in the session",
        inputs: "view of the product",
        window: Window::Session,
        unit: Unit::Count,
    },
    FeatureDefinition {
        name: "session_product_carts",
        entity: Entity::SessionProduct,
        description: "add-to-cart events for this product in the session",
        inputs: "cart of the product",
        window: Window::Session,
        unit: Unit::Count,
    },
    FeatureDefinition {
        name: "session_product_removes",
        entity: Entity::SessionProduct,
        description: "remove-from-cart events for this product in the session",
        inputs: "remove_from_cart of the product",
        window: Window::Session,
        unit: Unit::Count,
    },
    FeatureDefinition {
        name: "session_product_in_cart",
        entity: Entity::SessionProduct,
        description: "units of this product in the cart",
        inputs: "cart, remove_from_cart, purchase of the product",
        window: Window::Session,
        unit: Unit::Count,
    },
    FeatureDefinition {
        name: "session_product_seconds_since_last_view",
        entity: Entity::SessionProduct,
        description: "seconds since this product was last viewed in the session, -1 if never",
        inputs: "view of the product (event_time)",
        window: Window::Session,
        unit: Unit::SecondsOrNever,
    },
    FeatureDefinition {
        name: "session_product_view_share",
        entity: Entity::SessionProduct,
        description: "share of the session's views that were of this product",
        inputs: "view",
        window: Window::Session,
        unit: Unit::Share,
    },
    FeatureDefinition {
        name: "user_events",
        entity: Entity::User,
        description: "events of the user over their history",
        inputs: "every event",
        window: Window::UserHistory,
        unit: Unit::Count,
    },
    FeatureDefinition {
        name: "user_views",
        entity: Entity::User,
        description: "views of the user over their history",
        inputs: "view",
        window: Window::UserHistory,
        unit: Unit::Count,
    },
    FeatureDefinition {
        name: "user_carts",
        entity: Entity::User,
        description: "add-to-cart events of the user over their history",
        inputs: "cart",
        window: Window::UserHistory,
        unit: Unit::Count,
    },
    FeatureDefinition {
        name: "user_removes",
        entity: Entity::User,
        description: "remove-from-cart events of the user over their history",
        inputs: "remove_from_cart",
        window: Window::UserHistory,
        unit: Unit::Count,
    },
    FeatureDefinition {
        name: "user_purchases",
        entity: Entity::User,
        description: "purchases of the user over their history",
        inputs: "purchase",
        window: Window::UserHistory,
        unit: Unit::Count,
    },
    FeatureDefinition {
        name: "user_cart_view_ratio",
        entity: Entity::User,
        description: "user carts divided by user views",
        inputs: "cart, view",
        window: Window::UserHistory,
        unit: Unit::Ratio,
    },
    FeatureDefinition {
        name: "user_purchase_cart_ratio",
        entity: Entity::User,
        description: "user purchases divided by user carts",
        inputs: "purchase, cart",
        window: Window::UserHistory,
        unit: Unit::Ratio,
    },
    FeatureDefinition {
        name: "user_earlier_sessions",
        entity: Entity::User,
        description: "sessions of the user before this one",
        inputs: "user_session",
        window: Window::EarlierSessions,
        unit: Unit::Count,
    },
    FeatureDefinition {
        name: "user_earlier_purchase_sessions",
        entity: Entity::User,
        description: "sessions of the user with a purchase, before this one",
        inputs: "purchase, user_session",
        window: Window::EarlierSessions,
        unit: Unit::Count,
    },
    FeatureDefinition {
        name: "user_seconds_since_last_purchase",
        entity: Entity::User,
        description: "seconds since the user's latest purchase, -1 if none",
        inputs: "purchase (event_time)",
        window: Window::UserHistory,
        unit: Unit::SecondsOrNever,
    },
    FeatureDefinition {
        name: "user_lifetime_revenue",
        entity: Entity::User,
        description: "total the user has spent",
        inputs: "purchase (price)",
        window: Window::UserHistory,
        unit: Unit::Money,
    },
    FeatureDefinition {
        name: "user_product_views",
        entity: Entity::UserProduct,
        description: "views of this product by the user over their history",
        inputs: "view of the product",
        window: Window::UserHistory,
        unit: Unit::Count,
    },
    FeatureDefinition {
        name: "user_product_carts",
        entity: Entity::UserProduct,
        description: "add-to-cart events for this product by the user over their history",
        inputs: "cart of the product",
        window: Window::UserHistory,
        unit: Unit::Count,
    },
    FeatureDefinition {
        name: "user_product_removes",
        entity: Entity::UserProduct,
        description: "remove-from-cart events for this product by the user over their history",
        inputs: "remove_from_cart of the product",
        window: Window::UserHistory,
        unit: Unit::Count,
    },
    FeatureDefinition {
        name: "user_product_purchases",
        entity: Entity::UserProduct,
        description: "purchases of this product by the user over their history",
        inputs: "purchase of the product",
        window: Window::UserHistory,
        unit: Unit::Count,
    },
    FeatureDefinition {
        name: "user_product_earlier_views",
        entity: Entity::UserProduct,
        description: "views of this product by the user in earlier sessions",
        inputs: "view of the product",
        window: Window::EarlierSessions,
        unit: Unit::Count,
    },
    FeatureDefinition {
        name: "product_events",
        entity: Entity::Product,
        description: "events about the product, all users",
        inputs: "every event on the product",
        window: Window::ProductHistory,
        unit: Unit::Count,
    },
    FeatureDefinition {
        name: "product_views",
        entity: Entity::Product,
        description: "views of the product, all users",
        inputs: "view",
        window: Window::ProductHistory,
        unit: Unit::Count,
    },
    FeatureDefinition {
        name: "product_carts",
        entity: Entity::Product,
        description: "add-to-cart events for the product, all users",
        inputs: "cart",
        window: Window::ProductHistory,
        unit: Unit::Count,
    },
    FeatureDefinition {
        name: "product_removes",
        entity: Entity::Product,
        description: "remove-from-cart events for the product, all users",
        inputs: "remove_from_cart",
        window: Window::ProductHistory,
        unit: Unit::Count,
    },
    FeatureDefinition {
        name: "product_purchases",
        entity: Entity::Product,
        description: "purchases of the product, all users",
        inputs: "purchase",
        window: Window::ProductHistory,
        unit: Unit::Count,
    },
    FeatureDefinition {
        name: "product_cart_view_ratio",
        entity: Entity::Product,
        description: "product carts divided by product views",
        inputs: "cart, view",
        window: Window::ProductHistory,
        unit: Unit::Ratio,
    },
    FeatureDefinition {
        name: "product_purchase_view_ratio",
        entity: Entity::Product,
        description: "product purchases divided by product views",
        inputs: "purchase, view",
        window: Window::ProductHistory,
        unit: Unit::Ratio,
    },
    FeatureDefinition {
        name: "price",
        entity: Entity::Product,
        description: "the product's price in its latest event",
        inputs: "price",
        window: Window::LatestEvent,
        unit: Unit::Money,
    },
    FeatureDefinition {
        name: "price_to_category_median",
        entity: Entity::Product,
        description: "the product's price divided by the median price viewed in its category (each view counts), 1 if unknown",
        inputs: "price; view (price) in the category",
        window: Window::CategoryHistory,
        unit: Unit::PriceRatio,
    },
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
