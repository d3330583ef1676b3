//! Customer segments: `propensity segments fit` groups customers by k-means (linfa-clustering)
//! on what the value models say of them, picks k by the silhouette score (linfa) within a range,
//! and names each segment from its members in words a marketer uses. The service assigns each
//! shopper the segment of the nearest centroid, from the same features, live.
//!
//! Features, per customer, from their purchase days: weeks since the last purchase day, repeat
//! purchase days, expected spend per purchase day (Gamma-Gamma) and predicted value over 90 days.
//! Each is taken as `ln(1 + x)` (they are all skewed and non-negative) and standardised, so that
//! no unit dominates the distances.

use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{SecondsFormat, Utc};
use linfa::prelude::*;
use linfa_clustering::KMeans;
use ndarray::{Array1, Array2, Axis};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::input::{self, InputFormat};
use super::summary::{Periods, summarize};
use super::{PredictedValue, ValueError, ValueModel};
use crate::offline::model::report::{
    CURVE_COLOR, Frame, format_number, svg_open_wider, xml_escape,
};

/// The features segments are made of, in order.
pub const FEATURES: [&str; 4] = [
    "weeks_since_last_purchase",
    "repeat_purchase_days",
    "expected_spend_per_purchase",
    "predicted_value_90d",
];

/// The scatter plot's file name in the report directory.
pub const CHART_FILE: &str = "segments.svg";

/// Most customers the silhouette score is computed on (it is quadratic in them): an evenly
/// spaced sample of the rest.
const SILHOUETTE_SAMPLE: usize = 1000;

/// The raw features of a customer with this prediction.
pub fn features(value: &PredictedValue) -> [f64; 4] {
    let spend = value.expected_spend_per_purchase.unwrap_or(0.0);
    [
        (value.age_weeks - value.recency_weeks).max(0.0),
        f64::from(value.frequency),
        spend.max(0.0),
        value.predicted_value_90d.unwrap_or(0.0).max(0.0),
    ]
}

/// One segment: its name, how many of the fitted customers it holds and their mean features.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Segment {
    pub name: String,
    pub customers: u64,
    /// Mean of each feature of [`FEATURES`] over its customers, in their units.
    pub means: Vec<f64>,
    /// Mean probability that its customers are still customers.
    pub mean_p_alive: f64,
}

/// The fitted segments, stored as JSON.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SegmentModel {
    /// `segments-<unix seconds>-<hash>`.
    pub version: String,
    pub fitted_at: String,
    /// The value model whose predictions were clustered.
    pub value_model_version: String,
    pub features: Vec<String>,
    /// Mean and standard deviation of each transformed feature.
    pub centers: Vec<f64>,
    pub scales: Vec<f64>,
    /// The centroids, in standardised units, one per segment.
    pub centroids: Vec<Vec<f64>>,
    pub segments: Vec<Segment>,
    /// The silhouette score of every k tried.
    pub silhouettes: Vec<(usize, f64)>,
    pub customers: u64,
}

impl SegmentModel {
    fn standardise(&self, raw: [f64; 4]) -> [f64; 4] {
        let mut out = [0.0; 4];
        for (index, value) in raw.iter().enumerate() {
            out[index] = (value.max(0.0).ln_1p() - self.centers[index]) / self.scales[index];
        }
        out
    }

    /// The segment of the nearest centroid.
    pub fn assign(&self, value: &PredictedValue) -> &Segment {
        let point = self.standardise(features(value));
        let distance = |centroid: &Vec<f64>| -> f64 {
            centroid
                .iter()
                .zip(point)
                .map(|(center, value)| (center - value).powi(2))
                .sum()
        };
        let nearest = self
            .centroids
            .iter()
            .enumerate()
            .min_by(|(_, left), (_, right)| distance(left).total_cmp(&distance(right)))
            .map_or(0, |(index, _)| index);
        &self.segments[nearest]
    }

    /// Reads a model saved by [`SegmentModel::save`].
    pub fn load(path: impl AsRef<Path>) -> Result<SegmentModel, ValueError> {
        super::read_json(path.as_ref())
    }

    /// Writes the model as pretty JSON (see [`super::write_json`]).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), ValueError> {
        super::write_json(self, path.as_ref())
    }
}

/// What to cluster and where to write.
#[derive(Clone, Debug, PartialEq)]
pub struct SegmentRequest {
    pub inputs: Vec<PathBuf>,
    pub format: InputFormat,
    /// The value model (`propensity value fit`) whose predictions are clustered.
    pub value_model: PathBuf,
    pub model_out: PathBuf,
    /// The range of k tried.
    pub k_min: usize,
    pub k_max: usize,
    pub report_dir: Option<PathBuf>,
    pub seed: u64,
}

/// What the command did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SegmentReport {
    pub model_version: String,
    pub model_path: PathBuf,
    pub customers: u64,
    pub k: usize,
    pub silhouettes: Vec<(usize, f64)>,
    pub segments: Vec<Segment>,
    pub fit_seconds: f64,
    pub chart: Option<PathBuf>,
}

/// Reads the purchases, predicts every customer's value as of the data's last day, clusters
/// them for every k in the range, keeps the k with the best silhouette, names the segments and
/// saves the model.
pub fn run(request: &SegmentRequest) -> Result<SegmentReport, ValueError> {
    if request.k_min < 2 || request.k_max < request.k_min {
        return Err(ValueError::Periods(format!(
            "--k-min must be at least 2 and --k-max at least --k-min (got {} and {})",
            request.k_min, request.k_max
        )));
    }
    let value_model = ValueModel::load(&request.value_model)?;
    let mut data = input::read(request.format, &request.inputs)?;
    let started = Instant::now();
    let summaries = summarize(
        &mut data.purchases,
        Periods {
            calibration_end: data.last_day,
            holdout_end: None,
        },
    );
    let values: Vec<PredictedValue> = summaries
        .iter()
        .map(|summary| value_model.predict(summary.history(), summary.mean_repeat_spend))
        .collect();
    if values.len() <= request.k_max {
        return Err(ValueError::Periods(format!(
            "{} customers are too few for up to {} segments",
            values.len(),
            request.k_max
        )));
    }
    let raw = Array2::from_shape_fn((values.len(), 4), |(row, column)| {
        features(&values[row])[column]
    });
    let transformed = raw.mapv(|value| value.max(0.0).ln_1p());
    let centers = transformed.mean_axis(Axis(0)).expect("rows");
    let scales = transformed
        .std_axis(Axis(0), 0.0)
        .mapv(|scale| if scale > 1e-12 { scale } else { 1.0 });
    let points = (&transformed - &centers) / &scales;

    let step = points.nrows().div_ceil(SILHOUETTE_SAMPLE).max(1);
    let sample_rows: Vec<usize> = (0..points.nrows()).step_by(step).collect();
    let sample = points.select(Axis(0), &sample_rows);
    let mut best: Option<(f64, Array2<f64>, Array1<usize>)> = None;
    let mut silhouettes = Vec::new();
    for k in request.k_min..=request.k_max {
        let rng = rand_chacha::ChaCha8Rng::seed_from_u64(request.seed);
        let model = KMeans::params_with_rng(k, rng)
            .n_runs(4)
            .max_n_iterations(300)
            .tolerance(1e-5)
            .fit(&DatasetBase::from(points.clone()))
            .map_err(|error| {
                ValueError::Periods(format!("k-means with k = {k} failed: {error}"))
            })?;
        let sample_labels = model.predict(&sample);
        let score = DatasetBase::new(sample.clone(), sample_labels)
            .silhouette_score()
            .map_err(|error| ValueError::Periods(format!("silhouette for k = {k}: {error}")))?;
        silhouettes.push((k, score));
        if best
            .as_ref()
            .is_none_or(|(best_score, _, _)| score > *best_score)
        {
            let labels = model.predict(&points);
            best = Some((score, model.centroids().clone(), labels));
        }
    }
    let (_, centroids, labels) = best.expect("at least one k");
    let k = centroids.nrows();
    let mut segments: Vec<Segment> = (0..k)
        .map(|cluster| {
            let members: Vec<usize> = (0..labels.len())
                .filter(|row| labels[*row] == cluster)
                .collect();
            let count = members.len().max(1) as f64;
            let means = (0..4)
                .map(|column| members.iter().map(|row| raw[[*row, column]]).sum::<f64>() / count)
                .collect();
            Segment {
                name: String::new(),
                customers: members.len() as u64,
                means,
                mean_p_alive: members.iter().map(|row| values[*row].p_alive).sum::<f64>() / count,
            }
        })
        .collect();
    let median_weeks_since = {
        let mut weeks: Vec<f64> = raw.column(0).to_vec();
        weeks.sort_by(f64::total_cmp);
        weeks[weeks.len() / 2]
    };
    name_segments(&mut segments, median_weeks_since);
    let fit_seconds = started.elapsed().as_secs_f64();
    let content = serde_json::to_vec(&(&value_model.version, &segments, &silhouettes))
        .map_err(ValueError::Serialize)?;
    let now = Utc::now();
    let model = SegmentModel {
        version: format!(
            "segments-{}-{:08x}",
            now.timestamp(),
            crate::offline::model::content_hash(&content)
        ),
        fitted_at: now.to_rfc3339_opts(SecondsFormat::Secs, true),
        value_model_version: value_model.version.clone(),
        features: FEATURES.iter().map(|name| (*name).to_owned()).collect(),
        centers: centers.to_vec(),
        scales: scales.to_vec(),
        centroids: centroids.outer_iter().map(|row| row.to_vec()).collect(),
        segments: segments.clone(),
        silhouettes: silhouettes.clone(),
        customers: values.len() as u64,
    };
    model.save(&request.model_out)?;
    let chart = match &request.report_dir {
        Some(dir) => Some(write_chart(dir, &raw, &labels, &model)?),
        None => None,
    };
    Ok(SegmentReport {
        model_version: model.version,
        model_path: request.model_out.clone(),
        customers: model.customers,
        k,
        silhouettes,
        segments,
        fit_seconds,
        chart,
    })
}

/// Prints the report: the silhouette of every k, then each segment.
pub fn print_report(report: &SegmentReport, json: bool) -> Result<(), ValueError> {
    println!(
        "{} customers; silhouette by k: {}",
        report.customers,
        report
            .silhouettes
            .iter()
            .map(|(k, score)| format!("{k}: {score:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("{} segments (in {:.3} s):", report.k, report.fit_seconds);
    for segment in &report.segments {
        println!(
            "  {:<18} {:>7} customers; weeks since last purchase {:.1}, repeat purchase days {:.2}, spend per purchase {:.2}, predicted value (90 days) {:.2}, P(alive) {:.2}",
            segment.name,
            segment.customers,
            segment.means[0],
            segment.means[1],
            segment.means[2],
            segment.means[3],
            segment.mean_p_alive
        );
    }
    println!(
        "model {} written to {}",
        report.model_version,
        report.model_path.display()
    );
    if let Some(chart) = &report.chart {
        println!("scatter plot: {}", chart.display());
    }
    if json {
        println!(
            "{}",
            serde_json::to_string(report).map_err(ValueError::Serialize)?
        );
    }
    Ok(())
}

/// Names each segment from its members: mostly one-time buyers (fewer than one repeat purchase
/// day on average) are "new" when they bought recently (no longer ago than the median customer's
/// last purchase) and "lapsed" otherwise; repeat buyers
/// are "at risk" when they are more likely gone than not, and "loyal" otherwise, the loyal
/// segment of the highest predicted value "loyal high value". Names repeat with a number.
pub fn name_segments(segments: &mut [Segment], median_weeks_since: f64) {
    let top_loyal = segments
        .iter()
        .enumerate()
        .filter(|(_, segment)| segment.means[1] >= 1.0 && segment.mean_p_alive >= 0.5)
        .max_by(|(_, left), (_, right)| left.means[3].total_cmp(&right.means[3]))
        .map(|(index, _)| index);
    let mut used: Vec<String> = Vec::new();
    for (index, segment) in segments.iter_mut().enumerate() {
        let base = if segment.means[1] < 1.0 {
            if segment.means[0] <= median_weeks_since {
                "new"
            } else {
                "lapsed"
            }
        } else if segment.mean_p_alive < 0.5 {
            "at risk"
        } else if Some(index) == top_loyal {
            "loyal high value"
        } else {
            "loyal"
        };
        let repeats = used.iter().filter(|name| name.as_str() == base).count();
        used.push(base.to_owned());
        segment.name = if repeats == 0 {
            base.to_owned()
        } else {
            format!("{base} {}", repeats + 1)
        };
    }
}

/// A scatter plot of the customers: weeks since their last purchase against ln(1 + predicted
/// value), one colour per segment.
fn write_chart(
    dir: &Path,
    raw: &Array2<f64>,
    labels: &Array1<usize>,
    model: &SegmentModel,
) -> Result<PathBuf, ValueError> {
    const COLORS: [&str; 8] = [
        CURVE_COLOR,
        "#ff7f0e",
        "#2ca02c",
        "#d62728",
        "#9467bd",
        "#8c564b",
        "#e377c2",
        "#7f7f7f",
    ];
    std::fs::create_dir_all(dir).map_err(|source| ValueError::Io {
        operation: "create directory",
        path: dir.to_path_buf(),
        source,
    })?;
    let x_max = raw.column(0).iter().copied().fold(1.0, f64::max).ceil();
    let y_max = raw
        .column(3)
        .iter()
        .map(|value| value.ln_1p())
        .fold(1.0, f64::max)
        .ceil();
    let frame = Frame::square(x_max, y_max);
    // The legend sits right of the plot area, so it covers no customer.
    let legend: Vec<String> = model
        .segments
        .iter()
        .map(|segment| {
            format!(
                "{} ({})",
                segment.name,
                format_number(segment.customers as f64)
            )
        })
        .collect();
    let legend_width = 20.0
        + legend
            .iter()
            .map(|line| line.chars().count())
            .max()
            .unwrap_or(0) as f64
            * 8.0;
    let mut svg = svg_open_wider(
        &frame,
        legend_width,
        &format!(
            "{} customers in {} segments",
            model.customers,
            model.segments.len()
        ),
    );
    frame.axes(
        &mut svg,
        "Weeks since the last purchase",
        "ln(1 + predicted value, 90 days)",
        5,
        5,
    );
    let step = raw.nrows().div_ceil(5000).max(1);
    for row in (0..raw.nrows()).step_by(step) {
        svg.push_str(&format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\" fill=\"{}\" fill-opacity=\"0.5\"/>\n",
            frame.x(raw[[row, 0]]),
            frame.y(raw[[row, 3]].ln_1p()),
            COLORS[labels[row] % COLORS.len()]
        ));
    }
    for (index, line) in legend.iter().enumerate() {
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{}\" font-weight=\"bold\">{}</text>\n",
            frame.x(x_max) + 20.0,
            frame.y(y_max) + 12.0 + 16.0 * index as f64,
            COLORS[index % COLORS.len()],
            xml_escape(line)
        ));
    }
    svg.push_str("</svg>\n");
    let path = dir.join(CHART_FILE);
    std::fs::write(&path, svg).map_err(|source| ValueError::Io {
        operation: "write",
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(weeks_since: f64, repeat_days: f64, value: f64, p_alive: f64) -> Segment {
        Segment {
            name: String::new(),
            customers: 1,
            means: vec![weeks_since, repeat_days, 10.0, value],
            mean_p_alive: p_alive,
        }
    }

    #[test]
    fn segments_are_named_in_words_from_their_members() {
        let mut segments = vec![
            segment(2.0, 0.1, 5.0, 1.0),
            segment(30.0, 0.6, 1.0, 1.0),
            segment(5.0, 3.0, 40.0, 0.9),
            segment(4.0, 2.0, 12.0, 0.8),
            segment(25.0, 2.5, 3.0, 0.2),
            segment(3.0, 0.0, 4.0, 1.0),
        ];
        name_segments(&mut segments, 10.0);
        let names: Vec<&str> = segments
            .iter()
            .map(|segment| segment.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "new",
                "lapsed",
                "loyal high value",
                "loyal",
                "at risk",
                "new 2"
            ]
        );
    }
}
