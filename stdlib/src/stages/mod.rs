//! The stage implementations the runtime runs: one `StageExecutor` per stage kind, wrapping the
//! library code of the other modules. [`registry`] is what the CLI registers.
//!
//! Artifact layouts (files inside a stage's artifact directory):
//! - dataset: `index.json` (long-tail index, class counts, groups); for feature sources also
//!   `train.safetensors` and `test.safetensors` (the layout of a features stage).
//! - backbone: `backbone.mpk` + `backbone.json` (Burn record and config), `normalization.json`.
//! - features: `train.safetensors`, `test.safetensors` (`features` [N, D] f32, `labels` [N]),
//!   `meta.json` (classes, train class counts, groups), `classifier.safetensors` (the backbone's
//!   fc, for heads that start from it).
//! - head: `classifier.safetensors` (the trained effective classifier), `head.json`
//!   (trials, histories), `test_logits_t{i}.safetensors` per trial, a copy of `meta.json`.
//! - evaluate: `metrics.json`, `report.md`, plots.

mod backbone;
mod common;
mod dataset;
mod evaluate;
mod features;
mod head;

use std::sync::Arc;

use lortflow_lang::StageKind;
use lortflow_runtime::Registry;

pub use common::{Meta, load_split_images};

/// Every stage implementation, by kind.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    registry
        .register(StageKind::Dataset, Arc::new(dataset::DatasetStage))
        .register(StageKind::Backbone, Arc::new(backbone::BackboneStage))
        .register(StageKind::Features, Arc::new(features::FeaturesStage))
        .register(StageKind::Head, Arc::new(head::HeadStage))
        .register(StageKind::Evaluate, Arc::new(evaluate::EvaluateStage))
        // Sweeps are expanded by the planner and never reach execution.
        .register(StageKind::Sweep, Arc::new(common::NoWork));
    registry
}

/// Fails with a clear message when the backend cannot run here (a build without the `cuda`
/// feature, or no usable CUDA driver or device), before any work starts.
pub fn check_backend(backend: lortflow_lang::ir::Backend) -> Result<(), String> {
    match backend {
        lortflow_lang::ir::Backend::Cpu => Ok(()),
        lortflow_lang::ir::Backend::Cuda => {
            crate::backend::probe_cuda(0).map_err(|e| e.to_string())
        }
    }
}
