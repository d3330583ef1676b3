//! `propensity generate`: a synthetic REES46 clickstream drawn from a documented behavioural
//! model, with the model's own purchase probability ("truth") for every scoring point, so that a
//! trained model can be compared with the best one possible.
//!
//! The files follow the model below: `population.rs` (the catalogue and the users), `session.rs`
//! (session arrivals, plans, the scheduler and the gaps between events), `funnel.rs` (one
//! product's decisions and their purchase probabilities), `output.rs` (the events CSV and the
//! truth file), with `clock.rs` (time units, the diurnal profile) and `random.rs` (the draws).
//! `repeat.rs` is the other process, `--process repeat-buyers`: purchase occasions from BG/NBD
//! and spend from Gamma-Gamma with known parameters, the customer-value models' truth.
//! This file holds the entry points and the tests of whole runs.
//!
//! # The behavioural model
//!
//! docs/synthetic-model.md says the same at more length, with the reasons and measurements.
//!
//! **Catalogue.** About 3,000 products in 80 categories. A category has a 19-digit id, a dotted
//! category code (a fifth have none, as in the real files), a brand pool and a median price drawn
//! log-uniformly between 4 and 900; a product's price is that times `exp(0.55·N(0,1))`, in whole
//! cents, fixed for the run. Category popularity is Zipf (exponent 1.0), and so is product
//! popularity within a category (exponent 1.1). Each product has a latent appeal
//! `a ~ N(0, 0.2²)`, which its purchase counters reveal over time, shifted by one constant per
//! catalogue so that the popularity-weighted mean of `a − 2.5·ln(price / median)` is zero (a few
//! popular products take much of the traffic; without this, abandonment would swing by several
//! points from seed to seed). Category medians use the feature engine's price buckets
//! ([`PriceHistogram`](propensity_actors::features::product::PriceHistogram)), each product
//! weighted by its share of the category's views, so the model's price ratio is the
//! `price_to_category_median` feature.
//!
//! **Users.** Each user has a latent propensity `u ~ N(0, 0.25²)`, a price sensitivity
//! `s = 2.5·exp(0.15·N(0,1))`, a browsing breadth `β ~ U(0.55, 0.85)`, three preferred categories
//! (drawn by popularity) and a session rate `λ = 0.8·exp(0.8·N(0,1))` per day. Sessions arrive
//! as a Poisson process of rate `λ·d(t)`, with the diurnal profile
//! `d(t) = 1 + 0.7·cos(2π(hour − 19)/24)` (thinning, times in whole seconds); an arrival within
//! 30 minutes of the end of the user's previous session is dropped, so a user's sessions never
//! overlap.
//!
//! **Sessions.** A session plans `1 + Geometric(β)` products (at most 12) from one category
//! (70%) or two, each a preferred one (85%) or any by popularity. A product is opened once per
//! session at most: with probability 0.25 (when there is one) a product the user viewed in an
//! earlier session and did not buy, otherwise a popularity draw from the session's categories.
//! Every opened product runs its own funnel (below). At each step a scheduler picks what happens
//! next: open the next planned product (weight 0.8), advance a product being browsed (weight 1),
//! or advance a carted or removed one (weight 0.2 while anything is still browsed or planned,
//! else 1). So views of several products interleave (A, B, A, C, B) and carts settle at the end,
//! like a checkout. The session ends when no product is left in a funnel and none is planned.
//! Gaps between events are log-normal (medians: view 35 s, cart 25 s, remove 20 s, purchase 60 s;
//! σ = 1), clamped to 1 s .. 25 min: a session is never split by the 30-minute timeout and its
//! events have strictly increasing times.
//!
//! **The funnel.** When product `p` is opened in a session, its purchase logit is fixed from what
//! is known then (all of it visible in the feature vector, except the latent `u`, `a` and the
//! spread of `s`):
//!
//! ```text
//! z = u + a − s·ln(price / category median price)
//!       + 0.6·h                                   h = min(purchases / carts, 1) − 0.35 over the
//!                                                   user's earlier sessions, 0 if never carted
//!       + 0.35·ln(1 + views of p by the user in earlier sessions)
//!       − 2·[the user bought p before]
//! ```
//!
//! Then each decision is drawn when it happens, with probabilities that depend only on `z` and
//! the product's own counters in this session (`v` views, `k` removes):
//!
//! - *Browsing*, after its `v`-th view: view it again with `w(v) = 0.5·0.7^(v−1)` (0 from
//!   `v = 12`); otherwise add it to the cart with `0.95·g(v)`, buy it without a cart event with
//!   `0.012·g(v)`, or lose interest; `g(v) = σ(z − 4 + min(v − 1, 3))`.
//! - *In the cart*, with `k` removes so far: view it again with 0.45 (stays in the cart), remove
//!   it with `r(k) = 0.2·0.5^k` (0 from `k = 3`), otherwise settle: buy with
//!   `b(k) = σ(z − 2.3 − 0.4·k)` or abandon.
//! - *Removed*, after the `k`-th remove: add it again with `c(k) = 0.35·0.5^(k−1)`, otherwise
//!   lose interest.
//!
//! A bought, abandoned or lost product has no more events in the session.
//!
//! **Truth.** A product's future depends only on its own stage, counters and `z`, never on the
//! scheduler or on other products, so the probability that it is bought later in the session is
//! an absorption probability with a closed form, computed backwards once per opened product:
//!
//! ```text
//! P_cart(k)    = [ r(k)·c(k+1)·P_cart(k+1) + (1 − 0.45 − r(k))·b(k) ] / (1 − 0.45),  P_cart(3) = b(3)
//! P_removed(k) = c(k)·P_cart(k)
//! P_browse(v)  = w(v)·P_browse(v+1) + (1 − w(v))·g(v)·(0.95·P_cart(0) + 0.012),    P_browse(12) from w = 0
//! ```
//!
//! A view while browsing scores `P_browse(v)`; a cart event, or a view while in the cart,
//! `P_cart(k)`; a remove `P_removed(k)`. These are exact given everything drawn so far: each
//! label is a draw with exactly that probability.
//!
//! **Sizes.** A user makes about 1.03 sessions a day of about 6.9 events, so
//! [`EVENTS_PER_USER_DAY`] ≈ 7.1; a quarter of sessions add to the cart and about 70% of those end
//! without a purchase, at any run length (the history term is centred for that reason). Output is
//! sorted and written in one-hour chunks of event time, so memory holds the users, the catalogue
//! and about an hour of events.

mod clock;
mod funnel;
mod output;
mod population;
mod random;
mod repeat;
mod session;

use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use chrono::{DateTime, TimeZone, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use propensity_actors::event::Millis;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use self::clock::{DAY, HOUR, SECOND};
use self::output::Output;
use self::population::{Catalogue, MAX_USERS, User};
use self::repeat::RepeatBuyer;
use self::session::Generator;
use crate::offline::value::synthetic::CustomerDraws;

pub use self::output::TRUTH_HEADER;
pub use self::repeat::{REPEAT_PURCHASES, SPEND};
pub use self::session::GenerateSummary;

/// Which behavioural process the shoppers follow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Process {
    /// Browsing sessions whose products run the purchase funnel, with an exact truth for every
    /// scoring point (the propensity model's oracle).
    #[default]
    Funnel,
    /// Purchase occasions from BG/NBD and spend from Gamma-Gamma with known parameters (the
    /// customer-value models' truth); one view, cart and purchase per occasion, no truth file.
    RepeatBuyers,
}

/// Events per user per simulated day, measured (7.0 to 7.4 over runs of 1,000 to 20,000 users
/// and 3 to 30 days), for sizing runs: `--users 20000 --days 14` writes about 2.0 million events.
pub const EVENTS_PER_USER_DAY: f64 = 7.1;

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    /// Shoppers simulated, all active for the whole span.
    pub users: u64,
    /// Days of event time.
    pub days: u32,
    /// Seeds every random draw: the same options give the same bytes.
    pub seed: u64,
    /// When the simulated span starts.
    pub start: DateTime<Utc>,
    /// The shoppers' behaviour.
    pub process: Process,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            users: 1_000,
            days: 7,
            seed: 1,
            start: Utc
                .with_ymd_and_hms(2019, 10, 1, 0, 0, 0)
                .single()
                .expect("a valid date"),
            process: Process::Funnel,
        }
    }
}

/// Writes REES46 CSV (header + rows, sorted by event_time) to `out`, and when `truth` is given, one
/// CSV row per scoring point: `event_identity,event_time,user_id,user_session,product_id,
/// event_type,probability`, where `event_identity` is `format!("{:016x}", event.identity())` and
/// `probability` is the generator's own probability that this user purchases this product later
/// in this session, given everything the generator knows at that point except its own future
/// random draws. Truth rows follow the order of the events. `progress` is incremented by the
/// events written. Pass `None::<std::io::Sink>` for no truth.
pub fn generate<W: Write, T: Write>(
    options: &GenerateOptions,
    out: W,
    truth: Option<T>,
    progress: &ProgressBar,
) -> Result<GenerateSummary> {
    ensure!(
        options.users <= MAX_USERS,
        "at most {MAX_USERS} users fit the REES46 user id range, {} asked",
        options.users
    );
    ensure!(
        options.process == Process::Funnel || truth.is_none(),
        "the repeat-buyer process has no truth file: every occasion is bought (drop --truth)"
    );
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let catalogue = Catalogue::new(&mut rng);
    let start = options.start.timestamp_millis().div_euclid(SECOND) * SECOND;
    let end = start + Millis::from(options.days) * DAY;
    let users: Vec<User> = (0..options.users)
        .map(|index| User::new(index, options.users, start, &catalogue, &mut rng))
        .collect();
    let buyers = match options.process {
        Process::Funnel => Vec::new(),
        Process::RepeatBuyers => {
            let draws = CustomerDraws::new(REPEAT_PURCHASES);
            (0..users.len())
                .map(|_| RepeatBuyer::new(start, end, &draws, &mut rng))
                .collect()
        }
    };
    let mut output = Output::new(out, truth)?;
    let mut generator = Generator {
        rng,
        catalogue,
        users,
        pending: Vec::new(),
        next_sequence: 0,
        summary: GenerateSummary::default(),
        interests: Vec::new(),
        buyers,
    };
    let mut chunk_start = start;
    while chunk_start < end {
        let chunk_end = (chunk_start + CHUNK).min(end);
        generator.simulate_until(chunk_end);
        let written = output.write_ready(&mut generator, Some(chunk_end))?;
        progress.inc(written);
        chunk_start = chunk_end;
    }
    // Sessions that started before the end may run past it; they are written whole.
    let written = output.write_ready(&mut generator, None)?;
    progress.inc(written);
    output.finish()?;
    let mut summary = generator.summary;
    summary.events = output.events;
    summary.scoring_points = output.scoring_points;
    summary.users = generator
        .users
        .iter()
        .filter(|user| user.sessions > 0)
        .count() as u64;
    summary.products = output.products_seen.iter().filter(|&&seen| seen).count() as u64;
    Ok(summary)
}

/// Generates the funnel process into files, with a progress bar on stderr when `show_progress`
/// is set: what `demo`, the benchmarks and the tests call.
pub fn generate_files<P: AsRef<Path>, Q: AsRef<Path>>(
    users: u64,
    days: u32,
    seed: u64,
    out: P,
    truth: Option<Q>,
    show_progress: bool,
) -> Result<GenerateSummary> {
    let options = GenerateOptions {
        users,
        days,
        seed,
        ..GenerateOptions::default()
    };
    write_files(&options, out, truth, show_progress)
}

/// Generates into files, with a progress bar on stderr when `show_progress` is set: what the
/// `generate` command calls.
pub fn write_files<P: AsRef<Path>, Q: AsRef<Path>>(
    options: &GenerateOptions,
    out: P,
    truth: Option<Q>,
    show_progress: bool,
) -> Result<GenerateSummary> {
    let out = out.as_ref();
    let (users, days) = (options.users, options.days);
    let events =
        File::create(out).with_context(|| format!("failed to create {}", out.display()))?;
    let truth_file = match truth.as_ref().map(AsRef::as_ref) {
        Some(path) => Some(
            File::create(path).with_context(|| format!("failed to create {}", path.display()))?,
        ),
        None => None,
    };
    let progress = if show_progress {
        let expected = match options.process {
            Process::Funnel => (users as f64 * f64::from(days) * EVENTS_PER_USER_DAY) as u64,
            Process::RepeatBuyers => repeat::expected_events(users, days),
        };
        let bar = ProgressBar::new(expected);
        bar.set_style(
            ProgressStyle::with_template("{msg:>10} [{elapsed_precise}] {wide_bar} {human_pos}/~{human_len} events ({per_sec})")
                .expect("a valid template"),
        );
        bar.set_message("generate");
        bar
    } else {
        ProgressBar::hidden()
    };
    let summary = generate(options, events, truth_file, &progress)
        .with_context(|| format!("failed to generate {}", out.display()))?;
    progress.finish_and_clear();
    Ok(summary)
}

/// Event time covered by one sorted, written chunk.
const CHUNK: Millis = HOUR;

#[cfg(test)]
mod tests {
    use super::clock::MINUTE;
    use super::*;
    use propensity_actors::ReplayEngine;
    use propensity_actors::event::{CSV_HEADER, CsvEvents, Event, EventType};
    use propensity_actors::replay::DEFAULT_SESSION_TIMEOUT;
    use std::collections::{HashMap, HashSet};

    struct Run {
        events: Vec<u8>,
        truth: Vec<u8>,
        summary: GenerateSummary,
    }

    fn run(users: u64, days: u32, seed: u64) -> Run {
        let options = GenerateOptions {
            users,
            days,
            seed,
            ..GenerateOptions::default()
        };
        let mut events = Vec::new();
        let mut truth = Vec::new();
        let summary = generate(
            &options,
            &mut events,
            Some(&mut truth),
            &ProgressBar::hidden(),
        )
        .unwrap();
        Run {
            events,
            truth,
            summary,
        }
    }

    fn parse(bytes: &[u8]) -> Vec<Event> {
        CsvEvents::new(bytes).map(|event| event.unwrap()).collect()
    }

    struct TruthRow {
        identity: u64,
        user_id: u64,
        session: String,
        product_id: u64,
        event_type: String,
        probability: f64,
    }

    fn parse_truth(bytes: &[u8]) -> Vec<TruthRow> {
        let text = std::str::from_utf8(bytes).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(TRUTH_HEADER));
        lines
            .map(|line| {
                let fields: Vec<&str> = line.split(',').collect();
                assert_eq!(fields.len(), 7, "{line}");
                TruthRow {
                    identity: u64::from_str_radix(fields[0], 16).unwrap(),
                    user_id: fields[2].parse().unwrap(),
                    session: fields[3].to_owned(),
                    product_id: fields[4].parse().unwrap(),
                    event_type: fields[5].to_owned(),
                    probability: fields[6].parse().unwrap(),
                }
            })
            .collect()
    }

    /// Whether the same user bought the product later in the session, for every scoring point,
    /// in output order.
    fn labels(events: &[Event]) -> Vec<bool> {
        let mut last_purchase: HashMap<(&str, u64), Millis> = HashMap::new();
        for event in events
            .iter()
            .filter(|event| event.event_type == EventType::Purchase)
        {
            let time = last_purchase
                .entry((event.user_session.as_str(), event.product_id))
                .or_insert(event.time);
            *time = (*time).max(event.time);
        }
        events
            .iter()
            .filter(|event| event.event_type.is_scoring_point())
            .map(|event| {
                last_purchase
                    .get(&(event.user_session.as_str(), event.product_id))
                    .is_some_and(|&time| time > event.time)
            })
            .collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_bytes() {
        let first = run(150, 2, 7);
        let second = run(150, 2, 7);
        assert!(first.summary.events > 1_000);
        assert_eq!(first.events, second.events);
        assert_eq!(first.truth, second.truth);
        assert_eq!(first.summary, second.summary);
        let other = run(150, 2, 8);
        assert_ne!(first.events, other.events);
        assert_ne!(first.truth, other.truth);
    }

    #[test]
    fn output_parses_sorted_and_matches_the_summary() {
        let run = run(300, 3, 11);
        let events = parse(&run.events);
        assert_eq!(events.len() as u64, run.summary.events);
        assert!(
            events.windows(2).all(|pair| pair[0].time <= pair[1].time),
            "not sorted by time"
        );
        let count = |event_type| {
            events
                .iter()
                .filter(|event| event.event_type == event_type)
                .count() as u64
        };
        assert_eq!(count(EventType::Purchase), run.summary.purchases);
        assert_eq!(
            run.summary.scoring_points,
            run.summary.events - run.summary.purchases
        );
        let sessions: HashSet<&str> = events
            .iter()
            .map(|event| event.user_session.as_str())
            .collect();
        assert_eq!(sessions.len() as u64, run.summary.sessions);
        let users: HashSet<u64> = events.iter().map(|event| event.user_id).collect();
        assert_eq!(users.len() as u64, run.summary.users);
        let products: HashSet<u64> = events.iter().map(|event| event.product_id).collect();
        assert_eq!(products.len() as u64, run.summary.products);
        for event in &events {
            assert!(
                (1_000_000..100_000_000).contains(&event.product_id),
                "{}",
                event.product_id
            );
            assert_eq!(event.category_id.to_string().len(), 19);
            assert!(
                (500_000_000..600_000_000).contains(&event.user_id),
                "{}",
                event.user_id
            );
            assert_eq!(event.user_session.len(), 36);
            assert_eq!(event.user_session.as_bytes()[14], b'4');
            assert!(event.price > 0.0);
            assert_eq!(
                format!("{:.2}", event.price).parse::<f64>().unwrap(),
                event.price
            );
        }
        assert!(events.iter().any(|event| event.category_code.is_none()));
        assert!(events.iter().any(|event| event.brand.is_none()));
        assert!(
            events
                .iter()
                .any(|event| event.category_code.as_deref() == Some("electronics.smartphone"))
        );
        // A product keeps one category and one price.
        let mut products: HashMap<u64, (u64, f64)> = HashMap::new();
        for event in &events {
            let known = products
                .entry(event.product_id)
                .or_insert((event.category_id, event.price));
            assert_eq!(*known, (event.category_id, event.price));
        }
    }

    #[test]
    fn sessions_stay_whole_and_users_return() {
        let run = run(300, 4, 3);
        let events = parse(&run.events);
        let mut last_seen: HashMap<&str, Millis> = HashMap::new();
        for event in &events {
            if let Some(&last) = last_seen.get(event.user_session.as_str()) {
                assert!(event.time > last, "events of a session share a time");
                assert!(
                    event.time - last <= 30 * MINUTE,
                    "a gap longer than the session timeout"
                );
            }
            last_seen.insert(&event.user_session, event.time);
        }
        // The feature engine sees exactly our sessions: none split by its timeout, no duplicates.
        let mut engine = ReplayEngine::new(DEFAULT_SESSION_TIMEOUT);
        for event in &events {
            let applied = engine.apply(event);
            assert_eq!(
                applied,
                propensity_actors::Applied::Changed { closed: None }
            );
        }
        let engine_sessions: u64 = engine
            .users
            .users
            .values()
            .map(|user| u64::from(user.sessions))
            .sum();
        assert_eq!(engine_sessions, run.summary.sessions);
        let mut sessions_per_user: HashMap<u64, HashSet<&str>> = HashMap::new();
        for event in &events {
            sessions_per_user
                .entry(event.user_id)
                .or_default()
                .insert(&event.user_session);
        }
        let returning = sessions_per_user
            .values()
            .filter(|sessions| sessions.len() > 1)
            .count();
        assert!(
            returning * 2 > sessions_per_user.len(),
            "{returning} of {} users returned",
            sessions_per_user.len()
        );
    }

    #[test]
    fn carts_are_mostly_abandoned_and_every_kind_of_event_occurs() {
        let run = run(3_000, 7, 1);
        let summary = run.summary;
        let rate = summary.abandonment_rate();
        assert!(
            (0.65..=0.75).contains(&rate),
            "abandonment {rate} in {summary:?}"
        );
        let events = parse(&run.events);
        assert!(
            events
                .iter()
                .any(|event| event.event_type == EventType::RemoveFromCart)
        );
        let mut carted: HashSet<(&str, u64)> = HashSet::new();
        let mut direct = 0;
        for event in &events {
            let key = (event.user_session.as_str(), event.product_id);
            match event.event_type {
                EventType::Cart => {
                    carted.insert(key);
                }
                EventType::Purchase if !carted.contains(&key) => direct += 1,
                _ => {}
            }
        }
        let share = direct as f64 / summary.purchases as f64;
        assert!(
            (0.01..0.1).contains(&share),
            "{direct} of {} purchases without a cart",
            summary.purchases
        );
        // Views of several products interleave within a session: A, B, A happens.
        let mut by_session: HashMap<&str, Vec<u64>> = HashMap::new();
        for event in events
            .iter()
            .filter(|event| event.event_type == EventType::View)
        {
            by_session
                .entry(&event.user_session)
                .or_default()
                .push(event.product_id);
        }
        let interleaved = by_session
            .values()
            .filter(|views| views.windows(3).any(|w| w[0] == w[2] && w[0] != w[1]))
            .count();
        assert!(
            interleaved * 20 > by_session.len(),
            "{interleaved} of {} sessions revisit",
            by_session.len()
        );
    }

    #[test]
    fn truth_rows_match_the_scoring_points() {
        let run = run(200, 2, 9);
        let events = parse(&run.events);
        let truth = parse_truth(&run.truth);
        let scoring: Vec<&Event> = events
            .iter()
            .filter(|event| event.event_type.is_scoring_point())
            .collect();
        assert_eq!(truth.len(), scoring.len());
        assert_eq!(truth.len() as u64, run.summary.scoring_points);
        for (row, event) in truth.iter().zip(&scoring) {
            assert_eq!(row.identity, event.identity());
            assert_eq!(row.user_id, event.user_id);
            assert_eq!(row.session, event.user_session);
            assert_eq!(row.product_id, event.product_id);
            assert_eq!(row.event_type, event.event_type.as_str());
            assert!((0.0..=1.0).contains(&row.probability));
        }
        let labels = labels(&events);
        // A product is scored 0 only when it cannot be bought any more, which never happens here.
        assert!(truth.iter().all(|row| row.probability > 0.0));
        assert!(labels.iter().any(|&label| label));
    }

    #[test]
    fn truth_is_calibrated() {
        let run = run(1_600, 9, 21);
        let events = parse(&run.events);
        let truth = parse_truth(&run.truth);
        let labels = labels(&events);
        assert!(truth.len() > 100_000, "{} scoring points", truth.len());
        // Rows of one product in one session share their label, so sampling error is counted in
        // (session, product) pairs, not rows.
        let pair = |row: &TruthRow| (row.session.clone(), row.product_id);

        // Each opened product's first view carries the probability that it is bought at all.
        let mut opened = HashSet::new();
        let expected_purchases: f64 = truth
            .iter()
            .filter(|row| opened.insert(pair(row)))
            .map(|row| row.probability)
            .sum();
        let purchases = run.summary.purchases as f64;
        assert!(
            (purchases - expected_purchases).abs() < 4.0 * expected_purchases.sqrt(),
            "{purchases} purchases, {expected_purchases} expected"
        );

        let mean_truth = truth.iter().map(|row| row.probability).sum::<f64>() / truth.len() as f64;
        let positive_rate =
            labels.iter().filter(|&&label| label).count() as f64 / labels.len() as f64;
        assert!(
            (mean_truth - positive_rate).abs() < 0.08 * positive_rate,
            "mean truth {mean_truth} vs positive rate {positive_rate}"
        );

        let edges = [0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 1.01];
        let mut bins_checked = 0;
        for bin in edges.windows(2) {
            let members: Vec<usize> = (0..truth.len())
                .filter(|&index| (bin[0]..bin[1]).contains(&truth[index].probability))
                .collect();
            let pairs: HashSet<_> = members.iter().map(|&index| pair(&truth[index])).collect();
            if pairs.len() < 500 {
                continue;
            }
            bins_checked += 1;
            let expected = members
                .iter()
                .map(|&index| truth[index].probability)
                .sum::<f64>()
                / members.len() as f64;
            let observed = members.iter().filter(|&&index| labels[index]).count() as f64
                / members.len() as f64;
            let error = (expected * (1.0 - expected) / pairs.len() as f64).sqrt();
            assert!(
                (expected - observed).abs() < 4.0 * error + 0.001,
                "bin {bin:?}: {} rows, truth {expected}, observed {observed}",
                members.len()
            );
        }
        assert!(bins_checked >= 7, "only {bins_checked} bins were populated");
    }

    #[test]
    fn an_empty_run_writes_only_the_headers() {
        let empty = run(0, 3, 1);
        assert_eq!(empty.summary, GenerateSummary::default());
        assert_eq!(
            String::from_utf8(empty.events).unwrap(),
            format!("{}\n", CSV_HEADER.join(","))
        );
        assert_eq!(
            String::from_utf8(empty.truth).unwrap(),
            format!("{TRUTH_HEADER}\n")
        );
        assert_eq!(run(10, 0, 1).summary.events, 0);
    }
}
