//! Micro-benchmarks of scoring: walking the trained tree and calibrating its leaf (`Model::score`,
//! what `/v1/score` runs per product), the checked variant the HTTP path uses for untrusted
//! vectors, the drift watch's count of each scored vector, and the explanation.
//!
//! The model is trained here on a small synthetic stream (the `generate` model, 2,000 shoppers over
//! 7 days, about 100k events), and the feature vectors are that stream's scoring points, read from the same
//! `ReplayEngine` training uses. `cargo bench -p propensity --bench model`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use propensity::offline::model::Model;
use propensity_actors::event::CsvEvents;
use propensity_actors::{ReplayEngine, SessionKey};

const SESSION_TIMEOUT: i64 = 30 * 60 * 1000;

fn trained() -> (Model, Vec<Vec<f64>>) {
    let directory = tempfile::tempdir().unwrap();
    let events_path = directory.path().join("events.csv");
    propensity::tools::generate::generate_files(2_000, 7, 7, &events_path, None::<&str>, false)
        .unwrap();
    let request = propensity::offline::train::TrainRequest {
        events: vec![events_path.clone()],
        model_out: directory.path().join("model.json"),
        split_at: None,
        export_features: None,
        report_dir: None,
        truth: None,
        session_timeout: SESSION_TIMEOUT,
        options: propensity::offline::model::TrainOptions::default(),
        max_fit_rows: propensity::offline::train::DEFAULT_MAX_FIT_ROWS,
        show_progress: false,
    };
    let (_, model) = propensity::offline::train::run(&request).unwrap();
    let file = std::fs::File::open(&events_path).unwrap();
    let mut engine = ReplayEngine::new(SESSION_TIMEOUT);
    let mut vectors = Vec::new();
    for event in CsvEvents::new(std::io::BufReader::new(file)) {
        let event = event.unwrap();
        engine.apply(&event);
        if event.event_type.is_scoring_point() && vectors.len() < 1_000 {
            vectors.push(
                engine
                    .features(SessionKey::of(&event), event.product_id)
                    .to_vec(),
            );
        }
    }
    eprintln!(
        "model: {} nodes, {} leaves, depth {}; {} feature vectors",
        model.tree.nodes().len(),
        model.tree.leaf_count(),
        model.tree.depth(),
        vectors.len()
    );
    (model, vectors)
}

fn scoring(c: &mut Criterion) {
    let (model, vectors) = trained();
    let mut group = c.benchmark_group("model");
    group.throughput(Throughput::Elements(vectors.len() as u64));
    group.bench_function("score_1000_vectors", |b| {
        b.iter(|| {
            vectors
                .iter()
                .map(|vector| model.score(black_box(vector)))
                .sum::<f64>()
        })
    });
    group.bench_function("score_checked_1000_vectors", |b| {
        b.iter(|| {
            vectors
                .iter()
                .map(|vector| model.score_checked(black_box(vector)).unwrap())
                .sum::<f64>()
        })
    });
    // What the drift watch adds to every score: counting the vector and its propensity into
    // the window's bins.
    let drift = propensity::online::drift::DriftWatch::new(propensity::config::DriftSettings {
        window_seconds: 3600,
        slots: 12,
        min_rows: 500,
    });
    drift.start_window(&model);
    group.bench_function("drift_record_1000_vectors", |b| {
        b.iter(|| {
            for vector in &vectors {
                drift.record(black_box(vector), 0.05);
            }
        })
    });
    group.bench_function("explain_1000_vectors", |b| {
        b.iter(|| {
            vectors
                .iter()
                .map(|vector| model.explain(black_box(vector)).steps.len())
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = scoring
}
criterion_main!(benches);
