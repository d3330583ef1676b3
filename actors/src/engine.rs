//! The feature engine without actors: the user side (sessions and users, partitioned by user) and
//! the catalog (products and categories), and their composition used by training replay. The
//! online shards and catalog actor own exactly these types.

use std::collections::hash_map::Entry;

// SipHash showed up as the top cost of replay; these keys are not attacker-chosen hash floods
// (ids are hashed with a per-process random seed all the same).
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::event::{Event, EventType, Millis};
use crate::features::{
    self, CategoryState, DeliveryGuard, FeatureVector, ProductState, SessionState, UserState,
};

/// Default inactivity after which a session ends: 30 minutes.
pub const DEFAULT_SESSION_TIMEOUT: Millis = 30 * 60 * 1000;
/// How far event time must move before idle sessions are looked for again.
const EXPIRY_SCAN_INTERVAL: Millis = 60 * 1000;

/// Identifies a session: the user and a hash of their session string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionKey {
    pub user_id: u64,
    pub session_hash: u64,
}

impl SessionKey {
    /// The key of a user's session string.
    pub fn new(user_id: u64, user_session: &str) -> Self {
        SessionKey {
            user_id,
            session_hash: xxh3_64(user_session.as_bytes()),
        }
    }

    /// The key of the event's session.
    pub fn of(event: &Event) -> Self {
        Self::new(event.user_id, &event.user_session)
    }
}

/// What applying an event did.
#[derive(Debug, PartialEq)]
pub enum Applied {
    /// The user had applied an event with the same identity: nothing changed.
    Duplicate,
    /// The event changed state; `closed` is the session it ended by arriving after a gap longer
    /// than the session timeout.
    Changed { closed: Option<SessionState> },
}

/// Sessions and users of one partition of users.
#[derive(Debug)]
pub struct UserSide {
    pub sessions: HashMap<SessionKey, SessionState>,
    pub users: HashMap<u64, UserState>,
    session_timeout: Millis,
    watermark: Millis,
    next_expiry_scan: Millis,
    track_dirty: bool,
    pub dirty_sessions: HashSet<SessionKey>,
    pub dirty_users: HashSet<u64>,
    /// Record delivery guards (a bus that redelivers feeds this side).
    pub guard_deliveries: bool,
    guarded_sessions: HashSet<SessionKey>,
    guarded_users: HashSet<u64>,
}

impl UserSide {
    /// Drops every session and user, flushed or not; the watermark stays.
    pub fn drop_all(&mut self) {
        self.sessions = HashMap::new();
        self.users = HashMap::new();
        self.dirty_sessions = HashSet::new();
        self.dirty_users = HashSet::new();
        self.guarded_sessions = HashSet::new();
        self.guarded_users = HashSet::new();
    }

    /// An empty partition. `track_dirty` records what changed since the last flush.
    pub fn new(session_timeout: Millis, track_dirty: bool) -> Self {
        UserSide {
            sessions: HashMap::new(),
            users: HashMap::new(),
            session_timeout,
            watermark: Millis::MIN,
            next_expiry_scan: Millis::MIN,
            track_dirty,
            dirty_sessions: HashSet::new(),
            dirty_users: HashSet::new(),
            guard_deliveries: false,
            guarded_sessions: HashSet::new(),
            guarded_users: HashSet::new(),
        }
    }

    /// The inactivity after which a session ends.
    pub fn session_timeout(&self) -> Millis {
        self.session_timeout
    }

    /// The latest event time seen.
    pub fn watermark(&self) -> Millis {
        self.watermark
    }

    /// Applies one event to its session and user. Idempotent: an event whose identity the user
    /// applied recently is a duplicate. A `redelivered` event (the bus may have delivered it
    /// before a crash) is applied only to the user and session that do not remember it, which
    /// relies on stores making users durable before sessions.
    pub fn apply(&mut self, event: &Event, redelivered: bool) -> Applied {
        let identity = event.identity();
        let user = self
            .users
            .entry(event.user_id)
            .or_insert_with(|| UserState::new(event.user_id, event.time));
        let user_applied = redelivered && user.guard.contains(identity);
        if !user_applied && user.has_seen(identity) {
            return Applied::Duplicate;
        }
        let key = SessionKey::of(event);
        let session_applied = redelivered
            && self
                .sessions
                .get(&key)
                .is_some_and(|session| session.guard.contains(identity));
        let mut closed = None;
        if !session_applied {
            let session = match self.sessions.entry(key) {
                Entry::Occupied(entry)
                    if event.time - entry.get().last_event_at > self.session_timeout =>
                {
                    let session = entry.into_mut();
                    let fresh = SessionState::new(event.user_id, &event.user_session, event.time);
                    closed = Some(std::mem::replace(session, fresh));
                    if !user_applied {
                        user.start_session();
                    }
                    session
                }
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => {
                    if !user_applied {
                        user.start_session();
                    }
                    entry.insert(SessionState::new(
                        event.user_id,
                        &event.user_session,
                        event.time,
                    ))
                }
            };
            let first_purchase =
                event.event_type == EventType::Purchase && session.counts.purchases == 0;
            session.apply(event);
            if self.guard_deliveries {
                session.guard.record(identity);
                self.guarded_sessions.insert(key);
            }
            if !user_applied {
                user.apply(event, identity, first_purchase);
            }
        } else if !user_applied {
            // Stores write users before sessions, so a session never remembers an event its
            // user forgot; should it happen, the user still counts the event once.
            let purchases = self.sessions.get(&key).map_or(0, |s| s.counts.purchases);
            let first_purchase = event.event_type == EventType::Purchase && purchases <= 1;
            user.apply(event, identity, first_purchase);
        }
        if self.guard_deliveries && !user_applied {
            user.guard.record(identity);
            self.guarded_users.insert(event.user_id);
        }
        self.watermark = self.watermark.max(event.time);
        if self.track_dirty {
            self.dirty_sessions.insert(key);
            self.dirty_users.insert(event.user_id);
        }
        Applied::Changed { closed }
    }

    /// The bus acknowledged everything applied so far: delivery guards forget what the
    /// acknowledgement before this one covered.
    pub fn forget_acknowledged(&mut self) {
        forget_acknowledged(&mut self.guarded_sessions, &mut self.sessions, |session| {
            &mut session.guard
        });
        forget_acknowledged(&mut self.guarded_users, &mut self.users, |user| {
            &mut user.guard
        });
    }

    /// Moves the watermark (live mode moves it with the wall clock) without an event.
    pub fn advance_watermark(&mut self, time: Millis) {
        self.watermark = self.watermark.max(time);
    }

    /// Ends and removes the sessions idle for longer than the timeout at the watermark. Scans at
    /// most once per minute of event time unless `force` is set.
    pub fn expire_sessions(&mut self, force: bool) -> Vec<SessionState> {
        if !force && self.watermark < self.next_expiry_scan {
            return Vec::new();
        }
        self.next_expiry_scan = self.watermark.saturating_add(EXPIRY_SCAN_INTERVAL);
        let deadline = self.watermark.saturating_sub(self.session_timeout);
        let expired: Vec<SessionKey> = self
            .sessions
            .iter()
            .filter(|(_, session)| session.last_event_at < deadline)
            .map(|(key, _)| *key)
            .collect();
        expired
            .into_iter()
            .filter_map(|key| self.sessions.remove(&key))
            .collect()
    }

    /// Ends every session now, as at the end of a replay.
    pub fn close_all_sessions(&mut self) -> Vec<SessionState> {
        self.sessions.drain().map(|(_, session)| session).collect()
    }

    /// The user-side half of the feature vector.
    pub fn features(&self, key: SessionKey, product_id: u64, out: &mut [f64]) {
        features::user_side_features(
            self.sessions.get(&key),
            self.users.get(&key.user_id),
            product_id,
            out,
        );
    }
}

/// Lets the guards of the entities in `guarded` forget what the acknowledgement before the
/// last covered, and keeps in `guarded` only those that still remember something.
fn forget_acknowledged<K: Eq + std::hash::Hash, V>(
    guarded: &mut HashSet<K>,
    entities: &mut HashMap<K, V>,
    guard: impl Fn(&mut V) -> &mut DeliveryGuard,
) {
    guarded.retain(|key| {
        entities.get_mut(key).is_some_and(|entity| {
            let guard = guard(entity);
            guard.forget_acknowledged();
            !guard.is_empty()
        })
    });
}

/// A product's or category's part: its id and the source (user partition) whose events it counts.
pub type PartKey = (u64, u16);

/// Products and categories, as parts per source (see [`crate::features::product`]); offline
/// and on the HTTP bus every part has source 0.
#[derive(Debug)]
pub struct Catalog {
    pub products: HashMap<PartKey, ProductState>,
    pub categories: HashMap<PartKey, CategoryState>,
    track_dirty: bool,
    pub dirty_products: HashSet<PartKey>,
    pub dirty_categories: HashSet<PartKey>,
    /// Record delivery guards (a bus that redelivers feeds the catalog).
    pub guard_deliveries: bool,
    guarded_products: HashSet<PartKey>,
    guarded_categories: HashSet<PartKey>,
}

impl Catalog {
    /// Drops every product and category part, flushed or not.
    pub fn drop_all(&mut self) {
        self.products = HashMap::new();
        self.categories = HashMap::new();
        self.dirty_products = HashSet::new();
        self.dirty_categories = HashSet::new();
        self.guarded_products = HashSet::new();
        self.guarded_categories = HashSet::new();
    }

    /// An empty catalog. `track_dirty` records what changed since the last flush.
    pub fn new(track_dirty: bool) -> Self {
        Catalog {
            products: HashMap::new(),
            categories: HashMap::new(),
            track_dirty,
            dirty_products: HashSet::new(),
            dirty_categories: HashSet::new(),
            guard_deliveries: false,
            guarded_products: HashSet::new(),
            guarded_categories: HashSet::new(),
        }
    }

    /// Applies an event the user side accepted to the parts of `source`. A `redelivered` event
    /// is applied only to the product and category parts that do not remember it.
    pub fn apply(&mut self, event: &Event, redelivered: bool, source: u16) {
        // Offline and on the HTTP bus nothing is redelivered or guarded: no hashing per event.
        let identity = (redelivered || self.guard_deliveries).then(|| event.identity());
        let seen = |guard: &DeliveryGuard| {
            identity.is_some_and(|identity| redelivered && guard.contains(identity))
        };
        if event.event_type == EventType::View {
            let key = (event.category_id, source);
            let category = self
                .categories
                .entry(key)
                .or_insert_with(|| CategoryState::new(event.category_id, source));
            if !seen(&category.guard) {
                category.add_view(event.price);
                if let Some(identity) = identity.filter(|_| self.guard_deliveries) {
                    category.guard.record(identity);
                    self.guarded_categories.insert(key);
                }
                if self.track_dirty {
                    self.dirty_categories.insert(key);
                }
            }
        }
        let key = (event.product_id, source);
        let product = self
            .products
            .entry(key)
            .or_insert_with(|| ProductState::new(event, source));
        if seen(&product.guard) {
            return;
        }
        product.apply(event);
        if let Some(identity) = identity.filter(|_| self.guard_deliveries) {
            product.guard.record(identity);
            self.guarded_products.insert(key);
        }
        if self.track_dirty {
            self.dirty_products.insert(key);
        }
    }

    /// The bus acknowledged everything applied so far: delivery guards forget what the
    /// acknowledgement before this one covered.
    pub fn forget_acknowledged(&mut self) {
        forget_acknowledged(&mut self.guarded_products, &mut self.products, |product| {
            &mut product.guard
        });
        forget_acknowledged(
            &mut self.guarded_categories,
            &mut self.categories,
            |category| &mut category.guard,
        );
    }

    /// The catalog half of the feature vector when every part is in memory as source 0, as in
    /// training replay and on the HTTP bus.
    pub fn features(&self, product_id: u64, out: &mut [f64]) {
        let product = self.products.get(&(product_id, 0));
        let category = product.and_then(|product| self.categories.get(&(product.category_id, 0)));
        features::catalog_features(product, category, out);
    }
}

/// The whole engine in one thread, as training replays history.
#[derive(Debug)]
pub struct FeatureEngine {
    pub users: UserSide,
    pub catalog: Catalog,
}

impl FeatureEngine {
    /// An engine with the given session timeout.
    pub fn new(session_timeout: Millis) -> Self {
        FeatureEngine {
            users: UserSide::new(session_timeout, false),
            catalog: Catalog::new(false),
        }
    }

    /// Applies one event to both sides.
    pub fn apply(&mut self, event: &Event) -> Applied {
        let applied = self.users.apply(event, false);
        if matches!(applied, Applied::Changed { .. }) {
            self.catalog.apply(event, false, 0);
        }
        applied
    }

    /// The feature vector for scoring `product_id` in a session, from the current state.
    pub fn features(&self, key: SessionKey, product_id: u64) -> FeatureVector {
        let mut vector = [0.0; features::FEATURE_COUNT];
        let (user_side, catalog_side) = vector.split_at_mut(features::USER_SIDE_COUNT);
        self.users.features(key, product_id, user_side);
        self.catalog.features(product_id, catalog_side);
        vector
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{FEATURES, Outcome};

    fn event(time_seconds: i64, event_type: EventType, product_id: u64, session: &str) -> Event {
        Event {
            time: time_seconds * 1000,
            event_type,
            product_id,
            category_id: 1,
            category_code: None,
            brand: None,
            price: 10.0,
            user_id: 42,
            user_session: session.into(),
            event_id: None,
        }
    }

    fn value(vector: &FeatureVector, name: &str) -> f64 {
        vector[FEATURES
            .iter()
            .position(|feature| feature.name == name)
            .expect(name)]
    }

    #[test]
    fn duplicates_change_nothing() {
        let mut engine = FeatureEngine::new(DEFAULT_SESSION_TIMEOUT);
        let view = event(0, EventType::View, 5, "a");
        assert!(matches!(
            engine.apply(&view),
            Applied::Changed { closed: None }
        ));
        assert_eq!(engine.apply(&view), Applied::Duplicate);
        let vector = engine.features(SessionKey::of(&view), 5);
        assert_eq!(value(&vector, "session_views"), 1.0);
        assert_eq!(value(&vector, "product_views"), 1.0);
        assert_eq!(value(&vector, "user_views"), 1.0);
    }

    #[test]
    fn a_long_gap_starts_a_new_session() {
        let mut engine = FeatureEngine::new(DEFAULT_SESSION_TIMEOUT);
        engine.apply(&event(0, EventType::Cart, 5, "a"));
        let late = event(31 * 60, EventType::View, 6, "a");
        let Applied::Changed {
            closed: Some(closed),
        } = engine.apply(&late)
        else {
            panic!("the gap should close the session");
        };
        assert_eq!(closed.outcome(), Outcome::Abandoned);
        let vector = engine.features(SessionKey::of(&late), 6);
        assert_eq!(value(&vector, "session_events"), 1.0);
        assert_eq!(value(&vector, "user_earlier_sessions"), 1.0);
        assert_eq!(value(&vector, "user_events"), 2.0);
    }

    #[test]
    fn sessions_expire_at_the_watermark() {
        let mut side = UserSide::new(DEFAULT_SESSION_TIMEOUT, true);
        side.apply(&event(0, EventType::View, 5, "a"), false);
        side.apply(&event(20 * 60, EventType::View, 5, "b"), false);
        side.advance_watermark(31 * 60 * 1000);
        let expired = side.expire_sessions(false);
        assert_eq!(expired.len(), 1);
        assert_eq!(&*expired[0].session_id, "a");
        assert_eq!(side.sessions.len(), 1);
        assert_eq!(side.dirty_sessions.len(), 2);
    }

    #[test]
    fn earlier_purchase_sessions_exclude_the_current_one() {
        let mut engine = FeatureEngine::new(DEFAULT_SESSION_TIMEOUT);
        engine.apply(&event(0, EventType::Purchase, 5, "a"));
        let view = event(10, EventType::View, 6, "b");
        engine.apply(&view);
        let purchase = event(20, EventType::Purchase, 6, "b");
        engine.apply(&purchase);
        let vector = engine.features(SessionKey::of(&purchase), 6);
        assert_eq!(value(&vector, "user_earlier_purchase_sessions"), 1.0);
        assert_eq!(value(&vector, "user_earlier_sessions"), 1.0);
        assert_eq!(value(&vector, "user_seconds_since_last_purchase"), 0.0);
        assert_eq!(
            value(&vector, "session_product_seconds_since_last_view"),
            10.0
        );
    }

    fn shop_event(
        seconds: i64,
        event_type: EventType,
        user_id: u64,
        session: &str,
        product_id: u64,
    ) -> Event {
        let (category_id, price) = match product_id {
            100 => (10, 50.0),
            101 => (10, 20.0),
            102 => (10, 200.0),
            _ => (20, 5.0),
        };
        Event {
            time: seconds * 1000,
            event_type,
            product_id,
            category_id,
            category_code: None,
            brand: None,
            price,
            user_id,
            user_session: session.into(),
            event_id: None,
        }
    }

    /// Every feature of the vector, checked by name against values worked out by hand.
    #[test]
    fn every_feature_has_its_documented_value() {
        use EventType::*;
        let mut engine = FeatureEngine::new(DEFAULT_SESSION_TIMEOUT);
        let events = [
            shop_event(0, View, 1, "a", 100),
            shop_event(10, Cart, 1, "a", 100),
            shop_event(20, Purchase, 1, "a", 100),
            shop_event(30, View, 2, "x", 101),
            shop_event(40, View, 2, "x", 102),
            shop_event(4000, View, 1, "b", 101),
            shop_event(4010, View, 1, "b", 200),
            shop_event(4020, Cart, 1, "b", 101),
            shop_event(4030, Cart, 1, "b", 101),
            shop_event(4040, RemoveFromCart, 1, "b", 101),
            shop_event(4050, View, 1, "b", 100),
            shop_event(4060, View, 1, "b", 101),
        ];
        for event in &events {
            engine.apply(event);
        }
        let vector = engine.features(SessionKey::new(1, "b"), 101);
        let expected: [(&str, f64); 41] = [
            ("session_events", 7.0),
            ("session_views", 4.0),
            ("session_carts", 2.0),
            ("session_removes", 1.0),
            ("session_purchases", 0.0),
            ("session_cart_view_ratio", 0.5),
            ("session_seconds_since_start", 60.0),
            ("session_distinct_products_viewed", 3.0),
            ("session_distinct_categories_viewed", 2.0),
            ("cart_items", 1.0),
            ("cart_value", 20.0),
            ("session_product_views", 2.0),
            ("session_product_carts", 2.0),
            ("session_product_removes", 1.0),
            ("session_product_in_cart", 1.0),
            ("session_product_seconds_since_last_view", 0.0),
            ("session_product_view_share", 0.5),
            ("user_events", 10.0),
            ("user_views", 5.0),
            ("user_carts", 3.0),
            ("user_removes", 1.0),
            ("user_purchases", 1.0),
            ("user_cart_view_ratio", 0.6),
            ("user_purchase_cart_ratio", 1.0 / 3.0),
            ("user_earlier_sessions", 1.0),
            ("user_earlier_purchase_sessions", 1.0),
            ("user_seconds_since_last_purchase", 4040.0),
            ("user_lifetime_revenue", 50.0),
            ("user_product_views", 2.0),
            ("user_product_carts", 2.0),
            ("user_product_removes", 1.0),
            ("user_product_purchases", 0.0),
            ("user_product_earlier_views", 0.0),
            ("product_events", 6.0),
            ("product_views", 3.0),
            ("product_carts", 2.0),
            ("product_removes", 1.0),
            ("product_purchases", 0.0),
            ("product_cart_view_ratio", 2.0 / 3.0),
            ("product_purchase_view_ratio", 0.0),
            ("price", 20.0),
        ];
        for (name, want) in expected {
            let got = value(&vector, name);
            assert!((got - want).abs() < 1e-12, "{name}: got {got}, want {want}");
        }
        // The category's median viewed price (20, of views at 50, 20, 200, 20, 50 and 20) is
        // known to the histogram's ~13%.
        let ratio = value(&vector, "price_to_category_median");
        assert!(
            (ratio - 1.0).abs() < 0.14,
            "price_to_category_median {ratio}"
        );
        assert_eq!(expected.len() + 1, FEATURES.len());

        // A product the user bought before, scored from another session: earlier views count.
        let vector = engine.features(SessionKey::new(1, "b"), 100);
        assert_eq!(value(&vector, "user_product_purchases"), 1.0);
        assert_eq!(value(&vector, "user_product_earlier_views"), 1.0);
        assert_eq!(
            value(&vector, "session_product_seconds_since_last_view"),
            10.0
        );
        // Unknown session, user and product still answer, with neutral values.
        let vector = engine.features(SessionKey::new(9, "z"), 999);
        assert_eq!(value(&vector, "session_events"), 0.0);
        assert_eq!(value(&vector, "price_to_category_median"), 1.0);
    }

    /// What a store holds after a flush that may have been cut short.
    #[derive(Clone, Copy, Debug)]
    enum Durable {
        Nothing,
        Users,
        UsersAndSessions,
        Categories,
        Products,
        Everything,
    }

    #[test]
    fn redelivery_after_a_cut_short_flush_counts_every_event_once() {
        use EventType::*;
        let events = [
            shop_event(0, View, 1, "a", 100),
            shop_event(10, Cart, 1, "a", 100),
            shop_event(10, Cart, 1, "a", 100),
            shop_event(20, Purchase, 1, "a", 100),
            shop_event(30, View, 2, "x", 101),
            shop_event(40, View, 2, "x", 102),
            shop_event(4000, View, 1, "b", 101),
            shop_event(4010, Cart, 1, "b", 200),
            shop_event(4020, Purchase, 1, "b", 200),
        ];
        let mut clean = FeatureEngine::new(DEFAULT_SESSION_TIMEOUT);
        for event in &events {
            clean.apply(event);
        }
        for cut in 0..=events.len() {
            for durable in [
                Durable::Nothing,
                Durable::Users,
                Durable::UsersAndSessions,
                Durable::Categories,
                Durable::Products,
                Durable::Everything,
            ] {
                // Before the crash: the first `cut` events applied, part of them made durable.
                let mut users = UserSide::new(DEFAULT_SESSION_TIMEOUT, true);
                let mut catalog = Catalog::new(true);
                users.guard_deliveries = true;
                catalog.guard_deliveries = true;
                for event in &events[..cut] {
                    if matches!(users.apply(event, false), Applied::Changed { .. }) {
                        catalog.apply(event, false, 0);
                    }
                }
                let mut restarted_users = UserSide::new(DEFAULT_SESSION_TIMEOUT, true);
                let mut restarted_catalog = Catalog::new(true);
                restarted_users.guard_deliveries = true;
                restarted_catalog.guard_deliveries = true;
                if matches!(
                    durable,
                    Durable::Users | Durable::UsersAndSessions | Durable::Everything
                ) {
                    restarted_users.users = users.users.clone();
                }
                if matches!(durable, Durable::UsersAndSessions | Durable::Everything) {
                    restarted_users.sessions = users.sessions.clone();
                }
                if matches!(durable, Durable::Categories | Durable::Everything) {
                    restarted_catalog.categories = catalog.categories.clone();
                }
                if matches!(durable, Durable::Products | Durable::Everything) {
                    restarted_catalog.products = catalog.products.clone();
                }
                // Nothing was acknowledged: the bus redelivers every event.
                for event in &events {
                    if matches!(restarted_users.apply(event, true), Applied::Changed { .. }) {
                        restarted_catalog.apply(event, true, 0);
                    }
                }
                let context = format!("cut {cut}, durable {durable:?}");
                assert_eq!(restarted_users.users, clean.users.users, "{context}");
                assert_eq!(restarted_users.sessions, clean.users.sessions, "{context}");
                assert_eq!(
                    restarted_catalog.products, clean.catalog.products,
                    "{context}"
                );
                assert_eq!(
                    restarted_catalog.categories, clean.catalog.categories,
                    "{context}"
                );
            }
        }
    }

    #[test]
    fn a_fresh_delivery_is_never_mistaken_for_a_redelivery() {
        let mut users = UserSide::new(DEFAULT_SESSION_TIMEOUT, true);
        users.guard_deliveries = true;
        let view = event(0, EventType::View, 5, "a");
        users.apply(&view, false);
        // The same event again is a duplicate whether or not the bus says it is redelivered.
        assert_eq!(users.apply(&view, false), Applied::Duplicate);
        assert!(matches!(
            users.apply(&view, true),
            Applied::Changed { closed: None }
        ));
        assert_eq!(users.users[&42].counts.views, 1);
        assert_eq!(users.sessions[&SessionKey::of(&view)].counts.views, 1);
    }
}
