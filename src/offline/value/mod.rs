//! Customer value: how many more purchases each customer will make and what they will spend on
//! each, from their purchase history alone, fitted offline (issue 18).
//!
//! Two classic probability models of the customer-base literature, fitted by maximum likelihood
//! on a calibration period and checked on a holdout period:
//!
//! - [`summary`]: per-customer summaries of purchases, counted in purchase days: frequency `x`,
//!   recency `t_x`, age `T` (weeks) and mean repeat spend.
//! - [`bgnbd`]: the BG/NBD model (Fader, Hardie and Lee 2005) of repeat purchases and dropout:
//!   the fit, `P(alive)`, expected purchases of a customer in the next `t` weeks and of a new one.
//! - [`gamma_gamma`]: the Gamma-Gamma model (Fader and Hardie 2013) of spend per purchase.
//! - [`input`]: purchases from REES46 event files or CDNOW files, and calendar days.
//! - [`fit`]: the `propensity value fit` command: read, summarise, fit, evaluate on the holdout,
//!   save the [`ValueModel`] and write the report ([`report`]).
//! - [`synthetic`]: customers drawn from the BG/NBD process, for the benchmark and tests.
//!
//! The likelihoods are maximised by argmin's L-BFGS over log-parameters (private `optimize`),
//! with analytic gradients; statrs supplies `ln Gamma` and digamma.

pub mod bgnbd;
mod error;
pub mod fit;
pub mod gamma_gamma;
pub mod input;
mod optimize;
pub mod report;
pub mod segments;
pub mod summary;
pub mod synthetic;

use std::path::Path;

use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

pub use bgnbd::{BgNbdFit, BgNbdParams};
pub use error::{CdnowLineError, ValueError};
pub use gamma_gamma::{GammaGammaFit, GammaGammaParams};
pub use summary::{CustomerSummary, Purchase, RepeatHistory};

/// The unit of every time in a value model.
pub const TIME_UNIT: &str = "weeks";

/// The horizon of the predictions, in days.
pub const HORIZON_DAYS: f64 = 90.0;

/// A customer's predicted value.
#[derive(Clone, Debug, PartialEq)]
pub struct PredictedValue {
    /// Probability that the customer is still a customer (BG/NBD).
    pub p_alive: f64,
    /// Purchase days expected in the next 90 days (BG/NBD, eq. 10).
    pub expected_purchases_90d: f64,
    /// Expected spend of one purchase day (Gamma-Gamma); `None` when the model has no spend fit.
    pub expected_spend_per_purchase: Option<f64>,
    /// The two multiplied; `None` without a spend fit.
    pub predicted_value_90d: Option<f64>,
    /// The history the models saw: repeat purchase days, and weeks from the first purchase day to
    /// the latest one and to now.
    pub frequency: u32,
    pub recency_weeks: f64,
    pub age_weeks: f64,
    pub model_version: String,
}

/// The fitted customer-value models, stored as JSON.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ValueModel {
    /// `value-<unix seconds>-<8 hex digits of a hash of everything fitted>`: refitting the same
    /// data gives the same suffix.
    pub version: String,
    /// When the model was fitted (RFC 3339, UTC).
    pub fitted_at: String,
    /// The unit of recency, age and the BG/NBD rate: always [`TIME_UNIT`].
    pub time_unit: String,
    /// The earliest first purchase of the calibrated customers (`YYYY-MM-DD`).
    pub calibration_start: String,
    /// The last day of the calibration period, inclusive (`YYYY-MM-DD`).
    pub calibration_end: String,
    /// Customers whose first purchase falls in the calibration period: BG/NBD's data.
    pub customers: u64,
    /// Of those, customers with at least one repeat purchase in the calibration period.
    pub repeat_customers: u64,
    /// The BG/NBD fit.
    pub bgnbd: BgNbdFit,
    /// The Gamma-Gamma fit on the repeat customers with a positive mean repeat spend; `None` when
    /// there were none.
    pub gamma_gamma: Option<GammaGammaFit>,
    /// Seconds the two fits took (summaries and grouping included, reading excluded).
    pub fit_seconds: f64,
}

impl ValueModel {
    /// Builds a model from its fits, stamping the time and a content-derived version.
    pub fn assemble(
        calibration_start: String,
        calibration_end: String,
        customers: u64,
        repeat_customers: u64,
        bgnbd: BgNbdFit,
        gamma_gamma: Option<GammaGammaFit>,
        fit_seconds: f64,
    ) -> Result<ValueModel, ValueError> {
        let now = Utc::now();
        let content = serde_json::to_vec(&(
            TIME_UNIT,
            &calibration_start,
            &calibration_end,
            customers,
            repeat_customers,
            &bgnbd,
            &gamma_gamma,
        ))
        .map_err(ValueError::Serialize)?;
        Ok(ValueModel {
            version: format!(
                "value-{}-{:08x}",
                now.timestamp(),
                crate::offline::model::content_hash(&content)
            ),
            fitted_at: now.to_rfc3339_opts(SecondsFormat::Secs, true),
            time_unit: TIME_UNIT.to_string(),
            calibration_start,
            calibration_end,
            customers,
            repeat_customers,
            bgnbd,
            gamma_gamma,
            fit_seconds,
        })
    }

    /// What the models predict for a customer with this history (in weeks) and mean repeat
    /// spend, over the next [`HORIZON_DAYS`].
    pub fn predict(
        &self,
        history: RepeatHistory,
        mean_repeat_spend: Option<f64>,
    ) -> PredictedValue {
        let bgnbd = &self.bgnbd.params;
        let expected_purchases_90d =
            bgnbd.conditional_expected_purchases(HORIZON_DAYS / summary::DAYS_PER_WEEK, history);
        let expected_spend_per_purchase = self.gamma_gamma.as_ref().map(|fit| {
            fit.params
                .conditional_expected_spend(history.frequency, mean_repeat_spend.unwrap_or(0.0))
        });
        PredictedValue {
            p_alive: bgnbd.probability_alive(history),
            expected_purchases_90d,
            expected_spend_per_purchase,
            predicted_value_90d: expected_spend_per_purchase
                .map(|spend| spend * expected_purchases_90d),
            frequency: history.frequency,
            recency_weeks: history.recency,
            age_weeks: history.age,
            model_version: self.version.clone(),
        }
    }

    /// Reads a model saved by [`ValueModel::save`].
    pub fn load(path: impl AsRef<Path>) -> Result<ValueModel, ValueError> {
        read_json(path.as_ref())
    }

    /// Writes the model as pretty JSON (see [`write_json`]).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), ValueError> {
        write_json(self, path.as_ref())
    }
}

/// Reads a model file written by [`write_json`].
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ValueError> {
    let text = std::fs::read_to_string(path).map_err(|source| ValueError::Io {
        operation: "read",
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ValueError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `value` as pretty JSON, through a sibling `<path>.tmp` renamed over `path` so that a
/// reader (the service's hot reload) never sees half a file; creates the directory when missing.
pub(crate) fn write_json<T: Serialize>(value: &T, path: &Path) -> Result<(), ValueError> {
    let json = serde_json::to_vec_pretty(value).map_err(ValueError::Serialize)?;
    crate::offline::write_replacing(path, &json).map_err(|(operation, path, source)| {
        ValueError::Io {
            operation,
            path,
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fits() -> (BgNbdFit, Option<GammaGammaFit>) {
        let bgnbd = BgNbdFit {
            params: BgNbdParams {
                r: 0.24,
                alpha: 4.4,
                a: 0.79,
                b: 2.4,
            },
            log_likelihood: -9582.4,
            customers: 2357,
            distinct_histories: 900,
            iterations: 30,
            evaluations: 35,
        };
        let gamma_gamma = GammaGammaFit {
            params: GammaGammaParams {
                p: 6.25,
                q: 3.74,
                gamma: 15.44,
            },
            log_likelihood: -4000.0,
            customers: 946,
            iterations: 20,
            evaluations: 22,
        };
        (bgnbd, Some(gamma_gamma))
    }

    fn model(customers: u64) -> ValueModel {
        let (bgnbd, gamma_gamma) = fits();
        ValueModel::assemble(
            "1997-01-01".into(),
            "1997-09-30".into(),
            customers,
            946,
            bgnbd,
            gamma_gamma,
            0.5,
        )
        .unwrap()
    }

    #[test]
    fn version_is_stamped_from_time_and_content() {
        let first = model(2357);
        let parts: Vec<&str> = first.version.split('-').collect();
        assert_eq!(parts.len(), 3, "{}", first.version);
        assert_eq!(parts[0], "value");
        let seconds: i64 = parts[1].parse().unwrap();
        assert!((Utc::now().timestamp() - seconds).abs() < 60);
        assert_eq!(parts[2].len(), 8);
        assert!(parts[2].chars().all(|c| c.is_ascii_hexdigit()));
        // Same content, same suffix; other content, another suffix.
        assert_eq!(model(2357).version[17..], first.version[17..]);
        assert_ne!(model(2358).version[17..], first.version[17..]);
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        // A directory that does not exist yet is created.
        let path = dir.path().join("new").join("value.json");
        let saved = model(2357);
        saved.save(&path).unwrap();
        assert_eq!(ValueModel::load(&path).unwrap(), saved);
        assert!(!dir.path().join("new").join("value.json.tmp").exists());
        std::fs::write(&path, "{\"version\": 3}").unwrap();
        let error = ValueModel::load(&path).unwrap_err().to_string();
        assert!(error.contains("invalid value model file"), "{error}");
    }
}
