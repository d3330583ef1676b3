//! Commands around the service and its training: synthetic data and the one-command demo.

pub mod demo;
pub mod generate;
