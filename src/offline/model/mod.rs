//! The purchase-propensity model: training, scoring, explanation, evaluation and reports.
//!
//! A [`Model`] is a single decision tree (fitted with linfa-trees, then converted into our own
//! flat [`Tree`]) whose leaves hold smoothed positive-class frequencies, followed by an isotonic
//! [`Calibration`] fitted on held-out rows. It is saved as JSON so that the serving process, the
//! training command and a human can all read it.
//!
//! - [`train`] fits a model from a training and a calibration [`Dataset`].
//! - [`Model::score`] is the serving hot path: a loop over the flat tree plus a binary search in
//!   the calibration map, with no allocation.
//! - [`Model::explain`] returns the decision path behind a score.
//! - [`evaluate`] and [`write_report`] measure a model on validation rows.

mod calibration;
mod error;
mod metrics;
mod profile;
pub(crate) mod report;
mod train;
mod tree;

use std::path::Path;

use chrono::{SecondsFormat, Utc};
use ndarray::Array2;
use serde::{Deserialize, Serialize};

pub use calibration::Calibration;
pub use error::ModelError;
pub use metrics::{
    LOG_LOSS_EPSILON, Metrics, ReliabilityBin, evaluate, precision_recall_curve, reliability_bins,
    reliability_bins_over, roc_curve,
};
pub use profile::{Profile, Profiles, QUANTILES, Quantile};
pub use report::write_report;
pub use train::{FittedTree, TrainOptions, TrainTimings, fit_tree, train, train_timed};
pub use tree::{Branch, Node, NodeCounts, Tree};

/// A training, calibration or validation set: row-major features, labels, feature names.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// One row per example, one column per feature.
    pub features: Array2<f64>,
    /// `true` for the positive class (the session converted).
    pub labels: Vec<bool>,
    /// Name of each feature column, in column order.
    pub feature_names: Vec<String>,
    /// How many rows each negative row stands for: 1 when every row was kept, `k` when one
    /// negative in `k` was kept (every positive always is). Leaf counts, the base rate and the
    /// propensities weigh negatives by it, so they estimate the full population.
    pub negative_weight: u64,
}

impl Dataset {
    /// A set where every row stands for itself.
    pub fn new(features: Array2<f64>, labels: Vec<bool>, feature_names: Vec<String>) -> Dataset {
        Dataset {
            features,
            labels,
            feature_names,
            negative_weight: 1,
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.labels.len()
    }

    /// Number of rows the set stands for: positives plus negatives times their weight.
    pub fn represented_rows(&self) -> u64 {
        let positives = self.positives() as u64;
        positives + (self.rows() as u64 - positives) * self.negative_weight
    }

    /// Number of positive labels.
    pub fn positives(&self) -> usize {
        self.labels.iter().filter(|&&label| label).count()
    }

    /// Checks that the set can be trained or calibrated on: non-empty, shapes consistent, at
    /// least one feature, every value finite (linfa sorts with NaN as "greater", which would
    /// silently corrupt splits) and both classes present. `dataset` names the set in errors.
    pub fn validate(&self, dataset: &'static str) -> Result<(), ModelError> {
        let (rows, columns) = self.features.dim();
        if rows != self.labels.len() {
            return Err(ModelError::LabelCountMismatch {
                dataset,
                rows,
                labels: self.labels.len(),
            });
        }
        if rows == 0 {
            return Err(ModelError::EmptyDataset { dataset });
        }
        if columns != self.feature_names.len() {
            return Err(ModelError::FeatureCountMismatch {
                expected: self.feature_names.len(),
                actual: columns,
            });
        }
        if columns == 0 {
            return Err(ModelError::NoFeatures { dataset });
        }
        if self.negative_weight == 0 {
            return Err(ModelError::InvalidOptions(format!(
                "the {dataset} set's negative weight must be at least 1"
            )));
        }
        if let Some(((row, column), &value)) = self
            .features
            .indexed_iter()
            .find(|(_, value)| !value.is_finite())
        {
            return Err(ModelError::NonFiniteFeature {
                dataset,
                row,
                feature: self.feature_names[column].clone(),
                value,
            });
        }
        let positives = self.positives();
        if positives == 0 || positives == rows {
            return Err(ModelError::SingleClass {
                dataset,
                positive: positives == rows,
            });
        }
        Ok(())
    }
}

/// A trained, calibrated propensity model, stored as JSON.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Model {
    /// `dt-<unix seconds>-<8 hex digits of a hash of names, tree and calibration>`.
    pub version: String,
    /// Feature names in the order [`Model::score`] expects the values.
    pub feature_names: Vec<String>,
    /// The decision tree; leaves hold smoothed, uncalibrated probabilities.
    pub tree: Tree,
    /// Map from leaf probability to calibrated propensity.
    pub calibration: Calibration,
    /// Metrics on a validation set, filled in by the caller after training.
    pub metrics: Option<Metrics>,
    /// When the model was trained, RFC 3339 in UTC.
    pub trained_at: String,
    /// First and last event time of the training data, filled in by the caller.
    pub data_span: Option<(String, String)>,
    /// Number of training rows the tree stands for: with downsampled negatives, the kept rows
    /// with their weights.
    pub training_rows: usize,
    /// Positive share of the training rows (weighted the same way).
    pub base_rate: f64,
    /// How each feature and the propensity were distributed over the training rows; absent in
    /// models trained before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profiles: Option<Profiles>,
}

/// What a user needs to know of a model at a glance: `GET /v1/model` and `propensity describe`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct ModelCard {
    pub version: String,
    pub trained_at: String,
    /// First and last event time of the history it was trained on.
    pub training_span: Option<TrainingSpan>,
    /// Rows the tree stands for.
    pub training_rows: usize,
    pub base_rate: f64,
    /// On the held-out validation rows.
    pub metrics: Option<Metrics>,
    /// The features with the largest share of the tree's impurity decrease, largest first.
    pub top_features: Vec<FeatureImportance>,
    /// Whether the model carries training distributions (for `describe` and the drift watch).
    pub training_distributions: bool,
}

/// The event-time span of a model's training history.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct TrainingSpan {
    pub from: String,
    pub to: String,
}

/// A feature's share of a model's impurity decrease.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct FeatureImportance {
    pub feature: String,
    pub importance: f64,
}

/// Why a model gave the score it gave: the splits taken and the leaf reached.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Explanation {
    /// The splits visited, root first.
    pub steps: Vec<DecisionStep>,
    /// The leaf reached.
    pub leaf: LeafExplanation,
    /// The calibrated score, identical to [`Model::score`] for the same input.
    pub score: f64,
    /// The training base rate, to read the score against.
    pub base_rate: f64,
}

/// One split on a decision path.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DecisionStep {
    /// Index of the split node in [`Tree::nodes`].
    pub node: u32,
    /// Name of the feature tested.
    pub feature: String,
    /// Column index of the feature tested.
    pub feature_index: usize,
    /// The input value; NaN (JSON `null`) when it was NaN or missing.
    #[serde(with = "metrics::nullable_f64")]
    pub value: f64,
    /// The split threshold.
    pub threshold: f64,
    /// `left` for `value <= threshold`, `right` otherwise.
    pub branch: Branch,
}

/// The leaf at the end of a decision path.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LeafExplanation {
    /// Index of the leaf in [`Tree::nodes`].
    pub node: u32,
    /// Smoothed leaf probability before calibration.
    pub probability: f64,
    /// Positive training rows in the leaf.
    pub positives: u64,
    /// Training rows in the leaf.
    pub total: u64,
}

impl Model {
    /// Builds a model from trained parts, stamping the time and a content-derived version.
    pub fn assemble(
        feature_names: Vec<String>,
        tree: Tree,
        calibration: Calibration,
        training_rows: usize,
        base_rate: f64,
    ) -> Result<Model, ModelError> {
        let now = Utc::now();
        let content = serde_json::to_vec(&(&feature_names, &tree, &calibration))
            .map_err(ModelError::Serialize)?;
        let model = Model {
            version: format!("dt-{}-{:08x}", now.timestamp(), content_hash(&content)),
            feature_names,
            tree,
            calibration,
            metrics: None,
            trained_at: now.to_rfc3339_opts(SecondsFormat::Secs, true),
            data_span: None,
            training_rows,
            base_rate,
            profiles: None,
        };
        model.validate()?;
        Ok(model)
    }

    /// Reads and validates a model saved by [`Model::save`].
    pub fn load(path: impl AsRef<Path>) -> Result<Model, ModelError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            operation: "read",
            path: path.to_path_buf(),
            source,
        })?;
        let model: Model = serde_json::from_str(&text).map_err(|source| ModelError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        model.validate()?;
        Ok(model)
    }

    /// Writes the model as pretty JSON.
    ///
    /// Writes a sibling `<path>.tmp` and renames it over `path`, so a process watching the file
    /// for hot reloads never reads a half-written model; creates the directory when missing.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), ModelError> {
        let json = serde_json::to_vec_pretty(self).map_err(ModelError::Serialize)?;
        crate::offline::write_replacing(path.as_ref(), &json).map_err(
            |(operation, path, source)| ModelError::Io {
                operation,
                path,
                source,
            },
        )
    }

    /// Checks the invariants that deserialization alone cannot: every split reads an existing
    /// feature and the base rate is a probability. (Tree and calibration check their own shape
    /// when deserialized.)
    pub fn validate(&self) -> Result<(), ModelError> {
        if let Some(feature) = self.tree.max_feature()
            && feature >= self.feature_names.len()
        {
            return Err(ModelError::InvalidModel(format!(
                "a split reads feature {feature} but the model has {} feature names",
                self.feature_names.len()
            )));
        }
        if !(0.0..=1.0).contains(&self.base_rate) {
            return Err(ModelError::InvalidModel(format!(
                "base rate {} is not a probability",
                self.base_rate
            )));
        }
        self.calibration.validate()
    }

    /// Returns the calibrated propensity in `[0, 1]` for one feature vector, in the order of
    /// [`Model::feature_names`]. Does not allocate.
    ///
    /// NaN values must not occur; debug builds assert it (and the vector length). Release builds
    /// do not panic: a NaN or missing value fails `value <= threshold` and takes the right
    /// branch. Use [`Model::score_checked`] where the input is not trusted.
    #[inline]
    pub fn score(&self, features: &[f64]) -> f64 {
        debug_assert_eq!(
            features.len(),
            self.feature_names.len(),
            "feature vector length does not match the model"
        );
        let leaf = self.tree.walk(features, |_, feature, value, _, _| {
            debug_assert!(!value.is_nan(), "feature {feature} is NaN");
        });
        self.calibration.apply(self.tree.leaf_at(leaf).0)
    }

    /// Like [`Model::score`], but returns an error for a wrong-length vector or a NaN value.
    pub fn score_checked(&self, features: &[f64]) -> Result<f64, ModelError> {
        if features.len() != self.feature_names.len() {
            return Err(ModelError::FeatureCountMismatch {
                expected: self.feature_names.len(),
                actual: features.len(),
            });
        }
        if let Some(column) = features.iter().position(|value| value.is_nan()) {
            return Err(ModelError::NanFeature {
                feature: self.feature_names[column].clone(),
            });
        }
        Ok(self.score(features))
    }

    /// Scores every row of `dataset`, whose feature names must match the model's.
    pub fn score_dataset(&self, dataset: &Dataset) -> Result<Vec<f64>, ModelError> {
        if let Some(position) = (0..self.feature_names.len().max(dataset.feature_names.len()))
            .find(|&i| self.feature_names.get(i) != dataset.feature_names.get(i))
        {
            return Err(ModelError::FeatureNamesMismatch {
                position,
                expected: self
                    .feature_names
                    .get(position)
                    .cloned()
                    .unwrap_or_default(),
                actual: dataset
                    .feature_names
                    .get(position)
                    .cloned()
                    .unwrap_or_default(),
            });
        }
        if dataset.features.ncols() != self.feature_names.len() {
            return Err(ModelError::FeatureCountMismatch {
                expected: self.feature_names.len(),
                actual: dataset.features.ncols(),
            });
        }
        let mut scores = Vec::with_capacity(dataset.features.nrows());
        let mut failure = None;
        tree::for_each_row(dataset.features.view(), |row, values| {
            if failure.is_some() {
                return;
            }
            match values.iter().position(|value| value.is_nan()) {
                Some(column) => {
                    failure = Some(ModelError::NonFiniteFeature {
                        dataset: "scoring",
                        row,
                        feature: self.feature_names[column].clone(),
                        value: values[column],
                    })
                }
                None => scores.push(self.score(values)),
            }
        });
        match failure {
            Some(error) => Err(error),
            None => Ok(scores),
        }
    }

    /// Returns the decision path for one feature vector: each split visited with its feature
    /// name, the input value, the threshold and the branch taken, then the leaf and the score.
    /// Follows exactly the walk [`Model::score`] does (NaN goes right) but never asserts.
    pub fn explain(&self, features: &[f64]) -> Explanation {
        let mut steps = Vec::new();
        let leaf = self
            .tree
            .walk(features, |node, feature, value, threshold, branch| {
                steps.push(DecisionStep {
                    node: node as u32,
                    feature: self
                        .feature_names
                        .get(feature)
                        .cloned()
                        .unwrap_or_else(|| format!("feature-{feature}")),
                    feature_index: feature,
                    value,
                    threshold,
                    branch,
                });
            });
        let (probability, positives, total) = self.tree.leaf_at(leaf);
        Explanation {
            steps,
            leaf: LeafExplanation {
                node: leaf as u32,
                probability,
                positives,
                total,
            },
            score: self.calibration.apply(probability),
            base_rate: self.base_rate,
        }
    }

    /// The model's card, with its `top` most important features.
    pub fn card(&self, top: usize) -> ModelCard {
        ModelCard {
            version: self.version.clone(),
            trained_at: self.trained_at.clone(),
            training_span: self.data_span.as_ref().map(|(from, to)| TrainingSpan {
                from: from.clone(),
                to: to.clone(),
            }),
            training_rows: self.training_rows,
            base_rate: self.base_rate,
            metrics: self.metrics.clone(),
            top_features: self
                .feature_importance()
                .into_iter()
                .filter(|(_, importance)| *importance > 0.0)
                .take(top)
                .map(|(feature, importance)| FeatureImportance {
                    feature,
                    importance,
                })
                .collect(),
            training_distributions: self.profiles.is_some(),
        }
    }

    /// Returns each feature's share of the tree's total impurity decrease, largest first; the
    /// shares sum to 1 (all zero for a single-leaf tree).
    ///
    /// The decrease is unweighted Gini on the training rows, `n_t * gini_t - n_l * gini_l -
    /// n_r * gini_r` summed over a feature's splits (scikit-learn's mean decrease in impurity),
    /// computed from the leaf counts the model stores. Features never split on appear with 0.
    pub fn feature_importance(&self) -> Vec<(String, f64)> {
        let decrease = self.tree.impurity_decrease(self.feature_names.len());
        let total: f64 = decrease.iter().sum();
        let mut importance: Vec<(String, f64)> = self
            .feature_names
            .iter()
            .cloned()
            .zip(
                decrease
                    .into_iter()
                    .map(|value| if total > 0.0 { value / total } else { 0.0 }),
            )
            .collect();
        importance.sort_by(|a, b| b.1.total_cmp(&a.1));
        importance
    }
}

/// 32-bit digest of `bytes` (64-bit FNV-1a folded), stable across Rust versions and platforms
/// unlike `DefaultHasher`, so the same model content always gets the same version suffix.
pub(crate) fn content_hash(bytes: &[u8]) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    ((hash >> 32) ^ hash) as u32
}

#[cfg(test)]
pub(crate) mod test_support {
    //! A small hand-built model shared by the tests of this module and of the report.

    use super::*;

    /// `x0 <= 0.5 ? (x1 <= 2 ? 0.1 : 0.3) : 0.8`, then an isotonic map to 0.05, 0.25 and 0.7.
    pub fn small_model() -> Model {
        let tree = Tree::new(vec![
            Node::Split {
                feature: 0,
                threshold: 0.5,
                left: 1,
                right: 4,
            },
            Node::Split {
                feature: 1,
                threshold: 2.0,
                left: 2,
                right: 3,
            },
            Node::Leaf {
                probability: 0.1,
                positives: 10,
                total: 100,
            },
            Node::Leaf {
                probability: 0.3,
                positives: 30,
                total: 100,
            },
            Node::Leaf {
                probability: 0.8,
                positives: 160,
                total: 200,
            },
        ])
        .unwrap();
        let calibration = Calibration::Isotonic {
            scores: vec![0.1, 0.3, 0.8],
            probabilities: vec![0.05, 0.25, 0.7],
            rows: 300,
        };
        Model::assemble(
            vec!["cart_value".into(), "page_views".into(), "unused".into()],
            tree,
            calibration,
            400,
            0.5,
        )
        .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::small_model;
    use super::*;
    use ndarray::array;

    fn temporary_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "propensity-model-{name}-{}-{}",
            std::process::id(),
            Utc::now().timestamp_nanos_opt().unwrap_or_default()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn score_applies_calibration_to_the_leaf() {
        let model = small_model();
        assert_eq!(model.score(&[0.2, 1.0, 0.0]), 0.05);
        assert_eq!(model.score(&[0.2, 3.0, 0.0]), 0.25);
        assert_eq!(model.score(&[0.9, 3.0, 0.0]), 0.7);
    }

    #[test]
    fn explain_path_matches_score() {
        let model = small_model();
        for features in [[0.2, 1.0, 0.0], [0.5, 2.5, 9.0], [7.0, -1.0, 1.0]] {
            let explanation = model.explain(&features);
            assert_eq!(explanation.score, model.score(&features));
            // Replaying the steps by hand must land on the reported leaf.
            let mut node = 0usize;
            for step in &explanation.steps {
                assert_eq!(step.node as usize, node);
                let Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } = model.tree.nodes()[node]
                else {
                    panic!("step at a leaf");
                };
                assert_eq!(step.feature, model.feature_names[feature]);
                assert_eq!(step.value, features[feature]);
                assert_eq!(step.threshold, threshold);
                let goes_left = features[feature] <= threshold;
                assert_eq!(
                    step.branch,
                    if goes_left {
                        Branch::Left
                    } else {
                        Branch::Right
                    }
                );
                node = if goes_left { left } else { right } as usize;
            }
            assert_eq!(explanation.leaf.node as usize, node);
        }
    }

    #[test]
    fn explain_reports_names_values_and_leaf() {
        let explanation = small_model().explain(&[0.2, 3.0, 0.0]);
        assert_eq!(explanation.steps.len(), 2);
        assert_eq!(explanation.steps[0].feature, "cart_value");
        assert_eq!(explanation.steps[0].branch, Branch::Left);
        assert_eq!(explanation.steps[1].feature, "page_views");
        assert_eq!(explanation.steps[1].value, 3.0);
        assert_eq!(explanation.steps[1].branch, Branch::Right);
        assert_eq!(
            explanation.leaf,
            LeafExplanation {
                node: 3,
                probability: 0.3,
                positives: 30,
                total: 100
            }
        );
        let json = serde_json::to_value(&explanation).unwrap();
        assert_eq!(json["steps"][1]["branch"], "right");
        assert_eq!(json["base_rate"], 0.5);
    }

    #[test]
    fn explain_handles_nan_by_going_right_and_serializes_it_as_null() {
        let explanation = small_model().explain(&[f64::NAN, 0.0, 0.0]);
        assert_eq!(explanation.steps.len(), 1);
        assert_eq!(explanation.steps[0].branch, Branch::Right);
        assert_eq!(explanation.score, 0.7);
        let json = serde_json::to_string(&explanation).unwrap();
        assert!(json.contains(r#""value":null"#), "{json}");
        let back: Explanation = serde_json::from_str(&json).unwrap();
        assert!(back.steps[0].value.is_nan());
    }

    #[cfg(not(debug_assertions))]
    #[test]
    fn score_sends_nan_right_without_panicking_in_release() {
        let model = small_model();
        assert_eq!(model.score(&[f64::NAN, 0.0, 0.0]), 0.7);
        assert_eq!(model.score(&[0.2, f64::NAN, 0.0]), 0.25);
        assert_eq!(model.score(&[]), 0.7);
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "is NaN")]
    fn score_asserts_against_nan_in_debug() {
        small_model().score(&[f64::NAN, 0.0, 0.0]);
    }

    #[test]
    fn score_checked_rejects_bad_vectors() {
        let model = small_model();
        assert_eq!(model.score_checked(&[0.2, 1.0, 0.0]).unwrap(), 0.05);
        let error = model.score_checked(&[0.2, 1.0]).unwrap_err();
        assert_eq!(error.to_string(), "expected 3 features, got 2");
        let error = model.score_checked(&[0.2, f64::NAN, 0.0]).unwrap_err();
        assert_eq!(error.to_string(), r#"feature "page_views" is NaN"#);
    }

    #[test]
    fn score_dataset_checks_names_and_scores_every_row() {
        let model = small_model();
        let mut dataset = Dataset {
            features: array![[0.2, 1.0, 0.0], [0.9, 0.0, 0.0]],
            labels: vec![false, true],
            feature_names: model.feature_names.clone(),
            negative_weight: 1,
        };
        assert_eq!(model.score_dataset(&dataset).unwrap(), vec![0.05, 0.7]);
        dataset.features[(1, 2)] = f64::NAN;
        assert!(matches!(
            model.score_dataset(&dataset),
            Err(ModelError::NonFiniteFeature { row: 1, .. })
        ));
        dataset.feature_names.swap(0, 1);
        assert!(matches!(
            model.score_dataset(&dataset),
            Err(ModelError::FeatureNamesMismatch { position: 0, .. })
        ));
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = temporary_dir("round-trip");
        // A directory that does not exist yet is created.
        let path = dir.join("new").join("model.json");
        let mut model = small_model();
        model.metrics = Some(evaluate(&[0.1, 0.9, 0.4], &[false, true, true]));
        model.data_span = Some(("2026-01-01T00:00:00Z".into(), "2026-01-31T00:00:00Z".into()));
        model.save(&path).unwrap();
        assert!(
            !dir.join("new").join("model.json.tmp").exists(),
            "the temporary file is renamed away"
        );
        let loaded = Model::load(&path).unwrap();
        assert_eq!(loaded, model);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn trained_model_round_trips_bit_for_bit() {
        // Real thresholds are arbitrary midpoints, the case where lossy float parsing would show.
        let rows = 3000;
        let features = Array2::from_shape_fn((rows, 3), |(row, column)| {
            ((row * (7 + column * 13) + column) % 1009) as f64 / 1009.0 * 123.456_789
        });
        let labels: Vec<bool> = (0..rows)
            .map(|row| features[(row, 0)] + features[(row, 1)] > 120.0 || row % 9 == 0)
            .collect();
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let dataset = Dataset {
            features,
            labels,
            feature_names: names,
            negative_weight: 1,
        };
        let model = train(&dataset, &dataset, &TrainOptions::default()).unwrap();
        assert!(model.tree.leaf_count() > 2);
        let dir = temporary_dir("trained");
        let path = dir.join("model.json");
        model.save(&path).unwrap();
        let loaded = Model::load(&path).unwrap();
        assert_eq!(
            loaded, model,
            "floats changed in a JSON round trip: serde_json needs its float_roundtrip feature"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn load_reports_missing_and_corrupt_files() {
        let dir = temporary_dir("corrupt");
        let missing = dir.join("absent.json");
        let error = Model::load(&missing).unwrap_err();
        assert!(matches!(
            error,
            ModelError::Io {
                operation: "read",
                ..
            }
        ));
        assert!(error.to_string().starts_with("failed to read "), "{error}");

        let garbage = dir.join("garbage.json");
        std::fs::write(&garbage, "{not json").unwrap();
        assert!(matches!(
            Model::load(&garbage),
            Err(ModelError::Parse { .. })
        ));

        // A cycle in the tree must be refused at load time, not spin forever in score().
        let mut value = serde_json::to_value(small_model()).unwrap();
        value["tree"]["nodes"][1]["left"] = 0.into();
        let cyclic = dir.join("cyclic.json");
        std::fs::write(&cyclic, value.to_string()).unwrap();
        assert!(matches!(
            Model::load(&cyclic),
            Err(ModelError::Parse { .. })
        ));

        // A split reading a feature the model does not name.
        let mut value = serde_json::to_value(small_model()).unwrap();
        value["feature_names"] = serde_json::json!(["only_one"]);
        let short = dir.join("short.json");
        std::fs::write(&short, value.to_string()).unwrap();
        assert!(matches!(
            Model::load(&short),
            Err(ModelError::InvalidModel(_))
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn save_reports_unwritable_paths() {
        // A directory cannot be made under a file, even by root.
        let dir = temporary_dir("unwritable");
        std::fs::write(dir.join("a-file"), "").unwrap();
        let error = small_model()
            .save(dir.join("a-file").join("model.json"))
            .unwrap_err();
        assert!(
            matches!(
                &error,
                ModelError::Io {
                    operation: "create directory",
                    path,
                    ..
                } if path.ends_with("a-file")
            ),
            "{error}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn version_format_and_uniqueness() {
        let model = small_model();
        let parts: Vec<&str> = model.version.split('-').collect();
        assert_eq!(parts.len(), 3, "{}", model.version);
        assert_eq!(parts[0], "dt");
        assert!(parts[1].parse::<i64>().unwrap() > 1_700_000_000);
        assert_eq!(parts[2].len(), 8);
        assert!(parts[2].chars().all(|c| c.is_ascii_hexdigit()));
        assert!(chrono::DateTime::parse_from_rfc3339(&model.trained_at).is_ok());

        // Same content, same suffix; any change in tree or calibration, a different one.
        assert_eq!(small_model().version[14..], model.version[14..]);
        let other = Model::assemble(
            model.feature_names.clone(),
            model.tree.clone(),
            Calibration::Identity,
            400,
            0.5,
        )
        .unwrap();
        assert_ne!(other.version[14..], model.version[14..]);
    }

    #[test]
    fn content_hash_is_stable() {
        // FNV-1a 64 of "" is cbf29ce484222325; folded: cbf29ce4 ^ 84222325.
        assert_eq!(content_hash(b""), 0xcbf2_9ce4 ^ 0x8422_2325);
        assert_ne!(content_hash(b"a"), content_hash(b"b"));
    }

    #[test]
    fn feature_importance_is_normalized_impurity_decrease() {
        let model = small_model();
        let importance = model.feature_importance();
        let gini = |p: f64| 2.0 * p * (1.0 - p);
        // Root: 400 rows at 0.5 -> 200 at 0.2 and 200 at 0.8; inner: 200 at 0.2 -> 0.1 and 0.3.
        let root = 400.0 * gini(0.5) - 200.0 * gini(0.2) - 200.0 * gini(0.8);
        let inner = 200.0 * gini(0.2) - 100.0 * gini(0.1) - 100.0 * gini(0.3);
        assert_eq!(importance[0].0, "cart_value");
        assert!((importance[0].1 - root / (root + inner)).abs() < 1e-12);
        assert_eq!(importance[1].0, "page_views");
        assert!((importance[1].1 - inner / (root + inner)).abs() < 1e-12);
        assert_eq!(importance[2], ("unused".to_string(), 0.0));
        assert!((importance.iter().map(|(_, share)| share).sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn dataset_validation_errors_are_specific() {
        let names = vec!["a".to_string()];
        let empty = Dataset {
            features: Array2::zeros((0, 1)),
            labels: vec![],
            feature_names: names.clone(),
            negative_weight: 1,
        };
        assert_eq!(
            empty.validate("validation").unwrap_err().to_string(),
            "the validation set is empty"
        );
        let no_features = Dataset {
            features: Array2::zeros((2, 0)),
            labels: vec![true, false],
            feature_names: vec![],
            negative_weight: 1,
        };
        assert!(matches!(
            no_features.validate("training"),
            Err(ModelError::NoFeatures { .. })
        ));
        let infinite = Dataset {
            features: array![[1.0], [f64::INFINITY]],
            labels: vec![true, false],
            feature_names: names.clone(),
            negative_weight: 1,
        };
        assert_eq!(
            infinite.validate("training").unwrap_err().to_string(),
            r#"non-finite value inf for feature "a" in row 1 of the training set"#
        );
        let all_positive = Dataset {
            features: array![[1.0], [2.0]],
            labels: vec![true, true],
            feature_names: names.clone(),
            negative_weight: 1,
        };
        assert_eq!(
            all_positive
                .validate("calibration")
                .unwrap_err()
                .to_string(),
            "the calibration set has only positive labels; both classes are needed"
        );
        let wrong_names = Dataset {
            features: array![[1.0, 2.0]],
            labels: vec![true],
            feature_names: names,
            negative_weight: 1,
        };
        assert!(matches!(
            wrong_names.validate("training"),
            Err(ModelError::FeatureCountMismatch {
                expected: 1,
                actual: 2
            })
        ));
    }
}
