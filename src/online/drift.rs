//! The drift watch: how far the live distribution of every scored feature, and of the
//! propensity, has moved from the training distribution stored in the model, as a population
//! stability index (PSI) over a sliding window of wall-clock time.
//!
//! Every score counts its feature values into the bins of the model's profiles, in the window's
//! current slot; the PSI is computed when /metrics is read, so scoring pays for a few counter
//! increments and nothing else. Each slot is striped by thread: every HTTP worker counts under a
//! lock of its own, so one worker never waits for another (which a preempted holder would make
//! a wait of a whole time slice). A model reload starts a new window on the new model's bins.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::DriftSettings;
use crate::offline::model::{Model, Profile};
use arc_swap::ArcSwapOption;

/// One slot of the window: the counts per bin of every profile, in the slot of time `epoch`.
struct Slot {
    epoch: u64,
    counts: Vec<u64>,
}

/// The window of one model: its profiles, where each profile's bins start in a slot's counts,
/// and the slots, [`STRIPES`] per slot of time (stripe-major: `stripe * slots + slot`).
struct Window {
    names: Vec<String>,
    profiles: Vec<Profile>,
    offsets: Vec<usize>,
    stripes: Vec<Mutex<Slot>>,
}

impl Window {
    /// Slots of time in the window.
    fn slots(&self) -> usize {
        self.stripes.len() / STRIPES
    }
}

/// Stripes per slot of time: threads beyond this many share them.
const STRIPES: usize = 8;

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static STRIPE: usize = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
}

/// The PSI of one feature (or `propensity`) over the window.
#[derive(Clone, Debug, PartialEq)]
pub struct Drift {
    pub feature: String,
    pub psi: f64,
}

/// Counts live values against the model in service's training distributions.
pub struct DriftWatch {
    settings: DriftSettings,
    window: ArcSwapOption<Window>,
}

impl DriftWatch {
    /// A watch with no model yet.
    pub fn new(settings: DriftSettings) -> DriftWatch {
        DriftWatch {
            settings,
            window: ArcSwapOption::empty(),
        }
    }

    /// Starts a new window on `model`'s profiles; a model without them turns the watch off.
    pub fn start_window(&self, model: &Model) {
        let Some(profiles) = &model.profiles else {
            tracing::warn!(
                version = %model.version,
                "the model has no training distributions: drift watch off until a model trained by this version"
            );
            self.window.store(None);
            return;
        };
        let mut names = model.feature_names.clone();
        names.push("propensity".to_owned());
        let mut all: Vec<Profile> = profiles.features.clone();
        all.push(profiles.propensity.clone());
        let mut offsets = Vec::with_capacity(all.len());
        let mut width = 0;
        for profile in &all {
            offsets.push(width);
            width += profile.bin_shares.len();
        }
        let slots = self.settings.slots.max(1) as usize;
        let stripes = (0..slots * STRIPES)
            .map(|_| {
                Mutex::new(Slot {
                    epoch: 0,
                    counts: vec![0; width],
                })
            })
            .collect();
        self.window.store(Some(Arc::new(Window {
            names,
            profiles: all,
            offsets,
            stripes,
        })));
    }

    fn slot_seconds(&self) -> u64 {
        (self.settings.window_seconds / self.settings.slots.max(1)).max(1)
    }

    fn epoch_now(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs())
            / self.slot_seconds()
    }

    /// Counts one scored vector and its propensity.
    pub fn record(&self, features: &[f64], propensity: f64) {
        self.record_all(std::iter::once((features, propensity)));
    }

    /// Counts scored vectors and their propensities: one clock read and one lock for them all.
    pub fn record_all<'a>(&self, scored: impl IntoIterator<Item = (&'a [f64], f64)>) {
        self.record_at(self.epoch_now(), scored);
    }

    fn record_at<'a>(&self, epoch: u64, scored: impl IntoIterator<Item = (&'a [f64], f64)>) {
        let guard = self.window.load();
        let Some(window) = guard.as_ref() else {
            return;
        };
        let stripe = STRIPE.with(|stripe| *stripe);
        let slots = window.slots();
        let slot = &window.stripes[stripe * slots + (epoch % slots as u64) as usize];
        let mut slot = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.epoch != epoch {
            slot.epoch = epoch;
            slot.counts.fill(0);
        }
        for (features, propensity) in scored {
            if features.len() + 1 != window.profiles.len() {
                continue;
            }
            let values = features.iter().chain(std::iter::once(&propensity));
            for ((profile, &offset), &value) in
                window.profiles.iter().zip(&window.offsets).zip(values)
            {
                slot.counts[offset + profile.bin(value)] += 1;
            }
        }
    }

    /// Scores in the window and the PSI of every feature and of the propensity; no PSI while
    /// the window holds fewer than `min_rows` scores or no model with profiles is in service.
    pub fn drifts(&self) -> (u64, Vec<Drift>) {
        self.drifts_at(self.epoch_now())
    }

    fn drifts_at(&self, epoch: u64) -> (u64, Vec<Drift>) {
        let guard = self.window.load();
        let Some(window) = guard.as_ref() else {
            return (0, Vec::new());
        };
        let oldest = epoch.saturating_sub(window.slots() as u64 - 1);
        let width = window.offsets.last().copied().unwrap_or(0)
            + window
                .profiles
                .last()
                .map_or(0, |profile| profile.bin_shares.len());
        let mut counts = vec![0u64; width];
        for slot in &window.stripes {
            let slot = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if (oldest..=epoch).contains(&slot.epoch) {
                for (total, count) in counts.iter_mut().zip(&slot.counts) {
                    *total += count;
                }
            }
        }
        // Every score adds one count to each profile, so any profile's total is the row count.
        let propensity = window.profiles.len() - 1;
        let rows: u64 = counts[window.offsets[propensity]..].iter().sum();
        if rows < self.settings.min_rows.max(1) {
            return (rows, Vec::new());
        }
        let drifts = window
            .profiles
            .iter()
            .zip(&window.offsets)
            .zip(&window.names)
            .filter_map(|((profile, &offset), name)| {
                let psi = profile.psi(&counts[offset..offset + profile.bin_shares.len()])?;
                Some(Drift {
                    feature: name.clone(),
                    psi,
                })
            })
            .collect();
        (rows, drifts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offline::model::{Dataset, TrainOptions, train};
    use ndarray::Array2;

    /// A model on two features: `signal` decides the label, `noise` is uniform on 0..100.
    fn model() -> Model {
        let rows = 2000;
        let mut values = Vec::with_capacity(rows * 2);
        let mut labels = Vec::with_capacity(rows);
        for row in 0..rows {
            values.push((row % 10) as f64);
            values.push((row * 37 % 100) as f64);
            labels.push(row % 10 >= 7);
        }
        let set = Dataset::new(
            Array2::from_shape_vec((rows, 2), values).unwrap(),
            labels,
            vec!["signal".into(), "noise".into()],
        );
        train(&set, &set, &TrainOptions::default()).unwrap()
    }

    fn watch(min_rows: u64) -> DriftWatch {
        DriftWatch::new(DriftSettings {
            window_seconds: 600,
            slots: 10,
            min_rows,
        })
    }

    fn psi_of(drifts: &[Drift], feature: &str) -> f64 {
        drifts
            .iter()
            .find(|drift| drift.feature == feature)
            .unwrap_or_else(|| panic!("no PSI for {feature}: {drifts:?}"))
            .psi
    }

    #[test]
    fn live_data_like_training_has_a_small_psi_and_a_shift_a_large_one() {
        let model = model();
        let watch = watch(100);
        watch.start_window(&model);
        for row in 0..1000u64 {
            let features = [(row % 10) as f64, (row * 37 % 100) as f64 + 60.0];
            watch.record_at(5, [(&features[..], model.score(&features))]);
        }
        let (rows, drifts) = watch.drifts_at(5);
        assert_eq!(rows, 1000);
        assert_eq!(drifts.len(), 3, "two features and the propensity");
        assert!(psi_of(&drifts, "signal") < 0.01, "{drifts:?}");
        assert!(psi_of(&drifts, "propensity") < 0.01, "{drifts:?}");
        assert!(psi_of(&drifts, "noise") > 0.2, "{drifts:?}");
    }

    #[test]
    fn the_window_slides_and_a_reload_starts_a_new_one() {
        let model = model();
        let watch = watch(10);
        watch.start_window(&model);
        for _ in 0..20 {
            watch.record_at(100, [(&[1.0, 1.0][..], 0.1)]);
        }
        assert_eq!(watch.drifts_at(100).0, 20);
        assert_eq!(watch.drifts_at(109).0, 20, "still inside ten slots");
        assert_eq!(watch.drifts_at(110).0, 0, "slid out");
        assert!(watch.drifts_at(110).1.is_empty(), "too few rows for a PSI");
        for _ in 0..20 {
            watch.record_at(110, [(&[1.0, 1.0][..], 0.1)]);
        }
        assert_eq!(
            watch.drifts_at(110).0,
            20,
            "the reused slot was cleared first"
        );
        watch.start_window(&model);
        assert_eq!(watch.drifts_at(110).0, 0);
        let mut old = model.clone();
        old.profiles = None;
        watch.start_window(&old);
        watch.record_at(110, [(&[1.0, 1.0][..], 0.1)]);
        assert_eq!(
            watch.drifts_at(110),
            (0, Vec::new()),
            "no profiles, no watch"
        );
    }

    #[test]
    fn counts_of_every_thread_add_up_and_slide_together() {
        let model = model();
        let watch = watch(10);
        watch.start_window(&model);
        std::thread::scope(|scope| {
            for thread in 0..(STRIPES as u64 + 3) {
                let watch = &watch;
                scope.spawn(move || {
                    let rows = vec![(&[1.0, 1.0][..], 0.1); 10 + thread as usize];
                    watch.record_at(100, rows);
                });
            }
        });
        let threads = STRIPES as u64 + 3;
        let expected: u64 = (0..threads).map(|thread| 10 + thread).sum();
        assert_eq!(
            watch.drifts_at(100).0,
            expected,
            "every stripe is summed, shared ones too"
        );
        watch.record_at(110, [(&[1.0, 1.0][..], 0.1)]);
        assert_eq!(
            watch.drifts_at(110).0,
            1,
            "each stripe's slot slid out on its own"
        );
    }
}
