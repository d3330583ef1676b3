//! What can go wrong in training, loading, saving and reporting on models: one error type for
//! the whole model module.

use std::path::PathBuf;

/// Errors from training, loading, saving and reporting on models.
#[derive(thiserror::Error, Debug)]
pub enum ModelError {
    /// A file or directory operation failed.
    #[error("failed to {operation} {}", path.display())]
    Io {
        /// What was being done, e.g. "read" or "create directory".
        operation: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A model file is not valid model JSON (including failed structural checks).
    #[error("invalid model file {}", path.display())]
    Parse {
        /// The file that was read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// The model could not be serialized.
    #[error("failed to serialize the model")]
    Serialize(#[source] serde_json::Error),
    /// linfa-trees rejected the data or parameters.
    #[error("decision tree fit failed")]
    Fit(#[from] linfa::Error),
    /// A set has no rows.
    #[error("the {dataset} set is empty")]
    EmptyDataset {
        /// Which set: "training", "calibration" or "validation".
        dataset: &'static str,
    },
    /// A set has no feature columns.
    #[error("the {dataset} set has no features")]
    NoFeatures {
        /// Which set.
        dataset: &'static str,
    },
    /// A set has labels of one class only, so nothing can be learned or measured.
    #[error(
        "the {dataset} set has only {} labels; both classes are needed",
        if *positive { "positive" } else { "negative" }
    )]
    SingleClass {
        /// Which set.
        dataset: &'static str,
        /// The one class present.
        positive: bool,
    },
    /// The feature matrix and the labels disagree on the number of rows.
    #[error("the {dataset} set has {rows} feature rows but {labels} labels")]
    LabelCountMismatch {
        /// Which set.
        dataset: &'static str,
        /// Rows in the feature matrix.
        rows: usize,
        /// Number of labels.
        labels: usize,
    },
    /// A feature vector or matrix has the wrong number of features.
    #[error("expected {expected} features, got {actual}")]
    FeatureCountMismatch {
        /// Number the model or the feature names call for.
        expected: usize,
        /// Number supplied.
        actual: usize,
    },
    /// Two feature lists disagree on a name, so columns would be misread.
    #[error("feature {position} is {actual:?}, expected {expected:?}")]
    FeatureNamesMismatch {
        /// Column index of the first difference.
        position: usize,
        /// Name the model (or training set) has there; empty if it has none.
        expected: String,
        /// Name supplied there; empty if none.
        actual: String,
    },
    /// A training or calibration value is NaN or infinite.
    #[error("non-finite value {value} for feature {feature:?} in row {row} of the {dataset} set")]
    NonFiniteFeature {
        /// Which set.
        dataset: &'static str,
        /// Row index.
        row: usize,
        /// Feature name.
        feature: String,
        /// The offending value.
        value: f64,
    },
    /// A feature passed for scoring is NaN.
    #[error("feature {feature:?} is NaN")]
    NanFeature {
        /// Feature name.
        feature: String,
    },
    /// Scores and labels passed to a report differ in length.
    #[error("{scores} scores but {labels} labels")]
    ScoreCountMismatch {
        /// Number of scores.
        scores: usize,
        /// Number of labels.
        labels: usize,
    },
    /// Training options are out of range.
    #[error("invalid training options: {0}")]
    InvalidOptions(String),
    /// A model (usually a loaded file) breaks a structural invariant.
    #[error("invalid model: {0}")]
    InvalidModel(String),
}
