//! The training report: the tree as Graphviz DOT and hand-written SVG charts of ranking,
//! calibration and feature importance on validation rows.
//!
//! The charts are plain SVG strings rather than a plotting crate: four fixed chart types do not
//! justify a dependency, and the output opens in any browser and diffs as text.

use std::path::Path;

use super::Model;
use super::error::ModelError;
use super::metrics::{Metrics, evaluate, precision_recall_curve, reliability_bins_over, roc_curve};
use super::tree::Node;

/// Number of bins in the reliability diagram.
const RELIABILITY_BINS: usize = 10;

/// Curves with more points than this are thinned before drawing to keep the SVG small.
const MAX_CURVE_POINTS: usize = 2000;

pub(crate) const CURVE_COLOR: &str = "#1f77b4";
pub(crate) const REFERENCE_COLOR: &str = "#888888";
const GRID_COLOR: &str = "#e5e5e5";

/// Writes the report for `model` on the validation rows into `dir` (created if missing):
///
/// - `tree.dot`: the tree in Graphviz DOT (`dot -Tsvg tree.dot`), with feature names,
///   thresholds, row counts and rates at splits, and smoothed and calibrated probabilities
///   and counts at leaves;
/// - `roc.svg` and `pr.svg`: ROC and precision-recall curves with AUC and average precision;
/// - `calibration.svg`: a reliability diagram with 10 equal-width bins over the score range
///   (see [`super::reliability_bins_over`]) and a histogram of rows per bin;
/// - `feature_importance.svg`: a horizontal bar chart of [`Model::feature_importance`];
/// - `metrics.json`: the validation [`Metrics`] and the reliability bins.
pub fn write_report(
    dir: &Path,
    model: &Model,
    validation_scores: &[f64],
    validation_labels: &[bool],
) -> Result<(), ModelError> {
    if validation_scores.len() != validation_labels.len() {
        return Err(ModelError::ScoreCountMismatch {
            scores: validation_scores.len(),
            labels: validation_labels.len(),
        });
    }
    let metrics = evaluate(validation_scores, validation_labels);
    if metrics.rows == 0 {
        return Err(ModelError::EmptyDataset {
            dataset: "validation",
        });
    }
    if metrics.positives == 0 || metrics.positives == metrics.rows {
        return Err(ModelError::SingleClass {
            dataset: "validation",
            positive: metrics.positives > 0,
        });
    }
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
        operation: "create directory",
        path: dir.to_path_buf(),
        source,
    })?;

    let score_upper = nice_ceiling(validation_scores.iter().copied().fold(0.0, f64::max));
    let bins = reliability_bins_over(
        validation_scores,
        validation_labels,
        RELIABILITY_BINS,
        score_upper,
    );
    let summary = serde_json::json!({
        "model_version": model.version,
        "validation": metrics,
        "reliability_bins": bins,
    });
    let files = [
        ("tree.dot", tree_dot(model)),
        (
            "roc.svg",
            roc_svg(validation_scores, validation_labels, &metrics),
        ),
        (
            "pr.svg",
            pr_svg(validation_scores, validation_labels, &metrics),
        ),
        (
            "calibration.svg",
            calibration_svg(&bins, score_upper, &metrics),
        ),
        ("feature_importance.svg", importance_svg(model)),
        (
            "metrics.json",
            serde_json::to_string_pretty(&summary).map_err(ModelError::Serialize)?,
        ),
    ];
    for (name, contents) in files {
        let path = dir.join(name);
        std::fs::write(&path, contents).map_err(|source| ModelError::Io {
            operation: "write",
            path,
            source,
        })?;
    }
    Ok(())
}

/// Renders the tree as a Graphviz digraph, root at the top, left (`<=`) edges first.
fn tree_dot(model: &Model) -> String {
    let counts = model.tree.node_counts();
    let mut dot = String::from("digraph tree {\n");
    dot.push_str(&format!(
        "  graph [label=\"{}\\ntraining rows {}, base rate {}\", labelloc=t, fontname=\"Helvetica\"];\n",
        dot_escape(&model.version),
        model.training_rows,
        format_number(model.base_rate)
    ));
    dot.push_str("  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\"];\n");
    dot.push_str("  edge [fontname=\"Helvetica\", fontsize=10];\n");
    for (index, node) in model.tree.nodes().iter().enumerate() {
        match *node {
            Node::Split {
                feature,
                threshold,
                left,
                right,
            } => {
                let name = model
                    .feature_names
                    .get(feature)
                    .map_or_else(|| format!("feature-{feature}"), |name| name.clone());
                let count = counts[index];
                dot.push_str(&format!(
                    "  n{index} [label=\"{} <= {}\\n{} rows, rate {}\", fillcolor=\"#dde7f3\"];\n",
                    dot_escape(&name),
                    format_number(threshold),
                    count.total,
                    count.rate().map_or_else(|| "-".to_string(), format_number),
                ));
                dot.push_str(&format!("  n{index} -> n{left} [label=\"yes\"];\n"));
                dot.push_str(&format!("  n{index} -> n{right} [label=\"no / NaN\"];\n"));
            }
            Node::Leaf {
                probability,
                positives,
                total,
            } => {
                let calibrated = model.calibration.apply(probability);
                dot.push_str(&format!(
                    "  n{index} [label=\"leaf {index}\\np = {} (calibrated {})\\n{positives} / {total} positive\", fillcolor=\"{}\"];\n",
                    format_number(probability),
                    format_number(calibrated),
                    heat_color(calibrated),
                ));
            }
        }
    }
    dot.push_str("}\n");
    dot
}

/// Escapes text for a double-quoted DOT string.
fn dot_escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// White for 0 through orange to red for 1, so likely buyers stand out in the tree.
fn heat_color(probability: f64) -> String {
    let t = if probability.is_finite() {
        probability.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let channel = |from: f64, to: f64| (from + (to - from) * t).round() as u8;
    format!(
        "#{:02x}{:02x}{:02x}",
        channel(255.0, 214.0),
        channel(255.0, 39.0),
        channel(255.0, 40.0)
    )
}

/// ROC curve with the chance diagonal.
fn roc_svg(scores: &[f64], labels: &[bool], metrics: &Metrics) -> String {
    let frame = Frame::square(1.0, 1.0);
    let mut svg = svg_open(
        &frame,
        &format!(
            "ROC curve: AUC {} ({} rows, {} positive)",
            format_fixed(metrics.roc_auc, 3),
            metrics.rows,
            metrics.positives
        ),
    );
    frame.axes(&mut svg, "False positive rate", "True positive rate", 5, 5);
    frame.line(
        &mut svg,
        &[(0.0, 0.0), (1.0, 1.0)],
        REFERENCE_COLOR,
        Some("6 4"),
    );
    let curve = thin(roc_curve(scores, labels));
    frame.line(&mut svg, &curve, CURVE_COLOR, None);
    frame.legend(
        &mut svg,
        &[
            ("model", CURVE_COLOR, None),
            ("chance", REFERENCE_COLOR, Some("6 4")),
        ],
        Corner::BottomRight,
    );
    svg.push_str("</svg>\n");
    svg
}

/// Precision-recall step curve (the one average precision integrates) with the base rate.
fn pr_svg(scores: &[f64], labels: &[bool], metrics: &Metrics) -> String {
    let frame = Frame::square(1.0, 1.0);
    let mut svg = svg_open(
        &frame,
        &format!(
            "Precision-recall: AP {} (base rate {})",
            format_fixed(metrics.average_precision, 3),
            format_fixed(metrics.base_rate, 3)
        ),
    );
    frame.axes(&mut svg, "Recall", "Precision", 5, 5);
    frame.line(
        &mut svg,
        &[(0.0, metrics.base_rate), (1.0, metrics.base_rate)],
        REFERENCE_COLOR,
        Some("6 4"),
    );
    let points = thin(precision_recall_curve(scores, labels));
    let mut steps = Vec::with_capacity(points.len() * 2 + 1);
    let mut previous_recall = 0.0;
    for &(recall, precision) in &points {
        steps.push((previous_recall, precision));
        steps.push((recall, precision));
        previous_recall = recall;
    }
    frame.line(&mut svg, &steps, CURVE_COLOR, None);
    frame.legend(
        &mut svg,
        &[
            ("model", CURVE_COLOR, None),
            ("base rate", REFERENCE_COLOR, Some("6 4")),
        ],
        Corner::TopRight,
    );
    svg.push_str("</svg>\n");
    svg
}

/// Reliability diagram: mean score against observed rate per bin, the diagonal for perfect
/// calibration, and a histogram of rows per bin underneath.
fn calibration_svg(bins: &[super::ReliabilityBin], score_upper: f64, metrics: &Metrics) -> String {
    let observed_max = bins
        .iter()
        .filter(|bin| bin.rows > 0)
        .map(|bin| bin.observed_rate)
        .fold(0.0, f64::max);
    let axis_max = nice_ceiling(score_upper.max(observed_max));
    let frame = Frame::square(axis_max, axis_max);
    let histogram_top = frame.top + frame.height + 62.0;
    let histogram_height = 70.0;
    let mut svg = svg_open_sized(
        frame.left + frame.width + 30.0,
        histogram_top + histogram_height + 50.0,
        &format!(
            "Reliability ({} bins): Brier {}, log loss {}",
            bins.len(),
            format_fixed(metrics.brier, 4),
            format_fixed(metrics.log_loss, 4)
        ),
    );
    frame.axes(
        &mut svg,
        "Mean predicted propensity",
        "Observed positive rate",
        5,
        5,
    );
    frame.line(
        &mut svg,
        &[(0.0, 0.0), (axis_max, axis_max)],
        REFERENCE_COLOR,
        Some("6 4"),
    );
    let points: Vec<(f64, f64)> = bins
        .iter()
        .filter(|bin| bin.rows > 0)
        .map(|bin| (bin.mean_score, bin.observed_rate))
        .collect();
    frame.line(&mut svg, &points, CURVE_COLOR, None);
    for &(x, y) in &points {
        svg.push_str(&format!(
            "<circle cx=\"{:.2}\" cy=\"{:.2}\" r=\"4\" fill=\"{CURVE_COLOR}\"/>\n",
            frame.x(x),
            frame.y(y)
        ));
    }
    frame.legend(
        &mut svg,
        &[
            ("model", CURVE_COLOR, None),
            ("perfectly calibrated", REFERENCE_COLOR, Some("6 4")),
        ],
        Corner::TopLeft,
    );

    // Histogram of rows per bin, sharing the x axis scale of the diagram above.
    let max_rows = bins.iter().map(|bin| bin.rows).max().unwrap_or(0).max(1) as f64;
    svg.push_str(&format!(
        "<text x=\"{:.2}\" y=\"{:.2}\" font-size=\"12\">Rows per bin (max {})</text>\n",
        frame.left,
        histogram_top - 8.0,
        max_rows
    ));
    svg.push_str(&format!(
        "<line x1=\"{:.2}\" y1=\"{:.2}\" x2=\"{:.2}\" y2=\"{:.2}\" stroke=\"black\"/>\n",
        frame.left,
        histogram_top + histogram_height,
        frame.left + frame.width,
        histogram_top + histogram_height
    ));
    for bin in bins.iter().filter(|bin| bin.rows > 0) {
        let height = histogram_height * bin.rows as f64 / max_rows;
        let (x0, x1) = (frame.x(bin.lower), frame.x(bin.upper.min(axis_max)));
        svg.push_str(&format!(
            "<rect x=\"{:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{:.2}\" fill=\"#aec7e8\" stroke=\"white\"><title>{} rows, {} positive</title></rect>\n",
            x0,
            histogram_top + histogram_height - height,
            (x1 - x0).max(0.5),
            height,
            bin.rows,
            bin.positives
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

/// Horizontal bar chart of feature importance, largest at the top.
fn importance_svg(model: &Model) -> String {
    let importance = model.feature_importance();
    let labels: Vec<String> = importance
        .iter()
        .map(|(name, _)| truncate(name, 40))
        .collect();
    let longest = labels
        .iter()
        .map(|label| label.chars().count())
        .max()
        .unwrap_or(0);
    let row_height = 24.0;
    let max_share = importance
        .iter()
        .map(|(_, share)| *share)
        .fold(0.0, f64::max);
    let x_max = if max_share > 0.0 {
        nice_ceiling(max_share)
    } else {
        1.0
    };
    let frame = Frame {
        left: (longest as f64 * 7.0 + 24.0).clamp(90.0, 320.0),
        top: 50.0,
        width: 420.0,
        height: row_height * importance.len().max(1) as f64,
        x_max,
        y_max: 1.0,
    };
    let mut svg = svg_open_sized(
        frame.left + frame.width + 70.0,
        frame.top + frame.height + 60.0,
        "Feature importance: share of Gini impurity decrease",
    );
    for tick in ticks(x_max, 5) {
        let x = frame.x(tick);
        svg.push_str(&format!(
            "<line x1=\"{x:.2}\" y1=\"{:.2}\" x2=\"{x:.2}\" y2=\"{:.2}\" stroke=\"{GRID_COLOR}\"/>\n",
            frame.top,
            frame.top + frame.height
        ));
        svg.push_str(&format!(
            "<line x1=\"{x:.2}\" y1=\"{:.2}\" x2=\"{x:.2}\" y2=\"{:.2}\" stroke=\"black\"/>\n",
            frame.top + frame.height,
            frame.top + frame.height + 5.0
        ));
        svg.push_str(&format!(
            "<text x=\"{x:.2}\" y=\"{:.2}\" text-anchor=\"middle\">{}</text>\n",
            frame.top + frame.height + 18.0,
            format_number(tick)
        ));
    }
    for (row, ((_, share), label)) in importance.iter().zip(&labels).enumerate() {
        let y = frame.top + row as f64 * row_height;
        let width = frame.x(*share) - frame.left;
        svg.push_str(&format!(
            "<text x=\"{:.2}\" y=\"{:.2}\" text-anchor=\"end\">{}</text>\n",
            frame.left - 8.0,
            y + row_height / 2.0 + 4.0,
            xml_escape(label)
        ));
        svg.push_str(&format!(
            "<rect x=\"{:.2}\" y=\"{:.2}\" width=\"{width:.2}\" height=\"{:.2}\" fill=\"{CURVE_COLOR}\"/>\n",
            frame.left,
            y + 4.0,
            row_height - 8.0
        ));
        svg.push_str(&format!(
            "<text x=\"{:.2}\" y=\"{:.2}\" font-size=\"11\">{}</text>\n",
            frame.left + width + 5.0,
            y + row_height / 2.0 + 4.0,
            format_fixed(*share, 3)
        ));
    }
    svg.push_str(&format!(
        "<line x1=\"{0:.2}\" y1=\"{1:.2}\" x2=\"{0:.2}\" y2=\"{2:.2}\" stroke=\"black\"/>\n",
        frame.left,
        frame.top,
        frame.top + frame.height
    ));
    svg.push_str(&format!(
        "<line x1=\"{0:.2}\" y1=\"{1:.2}\" x2=\"{2:.2}\" y2=\"{1:.2}\" stroke=\"black\"/>\n",
        frame.left,
        frame.top + frame.height,
        frame.left + frame.width
    ));
    svg.push_str(&format!(
        "<text x=\"{:.2}\" y=\"{:.2}\" text-anchor=\"middle\">Share of total impurity decrease</text>\n",
        frame.left + frame.width / 2.0,
        frame.top + frame.height + 40.0
    ));
    if max_share == 0.0 {
        svg.push_str(&format!(
            "<text x=\"{:.2}\" y=\"{:.2}\" fill=\"{REFERENCE_COLOR}\">the tree has no splits</text>\n",
            frame.left + 10.0,
            frame.top - 8.0
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

/// A plot area in pixels and the data range it shows (both axes start at 0).
pub(crate) struct Frame {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
    x_max: f64,
    y_max: f64,
}

/// Where to put a legend inside the plot area.
pub(crate) enum Corner {
    TopLeft,
    TopRight,
    BottomRight,
}

impl Frame {
    /// The standard 400 x 400 pixel plot area used by the curve charts.
    pub(crate) fn square(x_max: f64, y_max: f64) -> Frame {
        Frame {
            left: 70.0,
            top: 50.0,
            width: 400.0,
            height: 400.0,
            x_max,
            y_max,
        }
    }

    /// Pixel x for a data x, clamped to the plot area.
    pub(crate) fn x(&self, value: f64) -> f64 {
        self.left + finite_or_zero(value).clamp(0.0, self.x_max) / self.x_max * self.width
    }

    /// Pixel y for a data y (SVG y grows downward), clamped to the plot area.
    pub(crate) fn y(&self, value: f64) -> f64 {
        self.top + self.height
            - finite_or_zero(value).clamp(0.0, self.y_max) / self.y_max * self.height
    }

    /// Grid, axis lines, ticks with labels, and axis titles.
    pub(crate) fn axes(
        &self,
        svg: &mut String,
        x_label: &str,
        y_label: &str,
        x_ticks: usize,
        y_ticks: usize,
    ) {
        let bottom = self.top + self.height;
        let right = self.left + self.width;
        for tick in ticks(self.x_max, x_ticks) {
            let x = self.x(tick);
            svg.push_str(&format!(
                "<line x1=\"{x:.2}\" y1=\"{:.2}\" x2=\"{x:.2}\" y2=\"{bottom:.2}\" stroke=\"{GRID_COLOR}\"/>\n",
                self.top
            ));
            svg.push_str(&format!(
                "<line x1=\"{x:.2}\" y1=\"{bottom:.2}\" x2=\"{x:.2}\" y2=\"{:.2}\" stroke=\"black\"/>\n",
                bottom + 5.0
            ));
            svg.push_str(&format!(
                "<text x=\"{x:.2}\" y=\"{:.2}\" text-anchor=\"middle\">{}</text>\n",
                bottom + 18.0,
                format_number(tick)
            ));
        }
        for tick in ticks(self.y_max, y_ticks) {
            let y = self.y(tick);
            svg.push_str(&format!(
                "<line x1=\"{:.2}\" y1=\"{y:.2}\" x2=\"{right:.2}\" y2=\"{y:.2}\" stroke=\"{GRID_COLOR}\"/>\n",
                self.left
            ));
            svg.push_str(&format!(
                "<line x1=\"{:.2}\" y1=\"{y:.2}\" x2=\"{:.2}\" y2=\"{y:.2}\" stroke=\"black\"/>\n",
                self.left - 5.0,
                self.left
            ));
            svg.push_str(&format!(
                "<text x=\"{:.2}\" y=\"{:.2}\" text-anchor=\"end\">{}</text>\n",
                self.left - 8.0,
                y + 4.0,
                format_number(tick)
            ));
        }
        svg.push_str(&format!(
            "<rect x=\"{:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{:.2}\" fill=\"none\" stroke=\"black\"/>\n",
            self.left, self.top, self.width, self.height
        ));
        svg.push_str(&format!(
            "<text x=\"{:.2}\" y=\"{:.2}\" text-anchor=\"middle\">{}</text>\n",
            self.left + self.width / 2.0,
            bottom + 40.0,
            xml_escape(x_label)
        ));
        let (label_x, label_y) = (self.left - 48.0, self.top + self.height / 2.0);
        svg.push_str(&format!(
            "<text x=\"{label_x:.2}\" y=\"{label_y:.2}\" text-anchor=\"middle\" transform=\"rotate(-90 {label_x:.2} {label_y:.2})\">{}</text>\n",
            xml_escape(y_label)
        ));
    }

    /// A polyline through data points; nothing for fewer than two points.
    pub(crate) fn line(
        &self,
        svg: &mut String,
        points: &[(f64, f64)],
        color: &str,
        dash: Option<&str>,
    ) {
        if points.len() < 2 {
            return;
        }
        let coordinates: Vec<String> = points
            .iter()
            .map(|&(x, y)| format!("{:.2},{:.2}", self.x(x), self.y(y)))
            .collect();
        let dash = dash.map_or_else(String::new, |dash| format!(" stroke-dasharray=\"{dash}\""));
        svg.push_str(&format!(
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"{dash}/>\n",
            coordinates.join(" ")
        ));
    }

    /// A boxed legend of line samples with labels.
    pub(crate) fn legend(
        &self,
        svg: &mut String,
        entries: &[(&str, &str, Option<&str>)],
        corner: Corner,
    ) {
        let width = 12.0
            + 34.0
            + entries
                .iter()
                .map(|(label, _, _)| label.chars().count())
                .max()
                .unwrap_or(0) as f64
                * 7.0;
        let height = 8.0 + entries.len() as f64 * 18.0;
        let x = match corner {
            Corner::TopLeft => self.left + 10.0,
            Corner::TopRight | Corner::BottomRight => self.left + self.width - width - 10.0,
        };
        let y = match corner {
            Corner::TopLeft | Corner::TopRight => self.top + 10.0,
            Corner::BottomRight => self.top + self.height - height - 10.0,
        };
        svg.push_str(&format!(
            "<rect x=\"{x:.2}\" y=\"{y:.2}\" width=\"{width:.2}\" height=\"{height:.2}\" fill=\"white\" fill-opacity=\"0.9\" stroke=\"#cccccc\"/>\n"
        ));
        for (row, (label, color, dash)) in entries.iter().enumerate() {
            let line_y = y + 13.0 + row as f64 * 18.0;
            let dash =
                dash.map_or_else(String::new, |dash| format!(" stroke-dasharray=\"{dash}\""));
            svg.push_str(&format!(
                "<line x1=\"{:.2}\" y1=\"{line_y:.2}\" x2=\"{:.2}\" y2=\"{line_y:.2}\" stroke=\"{color}\" stroke-width=\"2\"{dash}/>\n",
                x + 8.0,
                x + 32.0
            ));
            svg.push_str(&format!(
                "<text x=\"{:.2}\" y=\"{:.2}\">{}</text>\n",
                x + 40.0,
                line_y + 4.0,
                xml_escape(label)
            ));
        }
    }
}

/// Opens an SVG sized to hold a standard [`Frame`] with axis titles.
pub(crate) fn svg_open(frame: &Frame, title: &str) -> String {
    svg_open_wider(frame, 0.0, title)
}

/// As [`svg_open`], with `extra` pixels of room right of the plot area (for a legend).
pub(crate) fn svg_open_wider(frame: &Frame, extra: f64, title: &str) -> String {
    svg_open_sized(
        frame.left + frame.width + 30.0 + extra,
        frame.top + frame.height + 60.0,
        title,
    )
}

/// Opens an SVG document with a white background and a centred title.
fn svg_open_sized(width: f64, height: f64, title: &str) -> String {
    let title = xml_escape(title);
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"Helvetica, Arial, sans-serif\" font-size=\"12\">\n<title>{title}</title>\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{:.2}\" y=\"28\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">{title}</text>\n",
        width / 2.0
    )
}

/// Evenly spaced tick values from 0 to `max` inclusive.
fn ticks(max: f64, intervals: usize) -> Vec<f64> {
    let intervals = intervals.max(1);
    (0..=intervals)
        .map(|i| max * i as f64 / intervals as f64)
        .collect()
}

/// The smallest "round" axis limit at or above `value`, capped at 1 (all axes here show
/// probabilities or shares).
fn nice_ceiling(value: f64) -> f64 {
    [0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0]
        .into_iter()
        .find(|&limit| value <= limit + 1e-12)
        .unwrap_or(1.0)
}

/// Shortest readable form: up to 4 decimals with trailing zeros removed, scientific notation
/// for tiny non-zero magnitudes, "NaN" never reaching a coordinate (only labels use this).
pub(crate) fn format_number(value: f64) -> String {
    if !value.is_finite() {
        return "n/a".to_string();
    }
    if value != 0.0 && value.abs() < 1e-3 {
        return format!("{value:.2e}");
    }
    let text = format!("{value:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_string()
    } else {
        text.to_string()
    }
}

/// Fixed decimals for metric values, "n/a" when undefined.
fn format_fixed(value: f64, decimals: usize) -> String {
    if value.is_finite() {
        format!("{value:.decimals$}")
    } else {
        "n/a".to_string()
    }
}

fn finite_or_zero(value: f64) -> f64 {
    if value.is_finite() { value } else { 0.0 }
}

/// Escapes text for SVG element content and attribute values.
pub(crate) fn xml_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// Shortens long feature names so the bar chart keeps a sane left margin.
fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        text.to_string()
    } else {
        let kept: String = text.chars().take(max_chars - 1).collect();
        format!("{kept}…")
    }
}

/// Keeps at most about [`MAX_CURVE_POINTS`] points, always the first and last, so a curve over
/// a million distinct scores does not become a multi-megabyte SVG.
fn thin(points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    if points.len() <= MAX_CURVE_POINTS {
        return points;
    }
    let stride = points.len().div_ceil(MAX_CURVE_POINTS);
    let last = points.len() - 1;
    points
        .into_iter()
        .enumerate()
        .filter(|(index, _)| index % stride == 0 || *index == last)
        .map(|(_, point)| point)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::test_support::small_model;
    use super::*;

    /// Checks that every tag is closed in order, attributes are quoted and no non-finite number
    /// leaked into the markup. Not a full XML parser, but enough to catch what hand-written SVG
    /// gets wrong.
    fn assert_well_formed(svg: &str) {
        assert!(svg.starts_with("<svg "), "must start with <svg");
        assert!(svg.trim_end().ends_with("</svg>"), "must end with </svg>");
        for bad in ["NaN", "inf", "\"-0.00\""] {
            let in_markup = svg
                .split('<')
                .any(|chunk| chunk.split('>').next().is_some_and(|tag| tag.contains(bad)));
            assert!(!in_markup, "{bad} inside a tag");
        }
        let mut stack: Vec<String> = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let end = rest[start..].find('>').expect("unterminated tag") + start;
            let tag = &rest[start + 1..end];
            assert_eq!(
                tag.matches('"').count() % 2,
                0,
                "unbalanced quotes in <{tag}>"
            );
            let text_between = &rest[..start];
            assert!(!text_between.contains('>'), "stray > in text");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name), "mismatched </{name}>");
            } else if !tag.ends_with('/') {
                let name = tag.split_whitespace().next().unwrap().to_string();
                stack.push(name);
            }
            rest = &rest[end + 1..];
        }
        assert!(stack.is_empty(), "unclosed tags: {stack:?}");
    }

    fn validation() -> (Vec<f64>, Vec<bool>) {
        let scores = vec![0.05, 0.05, 0.25, 0.25, 0.7, 0.7, 0.05, 0.25, 0.7, 0.05];
        let labels = vec![
            false, false, false, true, true, true, false, false, false, true,
        ];
        (scores, labels)
    }

    fn temporary_dir(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!(
            "propensity-report-{name}-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        ))
    }

    #[test]
    fn writes_all_files_well_formed() {
        let dir = temporary_dir("all");
        let (scores, labels) = validation();
        let model = small_model();
        write_report(&dir, &model, &scores, &labels).unwrap();
        for name in [
            "roc.svg",
            "pr.svg",
            "calibration.svg",
            "feature_importance.svg",
        ] {
            let svg = std::fs::read_to_string(dir.join(name)).unwrap();
            assert_well_formed(&svg);
            assert!(
                svg.contains("<polyline") || name == "feature_importance.svg",
                "{name}"
            );
        }
        let dot = std::fs::read_to_string(dir.join("tree.dot")).unwrap();
        assert!(dot.starts_with("digraph"));
        assert!(dot.trim_end().ends_with('}'));
        assert!(dot.contains("cart_value <= 0.5"), "{dot}");
        assert!(dot.contains("n0 -> n1 [label=\"yes\"]"));
        assert!(dot.contains("n0 -> n4 [label=\"no / NaN\"]"));
        assert!(
            dot.contains("p = 0.8 (calibrated 0.7)\\n160 / 200 positive"),
            "{dot}"
        );
        assert!(dot.contains("400 rows, rate 0.5"), "{dot}");
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap())
                .unwrap();
        assert_eq!(summary["validation"]["rows"], 10);
        assert_eq!(summary["reliability_bins"].as_array().unwrap().len(), 10);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn charts_carry_titles_axes_and_values() {
        let (scores, labels) = validation();
        let metrics = evaluate(&scores, &labels);
        let roc = roc_svg(&scores, &labels, &metrics);
        assert!(roc.contains(&format!("AUC {:.3}", metrics.roc_auc)));
        assert!(roc.contains("False positive rate") && roc.contains("True positive rate"));
        assert!(
            roc.contains(">0.2</text>") && roc.contains(">1</text>"),
            "tick labels"
        );
        let pr = pr_svg(&scores, &labels, &metrics);
        assert!(pr.contains(&format!("AP {:.3}", metrics.average_precision)));
        let importance = importance_svg(&small_model());
        assert!(importance.contains(">cart_value</text>"));
        assert!(importance.contains(">unused</text>"));
        assert_well_formed(&importance);
    }

    #[test]
    fn calibration_axes_zoom_to_small_propensities() {
        let scores: Vec<f64> = (0..200).map(|i| 0.001 + i as f64 * 0.0002).collect();
        let labels: Vec<bool> = (0..200).map(|i| i % 25 == 0).collect();
        let metrics = evaluate(&scores, &labels);
        let upper = nice_ceiling(scores.iter().copied().fold(0.0, f64::max));
        assert_eq!(upper, 0.05);
        let bins = reliability_bins_over(&scores, &labels, RELIABILITY_BINS, upper);
        assert!(
            bins.iter().filter(|bin| bin.rows > 0).count() >= 8,
            "{bins:?}"
        );
        let svg = calibration_svg(&bins, upper, &metrics);
        assert_well_formed(&svg);
        assert!(
            svg.contains(">0.05</text>"),
            "axis ends at the zoomed limit"
        );
    }

    #[test]
    fn names_are_escaped() {
        assert_eq!(xml_escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
        assert_eq!(dot_escape(r#"say "hi" \ bye"#), r#"say \"hi\" \\ bye"#);
        let mut model = small_model();
        model.feature_names[0] = "price <eur> & \"tax\"".into();
        assert_well_formed(&importance_svg(&model));
        assert!(tree_dot(&model).contains(r#"price <eur> & \"tax\" <= 0.5"#));
    }

    #[test]
    fn rejects_unusable_validation_sets() {
        let dir = temporary_dir("reject");
        let model = small_model();
        assert!(matches!(
            write_report(&dir, &model, &[0.1], &[true, false]),
            Err(ModelError::ScoreCountMismatch {
                scores: 1,
                labels: 2
            })
        ));
        assert!(matches!(
            write_report(&dir, &model, &[], &[]),
            Err(ModelError::EmptyDataset {
                dataset: "validation"
            })
        ));
        assert!(matches!(
            write_report(&dir, &model, &[0.1, 0.2], &[true, true]),
            Err(ModelError::SingleClass {
                dataset: "validation",
                positive: true
            })
        ));
        assert!(!dir.exists(), "nothing is written for a rejected set");
    }

    #[test]
    fn number_formatting() {
        assert_eq!(format_number(0.5), "0.5");
        assert_eq!(format_number(2.0), "2");
        assert_eq!(format_number(42.123_456), "42.1235");
        assert_eq!(format_number(0.000_123), "1.23e-4");
        assert_eq!(format_number(-0.000_01 * 0.0), "0");
        assert_eq!(format_number(f64::NAN), "n/a");
        assert_eq!(format_fixed(f64::NAN, 3), "n/a");
        assert_eq!(nice_ceiling(0.03), 0.05);
        assert_eq!(nice_ceiling(0.2), 0.2);
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(heat_color(0.0), "#ffffff");
        assert_eq!(heat_color(1.0), "#d62728");
    }

    #[test]
    fn thinning_keeps_endpoints_and_bounds_size() {
        let points: Vec<(f64, f64)> = (0..=10_000).map(|i| (i as f64, i as f64)).collect();
        let thinned = thin(points);
        assert!(thinned.len() <= MAX_CURVE_POINTS + 1);
        assert_eq!(thinned.first(), Some(&(0.0, 0.0)));
        assert_eq!(thinned.last(), Some(&(10_000.0, 10_000.0)));
    }
}
