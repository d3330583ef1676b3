//! The BG/NBD fit on 1,000,000 customers (issue 18's goal: at most 5 s on one core), drawn from
//! the BG/NBD process itself with the CDNOW parameters (seed 18) in CDNOW's shape: first
//! purchases over 12 weeks, 39 weeks of calibration.
//!
//! Two forms of the same customers:
//! - `bgnbd_1m_daily`: their purchases logged on calendar days and summarised as the command
//!   does (purchase days; recency and age whole days), so identical histories repeat and the
//!   fit merges them: what `propensity value fit` meets;
//! - `bgnbd_1m_continuous`: exact purchase times, every history distinct: the worst case, one
//!   term per customer per evaluation.
//!
//! Each iteration is the whole `bgnbd::fit` (checks, grouping, L-BFGS). Drawing the customers is
//! set-up and not timed. `cargo bench --bench value_fit`; with `PROPENSITY_VALUE_EXPORT_DIR` set,
//! the set-up also writes both summaries there as CSV (`frequency,recency,T`) for a comparison
//! with another implementation.

use std::hint::black_box;
use std::io::Write;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use propensity::offline::value::bgnbd::{self, BgNbdParams};
use propensity::offline::value::input::parse_day;
use propensity::offline::value::summary::{Periods, Purchase, RepeatHistory, summarize};
use propensity::offline::value::synthetic::{Cohort, simulate};

const CUSTOMERS: usize = 1_000_000;
const SEED: u64 = 18;
const CDNOW: BgNbdParams = BgNbdParams {
    r: 0.243,
    alpha: 4.414,
    a: 0.793,
    b: 2.426,
};

fn export(name: &str, histories: &[RepeatHistory]) {
    let Some(dir) = std::env::var_os("PROPENSITY_VALUE_EXPORT_DIR") else {
        return;
    };
    let path = std::path::Path::new(&dir).join(name);
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    writeln!(out, "frequency,recency,T").unwrap();
    for history in histories {
        writeln!(
            out,
            "{},{},{}",
            history.frequency, history.recency, history.age
        )
        .unwrap();
    }
    eprintln!("wrote {}", path.display());
}

fn value_fit(c: &mut Criterion) {
    let cohort = Cohort::cdnow_like(CUSTOMERS);
    let customers = simulate(CDNOW, cohort, SEED);
    let continuous: Vec<RepeatHistory> = customers
        .iter()
        .map(|customer| customer.calibration_history(cohort.calibration_weeks))
        .collect();
    let start = parse_day("1997-01-01").unwrap();
    let mut purchases: Vec<Purchase> = customers
        .iter()
        .enumerate()
        .flat_map(|(id, customer)| customer.purchases(id as u64, start))
        .collect();
    let periods = Periods {
        calibration_end: start + (cohort.calibration_weeks * 7.0) as i64 - 1,
        holdout_end: None,
    };
    let daily: Vec<RepeatHistory> = summarize(&mut purchases, periods)
        .iter()
        .map(|summary| summary.history())
        .collect();
    drop(purchases);
    export("bgnbd_1m_daily.csv", &daily);
    export("bgnbd_1m_continuous.csv", &continuous);
    for (name, histories) in [("daily", &daily), ("continuous", &continuous)] {
        let fit = bgnbd::fit(histories).unwrap();
        eprintln!(
            "{name}: {} customers, {} distinct histories, {} iterations, {} evaluations: {:?}, log-likelihood {:.2}",
            fit.customers,
            fit.distinct_histories,
            fit.iterations,
            fit.evaluations,
            fit.params,
            fit.log_likelihood
        );
    }

    let mut group = c.benchmark_group("value_fit");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(20));
    group.bench_function("bgnbd_1m_daily", |b| {
        b.iter(|| bgnbd::fit(black_box(&daily)).unwrap())
    });
    group.bench_function("bgnbd_1m_continuous", |b| {
        b.iter(|| bgnbd::fit(black_box(&continuous)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, value_fit);
criterion_main!(benches);
