//! What the stages share: the dataset index and metadata files, loading the images of a
//! dataset stage, backend selection and error conversion.

use std::path::Path;

use lortflow_lang::ir::{Backend, DatasetSpec, Source, StageSpec, SyntheticKind};
use lortflow_runtime::{StageContext, StageError, StageExecutor, StageInput};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use lortflow_data::dataset::{
    DownloadProgress, DownloadSpec, Group, ImageDataset, LabeledImages, PatternImagesConfig, Split,
    ensure_downloaded,
};

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
        .map_err(|e| StageError::with_source(format!("cannot read `{}`", path.display()), e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| StageError::with_source(format!("`{}` is not valid", path.display()), e))
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StageError> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| StageError::failed(e.to_string()))?;
    std::fs::write(path, text)
        .map_err(|e| StageError::with_source(format!("cannot write `{}`", path.display()), e))
}

pub(crate) fn fail(err: impl std::error::Error + Send + Sync + 'static) -> StageError {
    StageError::from_source(err)
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
        } if *kind == SyntheticKind::Images => {
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
        Source::ImageList { .. } | Source::Inat2018 { .. } | Source::ImageFolder { .. } => {
            Err(StageError::failed(
                "the images of this source are packed by the dataset stage and streamed from its artifact, not loaded whole",
            ))
        }
        Source::Features { .. } | Source::Synthetic { .. } => Err(StageError::failed(
            "this dataset holds feature vectors, not images",
        )),
    }
}

/// Where a dataset's downloads come from: the official files and mirrors, or (in tests) a local
/// server's.
pub(crate) type DownloadSpecs = std::sync::Arc<dyn Fn(ImageDataset) -> DownloadSpec + Send + Sync>;

/// Downloads the files of a source with `download=#true` into its root when the loader would not
/// find them; does nothing for other sources or when the files are there.
/// `progress` returns `false` to stop (the partial download is kept for the next run).
pub(crate) fn download_if_requested(
    spec: &DatasetSpec,
    specs: &DownloadSpecs,
    progress: &mut dyn FnMut(&DownloadProgress<'_>) -> bool,
) -> Result<(), StageError> {
    let (dataset, root) = match &spec.source.value {
        Source::FashionMnist {
            root,
            download: true,
        } => (ImageDataset::FashionMnist, root),
        Source::Mnist {
            root,
            download: true,
        } => (ImageDataset::Mnist, root),
        Source::Cifar10 {
            root,
            download: true,
        } => (ImageDataset::Cifar10, root),
        Source::Cifar100 {
            root,
            download: true,
        } => (ImageDataset::Cifar100, root),
        _ => return Ok(()),
    };
    ensure_downloaded(&specs(dataset), &root.resolved, progress)
        .map(|_| ())
        .map_err(fail)
}

/// The official files and mirrors of every downloadable dataset.
pub(crate) fn official_downloads() -> DownloadSpecs {
    std::sync::Arc::new(DownloadSpec::official)
}

/// Makes sure the files of a `download=#true` source are there before a stage reads them,
/// downloading what is missing with progress through `cx` (a stopped download is a
/// cancellation). Every stage that reads a source's images calls it, not only the dataset stage:
/// such a dataset is cached by its settings, so its index can outlive files deleted since.
pub(crate) fn ensure_source_files(
    cx: &StageContext<'_>,
    spec: &DatasetSpec,
    specs: &DownloadSpecs,
) -> Result<(), StageError> {
    let downloaded = download_if_requested(spec, specs, &mut |p| {
        cx.progress(
            p.done,
            p.total.unwrap_or(0),
            "bytes",
            format!("downloading {}", p.file),
        );
        cx.check_cancelled().is_ok()
    });
    if let Err(e) = downloaded {
        cx.check_cancelled()?;
        return Err(e);
    }
    Ok(())
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
        .map_err(|e| StageError::with_source(format!("cannot read `{}`", path.display()), e))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset(source: &str) -> DatasetSpec {
        let text =
            format!("lortflow 1\ndataset \"d\" {{\n    {source}\n    long-tail \"none\"\n}}\n");
        let checked = lortflow_lang::check_text(
            Path::new("/pipelines/p.kdl"),
            text,
            &lortflow_lang::MemoryLoader::default(),
        );
        assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
        match &checked.pipeline.stages[0].spec {
            StageSpec::Dataset(d) => d.clone(),
            _ => unreachable!("the only stage is a dataset"),
        }
    }

    #[test]
    fn image_sources_are_listed_through_the_stage_helper() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("train.txt"), "a.png 0\nb.png 1\n").unwrap();
        std::fs::write(d.join("test.txt"), "b.png 1\n").unwrap();
        let spec = dataset(&format!(
            "source \"image-list\" root=\"{0}\" train=\"{0}/train.txt\" test=\"{0}/test.txt\" image-size=16 resize=20",
            d.display()
        ));
        let files = super::super::images::image_files(&spec).unwrap();
        files.validate().unwrap();
        let splits = files.list().unwrap();
        assert_eq!(splits.train.labels(), [0, 1]);
        assert_eq!(splits.num_classes, 2);
        assert!(
            load_split_images(&spec, Split::Train).is_err(),
            "packed, not loaded whole"
        );

        let json = r#"{"images": [{"id": 3, "file_name": "a.png"}],
                       "annotations": [{"id": 1, "image_id": 3, "category_id": 0}],
                       "categories": [{"id": 0}]}"#;
        std::fs::write(d.join("inat.json"), json).unwrap();
        let spec = dataset(&format!(
            "source \"inat2018\" root=\"{0}\" train=\"{0}/inat.json\" test=\"{0}/inat.json\" image-size=8",
            d.display()
        ));
        let files = super::super::images::image_files(&spec).unwrap();
        assert_eq!(
            files.eval_geometry(),
            lortflow_data::input::Geometry::ResizeCenterCrop {
                resize: 10,
                crop: 8
            },
            "the ImageNet 256/224 ratio"
        );
        assert_eq!(files.list().unwrap().test.entries[0].path, "a.png");

        let spec = dataset(&format!(
            "source \"image-list\" root=\"{0}\" train=\"{0}/train.txt\" test=\"{0}/test.txt\" image-size=16 resize=8",
            d.display()
        ));
        let err = super::super::images::image_files(&spec)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("`resize` must be at least `image-size`"),
            "{err}"
        );
    }

    fn official() -> DownloadSpecs {
        std::sync::Arc::new(DownloadSpec::official)
    }

    #[test]
    fn download_is_skipped_unless_requested_or_when_files_are_there() {
        let dir = tempfile::tempdir().unwrap();
        let mut called = false;
        let mut progress = |_: &DownloadProgress<'_>| {
            called = true;
            true
        };
        // `download` off: nothing happens, even though the root is empty.
        let spec = dataset(&format!(
            "source \"cifar10\" root=\"{}\"",
            dir.path().display()
        ));
        download_if_requested(&spec, &official(), &mut progress).unwrap();
        // `download` on, files present: no network either.
        let vendored = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/fashion-mnist");
        let spec = dataset(&format!(
            "source \"fashion-mnist\" root=\"{}\" download=#true",
            vendored.display()
        ));
        download_if_requested(&spec, &official(), &mut progress).unwrap();
        assert!(!called);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
