//! Product and category state: popularity counters, recent sales in hourly buckets, and a
//! category price histogram that gives each product its price relative to the category median.

use serde::{Deserialize, Serialize};

use super::counts::Counts;
use super::guard::DeliveryGuard;
use crate::event::{Event, EventType, Millis};

const HOUR: Millis = 3_600_000;
/// How many hours of sales a product keeps in buckets.
pub const SALES_HOURS: usize = 24;
/// Log-spaced price buckets for the category median: bucket `i` holds prices whose
/// `ln(1 + price) * PRICE_BUCKETS_PER_E` rounds down to `i`.
const PRICE_BUCKETS: usize = 96;
const PRICE_BUCKETS_PER_E: f64 = 8.0;

/// One hour of a product's activity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HourBucket {
    /// Hours since the epoch.
    pub hour: i64,
    pub views: u32,
    pub carts: u32,
    pub purchases: u32,
    pub revenue: f64,
}

/// One product's popularity and sales.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProductState {
    pub product_id: u64,
    pub category_id: u64,
    /// The latest price seen.
    pub price: f64,
    pub counts: Counts,
    pub revenue: f64,
    pub last_event_at: Millis,
    /// Non-empty hours of the last [`SALES_HOURS`] hours, oldest first.
    pub hours: Vec<HourBucket>,
    /// Events applied recently, for idempotent redelivery; not a feature.
    #[serde(default)]
    pub guard: DeliveryGuard,
}

/// Totals over a recent window of a product's activity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowTotals {
    pub views: u32,
    pub carts: u32,
    pub purchases: u32,
    pub revenue: f64,
}

impl ProductState {
    /// A product first seen in `event`; apply the event next.
    pub fn new(event: &Event) -> Self {
        ProductState {
            product_id: event.product_id,
            category_id: event.category_id,
            price: event.price,
            counts: Counts::default(),
            revenue: 0.0,
            last_event_at: event.time,
            hours: Vec::new(),
            guard: DeliveryGuard::default(),
        }
    }

    /// Applies one event about this product.
    pub fn apply(&mut self, event: &Event) {
        self.counts.record(event.event_type);
        self.price = event.price;
        self.last_event_at = self.last_event_at.max(event.time);
        if event.event_type == EventType::Purchase {
            self.revenue += event.price;
        }
        let hour = event.time.div_euclid(HOUR);
        if let Some(newest) = self.hours.last().map(|bucket| bucket.hour)
            && hour <= newest - SALES_HOURS as i64
        {
            // Too old to matter for any recent window; the totals above still count it.
            return;
        }
        let index = match self.hours.binary_search_by_key(&hour, |bucket| bucket.hour) {
            Ok(index) => index,
            Err(at) => {
                self.hours.insert(
                    at,
                    HourBucket {
                        hour,
                        ..HourBucket::default()
                    },
                );
                at
            }
        };
        let bucket = &mut self.hours[index];
        match event.event_type {
            EventType::View => bucket.views += 1,
            EventType::Cart => bucket.carts += 1,
            EventType::RemoveFromCart => {}
            EventType::Purchase => {
                bucket.purchases += 1;
                bucket.revenue += event.price;
            }
        }
        let newest = self.hours.last().map_or(hour, |bucket| bucket.hour);
        let stale = self
            .hours
            .partition_point(|bucket| bucket.hour <= newest - SALES_HOURS as i64);
        self.hours.drain(..stale);
    }

    /// Activity in the `hours` hours up to and including the hour of `now`.
    pub fn window(&self, now: Millis, hours: i64) -> WindowTotals {
        let current = now.div_euclid(HOUR);
        self.hours
            .iter()
            .filter(|bucket| bucket.hour > current - hours && bucket.hour <= current)
            .fold(WindowTotals::default(), |mut totals, bucket| {
                totals.views += bucket.views;
                totals.carts += bucket.carts;
                totals.purchases += bucket.purchases;
                totals.revenue += bucket.revenue;
                totals
            })
    }
}

/// The price distribution of a category's products, for its median price.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CategoryState {
    pub category_id: u64,
    pub products: u32,
    pub price_buckets: Vec<u32>,
    /// Events applied recently, for idempotent redelivery; not a feature.
    #[serde(default)]
    pub guard: DeliveryGuard,
}

impl CategoryState {
    /// An empty category.
    pub fn new(category_id: u64) -> Self {
        CategoryState {
            category_id,
            products: 0,
            price_buckets: vec![0; PRICE_BUCKETS],
            guard: DeliveryGuard::default(),
        }
    }

    /// Adds a product's first seen price. Each product counts once, so popular products do not
    /// drag the median.
    pub fn add_product(&mut self, price: f64) {
        self.products += 1;
        self.price_buckets[price_bucket(price)] += 1;
    }

    /// The median product price, to the resolution of the histogram (about 13%).
    pub fn median_price(&self) -> Option<f64> {
        if self.products == 0 {
            return None;
        }
        let middle = self.products.div_ceil(2);
        let mut seen = 0;
        for (index, count) in self.price_buckets.iter().enumerate() {
            seen += count;
            if seen >= middle {
                // Geometric middle of the bucket, back in price units.
                let low = (index as f64 / PRICE_BUCKETS_PER_E).exp() - 1.0;
                let high = ((index + 1) as f64 / PRICE_BUCKETS_PER_E).exp() - 1.0;
                return Some(((low + 1.0) * (high + 1.0)).sqrt() - 1.0);
            }
        }
        None
    }
}

fn price_bucket(price: f64) -> usize {
    let index = ((price.max(0.0)).ln_1p() * PRICE_BUCKETS_PER_E) as usize;
    index.min(PRICE_BUCKETS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(time: Millis, event_type: EventType, price: f64) -> Event {
        Event {
            time,
            event_type,
            product_id: 5,
            category_id: 2,
            category_code: None,
            brand: None,
            price,
            user_id: 1,
            user_session: "s".into(),
            event_id: None,
        }
    }

    #[test]
    fn counts_and_windows() {
        let first = event(0, EventType::View, 10.0);
        let mut product = ProductState::new(&first);
        product.apply(&first);
        product.apply(&event(HOUR * 2, EventType::Cart, 10.0));
        product.apply(&event(HOUR * 2 + 5, EventType::Purchase, 11.0));
        assert_eq!(product.counts.events, 3);
        assert_eq!(product.revenue, 11.0);
        assert_eq!(product.price, 11.0);
        let last_hour = product.window(HOUR * 2 + 10, 1);
        assert_eq!(
            (last_hour.views, last_hour.carts, last_hour.purchases),
            (0, 1, 1)
        );
        let day = product.window(HOUR * 2 + 10, 24);
        assert_eq!((day.views, day.purchases, day.revenue), (1, 1, 11.0));
    }

    #[test]
    fn old_buckets_are_dropped_and_late_events_still_count() {
        let first = event(0, EventType::View, 1.0);
        let mut product = ProductState::new(&first);
        product.apply(&first);
        product.apply(&event(HOUR * 30, EventType::View, 1.0));
        assert_eq!(product.hours.len(), 1);
        product.apply(&event(HOUR, EventType::Purchase, 3.0));
        assert_eq!(product.counts.purchases, 1);
        assert_eq!(product.revenue, 3.0);
        assert_eq!(product.hours.len(), 1);
    }

    #[test]
    fn median_is_within_histogram_resolution() {
        let mut category = CategoryState::new(2);
        assert_eq!(category.median_price(), None);
        for price in [5.0, 10.0, 100.0, 120.0, 1000.0] {
            category.add_product(price);
        }
        let median = category.median_price().unwrap();
        assert!((median - 100.0).abs() / 100.0 < 0.14, "{median}");
    }
}
