//! lortflow stages.

pub mod dataset;
