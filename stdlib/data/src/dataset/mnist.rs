//! The MNIST and Fashion-MNIST source: finds the IDX files of a split under a root directory and
//! pairs images with labels.
//!
//! Both datasets share file names and layout, so one loader serves both. Several spellings of the
//! names are accepted because each distribution channel has its own: the official `t10k-` test
//! prefix, the `test-` prefix of our vendored copy, `.idx3-ubyte` from some unpackers, with or
//! without `.gz` (compression itself is detected from the content).

use std::path::Path;

use super::base::{ImageTensorU8, LabeledImages, Split};
use super::error::DatasetError;
use super::idx::{find_file, label_offset, read_idx_images, read_idx_labels};

/// Number of classes of MNIST and Fashion-MNIST.
pub const MNIST_NUM_CLASSES: usize = 10;

/// Fashion-MNIST class names, indexed by label.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Loads one split of MNIST or Fashion-MNIST from the IDX files under `root`.
///
/// Accepted names, for the train split (test: `t10k` or `test` instead of `train`):
/// `train-images-idx3-ubyte`, `train-images.idx3-ubyte`, each optionally with `.gz`, and the
/// same with `labels`/`idx1`. The result is `N×1×H×W` with labels in `0..10`.
pub fn load_mnist_like(root: &Path, split: Split) -> Result<LabeledImages, DatasetError> {
    let images_path = find_file(
        root,
        &accepted_names(split, "images"),
        &format!("MNIST-style {split} images"),
    )?;
    let labels_path = find_file(
        root,
        &accepted_names(split, "labels"),
        &format!("MNIST-style {split} labels"),
    )?;
    let images: ImageTensorU8 = read_idx_images(&images_path)?;
    let raw_labels = read_idx_labels(&labels_path)?;
    if images.len() != raw_labels.len() {
        return Err(DatasetError::CountMismatch {
            images_path,
            images: images.len(),
            labels_path,
            labels: raw_labels.len(),
        });
    }
    if let Some(record) = raw_labels
        .iter()
        .position(|&l| usize::from(l) >= MNIST_NUM_CLASSES)
    {
        return Err(DatasetError::LabelOutOfRange {
            path: labels_path,
            what: "label",
            record,
            offset: label_offset(record),
            label: u32::from(raw_labels[record]),
            num_classes: MNIST_NUM_CLASSES,
        });
    }
    let labels = raw_labels.into_iter().map(u32::from).collect();
    LabeledImages::new(images, labels, MNIST_NUM_CLASSES)
}

/// Every accepted name of the `kind` ("images" or "labels") file of `split`; the downloader uses
/// it too, to tell whether a file is already there under another spelling.
pub(super) fn accepted_names(split: Split, kind: &str) -> Vec<String> {
    let prefixes: &[&str] = match split {
        Split::Train => &["train"],
        Split::Test => &["t10k", "test"],
    };
    let idx = if kind == "images" { "idx3" } else { "idx1" };
    let mut names = Vec::new();
    for prefix in prefixes {
        for sep in ["-", "."] {
            let base = format!("{prefix}-{kind}{sep}{idx}-ubyte");
            names.push(format!("{base}.gz"));
            names.push(base);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::idx::tests::{gzip, idx_images, idx_labels};
    use super::*;

    fn root_with(files: &[(&str, Vec<u8>)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in files {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        dir
    }

    fn error(dir: &tempfile::TempDir, split: Split) -> String {
        let err = load_mnist_like(dir.path(), split).unwrap_err();
        err.to_string()
            .replace(&dir.path().display().to_string(), "<root>")
    }

    #[test]
    fn pairs_images_and_labels_with_either_naming() {
        let dir = root_with(&[
            ("train-images-idx3-ubyte.gz", gzip(&idx_images(3, 4, 5))),
            ("train-labels-idx1-ubyte", idx_labels(&[9, 0, 9])),
            ("t10k-images.idx3-ubyte", idx_images(1, 4, 5)),
            ("t10k-labels.idx1-ubyte.gz", gzip(&idx_labels(&[2]))),
        ]);
        let train = load_mnist_like(dir.path(), Split::Train).unwrap();
        assert_eq!(train.images().shape(), [3, 1, 4, 5]);
        assert_eq!(train.labels(), &[9, 0, 9]);
        assert_eq!(train.class_counts()[9], 2);
        let test = load_mnist_like(dir.path(), Split::Test).unwrap();
        assert_eq!(test.labels(), &[2]);
    }

    #[test]
    fn count_mismatch_names_both_files() {
        let dir = root_with(&[
            ("train-images-idx3-ubyte", idx_images(3, 2, 2)),
            ("train-labels-idx1-ubyte", idx_labels(&[1, 2])),
        ]);
        assert_eq!(
            error(&dir, Split::Train),
            "`<root>/train-images-idx3-ubyte` holds 3 images but `<root>/train-labels-idx1-ubyte` holds 2 labels"
        );
    }

    #[test]
    fn label_out_of_range_names_the_record_and_offset() {
        let dir = root_with(&[
            ("train-images-idx3-ubyte", idx_images(3, 2, 2)),
            ("train-labels-idx1-ubyte", idx_labels(&[1, 2, 10])),
        ]);
        assert_eq!(
            error(&dir, Split::Train),
            "`<root>/train-labels-idx1-ubyte`: label 10 of record 2 (byte 10) is out of range for 10 classes"
        );
    }

    #[test]
    fn missing_files_list_the_names_tried() {
        let dir = root_with(&[]);
        let message = error(&dir, Split::Test);
        assert!(message.starts_with("no MNIST-style test images under `<root>` (looked for `<root>/t10k-images-idx3-ubyte.gz`"), "{message}");
        assert!(
            message.contains("`<root>/test-images.idx3-ubyte`"),
            "{message}"
        );
    }

    fn vendored() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/fashion-mnist")
    }

    #[test]
    fn vendored_fashion_mnist_loads_with_the_documented_shape() {
        let train = load_mnist_like(&vendored(), Split::Train).unwrap();
        assert_eq!(train.images().shape(), [60_000, 1, 28, 28]);
        assert_eq!(train.class_counts(), vec![6000; 10]);
        let test = load_mnist_like(&vendored(), Split::Test).unwrap();
        assert_eq!(test.images().shape(), [10_000, 1, 28, 28]);
        assert_eq!(test.class_counts(), vec![1000; 10]);
        // The README says the files are shuffled, i.e. not class-sorted.
        assert!(
            train.labels()[..100]
                .iter()
                .any(|&l| l != train.labels()[0])
        );
    }
}
