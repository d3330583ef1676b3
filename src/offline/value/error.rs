//! What can go wrong in reading purchases, fitting the customer-value models and saving them:
//! one error type for the whole value module.

use std::path::PathBuf;

/// Errors from the customer-value models and their inputs.
#[derive(thiserror::Error, Debug)]
pub enum ValueError {
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
    /// A line of a CDNOW file could not be read.
    #[error("{}: line {line}: {problem}", path.display())]
    CdnowLine {
        /// The file read.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong with the line.
        problem: CdnowLineError,
    },
    /// A REES46 history could not be read (its own reader's error, with file and line).
    #[error("failed to read the purchase history")]
    History(#[source] anyhow::Error),
    /// The input has no purchases at all.
    #[error("no purchases in the input")]
    NoPurchases,
    /// Nobody made a first purchase within the calibration period.
    #[error("no customers to fit: nobody made a first purchase by the calibration end")]
    NoCustomers,
    /// The calibration and holdout periods are not in order.
    #[error("{0}")]
    Periods(String),
    /// A customer summary cannot come from any purchase history.
    #[error("customer {index}: {reason}")]
    InvalidHistory {
        /// Position of the customer in the input.
        index: usize,
        /// What is impossible about it.
        reason: String,
    },
    /// The optimiser did not find a maximum of the likelihood.
    #[error("the {model} fit failed: {reason}")]
    Fit {
        /// "BG/NBD" or "Gamma-Gamma".
        model: &'static str,
        /// The optimiser's account.
        reason: String,
    },
    /// A model file is not valid value-model JSON.
    #[error("invalid value model file {}", path.display())]
    Parse {
        /// The file that was read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// The model could not be serialized.
    #[error("failed to serialize the value model")]
    Serialize(#[source] serde_json::Error),
}

/// What is wrong with one line of a CDNOW file.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum CdnowLineError {
    /// Not 4 fields (id, date, CDs, dollars) or 5 (id, new id, date, CDs, dollars).
    #[error(
        "expected 4 fields (customer id, date, number of CDs, dollar value) or 5 (with a second id after the first), found {found}"
    )]
    FieldCount {
        /// Fields found.
        found: usize,
    },
    /// A line with a different number of fields from the file's first data line.
    #[error("found {found} fields where the first data line had {expected}")]
    InconsistentFieldCount {
        /// Fields on the first data line.
        expected: usize,
        /// Fields on this one.
        found: usize,
    },
    /// A field that does not parse.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidField {
        /// Which field.
        field: &'static str,
        /// Its text.
        value: String,
        /// Why it is invalid.
        reason: &'static str,
    },
}
