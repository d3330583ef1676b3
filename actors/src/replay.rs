//! History replay's engine: every user, session, product and category in one thread, fed events
//! in time order. Training replays history through it; the online actors own the very same state
//! machines and go through the same steps (see [`crate::delivery`]), so training and serving
//! compute the same features.

use std::collections::hash_map::Entry;

// SipHash showed up as the top cost of replay; these keys are not attacker-chosen hash floods
// (ids are hashed with a per-process random seed all the same).
use foldhash::{HashMap, HashMapExt};

use crate::clock::{DEFAULT_QUORUM, EventClock};
use crate::delivery::{self, Admission, DeliveryGuard};
use crate::event::{Event, Millis};
use crate::features::{
    self, CategoryState, FeatureVector, ProductState, SessionKey, SessionState, UserState, session,
};

/// Default inactivity after which a session ends: 30 minutes.
pub const DEFAULT_SESSION_TIMEOUT: Millis = 30 * 60 * 1000;
/// How far event time must move before idle sessions are looked for again.
const EXPIRY_SCAN_INTERVAL: Millis = 60 * 1000;

/// What applying an event did.
#[derive(Debug, PartialEq)]
pub enum Applied {
    /// The user had applied an event with the same identity: nothing changed.
    Duplicate,
    /// The event changed state; `closed` is the session it ended by arriving after a gap longer
    /// than the session timeout.
    Changed { closed: Option<SessionState> },
}

/// Every user and live session.
#[derive(Debug)]
pub struct UserSide {
    pub sessions: HashMap<SessionKey, SessionState>,
    pub users: HashMap<u64, UserState>,
    session_timeout: Millis,
    clock: EventClock,
    next_expiry_scan: Millis,
}

impl UserSide {
    /// No users yet; the watermark needs [`DEFAULT_QUORUM`] users, as the service's default.
    pub fn new(session_timeout: Millis) -> Self {
        Self::with_quorum(session_timeout, DEFAULT_QUORUM)
    }

    /// No users yet; the watermark moves as far as `quorum` distinct users agree.
    pub fn with_quorum(session_timeout: Millis, quorum: usize) -> Self {
        UserSide {
            sessions: HashMap::new(),
            users: HashMap::new(),
            session_timeout,
            clock: EventClock::new(quorum),
            next_expiry_scan: Millis::MIN,
        }
    }

    /// The event time sessions end by (see [`crate::clock`]).
    pub fn watermark(&self) -> Millis {
        self.clock.watermark()
    }

    /// Applies one event to its user and session: admission (duplicates), the session, then the
    /// user's history, as a user actor and its session actors do.
    pub fn apply(&mut self, event: &Event) -> Applied {
        self.apply_identified(event, SessionKey::of(event), event.identity())
    }

    /// [`Self::apply`] for a caller that has the event's session key and identity already.
    pub fn apply_identified(&mut self, event: &Event, key: SessionKey, identity: u64) -> Applied {
        // A user first seen here has no identities yet, so admitting it as found or as absent is
        // the same: one lookup serves admission and the update.
        let user = self
            .users
            .entry(event.user_id)
            .or_insert_with(|| UserState::new(event.user_id, event.time));
        let no_guard = DeliveryGuard::default();
        let admission = delivery::admit(Some(user), &no_guard, identity, false);
        if admission == Admission::Duplicate {
            return Applied::Duplicate;
        }
        let step = match self.sessions.entry(key) {
            Entry::Occupied(entry) => {
                session::continue_or_restart(entry.into_mut(), event, self.session_timeout)
            }
            Entry::Vacant(entry) => {
                let (started, step) = session::start(event);
                entry.insert(started);
                step
            }
        };
        delivery::apply_to_user(
            user,
            &mut DeliveryGuard::default(),
            event,
            identity,
            admission,
            &step,
            false,
        );
        self.clock.observe(event.user_id, event.time);
        Applied::Changed {
            closed: step.closed.map(|closed| *closed),
        }
    }

    /// Ends and removes the sessions idle for longer than the timeout at the watermark. Scans at
    /// most once per minute of event time.
    pub fn expire_sessions(&mut self) -> Vec<SessionState> {
        let watermark = self.clock.watermark();
        if watermark < self.next_expiry_scan {
            return Vec::new();
        }
        self.next_expiry_scan = watermark.saturating_add(EXPIRY_SCAN_INTERVAL);
        let deadline = watermark.saturating_sub(self.session_timeout);
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

    /// Ends and removes every session idle for longer than the timeout at the watermark, now:
    /// what the online engine ends when asked to end what is due exactly.
    pub fn end_due(&mut self) -> Vec<SessionState> {
        self.next_expiry_scan = Millis::MIN;
        self.expire_sessions()
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

/// Every product and category, as the one part (source 0) offline replay keeps.
#[derive(Debug, Default)]
pub struct Catalog {
    pub products: HashMap<(u64, u16), ProductState>,
    pub categories: HashMap<(u64, u16), CategoryState>,
}

impl Catalog {
    /// Applies an event the user side accepted: a view counts towards its category's prices,
    /// every event towards its product.
    pub fn apply(&mut self, event: &Event) {
        if event.event_type.is_view() {
            self.categories
                .entry((event.category_id, 0))
                .or_insert_with(|| CategoryState::new(event.category_id, 0))
                .add_view(event.price);
        }
        self.products
            .entry((event.product_id, 0))
            .or_insert_with(|| ProductState::new(event, 0))
            .apply(event);
    }

    /// The catalog half of the feature vector.
    pub fn features(&self, product_id: u64, out: &mut [f64]) {
        let product = self.products.get(&(product_id, 0));
        let category = product.and_then(|product| self.categories.get(&(product.category_id, 0)));
        features::catalog_features(product, category, out);
    }
}

/// The whole engine in one thread, as training replays history.
#[derive(Debug)]
pub struct ReplayEngine {
    pub users: UserSide,
    pub catalog: Catalog,
}

impl ReplayEngine {
    /// An engine with the given session timeout.
    pub fn new(session_timeout: Millis) -> Self {
        ReplayEngine {
            users: UserSide::new(session_timeout),
            catalog: Catalog::default(),
        }
    }

    /// Applies one event to both sides.
    pub fn apply(&mut self, event: &Event) -> Applied {
        self.apply_identified(event, SessionKey::of(event), event.identity())
    }

    /// [`Self::apply`] for a caller that has the event's session key and identity already.
    pub fn apply_identified(&mut self, event: &Event, key: SessionKey, identity: u64) -> Applied {
        let applied = self.users.apply_identified(event, key, identity);
        if matches!(applied, Applied::Changed { .. }) {
            self.catalog.apply(event);
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
    use crate::event::EventType;
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
        let mut engine = ReplayEngine::new(DEFAULT_SESSION_TIMEOUT);
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
        let mut engine = ReplayEngine::new(DEFAULT_SESSION_TIMEOUT);
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
        let mut side = UserSide::with_quorum(DEFAULT_SESSION_TIMEOUT, 1);
        side.apply(&event(0, EventType::View, 5, "a"));
        side.apply(&event(20 * 60, EventType::View, 5, "b"));
        let mut late = event(31 * 60, EventType::View, 5, "c");
        late.user_id = 43;
        side.apply(&late);
        let expired = side.expire_sessions();
        assert_eq!(expired.len(), 1);
        assert_eq!(&*expired[0].session_id, "a");
        assert_eq!(side.sessions.len(), 2);
        assert!(side.expire_sessions().is_empty(), "scanned a moment ago");
    }

    #[test]
    fn earlier_purchase_sessions_exclude_the_current_one() {
        let mut engine = ReplayEngine::new(DEFAULT_SESSION_TIMEOUT);
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
        let mut engine = ReplayEngine::new(DEFAULT_SESSION_TIMEOUT);
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
}
