//! The fitted decision tree in our own serde form.
//!
//! linfa-trees' `DecisionTree` is a boxed, recursive structure whose leaves carry only a class
//! label, which is neither cheap to walk nor enough for a propensity. This module converts it into
//! a flat vector of nodes addressed by index (root at 0, children always after their parent), so
//! scoring is a tight loop with no recursion and no allocation, and each leaf carries its own
//! counts of training rows and a smoothed positive-class frequency.
//!
//! Split convention: a row goes left when `value <= threshold`. That is the rule linfa-trees 0.8.1
//! uses to partition the training rows during fitting (`TreeNode::fit`), so the leaf counts we
//! compute by routing the training rows reproduce linfa's partition exactly. (linfa's own
//! `predict` uses `value < threshold`; the two only differ for a value exactly on the midpoint
//! between two training values.) A NaN value fails `<=` and therefore goes right.

use std::collections::HashMap;

use linfa_trees::TreeNode;
use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

use super::error::ModelError;

/// One node of a [`Tree`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Node {
    /// Sends a row to `left` when `features[feature] <= threshold`, else (including NaN) to `right`.
    Split {
        /// Column index into the model's feature vector.
        feature: usize,
        /// Split value; linfa places it midway between two adjacent training values.
        threshold: f64,
        /// Index of the child for `value <= threshold`.
        left: u32,
        /// Index of the child for `value > threshold` or NaN.
        right: u32,
    },
    /// A terminal node.
    Leaf {
        /// Smoothed positive-class frequency of the training rows in this leaf, before calibration.
        probability: f64,
        /// Unweighted training rows with a positive label that reached this leaf.
        positives: u64,
        /// Unweighted training rows that reached this leaf.
        total: u64,
    },
}

/// A binary decision tree stored as a flat node vector, root first.
///
/// Invariants (checked on construction and on deserialization, so a corrupt model file cannot
/// make [`Tree::leaf_index`] loop or panic): at least one node, every child index points past its
/// parent and inside the vector, every node but the root has exactly one parent, thresholds are
/// not NaN and leaf probabilities lie in `[0, 1]`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(try_from = "TreeRepr")]
pub struct Tree {
    nodes: Vec<Node>,
}

/// The unchecked wire form of [`Tree`], validated by `TryFrom`.
#[derive(Deserialize)]
struct TreeRepr {
    nodes: Vec<Node>,
}

impl TryFrom<TreeRepr> for Tree {
    type Error = ModelError;

    fn try_from(repr: TreeRepr) -> Result<Self, Self::Error> {
        Tree::new(repr.nodes)
    }
}

/// Which child a row took at a split.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Branch {
    /// `value <= threshold`.
    Left,
    /// `value > threshold`, or the value was NaN or missing.
    Right,
}

/// Positive and total training-row counts of one node (a split's are the sums of its leaves').
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeCounts {
    /// Rows with a positive label.
    pub positives: u64,
    /// All rows.
    pub total: u64,
}

impl NodeCounts {
    /// Gini impurity of the node's unweighted rows; zero for an empty node.
    pub fn gini(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let p = self.positives as f64 / self.total as f64;
        2.0 * p * (1.0 - p)
    }

    /// Positive-class frequency; `None` for an empty node.
    pub fn rate(&self) -> Option<f64> {
        (self.total > 0).then(|| self.positives as f64 / self.total as f64)
    }
}

/// Decides the branch for one value; the single place that defines the split convention.
#[inline]
fn goes_left(value: f64, threshold: f64) -> bool {
    value <= threshold
}

impl Tree {
    /// Builds a tree from nodes in the flat layout, checking the invariants listed on [`Tree`].
    pub fn new(nodes: Vec<Node>) -> Result<Self, ModelError> {
        if nodes.is_empty() {
            return Err(ModelError::InvalidModel("the tree has no nodes".into()));
        }
        // Nodes are addressed by u32 so the vector must fit that index space.
        if nodes.len() > u32::MAX as usize {
            return Err(ModelError::InvalidModel(
                "the tree has too many nodes".into(),
            ));
        }
        let mut has_parent = vec![false; nodes.len()];
        for (index, node) in nodes.iter().enumerate() {
            match *node {
                Node::Split {
                    threshold,
                    left,
                    right,
                    ..
                } => {
                    if threshold.is_nan() {
                        return Err(ModelError::InvalidModel(format!(
                            "node {index} has a NaN threshold"
                        )));
                    }
                    for child in [left, right] {
                        let child = child as usize;
                        // Children after parents is what guarantees the walk terminates.
                        if child <= index || child >= nodes.len() {
                            return Err(ModelError::InvalidModel(format!(
                                "node {index} points to invalid child {child}"
                            )));
                        }
                        if std::mem::replace(&mut has_parent[child], true) {
                            return Err(ModelError::InvalidModel(format!(
                                "node {child} has more than one parent"
                            )));
                        }
                    }
                }
                Node::Leaf { probability, .. } => {
                    if !(0.0..=1.0).contains(&probability) {
                        return Err(ModelError::InvalidModel(format!(
                            "leaf {index} has probability {probability} outside [0, 1]"
                        )));
                    }
                }
            }
        }
        if let Some(orphan) = has_parent.iter().skip(1).position(|&parent| !parent) {
            return Err(ModelError::InvalidModel(format!(
                "node {} is not reachable from the root",
                orphan + 1
            )));
        }
        Ok(Tree { nodes })
    }

    /// Converts a fitted linfa-trees node (normally `DecisionTree::root_node()`) into a tree whose
    /// leaves have zero counts and probability; [`Tree::count_rows`] and [`Tree::smooth_leaves`]
    /// fill them in.
    pub fn from_linfa(root: &TreeNode<f64, bool>) -> Self {
        let mut nodes = Vec::new();
        push_linfa_node(root, &mut nodes);
        // The pre-order layout puts children after parents by construction.
        Tree::new(nodes).expect("pre-order conversion of a linfa tree yields a valid tree")
    }

    /// All nodes, root first.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Number of leaves.
    pub fn leaf_count(&self) -> usize {
        self.nodes
            .iter()
            .filter(|node| matches!(node, Node::Leaf { .. }))
            .count()
    }

    /// Number of splits on the longest root-to-leaf path (0 for a single leaf).
    pub fn depth(&self) -> usize {
        let mut depths = vec![0usize; self.nodes.len()];
        for (index, node) in self.nodes.iter().enumerate() {
            if let Node::Split { left, right, .. } = *node {
                depths[left as usize] = depths[index] + 1;
                depths[right as usize] = depths[index] + 1;
            }
        }
        depths.into_iter().max().unwrap_or(0)
    }

    /// The largest feature index any split reads, or `None` for a single-leaf tree.
    pub fn max_feature(&self) -> Option<usize> {
        self.nodes
            .iter()
            .filter_map(|node| match node {
                Node::Split { feature, .. } => Some(*feature),
                Node::Leaf { .. } => None,
            })
            .max()
    }

    /// Walks from the root to a leaf, calling `visit(node, feature, value, threshold, branch)` at
    /// each split, and returns the leaf's index.
    ///
    /// Missing features (index past the slice) read as NaN and, like NaN, go right. Generic over
    /// the visitor so that scoring, which passes a no-op, compiles to the bare loop.
    #[inline]
    pub fn walk(
        &self,
        features: &[f64],
        mut visit: impl FnMut(usize, usize, f64, f64, Branch),
    ) -> usize {
        let mut index = 0usize;
        loop {
            match self.nodes[index] {
                Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } => {
                    let value = features.get(feature).copied().unwrap_or(f64::NAN);
                    let (branch, next) = if goes_left(value, threshold) {
                        (Branch::Left, left)
                    } else {
                        (Branch::Right, right)
                    };
                    visit(index, feature, value, threshold, branch);
                    index = next as usize;
                }
                Node::Leaf { .. } => return index,
            }
        }
    }

    /// Index of the leaf that `features` lands in.
    #[inline]
    pub fn leaf_index(&self, features: &[f64]) -> usize {
        self.walk(features, |_, _, _, _, _| {})
    }

    /// The smoothed (uncalibrated) probability of the leaf that `features` lands in.
    #[inline]
    pub fn leaf_probability(&self, features: &[f64]) -> f64 {
        self.leaf_at(self.leaf_index(features)).0
    }

    /// `(probability, positives, total)` of the leaf at `index`, as returned by [`Tree::walk`].
    ///
    /// # Panics
    /// If `index` is out of range or not a leaf.
    #[inline]
    pub fn leaf_at(&self, index: usize) -> (f64, u64, u64) {
        match self.nodes[index] {
            Node::Leaf {
                probability,
                positives,
                total,
            } => (probability, positives, total),
            Node::Split { .. } => panic!("node {index} is a split, not a leaf"),
        }
    }

    /// The leaves with their depth (the root is at depth 0), in pre-order.
    pub fn leaf_depths(&self) -> Vec<(usize, usize)> {
        let mut leaves = Vec::new();
        let mut stack = vec![(0usize, 0usize)];
        while let Some((index, depth)) = stack.pop() {
            match self.nodes[index] {
                Node::Leaf { .. } => leaves.push((index, depth)),
                Node::Split { left, right, .. } => {
                    stack.push((right as usize, depth + 1));
                    stack.push((left as usize, depth + 1));
                }
            }
        }
        leaves
    }

    /// A copy in which every leaf with an entry in `subtrees` is replaced by that tree.
    pub fn graft(&self, subtrees: &HashMap<usize, Tree>) -> Tree {
        let mut nodes = Vec::with_capacity(
            self.nodes.len()
                + subtrees
                    .values()
                    .map(|tree| tree.nodes.len())
                    .sum::<usize>(),
        );
        self.copy_grafted(0, subtrees, &mut nodes);
        Tree::new(nodes).expect("pre-order copy of valid trees is valid")
    }

    /// Appends the subtree rooted at `index`, grafts included, to `out` in pre-order; returns
    /// where it starts.
    fn copy_grafted(
        &self,
        index: usize,
        subtrees: &HashMap<usize, Tree>,
        out: &mut Vec<Node>,
    ) -> u32 {
        let position = out.len() as u32;
        match self.nodes[index] {
            Node::Leaf { .. } => match subtrees.get(&index) {
                Some(subtree) => {
                    subtree.copy_grafted(0, &HashMap::new(), out);
                }
                None => out.push(self.nodes[index].clone()),
            },
            Node::Split {
                feature,
                threshold,
                left,
                right,
            } => {
                out.push(Node::Split {
                    feature,
                    threshold,
                    left: 0,
                    right: 0,
                });
                let left = self.copy_grafted(left as usize, subtrees, out);
                let right = self.copy_grafted(right as usize, subtrees, out);
                out[position as usize] = Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                };
            }
        }
        position
    }

    /// Recounts every leaf's positives and total by routing the given rows, each negative
    /// counting `negative_weight` times (1 unless negatives were downsampled).
    ///
    /// linfa's pruning merges sibling leaves that predict the same class and keeps no counts, so
    /// counting ourselves is the only way to know how many rows each of our leaves holds.
    pub fn count_rows(
        &mut self,
        features: ArrayView2<'_, f64>,
        labels: &[bool],
        negative_weight: u64,
    ) {
        debug_assert_eq!(features.nrows(), labels.len());
        let mut counts = vec![NodeCounts::default(); self.nodes.len()];
        for_each_row(features, |row, values| {
            let leaf = self.leaf_index(values);
            if labels[row] {
                counts[leaf].total += 1;
                counts[leaf].positives += 1;
            } else {
                counts[leaf].total += negative_weight;
            }
        });
        for (node, count) in self.nodes.iter_mut().zip(counts) {
            if let Node::Leaf {
                positives, total, ..
            } = node
            {
                *positives = count.positives;
                *total = count.total;
            }
        }
    }

    /// Counts for every node: a leaf's own, a split's summed over its subtree.
    pub fn node_counts(&self) -> Vec<NodeCounts> {
        let mut counts = vec![NodeCounts::default(); self.nodes.len()];
        // Children come after parents, so a reverse sweep sees both children before the parent.
        for index in (0..self.nodes.len()).rev() {
            counts[index] = match self.nodes[index] {
                Node::Leaf {
                    positives, total, ..
                } => NodeCounts { positives, total },
                Node::Split { left, right, .. } => {
                    let (left, right) = (counts[left as usize], counts[right as usize]);
                    NodeCounts {
                        positives: left.positives + right.positives,
                        total: left.total + right.total,
                    }
                }
            };
        }
        counts
    }

    /// Returns a copy in which every split with a child holding fewer than `min_rows` rows
    /// (after pruning below it) is collapsed into a single leaf with the summed counts.
    ///
    /// linfa enforces its leaf minimum on class-weighted sums, so with an up-weighted positive
    /// class a leaf can pass linfa's check with far fewer actual rows; this enforces the
    /// unweighted minimum. Leaf probabilities are reset to zero: call [`Tree::smooth_leaves`].
    pub fn prune_small_leaves(&self, min_rows: u64) -> Tree {
        let counts = self.node_counts();
        let mut nodes = Vec::with_capacity(self.nodes.len());
        self.copy_pruned(0, min_rows, &counts, &mut nodes);
        Tree::new(nodes).expect("pre-order copy of a valid tree is valid")
    }

    /// Appends the pruned subtree rooted at `index` to `out` in pre-order; returns its total.
    fn copy_pruned(
        &self,
        index: usize,
        min_rows: u64,
        counts: &[NodeCounts],
        out: &mut Vec<Node>,
    ) -> u64 {
        let leaf = |count: NodeCounts| Node::Leaf {
            probability: 0.0,
            positives: count.positives,
            total: count.total,
        };
        let position = out.len();
        match self.nodes[index] {
            Node::Leaf { .. } => out.push(leaf(counts[index])),
            Node::Split {
                feature,
                threshold,
                left,
                right,
            } => {
                let small = |child: u32| counts[child as usize].total < min_rows;
                if small(left) || small(right) {
                    out.push(leaf(counts[index]));
                } else {
                    out.push(Node::Split {
                        feature,
                        threshold,
                        left: 0,
                        right: 0,
                    });
                    let left_index = out.len() as u32;
                    self.copy_pruned(left as usize, min_rows, counts, out);
                    let right_index = out.len() as u32;
                    self.copy_pruned(right as usize, min_rows, counts, out);
                    out[position] = Node::Split {
                        feature,
                        threshold,
                        left: left_index,
                        right: right_index,
                    };
                }
            }
        }
        counts[index].total
    }

    /// Sets each leaf's probability to the m-estimate `(positives + m * base_rate) / (total + m)`,
    /// which pulls small leaves toward the base rate; an empty leaf with `m = 0` gets the base rate.
    pub fn smooth_leaves(&mut self, base_rate: f64, m: f64) {
        for node in &mut self.nodes {
            if let Node::Leaf {
                probability,
                positives,
                total,
            } = node
            {
                let denominator = *total as f64 + m;
                *probability = if denominator > 0.0 {
                    (*positives as f64 + m * base_rate) / denominator
                } else {
                    base_rate
                };
            }
        }
    }

    /// Total impurity decrease per feature, `sum over its splits of (n_t * gini_t - n_l * gini_l -
    /// n_r * gini_r) / n_root`, from the unweighted training counts stored in the leaves.
    ///
    /// This is scikit-learn's mean-decrease-in-impurity before normalization. It uses unweighted
    /// Gini even though linfa chose the splits on class-weighted Gini, because it should describe
    /// how the tree separates the real population.
    pub fn impurity_decrease(&self, feature_count: usize) -> Vec<f64> {
        let counts = self.node_counts();
        let root_total = counts[0].total;
        let mut decrease = vec![0.0; feature_count];
        if root_total == 0 {
            return decrease;
        }
        for (index, node) in self.nodes.iter().enumerate() {
            if let Node::Split {
                feature,
                left,
                right,
                ..
            } = *node
            {
                let weighted = |count: NodeCounts| count.total as f64 * count.gini();
                let gain = weighted(counts[index])
                    - weighted(counts[left as usize])
                    - weighted(counts[right as usize]);
                if let Some(slot) = decrease.get_mut(feature) {
                    // Gini is concave so the gain is never negative; clamp rounding noise.
                    *slot += gain.max(0.0) / root_total as f64;
                }
            }
        }
        decrease
    }
}

/// Appends `node` and its subtree to `nodes` in pre-order and returns the node's index.
fn push_linfa_node(node: &TreeNode<f64, bool>, nodes: &mut Vec<Node>) -> u32 {
    let index = nodes.len() as u32;
    let empty_leaf = Node::Leaf {
        probability: 0.0,
        positives: 0,
        total: 0,
    };
    let children = node.children();
    match (
        node.is_leaf(),
        children[0].as_deref(),
        children[1].as_deref(),
    ) {
        (false, Some(left), Some(right)) => {
            let (feature, threshold, _impurity_decrease) = node.split();
            nodes.push(Node::Split {
                feature,
                threshold,
                left: 0,
                right: 0,
            });
            let left = push_linfa_node(left, nodes);
            let right = push_linfa_node(right, nodes);
            nodes[index as usize] = Node::Split {
                feature,
                threshold,
                left,
                right,
            };
        }
        // linfa marks a node with a missing child as a leaf, and a leaf's children are ignored.
        _ => nodes.push(empty_leaf),
    }
    index
}

/// Calls `f(row_index, row)` for every row, as a contiguous slice whatever the array's layout.
pub(super) fn for_each_row(features: ArrayView2<'_, f64>, mut f: impl FnMut(usize, &[f64])) {
    let standard = features.as_standard_layout();
    for (row_index, row) in standard.rows().into_iter().enumerate() {
        let values = row
            .to_slice()
            .expect("rows of a standard-layout array are contiguous");
        f(row_index, values);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use linfa::prelude::*;
    use linfa_trees::DecisionTree;
    use ndarray::{Array1, Array2, array};
    use std::collections::HashSet;

    fn used_features(tree: &Tree) -> HashSet<usize> {
        tree.nodes()
            .iter()
            .filter_map(|node| match node {
                Node::Split { feature, .. } => Some(*feature),
                Node::Leaf { .. } => None,
            })
            .collect()
    }

    fn leaf(probability: f64, positives: u64, total: u64) -> Node {
        Node::Leaf {
            probability,
            positives,
            total,
        }
    }

    fn split(feature: usize, threshold: f64, left: u32, right: u32) -> Node {
        Node::Split {
            feature,
            threshold,
            left,
            right,
        }
    }

    /// x0 <= 0.5 ? (x1 <= 2 ? A : B) : C
    fn small_tree() -> Tree {
        Tree::new(vec![
            split(0, 0.5, 1, 4),
            split(1, 2.0, 2, 3),
            leaf(0.1, 1, 10),
            leaf(0.2, 2, 10),
            leaf(0.9, 9, 10),
        ])
        .unwrap()
    }

    #[test]
    fn walk_follows_less_or_equal_left_convention() {
        let tree = small_tree();
        assert_eq!(tree.leaf_index(&[0.5, 2.0]), 2, "equal values go left");
        assert_eq!(tree.leaf_index(&[0.4, 2.1]), 3);
        assert_eq!(tree.leaf_index(&[0.6, 0.0]), 4);
        assert_eq!(tree.leaf_probability(&[0.6, 0.0]), 0.9);
    }

    #[test]
    fn nan_and_missing_features_go_right() {
        let tree = small_tree();
        assert_eq!(tree.leaf_index(&[f64::NAN, 0.0]), 4);
        assert_eq!(tree.leaf_index(&[0.0, f64::NAN]), 3);
        assert_eq!(tree.leaf_index(&[0.0]), 3, "a missing feature reads as NaN");
        assert_eq!(tree.leaf_index(&[]), 4);
    }

    #[test]
    fn walk_reports_every_split_visited() {
        let tree = small_tree();
        let mut path = Vec::new();
        let leaf = tree.walk(&[0.2, 3.0], |node, feature, value, threshold, branch| {
            path.push((node, feature, value, threshold, branch))
        });
        assert_eq!(leaf, 3);
        assert_eq!(
            path,
            vec![
                (0, 0, 0.2, 0.5, Branch::Left),
                (1, 1, 3.0, 2.0, Branch::Right)
            ]
        );
    }

    #[test]
    fn new_rejects_broken_layouts() {
        let cases = vec![
            vec![],
            vec![split(0, 0.5, 0, 1), leaf(0.5, 0, 0)],
            vec![split(0, 0.5, 1, 5), leaf(0.5, 0, 0)],
            vec![split(0, 0.5, 1, 1), leaf(0.5, 0, 0)],
            vec![split(0, f64::NAN, 1, 2), leaf(0.5, 0, 0), leaf(0.5, 0, 0)],
            vec![leaf(1.5, 0, 0)],
            vec![leaf(0.5, 0, 0), leaf(0.5, 0, 0)],
        ];
        for nodes in cases {
            let description = format!("{nodes:?}");
            assert!(
                matches!(Tree::new(nodes), Err(ModelError::InvalidModel(_))),
                "{description} should be rejected"
            );
        }
    }

    #[test]
    fn deserialization_validates() {
        let json = r#"{"nodes":[{"kind":"split","feature":0,"threshold":1.0,"left":0,"right":0}]}"#;
        assert!(serde_json::from_str::<Tree>(json).is_err());
        let tree = small_tree();
        let round_trip: Tree =
            serde_json::from_str(&serde_json::to_string(&tree).unwrap()).unwrap();
        assert_eq!(round_trip, tree);
    }

    #[test]
    fn node_counts_sum_leaves_into_splits() {
        let counts = small_tree().node_counts();
        assert_eq!(
            counts[0],
            NodeCounts {
                positives: 12,
                total: 30
            }
        );
        assert_eq!(
            counts[1],
            NodeCounts {
                positives: 3,
                total: 20
            }
        );
        assert_eq!(
            counts[4],
            NodeCounts {
                positives: 9,
                total: 10
            }
        );
    }

    #[test]
    fn depth_and_leaf_count() {
        let tree = small_tree();
        assert_eq!(tree.depth(), 2);
        assert_eq!(tree.leaf_count(), 3);
        assert_eq!(tree.max_feature(), Some(1));
        let single = Tree::new(vec![leaf(0.3, 3, 10)]).unwrap();
        assert_eq!(single.depth(), 0);
        assert_eq!(single.max_feature(), None);
    }

    #[test]
    fn count_rows_routes_each_row_once() {
        let mut tree = small_tree();
        let features = array![[0.0, 0.0], [0.0, 5.0], [1.0, 0.0], [1.0, 9.0], [0.5, 2.0]];
        tree.count_rows(features.view(), &[true, false, true, true, false], 1);
        let counts = tree.node_counts();
        assert_eq!(
            counts[2],
            NodeCounts {
                positives: 1,
                total: 2
            }
        );
        assert_eq!(
            counts[3],
            NodeCounts {
                positives: 0,
                total: 1
            }
        );
        assert_eq!(
            counts[4],
            NodeCounts {
                positives: 2,
                total: 2
            }
        );
        assert_eq!(counts[0].total, 5);
    }

    #[test]
    fn count_rows_handles_column_major_arrays() {
        let mut row_major = small_tree();
        let features = array![[0.0, 0.0], [0.0, 5.0], [1.0, 0.0]];
        row_major.count_rows(features.view(), &[true, false, true], 1);
        let mut column_major = small_tree();
        let transposed = features.t().to_owned();
        column_major.count_rows(transposed.t(), &[true, false, true], 1);
        assert_eq!(row_major, column_major);
    }

    #[test]
    fn smoothing_is_the_m_estimate() {
        let mut tree =
            Tree::new(vec![split(0, 0.0, 1, 2), leaf(0.0, 3, 10), leaf(0.0, 0, 0)]).unwrap();
        tree.smooth_leaves(0.2, 10.0);
        assert_eq!(tree.leaf_probability(&[-1.0]), (3.0 + 10.0 * 0.2) / 20.0);
        assert_eq!(
            tree.leaf_probability(&[1.0]),
            0.2,
            "empty leaf gets the base rate"
        );
        tree.smooth_leaves(0.2, 0.0);
        assert_eq!(tree.leaf_probability(&[-1.0]), 0.3);
        assert_eq!(
            tree.leaf_probability(&[1.0]),
            0.2,
            "no 0/0 without smoothing"
        );
    }

    #[test]
    fn prune_collapses_splits_with_small_children() {
        // x0 <= 0.5 ? (x1 <= 2 ? 10 rows : 10 rows) : 30 rows
        let tree = Tree::new(vec![
            split(0, 0.5, 1, 4),
            split(1, 2.0, 2, 3),
            leaf(0.1, 1, 10),
            leaf(0.2, 2, 10),
            leaf(0.9, 27, 30),
        ])
        .unwrap();
        // A minimum of 15 collapses the inner split (children of 10) but keeps the root (20, 30).
        let pruned = tree.prune_small_leaves(15);
        assert_eq!(
            pruned.nodes(),
            &[split(0, 0.5, 1, 2), leaf(0.0, 3, 20), leaf(0.0, 27, 30)]
        );
        assert_eq!(pruned.leaf_index(&[0.9, 0.0]), 2);
        // 25 makes the root's left child (20 rows) too small as well.
        assert_eq!(tree.prune_small_leaves(25).nodes(), &[leaf(0.0, 30, 50)]);
        let untouched = tree.prune_small_leaves(10);
        assert_eq!(untouched.node_counts(), tree.node_counts());
        assert_eq!(untouched.nodes().len(), 5);
    }

    #[test]
    fn impurity_decrease_matches_hand_computation() {
        let tree = small_tree();
        let gini = |p: f64| 2.0 * p * (1.0 - p);
        let root = 30.0 * gini(0.4) - 20.0 * gini(0.15) - 10.0 * gini(0.9);
        let inner = 20.0 * gini(0.15) - 10.0 * gini(0.1) - 10.0 * gini(0.2);
        let decrease = tree.impurity_decrease(3);
        assert!((decrease[0] - root / 30.0).abs() < 1e-12);
        assert!((decrease[1] - inner / 30.0).abs() < 1e-12);
        assert_eq!(decrease[2], 0.0);
    }

    #[test]
    fn used_features_lists_split_features() {
        assert_eq!(used_features(&small_tree()), HashSet::from([0, 1]));
    }

    /// Fits linfa directly and checks our conversion against its own structure and partition.
    #[test]
    fn conversion_from_linfa_keeps_structure_and_partition() {
        let rows = 400;
        let features = Array2::from_shape_fn((rows, 2), |(row, column)| {
            let x = (row * 37 % rows) as f64 / rows as f64;
            if column == 0 {
                x
            } else {
                (row * 11 % 17) as f64
            }
        });
        // label = x0 > 0.3 && x1 > 8, so the tree needs both features.
        let labels: Array1<bool> = features
            .rows()
            .into_iter()
            .map(|row| row[0] > 0.3 && row[1] > 8.0)
            .collect();
        let dataset = DatasetBase::new(features.view(), labels.clone());
        let fitted = DecisionTree::params().fit(&dataset).unwrap();
        let mut tree = Tree::from_linfa(fitted.root_node());
        assert_eq!(tree.leaf_count(), fitted.num_leaves());
        assert_eq!(tree.depth(), fitted.max_depth());
        assert_eq!(used_features(&tree), HashSet::from([0, 1]));
        tree.count_rows(features.view(), labels.as_slice().unwrap(), 1);
        let counts = tree.node_counts();
        assert_eq!(counts[0].total, rows as u64);
        // The rule is learnable exactly, so every leaf must be pure.
        for (node, count) in tree.nodes().iter().zip(&counts) {
            if matches!(node, Node::Leaf { .. }) {
                assert!(
                    count.positives == 0 || count.positives == count.total,
                    "{count:?}"
                );
            }
        }
    }

    #[test]
    fn graft_replaces_leaves_and_routes_through_the_subtrees() {
        // small_tree: the root splits feature 0 at 0.5; left, a split on feature 1 at 2.0 into
        // two leaves; right, the leaf 4.
        let tree = small_tree();
        assert_eq!(tree.leaf_depths(), vec![(2, 2), (3, 2), (4, 1)]);
        let subtree = Tree::new(vec![
            split(1, 10.0, 1, 2),
            leaf(0.3, 3, 10),
            leaf(0.7, 7, 10),
        ])
        .unwrap();
        let grafted = tree.graft(&HashMap::from([(4, subtree)]));
        assert_eq!(grafted.leaf_count(), tree.leaf_count() + 1);
        assert_eq!(grafted.depth(), 2);
        // Rows that reached the replaced leaf now split on the subtree's rule; others route as
        // before.
        assert_eq!(grafted.leaf_probability(&[1.0, 5.0]), 0.3);
        assert_eq!(grafted.leaf_probability(&[1.0, 50.0]), 0.7);
        for row in [[0.0, 0.0], [0.0, 9.0], [0.5, 3.0]] {
            assert_eq!(grafted.leaf_probability(&row), tree.leaf_probability(&row));
        }
        assert_eq!(tree.graft(&HashMap::new()), tree);
    }
}
