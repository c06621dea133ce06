//! lortflow's standard stages on Burn: the backbone architectures and their CPU kernels,
//! first-stage training, checkpoints in and out, feature extraction, the head trainer, backend
//! selection, and the stage executors the CLI registers ([`stages`]).
//!
//! The data layer (`lortflow-data`) and the reports (`lortflow-report`) need no tensor library and
//! live in their own crates; only [`stages`] reads the pipeline language's IR.

pub mod backbone;
pub mod backend;
pub mod cpu;
pub mod features;
mod gemm;
pub mod head;
pub mod heap;
pub mod input;
pub mod kernels;
pub mod stages;
