//! What the stages share: the dataset index and metadata files, loading the images of a
//! dataset stage, backend selection and error conversion.

use std::path::Path;

use lortflow_lang::ir::{Backend, DatasetSpec, Source, StageSpec};
use lortflow_runtime::{StageContext, StageError, StageExecutor, StageInput};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::backend::BackendChoice;
use crate::dataset::{Group, ImageDataset, LabeledImages, PatternImagesConfig, Split};

/// Class metadata that travels with features to heads and evaluations (`meta.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    /// K.
    pub num_classes: usize,
    /// Training images per class after the long tail.
    pub class_counts: Vec<usize>,
    /// The group of each class (`many`, `medium`, `few`).
    pub groups: Vec<Group>,
    /// The many/medium boundary in images.
    pub many_threshold: f64,
    /// The medium/few boundary in images.
    pub few_threshold: f64,
    /// `strict` or `inclusive`.
    pub boundary: String,
}

pub(crate) const INDEX_FILE: &str = "index.json";
pub(crate) const META_FILE: &str = "meta.json";
pub(crate) const TRAIN_FEATURES: &str = "train.safetensors";
pub(crate) const TEST_FEATURES: &str = "test.safetensors";
pub(crate) const CLASSIFIER_FILE: &str = "classifier.safetensors";

/// The dataset artifact's `index.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DatasetIndex {
    pub(crate) meta: Meta,
    /// Ids of the kept training samples, ascending (file order).
    pub(crate) train_ids: Vec<u32>,
    /// Test samples (all kept).
    pub(crate) test_count: usize,
    /// `images` or `vectors`.
    pub(crate) kind: String,
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, StageError> {
    let bytes = std::fs::read(path)
        .map_err(|e| StageError::failed(format!("cannot read `{}`: {e}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| StageError::failed(format!("`{}` is not valid: {e}", path.display())))
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StageError> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| StageError::failed(e.to_string()))?;
    std::fs::write(path, text)
        .map_err(|e| StageError::failed(format!("cannot write `{}`: {e}", path.display())))
}

pub(crate) fn fail(err: impl std::error::Error) -> StageError {
    StageError::from_error(&err)
}

/// The dataset spec of a dataset stage input.
pub(crate) fn dataset_spec<'a>(input: &'a StageInput<'_>) -> Result<&'a DatasetSpec, StageError> {
    match &input.stage.stage.spec {
        StageSpec::Dataset(d) => Ok(d),
        _ => Err(StageError::failed(format!(
            "`{}` is not a dataset",
            input.stage.name
        ))),
    }
}

/// The backend choice of a run.
pub(crate) fn backend_choice(backend: Backend) -> BackendChoice {
    match backend {
        Backend::Cpu => BackendChoice::Cpu,
        Backend::Cuda => BackendChoice::Cuda { index: 0 },
    }
}

/// Loads one split of an image dataset, as declared by a dataset stage.
pub fn load_split_images(spec: &DatasetSpec, split: Split) -> Result<LabeledImages, StageError> {
    let load = |dataset: ImageDataset, root: &Path| dataset.load(root, split).map_err(fail);
    match &spec.source.value {
        Source::FashionMnist { root, .. } => load(ImageDataset::FashionMnist, &root.resolved),
        Source::Mnist { root, .. } => load(ImageDataset::Mnist, &root.resolved),
        Source::Cifar10 { root, .. } => load(ImageDataset::Cifar10, &root.resolved),
        Source::Cifar100 { root, .. } => load(ImageDataset::Cifar100, &root.resolved),
        Source::Synthetic {
            kind,
            classes,
            per_class,
            test_per_class,
            size,
            channels,
            noise,
            seed,
            ..
        } if kind == "images" => {
            // One draw for both splits, so that train and test share the class patterns.
            let all = PatternImagesConfig {
                num_classes: *classes as usize,
                channels: *channels as usize,
                height: *size as usize,
                width: *size as usize,
                grid: 4,
                per_class: (*per_class + *test_per_class) as usize,
                noise: *noise,
                seed: *seed,
            }
            .generate()
            .map_err(fail)?;
            let ids = split_ids(all.labels(), *classes as usize, *per_class as usize, split);
            all.select(&ids).map_err(fail)
        }
        Source::ImageList { .. } | Source::Inat2018 { .. } => Err(StageError::failed(
            "this version of lortflow cannot read `image-list` and `inat2018` sources yet (JPEG decoding is \
             not implemented); extract features elsewhere and use `source \"features\"`",
        )),
        Source::Features { .. } | Source::Synthetic { .. } => Err(StageError::failed(
            "this dataset holds feature vectors, not images",
        )),
    }
}

/// Sweeps never run (the planner expands them); registered so every kind has an executor.
pub(crate) struct NoWork;

impl StageExecutor for NoWork {
    fn version(&self) -> &'static str {
        "1"
    }
    fn uses_device(&self, _: &lortflow_runtime::ConcreteStage, _: Backend) -> bool {
        false
    }
    fn run(&self, _: &StageContext<'_>) -> Result<Json, StageError> {
        Ok(Json::Null)
    }
}

/// A linear classifier on disk (`classifier.safetensors`: `weight` [K, D], `bias` [K]).
pub(crate) fn save_classifier(
    path: &Path,
    weight: &[f32],
    bias: &[f32],
    num_classes: usize,
) -> Result<(), StageError> {
    use safetensors::tensor::{Dtype, TensorView};
    let dim = weight.len() / num_classes.max(1);
    let w: &[u8] = bytemuck::cast_slice(weight);
    let b: &[u8] = bytemuck::cast_slice(bias);
    let views = [
        (
            "weight",
            TensorView::new(Dtype::F32, vec![num_classes, dim], w).map_err(fail)?,
        ),
        (
            "bias",
            TensorView::new(Dtype::F32, vec![num_classes], b).map_err(fail)?,
        ),
    ];
    safetensors::serialize_to_file(views, None, path).map_err(fail)
}

/// Reads a classifier written by [`save_classifier`].
pub(crate) fn load_classifier(path: &Path) -> Result<crate::head::Classifier, StageError> {
    let bytes = std::fs::read(path)
        .map_err(|e| StageError::failed(format!("cannot read `{}`: {e}", path.display())))?;
    let tensors = safetensors::SafeTensors::deserialize(&bytes).map_err(fail)?;
    let floats = |name: &str| -> Result<Vec<f32>, StageError> {
        let t = tensors.tensor(name).map_err(|_| {
            StageError::failed(format!("`{}` has no tensor `{name}`", path.display()))
        })?;
        Ok(t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    };
    Ok(crate::head::Classifier {
        weight: floats("weight")?,
        bias: floats("bias")?,
    })
}

/// The ids of one split of generated data: per class, the first `train_per_class` samples (in
/// generation order) are train and the rest test.
pub(crate) fn split_ids(
    labels: &[u32],
    num_classes: usize,
    train_per_class: usize,
    split: Split,
) -> Vec<u32> {
    let mut seen = vec![0usize; num_classes];
    let mut ids = Vec::new();
    for (i, &y) in labels.iter().enumerate() {
        let c = y as usize;
        let is_train = seen[c] < train_per_class;
        seen[c] += 1;
        if is_train == (split == Split::Train) {
            ids.push(i as u32);
        }
    }
    ids
}
