//! Quality metrics for binary propensity scores: how well they rank (ROC-AUC, average
//! precision) and how good they are as probabilities (Brier score, log loss, reliability bins).
//!
//! Everything here is computed exactly from sorted scores, with tied scores treated as one
//! threshold, so the numbers match scikit-learn's `roc_auc_score`, `average_precision_score`,
//! `brier_score_loss` and `log_loss` on the same inputs.

use serde::{Deserialize, Serialize};

/// Probabilities are clipped to `[LOG_LOSS_EPSILON, 1 - LOG_LOSS_EPSILON]` before taking logs so a
/// single confident mistake gives a large but finite loss.
pub const LOG_LOSS_EPSILON: f64 = 1e-15;

/// Evaluation of a set of scores against their labels.
///
/// A metric that is undefined for the input (AUC and average precision without both classes,
/// anything on an empty set) is NaN, and is written to JSON as `null`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct Metrics {
    /// Area under the ROC curve; tied scores count half (average rank).
    #[serde(with = "nullable_f64")]
    #[schema(value_type = Option<f64>)]
    pub roc_auc: f64,
    /// Area under the precision-recall step curve, as scikit-learn defines it.
    #[serde(with = "nullable_f64")]
    #[schema(value_type = Option<f64>)]
    pub average_precision: f64,
    /// Mean squared difference between score and label.
    #[serde(with = "nullable_f64")]
    #[schema(value_type = Option<f64>)]
    pub brier: f64,
    /// Mean negative log-likelihood with scores clipped by [`LOG_LOSS_EPSILON`].
    #[serde(with = "nullable_f64")]
    #[schema(value_type = Option<f64>)]
    pub log_loss: f64,
    /// Share of positive labels.
    #[serde(with = "nullable_f64")]
    #[schema(value_type = Option<f64>)]
    pub base_rate: f64,
    /// Number of rows evaluated.
    pub rows: usize,
    /// Number of positive labels.
    pub positives: usize,
}

/// Computes [`Metrics`] for `scores` (probabilities of the positive class) against `labels`.
///
/// # Panics
/// If `scores` and `labels` differ in length, which is a caller bug rather than a data problem.
pub fn evaluate(scores: &[f64], labels: &[bool]) -> Metrics {
    assert_eq!(
        scores.len(),
        labels.len(),
        "evaluate needs one score per label"
    );
    let rows = labels.len();
    let positives = labels.iter().filter(|&&label| label).count();
    let negatives = rows - positives;
    let both_classes = positives > 0 && negatives > 0;
    let mean = |sum: f64| {
        if rows == 0 {
            f64::NAN
        } else {
            sum / rows as f64
        }
    };

    let brier = mean(
        scores
            .iter()
            .zip(labels)
            .map(|(&score, &label)| (score - f64::from(u8::from(label))).powi(2))
            .sum(),
    );
    let log_loss = mean(
        scores
            .iter()
            .zip(labels)
            .map(|(&score, &label)| {
                let p = score.clamp(LOG_LOSS_EPSILON, 1.0 - LOG_LOSS_EPSILON);
                if label { -p.ln() } else { -(1.0 - p).ln() }
            })
            .sum(),
    );
    Metrics {
        roc_auc: if both_classes {
            roc_auc(scores, labels, positives)
        } else {
            f64::NAN
        },
        average_precision: if both_classes {
            average_precision(scores, labels, positives)
        } else {
            f64::NAN
        },
        brier,
        log_loss,
        base_rate: mean(positives as f64),
        rows,
        positives,
    }
}

/// AUC as the Mann-Whitney statistic: the probability that a random positive outscores a random
/// negative, with ties counting half (which is what average ranks give).
fn roc_auc(scores: &[f64], labels: &[bool], positives: usize) -> f64 {
    let negatives = labels.len() - positives;
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut positive_rank_sum = 0.0;
    let mut start = 0;
    while start < order.len() {
        let mut end = start;
        while end + 1 < order.len() && scores[order[end + 1]] == scores[order[start]] {
            end += 1;
        }
        // 1-based ranks start+1 ..= end+1 share their mean.
        let average_rank = (start + end + 2) as f64 / 2.0;
        let tied_positives = order[start..=end].iter().filter(|&&i| labels[i]).count();
        positive_rank_sum += average_rank * tied_positives as f64;
        start = end + 1;
    }
    let positives = positives as f64;
    (positive_rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives as f64)
}

/// `sum over thresholds of (recall_k - recall_(k-1)) * precision_k`, thresholds descending.
fn average_precision(scores: &[f64], labels: &[bool], positives: usize) -> f64 {
    let mut previous_recall = 0.0;
    let mut area = 0.0;
    for step in threshold_steps(scores, labels) {
        let recall = step.true_positives as f64 / positives as f64;
        let precision =
            step.true_positives as f64 / (step.true_positives + step.false_positives) as f64;
        area += (recall - previous_recall) * precision;
        previous_recall = recall;
    }
    area
}

/// Cumulative counts of rows scored at or above one distinct threshold.
#[derive(Clone, Copy, Debug, PartialEq)]
struct ThresholdStep {
    threshold: f64,
    true_positives: u64,
    false_positives: u64,
}

/// One step per distinct score, highest first, with cumulative true and false positives.
fn threshold_steps(scores: &[f64], labels: &[bool]) -> Vec<ThresholdStep> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut steps: Vec<ThresholdStep> = Vec::new();
    let (mut true_positives, mut false_positives) = (0, 0);
    for (position, &row) in order.iter().enumerate() {
        if labels[row] {
            true_positives += 1;
        } else {
            false_positives += 1;
        }
        let last_of_tie = order
            .get(position + 1)
            .is_none_or(|&next| scores[next] != scores[row]);
        if last_of_tie {
            steps.push(ThresholdStep {
                threshold: scores[row],
                true_positives,
                false_positives,
            });
        }
    }
    steps
}

/// ROC curve as `(false positive rate, true positive rate)` points from `(0, 0)` to `(1, 1)`,
/// one per distinct score; empty unless both classes are present.
pub fn roc_curve(scores: &[f64], labels: &[bool]) -> Vec<(f64, f64)> {
    let positives = labels.iter().filter(|&&label| label).count() as f64;
    let negatives = labels.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 || scores.len() != labels.len() {
        return Vec::new();
    }
    std::iter::once((0.0, 0.0))
        .chain(threshold_steps(scores, labels).into_iter().map(|step| {
            (
                step.false_positives as f64 / negatives,
                step.true_positives as f64 / positives,
            )
        }))
        .collect()
}

/// Precision-recall points `(recall, precision)`, one per distinct score from the highest down;
/// empty unless there is at least one positive. [`Metrics::average_precision`] is the area under
/// the step curve through these points.
pub fn precision_recall_curve(scores: &[f64], labels: &[bool]) -> Vec<(f64, f64)> {
    let positives = labels.iter().filter(|&&label| label).count() as f64;
    if positives == 0.0 || scores.len() != labels.len() {
        return Vec::new();
    }
    threshold_steps(scores, labels)
        .into_iter()
        .map(|step| {
            let flagged = (step.true_positives + step.false_positives) as f64;
            (
                step.true_positives as f64 / positives,
                step.true_positives as f64 / flagged,
            )
        })
        .collect()
}

/// One equal-width score bin of a reliability diagram.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ReliabilityBin {
    /// Inclusive lower edge.
    pub lower: f64,
    /// Upper edge (inclusive for the last bin).
    pub upper: f64,
    /// Rows whose score fell in the bin.
    pub rows: usize,
    /// Positive labels among them.
    pub positives: usize,
    /// Mean score of those rows; NaN (JSON `null`) for an empty bin.
    #[serde(with = "nullable_f64")]
    pub mean_score: f64,
    /// Share of positives among them; NaN (JSON `null`) for an empty bin.
    #[serde(with = "nullable_f64")]
    pub observed_rate: f64,
}

/// Splits `[0, 1]` into `bins` equal-width bins and reports, per bin, the mean score against the
/// observed positive rate; a calibrated model has the two close in every populated bin. Scores
/// outside `[0, 1]` are clamped into the end bins.
pub fn reliability_bins(scores: &[f64], labels: &[bool], bins: usize) -> Vec<ReliabilityBin> {
    reliability_bins_over(scores, labels, bins, 1.0)
}

/// Like [`reliability_bins`] but over `[0, upper]`, for models whose scores never come near 1
/// (a 3 % base rate would put nearly every row into the first of ten bins over `[0, 1]`).
/// Scores above `upper` fall into the last bin; a non-positive `upper` means 1.
pub fn reliability_bins_over(
    scores: &[f64],
    labels: &[bool],
    bins: usize,
    upper: f64,
) -> Vec<ReliabilityBin> {
    let bins = bins.max(1);
    let upper = if upper > 0.0 && upper.is_finite() {
        upper
    } else {
        1.0
    };
    let mut sums = vec![(0usize, 0usize, 0.0f64); bins];
    for (&score, &label) in scores.iter().zip(labels) {
        // The cast saturates, and NaN becomes 0, so every score lands in some bin.
        let bin = ((score.clamp(0.0, upper) / upper * bins as f64) as usize).min(bins - 1);
        sums[bin].0 += 1;
        sums[bin].1 += usize::from(label);
        sums[bin].2 += score;
    }
    sums.into_iter()
        .enumerate()
        .map(|(bin, (rows, positives, score_sum))| ReliabilityBin {
            lower: upper * bin as f64 / bins as f64,
            upper: upper * (bin + 1) as f64 / bins as f64,
            rows,
            positives,
            mean_score: if rows == 0 {
                f64::NAN
            } else {
                score_sum / rows as f64
            },
            observed_rate: if rows == 0 {
                f64::NAN
            } else {
                positives as f64 / rows as f64
            },
        })
        .collect()
}

/// Serde adapter writing non-finite floats as `null` and reading `null` back as NaN.
///
/// serde_json writes NaN as `null` but refuses to read `null` into an `f64`, so without this a
/// model whose metrics contain an undefined AUC could be saved but not loaded again.
pub(super) mod nullable_f64 {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes finite values as numbers and anything else as `null`.
    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        if value.is_finite() {
            serializer.serialize_f64(*value)
        } else {
            serializer.serialize_none()
        }
    }

    /// Reads a number, or `null` as NaN.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(actual: f64, expected: f64) -> bool {
        (actual - expected).abs() < 1e-12
    }

    #[test]
    fn auc_of_perfect_reversed_and_tied_rankings() {
        let labels = [false, false, true, true];
        assert_eq!(evaluate(&[0.1, 0.2, 0.8, 0.9], &labels).roc_auc, 1.0);
        assert_eq!(evaluate(&[0.9, 0.8, 0.2, 0.1], &labels).roc_auc, 0.0);
        assert_eq!(evaluate(&[0.5; 4], &labels).roc_auc, 0.5);
    }

    #[test]
    fn auc_with_partial_ties_uses_average_rank() {
        // Pairs (pos, neg): (0.5 vs 0.1) win, (0.5 vs 0.5) tie, (0.9 vs both) win: (3 + 0.5) / 4.
        let metrics = evaluate(&[0.1, 0.5, 0.5, 0.9], &[false, false, true, true]);
        assert!(close(metrics.roc_auc, 0.875), "{}", metrics.roc_auc);
    }

    #[test]
    fn auc_equals_area_under_roc_curve() {
        let scores = [0.3, 0.1, 0.7, 0.7, 0.2, 0.9, 0.4, 0.4, 0.6, 0.05];
        let labels = [
            true, false, true, false, false, true, false, true, false, false,
        ];
        let curve = roc_curve(&scores, &labels);
        let trapezoids: f64 = curve
            .windows(2)
            .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
            .sum();
        assert!(close(evaluate(&scores, &labels).roc_auc, trapezoids));
        assert_eq!(curve.first(), Some(&(0.0, 0.0)));
        assert_eq!(curve.last(), Some(&(1.0, 1.0)));
    }

    #[test]
    fn average_precision_matches_hand_computation() {
        // Descending: 0.9 (+), 0.8 (-), 0.7 (+), 0.1 (-).
        // Steps: recall 1/2 at precision 1, recall 1 at precision 2/3 => 0.5 + 0.5 * 2/3.
        let metrics = evaluate(&[0.1, 0.7, 0.8, 0.9], &[false, true, false, true]);
        assert!(close(metrics.average_precision, 0.5 + 1.0 / 3.0));
        // A perfect ranking has AP 1; all tied gives the base rate.
        let labels = [false, true, false, true];
        assert_eq!(
            evaluate(&[0.1, 0.9, 0.2, 0.8], &labels).average_precision,
            1.0
        );
        assert_eq!(evaluate(&[0.4; 4], &labels).average_precision, 0.5);
    }

    #[test]
    fn brier_and_log_loss_match_hand_computation() {
        let metrics = evaluate(&[0.8, 0.3], &[true, false]);
        assert!(close(metrics.brier, (0.04 + 0.09) / 2.0));
        assert!(close(metrics.log_loss, -(0.8f64.ln() + 0.7f64.ln()) / 2.0));
        assert_eq!(metrics.rows, 2);
        assert_eq!(metrics.positives, 1);
        assert_eq!(metrics.base_rate, 0.5);
    }

    #[test]
    fn log_loss_is_clipped_for_confident_mistakes() {
        let metrics = evaluate(&[0.0, 1.0], &[true, false]);
        let clipped_low = LOG_LOSS_EPSILON;
        let clipped_high = 1.0 - LOG_LOSS_EPSILON;
        let expected = (-clipped_low.ln() - (1.0 - clipped_high).ln()) / 2.0;
        assert!(close(metrics.log_loss, expected), "{}", metrics.log_loss);
        assert!(metrics.log_loss > 34.0);
        assert!(metrics.log_loss.is_finite());
        assert_eq!(metrics.brier, 1.0);
    }

    #[test]
    fn single_class_and_empty_inputs_give_nan_not_panics() {
        let metrics = evaluate(&[0.2, 0.4], &[false, false]);
        assert!(metrics.roc_auc.is_nan());
        assert!(metrics.average_precision.is_nan());
        assert_eq!(metrics.base_rate, 0.0);
        assert!(close(metrics.brier, (0.04 + 0.16) / 2.0));
        let empty = evaluate(&[], &[]);
        assert_eq!(empty.rows, 0);
        assert!(empty.brier.is_nan() && empty.log_loss.is_nan() && empty.base_rate.is_nan());
        assert!(roc_curve(&[0.2], &[false]).is_empty());
        assert!(precision_recall_curve(&[0.2], &[false]).is_empty());
    }

    #[test]
    #[should_panic(expected = "one score per label")]
    fn evaluate_rejects_length_mismatch() {
        evaluate(&[0.1], &[true, false]);
    }

    #[test]
    fn undefined_metrics_survive_a_json_round_trip() {
        let metrics = evaluate(&[0.2, 0.4], &[true, true]);
        let json = serde_json::to_string(&metrics).unwrap();
        assert!(json.contains(r#""roc_auc":null"#), "{json}");
        let back: Metrics = serde_json::from_str(&json).unwrap();
        assert!(back.roc_auc.is_nan());
        assert_eq!(back.brier, metrics.brier);
        let defined = evaluate(&[0.2, 0.4], &[false, true]);
        let back: Metrics =
            serde_json::from_str(&serde_json::to_string(&defined).unwrap()).unwrap();
        assert_eq!(back, defined);
    }

    #[test]
    fn precision_recall_points_per_distinct_threshold() {
        let curve = precision_recall_curve(&[0.9, 0.8, 0.8, 0.1], &[true, false, true, false]);
        assert_eq!(curve, vec![(0.5, 1.0), (1.0, 2.0 / 3.0), (1.0, 0.5)]);
    }

    #[test]
    fn reliability_bins_group_by_score() {
        let scores = [0.05, 0.15, 0.12, 0.95, 1.0, -0.2];
        let labels = [false, true, false, true, true, false];
        let bins = reliability_bins(&scores, &labels, 10);
        assert_eq!(bins.len(), 10);
        assert_eq!(
            (bins[0].rows, bins[0].positives),
            (2, 0),
            "negative scores clamp to bin 0"
        );
        assert_eq!((bins[1].rows, bins[1].positives), (2, 1));
        assert!(close(bins[1].mean_score, 0.135));
        assert_eq!(bins[1].observed_rate, 0.5);
        assert_eq!(
            bins[9].rows, 2,
            "a score of exactly 1 belongs to the last bin"
        );
        assert!(bins[5].mean_score.is_nan());
        assert_eq!(bins.iter().map(|bin| bin.rows).sum::<usize>(), scores.len());
        assert!(close(bins[3].lower, 0.3) && close(bins[3].upper, 0.4));
    }

    #[test]
    fn reliability_bins_over_a_narrow_range() {
        let bins = reliability_bins_over(
            &[0.01, 0.03, 0.19, 0.5],
            &[false, false, true, true],
            10,
            0.2,
        );
        assert_eq!(bins[0].rows, 1);
        assert_eq!(bins[1].rows, 1);
        assert_eq!(
            (bins[9].rows, bins[9].positives),
            (2, 2),
            "0.5 is clamped into the last bin"
        );
        assert!(close(bins[9].upper, 0.2));
        assert_eq!(
            reliability_bins_over(&[0.5], &[true], 4, 0.0)[2].rows,
            1,
            "upper 0 means 1"
        );
    }
}
