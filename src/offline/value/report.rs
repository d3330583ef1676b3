//! The holdout report of `propensity value fit`: predicted against actual repeat purchases in the
//! holdout period, per customer (total and correlation) and per calibration-frequency bucket,
//! and the bucket chart as a hand-written SVG drawn with the training report's plot helpers.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::bgnbd::BgNbdParams;
use super::error::ValueError;
use super::summary::CustomerSummary;
use crate::offline::model::report::{
    CURVE_COLOR, Corner, Frame, REFERENCE_COLOR, format_number, svg_open,
};

/// Calibration frequencies get their own bucket up to this one; this one holds it and above.
pub const TOP_BUCKET: u32 = 7;

/// The chart's file name in the report directory.
pub const CHART_FILE: &str = "holdout_by_frequency.svg";

/// Customers with one calibration frequency (or [`TOP_BUCKET`] and more) in the holdout period.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FrequencyBucket {
    /// `"0"` to `"6"`, or `"7+"`.
    pub label: String,
    /// Customers in the bucket.
    pub customers: u64,
    /// Their mean predicted repeat purchases in the holdout period.
    pub predicted_mean: f64,
    /// Their mean actual repeat purchases in the holdout period.
    pub actual_mean: f64,
}

/// How the BG/NBD predictions fared in the holdout period.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HoldoutReport {
    /// Last day of the holdout period (`YYYY-MM-DD`).
    pub end: String,
    /// Its length in weeks.
    pub weeks: f64,
    /// The sum over customers of their conditional expected purchases (eq. 10).
    pub predicted_purchases: f64,
    /// What the calibrated customers' first-purchase dates alone predict (eq. 9: each customer's
    /// expected purchases between their age now and at the holdout end), as a baseline.
    pub predicted_from_ages: f64,
    /// Repeat purchase days the customers actually made in the holdout period.
    pub actual_purchases: u64,
    /// Pearson correlation of predicted and actual holdout purchases over customers.
    pub correlation: f64,
    /// The same, by calibration frequency.
    pub buckets: Vec<FrequencyBucket>,
}

/// Evaluates `params` on the holdout period of `customers` (`weeks` long, ending `end`).
pub fn evaluate_holdout(
    params: &BgNbdParams,
    customers: &[CustomerSummary],
    weeks: f64,
    end: String,
) -> HoldoutReport {
    let bucket_count = TOP_BUCKET as usize + 1;
    let mut bucket_customers = vec![0u64; bucket_count];
    let mut bucket_predicted = vec![0.0; bucket_count];
    let mut bucket_actual = vec![0.0; bucket_count];
    let mut predictions = Vec::with_capacity(customers.len());
    let mut actuals = Vec::with_capacity(customers.len());
    let mut predicted_from_ages = 0.0;
    for customer in customers {
        let predicted = params.conditional_expected_purchases(weeks, customer.history());
        let actual = f64::from(customer.holdout_frequency);
        predicted_from_ages += params.expected_purchases(customer.age + weeks)
            - params.expected_purchases(customer.age);
        let bucket = customer.frequency.min(TOP_BUCKET) as usize;
        bucket_customers[bucket] += 1;
        bucket_predicted[bucket] += predicted;
        bucket_actual[bucket] += actual;
        predictions.push(predicted);
        actuals.push(actual);
    }
    let buckets = (0..bucket_count)
        .map(|bucket| {
            let count = bucket_customers[bucket];
            let mean = |sum: f64| {
                if count == 0 {
                    f64::NAN
                } else {
                    sum / count as f64
                }
            };
            FrequencyBucket {
                label: if bucket == TOP_BUCKET as usize {
                    format!("{TOP_BUCKET}+")
                } else {
                    bucket.to_string()
                },
                customers: count,
                predicted_mean: mean(bucket_predicted[bucket]),
                actual_mean: mean(bucket_actual[bucket]),
            }
        })
        .collect();
    HoldoutReport {
        end,
        weeks,
        predicted_purchases: predictions.iter().sum(),
        predicted_from_ages,
        actual_purchases: customers
            .iter()
            .map(|customer| u64::from(customer.holdout_frequency))
            .sum(),
        correlation: pearson(&predictions, &actuals),
        buckets,
    }
}

/// Pearson's correlation coefficient; NaN when either side is constant.
pub fn pearson(left: &[f64], right: &[f64]) -> f64 {
    let count = left.len().min(right.len()) as f64;
    if count == 0.0 {
        return f64::NAN;
    }
    let mean_left = left.iter().sum::<f64>() / count;
    let mean_right = right.iter().sum::<f64>() / count;
    let (mut covariance, mut variance_left, mut variance_right) = (0.0, 0.0, 0.0);
    for (x, y) in left.iter().zip(right) {
        let (dx, dy) = (x - mean_left, y - mean_right);
        covariance += dx * dy;
        variance_left += dx * dx;
        variance_right += dy * dy;
    }
    covariance / (variance_left * variance_right).sqrt()
}

/// Writes [`CHART_FILE`] into `dir` (created if missing) and returns its path.
pub fn write_report(dir: &Path, holdout: &HoldoutReport) -> Result<PathBuf, ValueError> {
    std::fs::create_dir_all(dir).map_err(|source| ValueError::Io {
        operation: "create directory",
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(CHART_FILE);
    std::fs::write(&path, bucket_svg(holdout)).map_err(|source| ValueError::Io {
        operation: "write",
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Mean predicted and actual holdout purchases per calibration frequency, as two lines with
/// points (the chart `lifetimes` calls calibration purchases vs holdout purchases).
fn bucket_svg(holdout: &HoldoutReport) -> String {
    let highest = holdout
        .buckets
        .iter()
        .flat_map(|bucket| [bucket.predicted_mean, bucket.actual_mean])
        .filter(|value| value.is_finite())
        .fold(0.0, f64::max);
    let y_max = nice_limit(highest);
    let frame = Frame::square(f64::from(TOP_BUCKET), y_max);
    let mut svg = svg_open(
        &frame,
        &format!(
            "Holdout ({} weeks): predicted {}, actual {}",
            format_number(holdout.weeks),
            format_number(holdout.predicted_purchases.round()),
            holdout.actual_purchases
        ),
    );
    frame.axes(
        &mut svg,
        &format!("Repeat purchases in calibration ({TOP_BUCKET} = {TOP_BUCKET} or more)"),
        "Mean repeat purchases in holdout",
        TOP_BUCKET as usize,
        5,
    );
    for (values, color, dash) in [
        (
            holdout
                .buckets
                .iter()
                .map(|bucket| bucket.actual_mean)
                .collect::<Vec<_>>(),
            REFERENCE_COLOR,
            None,
        ),
        (
            holdout
                .buckets
                .iter()
                .map(|bucket| bucket.predicted_mean)
                .collect(),
            CURVE_COLOR,
            Some("6 4"),
        ),
    ] {
        // Empty buckets (NaN means) are left out of the line.
        let points: Vec<(f64, f64)> = values
            .iter()
            .enumerate()
            .filter(|(_, value)| value.is_finite())
            .map(|(bucket, value)| (bucket as f64, *value))
            .collect();
        frame.line(&mut svg, &points, color, dash);
        for &(x, y) in &points {
            svg.push_str(&format!(
                "<circle cx=\"{:.2}\" cy=\"{:.2}\" r=\"4\" fill=\"{color}\"/>\n",
                frame.x(x),
                frame.y(y)
            ));
        }
    }
    // Customers per bucket along the top edge, where the rising lines leave room.
    // The end labels are anchored inwards so they stay inside the frame.
    let last = holdout.buckets.len().saturating_sub(1);
    for (bucket, info) in holdout.buckets.iter().enumerate() {
        let (offset, anchor) = match bucket {
            0 => (4.0, "start"),
            _ if bucket == last => (-4.0, "end"),
            _ => (0.0, "middle"),
        };
        svg.push_str(&format!(
            "<text x=\"{:.2}\" y=\"{:.2}\" text-anchor=\"{anchor}\" font-size=\"10\" fill=\"{REFERENCE_COLOR}\">n={}</text>\n",
            frame.x(bucket as f64) + offset,
            frame.y(y_max) + 14.0,
            info.customers
        ));
    }
    frame.legend(
        &mut svg,
        &[
            ("actual", REFERENCE_COLOR, None),
            ("BG/NBD prediction", CURVE_COLOR, Some("6 4")),
        ],
        Corner::BottomRight,
    );
    svg.push_str("</svg>\n");
    svg
}

/// The smallest of 1, 2, 2.5, 5 times a power of ten at or above `value` (1 for nothing to show).
fn nice_limit(value: f64) -> f64 {
    if !(value.is_finite() && value > 0.0) {
        return 1.0;
    }
    let power = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|step| step * power)
        .find(|&limit| value <= limit * (1.0 + 1e-12))
        .unwrap_or(10.0 * power)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CDNOW: BgNbdParams = BgNbdParams {
        r: 0.243,
        alpha: 4.414,
        a: 0.793,
        b: 2.426,
    };

    fn customer(frequency: u32, recency: f64, age: f64, holdout: u32) -> CustomerSummary {
        CustomerSummary {
            customer_id: u64::from(frequency),
            frequency,
            recency,
            age,
            mean_repeat_spend: None,
            holdout_frequency: holdout,
        }
    }

    #[test]
    fn pearson_of_known_series() {
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-15);
        assert!((pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-15);
        // Covariance 1, variances 2 and 2 over (1,2,3) vs (1,3,2): r = 0.5.
        assert!((pearson(&[1.0, 2.0, 3.0], &[1.0, 3.0, 2.0]) - 0.5).abs() < 1e-15);
        assert!(pearson(&[1.0, 1.0], &[1.0, 2.0]).is_nan());
    }

    #[test]
    fn buckets_and_totals() {
        let customers = [
            customer(0, 0.0, 30.0, 0),
            customer(0, 0.0, 35.0, 2),
            customer(2, 20.0, 30.0, 1),
            customer(9, 30.0, 31.0, 6),
            customer(12, 30.0, 31.0, 8),
        ];
        let report = evaluate_holdout(&CDNOW, &customers, 39.0, "1998-06-30".into());
        assert_eq!(report.actual_purchases, 17);
        let expected: f64 = customers
            .iter()
            .map(|c| CDNOW.conditional_expected_purchases(39.0, c.history()))
            .sum();
        assert!((report.predicted_purchases - expected).abs() < 1e-12);
        assert_eq!(report.buckets.len(), 8);
        assert_eq!(report.buckets[0].customers, 2);
        assert_eq!(report.buckets[0].actual_mean, 1.0);
        assert_eq!(report.buckets[7].label, "7+");
        assert_eq!(report.buckets[7].customers, 2);
        assert_eq!(report.buckets[7].actual_mean, 7.0);
        assert!(report.buckets[1].predicted_mean.is_nan());
        // Frequent recent buyers are predicted to buy more than one-off buyers.
        assert!(report.buckets[7].predicted_mean > report.buckets[0].predicted_mean);
        assert!(report.correlation > 0.9, "{}", report.correlation);

        let dir = tempfile::tempdir().unwrap();
        let path = write_report(&dir.path().join("report"), &report).unwrap();
        let svg = std::fs::read_to_string(path).unwrap();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(
            svg.contains("Holdout (39 weeks): predicted 18, actual 17"),
            "{svg}"
        );
        assert!(svg.contains("n=2") && svg.contains("n=0"));
        // Both lines drawn; the empty buckets are skipped, not drawn at 0 or NaN.
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn axis_limits_are_round() {
        assert_eq!(nice_limit(0.0), 1.0);
        assert_eq!(nice_limit(0.3), 0.5);
        assert_eq!(nice_limit(1.0), 1.0);
        assert_eq!(nice_limit(3.7), 5.0);
        assert_eq!(nice_limit(7.2), 10.0);
        assert_eq!(nice_limit(21.0), 25.0);
    }
}
