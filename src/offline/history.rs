//! The history reader: REES46 CSV files of past events, read as one event-time-ordered stream
//! for training and the demo. Real files are not always sorted, so each file is checked first;
//! sorted files stream as they are, unsorted ones go through an external merge sort in bounded
//! memory. Bad rows are reported with their file and line and skipped.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indicatif::ProgressBar;
use propensity_actors::event::{CSV_HEADER, CsvEvents, Event, Millis, ParseError};

/// Events held in memory per sorted run while sorting an unsorted file.
const SORT_RUN_EVENTS: usize = 500_000;
/// One minute of event time.
const MINUTE: Millis = 60_000;
/// How many bad rows are printed before the rest are only counted.
const BAD_ROWS_SHOWN: u64 = 20;

/// What a first pass learned about one input file.
#[derive(Clone, Debug)]
pub struct FileSummary {
    pub path: PathBuf,
    pub rows: u64,
    pub bad_rows: u64,
    pub sorted: bool,
    pub first_time: Option<Millis>,
    pub last_time: Option<Millis>,
    pub bytes: u64,
    /// Scoring points (events other than purchases) per minute of event time, keyed by the
    /// minute's start: what lets training place its time cuts by rows before replaying.
    pub scoring_points_per_minute: BTreeMap<Millis, u64>,
}

/// The history files of a run: what a first pass learned about each, and their time span.
#[derive(Clone, Debug)]
pub struct HistoryFiles {
    pub files: Vec<FileSummary>,
}

impl HistoryFiles {
    /// Reads every file once: counts rows and bad rows, checks order and finds the time span.
    pub fn scan(paths: &[PathBuf]) -> Result<HistoryFiles> {
        Self::scan_showing(paths, &ProgressBar::hidden())
    }

    /// [`HistoryFiles::scan`], advancing `progress` by the bytes read.
    pub fn scan_showing(paths: &[PathBuf], progress: &ProgressBar) -> Result<HistoryFiles> {
        let files = paths
            .iter()
            .map(|path| scan_file(path, progress))
            .collect::<Result<Vec<_>>>()?;
        Ok(HistoryFiles { files })
    }

    /// Earliest and latest event time over every file.
    pub fn span(&self) -> Option<(Millis, Millis)> {
        let first = self.files.iter().filter_map(|file| file.first_time).min()?;
        let last = self.files.iter().filter_map(|file| file.last_time).max()?;
        Some((first, last))
    }

    /// Good rows over every file.
    pub fn rows(&self) -> u64 {
        self.files.iter().map(|file| file.rows).sum()
    }

    /// Bad rows over every file.
    pub fn bad_rows(&self) -> u64 {
        self.files.iter().map(|file| file.bad_rows).sum()
    }

    /// Bytes over every file, for progress bars.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|file| file.bytes).sum()
    }

    /// Scoring points per minute over every file, in time order.
    pub fn scoring_points_per_minute(&self) -> BTreeMap<Millis, u64> {
        let mut merged = BTreeMap::new();
        for file in &self.files {
            for (&minute, &count) in &file.scoring_points_per_minute {
                *merged.entry(minute).or_insert(0) += count;
            }
        }
        merged
    }
}

fn open(path: &Path) -> Result<CsvEvents<File>> {
    let file = File::open(path).with_context(|| format!("failed to open {}", path.display()))?;
    // `CsvEvents` buffers its reads itself.
    Ok(CsvEvents::new(file))
}

fn report_bad_row(path: &Path, error: &ParseError, bad_rows: u64) {
    if bad_rows <= BAD_ROWS_SHOWN {
        eprintln!("warning: skipping bad row in {}: {error}", path.display());
    } else if bad_rows == BAD_ROWS_SHOWN + 1 {
        eprintln!(
            "warning: more bad rows in {}; counting the rest silently",
            path.display()
        );
    }
}

/// A bad header means the file is not REES46 at all: that fails, where a bad row is skipped.
fn is_fatal(error: &ParseError) -> bool {
    matches!(error, ParseError::AtLine { source, .. } if matches!(**source, ParseError::Header { .. } | ParseError::Io { .. }))
}

fn scan_file(path: &Path, progress: &ProgressBar) -> Result<FileSummary> {
    let bytes = std::fs::metadata(path)
        .with_context(|| format!("failed to read {}", path.display()))?
        .len();
    let file = File::open(path).with_context(|| format!("failed to open {}", path.display()))?;
    let events = CsvEvents::new(progress.wrap_read(file));
    let mut summary = FileSummary {
        path: path.to_owned(),
        rows: 0,
        bad_rows: 0,
        sorted: true,
        first_time: None,
        last_time: None,
        bytes,
        scoring_points_per_minute: BTreeMap::new(),
    };
    let mut previous = Millis::MIN;
    for item in events {
        match item {
            Ok(event) => {
                summary.rows += 1;
                if event.event_type.is_scoring_point() {
                    *summary
                        .scoring_points_per_minute
                        .entry(event.time - event.time.rem_euclid(MINUTE))
                        .or_insert(0) += 1;
                }
                summary.sorted &= event.time >= previous;
                previous = event.time;
                summary.first_time = Some(
                    summary
                        .first_time
                        .map_or(event.time, |time| time.min(event.time)),
                );
                summary.last_time = Some(
                    summary
                        .last_time
                        .map_or(event.time, |time| time.max(event.time)),
                );
            }
            Err(error) if is_fatal(&error) => {
                return Err(anyhow::anyhow!("{}: {error}", path.display()));
            }
            Err(error) => {
                summary.bad_rows += 1;
                report_bad_row(path, &error, summary.bad_rows);
            }
        }
    }
    Ok(summary)
}

/// A stream of good events from one sorted source.
type Source = Box<dyn Iterator<Item = Event>>;

fn good_events(path: PathBuf) -> Result<Source> {
    let events = open(&path)?;
    // Bad rows were reported by the scan; here they are only skipped.
    Ok(Box::new(events.filter_map(Result::ok)))
}

/// Sorts one file in runs of bounded size spilled to `spill_dir`, returning the sorted runs.
fn sort_runs(path: &Path, spill_dir: &Path, run_counter: &mut usize) -> Result<Vec<Source>> {
    let mut runs = Vec::new();
    let mut buffer: Vec<Event> = Vec::with_capacity(SORT_RUN_EVENTS.min(1 << 16));
    let mut events = open(path)?.filter_map(Result::ok).peekable();
    while events.peek().is_some() {
        buffer.clear();
        buffer.extend(events.by_ref().take(SORT_RUN_EVENTS));
        // Stable: rows with equal times keep their file order.
        buffer.sort_by_key(|event| event.time);
        // Numbered across files: two unsorted inputs must not overwrite each other's runs.
        *run_counter += 1;
        let run_path = spill_dir.join(format!("run-{run_counter}.csv"));
        let mut writer = csv::Writer::from_writer(BufWriter::new(
            File::create(&run_path)
                .with_context(|| format!("failed to create {}", run_path.display()))?,
        ));
        writer.write_record(CSV_HEADER)?;
        for event in &buffer {
            event.write_csv(&mut writer)?;
        }
        writer.flush()?;
        runs.push(good_events(run_path)?);
    }
    Ok(runs)
}

/// The events of every history file in event-time order: a merge of sorted sources, where ties go
/// to the earlier source, so output is deterministic.
pub struct OrderedEvents {
    sources: Vec<Source>,
    heads: BinaryHeap<Reverse<(Millis, usize)>>,
    pending: Vec<Option<Event>>,
}

impl OrderedEvents {
    fn new(mut sources: Vec<Source>) -> Self {
        let mut heads = BinaryHeap::new();
        let mut pending = Vec::with_capacity(sources.len());
        for (index, source) in sources.iter_mut().enumerate() {
            let next = source.next();
            if let Some(event) = &next {
                heads.push(Reverse((event.time, index)));
            }
            pending.push(next);
        }
        OrderedEvents {
            sources,
            heads,
            pending,
        }
    }
}

impl Iterator for OrderedEvents {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        if let [source] = self.sources.as_mut_slice() {
            // One sorted file, the common case: nothing to merge.
            return self.pending[0].take().or_else(|| source.next());
        }
        let Reverse((_, index)) = self.heads.pop()?;
        let event = self.pending[index].take()?;
        let next = self.sources[index].next();
        if let Some(next_event) = &next {
            self.heads.push(Reverse((next_event.time, index)));
        }
        self.pending[index] = next;
        Some(event)
    }
}

/// Opens every file of the history as one event-time-ordered stream. Unsorted files are sorted
/// through run files in `spill_dir`, which must outlive the stream.
pub fn ordered_events(history: &HistoryFiles, spill_dir: &Path) -> Result<OrderedEvents> {
    let mut sources = Vec::new();
    let mut run_counter = 0;
    for file in &history.files {
        if file.sorted {
            sources.push(good_events(file.path.clone())?);
        } else {
            eprintln!(
                "note: {} is not in time order; sorting it in runs of {SORT_RUN_EVENTS} events",
                file.path.display()
            );
            sources.extend(sort_runs(&file.path, spill_dir, &mut run_counter)?);
        }
    }
    Ok(OrderedEvents::new(sources))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, rows: &[&str]) -> PathBuf {
        let path = dir.join(name);
        let mut text = CSV_HEADER.join(",");
        text.push('\n');
        for row in rows {
            text.push_str(row);
            text.push('\n');
        }
        std::fs::write(&path, text).unwrap();
        path
    }

    fn row(second: u32, product: u32) -> String {
        format!("2019-10-01 00:00:{second:02} UTC,view,{product},1,,,1.00,7,s")
    }

    #[test]
    fn merges_sorted_and_unsorted_files_in_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let sorted = write(dir.path(), "a.csv", &[&row(1, 1), &row(5, 2), &row(9, 3)]);
        let unsorted = write(
            dir.path(),
            "b.csv",
            &[&row(8, 4), "garbage", &row(2, 5), &row(5, 6)],
        );
        let also_unsorted = write(dir.path(), "c.csv", &[&row(7, 8), &row(3, 7)]);
        let history = HistoryFiles::scan(&[sorted, unsorted, also_unsorted]).unwrap();
        assert!(history.files[0].sorted);
        assert!(!history.files[1].sorted);
        assert_eq!(history.rows(), 8);
        assert_eq!(history.bad_rows(), 1);
        let (first, last) = history.span().unwrap();
        assert_eq!(last - first, 8_000);
        let spill = tempfile::tempdir().unwrap();
        let products: Vec<u64> = ordered_events(&history, spill.path())
            .unwrap()
            .map(|event| event.product_id)
            .collect();
        // Equal times keep the order of the files: product 2 (a.csv) before product 6 (b.csv).
        assert_eq!(products, vec![1, 5, 7, 2, 6, 8, 4, 3]);
    }

    #[test]
    fn one_sorted_file_streams_every_good_row_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let sorted = write(
            dir.path(),
            "a.csv",
            &[&row(1, 1), "garbage", &row(5, 2), &row(5, 3), &row(9, 4)],
        );
        let history = HistoryFiles::scan(&[sorted]).unwrap();
        assert!(history.files[0].sorted);
        let spill = tempfile::tempdir().unwrap();
        let products: Vec<u64> = ordered_events(&history, spill.path())
            .unwrap()
            .map(|event| event.product_id)
            .collect();
        assert_eq!(products, vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_file_that_is_not_rees46_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.csv");
        std::fs::write(&path, "a,b,c\n1,2,3\n").unwrap();
        let error = HistoryFiles::scan(&[path]).unwrap_err().to_string();
        assert!(error.contains("bad header"), "{error}");
    }
}
