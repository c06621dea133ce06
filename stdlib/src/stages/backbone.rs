//! The `backbone` stage: first-stage training (or loading a checkpoint), then the backbone's own
//! test accuracy. The artifact keeps the model with its classifier, and the input normalisation
//! the features stage must reuse.

use lortflow_data::dataset::{LabeledImages, Split};
use lortflow_data::images::{PackedImages, default_workers};
use lortflow_data::input::{
    Geometry, ImageInput, ImagePipeline, Normalization, Transform, VisionPipeline,
};
use lortflow_lang::ir::{DatasetSpec, Normalize, StageSpec, Weights};
use lortflow_runtime::{StageContext, StageError, StageExecutor};
use serde_json::{Value as Json, json};

use super::common::{
    DatasetIndex, INDEX_FILE, dataset_spec, ensure_source_files, fail, load_split_images,
    official_downloads, read_json, write_json,
};
use super::convert::backbone as convert;
use super::dataset::PACKED;
use super::images;
use crate::backbone::{
    BackboneConfig, CheckpointMapping, ReplicaDevices, TrainData, evaluate_accuracy,
    import_backbone, save_backbone, train_backbone,
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
        let splits = Splits::open(dataset, &index, &data.artifact)?;
        let [channels, height, width] = splits.shape();
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
        let normalization = splits.normalization(spec.normalize, &index.train_ids)?;
        let views = splits.views(&convert::transforms(&spec.augment), &normalization)?;
        if let Views::Packed { train, .. } = &views
            && train.side() as usize != height
        {
            let side = train.side();
            return Err(StageError::failed(format!(
                "backbone `{}` trains on {side}x{side} crops (its `random-resized-crop size=`) but dataset `{}` is evaluated and extracted at {height}x{height} (its `image-size`): the network must see one size",
                cx.stage.name, data.stage.name
            )));
        }
        let test_ids: Vec<u32> = (0..splits.test_len() as u32).collect();
        let out_dir = cx.out_dir;
        let started = std::time::Instant::now();
        let mut last = (0.0f32, 0.0f32, 0.0f32);
        let mut imported: Option<crate::backbone::ImportReport> = None;
        let result: Result<Json, StageError> =
            crate::with_backend!(super::convert::backend(cx.backend), |B, device| {
                let model = match &spec.weights {
                    Weights::Train(t) => {
                        let train_config = convert::train_config(t).map_err(fail)?;
                        let data = TrainData {
                            images: splits.train_input(&views),
                            sample_ids: &index.train_ids,
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
                        let devices = device.replicas(cx.devices).map_err(fail)?;
                        if devices.len() > 1 {
                            tracing::info!(
                                stage = %cx.stage.name,
                                devices = devices.len(),
                                "training data-parallel, one replica per device"
                            );
                        }
                        let model = train_backbone::<B>(
                            &config,
                            &train_config,
                            data,
                            cx.work_dir,
                            cx.cancel.flag(),
                            &mut report,
                            &devices,
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
                    evaluate_accuracy(&model, splits.test_input(&views), &test_ids, 256, &device)
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

/// The splits of a dataset: decoded in memory, or packed in its artifact.
pub(crate) enum Splits {
    Memory {
        train: LabeledImages,
        test: LabeledImages,
    },
    Packed {
        train: PackedImages,
        test: PackedImages,
        eval: Geometry,
    },
}

/// The transforms of both views, for the kind of splits.
pub(crate) enum Views {
    Memory {
        train: ImagePipeline,
        test: ImagePipeline,
    },
    Packed {
        train: VisionPipeline,
        test: VisionPipeline,
    },
}

impl Splits {
    pub(crate) fn open(
        dataset: &DatasetSpec,
        index: &DatasetIndex,
        artifact: &lortflow_runtime::Artifact,
    ) -> Result<Self, StageError> {
        if index.kind == PACKED {
            let files = images::image_files(dataset).ok_or_else(|| {
                StageError::failed(
                    "the dataset's artifact is packed but its source has no image files",
                )
            })?;
            let (train, test) = images::open_packs(artifact)?;
            return Ok(Self::Packed {
                train,
                test,
                eval: files.eval_geometry(),
            });
        }
        Ok(Self::Memory {
            train: load_split_images(dataset, Split::Train)?,
            test: load_split_images(dataset, Split::Test)?,
        })
    }

    /// `[C, H, W]` of the evaluation view.
    pub(crate) fn shape(&self) -> [usize; 3] {
        match self {
            Self::Memory { train, .. } => {
                let [_, c, h, w] = train.images().shape();
                [c, h, w]
            }
            Self::Packed { eval, .. } => {
                let Geometry::ResizeCenterCrop { crop, .. } = eval else {
                    unreachable!("the evaluation view is a centre crop")
                };
                [3, *crop as usize, *crop as usize]
            }
        }
    }

    pub(crate) fn test_len(&self) -> usize {
        match self {
            Self::Memory { test, .. } => test.len(),
            Self::Packed { test, .. } => test.len(),
        }
    }

    /// The statistics `normalize` names; `dataset` reads the training images `ids`.
    pub(crate) fn normalization(
        &self,
        preset: Normalize,
        ids: &[u32],
    ) -> Result<Normalization, StageError> {
        match (self, preset) {
            (Self::Memory { train, .. }, _) => convert::normalization(preset, train, ids),
            (Self::Packed { train, eval, .. }, Normalize::Dataset) => {
                images::pack_statistics(train, ids, eval.clone())
            }
            (Self::Packed { .. }, _) => convert::published_normalization(preset, 3),
        }
        .map_err(fail)
    }

    pub(crate) fn views(
        &self,
        augment: &[Transform],
        normalization: &Normalization,
    ) -> Result<Views, StageError> {
        match self {
            Self::Memory { train, .. } => {
                let shape = train.images().shape();
                Ok(Views::Memory {
                    train: ImagePipeline::new(augment.to_vec(), normalization.clone(), shape)
                        .map_err(fail)?,
                    test: ImagePipeline::new(vec![], normalization.clone(), shape).map_err(fail)?,
                })
            }
            Self::Packed { eval, .. } => Ok(Views::Packed {
                train: VisionPipeline::train(augment, eval.clone(), normalization.clone())
                    .map_err(fail)?,
                test: VisionPipeline::eval(eval.clone(), normalization.clone()).map_err(fail)?,
            }),
        }
    }

    /// The training split through the training view.
    pub(crate) fn train_input<'a>(&'a self, views: &'a Views) -> ImageInput<'a> {
        self.input(views, true, true)
    }

    /// The test split through the evaluation view.
    pub(crate) fn test_input<'a>(&'a self, views: &'a Views) -> ImageInput<'a> {
        self.input(views, false, false)
    }

    /// A split through the evaluation view (feature extraction).
    pub(crate) fn eval_input<'a>(&'a self, views: &'a Views, split: Split) -> ImageInput<'a> {
        self.input(views, split == Split::Train, false)
    }

    fn input<'a>(
        &'a self,
        views: &'a Views,
        train_split: bool,
        train_view: bool,
    ) -> ImageInput<'a> {
        match (self, views) {
            (
                Self::Memory { train, test },
                Views::Memory {
                    train: tv,
                    test: ev,
                },
            ) => ImageInput::Memory {
                images: if train_split { train } else { test },
                pipeline: if train_view { tv } else { ev },
            },
            (
                Self::Packed { train, test, .. },
                Views::Packed {
                    train: tv,
                    test: ev,
                },
            ) => ImageInput::Packed {
                pack: if train_split { train } else { test },
                pipeline: if train_view { tv } else { ev },
                workers: default_workers(),
            },
            _ => unreachable!("views are made from these splits"),
        }
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
