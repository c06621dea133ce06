//! The `backbone` stage: first-stage training (or loading a checkpoint), then the backbone's own
//! test accuracy. The artifact keeps the model with its classifier, and the input normalisation
//! the features stage must reuse.

use lortflow_data::dataset::Split;
use lortflow_data::input::{ImagePipeline, Normalization};
use lortflow_lang::ir::{StageSpec, Weights};
use lortflow_runtime::{StageContext, StageError, StageExecutor};
use serde_json::{Value as Json, json};

use super::common::{
    DatasetIndex, INDEX_FILE, dataset_spec, ensure_source_files, fail, load_split_images,
    official_downloads, read_json, write_json,
};
use super::convert::backbone as convert;
use crate::backbone::{
    BackboneConfig, CheckpointMapping, TrainData, evaluate_accuracy, import_backbone,
    save_backbone, train_backbone,
};

pub(crate) const NORMALIZATION_FILE: &str = "normalization.json";

pub(crate) struct BackboneStage;

impl StageExecutor for BackboneStage {
    fn version(&self) -> &'static str {
        // 2: convolution gradients from `crate::kernels` on the CPU (the same math, other
        // rounding).
        "2"
    }

    fn run(&self, cx: &StageContext<'_>) -> Result<Json, StageError> {
        let StageSpec::Backbone(spec) = &cx.stage.stage.spec else {
            return Err(StageError::failed("not a backbone stage"));
        };
        let data = cx.input("data")?;
        let dataset = dataset_spec(data)?;
        let index: DatasetIndex = read_json(&data.artifact.file(INDEX_FILE))?;
        ensure_source_files(cx, dataset, &official_downloads())?;
        let train = load_split_images(dataset, Split::Train)?;
        let test = load_split_images(dataset, Split::Test)?;
        let [_, channels, height, width] = train.images().shape();
        if height != width {
            return Err(StageError::failed(format!(
                "backbone `{}` needs square images; `{}` has {height}x{width}",
                cx.stage.name, data.stage.name
            )));
        }
        let config = BackboneConfig {
            arch: convert::arch(spec.arch.value),
            num_classes: index.meta.num_classes,
            in_channels: channels,
            input_size: height,
        };
        let normalization =
            convert::normalization(spec.normalize, &train, &index.train_ids).map_err(fail)?;
        let test_pipeline =
            ImagePipeline::new(vec![], normalization.clone(), train.images().shape())
                .map_err(fail)?;
        let test_ids: Vec<u32> = (0..test.len() as u32).collect();
        let out_dir = cx.out_dir;
        let started = std::time::Instant::now();
        let mut last = (0.0f32, 0.0f32, 0.0f32);
        let mut imported: Option<crate::backbone::ImportReport> = None;
        let result: Result<Json, StageError> =
            crate::with_backend!(super::convert::backend(cx.backend), |B, device| {
                let model = match &spec.weights {
                    Weights::Train(t) => {
                        let pipeline = ImagePipeline::new(
                            convert::transforms(&spec.augment),
                            normalization.clone(),
                            train.images().shape(),
                        )
                        .map_err(fail)?;
                        let train_config = convert::train_config(t).map_err(fail)?;
                        let data = TrainData {
                            images: &train,
                            sample_ids: &index.train_ids,
                            pipeline: &pipeline,
                        };
                        let mut report = |p: &crate::backbone::TrainProgress| {
                            last = (p.loss, p.train_acc, p.images_per_sec);
                            cx.progress(
                                (p.epoch * p.steps + p.step + 1) as u64,
                                (p.epochs * p.steps) as u64,
                                "step",
                                format!(
                                    "epoch {}/{} loss {:.3} acc {:.1}% {:.0} img/s",
                                    p.epoch + 1,
                                    p.epochs,
                                    p.loss,
                                    100.0 * p.train_acc,
                                    p.images_per_sec
                                ),
                            )
                        };
                        let model = train_backbone::<B>(
                            &config,
                            &train_config,
                            data,
                            cx.work_dir,
                            cx.cancel.flag(),
                            &mut report,
                            &device,
                        )
                        .map_err(|e| match e {
                            crate::backbone::BackboneError::Cancelled { .. } => {
                                StageError::Cancelled
                            }
                            other => fail(other),
                        })?;
                        crate::backbone::inference_model(&model)
                    }
                    Weights::Checkpoint {
                        path,
                        format,
                        trunk,
                        classifier,
                        classifier_kind,
                    } => {
                        let mapping = CheckpointMapping {
                            trunk: trunk.clone(),
                            classifier: classifier.clone(),
                            classifier_kind: convert::classifier_kind(*classifier_kind),
                        };
                        let (model, report) = import_backbone::<
                            <B as burn::tensor::backend::AutodiffBackend>::InnerBackend,
                        >(
                            &config,
                            &path.resolved,
                            convert::checkpoint_format(*format),
                            &mapping,
                            &device,
                        )
                        .map_err(fail)?;
                        if !report.converted_from.is_empty() {
                            tracing::info!(
                                stage = %cx.stage.name,
                                from = %report.converted_from.join(", "),
                                "converted the checkpoint's weights to float32"
                            );
                        }
                        imported = Some(report);
                        model
                    }
                };
                cx.progress(0, 1, "step", "evaluating the backbone's own classifier");
                let accuracy =
                    evaluate_accuracy(&model, &test, &test_ids, &test_pipeline, 256, &device)
                        .map_err(fail)?;
                save_backbone(&model, &config, out_dir).map_err(fail)?;
                Ok(json!({
                    "arch": config.arch.name(),
                    "feature_dim": config.feature_dim(),
                    "parameters": model.num_trainable_params(),
                    "input": [channels, height, width],
                    "test_top1": accuracy,
                }))
            })
            .map_err(fail)?;
        let mut summary = result?;
        write_json(
            &out_dir.join(NORMALIZATION_FILE),
            &json!({ "mean": normalization.mean, "std": normalization.std }),
        )?;
        if matches!(spec.weights, Weights::Train(_)) {
            summary["final_loss"] = json!(last.0);
            summary["final_train_acc"] = json!(last.1);
            summary["images_per_sec"] = json!(last.2);
            summary["train_seconds"] = json!(started.elapsed().as_secs_f64());
            // The training curve: loss and train accuracy per epoch (`report --html` plots it).
            summary["history"] = json!(crate::backbone::training_history(cx.work_dir));
        }
        if let Some(report) = imported {
            summary["checkpoint"] = json!({
                "file": report.file,
                "trunk": report.trunk,
                "classifier": report.classifier,
                "classifier_kind": convert::classifier_kind_name(report.classifier_kind),
                "converted_from": report.converted_from,
            });
        }
        Ok(summary)
    }
}

/// The normalisation a backbone was trained with.
pub(crate) fn read_normalization(
    artifact: &lortflow_runtime::Artifact,
) -> Result<Normalization, StageError> {
    let v: Json = read_json(&artifact.file(NORMALIZATION_FILE))?;
    let floats = |key: &str| -> Vec<f32> {
        v[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_f64())
                    .map(|x| x as f32)
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(Normalization {
        mean: floats("mean"),
        std: floats("std"),
    })
}

/// The file `export` writes a backbone to: a PyTorch state dict.
pub(crate) const EXPORTED_BACKBONE: &str = "backbone.safetensors";

/// Writes a backbone artifact for PyTorch: `backbone.safetensors` (see
/// [`crate::backbone::export_torch`]), `normalization.json` (the inputs' mean and std, which
/// PyTorch needs to reproduce the features) and `backbone.json` (architecture, classes, input).
pub(crate) fn export(
    artifact: &lortflow_runtime::Artifact,
    dir: &std::path::Path,
) -> Result<Vec<std::path::PathBuf>, StageError> {
    let (model, config) = crate::backbone::load_backbone::<crate::backend::CpuBackend>(
        artifact.dir(),
        &crate::backend::CpuDevice::default(),
    )
    .map_err(fail)?;
    let target = dir.join(EXPORTED_BACKBONE);
    crate::backbone::export_torch(&model, &config, &target).map_err(fail)?;
    let mut written = vec![target];
    for name in [NORMALIZATION_FILE, crate::backbone::BACKBONE_CONFIG] {
        let to = dir.join(name);
        std::fs::copy(artifact.file(name), &to).map_err(fail)?;
        written.push(to);
    }
    Ok(written)
}
