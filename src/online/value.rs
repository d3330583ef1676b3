//! The customer-value model in service (`[value]`, issue 18): each shopper's predicted value,
//! computed when it is read from the purchase days their user actor keeps
//! ([`propensity_actors::features::PurchaseDays`]), with the BG/NBD and Gamma-Gamma fits of
//! `propensity value fit`. Nothing is computed on the actor path: the actor counts purchase days
//! as it applies purchases, and a read evaluates the model, so a new purchase shows in the next
//! read and a reloaded model in the next read too.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use propensity_actors::event::Millis;
use propensity_actors::features::{DAY_MILLIS, PurchaseDays};

use crate::offline::value::segments::SegmentModel;
use crate::offline::value::summary::DAYS_PER_WEEK;
use crate::offline::value::{PredictedValue, RepeatHistory, ValueError, ValueModel};

/// The shopper's predicted value at event time `now`; `None` before their first purchase (the
/// models describe customers from their first purchase on).
pub fn predict(model: &ValueModel, days: &PurchaseDays, now: Millis) -> Option<PredictedValue> {
    let first_day = days.first_day?;
    let today = now.div_euclid(DAY_MILLIS).max(days.last_day);
    let history = RepeatHistory {
        frequency: days.repeat_days,
        recency: (days.last_day - first_day) as f64 / DAYS_PER_WEEK,
        age: (today - first_day) as f64 / DAYS_PER_WEEK,
    };
    Some(model.predict(history, days.mean_repeat_spend()))
}

/// A model file the service follows: the customer-value model or the segments.
pub trait ModelFile: Send + Sync + Sized + 'static {
    /// What it is called in logs.
    const WHAT: &'static str;
    fn load(path: &Path) -> Result<Self, ValueError>;
    fn version(&self) -> &str;
}

impl ModelFile for ValueModel {
    const WHAT: &'static str =
        "customer-value model (value.model_path; fit one with `propensity value fit`)";
    fn load(path: &Path) -> Result<Self, ValueError> {
        ValueModel::load(path)
    }
    fn version(&self) -> &str {
        &self.version
    }
}

impl ModelFile for SegmentModel {
    const WHAT: &'static str =
        "customer segments (segments.model_path; fit them with `propensity segments fit`)";
    fn load(path: &Path) -> Result<Self, ValueError> {
        SegmentModel::load(path)
    }
    fn version(&self) -> &str {
        &self.version
    }
}

/// The model of a file in service, if any, swapped whole when the file changes.
pub struct ModelSlot<T>(Arc<ArcSwapOption<T>>);

impl<T> Clone for ModelSlot<T> {
    fn clone(&self) -> Self {
        ModelSlot(self.0.clone())
    }
}

impl<T> Default for ModelSlot<T> {
    fn default() -> Self {
        ModelSlot(Arc::new(ArcSwapOption::empty()))
    }
}

/// Whether the segments in service were fitted on the customer-value model in service. Segments
/// cluster one value model's predictions; after the value model is refitted, shoppers are still
/// assigned by the old centroids until the segments are fitted again. Each slot reports its loads
/// here; a mismatch is logged and `propensity_segments_value_model_match` drops to 0.
#[derive(Clone)]
pub struct Pairing {
    versions: Arc<std::sync::Mutex<(Option<String>, Option<String>)>>,
    gauge: prometheus::IntGauge,
}

impl Pairing {
    /// Nothing loaded yet; `gauge` is set on every load.
    pub fn new(gauge: prometheus::IntGauge) -> Pairing {
        gauge.set(0);
        Pairing {
            versions: Arc::default(),
            gauge,
        }
    }

    /// A customer-value model of `version` went into service.
    pub fn value_loaded(&self, version: &str) {
        self.versions.lock().expect("pairing lock").0 = Some(version.to_owned());
        self.check();
    }

    /// Segments fitted on the value model `fitted_on` went into service.
    pub fn segments_loaded(&self, fitted_on: &str) {
        self.versions.lock().expect("pairing lock").1 = Some(fitted_on.to_owned());
        self.check();
    }

    /// Whether both are in service and match.
    pub fn matches(&self) -> bool {
        self.gauge.get() == 1
    }

    fn check(&self) {
        let versions = self.versions.lock().expect("pairing lock");
        let (Some(value), Some(fitted_on)) = &*versions else {
            self.gauge.set(0);
            return;
        };
        if value == fitted_on {
            self.gauge.set(1);
        } else {
            self.gauge.set(0);
            tracing::warn!(
                value_model = %value,
                segments_fitted_on = %fitted_on,
                "the segments in service were fitted on another customer-value model: shoppers are assigned by its centroids until `propensity segments fit` runs on the model in service"
            );
        }
    }
}

/// The customer-value model in service.
pub type ValueSlot = ModelSlot<ValueModel>;
/// The segments in service.
pub type SegmentSlot = ModelSlot<SegmentModel>;

impl<T: ModelFile> ModelSlot<T> {
    /// The model now.
    pub fn current(&self) -> Option<Arc<T>> {
        self.0.load_full()
    }

    /// Loads the model at `path`, and with a reload interval keeps checking the file on the
    /// current actix system: a newer version replaces the one in service (and `on_load` hears
    /// of it), a missing or bad file keeps it and is reported. An empty path leaves the slot
    /// empty.
    pub fn watch(
        path: &Path,
        reload_interval_seconds: u64,
        on_load: impl Fn(&T) + Send + 'static,
    ) -> ModelSlot<T> {
        let slot = ModelSlot::default();
        if path.as_os_str().is_empty() {
            return slot;
        }
        let mut watch = Watch {
            path: path.to_owned(),
            modified: None,
            slot: slot.clone(),
            on_load: Box::new(on_load),
        };
        watch.reload_if_changed();
        if slot.current().is_none() {
            tracing::warn!(path = %path.display(), "no {} yet: the field stays null until there is one", T::WHAT);
        }
        if reload_interval_seconds > 0 {
            let interval = Duration::from_secs(reload_interval_seconds);
            actix_rt::spawn(async move {
                loop {
                    actix_rt::time::sleep(interval).await;
                    watch.reload_if_changed();
                }
            });
        }
        slot
    }
}

/// How a slot follows its file.
struct Watch<T> {
    path: PathBuf,
    modified: Option<SystemTime>,
    slot: ModelSlot<T>,
    on_load: Box<dyn Fn(&T) + Send>,
}

impl<T: ModelFile> Watch<T> {
    fn reload_if_changed(&mut self) {
        let modified = std::fs::metadata(&self.path)
            .and_then(|meta| meta.modified())
            .ok();
        if modified.is_none() || modified == self.modified {
            return;
        }
        match T::load(&self.path) {
            Ok(model) => {
                self.modified = modified;
                let current = self.slot.current();
                if current.as_ref().map(|model| model.version()) != Some(model.version()) {
                    tracing::info!(version = %model.version(), "{} in service", T::WHAT);
                    (self.on_load)(&model);
                    self.slot.0.store(Some(Arc::new(model)));
                }
            }
            Err(error) => tracing::warn!(
                %error,
                path = %self.path.display(),
                "{} not loaded; keeping the current one",
                T::WHAT
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_match_the_value_model_they_were_fitted_on_only() {
        let pairing = Pairing::new(prometheus::IntGauge::new("pairing", "test").unwrap());
        assert!(!pairing.matches(), "nothing in service");
        pairing.value_loaded("value-a");
        assert!(!pairing.matches(), "no segments yet");
        pairing.segments_loaded("value-a");
        assert!(pairing.matches());
        pairing.value_loaded("value-b");
        assert!(!pairing.matches(), "the value model was refitted");
        pairing.segments_loaded("value-b");
        assert!(pairing.matches(), "and the segments after it");
    }
    use crate::offline::value::summary::{Periods, Purchase, summarize};
    use crate::offline::value::{BgNbdFit, BgNbdParams, GammaGammaFit, GammaGammaParams};

    /// A model with CDNOW's published parameters.
    fn model() -> ValueModel {
        let bgnbd = BgNbdFit {
            params: BgNbdParams {
                r: 0.243,
                alpha: 4.414,
                a: 0.793,
                b: 2.426,
            },
            log_likelihood: 0.0,
            customers: 0,
            distinct_histories: 0,
            iterations: 0,
            evaluations: 0,
        };
        let gamma_gamma = GammaGammaFit {
            params: GammaGammaParams {
                p: 6.25,
                q: 3.74,
                gamma: 15.44,
            },
            log_likelihood: 0.0,
            customers: 0,
            iterations: 0,
            evaluations: 0,
        };
        ValueModel::assemble(
            "1997-01-01".into(),
            "1997-09-30".into(),
            0,
            0,
            bgnbd,
            Some(gamma_gamma),
            0.0,
        )
        .unwrap()
    }

    /// The live value equals what the offline summary gives for the same purchases, with the
    /// calibration period ending today.
    #[test]
    fn the_live_value_is_the_offline_summarys() {
        let model = model();
        let purchases = [(10, 1.0), (10, 1.5), (17, 5.0), (17, 3.0), (24, 2.0)];
        let mut days = PurchaseDays::default();
        for (day, amount) in purchases {
            days.record(day * DAY_MILLIS + 1_000, amount);
        }
        let now = 40 * DAY_MILLIS + 5_000;
        let live = predict(&model, &days, now).unwrap();
        let mut offline: Vec<Purchase> = purchases
            .iter()
            .map(|(day, amount)| Purchase {
                customer_id: 1,
                day: *day,
                amount: *amount,
            })
            .collect();
        let summary = &summarize(
            &mut offline,
            Periods {
                calibration_end: 40,
                holdout_end: None,
            },
        )[0];
        let params = model.bgnbd.params;
        assert_eq!(live.frequency, summary.frequency);
        assert_eq!(live.recency_weeks, summary.recency);
        assert_eq!(live.age_weeks, summary.age);
        assert_eq!(live.p_alive, params.probability_alive(summary.history()));
        assert_eq!(
            live.expected_purchases_90d,
            params.conditional_expected_purchases(90.0 / 7.0, summary.history())
        );
        let spend = model
            .gamma_gamma
            .as_ref()
            .unwrap()
            .params
            .conditional_expected_spend(summary.frequency, summary.mean_repeat_spend.unwrap());
        assert_eq!(live.expected_spend_per_purchase, Some(spend));
        assert_eq!(
            live.predicted_value_90d,
            Some(spend * live.expected_purchases_90d)
        );
        assert!(live.p_alive > 0.0 && live.p_alive < 1.0);
    }

    #[test]
    fn no_value_before_the_first_purchase_and_a_new_customers_after_it() {
        let model = model();
        let mut days = PurchaseDays::default();
        assert_eq!(predict(&model, &days, 0), None);
        days.record(3 * DAY_MILLIS, 20.0);
        let value = predict(&model, &days, 3 * DAY_MILLIS).unwrap();
        assert_eq!(value.p_alive, 1.0);
        assert_eq!(
            value.expected_purchases_90d,
            model.bgnbd.params.expected_purchases(90.0 / 7.0)
        );
        // Without a repeat purchase, the spend expected is the population's mean.
        let mean = model.gamma_gamma.as_ref().unwrap().params.mean_spend();
        assert!((value.expected_spend_per_purchase.unwrap() - mean).abs() < 1e-9);
    }
}
