//! lortflow stages.

pub mod backbone;
pub mod backend;
pub mod data;
pub mod dataset;
pub mod features;
mod gemm;
pub mod head;
pub mod heap;
pub mod kernels;
pub mod metric;
pub mod report;
pub mod stages;
