//! `propensity train`: replays history in event-time order through the feature engine, labels
//! every scoring point, splits by time, fits and calibrates the tree, and reports its quality.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::Array2;
use propensity_actors::event::{Event, EventType, Millis, format_time};
use propensity_actors::features::SessionKey;
use propensity_actors::features::{FEATURE_COUNT, Outcome, SessionState, feature_names};
use propensity_actors::{Applied, ReplayEngine};
use serde::Serialize;

use crate::offline::history::{HistoryFiles, ordered_events};
use crate::offline::model::{self, Dataset, Metrics, Model, TrainOptions};

/// Which part of the time split a row falls in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Fits the tree.
    Fit,
    /// Held out before the validation cut: smooths and calibrates leaf probabilities.
    Calibration,
    /// The last part of the time span: only reported on.
    Validation,
}

impl Split {
    fn as_str(self) -> &'static str {
        match self {
            Split::Fit => "fit",
            Split::Calibration => "calibration",
            Split::Validation => "validation",
        }
    }
}

/// Every scoring point of a replay: features, label and where it came from.
#[derive(Debug, Default)]
pub struct ScoringRows {
    /// Row-major, [`FEATURE_COUNT`] values per row.
    pub features: Vec<f64>,
    pub labels: Vec<bool>,
    pub times: Vec<Millis>,
    pub identities: Vec<u64>,
    pub keys: Vec<(SessionKey, u64)>,
}

impl ScoringRows {
    /// Rows recorded.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether no row was recorded.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Makes room for `additional` more rows.
    pub fn reserve(&mut self, additional: usize) {
        self.features.reserve(additional * FEATURE_COUNT);
        self.labels.reserve(additional);
        self.times.reserve(additional);
        self.identities.reserve(additional);
        self.keys.reserve(additional);
    }

    /// The features of one row.
    pub fn row(&self, index: usize) -> &[f64] {
        &self.features[index * FEATURE_COUNT..(index + 1) * FEATURE_COUNT]
    }
}

/// Counters of a replay.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplayStats {
    pub events: u64,
    pub duplicates: u64,
    pub sessions_closed: u64,
    pub abandoned_carts: u64,
}

/// Labels scoring points as purchases arrive. A row waits in its session's list until the same
/// product is bought (label 1) or the session ends (label stays 0).
#[derive(Default)]
struct Labeler {
    pending: foldhash::HashMap<SessionKey, Vec<(u64, usize)>>,
}

impl Labeler {
    fn wait(&mut self, key: SessionKey, product_id: u64, row: usize) {
        self.pending.entry(key).or_default().push((product_id, row));
    }

    fn purchase(&mut self, key: SessionKey, product_id: u64, labels: &mut [bool]) {
        if let Some(waiting) = self.pending.get_mut(&key) {
            waiting.retain(|&(product, row)| {
                if product == product_id {
                    labels[row] = true;
                }
                product != product_id
            });
        }
    }

    fn session_ended(&mut self, key: SessionKey) {
        self.pending.remove(&key);
    }
}

fn end_session(session: SessionState, stats: &mut ReplayStats, labeler: &mut Labeler) {
    stats.sessions_closed += 1;
    if session.outcome() == Outcome::Abandoned {
        stats.abandoned_carts += 1;
    }
    labeler.session_ended(SessionKey::new(session.user_id, &session.session_id));
}

/// Replays ordered events through a fresh engine and returns every scoring point, labelled.
/// Features are read right after their event is applied, before any later event is seen.
pub fn replay<I: Iterator<Item = Event>>(
    events: I,
    session_timeout: Millis,
    progress: &ProgressBar,
) -> (ScoringRows, ReplayStats, ReplayEngine) {
    let mut engine = ReplayEngine::new(session_timeout);
    let mut rows = ScoringRows::default();
    // Every event is at most one row: reserving up front spares the copies of a growing matrix.
    let (expected_events, _) = events.size_hint();
    rows.reserve(expected_events);
    let mut stats = ReplayStats::default();
    let mut labeler = Labeler::default();
    for event in events {
        stats.events += 1;
        if stats.events % 65_536 == 0 {
            progress.inc(65_536);
        }
        let key = SessionKey::of(&event);
        match engine.apply(&event) {
            Applied::Duplicate => {
                stats.duplicates += 1;
                continue;
            }
            Applied::Changed { closed } => {
                if let Some(session) = closed {
                    end_session(session, &mut stats, &mut labeler);
                }
            }
        }
        for session in engine.users.expire_sessions() {
            end_session(session, &mut stats, &mut labeler);
        }
        if event.event_type == EventType::Purchase {
            labeler.purchase(key, event.product_id, &mut rows.labels);
            continue;
        }
        let row = rows.len();
        rows.features
            .extend_from_slice(&engine.features(key, event.product_id));
        rows.labels.push(false);
        rows.times.push(event.time);
        rows.identities.push(event.identity());
        rows.keys.push((key, event.product_id));
        labeler.wait(key, event.product_id, row);
    }
    // Sessions still open at the end are final for labels and counts, but stay in the engine so
    // callers can read the end state.
    let open: Vec<SessionState> = engine.users.sessions.values().cloned().collect();
    for session in open {
        end_session(session, &mut stats, &mut labeler);
    }
    progress.inc(stats.events % 65_536);
    (rows, stats, engine)
}

/// An event stream that knows how many events it holds at most (from the history's count).
struct SizedEvents<I> {
    events: I,
    remaining: usize,
}

impl<I: Iterator<Item = Event>> Iterator for SizedEvents<I> {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        self.remaining = self.remaining.saturating_sub(1);
        self.events.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

/// Options of `propensity train`.
#[derive(Clone, Debug)]
pub struct TrainRequest {
    pub events: Vec<PathBuf>,
    pub model_out: PathBuf,
    pub split_at: Option<Millis>,
    pub export_features: Option<PathBuf>,
    pub report_dir: Option<PathBuf>,
    pub truth: Option<PathBuf>,
    pub session_timeout: Millis,
    pub options: TrainOptions,
    pub show_progress: bool,
}

/// What training reports.
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    pub model_version: String,
    pub model_path: PathBuf,
    pub events: u64,
    pub bad_rows: u64,
    pub duplicates: u64,
    pub scoring_points: usize,
    pub fit_rows: usize,
    pub calibration_rows: usize,
    pub validation_rows: usize,
    pub split_at: String,
    pub data_span: (String, String),
    pub feature_events_per_second: f64,
    /// Reading, ordering and replaying the history into scoring points.
    pub replay_seconds: f64,
    /// Growing, pruning and smoothing the tree.
    pub fit_seconds: f64,
    /// Fitting the calibration on its rows.
    pub calibration_seconds: f64,
    /// The most memory the process held resident (the kernel's high-water mark, VmHWM), when
    /// the system tells it.
    pub peak_resident_bytes: Option<u64>,
    pub validation: Metrics,
    /// The generator's own probabilities on the same validation rows, when `--truth` was given.
    pub oracle: Option<Metrics>,
    pub oracle_rows: Option<usize>,
    pub auc_ratio_to_oracle: Option<f64>,
}

fn progress_bar(show: bool, length: u64, message: &'static str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(length);
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} events ({per_sec}, eta {eta})")
            .expect("a valid template"),
    );
    bar.set_message(message);
    bar
}

fn subset(rows: &ScoringRows, indices: &[usize]) -> Result<Dataset> {
    let mut features = Vec::with_capacity(indices.len() * FEATURE_COUNT);
    for &index in indices {
        features.extend_from_slice(rows.row(index));
    }
    Ok(Dataset {
        features: Array2::from_shape_vec((indices.len(), FEATURE_COUNT), features)?,
        labels: indices.iter().map(|&index| rows.labels[index]).collect(),
        feature_names: feature_names(),
    })
}

/// Loads a generator truth file: event identity (hex) to probability.
fn load_truth(path: &Path) -> Result<HashMap<u64, f64>> {
    let file = File::open(path)
        .with_context(|| format!("failed to open truth file {}", path.display()))?;
    let mut truth = HashMap::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("failed to read {}", path.display()))?;
        if index == 0 {
            continue;
        }
        let mut fields = line.split(',');
        let identity = fields.next().unwrap_or("");
        let probability = fields.next_back().unwrap_or("");
        let identity = u64::from_str_radix(identity, 16).with_context(|| {
            format!(
                "{}: line {}: bad event identity {identity:?}",
                path.display(),
                index + 1
            )
        })?;
        let probability: f64 = probability.parse().with_context(|| {
            format!(
                "{}: line {}: bad probability {probability:?}",
                path.display(),
                index + 1
            )
        })?;
        truth.insert(identity, probability);
    }
    Ok(truth)
}

fn export_features(path: &Path, rows: &ScoringRows, splits: &[Split]) -> Result<()> {
    let file =
        File::create(path).with_context(|| format!("failed to create {}", path.display()))?;
    let mut out = BufWriter::new(file);
    write!(
        out,
        "event_identity,event_time,user_id,product_id,split,label"
    )?;
    for name in feature_names() {
        write!(out, ",{name}")?;
    }
    writeln!(out)?;
    for (index, split) in splits.iter().enumerate() {
        let (key, product_id) = rows.keys[index];
        write!(
            out,
            "{:016x},{},{},{},{},{}",
            rows.identities[index],
            format_time(rows.times[index]),
            key.user_id,
            product_id,
            split.as_str(),
            u8::from(rows.labels[index])
        )?;
        for value in rows.row(index) {
            write!(out, ",{value}")?;
        }
        writeln!(out)?;
    }
    out.flush()
        .with_context(|| format!("failed to write {}", path.display()))
}

/// Runs the whole training command.
pub fn run(request: &TrainRequest) -> Result<(TrainReport, Model)> {
    if request.events.is_empty() {
        bail!("no event files given: pass --events FILE...");
    }
    let history = HistoryFiles::scan(&request.events)?;
    let Some((first, last)) = history.span() else {
        bail!("the event files hold no valid rows");
    };
    let split_at = request.split_at.unwrap_or(first + (last - first) * 4 / 5);
    if split_at <= first || split_at > last {
        bail!(
            "--split-at {} is outside the data's time span {} to {}",
            format_time(split_at),
            format_time(first),
            format_time(last)
        );
    }

    let spill = tempfile::tempdir().context("failed to create a directory for sort runs")?;
    let progress = progress_bar(request.show_progress, history.rows(), "features");
    let started = std::time::Instant::now();
    let (rows, stats, _engine) = replay(
        SizedEvents {
            events: ordered_events(&history, spill.path())?,
            remaining: history.rows() as usize,
        },
        request.session_timeout,
        &progress,
    );
    let replay_seconds = started.elapsed().as_secs_f64();
    progress.finish_and_clear();

    // Rows are in event-time order. The last eighth of the rows before the cut calibrates, the
    // rest fits: still a split by time, sized by rows so sparse periods cannot leave it empty.
    let before_cut = rows.times.partition_point(|&time| time < split_at);
    let calibration_start = before_cut * 7 / 8;
    let splits: Vec<Split> = (0..rows.len())
        .map(|index| match index {
            index if index >= before_cut => Split::Validation,
            index if index >= calibration_start => Split::Calibration,
            _ => Split::Fit,
        })
        .collect();
    let indices_of = |wanted: Split| -> Vec<usize> {
        (0..rows.len())
            .filter(|&index| splits[index] == wanted)
            .collect()
    };
    let (fit_indices, calibration_indices, validation_indices) = (
        indices_of(Split::Fit),
        indices_of(Split::Calibration),
        indices_of(Split::Validation),
    );
    if fit_indices.is_empty() || validation_indices.is_empty() {
        bail!(
            "the time split leaves {} fitting and {} validation rows; both need some",
            fit_indices.len(),
            validation_indices.len()
        );
    }
    if let Some(path) = &request.export_features {
        export_features(path, &rows, &splits)?;
    }

    let (mut model, timings) = model::train_timed(
        &subset(&rows, &fit_indices)?,
        &subset(&rows, &calibration_indices)?,
        &request.options,
    )?;

    let validation_labels: Vec<bool> = validation_indices
        .iter()
        .map(|&index| rows.labels[index])
        .collect();
    let validation_scores: Vec<f64> = validation_indices
        .iter()
        .map(|&index| model.score(rows.row(index)))
        .collect();
    let validation = model::evaluate(&validation_scores, &validation_labels);

    let (oracle, oracle_rows) = match &request.truth {
        Some(path) => {
            let truth = load_truth(path)?;
            let mut scores = Vec::new();
            let mut labels = Vec::new();
            for &index in &validation_indices {
                if let Some(&probability) = truth.get(&rows.identities[index]) {
                    scores.push(probability);
                    labels.push(rows.labels[index]);
                }
            }
            if scores.len() != validation_indices.len() {
                eprintln!(
                    "warning: the truth file covers {} of {} validation rows",
                    scores.len(),
                    validation_indices.len()
                );
            }
            (Some(model::evaluate(&scores, &labels)), Some(scores.len()))
        }
        None => (None, None),
    };

    model.metrics = Some(validation.clone());
    model.data_span = Some((format_time(first), format_time(last)));
    model.save(&request.model_out)?;
    if let Some(dir) = &request.report_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
        model::write_report(dir, &model, &validation_scores, &validation_labels)?;
    }

    let report = TrainReport {
        model_version: model.version.clone(),
        model_path: request.model_out.clone(),
        events: stats.events,
        bad_rows: history.bad_rows(),
        duplicates: stats.duplicates,
        scoring_points: rows.len(),
        fit_rows: fit_indices.len(),
        calibration_rows: calibration_indices.len(),
        validation_rows: validation_indices.len(),
        split_at: format_time(split_at),
        data_span: (format_time(first), format_time(last)),
        feature_events_per_second: stats.events as f64 / replay_seconds.max(1e-9),
        replay_seconds,
        fit_seconds: timings.fit_seconds,
        calibration_seconds: timings.calibration_seconds,
        peak_resident_bytes: peak_resident_bytes(),
        auc_ratio_to_oracle: oracle
            .as_ref()
            .map(|oracle| validation.roc_auc / oracle.roc_auc),
        validation,
        oracle,
        oracle_rows,
    };
    Ok((report, model))
}

/// The process's peak resident memory so far, from the kernel (Linux: `VmHWM`).
pub fn peak_resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Prints the report for people; `--json` adds the machine-readable last line.
pub fn print_report(report: &TrainReport, json: bool) -> Result<()> {
    let metrics_line = |name: &str, metrics: &Metrics| {
        println!(
            "{name:<10} roc_auc {:.4}  average_precision {:.4}  brier {:.4}  log_loss {:.4}  base_rate {:.4}  rows {} (positives {})",
            metrics.roc_auc,
            metrics.average_precision,
            metrics.brier,
            metrics.log_loss,
            metrics.base_rate,
            metrics.rows,
            metrics.positives
        );
    };
    println!(
        "replayed {} events ({} bad rows skipped, {} duplicates dropped) at {:.0} events/s into {} scoring points",
        report.events,
        report.bad_rows,
        report.duplicates,
        report.feature_events_per_second,
        report.scoring_points
    );
    println!(
        "split at {}: {} fit, {} calibration, {} validation rows",
        report.split_at, report.fit_rows, report.calibration_rows, report.validation_rows,
    );
    println!(
        "phases: replay {:.2} s, fit {:.2} s, calibration {:.2} s; peak resident memory {}",
        report.replay_seconds,
        report.fit_seconds,
        report.calibration_seconds,
        match report.peak_resident_bytes {
            Some(bytes) => format!("{:.0} MiB", bytes as f64 / 1048576.0),
            None => "unknown (no /proc/self/status)".to_owned(),
        }
    );
    metrics_line("model", &report.validation);
    if let Some(oracle) = &report.oracle {
        metrics_line("oracle", oracle);
        if let Some(ratio) = report.auc_ratio_to_oracle {
            println!("model ROC-AUC is {:.3} of the oracle's", ratio);
        }
    }
    println!(
        "wrote model {} to {}",
        report.model_version,
        report.model_path.display()
    );
    if json {
        println!("{}", serde_json::to_string(report)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use propensity_actors::features::FEATURES;
    use propensity_actors::replay::DEFAULT_SESSION_TIMEOUT;

    fn event(seconds: i64, event_type: EventType, product_id: u64, session: &str) -> Event {
        Event {
            time: seconds * 1000,
            event_type,
            product_id,
            category_id: 3,
            category_code: None,
            brand: None,
            price: 20.0,
            user_id: 1,
            user_session: session.into(),
            event_id: None,
        }
    }

    fn run_replay(events: Vec<Event>) -> (ScoringRows, ReplayStats) {
        let (rows, stats, _) = replay(
            events.into_iter(),
            DEFAULT_SESSION_TIMEOUT,
            &ProgressBar::hidden(),
        );
        (rows, stats)
    }

    #[test]
    fn labels_mark_later_purchases_in_the_same_session_only() {
        let (rows, stats) = run_replay(vec![
            event(0, EventType::View, 1, "a"),
            event(1, EventType::View, 2, "a"),
            event(2, EventType::Cart, 1, "a"),
            event(3, EventType::Purchase, 1, "a"),
            event(4, EventType::View, 1, "a"),
            event(5, EventType::View, 2, "b"),
            event(6, EventType::Purchase, 2, "c"),
        ]);
        // Purchases are never scoring points.
        assert_eq!(rows.len(), 5);
        assert_eq!(rows.labels, vec![true, false, true, false, false]);
        assert_eq!(stats.events, 7);
        assert_eq!(stats.sessions_closed, 3);
    }

    #[test]
    fn a_purchase_after_the_session_timed_out_does_not_label() {
        let (rows, _) = run_replay(vec![
            event(0, EventType::Cart, 1, "a"),
            event(31 * 60, EventType::Purchase, 1, "a"),
        ]);
        assert_eq!(rows.labels, vec![false]);
    }

    #[test]
    fn abandoned_carts_are_counted() {
        let (_, stats) = run_replay(vec![
            event(0, EventType::Cart, 1, "a"),
            event(1, EventType::Cart, 2, "b"),
            event(2, EventType::Purchase, 2, "b"),
            event(3, EventType::Cart, 3, "c"),
            event(4, EventType::RemoveFromCart, 3, "c"),
        ]);
        assert_eq!(stats.abandoned_carts, 1);
    }

    /// Leakage guard: the features of every scoring point must equal those of a replay that stops
    /// right after its event. If any feature used a later event, the two would differ.
    #[test]
    fn no_feature_sees_a_later_event() {
        let mut events = Vec::new();
        let kinds = [
            EventType::View,
            EventType::View,
            EventType::Cart,
            EventType::RemoveFromCart,
            EventType::Cart,
            EventType::Purchase,
        ];
        for step in 0..60i64 {
            let mut event = event(
                step * 37,
                kinds[step as usize % kinds.len()],
                1 + (step as u64 * 7) % 5,
                ["a", "b"][step as usize / 30],
            );
            event.user_id = 1 + (step as u64 % 3);
            event.price = 5.0 + step as f64;
            events.push(event);
        }
        let (full, _) = run_replay(events.clone());
        let mut checked = 0;
        let mut row = 0;
        for (index, event) in events.iter().enumerate() {
            if !event.event_type.is_scoring_point() {
                continue;
            }
            let (prefix, _) = run_replay(events[..=index].to_vec());
            let last = prefix.len() - 1;
            for (feature, (a, b)) in FEATURES
                .iter()
                .zip(full.row(row).iter().zip(prefix.row(last)))
            {
                assert_eq!(
                    a, b,
                    "feature {} of row {row} saw a later event",
                    feature.name
                );
            }
            row += 1;
            checked += 1;
        }
        assert_eq!(checked, full.len());
        assert!(checked > 40);
    }
}
