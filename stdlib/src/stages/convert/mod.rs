//! Where the pipeline language's IR becomes the plain configurations the libraries take: one
//! module per stage kind. The libraries (`backbone`, `features`, `head`, `lortflow-data`) never see
//! the IR; the stage executors call these functions.

pub(crate) mod backbone;
pub(crate) mod dataset;
pub(crate) mod evaluate;
pub(crate) mod features;
pub(crate) mod head;

use lortflow_lang::ir::Backend;

use crate::backend::BackendChoice;

/// The backend a run names (CUDA on its first device).
pub(crate) fn backend(backend: Backend) -> BackendChoice {
    match backend {
        Backend::Cpu => BackendChoice::Cpu,
        Backend::Cuda => BackendChoice::Cuda { index: 0 },
        Backend::Wgpu => BackendChoice::Wgpu,
    }
}
