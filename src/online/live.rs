//! The live feed behind `GET /v1/live` and the console's overview: the carts and purchases this
//! instance applied in the last minutes of wall-clock time, and the shoppers behind them.
//!
//! Wall-clock time, not event time, decides what is recent: a shop's dashboard shows what just
//! happened, and a replay of old history (the demo) shows its sales as they stream in. The feed
//! holds only what this instance applied (on the bus, the users of its partitions), after
//! duplicates are dropped, and it starts empty at every start: it is a view, not a record (the
//! store's outcome tallies are the record).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use propensity_actors::delivery::{BatchPart, Delivery};
use propensity_actors::event::{EventType, Millis};

/// How long a cart or a purchase counts as recent.
pub const WINDOW: Duration = Duration::from_secs(300);
/// At most this many carts and purchases are kept; the oldest go first beyond it.
const MAX_ENTRIES: usize = 200_000;
/// How many shoppers the feed remembers.
const RECENT_SESSIONS: usize = 10;

/// One cart or purchase as applied.
#[derive(Clone, Copy)]
struct Entry {
    applied_at: Instant,
    product_id: u64,
    purchase: bool,
    price: f64,
    time: Millis,
}

/// A shopper who carted or bought recently.
#[derive(Clone, Debug, PartialEq)]
pub struct RecentSession {
    pub user_id: u64,
    pub user_session: String,
    pub event_type: EventType,
    pub time: Millis,
}

/// A product's purchases in the window.
#[derive(Clone, Debug, PartialEq)]
pub struct ProductSales {
    pub product_id: u64,
    pub purchases: u32,
    pub revenue: f64,
    pub last_sale_at: Millis,
}

/// A product's carts and purchases in the window.
#[derive(Clone, Debug, PartialEq)]
pub struct ProductCarts {
    pub product_id: u64,
    pub carts: u32,
    pub purchases: u32,
}

#[derive(Default)]
struct Recent {
    entries: VecDeque<Entry>,
    /// Newest last, one entry per session.
    sessions: VecDeque<RecentSession>,
}

/// Recent carts and purchases, shared by the ingest side (through the metrics observer) and the
/// HTTP handlers.
pub struct LiveFeed {
    recent: Mutex<Recent>,
    window: Duration,
}

impl Default for LiveFeed {
    fn default() -> Self {
        LiveFeed::new(WINDOW)
    }
}

impl LiveFeed {
    /// An empty feed keeping `window` of wall-clock time.
    pub fn new(window: Duration) -> Self {
        LiveFeed {
            recent: Mutex::new(Recent::default()),
            window,
        }
    }

    /// How long an entry counts as recent.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Records the carts and purchases of a batch of applied events. Views, the bulk of the
    /// traffic, cost a type check each.
    pub fn record(&self, accepted: &BatchPart) {
        self.record_at(accepted, Instant::now());
    }

    fn record_at(&self, accepted: &BatchPart, now: Instant) {
        let mut entries = Vec::new();
        let mut last: Option<&Delivery> = None;
        for delivery in accepted.iter() {
            let event = &delivery.event;
            let purchase = match event.event_type {
                EventType::Purchase => true,
                EventType::Cart => false,
                _ => continue,
            };
            entries.push(Entry {
                applied_at: now,
                product_id: event.product_id,
                purchase,
                price: event.price,
                time: event.time,
            });
            last = Some(delivery);
        }
        let Some(last) = last else {
            return;
        };
        let mut recent = self
            .recent
            .lock()
            .expect("the live feed's lock is never poisoned");
        recent.entries.extend(entries);
        let excess = recent.entries.len().saturating_sub(MAX_ENTRIES);
        recent.entries.drain(..excess);
        self.prune(&mut recent, now);
        // The batch's latest shopper is enough: the feed shows a handful, refreshed every second.
        let event = &last.event;
        recent.sessions.retain(|session| {
            !(session.user_id == event.user_id && *session.user_session == *event.user_session)
        });
        recent.sessions.push_back(RecentSession {
            user_id: event.user_id,
            user_session: event.user_session.to_string(),
            event_type: event.event_type,
            time: event.time,
        });
        if recent.sessions.len() > RECENT_SESSIONS {
            recent.sessions.pop_front();
        }
    }

    fn prune(&self, recent: &mut Recent, now: Instant) {
        while recent
            .entries
            .front()
            .is_some_and(|entry| now.saturating_duration_since(entry.applied_at) > self.window)
        {
            recent.entries.pop_front();
        }
    }

    /// Purchases in the window by product, most sold first (ties: latest sale first), at most
    /// `limit`.
    pub fn sales(&self, limit: usize) -> Vec<ProductSales> {
        self.sales_at(limit, Instant::now())
    }

    fn sales_at(&self, limit: usize, now: Instant) -> Vec<ProductSales> {
        let mut recent = self
            .recent
            .lock()
            .expect("the live feed's lock is never poisoned");
        self.prune(&mut recent, now);
        let mut by_product: HashMap<u64, ProductSales> = HashMap::new();
        for entry in recent.entries.iter().filter(|entry| entry.purchase) {
            let sales = by_product.entry(entry.product_id).or_insert(ProductSales {
                product_id: entry.product_id,
                purchases: 0,
                revenue: 0.0,
                last_sale_at: entry.time,
            });
            sales.purchases += 1;
            sales.revenue += entry.price;
            sales.last_sale_at = sales.last_sale_at.max(entry.time);
        }
        let mut sales: Vec<ProductSales> = by_product.into_values().collect();
        sales.sort_by(|a, b| {
            b.purchases
                .cmp(&a.purchases)
                .then(b.last_sale_at.cmp(&a.last_sale_at))
                .then(a.product_id.cmp(&b.product_id))
        });
        sales.truncate(limit);
        sales
    }

    /// The products carted most in the window, at most `limit`.
    pub fn most_carted(&self, limit: usize) -> Vec<ProductCarts> {
        let mut recent = self
            .recent
            .lock()
            .expect("the live feed's lock is never poisoned");
        self.prune(&mut recent, Instant::now());
        let mut by_product: HashMap<u64, ProductCarts> = HashMap::new();
        for entry in &recent.entries {
            let product = by_product.entry(entry.product_id).or_insert(ProductCarts {
                product_id: entry.product_id,
                carts: 0,
                purchases: 0,
            });
            if entry.purchase {
                product.purchases += 1;
            } else {
                product.carts += 1;
            }
        }
        let mut carted: Vec<ProductCarts> = by_product
            .into_values()
            .filter(|product| product.carts > 0)
            .collect();
        carted.sort_by(|a, b| b.carts.cmp(&a.carts).then(a.product_id.cmp(&b.product_id)));
        carted.truncate(limit);
        carted
    }

    /// The shoppers who carted or bought most recently, newest first.
    pub fn recent_sessions(&self) -> Vec<RecentSession> {
        let recent = self
            .recent
            .lock()
            .expect("the live feed's lock is never poisoned");
        recent.sessions.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use propensity_actors::delivery::Delivery;
    use propensity_actors::event::Event;

    fn event(
        user_id: u64,
        event_type: EventType,
        product_id: u64,
        price: f64,
        time: Millis,
    ) -> Event {
        Event {
            time,
            event_type,
            product_id,
            category_id: 7,
            category_code: None,
            brand: None,
            price,
            user_id,
            user_session: format!("s{user_id}"),
            event_id: None,
        }
    }

    fn batch(events: Vec<Event>) -> BatchPart {
        BatchPart::whole(events.into_iter().map(Delivery::fresh).collect())
    }

    #[test]
    fn sales_count_purchases_by_product_and_ignore_views() {
        let feed = LiveFeed::default();
        feed.record(&batch(vec![
            event(1, EventType::View, 10, 5.0, 1_000),
            event(1, EventType::Cart, 10, 5.0, 2_000),
            event(1, EventType::Purchase, 10, 5.0, 3_000),
            event(2, EventType::Purchase, 10, 6.0, 4_000),
            event(2, EventType::Purchase, 11, 1.5, 5_000),
            event(3, EventType::View, 12, 1.0, 6_000),
        ]));
        assert_eq!(
            feed.sales(10),
            vec![
                ProductSales {
                    product_id: 10,
                    purchases: 2,
                    revenue: 11.0,
                    last_sale_at: 4_000
                },
                ProductSales {
                    product_id: 11,
                    purchases: 1,
                    revenue: 1.5,
                    last_sale_at: 5_000
                },
            ]
        );
        assert_eq!(feed.sales(1).len(), 1);
        assert_eq!(
            feed.most_carted(10),
            vec![ProductCarts {
                product_id: 10,
                carts: 1,
                purchases: 2
            }]
        );
        // The latest cart or purchase of the batch, not its latest view.
        let sessions = feed.recent_sessions();
        assert_eq!(sessions.len(), 1);
        assert_eq!(
            (sessions[0].user_id, sessions[0].event_type),
            (2, EventType::Purchase)
        );
    }

    #[test]
    fn entries_leave_the_window_and_shoppers_stay() {
        let feed = LiveFeed::new(Duration::from_secs(60));
        let start = Instant::now();
        feed.record_at(
            &batch(vec![event(1, EventType::Purchase, 10, 5.0, 1_000)]),
            start,
        );
        feed.record_at(
            &batch(vec![event(2, EventType::Purchase, 11, 5.0, 2_000)]),
            start + Duration::from_secs(30),
        );
        assert_eq!(feed.sales_at(10, start + Duration::from_secs(60)).len(), 2);
        let later = feed.sales_at(10, start + Duration::from_secs(61));
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].product_id, 11);
        assert!(
            feed.sales_at(10, start + Duration::from_secs(91))
                .is_empty()
        );
        let users: Vec<u64> = feed
            .recent_sessions()
            .iter()
            .map(|session| session.user_id)
            .collect();
        assert_eq!(users, vec![2, 1]);
    }
}
