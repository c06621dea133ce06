//! The stage implementations the runtime runs: one `StageExecutor` per stage kind, wrapping the
//! library code of the other modules. [`registry`] is what the CLI registers.
//!
//! Artifact layouts (files inside a stage's artifact directory):
//! - dataset: `index.json` (long-tail index, class counts, groups); for feature sources also
//!   `train.safetensors` and `test.safetensors` (the layout of a features stage); for image-file
//!   sources `train.pack` and `test.pack` (the kept images, still encoded, memory-mapped by the
//!   stages that read them) and `pack.json` (sizes, re-encoded and skipped images).
//! - backbone: `backbone.mpk` + `backbone.json` (Burn record and config), `normalization.json`.
//! - features: `train.safetensors`, `test.safetensors` (`features` [N, D] f32, `labels` [N]),
//!   `meta.json` (classes, train class counts, groups), `classifier.safetensors` (the backbone's
//!   fc, for heads that start from it).
//! - head: `classifier.safetensors` (the trained effective classifier), `head.json`
//!   (trials, histories), `test_logits_t{i}.safetensors` per trial, a copy of `meta.json`.
//! - evaluate: `metrics.json`, `report.md`, plots.

mod backbone;
mod bench;
mod common;
mod convert;
mod dataset;
mod evaluate;
mod features;
mod head;
mod images;
mod plugin;

use std::sync::Arc;

use lortflow_lang::StageKind;
use lortflow_runtime::Registry;

pub use bench::{EpochRate, InputSetup, bench_input};
pub use common::{Meta, load_split_images};
pub use plugin::{LossPlugin, register_loss};

/// Every stage implementation, by kind.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    registry
        .register(
            StageKind::Dataset,
            Arc::new(dataset::DatasetStage::official()),
        )
        .register(StageKind::Backbone, Arc::new(backbone::BackboneStage))
        .register(StageKind::Features, Arc::new(features::FeaturesStage))
        .register(StageKind::Head, Arc::new(head::HeadStage))
        .register(StageKind::Evaluate, Arc::new(evaluate::EvaluateStage))
        // Sweeps are expanded by the planner and never reach execution.
        .register(StageKind::Sweep, Arc::new(common::NoWork))
        .set_backend_check(Arc::new(check_backend));
    registry
}

/// Fails with a clear message when the backend cannot run here (a build without the `cuda` or
/// `wgpu` feature, no usable CUDA driver or device, no Vulkan adapter), before any work starts.
pub fn check_backend(backend: lortflow_lang::ir::Backend) -> Result<(), String> {
    match backend {
        lortflow_lang::ir::Backend::Cpu => Ok(()),
        lortflow_lang::ir::Backend::Cuda => {
            // A working device stays working: probe once per process (`watch` asks every cycle).
            static WORKS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if WORKS.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(());
            }
            crate::backend::probe_cuda(0).map_err(|e| e.to_string())?;
            WORKS.store(true, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
        lortflow_lang::ir::Backend::Wgpu => {
            // The probe answers once per process; say which adapter runs the work once too.
            let adapter = crate::backend::probe_wgpu().map_err(|e| e.to_string())?;
            static TOLD: std::sync::Once = std::sync::Once::new();
            TOLD.call_once(|| {
                if adapter.contains("software") {
                    tracing::warn!(
                        "wgpu runs on {adapter}: the numbers are a GPU run's, the speed is not \
                         (`--backend cpu` is faster on this machine)"
                    );
                } else {
                    tracing::info!("wgpu runs on {adapter}");
                }
            });
            Ok(())
        }
    }
}

/// Writes the matrices of a features, feature-dataset or head artifact into `dir` as `.npy`
/// (features `{split}_features.npy` float32 N×D, `{split}_labels.npy` int64; head test logits
/// `test_logits_t{i}.npy`; the classifier a features stage or head holds, `classifier_weight.npy`
/// float32 K×D in PyTorch's layout and `classifier_bias.npy` K), plus `meta.json`. A backbone
/// becomes `backbone.safetensors`, a PyTorch state dict (torchvision's names; LDAM-DRW's for
/// ResNet-32) with its classifier, beside `normalization.json` and `backbone.json`. Returns the
/// files written (none for other kinds).
pub fn export(
    artifact: &lortflow_runtime::Artifact,
    dir: &std::path::Path,
) -> Result<Vec<std::path::PathBuf>, lortflow_runtime::StageError> {
    use common::fail;
    use lortflow_data::features::{
        FeatureFile, LabelDtype, write_npy_f32, write_npy_f32_vector, write_npy_labels,
    };
    let mut written = Vec::new();
    let mut export_file =
        |name: &str, stem: &str, labels_too: bool| -> Result<(), lortflow_runtime::StageError> {
            let path = artifact.file(name);
            if !path.exists() {
                return Ok(());
            }
            let file = FeatureFile::open(&path).map_err(fail)?;
            let x = dir.join(format!("{stem}.npy"));
            write_npy_f32(&x, file.features(), file.rows(), file.dim()).map_err(fail)?;
            written.push(x);
            if labels_too {
                let y = dir.join(format!("{}_labels.npy", stem.trim_end_matches("_features")));
                write_npy_labels(&y, file.labels(), LabelDtype::I64).map_err(fail)?;
                written.push(y);
            }
            Ok(())
        };
    export_file(common::TRAIN_FEATURES, "train_features", true)?;
    export_file(common::TEST_FEATURES, "test_features", true)?;
    for t in 0.. {
        let name = head::logits_file(t);
        if !artifact.file(&name).exists() {
            break;
        }
        export_file(&name, &format!("test_logits_t{t}"), false)?;
    }
    if artifact.file(crate::backbone::BACKBONE_CONFIG).exists() {
        written.extend(backbone::export(artifact, dir)?);
    }
    let classifier = artifact.file(common::CLASSIFIER_FILE);
    if classifier.exists() {
        // A features stage's is the backbone's fc; a head's, its trained classifier (trial 0).
        let c = common::load_classifier(&classifier)?;
        let k = c.bias.len();
        let weight = dir.join("classifier_weight.npy");
        write_npy_f32(&weight, &c.weight, k, c.weight.len() / k.max(1)).map_err(fail)?;
        let bias = dir.join("classifier_bias.npy");
        write_npy_f32_vector(&bias, &c.bias).map_err(fail)?;
        written.extend([weight, bias]);
    }
    if !written.is_empty() {
        let meta = artifact.file(common::META_FILE);
        if meta.exists() {
            let target = dir.join("meta.json");
            std::fs::copy(&meta, &target).map_err(fail)?;
            written.push(target);
        }
    }
    Ok(written)
}
