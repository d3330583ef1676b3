//! `propensity train`: replays history in event-time order through the feature engine, labels
//! every scoring point, splits by time, fits and calibrates the tree, and reports its quality.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::Array2;
use propensity_actors::event::{Event, EventType, Millis, format_time};
use propensity_actors::features::SessionKey;
use propensity_actors::features::{
    FEATURE_COUNT, FeatureVector, Outcome, SessionState, feature_names,
};
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

/// One scoring point, handed on by [`replay_rows`] once its label is final.
#[derive(Clone, Debug)]
pub struct ScoringRow {
    /// Position among the scoring points, in event-time order.
    pub sequence: u64,
    pub features: FeatureVector,
    pub label: bool,
    pub time: Millis,
    pub identity: u64,
    pub key: SessionKey,
    pub product_id: u64,
}

/// Labels scoring points as purchases arrive. A row waits in its session's list until the
/// session ends: by then a purchase of the same product has labelled it 1, or it stays 0. Only
/// rows of open sessions are held. Rows are handed on by reference and every list is reused, so a
/// row is copied once into its list and once by whoever keeps it.
#[derive(Default)]
struct Labeler {
    pending: foldhash::HashMap<SessionKey, Vec<ScoringRow>>,
    /// Lists of the sessions that ended since the last hand-on.
    ended: Vec<Vec<ScoringRow>>,
    /// Emptied lists, kept with their capacity for the next sessions.
    spare: Vec<Vec<ScoringRow>>,
    /// (sequence, list, row) of the ended rows, to merge several lists in event order.
    order: Vec<(u64, u32, u32)>,
}

/// Lists longer than this are not kept for reuse, so one long session does not pin its memory.
const SPARE_LIST_ROWS: usize = 64;
/// How many emptied lists are kept.
const SPARE_LISTS: usize = 4096;

impl Labeler {
    fn wait(&mut self, row: ScoringRow) {
        let spare = &mut self.spare;
        self.pending
            .entry(row.key)
            .or_insert_with(|| spare.pop().unwrap_or_default())
            .push(row);
    }

    fn purchase(&mut self, key: SessionKey, product_id: u64) {
        if let Some(waiting) = self.pending.get_mut(&key) {
            for row in waiting
                .iter_mut()
                .filter(|row| row.product_id == product_id)
            {
                row.label = true;
            }
        }
    }

    fn session_ended(&mut self, key: SessionKey) {
        if let Some(rows) = self.pending.remove(&key) {
            self.ended.push(rows);
        }
    }

    /// Hands on the rows whose sessions ended, in event order: which sessions end together
    /// depends only on the events, so the output order is deterministic.
    fn hand_on(&mut self, emit: &mut impl FnMut(&ScoringRow)) {
        match self.ended.as_slice() {
            [] => return,
            // Each list is in event order already.
            [rows] => rows.iter().for_each(&mut *emit),
            lists => {
                self.order.clear();
                for (list, rows) in lists.iter().enumerate() {
                    for (index, row) in rows.iter().enumerate() {
                        self.order.push((row.sequence, list as u32, index as u32));
                    }
                }
                self.order.sort_unstable();
                for &(_, list, index) in &self.order {
                    emit(&lists[list as usize][index as usize]);
                }
            }
        }
        for mut rows in self.ended.drain(..) {
            if rows.capacity() <= SPARE_LIST_ROWS && self.spare.len() < SPARE_LISTS {
                rows.clear();
                self.spare.push(rows);
            }
        }
    }
}

fn end_session(session: SessionState, stats: &mut ReplayStats, labeler: &mut Labeler) {
    stats.sessions_closed += 1;
    if session.outcome() == Outcome::Abandoned {
        stats.abandoned_carts += 1;
    }
    labeler.session_ended(SessionKey::new(session.user_id, &session.session_id));
}

/// Replays ordered events through a fresh engine and hands every scoring point to `emit` once
/// its label is final (when its session ends). Features are read right after their event is
/// applied, before any later event is seen. Memory holds the engine's state and the rows of open
/// sessions, never the whole history.
pub fn replay_rows<I: Iterator<Item = Event>>(
    events: I,
    session_timeout: Millis,
    progress: &ProgressBar,
    mut emit: impl FnMut(&ScoringRow),
) -> (ReplayStats, ReplayEngine) {
    let mut engine = ReplayEngine::new(session_timeout);
    let mut stats = ReplayStats::default();
    let mut labeler = Labeler::default();
    let mut sequence = 0;
    for event in events {
        stats.events += 1;
        if stats.events % 65_536 == 0 {
            progress.inc(65_536);
        }
        let key = SessionKey::of(&event);
        let identity = event.identity();
        match engine.apply_identified(&event, key, identity) {
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
            labeler.purchase(key, event.product_id);
        } else {
            labeler.wait(ScoringRow {
                sequence,
                features: engine.features(key, event.product_id),
                label: false,
                time: event.time,
                identity,
                key,
                product_id: event.product_id,
            });
            sequence += 1;
        }
        labeler.hand_on(&mut emit);
    }
    // Sessions still open at the end are final for labels and counts, but stay in the engine so
    // callers can read the end state.
    let open: Vec<SessionState> = engine.users.sessions.values().cloned().collect();
    for session in open {
        end_session(session, &mut stats, &mut labeler);
    }
    let orphans: Vec<SessionKey> = labeler.pending.keys().copied().collect();
    for key in orphans {
        labeler.session_ended(key);
    }
    labeler.hand_on(&mut emit);
    progress.inc(stats.events % 65_536);
    (stats, engine)
}

/// Replays ordered events and returns every scoring point, labelled, in event order: the whole
/// matrix in memory, for tests and small sets. Training streams with [`replay_rows`] instead.
pub fn replay<I: Iterator<Item = Event>>(
    events: I,
    session_timeout: Millis,
    progress: &ProgressBar,
) -> (ScoringRows, ReplayStats, ReplayEngine) {
    let mut finished = Vec::new();
    let (stats, engine) = replay_rows(events, session_timeout, progress, |row| {
        finished.push(row.clone())
    });
    finished.sort_unstable_by_key(|row| row.sequence);
    let mut rows = ScoringRows::default();
    rows.reserve(finished.len());
    for row in finished {
        rows.features.extend_from_slice(&row.features);
        rows.labels.push(row.label);
        rows.times.push(row.time);
        rows.identities.push(row.identity);
        rows.keys.push((row.key, row.product_id));
    }
    (rows, stats, engine)
}

/// The fitting rows kept by default: above it, negatives are downsampled.
pub const DEFAULT_MAX_FIT_ROWS: u64 = 2_000_000;

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
    /// About how many fitting rows to keep: when the fitting period holds more, one negative in
    /// `k` is kept with weight `k` (every positive is kept). 0 keeps every row.
    pub max_fit_rows: u64,
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
    /// Scoring points in the fitting period.
    pub fit_rows: usize,
    /// Of those, the rows the tree was grown on: every positive, and one negative in
    /// `negative_weight`.
    pub fit_rows_kept: usize,
    /// How many rows each kept negative of the fit stands for (1: nothing was downsampled).
    pub negative_weight: u64,
    pub calibration_rows: usize,
    pub validation_rows: usize,
    pub split_at: String,
    pub calibration_from: String,
    pub data_span: (String, String),
    pub feature_events_per_second: f64,
    /// Reading, ordering and replaying the history into scoring points.
    pub replay_seconds: f64,
    /// Growing, pruning and smoothing the tree.
    pub fit_seconds: f64,
    /// Scoring the calibration rows and fitting the calibration.
    pub calibration_seconds: f64,
    /// Scoring the validation rows and computing the metrics.
    pub validation_seconds: f64,
    /// The most memory the process held resident (the kernel's high-water mark, VmHWM), when
    /// the system tells it.
    pub peak_resident_bytes: Option<u64>,
    pub validation: Metrics,
    /// The generator's own probabilities on the same validation rows, when `--truth` was given.
    pub oracle: Option<Metrics>,
    pub oracle_rows: Option<usize>,
    pub auc_ratio_to_oracle: Option<f64>,
}

/// Progress counted in events.
pub(crate) const EVENTS: &str = "{msg:>10} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} events ({per_sec}, eta {eta})";
/// Progress counted in bytes read.
const BYTES: &str = "{msg:>10} [{elapsed_precise}] {wide_bar} {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, eta {eta})";

/// Scans the history files with a bar of bytes read (when `show`), for commands that replay them.
pub(crate) fn scan_history(paths: &[PathBuf], show: bool) -> Result<HistoryFiles> {
    let mut bytes = 0;
    for path in paths {
        bytes += std::fs::metadata(path)
            .with_context(|| format!("failed to read {}", path.display()))?
            .len();
    }
    let scanning = progress_bar(show, bytes, "scanning", BYTES);
    let history = HistoryFiles::scan_showing(paths, &scanning)?;
    scanning.finish_and_clear();
    Ok(history)
}

pub(crate) fn progress_bar(
    show: bool,
    length: u64,
    message: &'static str,
    template: &str,
) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(length);
    bar.set_style(ProgressStyle::with_template(template).expect("a valid template"));
    bar.set_message(message);
    bar
}

/// A ticking line for a phase that reports no progress of its own.
fn spinner(show: bool, message: String) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{elapsed_precise}] {spinner}")
            .expect("a valid template"),
    );
    bar.set_message(message);
    bar.enable_steady_tick(std::time::Duration::from_millis(250));
    bar
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

/// Where the time split puts rows: validation from `split_at`, calibration from the minute where
/// the last eighth of the rows before `split_at` starts, fitting before that. Placed by rows
/// (from the scan's counts per minute) so sparse periods cannot leave a part empty, and known
/// before the replay so every row can go to its part as soon as it is labelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cuts {
    calibration_from: Millis,
    validation_from: Millis,
}

impl Cuts {
    /// The cuts, and about how many scoring points fall in the fitting period.
    fn place(per_minute: &BTreeMap<Millis, u64>, split_at: Millis) -> (Cuts, u64) {
        let before: u64 = per_minute.range(..split_at).map(|(_, count)| count).sum();
        let target = before * 7 / 8;
        let mut cumulative = 0;
        let mut calibration_from = split_at;
        for (&minute, &count) in per_minute.range(..split_at) {
            if cumulative + count > target {
                calibration_from = minute;
                break;
            }
            cumulative += count;
        }
        let cuts = Cuts {
            calibration_from,
            validation_from: split_at,
        };
        (cuts, cumulative)
    }

    fn split(&self, time: Millis) -> Split {
        if time >= self.validation_from {
            Split::Validation
        } else if time >= self.calibration_from {
            Split::Calibration
        } else {
            Split::Fit
        }
    }
}

/// How many rows each kept negative stands for, to keep about `max_fit_rows` of `fit_rows`.
fn negative_weight_for(fit_rows: u64, max_fit_rows: u64) -> u64 {
    if max_fit_rows == 0 {
        return 1;
    }
    fit_rows.div_ceil(max_fit_rows).max(1)
}

/// Whether a negative fitting row is kept: one in `negative_weight`, chosen by the event's
/// identity (a hash), so the same history always keeps the same rows.
fn keeps_negative(identity: u64, negative_weight: u64) -> bool {
    identity.is_multiple_of(negative_weight)
}

/// The rows the tree grows on, kept in memory as they are labelled.
struct FitSample {
    negative_weight: u64,
    features: Vec<f64>,
    labels: Vec<bool>,
    /// Every fitting-period row seen, kept or not.
    seen: usize,
}

impl FitSample {
    /// Keeps the row if it is positive or its negative is drawn; returns its weight if kept.
    fn offer(&mut self, row: &ScoringRow) -> Option<u64> {
        self.seen += 1;
        if !row.label && !keeps_negative(row.identity, self.negative_weight) {
            return None;
        }
        self.features.extend_from_slice(&row.features);
        self.labels.push(row.label);
        Some(if row.label { 1 } else { self.negative_weight })
    }

    fn into_dataset(self) -> Result<Dataset> {
        let rows = self.labels.len();
        Ok(Dataset {
            features: Array2::from_shape_vec((rows, FEATURE_COUNT), self.features)?,
            labels: self.labels,
            feature_names: feature_names(),
            negative_weight: self.negative_weight,
        })
    }
}

/// Bytes of one spilled row: label, event identity, features.
const SPILL_ROW_BYTES: usize = 1 + 8 + FEATURE_COUNT * 8;

/// Held-out rows (calibration, validation) written to disk as they are labelled and read back
/// once the tree exists, so their memory does not grow with the history.
struct RowSpill {
    path: PathBuf,
    out: BufWriter<File>,
    rows: usize,
}

impl RowSpill {
    fn create(path: PathBuf) -> Result<RowSpill> {
        let file =
            File::create(&path).with_context(|| format!("failed to create {}", path.display()))?;
        Ok(RowSpill {
            path,
            out: BufWriter::with_capacity(1 << 20, file),
            rows: 0,
        })
    }

    fn push(&mut self, row: &ScoringRow) -> std::io::Result<()> {
        let mut bytes = [0u8; SPILL_ROW_BYTES];
        bytes[0] = u8::from(row.label);
        bytes[1..9].copy_from_slice(&row.identity.to_le_bytes());
        for (chunk, value) in bytes[9..].chunks_exact_mut(8).zip(row.features) {
            chunk.copy_from_slice(&value.to_le_bytes());
        }
        self.rows += 1;
        self.out.write_all(&bytes)
    }

    /// Reads every row back, in the order written: `f(identity, label, features)`.
    fn read_back(mut self, mut f: impl FnMut(u64, bool, &FeatureVector)) -> Result<()> {
        self.out
            .flush()
            .with_context(|| format!("failed to write {}", self.path.display()))?;
        drop(self.out);
        let file = File::open(&self.path)
            .with_context(|| format!("failed to open {}", self.path.display()))?;
        let mut input = BufReader::with_capacity(1 << 20, file);
        let mut bytes = [0u8; SPILL_ROW_BYTES];
        let mut features = [0.0; FEATURE_COUNT];
        for _ in 0..self.rows {
            input
                .read_exact(&mut bytes)
                .with_context(|| format!("failed to read {}", self.path.display()))?;
            let identity = u64::from_le_bytes(bytes[1..9].try_into().expect("8 bytes"));
            for (value, chunk) in features.iter_mut().zip(bytes[9..].chunks_exact(8)) {
                *value = f64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            }
            f(identity, bytes[0] == 1, &features);
        }
        Ok(())
    }
}

/// `--export-features`: every row kept, with its part of the split and its weight, as CSV in the
/// order labels became final. With downsampling it is a weighted sample: a learner given the
/// weights sees the population the tree saw.
struct FeatureExport {
    path: PathBuf,
    out: BufWriter<File>,
}

impl FeatureExport {
    fn create(path: &Path) -> Result<FeatureExport> {
        let file =
            File::create(path).with_context(|| format!("failed to create {}", path.display()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        write!(
            out,
            "event_identity,event_time,user_id,product_id,split,label,weight"
        )?;
        for name in feature_names() {
            write!(out, ",{name}")?;
        }
        writeln!(out)?;
        Ok(FeatureExport {
            path: path.to_owned(),
            out,
        })
    }

    fn write(&mut self, row: &ScoringRow, split: Split, weight: u64) -> std::io::Result<()> {
        write!(
            self.out,
            "{:016x},{},{},{},{},{},{weight}",
            row.identity,
            format_time(row.time),
            row.key.user_id,
            row.product_id,
            split.as_str(),
            u8::from(row.label)
        )?;
        for value in row.features {
            write!(self.out, ",{value}")?;
        }
        writeln!(self.out)
    }

    fn finish(mut self) -> Result<()> {
        self.out
            .flush()
            .with_context(|| format!("failed to write {}", self.path.display()))
    }
}

/// Runs the whole training command, streaming: the replay hands each labelled row to its part
/// of the split (fitting rows to an in-memory sample, held-out rows to files), so memory holds
/// the replay's live state and the sample, never the history.
pub fn run(request: &TrainRequest) -> Result<(TrainReport, Model)> {
    if request.events.is_empty() {
        bail!("no event files given: pass --events FILE...");
    }
    let history = scan_history(&request.events, request.show_progress)?;
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
    let (cuts, expected_fit_rows) = Cuts::place(&history.scoring_points_per_minute(), split_at);
    let negative_weight = negative_weight_for(expected_fit_rows, request.max_fit_rows);

    let spill = tempfile::tempdir().context("failed to create a directory for spilled rows")?;
    let mut sample = FitSample {
        negative_weight,
        features: Vec::new(),
        labels: Vec::new(),
        seen: 0,
    };
    let expected_kept = expected_fit_rows.div_ceil(negative_weight) as usize;
    sample.features.reserve(expected_kept * FEATURE_COUNT);
    sample.labels.reserve(expected_kept);
    let mut calibration = RowSpill::create(spill.path().join("calibration.rows"))?;
    let mut validation = RowSpill::create(spill.path().join("validation.rows"))?;
    let mut export = request
        .export_features
        .as_deref()
        .map(FeatureExport::create)
        .transpose()?;
    let mut scoring_points = 0usize;
    let mut write_error: Option<std::io::Error> = None;

    let progress = progress_bar(request.show_progress, history.rows(), "features", EVENTS);
    let started = std::time::Instant::now();
    let (stats, engine) = replay_rows(
        ordered_events(&history, spill.path())?,
        request.session_timeout,
        &progress,
        |row| {
            scoring_points += 1;
            let split = cuts.split(row.time);
            let (written, weight) = match split {
                Split::Fit => match sample.offer(row) {
                    Some(weight) => (Ok(()), weight),
                    None => return,
                },
                Split::Calibration => (calibration.push(row), 1),
                Split::Validation => (validation.push(row), 1),
            };
            let exported = match export.as_mut() {
                Some(export) => export.write(row, split, weight),
                None => Ok(()),
            };
            if let Err(error) = written.and(exported)
                && write_error.is_none()
            {
                write_error = Some(error);
            }
        },
    );
    drop(engine);
    let replay_seconds = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    if let Some(error) = write_error {
        return Err(error).context("failed to write a row of the replay to disk");
    }
    if let Some(export) = export {
        export.finish()?;
    }
    let (fit_rows, fit_rows_kept) = (sample.seen, sample.labels.len());
    let (calibration_rows, validation_rows) = (calibration.rows, validation.rows);
    if fit_rows_kept == 0 || validation_rows == 0 {
        bail!(
            "the time split leaves {fit_rows} fitting and {validation_rows} validation rows; both need some"
        );
    }

    let fit_started = std::time::Instant::now();
    let growing = spinner(
        request.show_progress,
        format!("growing the tree on {fit_rows_kept} rows"),
    );
    let fit_set = sample.into_dataset()?;
    let fitted = model::fit_tree(&fit_set, &request.options)?;
    growing.finish_and_clear();
    let fit_seconds = fit_started.elapsed().as_secs_f64();

    let calibration_started = std::time::Instant::now();
    let mut leaf_scores = Vec::with_capacity(calibration_rows);
    let mut calibration_labels = Vec::with_capacity(calibration_rows);
    calibration.read_back(|_, label, features| {
        leaf_scores.push(fitted.tree.leaf_probability(features));
        calibration_labels.push(label);
    })?;
    let mut model = fitted.calibrate(&leaf_scores, &calibration_labels, &request.options)?;
    drop((leaf_scores, calibration_labels));
    let calibration_seconds = calibration_started.elapsed().as_secs_f64();
    // The training distributions, for `describe` and the service's drift watch.
    model.profiles = Some(model::Profiles::of(&fit_set, &model));
    drop(fit_set);

    let validation_started = std::time::Instant::now();
    let truth = request.truth.as_deref().map(load_truth).transpose()?;
    let mut validation_scores = Vec::with_capacity(validation_rows);
    let mut validation_labels = Vec::with_capacity(validation_rows);
    let (mut oracle_scores, mut oracle_labels) = (Vec::new(), Vec::new());
    validation.read_back(|identity, label, features| {
        validation_scores.push(model.score(features));
        validation_labels.push(label);
        if let Some(&probability) = truth.as_ref().and_then(|truth| truth.get(&identity)) {
            oracle_scores.push(probability);
            oracle_labels.push(label);
        }
    })?;
    let validation_metrics = model::evaluate(&validation_scores, &validation_labels);
    let validation_seconds = validation_started.elapsed().as_secs_f64();
    let (oracle, oracle_rows) = match truth {
        Some(_) => {
            if oracle_scores.len() != validation_rows {
                eprintln!(
                    "warning: the truth file covers {} of {} validation rows",
                    oracle_scores.len(),
                    validation_rows
                );
            }
            (
                Some(model::evaluate(&oracle_scores, &oracle_labels)),
                Some(oracle_scores.len()),
            )
        }
        None => (None, None),
    };

    model.metrics = Some(validation_metrics.clone());
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
        scoring_points,
        fit_rows,
        fit_rows_kept,
        negative_weight,
        calibration_rows,
        validation_rows,
        split_at: format_time(split_at),
        calibration_from: format_time(cuts.calibration_from),
        data_span: (format_time(first), format_time(last)),
        feature_events_per_second: stats.events as f64 / replay_seconds.max(1e-9),
        replay_seconds,
        fit_seconds,
        calibration_seconds,
        validation_seconds,
        peak_resident_bytes: peak_resident_bytes(),
        auc_ratio_to_oracle: oracle
            .as_ref()
            .map(|oracle| validation_metrics.roc_auc / oracle.roc_auc),
        validation: validation_metrics,
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
        "split at {} (calibration from {}): {} fit, {} calibration, {} validation rows",
        report.split_at,
        report.calibration_from,
        report.fit_rows,
        report.calibration_rows,
        report.validation_rows,
    );
    if report.negative_weight > 1 {
        println!(
            "fit on {} of the {} fitting rows: every positive, one negative in {} (weighted {})",
            report.fit_rows_kept, report.fit_rows, report.negative_weight, report.negative_weight
        );
    }
    println!(
        "phases: replay {:.2} s, fit {:.2} s, calibration {:.2} s, validation {:.2} s; peak resident memory {}",
        report.replay_seconds,
        report.fit_seconds,
        report.calibration_seconds,
        report.validation_seconds,
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
    use crate::offline::model::TrainOptions;
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

    #[test]
    fn a_downsampled_fit_holds_out_every_row_and_keeps_up_with_a_full_fit() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("events.csv");
        crate::tools::generate::generate_files(1500, 7, 5, &events, None::<&Path>, false).unwrap();
        let request = |max_fit_rows: u64, export_features: Option<PathBuf>| TrainRequest {
            events: vec![events.clone()],
            model_out: dir.path().join(format!("model-{max_fit_rows}.json")),
            split_at: None,
            export_features,
            report_dir: None,
            truth: None,
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            options: TrainOptions::default(),
            max_fit_rows,
            show_progress: false,
        };
        let (full, _) = run(&request(0, None)).unwrap();
        assert_eq!(full.negative_weight, 1);
        assert_eq!(full.fit_rows_kept, full.fit_rows);
        assert!(full.fit_rows > 20_000, "{} fitting rows", full.fit_rows);

        let export = dir.path().join("sample.csv");
        let (sampled, model) =
            run(&request(full.fit_rows as u64 / 5, Some(export.clone()))).unwrap();
        assert!(sampled.negative_weight >= 5, "{}", sampled.negative_weight);
        // The same split, and the held-out rows are never downsampled.
        assert_eq!(
            (
                sampled.fit_rows,
                sampled.calibration_rows,
                sampled.validation_rows
            ),
            (full.fit_rows, full.calibration_rows, full.validation_rows)
        );
        assert!(sampled.fit_rows_kept < full.fit_rows / 3);
        // The tree stands for the whole fitting period, give or take the sampling.
        assert!(
            model.training_rows.abs_diff(full.fit_rows) * 10 < full.fit_rows,
            "{} rows stood for, {} fitting rows",
            model.training_rows,
            full.fit_rows
        );
        assert!(
            sampled.validation.roc_auc > full.validation.roc_auc - 0.02,
            "ROC-AUC {} sampled against {} full",
            sampled.validation.roc_auc,
            full.validation.roc_auc
        );
        assert!(
            sampled.validation.brier < full.validation.brier + 0.002,
            "Brier {} sampled against {} full",
            sampled.validation.brier,
            full.validation.brier
        );

        // The export is the weighted sample: every held-out row, the kept fitting rows, and
        // weights that add up to about the fitting period.
        let text = std::fs::read_to_string(&export).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(
            &header[..7],
            [
                "event_identity",
                "event_time",
                "user_id",
                "product_id",
                "split",
                "label",
                "weight"
            ]
        );
        let (mut kept, mut held_out, mut fit_weight) = (0, 0, 0u64);
        for line in lines {
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(fields.len(), 7 + FEATURE_COUNT);
            let weight: u64 = fields[6].parse().unwrap();
            if fields[4] == "fit" {
                kept += 1;
                fit_weight += weight;
                assert_eq!(
                    weight,
                    if fields[5] == "1" {
                        1
                    } else {
                        sampled.negative_weight
                    }
                );
            } else {
                held_out += 1;
                assert_eq!(weight, 1);
            }
        }
        assert_eq!(kept, sampled.fit_rows_kept);
        assert_eq!(held_out, sampled.calibration_rows + sampled.validation_rows);
        assert!(
            (fit_weight as f64 / full.fit_rows as f64 - 1.0).abs() < 0.1,
            "weights add up to {fit_weight} for {} rows",
            full.fit_rows
        );
    }
}
