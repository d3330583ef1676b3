//! Commands around the service and its training: synthetic data, feature descriptions and the
//! one-command demo.

pub mod demo;
pub mod describe;
pub mod generate;
