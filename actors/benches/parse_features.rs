//! Micro-benchmarks of the domain's hot loops: parsing an event (a REES46 CSV line, a JSON bus
//! message) and applying events to the feature state machines (`ReplayEngine`, the very
//! `UserSide` and `Catalog` that offline training replays and the shard and catalog actors wrap),
//! then reading a feature vector.
//!
//! `cargo bench -p propensity-actors`; short samples, so the suite takes about a minute.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use propensity_actors::event::{CSV_HEADER, CsvEvents, Event, EventType, parse_record};
use propensity_actors::features::{DAY_MILLIS, PurchaseDays};
use propensity_actors::{ReplayEngine, SessionKey};

const SESSION_TIMEOUT: i64 = 30 * 60 * 1000;

/// A deterministic clickstream: 500 shoppers with sessions of views, carts, removals and
/// purchases over 200 products in 20 categories, in event-time order.
fn stream(count: usize) -> Vec<Event> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        // xorshift: the same stream on every run, no dependency.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let start = 1_572_566_400_000; // 2019-11-01, the REES46 data's month
    (0..count)
        .map(|index| {
            let user_id = 500_000_000 + next() % 500;
            let product_id = 1_000_000 + next() % 200;
            let event_type = match next() % 100 {
                0..=79 => EventType::View,
                80..=91 => EventType::Cart,
                92..=95 => EventType::RemoveFromCart,
                _ => EventType::Purchase,
            };
            Event {
                time: start + index as i64 * 250,
                event_type,
                product_id,
                category_id: 2_053_013_555_631_882_655 + product_id % 20,
                category_code: Some("electronics.smartphone".into()),
                brand: Some(format!("brand{}", product_id % 30)),
                price: 10.0 + (product_id % 97) as f64,
                user_id,
                user_session: format!("{:08x}-session-{}", user_id, index / 5_000),
                event_id: None,
            }
        })
        .collect()
}

fn csv_text(events: &[Event]) -> String {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(CSV_HEADER).unwrap();
    for event in events {
        event.write_csv(&mut writer).unwrap();
    }
    String::from_utf8(writer.into_inner().unwrap()).unwrap()
}

fn parsing(c: &mut Criterion) {
    let events = stream(1_000);
    let text = csv_text(&events);
    let line = text.lines().nth(1).unwrap().to_owned();
    let record = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(line.as_bytes())
        .byte_records()
        .next()
        .unwrap()
        .unwrap();
    let json = events[0].to_json();

    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Elements(1));
    group.bench_function("csv_record", |b| {
        b.iter(|| parse_record(black_box(&record)).unwrap())
    });
    group.bench_function("json_event", |b| {
        b.iter(|| Event::from_json(black_box(json.as_bytes())).unwrap())
    });
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("csv_stream_1000_lines", |b| {
        b.iter(|| {
            for event in CsvEvents::new(black_box(text.as_bytes())) {
                black_box(event.unwrap());
            }
        })
    });
    group.finish();
}

fn features(c: &mut Criterion) {
    let events = stream(10_000);
    let mut group = c.benchmark_group("features");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("apply_10000_events", |b| {
        b.iter_batched(
            || ReplayEngine::new(SESSION_TIMEOUT),
            |mut engine| {
                for event in &events {
                    black_box(engine.apply(event));
                }
                engine
            },
            BatchSize::LargeInput,
        )
    });
    let mut engine = ReplayEngine::new(SESSION_TIMEOUT);
    for event in &events {
        engine.apply(event);
    }
    let last = events.last().unwrap();
    let key = SessionKey::of(last);
    group.throughput(Throughput::Elements(1));
    group.bench_function("feature_vector", |b| {
        b.iter(|| engine.features(black_box(key), black_box(last.product_id)))
    });
    // What the live customer value adds to applying a purchase: the user's purchase-day
    // summary (`PurchaseDays::record`, inside `UserState::apply`), 10,000 purchases of 500
    // shoppers spread over 40 days.
    let purchases: Vec<(usize, i64, f64)> = events
        .iter()
        .enumerate()
        .map(|(index, event)| {
            let day = (index as i64 * 40 / events.len() as i64) * DAY_MILLIS;
            (
                (event.user_id % 500) as usize,
                event.time + day,
                event.price,
            )
        })
        .collect();
    group.throughput(Throughput::Elements(purchases.len() as u64));
    group.bench_function("purchase_days_record_10000", |b| {
        b.iter_batched(
            || vec![PurchaseDays::default(); 500],
            |mut shoppers| {
                for &(shopper, time, price) in &purchases {
                    shoppers[shopper].record(black_box(time), black_box(price));
                }
                shoppers
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = parsing, features
}
criterion_main!(benches);
