//! Training on the real REES46 samples in ../shared/data/rees46-real: their quirks (19-digit user
//! ids, empty category codes and brands, exact duplicate rows, purchases with no cart, a file out
//! of time order) must all pass through parsing and training.

mod common;

use std::path::PathBuf;

fn real_file(name: &str) -> PathBuf {
    let path = common::root().join("../shared/data/rees46-real").join(name);
    assert!(
        path.exists(),
        "the real REES46 samples are missing: {} (they live beside the repository in shared/)",
        path.display()
    );
    path
}

#[test]
fn trains_on_the_real_samples_with_their_quirks() {
    let dir = tempfile::tempdir().unwrap();
    let files = vec![
        real_file("multicat_2019-Oct_head17434__ibrhmspl.csv"),
        real_file("multicat_2019-Nov_head683__ucsgamoraes.csv"),
        real_file("electronics_5users_fullhistory__Bumbledebee.csv"),
        real_file("electronics_random100__Bumbledebee.csv"),
    ];
    let history = propensity::offline::history::HistoryFiles::scan(&files).unwrap();
    assert_eq!(history.rows(), 19_068);
    assert_eq!(history.bad_rows(), 0);
    assert!(
        !history.files[2].sorted,
        "the 5-user history is out of time order"
    );
    let request = propensity::offline::train::TrainRequest {
        events: files,
        model_out: dir.path().join("model.json"),
        split_at: None,
        export_features: Some(dir.path().join("features.csv")),
        report_dir: None,
        truth: None,
        session_timeout: propensity_actors::replay::DEFAULT_SESSION_TIMEOUT,
        options: propensity::offline::model::TrainOptions {
            min_samples_leaf: 5,
            ..Default::default()
        },
        max_fit_rows: propensity::offline::train::DEFAULT_MAX_FIT_ROWS,
        show_progress: false,
    };
    let (report, model) = propensity::offline::train::run(&request).unwrap();
    assert_eq!(report.events, 19_068);
    assert_eq!(
        report.duplicates, 5,
        "the Oct sample has 5 exact duplicate rows"
    );
    // Every event but the 456 purchases and the 5 duplicate rows (views and a cart) is a scoring point.
    assert_eq!(report.scoring_points, 19_068 - 456 - 5);
    assert!(report.validation_rows > 0 && report.calibration_rows > 0 && report.fit_rows > 10_000);
    // The summary times each phase and reports the process's peak resident memory, from the
    // kernel: at least what the process holds now.
    assert!(report.replay_seconds > 0.0 && report.fit_seconds > 0.0);
    assert!(report.calibration_seconds >= 0.0);
    let peak = report.peak_resident_bytes.expect("VmHWM is read on Linux");
    let now = std::fs::read_to_string("/proc/self/statm").unwrap();
    let resident_now: u64 = now
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 4096;
    assert!(
        peak >= resident_now / 2 && peak > 1 << 20,
        "peak {peak}, now {resident_now}"
    );
    assert_eq!(
        propensity::offline::model::Model::load(dir.path().join("model.json")).unwrap(),
        model
    );
    let exported = std::fs::read_to_string(dir.path().join("features.csv")).unwrap();
    assert_eq!(exported.lines().count(), report.scoring_points + 1);

    // The training distributions in the model are those of the fitting rows, as exported.
    let profiles = model.profiles.as_ref().expect("training distributions");
    let mut lines = exported.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let first_feature = header
        .iter()
        .position(|&name| name == "session_events")
        .unwrap();
    assert_eq!(
        header[first_feature..],
        model
            .feature_names
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()[..]
    );
    let (mut rows, mut sums, mut zeros) = (
        0.0,
        vec![0.0; model.feature_names.len() + 1],
        vec![0.0; model.feature_names.len()],
    );
    let mut minimum = vec![f64::INFINITY; model.feature_names.len()];
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        if fields[4] != "fit" {
            continue;
        }
        let weight: f64 = fields[6].parse().unwrap();
        let values: Vec<f64> = fields[first_feature..]
            .iter()
            .map(|field| field.parse().unwrap())
            .collect();
        rows += weight;
        for (index, &value) in values.iter().enumerate() {
            sums[index] += weight * value;
            zeros[index] += if value == 0.0 { weight } else { 0.0 };
            minimum[index] = minimum[index].min(value);
        }
        sums[values.len()] += weight * model.score(&values);
    }
    assert_eq!(rows as usize, report.fit_rows);
    for (index, profile) in profiles.features.iter().enumerate() {
        let name = &model.feature_names[index];
        assert_eq!(profile.rows as usize, report.fit_rows, "{name}");
        assert!(
            (profile.mean - sums[index] / rows).abs() <= 1e-9 * profile.mean.abs().max(1.0),
            "{name}: {} vs {}",
            profile.mean,
            sums[index] / rows
        );
        assert!(
            (profile.zero_share - zeros[index] / rows).abs() < 1e-12,
            "{name}"
        );
        assert_eq!(profile.min, minimum[index], "{name}");
    }
    let propensity_mean = sums[model.feature_names.len()] / rows;
    assert!(
        (profiles.propensity.mean - propensity_mean).abs() < 1e-9,
        "{} vs {propensity_mean}",
        profiles.propensity.mean
    );
}
