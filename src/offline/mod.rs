//! Offline training: read history in event-time order, replay it through the same feature code
//! the service runs, label every scoring point, and fit, calibrate and report the model; and the
//! customer-value models fitted on purchase histories.

pub mod history;
pub mod model;
pub mod train;
pub mod value;
