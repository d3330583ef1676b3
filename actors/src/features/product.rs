//! Product and category state: popularity counters, recent sales in hourly buckets, and a
//! category price histogram that gives each product its price relative to the category median.
//!
//! On the bus, each user partition keeps its own part of every product and category it sees
//! (`source` is the partition): one instance owns a partition at a time, so every stored part has
//! one writer, and a product's features come from the sum of its parts ([`ProductState::merged`],
//! [`CategoryState::merged`]). Every field merges exactly: counters and hourly buckets add up,
//! the latest price is the one of the latest event (ties: the higher price) whatever the order
//! the parts saw their events in. Offline and on the HTTP bus there is one part, source 0.

use serde::{Deserialize, Serialize};

use super::counts::Counts;
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

impl HourBucket {
    fn count(&mut self, event: &Event) {
        match event.event_type {
            EventType::View => self.views += 1,
            EventType::Cart => self.carts += 1,
            EventType::RemoveFromCart => {}
            EventType::Purchase => {
                self.purchases += 1;
                self.revenue += event.price;
            }
        }
    }
}

/// One product's popularity and sales, or the part of them one source saw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProductState {
    pub product_id: u64,
    /// The user partition whose events this part counts; 0 offline and on the HTTP bus.
    #[serde(default)]
    pub source: u16,
    /// The category of the latest event.
    pub category_id: u64,
    /// The price of the latest event; of simultaneous events, the highest.
    pub price: f64,
    pub counts: Counts,
    pub revenue: f64,
    pub last_event_at: Millis,
    /// Non-empty hours of the last [`SALES_HOURS`] hours, oldest first.
    pub hours: Vec<HourBucket>,
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
    /// A product first seen in `event` from `source`; apply the event next.
    pub fn new(event: &Event, source: u16) -> Self {
        ProductState {
            product_id: event.product_id,
            source,
            category_id: event.category_id,
            price: event.price,
            counts: Counts::default(),
            revenue: 0.0,
            last_event_at: event.time,
            hours: Vec::new(),
        }
    }

    /// Applies one event about this product.
    pub fn apply(&mut self, event: &Event) {
        self.counts.record(event.event_type);
        // Order-independent, so that parts merge to what one state would hold.
        if (event.time, event.price) > (self.last_event_at, self.price) {
            self.price = event.price;
            self.category_id = event.category_id;
        }
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
        if let Some(newest) = self.hours.last_mut()
            && newest.hour == hour
        {
            // The current hour, the common case: nothing to insert and nothing goes stale.
            newest.count(event);
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
        self.hours[index].count(event);
        let newest = self.hours.last().map_or(hour, |bucket| bucket.hour);
        let stale = self
            .hours
            .partition_point(|bucket| bucket.hour <= newest - SALES_HOURS as i64);
        self.hours.drain(..stale);
    }

    /// The whole product from its parts (at least one): what one state fed every part's events
    /// would hold, up to the rounding of summed revenue.
    pub fn merged<'a>(parts: impl IntoIterator<Item = &'a ProductState>) -> Option<ProductState> {
        let mut parts = parts.into_iter();
        let first = parts.next()?;
        let mut whole = first.clone();
        for part in parts {
            whole.counts.add(&part.counts);
            whole.revenue += part.revenue;
            if (part.last_event_at, part.price) > (whole.last_event_at, whole.price) {
                whole.price = part.price;
                whole.category_id = part.category_id;
            }
            whole.last_event_at = whole.last_event_at.max(part.last_event_at);
            for bucket in &part.hours {
                match whole
                    .hours
                    .binary_search_by_key(&bucket.hour, |mine| mine.hour)
                {
                    Ok(index) => {
                        let mine = &mut whole.hours[index];
                        mine.views += bucket.views;
                        mine.carts += bucket.carts;
                        mine.purchases += bucket.purchases;
                        mine.revenue += bucket.revenue;
                    }
                    Err(at) => whole.hours.insert(at, *bucket),
                }
            }
        }
        if let Some(newest) = whole.hours.last().map(|bucket| bucket.hour) {
            let stale = whole
                .hours
                .partition_point(|bucket| bucket.hour <= newest - SALES_HOURS as i64);
            whole.hours.drain(..stale);
        }
        Some(whole)
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

/// The prices shoppers view in a category (each view counts once), for its median price; or the
/// part of them one source saw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CategoryState {
    pub category_id: u64,
    /// The user partition whose events this part counts; 0 offline and on the HTTP bus.
    #[serde(default)]
    pub source: u16,
    pub views: u32,
    pub price_buckets: Vec<u32>,
}

impl CategoryState {
    /// An empty category, or an empty part of one.
    pub fn new(category_id: u64, source: u16) -> Self {
        CategoryState {
            category_id,
            source,
            views: 0,
            price_buckets: vec![0; PRICE_BUCKETS],
        }
    }

    /// Counts the price of a view.
    pub fn add_view(&mut self, price: f64) {
        self.views += 1;
        self.price_buckets[price_bucket(price)] += 1;
    }

    /// The whole category from its parts (at least one).
    pub fn merged<'a>(parts: impl IntoIterator<Item = &'a CategoryState>) -> Option<CategoryState> {
        let mut parts = parts.into_iter();
        let first = parts.next()?;
        let mut whole = first.clone();
        for part in parts {
            whole.views += part.views;
            for (mine, theirs) in whole.price_buckets.iter_mut().zip(&part.price_buckets) {
                *mine += theirs;
            }
        }
        Some(whole)
    }

    /// The median viewed price, to the resolution of the histogram (about 13%).
    pub fn median_price(&self) -> Option<f64> {
        median(self.views, &self.price_buckets)
    }
}

/// Weighted prices in the category's log-spaced buckets, for a median: what the synthetic
/// generator uses to give each product a price relative to its category as the feature engine
/// will see it, weighting each product by how often it is viewed.
#[derive(Clone, Debug)]
pub struct PriceHistogram {
    total: f64,
    buckets: Vec<f64>,
}

impl Default for PriceHistogram {
    fn default() -> Self {
        PriceHistogram {
            total: 0.0,
            buckets: vec![0.0; PRICE_BUCKETS],
        }
    }
}

impl PriceHistogram {
    /// Adds `price` with `weight`.
    pub fn add(&mut self, price: f64, weight: f64) {
        self.total += weight;
        self.buckets[price_bucket(price)] += weight;
    }

    /// The weighted median price, to the histogram's resolution.
    pub fn median(&self) -> Option<f64> {
        if self.total <= 0.0 {
            return None;
        }
        let middle = self.total / 2.0;
        let mut seen = 0.0;
        for (index, &weight) in self.buckets.iter().enumerate() {
            seen += weight;
            if seen >= middle && weight > 0.0 {
                return Some(bucket_middle(index));
            }
        }
        None
    }
}

/// The median of `count` views counted in `buckets`: the middle of the first non-empty bucket
/// at which half the views are seen. Counts are summed as integers, which is exact.
fn median(count: u32, buckets: &[u32]) -> Option<f64> {
    if count == 0 {
        return None;
    }
    let total = u64::from(count);
    let mut seen = 0u64;
    for (index, &views) in buckets.iter().enumerate() {
        seen += u64::from(views);
        if 2 * seen >= total && views > 0 {
            return Some(bucket_middle(index));
        }
    }
    None
}

/// The geometric middle of bucket `index`, back in price units: computed once per bucket, as
/// every median read used to compute it (two `exp` and a `sqrt`).
fn bucket_middle(index: usize) -> f64 {
    static MIDDLES: std::sync::LazyLock<[f64; PRICE_BUCKETS]> = std::sync::LazyLock::new(|| {
        std::array::from_fn(|index| {
            let low = (index as f64 / PRICE_BUCKETS_PER_E).exp() - 1.0;
            let high = ((index + 1) as f64 / PRICE_BUCKETS_PER_E).exp() - 1.0;
            ((low + 1.0) * (high + 1.0)).sqrt() - 1.0
        })
    });
    MIDDLES[index]
}

fn price_bucket(price: f64) -> usize {
    let index = ((price.max(0.0)).ln_1p() * PRICE_BUCKETS_PER_E) as usize;
    index.min(PRICE_BUCKETS - 1)
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

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
        let mut product = ProductState::new(&first, 0);
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
        let mut product = ProductState::new(&first, 0);
        product.apply(&first);
        product.apply(&event(HOUR * 30, EventType::View, 1.0));
        assert_eq!(product.hours.len(), 1);
        product.apply(&event(HOUR, EventType::Purchase, 3.0));
        assert_eq!(product.counts.purchases, 1);
        assert_eq!(product.revenue, 3.0);
        assert_eq!(product.hours.len(), 1);
    }

    #[test]
    fn median_reads_agree_with_the_formula_they_replace() {
        // What every median read computed before the bucket middles were tabled and the views
        // summed as integers: the same value, bit for bit, on any histogram.
        fn by_formula(count: u32, buckets: &[u32]) -> Option<f64> {
            let middle = f64::from(count) / 2.0;
            let mut seen = 0.0;
            for (index, &views) in buckets.iter().enumerate() {
                seen += f64::from(views);
                if count > 0 && seen >= middle && views > 0 {
                    let low = (index as f64 / PRICE_BUCKETS_PER_E).exp() - 1.0;
                    let high = ((index + 1) as f64 / PRICE_BUCKETS_PER_E).exp() - 1.0;
                    return Some(((low + 1.0) * (high + 1.0)).sqrt() - 1.0);
                }
            }
            None
        }
        let mut rng = ChaCha8Rng::seed_from_u64(0x2545_f491_4f6c_dd1d);
        let mut next = move |bound: u64| rng.gen_range(0..bound);
        for _ in 0..2_000 {
            let mut category = CategoryState::new(1, 0);
            for _ in 0..next(40) {
                category.add_view(next(5_000) as f64 / 7.0);
            }
            assert_eq!(
                category.median_price().map(f64::to_bits),
                by_formula(category.views, &category.price_buckets).map(f64::to_bits)
            );
        }
    }

    #[test]
    fn median_is_within_histogram_resolution() {
        let mut category = CategoryState::new(2, 0);
        assert_eq!(category.median_price(), None);
        for price in [5.0, 10.0, 100.0, 120.0, 1000.0] {
            category.add_view(price);
        }
        let median = category.median_price().unwrap();
        assert!((median - 100.0).abs() / 100.0 < 0.14, "{median}");
    }

    #[test]
    fn parts_merge_to_what_one_state_holds_whatever_the_interleaving() {
        // Seeded random events: users spread over three sources, prices and times
        // that collide, events out of order and far apart.
        let mut rng = ChaCha8Rng::seed_from_u64(0x9e37_79b9_7f4a_7c15);
        let mut next = move |bound: u64| rng.gen_range(0..bound);
        let types = [
            EventType::View,
            EventType::View,
            EventType::Cart,
            EventType::RemoveFromCart,
            EventType::Purchase,
        ];
        let events: Vec<Event> = (0..2_000)
            .map(|_| Event {
                user_id: next(30),
                category_id: 2 + next(2),
                ..event(
                    next(60) as Millis * HOUR + next(3) as Millis,
                    types[next(5) as usize],
                    [9.99, 10.0, 12.5][next(3) as usize],
                )
            })
            .collect();
        let mut whole = ProductState::new(&events[0], 0);
        let mut whole_category = CategoryState::new(2, 0);
        let mut parts: Vec<ProductState> = (0..3)
            .map(|source| ProductState::new(&events[0], source))
            .collect();
        let mut category_parts: Vec<CategoryState> =
            (0..3).map(|source| CategoryState::new(2, source)).collect();
        for event in &events {
            let source = (event.user_id % 3) as usize;
            whole.apply(event);
            parts[source].apply(event);
            if event.event_type == EventType::View {
                whole_category.add_view(event.price);
                category_parts[source].add_view(event.price);
            }
        }
        let merged = ProductState::merged(&parts).unwrap();
        assert!((merged.revenue - whole.revenue).abs() < 1e-6);
        for (mine, theirs) in merged.hours.iter().zip(&whole.hours) {
            assert!((mine.revenue - theirs.revenue).abs() < 1e-6);
        }
        let rounded = |product: &ProductState| ProductState {
            revenue: 0.0,
            hours: product
                .hours
                .iter()
                .map(|bucket| HourBucket {
                    revenue: 0.0,
                    ..*bucket
                })
                .collect(),
            source: 0,
            ..product.clone()
        };
        assert_eq!(rounded(&merged), rounded(&whole));
        assert!(merged.hours.len() > 1 && merged.counts.purchases > 0);
        let category = CategoryState::merged(&category_parts).unwrap();
        assert_eq!(
            (category.views, &category.price_buckets),
            (whole_category.views, &whole_category.price_buckets)
        );
        assert_eq!(category.median_price(), whole_category.median_price());
    }
}
