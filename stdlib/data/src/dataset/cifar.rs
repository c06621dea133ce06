//! Reader for the binary versions of CIFAR-10 and CIFAR-100.
//!
//! A CIFAR-10 record is a label byte and 3072 pixel bytes; a CIFAR-100 record is a coarse-label
//! byte, a fine-label byte and 3072 pixel bytes. The pixels are 1024 red, 1024 green, then 1024 blue
//! values, each plane 32×32 row-major — already the `C×H×W` layout of [`ImageTensorU8`], so a
//! record's pixels are copied as they are. CIFAR-100 is labelled with the fine (100-class) label,
//! the one every long-tailed benchmark uses; the coarse label is still range-checked, since a bad
//! value there means a corrupt record.
//!
//! The files have no header, so the only structural check is that the size is a whole number of
//! records; every label is then checked against the class range.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::base::{ImageTensorU8, LabeledImages, Split};
use super::error::DatasetError;
use super::idx::find_file;

/// Bytes of one 3×32×32 CIFAR image.
pub const CIFAR_IMAGE_BYTES: usize = 3 * 32 * 32;

/// Which CIFAR dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CifarVariant {
    /// 10 classes, `data_batch_1.bin`…`data_batch_5.bin` and `test_batch.bin`.
    Cifar10,
    /// 100 fine classes (20 coarse), `train.bin` and `test.bin`.
    Cifar100,
}

impl CifarVariant {
    /// Number of (fine) classes.
    pub fn num_classes(self) -> usize {
        match self {
            CifarVariant::Cifar10 => 10,
            CifarVariant::Cifar100 => 100,
        }
    }

    /// Bytes per record, labels included.
    pub fn record_size(self) -> usize {
        self.label_bytes() + CIFAR_IMAGE_BYTES
    }

    fn label_bytes(self) -> usize {
        match self {
            CifarVariant::Cifar10 => 1,
            CifarVariant::Cifar100 => 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            CifarVariant::Cifar10 => "CIFAR-10",
            CifarVariant::Cifar100 => "CIFAR-100",
        }
    }

    /// The folder the official archive unpacks to.
    pub fn official_folder(self) -> &'static str {
        match self {
            CifarVariant::Cifar10 => "cifar-10-batches-bin",
            CifarVariant::Cifar100 => "cifar-100-binary",
        }
    }

    /// The files of `split`, in the order their records are concatenated.
    pub fn file_names(self, split: Split) -> Vec<String> {
        match (self, split) {
            (CifarVariant::Cifar10, Split::Train) => {
                (1..=5).map(|i| format!("data_batch_{i}.bin")).collect()
            }
            (CifarVariant::Cifar10, Split::Test) => vec!["test_batch.bin".into()],
            (CifarVariant::Cifar100, Split::Train) => vec!["train.bin".into()],
            (CifarVariant::Cifar100, Split::Test) => vec!["test.bin".into()],
        }
    }
}

/// Loads one split of CIFAR-10 or CIFAR-100 from `root`, where the files lie either directly or in
/// the official subfolder (`cifar-10-batches-bin/`, `cifar-100-binary/`).
pub fn load_cifar(
    root: &Path,
    variant: CifarVariant,
    split: Split,
) -> Result<LabeledImages, DatasetError> {
    let mut paths = Vec::new();
    for name in variant.file_names(split) {
        let candidates = [
            name.clone(),
            format!("{}/{name}", variant.official_folder()),
        ];
        let what = format!("{} {split} file `{name}`", variant.name());
        paths.push(find_file(root, &candidates, &what)?);
    }
    read_cifar_files(&paths, variant)
}

/// Reads and concatenates CIFAR binary files of one variant, in the order given.
pub fn read_cifar_files(
    paths: &[PathBuf],
    variant: CifarVariant,
) -> Result<LabeledImages, DatasetError> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for path in paths {
        read_records(path, variant, &mut pixels, &mut labels)?;
    }
    let images = ImageTensorU8::new(labels.len(), 3, 32, 32, pixels)?;
    LabeledImages::new(images, labels, variant.num_classes())
}

fn read_records(
    path: &Path,
    variant: CifarVariant,
    pixels: &mut Vec<u8>,
    labels: &mut Vec<u32>,
) -> Result<(), DatasetError> {
    let bytes = std::fs::read(path).map_err(|source| DatasetError::Io {
        path: path.to_owned(),
        source,
    })?;
    let record_size = variant.record_size();
    if bytes.len() % record_size != 0 {
        return Err(DatasetError::RecordSize {
            path: path.to_owned(),
            format: variant.name(),
            size: bytes.len() as u64,
            record_size,
        });
    }
    if bytes.is_empty() {
        return Err(DatasetError::EmptyFile {
            path: path.to_owned(),
            what: "records",
        });
    }
    let label_bytes = variant.label_bytes();
    // (position in the record, class count, name) of each label byte; the last one is kept.
    let label_fields: &[(usize, usize, &'static str)] = match variant {
        CifarVariant::Cifar10 => &[(0, 10, "label")],
        CifarVariant::Cifar100 => &[(0, 20, "coarse label"), (1, 100, "fine label")],
    };
    pixels.reserve(bytes.len() / record_size * CIFAR_IMAGE_BYTES);
    labels.reserve(bytes.len() / record_size);
    for (record, chunk) in bytes.chunks_exact(record_size).enumerate() {
        for &(position, num_classes, what) in label_fields {
            let label = chunk[position];
            if usize::from(label) >= num_classes {
                return Err(DatasetError::LabelOutOfRange {
                    path: path.to_owned(),
                    what,
                    record,
                    offset: (record * record_size + position) as u64,
                    label: u32::from(label),
                    num_classes,
                });
            }
        }
        labels.push(u32::from(chunk[label_bytes - 1]));
        pixels.extend_from_slice(&chunk[label_bytes..]);
    }
    tracing::debug!(path = %path.display(), records = bytes.len() / record_size, "read CIFAR file");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CIFAR record whose pixel `k` is `(seed + k) mod 256`.
    fn record(labels: &[u8], seed: u8) -> Vec<u8> {
        let mut bytes = labels.to_vec();
        bytes.extend((0..CIFAR_IMAGE_BYTES).map(|k| seed.wrapping_add(k as u8)));
        bytes
    }

    fn write(dir: &Path, name: &str, records: &[Vec<u8>]) {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, records.concat()).unwrap();
    }

    fn error(dir: &tempfile::TempDir, variant: CifarVariant, split: Split) -> String {
        let err = load_cifar(dir.path(), variant, split).unwrap_err();
        err.to_string()
            .replace(&dir.path().display().to_string(), "<root>")
    }

    #[test]
    fn cifar10_concatenates_the_five_batches_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for i in 1..=5u8 {
            write(
                dir.path(),
                &format!("cifar-10-batches-bin/data_batch_{i}.bin"),
                &[record(&[i], i), record(&[0], 0)],
            );
        }
        let train = load_cifar(dir.path(), CifarVariant::Cifar10, Split::Train).unwrap();
        assert_eq!(train.images().shape(), [10, 3, 32, 32]);
        assert_eq!(train.labels(), &[1, 0, 2, 0, 3, 0, 4, 0, 5, 0]);
        let image = train.images().image(2).unwrap();
        assert_eq!((image[0], image[1024], image[3071]), (2, 2, 1));
    }

    #[test]
    fn cifar100_uses_the_fine_label_and_accepts_files_in_root() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "test.bin",
            &[record(&[19, 99], 7), record(&[0, 42], 0)],
        );
        let test = load_cifar(dir.path(), CifarVariant::Cifar100, Split::Test).unwrap();
        assert_eq!(test.labels(), &[99, 42]);
        assert_eq!(test.num_classes(), 100);
        assert_eq!(test.images().image(0).unwrap()[0], 7);
    }

    #[test]
    fn size_not_a_multiple_of_the_record_size() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = record(&[1], 0);
        bytes.pop();
        std::fs::write(dir.path().join("test_batch.bin"), bytes).unwrap();
        assert_eq!(
            error(&dir, CifarVariant::Cifar10, Split::Test),
            "`<root>/test_batch.bin` has 3072 bytes, which is not a multiple of the CIFAR-10 record size 3073"
        );
    }

    #[test]
    fn cifar100_file_read_as_cifar10_is_caught_by_size() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "test_batch.bin", &[record(&[1, 1], 0)]);
        assert!(error(&dir, CifarVariant::Cifar10, Split::Test).contains("has 3074 bytes"));
    }

    #[test]
    fn bad_label_names_the_record_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "test_batch.bin",
            &[record(&[1], 0), record(&[10], 0)],
        );
        assert_eq!(
            error(&dir, CifarVariant::Cifar10, Split::Test),
            "`<root>/test_batch.bin`: label 10 of record 1 (byte 3073) is out of range for 10 classes"
        );
        write(dir.path(), "train.bin", &[record(&[3, 100], 0)]);
        assert_eq!(
            error(&dir, CifarVariant::Cifar100, Split::Train),
            "`<root>/train.bin`: fine label 100 of record 0 (byte 1) is out of range for 100 classes"
        );
        write(dir.path(), "train.bin", &[record(&[20, 5], 0)]);
        assert!(
            error(&dir, CifarVariant::Cifar100, Split::Train)
                .contains("coarse label 20 of record 0 (byte 0)")
        );
    }

    #[test]
    fn empty_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "test.bin", &[]);
        assert_eq!(
            error(&dir, CifarVariant::Cifar100, Split::Test),
            "`<root>/test.bin` holds no records"
        );
        assert_eq!(
            error(&dir, CifarVariant::Cifar100, Split::Train),
            "no CIFAR-100 train file `train.bin` under `<root>` (looked for `<root>/train.bin`, `<root>/cifar-100-binary/train.bin`)"
        );
    }
}
