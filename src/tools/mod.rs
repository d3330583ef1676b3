//! Commands around the service and its training: synthetic data, feature descriptions, store
//! backfills and the one-command demo.

pub mod backfill;
pub mod demo;
pub mod describe;
pub mod generate;
