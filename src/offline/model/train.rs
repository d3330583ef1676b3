//! Training: fits a class-weighted Gini decision tree with linfa-trees, turns it into our
//! [`Tree`], counts and smooths the leaves, and calibrates the leaf scores on held-out rows.
//!
//! Why each step exists:
//! - Class weighting (default: balanced, positives weighted `n_neg / n_pos`) matters because
//!   linfa prunes sibling leaves that predict the same majority class. Unweighted, with a 3 % base
//!   rate, nearly every leaf predicts "negative" and the tree collapses; balanced weights move the
//!   decision boundary to the base rate so splits that separate above-average from
//!   below-average propensity survive.
//! - Leaf counts come from routing the unweighted training rows through our own tree, because
//!   linfa keeps no counts and its pruning merges leaves.
//! - The m-estimate `(positives + m * base_rate) / (total + m)` keeps small leaves from claiming
//!   0 % or 100 %.
//! - Calibration: isotonic regression (pool-adjacent-violators) on the leaf scores of the
//!   calibration rows. A tree yields a handful of distinct scores, and isotonic regression fits a
//!   free monotone step per score instead of forcing Platt's sigmoid shape onto them, while never
//!   reordering leaves, so ranking is preserved (ties can only be merged). Each group of rows
//!   sharing a leaf score is m-estimate smoothed toward the calibration base rate before pooling,
//!   so calibrated probabilities stay strictly inside (0, 1) when `smoothing > 0`.

use linfa::prelude::*;
use linfa_trees::{DecisionTree, SplitQuality};
use std::collections::HashMap;

use ndarray::{Array1, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use super::calibration::Calibration;
use super::error::ModelError;
use super::tree::{Tree, for_each_row};
use super::{Dataset, Model};

/// Hyperparameters for [`train`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainOptions {
    /// Maximum number of splits on any root-to-leaf path.
    pub max_depth: usize,
    /// Minimum number of (unweighted) training rows in every leaf.
    pub min_samples_leaf: usize,
    /// Nodes with fewer training rows than this are not split. linfa compares it against the
    /// unweighted row count despite the name.
    pub min_weight_split: f32,
    /// Weight of each positive row relative to a negative one; `None` means balanced,
    /// `n_negative / n_positive`.
    pub positive_class_weight: Option<f32>,
    /// Strength `m` of the m-estimate that pulls leaf (and calibration group) frequencies toward
    /// the base rate, in pseudo-rows; 0 disables it.
    pub smoothing: f64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            max_depth: 10,
            min_samples_leaf: 50,
            // linfa's own default; min_samples_leaf is the binding constraint in practice.
            min_weight_split: 2.0,
            positive_class_weight: None,
            smoothing: 10.0,
        }
    }
}

impl TrainOptions {
    /// Rejects values that would make linfa fail obscurely or the smoothing meaningless.
    pub fn validate(&self) -> Result<(), ModelError> {
        let invalid = |message: String| Err(ModelError::InvalidOptions(message));
        if self.max_depth == 0 {
            return invalid("max_depth must be at least 1".into());
        }
        if self.min_samples_leaf == 0 {
            return invalid("min_samples_leaf must be at least 1".into());
        }
        if !self.min_weight_split.is_finite() || self.min_weight_split < 0.0 {
            return invalid(format!(
                "min_weight_split must be a non-negative number, got {}",
                self.min_weight_split
            ));
        }
        if let Some(weight) = self.positive_class_weight
            && !(weight.is_finite() && weight > 0.0)
        {
            return invalid(format!(
                "positive_class_weight must be a positive number, got {weight}"
            ));
        }
        if !self.smoothing.is_finite() || self.smoothing < 0.0 {
            return invalid(format!(
                "smoothing must be a non-negative number, got {}",
                self.smoothing
            ));
        }
        Ok(())
    }
}

/// Trains a calibrated propensity model on `train`, calibrating on the held-out `calibration` rows.
///
/// Steps: fit a Gini `linfa_trees::DecisionTree` with class weights; convert it to a [`Tree`];
/// count the training rows per leaf; collapse splits whose children hold fewer than
/// `min_samples_leaf` rows (linfa checks its leaf minimum on weighted sums only); smooth the leaf
/// frequencies toward the training base rate; fit the isotonic [`Calibration`] on the
/// calibration rows' leaf scores. `metrics` and `data_span` are left `None` for the caller, who
/// should evaluate on a third, untouched validation set.
pub fn train(
    train: &Dataset,
    calibration: &Dataset,
    options: &TrainOptions,
) -> Result<Model, ModelError> {
    train_timed(train, calibration, options).map(|(model, _)| model)
}

/// How long the phases of [`train`] took.
#[derive(Clone, Copy, Debug, Default)]
pub struct TrainTimings {
    /// Growing the tree (linfa-trees), counting its leaves' rows, pruning and smoothing them.
    pub fit_seconds: f64,
    /// Scoring the calibration rows and fitting the isotonic calibration.
    pub calibration_seconds: f64,
}

/// [`train`], timing its phases.
pub fn train_timed(
    train: &Dataset,
    calibration: &Dataset,
    options: &TrainOptions,
) -> Result<(Model, TrainTimings), ModelError> {
    let fit_started = std::time::Instant::now();
    options.validate()?;
    train.validate("training")?;
    calibration.validate("calibration")?;
    if let Some(position) = (0..train
        .feature_names
        .len()
        .max(calibration.feature_names.len()))
        .find(|&i| train.feature_names.get(i) != calibration.feature_names.get(i))
    {
        return Err(ModelError::FeatureNamesMismatch {
            position,
            expected: train
                .feature_names
                .get(position)
                .cloned()
                .unwrap_or_default(),
            actual: calibration
                .feature_names
                .get(position)
                .cloned()
                .unwrap_or_default(),
        });
    }
    let fitted = grow(train, options)?;
    let fit_seconds = fit_started.elapsed().as_secs_f64();
    let calibration_started = std::time::Instant::now();
    let mut leaf_scores = Vec::with_capacity(calibration.labels.len());
    for_each_row(calibration.features.view(), |_, values| {
        leaf_scores.push(fitted.tree.leaf_probability(values));
    });
    let mut model = fitted.calibrate(&leaf_scores, &calibration.labels, options)?;
    model.profiles = Some(super::Profiles::of(train, &model));
    let timings = TrainTimings {
        fit_seconds,
        calibration_seconds: calibration_started.elapsed().as_secs_f64(),
    };
    Ok((model, timings))
}

/// A grown, counted, pruned and smoothed tree, waiting for its calibration.
#[derive(Clone, Debug)]
pub struct FittedTree {
    pub tree: Tree,
    pub feature_names: Vec<String>,
    /// Rows the tree stands for (negatives weighted).
    pub represented_rows: u64,
    /// Positive share of those rows.
    pub base_rate: f64,
}

/// Grows the tree on `train`: a Gini `linfa_trees::DecisionTree` with class weights, converted
/// to a [`Tree`], its leaves counted (negatives weighted by the set's `negative_weight`), splits
/// with a child under `min_samples_leaf` rows collapsed (linfa checks its leaf minimum on
/// weighted sums only), and the leaf frequencies smoothed toward the base rate.
///
/// With downsampled negatives, the balanced class weight is computed on the kept rows: it only
/// sets the ratio of a positive's weight to a negative's, and the importance weight of the
/// negatives would cancel out of it, so the split search is the one the full set would get in
/// expectation. The importance weight matters where the probabilities come from: the leaf
/// counts and the base rate.
pub fn fit_tree(train: &Dataset, options: &TrainOptions) -> Result<FittedTree, ModelError> {
    options.validate()?;
    train.validate("training")?;
    grow(train, options)
}

/// [`fit_tree`] on a set and options already validated.
fn grow(train: &Dataset, options: &TrainOptions) -> Result<FittedTree, ModelError> {
    let rows = train.labels.len();
    let positives = train.positives();
    let negatives = rows - positives;
    // linfa-trees sums weights in f32; a fractional weight makes those sums inexact on large
    // sets, and its Gini then trips `n_samples > 0.0` on an emptied side. A whole-number balanced
    // weight keeps every sum exact below 2^24.
    let positive_weight = options
        .positive_class_weight
        .unwrap_or_else(|| (negatives as f32 / positives as f32).round().max(1.0));
    let weights: Array1<f32> = train
        .labels
        .iter()
        .map(|&label| if label { positive_weight } else { 1.0 })
        .collect();
    // Every row weighs at least min(1, positive_weight), so this weighted minimum never rejects
    // a split that the unweighted minimum would allow; prune_small_leaves enforces the rest.
    let min_weight_leaf = options.min_samples_leaf as f32 * positive_weight.min(1.0);
    let fit = |features: ArrayView2<'_, f64>,
               labels: Vec<bool>,
               weights: Array1<f32>,
               max_depth: usize|
     -> Result<Tree, ModelError> {
        let dataset = DatasetBase::new(features, Array1::from(labels))
            .with_weights(weights)
            .with_feature_names(train.feature_names.clone());
        let fitted = DecisionTree::params()
            .split_quality(SplitQuality::Gini)
            .max_depth(Some(max_depth))
            .min_weight_split(options.min_weight_split)
            .min_weight_leaf(min_weight_leaf)
            .fit(&dataset)?;
        Ok(Tree::from_linfa(fitted.root_node()))
    };

    // linfa-trees' split search walks every row of the set, in each feature's sorted order, at
    // every node it splits, skipping the rows outside the node: it costs nodes x rows x
    // features, and on our data that walk is most of the fit (perf: about three quarters of
    // the samples land on its row-mask check). So the tree grows in two stages: one fit grows
    // the top half of the depth on every row, then each leaf of it grows on the rows that
    // reach it alone, where that walk is short. A node's best split depends only on its rows,
    // so these are the splits one fit would choose; only linfa's last pass, which merges
    // sibling leaves predicting the same class, cannot merge across the seam.
    let top_depth = (options.max_depth / 2).max(1);
    let top = fit(
        train.features.view(),
        train.labels.clone(),
        weights.clone(),
        top_depth,
    )?;
    let mut subtrees = HashMap::new();
    if top_depth < options.max_depth {
        let leaves = top.leaf_depths();
        let mut rows_of: HashMap<usize, Vec<usize>> = HashMap::new();
        for_each_row(train.features.view(), |row, values| {
            rows_of.entry(top.leaf_index(values)).or_default().push(row);
        });
        for (leaf, depth) in leaves {
            let Some(rows) = rows_of.remove(&leaf) else {
                continue;
            };
            let labels: Vec<bool> = rows.iter().map(|&row| train.labels[row]).collect();
            let first = labels[0];
            if depth >= options.max_depth || labels.iter().all(|&label| label == first) {
                continue;
            }
            let features = train.features.select(Axis(0), &rows);
            let leaf_weights: Array1<f32> = rows.iter().map(|&row| weights[row]).collect();
            let subtree = fit(
                features.view(),
                labels,
                leaf_weights,
                options.max_depth - depth,
            )?;
            subtrees.insert(leaf, subtree);
        }
    }
    drop(weights);

    let mut tree = top.graft(&subtrees);
    tree.count_rows(train.features.view(), &train.labels, train.negative_weight);
    let mut tree = tree.prune_small_leaves(options.min_samples_leaf as u64);
    let represented_rows = train.represented_rows();
    let base_rate = positives as f64 / represented_rows as f64;
    tree.smooth_leaves(base_rate, options.smoothing);
    tracing::info!(
        rows,
        positives,
        negative_weight = train.negative_weight,
        positive_weight,
        top_leaves = top.leaf_count(),
        leaves = tree.leaf_count(),
        depth = tree.depth(),
        "grew the propensity tree"
    );
    Ok(FittedTree {
        tree,
        feature_names: train.feature_names.clone(),
        represented_rows,
        base_rate,
    })
}

impl FittedTree {
    /// Fits the isotonic [`Calibration`] on the leaf scores of held-out rows (never
    /// downsampled) and assembles the model. `metrics` and `data_span` are left `None` for the
    /// caller, who should evaluate on a third, untouched validation set.
    pub fn calibrate(
        self,
        leaf_scores: &[f64],
        labels: &[bool],
        options: &TrainOptions,
    ) -> Result<Model, ModelError> {
        let positives = labels.iter().filter(|&&label| label).count();
        if labels.is_empty() {
            return Err(ModelError::EmptyDataset {
                dataset: "calibration",
            });
        }
        if positives == 0 || positives == labels.len() {
            return Err(ModelError::SingleClass {
                dataset: "calibration",
                positive: positives == labels.len(),
            });
        }
        let calibration = Calibration::fit_isotonic(leaf_scores, labels, options.smoothing);
        Model::assemble(
            self.feature_names,
            self.tree,
            calibration,
            self.represented_rows as usize,
            self.base_rate,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::tree::Node;
    use super::*;
    use ndarray::Array2;

    /// A deterministic pseudo-random stream (SplitMix64) so tests need no rand dependency.
    struct Stream(u64);

    impl Stream {
        fn next_unit(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Two features, x0 and x1 uniform in [0, 1); the label is drawn with
    /// `P(positive) = probability(x0, x1)`.
    fn synthetic(rows: usize, seed: u64, probability: impl Fn(f64, f64) -> f64) -> Dataset {
        let mut stream = Stream(seed);
        let mut features = Array2::zeros((rows, 2));
        let mut labels = Vec::with_capacity(rows);
        for row in 0..rows {
            let (x0, x1) = (stream.next_unit(), stream.next_unit());
            features[(row, 0)] = x0;
            features[(row, 1)] = x1;
            labels.push(stream.next_unit() < probability(x0, x1));
        }
        Dataset {
            features,
            labels,
            feature_names: vec!["x0".into(), "x1".into()],
            negative_weight: 1,
        }
    }

    fn step(x0: f64, _x1: f64) -> f64 {
        if x0 > 0.5 { 1.0 } else { 0.0 }
    }

    #[test]
    fn learns_a_threshold_rule() {
        let train_set = synthetic(2000, 1, step);
        let calibration_set = synthetic(1000, 2, step);
        let model = train(&train_set, &calibration_set, &TrainOptions::default()).unwrap();
        let leaves: Vec<(f64, u64, u64)> = model
            .tree
            .nodes()
            .iter()
            .filter_map(|node| match *node {
                Node::Leaf {
                    probability,
                    positives,
                    total,
                } => Some((probability, positives, total)),
                Node::Split { .. } => None,
            })
            .collect();
        assert_eq!(leaves.len(), 2, "{leaves:?}");
        assert!(matches!(
            model.tree.nodes()[0],
            Node::Split { feature: 0, threshold, .. } if (threshold - 0.5).abs() < 0.01
        ));
        for x1 in [0.1, 0.5, 0.9] {
            let scores: Vec<f64> = (0..=100)
                .map(|i| model.score(&[i as f64 / 100.0, x1]))
                .collect();
            assert!(
                scores.windows(2).all(|pair| pair[0] <= pair[1]),
                "{scores:?}"
            );
        }
        let low = model.score(&[0.2, 0.5]);
        let high = model.score(&[0.8, 0.5]);
        assert!(low < 0.02, "{low}");
        assert!(high > 0.98, "{high}");
        // Smoothed, so strictly inside (0, 1).
        assert!(low > 0.0 && high < 1.0);
        assert_eq!(model.training_rows, 2000);
        assert_eq!(
            leaves.iter().map(|leaf| leaf.2).sum::<u64>(),
            2000,
            "every training row lands in exactly one leaf"
        );
        assert_eq!(
            leaves.iter().map(|leaf| leaf.1).sum::<u64>() as usize,
            train_set.positives()
        );
    }

    #[test]
    fn scores_track_a_gradual_signal() {
        // A tree is piecewise constant and may also split on the noise feature x1, so pointwise
        // monotonicity in x0 is not guaranteed; the average over x1 per x0 quintile must rise,
        // and every score must stay near the true probability.
        let truth = |x0: f64, _x1: f64| 0.05 + 0.5 * x0;
        let model = &train(
            &synthetic(20_000, 3, truth),
            &synthetic(10_000, 4, truth),
            &TrainOptions::default(),
        )
        .unwrap();
        let grid: Vec<f64> = (0..50).map(|i| (i as f64 + 0.5) / 50.0).collect();
        let quintile_means: Vec<f64> = (0..5)
            .map(|quintile| {
                let points: Vec<f64> = grid[quintile * 10..quintile * 10 + 10]
                    .iter()
                    .flat_map(|&x0| grid.iter().map(move |&x1| model.score(&[x0, x1])))
                    .collect();
                points.iter().sum::<f64>() / points.len() as f64
            })
            .collect();
        assert!(
            quintile_means.windows(2).all(|pair| pair[0] < pair[1]),
            "{quintile_means:?}"
        );
        let mean_error = grid
            .iter()
            .flat_map(|&x0| grid.iter().map(move |&x1| (x0, x1)))
            .map(|(x0, x1)| (model.score(&[x0, x1]) - truth(x0, x1)).abs())
            .sum::<f64>()
            / (grid.len() * grid.len()) as f64;
        assert!(mean_error < 0.05, "{mean_error}");
        assert!(model.tree.leaf_count() >= 3, "a ramp needs several leaves");
    }

    #[test]
    fn calibrated_score_is_monotone_in_the_leaf_score() {
        let truth = |x0: f64, x1: f64| 0.02 + 0.4 * x0 * x1;
        let model = train(
            &synthetic(10_000, 14, truth),
            &synthetic(3000, 15, truth),
            &TrainOptions::default(),
        )
        .unwrap();
        let mut leaves: Vec<(f64, f64)> = model
            .tree
            .nodes()
            .iter()
            .filter_map(|node| match *node {
                Node::Leaf { probability, .. } => {
                    Some((probability, model.calibration.apply(probability)))
                }
                Node::Split { .. } => None,
            })
            .collect();
        assert!(leaves.len() >= 3);
        leaves.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(
            leaves.windows(2).all(|pair| pair[0].1 <= pair[1].1),
            "{leaves:?}"
        );
    }

    #[test]
    fn leaf_counts_sum_to_training_rows_and_respect_min_samples_leaf() {
        let noisy = |x0: f64, x1: f64| 0.02 + 0.3 * x0 * x1;
        let train_set = synthetic(5000, 5, noisy);
        let options = TrainOptions {
            min_samples_leaf: 80,
            ..TrainOptions::default()
        };
        let model = train(&train_set, &synthetic(2000, 6, noisy), &options).unwrap();
        let counts = model.tree.node_counts();
        assert_eq!(counts[0].total, 5000);
        assert_eq!(counts[0].positives as usize, train_set.positives());
        for (node, count) in model.tree.nodes().iter().zip(&counts) {
            if let Node::Leaf { probability, .. } = *node {
                assert!(count.total >= 80, "leaf with {} rows", count.total);
                let expected =
                    (count.positives as f64 + 10.0 * model.base_rate) / (count.total as f64 + 10.0);
                assert!((probability - expected).abs() < 1e-12);
            }
        }
        assert!((model.base_rate - train_set.positives() as f64 / 5000.0).abs() < 1e-15);
        assert!(model.tree.depth() <= 10);
    }

    #[test]
    fn calibration_fixes_a_shifted_calibration_population() {
        // Training data says 50 % on the right; the calibration population says 20 %. Calibration
        // must pull the score toward what the held-out rows show.
        let train_set = synthetic(4000, 7, |x0, _| if x0 > 0.5 { 0.5 } else { 0.05 });
        let calibration_set = synthetic(4000, 8, |x0, _| if x0 > 0.5 { 0.2 } else { 0.02 });
        let model = train(&train_set, &calibration_set, &TrainOptions::default()).unwrap();
        let right = model.score(&[0.9, 0.5]);
        assert!((right - 0.2).abs() < 0.04, "{right}");
        let uncalibrated = model.tree.leaf_probability(&[0.9, 0.5]);
        assert!((uncalibrated - 0.5).abs() < 0.06, "{uncalibrated}");
    }

    #[test]
    fn single_class_training_set_is_a_clear_error() {
        let all_negative = synthetic(500, 9, |_, _| 0.0);
        let calibration_set = synthetic(500, 10, step);
        let error = train(&all_negative, &calibration_set, &TrainOptions::default()).unwrap_err();
        assert!(
            matches!(
                error,
                ModelError::SingleClass {
                    dataset: "training",
                    positive: false
                }
            ),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "the training set has only negative labels; both classes are needed"
        );
        let error = train(&calibration_set, &all_negative, &TrainOptions::default()).unwrap_err();
        assert!(matches!(
            error,
            ModelError::SingleClass {
                dataset: "calibration",
                ..
            }
        ));
    }

    #[test]
    fn mismatched_or_broken_inputs_are_rejected() {
        let good = synthetic(300, 11, step);
        let mut renamed = good.clone();
        renamed.feature_names[1] = "other".into();
        assert!(matches!(
            train(&good, &renamed, &TrainOptions::default()),
            Err(ModelError::FeatureNamesMismatch { position: 1, .. })
        ));
        let mut with_nan = good.clone();
        with_nan.features[(7, 1)] = f64::NAN;
        assert!(matches!(
            train(&with_nan, &good, &TrainOptions::default()),
            Err(ModelError::NonFiniteFeature { row: 7, .. })
        ));
        let mut short_labels = good.clone();
        short_labels.labels.pop();
        assert!(matches!(
            train(&short_labels, &good, &TrainOptions::default()),
            Err(ModelError::LabelCountMismatch {
                rows: 300,
                labels: 299,
                ..
            })
        ));
        let bad_options = TrainOptions {
            smoothing: -1.0,
            ..TrainOptions::default()
        };
        assert!(matches!(
            train(&good, &good, &bad_options),
            Err(ModelError::InvalidOptions(_))
        ));
    }

    #[test]
    fn explicit_class_weight_is_honoured() {
        // With positives weighted 1 and a 10 % base rate the majority class is negative in every
        // region, so linfa prunes the tree to a single leaf; balanced weights keep the split.
        let rule = |x0: f64, _| if x0 > 0.5 { 0.2 } else { 0.01 };
        let train_set = synthetic(4000, 12, rule);
        let calibration_set = synthetic(2000, 13, rule);
        let unweighted = TrainOptions {
            positive_class_weight: Some(1.0),
            ..TrainOptions::default()
        };
        let flat = train(&train_set, &calibration_set, &unweighted).unwrap();
        assert_eq!(flat.tree.leaf_count(), 1);
        let balanced = train(&train_set, &calibration_set, &TrainOptions::default()).unwrap();
        assert!(balanced.tree.leaf_count() >= 2);
    }

    /// Every positive and one negative in `k` of `full` (chosen by a hash of the row), each kept
    /// negative weighted `k`: what `propensity train` does to a fitting period too big to hold.
    fn downsample(full: &Dataset, k: u64) -> Dataset {
        let kept: Vec<usize> = (0..full.rows())
            .filter(|&row| full.labels[row] || Stream(row as u64).next_unit() < 1.0 / k as f64)
            .collect();
        Dataset {
            features: full.features.select(ndarray::Axis(0), &kept),
            labels: kept.iter().map(|&row| full.labels[row]).collect(),
            feature_names: full.feature_names.clone(),
            negative_weight: k,
        }
    }

    #[test]
    fn downsampled_negatives_with_weights_keep_leaf_propensities_unbiased() {
        // A rare positive class that depends on the features, as with the scoring points.
        let truth = |x0: f64, x1: f64| 0.01 + 0.08 * x0 + if x1 > 0.7 { 0.05 } else { 0.0 };
        let full = synthetic(200_000, 21, truth);
        let k = 8;
        let sample = downsample(&full, k);
        assert!(sample.rows() < full.rows() / 4, "{} kept", sample.rows());
        let options = TrainOptions {
            smoothing: 0.0,
            ..TrainOptions::default()
        };
        let weighted = fit_tree(&sample, &options).unwrap();
        assert!(weighted.tree.leaf_count() >= 4, "the signal needs leaves");

        // Leaf by leaf, against every row of the full set that reaches the same leaf: positives
        // are all kept, so they match exactly; the weighted total estimates the full total
        // within its sampling error (kept negatives ~ Binomial(n, 1/k), so k * kept has a
        // standard deviation of about sqrt(n * k)).
        let mut reference = weighted.tree.clone();
        reference.count_rows(full.features.view(), &full.labels, 1);
        let mut bias = 0.0;
        for (index, node) in weighted.tree.nodes().iter().enumerate() {
            let Node::Leaf {
                probability,
                positives,
                total,
            } = *node
            else {
                continue;
            };
            let (_, full_positives, full_total) = reference.leaf_at(index);
            assert_eq!(positives, full_positives, "leaf {index}");
            let full_negatives = (full_total - full_positives) as f64;
            let tolerance = 4.0 * (full_negatives * k as f64).sqrt() + k as f64;
            assert!(
                (total as f64 - full_total as f64).abs() <= tolerance,
                "leaf {index}: weighted total {total}, full {full_total}, tolerance {tolerance:.0}"
            );
            // With no smoothing the propensity is the leaf's weighted frequency, so the totals
            // agreeing is the propensities agreeing; summed below as the bias over all rows.
            assert_eq!(probability, positives as f64 / total as f64, "leaf {index}");
            let full_rate = full_positives as f64 / full_total as f64;
            bias += (probability - full_rate) * full_total as f64;
        }
        let full_base_rate = full.positives() as f64 / full.rows() as f64;
        // A leaf's propensity is a ratio of counts, unbiased only as leaves grow: a small leaf
        // runs high by about k x negatives / total^2 (1.8 to 2.1% of the base rate over all
        // leaves here, in repeated runs; linfa breaks ties between classes in hash order, so
        // trees vary a little), which the calibration on held-out rows takes out. Five per cent
        // allows it and is still far below the several-fold error of a sample without its
        // weights, checked next.
        let bias = bias / full.rows() as f64;
        assert!(
            bias.abs() < 0.05 * full_base_rate,
            "mean propensity off by {bias:.5} against a base rate of {full_base_rate:.4}"
        );
        assert!(
            (weighted.base_rate - full_base_rate).abs() / full_base_rate < 0.02,
            "base rate {} against {full_base_rate}",
            weighted.base_rate
        );

        // Without the weights the same sample overstates the propensities several fold: the
        // checks above would catch a weight that went missing.
        let unweighted = fit_tree(
            &Dataset {
                negative_weight: 1,
                ..sample.clone()
            },
            &options,
        )
        .unwrap();
        assert!(
            unweighted.base_rate > 4.0 * full_base_rate,
            "{}",
            unweighted.base_rate
        );

        // Against a fit on every row, on the same fresh validation rows: as good a ranking, and
        // calibration (Brier) no worse than the sampling noise.
        let calibration_set = synthetic(50_000, 22, truth);
        let validation_set = synthetic(50_000, 23, truth);
        let full_model = train(&full, &calibration_set, &TrainOptions::default()).unwrap();
        let fitted = fit_tree(&sample, &TrainOptions::default()).unwrap();
        let leaf_scores: Vec<f64> = (0..calibration_set.rows())
            .map(|row| {
                fitted
                    .tree
                    .leaf_probability(calibration_set.features.row(row).as_slice().unwrap())
            })
            .collect();
        let sampled_model = fitted
            .calibrate(
                &leaf_scores,
                &calibration_set.labels,
                &TrainOptions::default(),
            )
            .unwrap();
        let metrics = |model: &Model| {
            crate::offline::model::evaluate(
                &model.score_dataset(&validation_set).unwrap(),
                &validation_set.labels,
            )
        };
        let (full_metrics, sampled_metrics) = (metrics(&full_model), metrics(&sampled_model));
        assert!(
            sampled_metrics.roc_auc > full_metrics.roc_auc - 0.01,
            "ROC-AUC {} sampled against {} full",
            sampled_metrics.roc_auc,
            full_metrics.roc_auc
        );
        assert!(
            sampled_metrics.brier < full_metrics.brier + 0.0005,
            "Brier {} sampled against {} full",
            sampled_metrics.brier,
            full_metrics.brier
        );
    }
}
