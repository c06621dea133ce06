//! The `dataset` stage: reads the source, makes the train split long-tailed and assigns the
//! many / medium / few groups. Its artifact is an index; feature sources also store their
//! (long-tailed) matrices so heads can read them like a features stage, and image-file sources
//! their packed splits (the kept training images and the test images, still encoded).

use lortflow_data::dataset::{GaussianClustersConfig, Group, Split};
use lortflow_data::features::{NpyFile, write_features};
use lortflow_lang::ir::{Backend, DatasetSpec, Source, StageSpec, SyntheticKind};

use super::images;
use lortflow_runtime::{ConcreteStage, StageContext, StageError, StageExecutor};
use serde_json::{Value as Json, json};

use super::common::{
    DatasetIndex, DownloadSpecs, INDEX_FILE, META_FILE, Meta, TEST_FEATURES, TRAIN_FEATURES,
    ensure_source_files, fail, load_split_images, official_downloads, read_json, split_ids,
    write_json,
};
use super::convert::dataset as convert;

pub(crate) struct DatasetStage {
    /// Where `download=#true` fetches from.
    downloads: DownloadSpecs,
}

impl DatasetStage {
    /// Downloads from the official mirrors, checked against the published checksums.
    pub(crate) fn official() -> Self {
        Self::with_downloads(official_downloads())
    }

    pub(crate) fn with_downloads(downloads: DownloadSpecs) -> Self {
        Self { downloads }
    }
}

impl StageExecutor for DatasetStage {
    fn version(&self) -> &'static str {
        // Image-file sources are packed since issue #34: their settings (`max-side`,
        // `skip-bad-images`) are new, so their keys changed anyway; other sources' artifacts are
        // as before, and keep their keys.
        "1"
    }

    fn uses_device(&self, _: &ConcreteStage, _: Backend) -> bool {
        false
    }

    fn run(&self, cx: &StageContext<'_>) -> Result<Json, StageError> {
        let StageSpec::Dataset(spec) = &cx.stage.stage.spec else {
            return Err(StageError::failed("not a dataset stage"));
        };
        ensure_source_files(cx, spec, &self.downloads)?;
        if let Some(files) = images::image_files(spec) {
            return packed_dataset(cx, spec, &files);
        }
        cx.progress(0, 2, "step", "reading the source");
        let vectors = vector_source(spec)?;
        let (train_labels, num_classes, test_count) = match &vectors {
            Some(v) => (v.train_labels.clone(), v.num_classes, v.test_labels.len()),
            None => {
                let train = load_split_images(spec, Split::Train)?;
                // The test split is read here too so that a broken test file fails at the dataset
                // stage, where the error names the dataset, not deep inside a backbone.
                let test = load_split_images(spec, Split::Test)?;
                (train.labels().to_vec(), train.num_classes(), test.len())
            }
        };
        cx.check_cancelled()?;
        cx.progress(1, 2, "step", "building the long-tailed index");
        let index = long_tail(spec, &train_labels, num_classes)
            .map_err(|e| StageError::failed(format!("dataset `{}`: {e}", cx.stage.name)))?;
        let groups = convert::groups(spec)
            .assign(&index.class_counts)
            .map_err(fail)?;
        let meta = Meta {
            num_classes,
            class_counts: index.class_counts.clone(),
            groups: groups.groups.clone(),
            many_threshold: groups.many_threshold,
            few_threshold: groups.few_threshold,
            boundary: spec.groups.rule.name().to_string(),
        };
        let kind = if vectors.is_some() {
            "vectors"
        } else {
            "images"
        };
        if let Some(v) = &vectors {
            let dim = v.dim;
            let mut rows = Vec::with_capacity(index.sample_ids.len() * dim);
            for &id in &index.sample_ids {
                let i = id as usize;
                rows.extend_from_slice(&v.train[i * dim..(i + 1) * dim]);
            }
            write_features(&cx.out_dir.join(TRAIN_FEATURES), &rows, dim, &index.labels)
                .map_err(fail)?;
            write_features(
                &cx.out_dir.join(TEST_FEATURES),
                &v.test,
                dim,
                &v.test_labels,
            )
            .map_err(fail)?;
            write_json(&cx.out_dir.join(META_FILE), &meta)?;
        }
        let sizes = groups.sizes();
        let summary = json!({
            "kind": kind,
            "num_classes": num_classes,
            "train_samples": index.sample_ids.len(),
            "test_samples": test_count,
            "class_counts": index.class_counts,
            "imbalance_ratio": index.imbalance_ratio(),
            "groups": { "many": sizes[0], "medium": sizes[1], "few": sizes[2],
                        "many_threshold": groups.many_threshold, "few_threshold": groups.few_threshold },
        });
        let record = DatasetIndex {
            meta,
            train_ids: index.sample_ids,
            test_count,
            kind: kind.into(),
        };
        write_json(&cx.out_dir.join(INDEX_FILE), &record)?;
        cx.progress(2, 2, "step", "done");
        Ok(summary)
    }

    fn inspect(&self, artifact: &lortflow_runtime::Artifact) -> Result<Json, StageError> {
        let index: DatasetIndex = read_json(&artifact.file(INDEX_FILE))?;
        let mut summary = artifact.manifest().summary.clone();
        let rows: Vec<String> = index
            .meta
            .class_counts
            .iter()
            .zip(&index.meta.groups)
            .enumerate()
            .map(|(c, (n, g))| format!("{c:>5}  {n:>7}  {}", group_name(*g)))
            .collect();
        summary["table"] = Json::String(format!("class    train  group\n{}", rows.join("\n")));
        Ok(summary)
    }
}

/// The dataset of an image-file source: the lists give the labels, the long tail picks training
/// rows, and only those (and the test split) are packed. Class counts and groups are those of the
/// packed images, so that a skipped bad image is counted out.
fn packed_dataset(
    cx: &StageContext<'_>,
    spec: &DatasetSpec,
    files: &images::ImageFiles,
) -> Result<Json, StageError> {
    files.validate()?;
    cx.progress(0, 1, "step", "listing the image files");
    let splits = files.list()?;
    let num_classes = splits.num_classes;
    let index = long_tail(spec, &splits.train.labels(), num_classes)
        .map_err(|e| StageError::failed(format!("dataset `{}`: {e}", cx.stage.name)))?;
    let record = images::pack_splits(cx, files, &splits, &index.sample_ids)?;
    let (train, test) = images::open_packs_in(cx.out_dir)?;
    let class_counts = lortflow_data::dataset::class_counts(train.labels(), num_classes);
    if let Some(empty) = class_counts.iter().position(|&n| n == 0) {
        return Err(StageError::failed(format!(
            "dataset `{}`: class {empty} has no training image left after leaving out {} bad images; fix or remove them",
            cx.stage.name,
            record.train.skipped.len()
        )));
    }
    let groups = convert::groups(spec).assign(&class_counts).map_err(fail)?;
    let meta = Meta {
        num_classes,
        class_counts: class_counts.clone(),
        groups: groups.groups.clone(),
        many_threshold: groups.many_threshold,
        few_threshold: groups.few_threshold,
        boundary: spec.groups.rule.name().to_string(),
    };
    write_json(&cx.out_dir.join(images::PACK_REPORT), &record)?;
    let (most, least) = (
        class_counts.iter().max().copied().unwrap_or(0),
        class_counts.iter().min().copied().unwrap_or(0),
    );
    let sizes = groups.sizes();
    let summary = json!({
        "kind": PACKED,
        "num_classes": num_classes,
        "train_samples": train.len(),
        "test_samples": test.len(),
        "class_counts": class_counts,
        "imbalance_ratio": most as f64 / least.max(1) as f64,
        "groups": { "many": sizes[0], "medium": sizes[1], "few": sizes[2],
                    "many_threshold": groups.many_threshold, "few_threshold": groups.few_threshold },
        "pack": images::report_skipped(&cx.stage.name, &record),
    });
    let record = DatasetIndex {
        meta,
        train_ids: (0..train.len() as u32).collect(),
        test_count: test.len(),
        kind: PACKED.into(),
    };
    write_json(&cx.out_dir.join(INDEX_FILE), &record)?;
    Ok(summary)
}

/// `DatasetIndex::kind` of a dataset whose splits are packed in its artifact; its `train_ids`
/// index the training pack.
pub(crate) const PACKED: &str = "packed";

pub(crate) fn group_name(g: Group) -> &'static str {
    match g {
        Group::Many => "many",
        Group::Medium => "medium",
        Group::Few => "few",
    }
}

fn long_tail(
    spec: &DatasetSpec,
    labels: &[u32],
    num_classes: usize,
) -> Result<lortflow_data::dataset::LongTailIndex, String> {
    match convert::long_tail(spec) {
        Some(config) => config.build(labels, num_classes).map_err(|e| e.to_string()),
        None => keep_everything(labels, num_classes),
    }
}

/// The index of a split kept whole: the data is long-tailed already (ImageNet-LT lists,
/// iNaturalist, imported features). The `none` profile of the reference code would cap every
/// class at n_max instead, which is not what "none" says.
fn keep_everything(
    labels: &[u32],
    num_classes: usize,
) -> Result<lortflow_data::dataset::LongTailIndex, String> {
    let mut class_counts = vec![0usize; num_classes];
    for &y in labels {
        if let Some(c) = class_counts.get_mut(y as usize) {
            *c += 1;
        }
    }
    if let Some(empty) = class_counts.iter().position(|&c| c == 0) {
        return Err(format!("class {empty} has no training samples"));
    }
    Ok(lortflow_data::dataset::LongTailIndex {
        sample_ids: (0..labels.len() as u32).collect(),
        labels: labels.to_vec(),
        class_counts,
        num_classes,
    })
}

/// Feature vectors of a `features` or `synthetic kind="vectors"` source.
struct Vectors {
    dim: usize,
    num_classes: usize,
    train: Vec<f32>,
    train_labels: Vec<u32>,
    test: Vec<f32>,
    test_labels: Vec<u32>,
}

fn vector_source(spec: &DatasetSpec) -> Result<Option<Vectors>, StageError> {
    match &spec.source.value {
        Source::Synthetic {
            kind,
            classes,
            per_class,
            test_per_class,
            dim,
            noise,
            seed,
            ..
        } if *kind == SyntheticKind::Vectors => {
            // One draw for both splits, so that train and test share the class centres.
            let all = GaussianClustersConfig {
                num_classes: *classes as usize,
                dim: *dim as usize,
                per_class: (*per_class + *test_per_class) as usize,
                separation: 3.0,
                noise: *noise,
                seed: *seed,
            }
            .generate()
            .map_err(fail)?;
            let d = all.dim();
            let take = |split: Split| {
                let ids = split_ids(all.labels(), *classes as usize, *per_class as usize, split);
                let mut x = Vec::with_capacity(ids.len() * d);
                let mut y = Vec::with_capacity(ids.len());
                for &i in &ids {
                    x.extend_from_slice(all.row(i as usize).expect("ids come from the data"));
                    y.push(all.labels()[i as usize]);
                }
                (x, y)
            };
            let (train, train_labels) = take(Split::Train);
            let (test, test_labels) = take(Split::Test);
            Ok(Some(Vectors {
                dim: d,
                num_classes: *classes as usize,
                train,
                train_labels,
                test,
                test_labels,
            }))
        }
        Source::Features {
            train,
            test,
            train_labels,
            test_labels,
        } => {
            let (train_x, train_dim, train_y) = read_matrix(
                &train.resolved,
                &train.written,
                train_labels.as_ref().map(|p| p.resolved.as_path()),
            )?;
            let (test_x, test_dim, test_y) = read_matrix(
                &test.resolved,
                &test.written,
                test_labels.as_ref().map(|p| p.resolved.as_path()),
            )?;
            if train_dim != test_dim {
                return Err(StageError::failed(format!(
                    "`{}` has {train_dim} features per row but `{}` has {test_dim}",
                    train.written, test.written
                )));
            }
            // Labels come from their own `.npy`, or from the `.safetensors` matrix itself.
            let num_classes = check_labels(
                &train_y,
                &train_labels.as_ref().unwrap_or(train).written,
                &test_y,
                &test_labels.as_ref().unwrap_or(test).written,
            )?;
            Ok(Some(Vectors {
                dim: train_dim,
                num_classes,
                train: train_x,
                train_labels: train_y,
                test: test_x,
                test_labels: test_y,
            }))
        }
        _ => Ok(None),
    }
}

/// The most classes an imported feature set may have: far above any long-tailed benchmark
/// (iNaturalist 2018: 8,142), low enough that one stray label cannot make a head of billions of
/// classes.
const MAX_IMPORTED_CLASSES: usize = 100_000;

/// Checks imported labels and returns the number of classes `K`: the labels are class indices
/// `0..K`, every class has a training sample, and the test split has no class the training split
/// lacks. Errors name the file and the first offending row. Both splits have rows
/// (`read_matrix` checked).
fn check_labels(
    train: &[u32],
    train_file: &str,
    test: &[u32],
    test_file: &str,
) -> Result<usize, StageError> {
    let Some((row, &largest)) = train
        .iter()
        .enumerate()
        .max_by_key(|&(i, l)| (l, std::cmp::Reverse(i)))
    else {
        return Err(StageError::failed(format!(
            "`{train_file}` has no labels: the training split is empty"
        )));
    };
    let num_classes = largest as usize + 1;
    if num_classes > MAX_IMPORTED_CLASSES {
        return Err(StageError::failed(format!(
            "`{train_file}` has label {largest} at row {row}, which would make {num_classes} classes; \
             labels are class indices 0..K-1 and K is at most {MAX_IMPORTED_CLASSES}. Remap them, \
             e.g. with `numpy.unique(labels, return_inverse=True)`"
        )));
    }
    let counts = lortflow_data::dataset::class_counts(train, num_classes);
    let missing: Vec<usize> = (0..num_classes).filter(|&c| counts[c] == 0).collect();
    if !missing.is_empty() {
        let listed: Vec<String> = missing.iter().take(5).map(|c| c.to_string()).collect();
        let more = if missing.len() > 5 {
            format!(" and {} more", missing.len() - 5)
        } else {
            String::new()
        };
        return Err(StageError::failed(format!(
            "`{train_file}` has no training sample of class{} {}{more} (its labels go up to {largest}); \
             every class 0..K-1 needs one. Remap the labels to be contiguous, e.g. with \
             `numpy.unique(labels, return_inverse=True)`",
            if missing.len() > 1 { "es" } else { "" },
            listed.join(", "),
        )));
    }
    if let Some((row, &label)) = test
        .iter()
        .enumerate()
        .find(|&(_, &l)| l as usize >= num_classes)
    {
        return Err(StageError::failed(format!(
            "`{test_file}` has label {label} at row {row}, but the training split only has classes \
             0..{}; a test class without training samples cannot be learned (drop those test rows, \
             or check that both files use the same label mapping)",
            num_classes - 1
        )));
    }
    Ok(num_classes)
}

/// The first non-finite value of a `[rows, dim]` matrix, as (row, column, value).
fn first_non_finite(values: &[f32], dim: usize) -> Option<(usize, usize, f32)> {
    // A value is NaN or infinite exactly when its exponent bits are all ones. The max of the
    // masked bits over a block vectorises (~0.2 s per GiB on one core, less than reading the
    // file); the position is only looked for in a block that has one.
    const EXPONENT: u32 = 0x7f80_0000;
    let block = 1 << 12;
    let (b, chunk) = values
        .chunks(block)
        .enumerate()
        .find(|(_, c)| c.iter().map(|v| v.to_bits() & EXPONENT).max() == Some(EXPONENT))?;
    let at = b * block + chunk.iter().position(|v| !v.is_finite())?;
    Some((at / dim.max(1), at % dim.max(1), values[at]))
}

/// Reads a feature matrix from `.safetensors` (with its `labels`) or `.npy` (labels from a
/// second `.npy` file), and checks that it has rows and that every value is finite.
fn read_matrix(
    path: &std::path::Path,
    written: &str,
    labels: Option<&std::path::Path>,
) -> Result<(Vec<f32>, usize, Vec<u32>), StageError> {
    let (x, dim, y) = read_matrix_file(path, labels)?;
    if y.is_empty() {
        return Err(StageError::failed(format!(
            "`{written}` has no rows: a split needs at least one sample"
        )));
    }
    if let Some((row, column, value)) = first_non_finite(&x, dim) {
        return Err(StageError::failed(format!(
            "`{written}` has a non-finite value ({value}) at row {row}, column {column}; features \
             must be finite numbers: check the extraction that wrote them"
        )));
    }
    Ok((x, dim, y))
}

fn read_matrix_file(
    path: &std::path::Path,
    labels: Option<&std::path::Path>,
) -> Result<(Vec<f32>, usize, Vec<u32>), StageError> {
    let is_npy = path.extension().is_some_and(|e| e == "npy");
    if !is_npy {
        let file = lortflow_data::features::FeatureFile::read(path).map_err(fail)?;
        return Ok((file.features().to_vec(), file.dim(), file.labels().to_vec()));
    }
    let matrix = NpyFile::open(path)
        .map_err(fail)?
        .into_f32()
        .map_err(fail)?;
    let shape = matrix.shape().to_vec();
    if shape.len() != 2 {
        return Err(StageError::failed(format!(
            "`{}` holds an array of shape {shape:?}; features must be a 2-D (samples x dimensions) float32 array",
            path.display()
        )));
    }
    let Some(labels_path) = labels else {
        return Err(StageError::failed(format!(
            "`{}` is a .npy matrix without labels; add `train-labels=`/`test-labels=` pointing at a .npy of integer labels",
            path.display()
        )));
    };
    let y = NpyFile::open(labels_path)
        .map_err(fail)?
        .to_labels()
        .map_err(fail)?;
    if y.len() != shape[0] {
        return Err(StageError::failed(format!(
            "`{}` has {} rows but `{}` has {} labels",
            path.display(),
            shape[0],
            labels_path.display(),
            y.len()
        )));
    }
    Ok((matrix.data().to_vec(), shape[1], y))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use lortflow_lang::{MemoryLoader, StageKind, check_text};
    use lortflow_runtime::{
        CancelToken, Engine, RunRequest, SilentReporter, StageOutcome, State, Store, plan::expand,
    };

    use super::*;
    use lortflow_data::dataset::test_support::{cifar10_archive_of, md5_hex, resource, server};
    use lortflow_data::dataset::{DownloadSpec, RemoteFile};

    /// The first run downloads (from a loopback server standing in for the official mirror) and
    /// builds the index; the second finds the same key in the store and downloads nothing.
    #[test]
    fn a_downloaded_dataset_is_cached_on_the_second_run() {
        let archive = cifar10_archive_of(|_| (0..10).collect());
        let md5 = md5_hex(&archive);
        let srv = server(&[("cifar-10-binary.tar.gz", resource(&archive))]);
        let base = srv.base.clone();
        let mut registry = crate::stages::registry();
        registry.register(
            StageKind::Dataset,
            Arc::new(DatasetStage::with_downloads(Arc::new(move |dataset| {
                DownloadSpec {
                    dataset,
                    mirrors: vec![base.clone()],
                    files: vec![RemoteFile {
                        name: "cifar-10-binary.tar.gz".into(),
                        md5: md5.clone(),
                    }],
                }
            }))),
        );
        let dir = tempfile::tempdir().unwrap();
        let text = r#"lortflow 1
dataset "c10" { source "cifar10" root="data/cifar" download=#true; long-tail "none"; groups many=4 few=2 }
"#;
        let checked = check_text(
            &dir.path().join("p.kdl"),
            text.into(),
            &MemoryLoader::default(),
        );
        assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
        let plan = expand(&checked.pipeline, &[]).unwrap();
        let store = Store::open(&dir.path().join(".lortflow")).unwrap();
        let engine = Engine::new(plan, store, registry, Backend::Cpu, "p.kdl");
        let mut keys = Vec::new();
        for expected in [StageOutcome::Ran, StageOutcome::Cached] {
            let report = engine
                .run(&RunRequest::default(), &CancelToken::new(), &SilentReporter)
                .unwrap();
            let stage = &report.record.stages[0];
            assert_eq!(stage.outcome, expected, "{:?}", stage.error);
            keys.push(report.statuses[0].key.clone().unwrap());
            if expected == StageOutcome::Cached {
                assert_eq!(report.statuses[0].state, State::Cached);
            }
        }
        assert_eq!(keys[0], keys[1]);
        assert_eq!(srv.requests(), ["GET /cifar-10-binary.tar.gz"]);
        assert!(
            dir.path()
                .join("data/cifar/cifar-10-batches-bin/test_batch.bin")
                .is_file()
        );
    }
}
