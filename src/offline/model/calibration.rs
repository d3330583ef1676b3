//! The calibration map from an uncalibrated leaf score to a probability: identity, or an
//! isotonic (pool-adjacent-violators) map fitted on held-out rows, validated when loaded. Training
//! fits it (see the training module for why isotonic); scoring applies it on every request.

use serde::{Deserialize, Serialize};

use super::error::ModelError;

/// Maps an uncalibrated leaf score to a calibrated probability.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(
    tag = "method",
    rename_all = "snake_case",
    try_from = "CalibrationRepr"
)]
pub enum Calibration {
    /// Leaf probabilities are used as they are (hand-built or uncalibrated models).
    Identity,
    /// A non-decreasing piecewise-linear map through the points `(scores[i], probabilities[i])`,
    /// fitted by isotonic regression; constant beyond the first and last score.
    Isotonic {
        /// Distinct leaf scores seen in the calibration rows, strictly increasing.
        scores: Vec<f64>,
        /// Calibrated probability at each score, non-decreasing, in `[0, 1]`.
        probabilities: Vec<f64>,
        /// Number of calibration rows the map was fitted on.
        rows: usize,
    },
}

/// The unchecked wire form of [`Calibration`], validated by `TryFrom`.
#[derive(Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
enum CalibrationRepr {
    Identity,
    Isotonic {
        scores: Vec<f64>,
        probabilities: Vec<f64>,
        rows: usize,
    },
}

impl TryFrom<CalibrationRepr> for Calibration {
    type Error = ModelError;

    fn try_from(repr: CalibrationRepr) -> Result<Self, Self::Error> {
        let calibration = match repr {
            CalibrationRepr::Identity => Calibration::Identity,
            CalibrationRepr::Isotonic {
                scores,
                probabilities,
                rows,
            } => Calibration::Isotonic {
                scores,
                probabilities,
                rows,
            },
        };
        calibration.validate()?;
        Ok(calibration)
    }
}

impl Calibration {
    /// Fits an isotonic map from `scores` (uncalibrated leaf probabilities) to `labels`.
    ///
    /// Rows are grouped by identical score; each group's positive rate is smoothed with the
    /// m-estimate toward the overall rate of `labels` and weighted by `rows + m`, then
    /// pool-adjacent-violators makes the sequence non-decreasing.
    pub fn fit_isotonic(scores: &[f64], labels: &[bool], smoothing: f64) -> Calibration {
        debug_assert_eq!(scores.len(), labels.len());
        let positives = labels.iter().filter(|&&label| label).count();
        let prior = positives as f64 / labels.len().max(1) as f64;
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));

        let mut group_scores: Vec<f64> = Vec::new();
        let mut group_counts: Vec<(f64, f64)> = Vec::new();
        for &row in &order {
            let label = f64::from(u8::from(labels[row]));
            if group_scores.last() == Some(&scores[row]) {
                let last = group_counts.last_mut().expect("groups are pushed in pairs");
                last.0 += label;
                last.1 += 1.0;
            } else {
                group_scores.push(scores[row]);
                group_counts.push((label, 1.0));
            }
        }
        let (values, weights): (Vec<f64>, Vec<f64>) = group_counts
            .iter()
            .map(|&(group_positives, group_rows)| {
                (
                    (group_positives + smoothing * prior) / (group_rows + smoothing),
                    group_rows + smoothing,
                )
            })
            .unzip();
        Calibration::Isotonic {
            scores: group_scores,
            probabilities: pool_adjacent_violators(&values, &weights),
            rows: scores.len(),
        }
    }

    /// The calibrated probability for an uncalibrated score; never allocates.
    ///
    /// Between two fitted scores (a leaf that no calibration row reached) it interpolates
    /// linearly, which keeps the map monotone. Malformed hand-built maps degrade instead of
    /// panicking: an empty map returns the score clamped to `[0, 1]`.
    #[inline]
    pub fn apply(&self, score: f64) -> f64 {
        match self {
            Calibration::Identity => score,
            Calibration::Isotonic {
                scores,
                probabilities,
                ..
            } => {
                let len = scores.len().min(probabilities.len());
                let (scores, probabilities) = (&scores[..len], &probabilities[..len]);
                if len == 0 {
                    return score.clamp(0.0, 1.0);
                }
                let upper = scores.partition_point(|&knot| knot < score);
                if upper == 0 {
                    return probabilities[0];
                }
                if upper == len {
                    return probabilities[len - 1];
                }
                if scores[upper] == score {
                    return probabilities[upper];
                }
                let (x0, x1) = (scores[upper - 1], scores[upper]);
                let (y0, y1) = (probabilities[upper - 1], probabilities[upper]);
                y0 + (y1 - y0) * (score - x0) / (x1 - x0)
            }
        }
    }

    /// Checks that an isotonic map is well-formed: equal non-zero lengths, strictly increasing
    /// finite scores, non-decreasing probabilities in `[0, 1]`.
    pub fn validate(&self) -> Result<(), ModelError> {
        let Calibration::Isotonic {
            scores,
            probabilities,
            ..
        } = self
        else {
            return Ok(());
        };
        let invalid = |message: &str| Err(ModelError::InvalidModel(message.into()));
        if scores.is_empty() || scores.len() != probabilities.len() {
            return invalid(
                "isotonic calibration needs as many probabilities as scores, at least one",
            );
        }
        if scores.iter().any(|score| !score.is_finite())
            || scores.windows(2).any(|pair| pair[0] >= pair[1])
        {
            return invalid("isotonic calibration scores must be finite and strictly increasing");
        }
        if probabilities.iter().any(|p| !(0.0..=1.0).contains(p))
            || probabilities.windows(2).any(|pair| pair[0] > pair[1])
        {
            return invalid("isotonic calibration probabilities must be non-decreasing in [0, 1]");
        }
        Ok(())
    }
}

/// Weighted isotonic regression of `values` in their given order (non-decreasing result).
///
/// Classic pool-adjacent-violators: blocks are merged while a block's mean is not below its
/// successor's, so each output is the weighted mean of its block.
fn pool_adjacent_violators(values: &[f64], weights: &[f64]) -> Vec<f64> {
    // (weighted sum, total weight, number of inputs) per block.
    let mut blocks: Vec<(f64, f64, usize)> = Vec::with_capacity(values.len());
    for (&value, &weight) in values.iter().zip(weights) {
        blocks.push((value * weight, weight, 1));
        while blocks.len() >= 2 {
            let (last_sum, last_weight, _) = blocks[blocks.len() - 1];
            let (previous_sum, previous_weight, _) = blocks[blocks.len() - 2];
            if previous_sum / previous_weight < last_sum / last_weight {
                break;
            }
            let (sum, weight, count) = blocks.pop().expect("two blocks checked above");
            let previous = blocks.last_mut().expect("two blocks checked above");
            previous.0 += sum;
            previous.1 += weight;
            previous.2 += count;
        }
    }
    blocks
        .into_iter()
        .flat_map(|(sum, weight, count)| std::iter::repeat_n(sum / weight, count))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isotonic_calibration_is_monotone_and_pools_violators() {
        // Score groups 0.1, 0.2, 0.3 with observed rates 0.5, 0.0, 1.0 (2 rows each).
        let scores = [0.1, 0.1, 0.2, 0.2, 0.3, 0.3];
        let labels = [true, false, false, false, true, true];
        let calibration = Calibration::fit_isotonic(&scores, &labels, 0.0);
        let Calibration::Isotonic {
            scores: knots,
            probabilities,
            rows,
        } = &calibration
        else {
            panic!("expected isotonic");
        };
        assert_eq!(knots, &vec![0.1, 0.2, 0.3]);
        // 0.5 then 0.0 violate the order and pool to 0.25.
        assert_eq!(probabilities, &vec![0.25, 0.25, 1.0]);
        assert_eq!(*rows, 6);
        calibration.validate().unwrap();
        assert_eq!(calibration.apply(0.0), 0.25, "flat below the first knot");
        assert_eq!(calibration.apply(0.9), 1.0, "flat above the last knot");
        assert!(
            (calibration.apply(0.25) - 0.625).abs() < 1e-12,
            "linear between knots"
        );
        let grid: Vec<f64> = (0..=40)
            .map(|i| calibration.apply(i as f64 / 40.0))
            .collect();
        assert!(grid.windows(2).all(|pair| pair[0] <= pair[1]));
    }

    #[test]
    fn smoothed_calibration_stays_inside_the_unit_interval() {
        let calibration = Calibration::fit_isotonic(&[0.1, 0.9], &[false, true], 10.0);
        let (low, high) = (calibration.apply(0.1), calibration.apply(0.9));
        assert!((low - 5.0 / 11.0).abs() < 1e-12, "{low}");
        assert!((high - 6.0 / 11.0).abs() < 1e-12, "{high}");
    }

    #[test]
    fn pool_adjacent_violators_matches_hand_computation() {
        assert_eq!(
            pool_adjacent_violators(&[1.0, 3.0, 2.0, 4.0], &[1.0, 1.0, 1.0, 1.0]),
            vec![1.0, 2.5, 2.5, 4.0]
        );
        // A weighted pool: (3 * 1 + 1 * 3) / 2 = 3 ... then with 0 pooled again.
        assert_eq!(
            pool_adjacent_violators(&[3.0, 1.0, 0.0], &[1.0, 1.0, 2.0]),
            vec![1.0, 1.0, 1.0]
        );
        assert_eq!(pool_adjacent_violators(&[], &[]), Vec::<f64>::new());
    }

    #[test]
    fn calibration_deserialization_validates() {
        let bad = r#"{"method":"isotonic","scores":[0.2,0.1],"probabilities":[0.1,0.2],"rows":2}"#;
        assert!(serde_json::from_str::<Calibration>(bad).is_err());
        let good = r#"{"method":"isotonic","scores":[0.1,0.2],"probabilities":[0.1,0.2],"rows":2}"#;
        let parsed: Calibration = serde_json::from_str(good).unwrap();
        assert!((parsed.apply(0.15) - 0.15).abs() < 1e-12);
        let identity: Calibration = serde_json::from_str(r#"{"method":"identity"}"#).unwrap();
        assert_eq!(identity, Calibration::Identity);
    }
}
