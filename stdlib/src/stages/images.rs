//! Datasets of image files (`image-list`, `inat2018`, `image-folder`): the dataset stage packs each
//! split once into its artifact (`train.pack`, `test.pack`, `pack.json`), and the backbone and
//! features stages stream from those packs through decode workers, never holding the decoded set.

use std::path::Path;

use lortflow_data::dataset::{
    ImageFolderSource, ImageListSource, ImageSplits, Inat2018Source, SplitFiles,
};
use lortflow_data::images::{
    BadImage, DEFAULT_QUALITY, PackEntry, PackInput, PackOptions, PackReport, PackSplitError,
    PackedImages, default_workers, pack_split,
};
use lortflow_data::input::{DataError, Geometry, Normalization, VisionPipeline};
use lortflow_lang::ir::{DatasetSpec, Source};
use lortflow_runtime::{Artifact, StageContext, StageError};
use serde::{Deserialize, Serialize};

use super::common::fail;

pub(crate) const TRAIN_PACK: &str = "train.pack";
pub(crate) const TEST_PACK: &str = "test.pack";
pub(crate) const PACK_REPORT: &str = "pack.json";

/// The image-file settings of a dataset's source.
#[derive(Clone, Debug)]
pub(crate) struct ImageFiles {
    source: FilesSource,
    image_size: u32,
    resize: u32,
    max_side: Option<u32>,
    skip_bad_images: bool,
}

#[derive(Clone, Debug)]
enum FilesSource {
    List(ImageListSource),
    Inat(Inat2018Source),
    Folder(ImageFolderSource),
}

/// The image files of a dataset, or `None` for sources that load into memory.
pub(crate) fn image_files(spec: &DatasetSpec) -> Option<ImageFiles> {
    match &spec.source.value {
        Source::ImageList {
            root,
            train,
            test,
            image_size,
            resize,
            max_side,
            skip_bad_images,
        } => Some(ImageFiles {
            source: FilesSource::List(ImageListSource {
                root: root.resolved.clone(),
                train: train.resolved.clone(),
                test: test.resolved.clone(),
            }),
            image_size: *image_size,
            resize: *resize,
            max_side: *max_side,
            skip_bad_images: *skip_bad_images,
        }),
        // `inat2018` has no `resize`: the ImageNet test transform's 256/224 ratio, as Decoupling
        // uses for iNaturalist too.
        Source::Inat2018 {
            root,
            train,
            test,
            image_size,
            max_side,
            skip_bad_images,
        } => Some(ImageFiles {
            source: FilesSource::Inat(Inat2018Source {
                root: root.resolved.clone(),
                train: train.resolved.clone(),
                test: test.resolved.clone(),
            }),
            image_size: *image_size,
            resize: (u64::from(*image_size) * 256).div_ceil(224) as u32,
            max_side: *max_side,
            skip_bad_images: *skip_bad_images,
        }),
        Source::ImageFolder {
            train,
            test,
            image_size,
            resize,
            max_side,
            skip_bad_images,
        } => Some(ImageFiles {
            source: FilesSource::Folder(ImageFolderSource {
                train: train.resolved.clone(),
                test: test.resolved.clone(),
            }),
            image_size: *image_size,
            resize: *resize,
            max_side: *max_side,
            skip_bad_images: *skip_bad_images,
        }),
        _ => None,
    }
}

impl ImageFiles {
    /// Lists both splits (no image is opened).
    pub(crate) fn list(&self) -> Result<ImageSplits, StageError> {
        match &self.source {
            FilesSource::List(s) => s.files(),
            FilesSource::Inat(s) => s.files(),
            FilesSource::Folder(s) => s.files(),
        }
        .map_err(fail)
    }

    /// Checks the sizes before anything is read: `resize` must hold the crop.
    pub(crate) fn validate(&self) -> Result<(), StageError> {
        if self.resize < self.image_size {
            return Err(StageError::failed(format!(
                "`image-size` {} is larger than `resize` {}: the evaluation view resizes the shorter side to `resize`, then crops the centre `image-size` square, so `resize` must be at least `image-size`",
                self.image_size, self.resize
            )));
        }
        Ok(())
    }

    /// The evaluation and extraction view: `Resize(resize)` + `CenterCrop(image-size)`.
    pub(crate) fn eval_geometry(&self) -> Geometry {
        Geometry::ResizeCenterCrop {
            resize: self.resize,
            crop: self.image_size,
        }
    }

    fn pack_options(&self) -> PackOptions {
        PackOptions {
            max_side: self.max_side,
            quality: DEFAULT_QUALITY,
            skip_bad_images: self.skip_bad_images,
            workers: default_workers(),
        }
    }
}

/// What `pack.json` records.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct PackRecord {
    pub(crate) max_side: Option<u32>,
    pub(crate) quality: u8,
    pub(crate) train: PackReport,
    pub(crate) test: PackReport,
}

impl PackRecord {
    /// Every skipped image, training split first.
    pub(crate) fn skipped(&self) -> impl Iterator<Item = &BadImage> {
        self.train.skipped.iter().chain(&self.test.skipped)
    }
}

/// Packs the kept training rows and the whole test split into `cx.out_dir`.
pub(crate) fn pack_splits(
    cx: &StageContext<'_>,
    files: &ImageFiles,
    splits: &ImageSplits,
    train_rows: &[u32],
) -> Result<PackRecord, StageError> {
    let options = files.pack_options();
    let kept: Vec<PackEntry> = train_rows
        .iter()
        .map(|&i| splits.train.entries[i as usize].clone())
        .collect();
    let train = pack_one(
        cx,
        &splits.train,
        &kept,
        splits.num_classes,
        TRAIN_PACK,
        &options,
    )?;
    let test = pack_one(
        cx,
        &splits.test,
        &splits.test.entries,
        splits.num_classes,
        TEST_PACK,
        &options,
    )?;
    Ok(PackRecord {
        max_side: files.max_side,
        quality: options.quality,
        train,
        test,
    })
}

fn pack_one(
    cx: &StageContext<'_>,
    split: &SplitFiles,
    entries: &[PackEntry],
    num_classes: usize,
    file: &str,
    options: &PackOptions,
) -> Result<PackReport, StageError> {
    let input = PackInput {
        root: &split.root,
        entries,
        num_classes,
        describe: &|row| split.describe(row),
    };
    let name = file.trim_end_matches(".pack");
    let mut progress = |done: usize, total: usize| {
        cx.progress(
            done as u64,
            total as u64,
            "image",
            format!("packing the {name} split"),
        );
    };
    pack_split(
        &input,
        &cx.out_dir.join(file),
        options,
        cx.cancel.flag(),
        &mut progress,
    )
    .map_err(|e| match e {
        PackSplitError::Cancelled { .. } => StageError::Cancelled,
        other => fail(other),
    })
}

/// The packed splits of a dataset artifact.
pub(crate) fn open_packs(data: &Artifact) -> Result<(PackedImages, PackedImages), StageError> {
    open_packs_in(data.dir())
}

/// The packed splits in `dir`.
pub(crate) fn open_packs_in(dir: &Path) -> Result<(PackedImages, PackedImages), StageError> {
    let open = |name: &str| PackedImages::open(&dir.join(name)).map_err(fail);
    Ok((open(TRAIN_PACK)?, open(TEST_PACK)?))
}

/// The most training images `normalize "dataset"` reads for its statistics: evenly spaced over
/// the split, enough for three-digit precision without a pass over iNaturalist's 437k images.
pub(crate) const STATISTICS_SAMPLE: usize = 20_000;

/// Per-channel statistics of the evaluation view of (up to [`STATISTICS_SAMPLE`] of) `ids`.
pub(crate) fn pack_statistics(
    pack: &PackedImages,
    ids: &[u32],
    eval: Geometry,
) -> Result<Normalization, DataError> {
    let step = ids.len().div_ceil(STATISTICS_SAMPLE).max(1);
    let sample: Vec<u32> = ids.iter().step_by(step).copied().collect();
    let view = VisionPipeline::eval(eval, Normalization::none(3))?;
    lortflow_data::input::stream::pixel_statistics(pack, &sample, &view, default_workers())
}

/// The most skipped images the summary lists by name; `pack.json` has every one.
const LISTED_SKIPPED: usize = 100;

/// The dataset stage's `pack` summary and a warning per skipped image (never silent).
pub(crate) fn report_skipped(stage: &str, record: &PackRecord) -> serde_json::Value {
    let skipped: Vec<String> = record.skipped().map(ToString::to_string).collect();
    for bad in &skipped {
        tracing::warn!(stage, "skipped a bad image: {bad}");
    }
    serde_json::json!({
        "bytes": record.train.bytes + record.test.bytes,
        "reencoded": record.train.reencoded + record.test.reencoded,
        "max_side": record.max_side,
        "skipped": skipped.len(),
        "skipped_images": skipped.iter().take(LISTED_SKIPPED).collect::<Vec<_>>(),
    })
}
