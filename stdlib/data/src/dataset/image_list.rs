//! The `image-list` source: a root folder plus one list file per split, each line
//! `relative/path label` (the ImageNet-LT and Places-LT format), and what the image sources share:
//! the listing of a split's files ([`SplitFiles`]) that the dataset stage packs, and the check that
//! labels cover every class.
//!
//! Labels are used as they are; the number of classes K is the largest label of both splits + 1,
//! and every class in `0..K` must have an image in one of the splits, which catches 1-based labels.

use std::path::{Path, PathBuf};

use super::error::DatasetError;
use crate::images::PackEntry;

/// An `image-list` dataset: where the images and the two list files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageListSource {
    /// The folder the list paths are relative to.
    pub root: PathBuf,
    /// List file of the train split.
    pub train: PathBuf,
    /// List file of the test split.
    pub test: PathBuf,
}

impl ImageListSource {
    /// Reads both list files (K depends on both); no image is opened.
    pub fn files(&self) -> Result<ImageSplits, DatasetError> {
        let read = |list: &Path| -> Result<SplitFiles, DatasetError> {
            let entries = read_image_list(list)?
                .into_iter()
                .map(|e| PackEntry {
                    path: e.path,
                    label: e.label,
                    row: e.line as u32,
                })
                .collect();
            Ok(SplitFiles {
                root: self.root.clone(),
                entries,
                origin: FileOrigin::Lines(list.to_owned()),
            })
        };
        let (train, test) = (read(&self.train)?, read(&self.test)?);
        let num_classes = count_classes(
            &[self.train.clone(), self.test.clone()],
            &[&train.labels(), &test.labels()],
        )?;
        Ok(ImageSplits {
            train,
            test,
            num_classes,
        })
    }
}

/// The image files of both splits and the number of classes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSplits {
    /// The training split.
    pub train: SplitFiles,
    /// The test split.
    pub test: SplitFiles,
    /// K.
    pub num_classes: usize,
}

/// The image files of one split, in their source's order, and where they were named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitFiles {
    /// The folder entry paths are relative to.
    pub root: PathBuf,
    /// The files.
    pub entries: Vec<PackEntry>,
    /// What named them, for errors.
    pub origin: FileOrigin,
}

impl SplitFiles {
    /// One label per file.
    pub fn labels(&self) -> Vec<u32> {
        self.entries.iter().map(|e| e.label).collect()
    }

    /// Where the entry of `row` was named, e.g. "line 3 of `train.txt`".
    pub fn describe(&self, row: u32) -> String {
        match &self.origin {
            FileOrigin::Lines(list) => format!("line {row} of `{}`", list.display()),
            FileOrigin::Json { file, ids } => match ids.get(row as usize) {
                Some(id) => format!("images[{row}] (id {id}) of `{}`", file.display()),
                None => format!("images[{row}] of `{}`", file.display()),
            },
            FileOrigin::Folder(dir) => format!("file {row} of the folder `{}`", dir.display()),
        }
    }
}

/// What named a split's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOrigin {
    /// A list file; rows are line numbers (from 1).
    Lines(PathBuf),
    /// The `images` array of an annotation file; rows are indices, `ids` the images' ids.
    Json {
        /// The JSON file.
        file: PathBuf,
        /// The `id` of each entry of `images`.
        ids: Vec<u64>,
    },
    /// A class-folder tree; rows are positions in its sorted listing.
    Folder(PathBuf),
}

/// One line of a list file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    /// The image path as written, relative to the root.
    pub path: String,
    /// The class.
    pub label: u32,
    /// Line number, from 1.
    pub line: usize,
}

/// Reads a list file: one `relative/path label` per line, blank lines ignored.
///
/// The label is the last whitespace-separated field and the path everything before it, so that
/// paths with spaces work. Fails on a line without a label, a label that is not a non-negative
/// integer, or a file without any entry.
pub fn read_image_list(path: &Path) -> Result<Vec<ListEntry>, DatasetError> {
    let text = std::fs::read_to_string(path).map_err(|source| DatasetError::Io {
        path: path.to_owned(),
        source,
    })?;
    let line_error = |line: usize, problem: String| DatasetError::ListLine {
        path: path.to_owned(),
        line,
        problem,
    };
    let mut entries = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            continue;
        }
        let Some((image, label)) = trimmed.rsplit_once(char::is_whitespace) else {
            return Err(line_error(
                line,
                format!("no label after `{trimmed}` (expected `relative/path label`)"),
            ));
        };
        let label = match label.parse::<i64>() {
            Ok(v) if v < 0 => return Err(line_error(line, format!("label {v} is negative"))),
            Ok(v) => {
                u32::try_from(v).map_err(|_| line_error(line, format!("label {v} is too large")))?
            }
            Err(_) => {
                return Err(line_error(
                    line,
                    format!("label `{label}` is not an integer (expected `relative/path label`)"),
                ));
            }
        };
        entries.push(ListEntry {
            path: image.trim_end().to_owned(),
            label,
            line,
        });
    }
    if entries.is_empty() {
        return Err(DatasetError::EmptyFile {
            path: path.to_owned(),
            what: "images",
        });
    }
    Ok(entries)
}

/// The number of classes, K = largest label + 1, after checking that every class in `0..K` has an
/// image in one of the splits. `files` name the label sources, for the error.
pub(super) fn count_classes(files: &[PathBuf], splits: &[&[u32]]) -> Result<usize, DatasetError> {
    // Sorting the distinct labels finds the first gap without allocating K slots, so that a
    // stray huge label cannot make this allocate gigabytes.
    let mut labels: Vec<u32> = splits.iter().flat_map(|s| s.iter().copied()).collect();
    labels.sort_unstable();
    labels.dedup();
    let Some(&max_label) = labels.last() else {
        return Ok(0);
    };
    match labels.iter().enumerate().find(|&(i, &l)| l as usize != i) {
        Some((class, _)) => Err(DatasetError::ClassGap {
            files: files.to_vec(),
            class: class as u32,
            max_label,
        }),
        None => Ok(labels.len()),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::io::Cursor;
    use std::sync::atomic::AtomicBool;

    use image::{ImageFormat, Rgb, RgbImage};

    use super::*;
    use crate::images::{PackInput, PackOptions, PackSplitError, pack_split};

    /// An image whose pixel (x, y) is `(x, y, seed)`, encoded in `format`.
    pub(in super::super) fn encoded(w: u32, h: u32, seed: u8, format: ImageFormat) -> Vec<u8> {
        let image = RgbImage::from_fn(w, h, |x, y| Rgb([x as u8, y as u8, seed]));
        let mut bytes = Cursor::new(Vec::new());
        image.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    }

    pub(in super::super) fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Packs a split the way the dataset stage does, and returns the error message with the
    /// temporary folder replaced by `<root>`.
    pub(in super::super) fn pack_error(dir: &Path, split: &SplitFiles) -> String {
        let input = PackInput {
            root: &split.root,
            entries: &split.entries,
            num_classes: 1000,
            describe: &|row| split.describe(row),
        };
        let err: PackSplitError = pack_split(
            &input,
            &dir.join("split.pack"),
            &PackOptions::default(),
            &AtomicBool::new(false),
            &mut |_, _| {},
        )
        .unwrap_err();
        err.to_string()
            .replace(&dir.display().to_string(), "<root>")
    }

    /// A root with four small images: two PNG and two JPEG, of several aspect ratios.
    fn root_with_images() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "img/a.png",
            &encoded(8, 8, 10, ImageFormat::Png),
        );
        write(
            dir.path(),
            "img/b.png",
            &encoded(12, 6, 20, ImageFormat::Png),
        );
        write(
            dir.path(),
            "img/c d.jpg",
            &encoded(6, 10, 30, ImageFormat::Jpeg),
        );
        write(
            dir.path(),
            "img/e.jpg",
            &encoded(16, 16, 40, ImageFormat::Jpeg),
        );
        dir
    }

    fn source(dir: &Path, train: &str, test: &str) -> ImageListSource {
        ImageListSource {
            root: dir.to_owned(),
            train: write(dir, "train.txt", train.as_bytes()),
            test: write(dir, "test.txt", test.as_bytes()),
        }
    }

    fn error(dir: &tempfile::TempDir, source: &ImageListSource) -> String {
        source
            .files()
            .unwrap_err()
            .to_string()
            .replace(&dir.path().display().to_string(), "<root>")
    }

    #[test]
    fn lists_both_splits_with_their_lines() {
        let dir = root_with_images();
        let src = source(
            dir.path(),
            "img/a.png 0\nimg/b.png 2\n\nimg/c d.jpg   1\n",
            "img/e.jpg 2\n",
        );
        let splits = src.files().unwrap();
        assert_eq!(splits.num_classes, 3, "K comes from both splits");
        assert_eq!(splits.train.labels(), [0, 2, 1]);
        let paths: Vec<(&str, u32)> = splits
            .train
            .entries
            .iter()
            .map(|e| (e.path.as_str(), e.row))
            .collect();
        assert_eq!(
            paths,
            [("img/a.png", 1), ("img/b.png", 2), ("img/c d.jpg", 4)]
        );
        assert_eq!(splits.test.labels(), [2]);
        let root = dir.path().display().to_string();
        assert_eq!(
            splits.train.describe(4).replace(&root, "<root>"),
            "line 4 of `<root>/train.txt`"
        );
    }

    #[test]
    fn line_errors_name_the_file_and_line() {
        let dir = root_with_images();
        let cases = [
            (
                "img/a.png 0\nimg/b.png\n",
                "line 2: no label after `img/b.png` (expected `relative/path label`)",
            ),
            (
                "img/a.png zero\n",
                "line 1: label `zero` is not an integer (expected `relative/path label`)",
            ),
            (
                "img/a.png 0\n\nimg/b.png -1\n",
                "line 3: label -1 is negative",
            ),
            (
                "img/a.png 1.5\n",
                "line 1: label `1.5` is not an integer (expected `relative/path label`)",
            ),
            (
                "img/a.png 99999999999\n",
                "line 1: label 99999999999 is too large",
            ),
        ];
        for (train, expected) in cases {
            let src = source(dir.path(), train, "img/e.jpg 0\n");
            assert_eq!(error(&dir, &src), format!("`<root>/train.txt` {expected}"));
        }
        let src = source(dir.path(), "\n \n", "img/e.jpg 0\n");
        assert_eq!(error(&dir, &src), "`<root>/train.txt` holds no images");
    }

    #[test]
    fn missing_and_undecodable_images_name_the_list_line_when_packed() {
        let dir = root_with_images();
        write(dir.path(), "img/bad.jpg", b"not a jpeg at all");
        let src = source(
            dir.path(),
            "img/a.png 0\nimg/missing.png 1\nimg/bad.jpg 1\n",
            "img/e.jpg 0\nimg/bad.jpg 1\n",
        );
        let splits = src.files().unwrap();
        let message = pack_error(dir.path(), &splits.train);
        assert!(
            message.starts_with(
                "`<root>/img/missing.png` (line 2 of `<root>/train.txt`): cannot read it: "
            ),
            "{message}"
        );
        let message = pack_error(dir.path(), &splits.test);
        assert!(
            message.starts_with(
                "`<root>/img/bad.jpg` (line 2 of `<root>/test.txt`): it is neither a JPEG nor a PNG"
            ),
            "{message}"
        );
    }

    #[test]
    fn labels_must_cover_every_class() {
        let dir = root_with_images();
        // 1-based labels: class 0 has no image anywhere.
        let src = source(dir.path(), "img/a.png 1\nimg/b.png 2\n", "img/e.jpg 2\n");
        assert_eq!(
            error(&dir, &src),
            "class 0 has no image in `<root>/train.txt`, `<root>/test.txt`, although labels go up to 2: labels must be 0..K-1 with every class present (are they 1-based?)"
        );
        // A typo'd huge label is a gap too, found without allocating K slots.
        let src = source(
            dir.path(),
            "img/a.png 0\nimg/b.png 4000000000\n",
            "img/e.jpg 0\n",
        );
        assert!(error(&dir, &src).starts_with("class 1 has no image"));
        // A class present only in the test split is fine.
        let src = source(dir.path(), "img/a.png 0\n", "img/e.jpg 1\n");
        assert_eq!(src.files().unwrap().num_classes, 2);
    }

    #[test]
    fn the_first_failure_in_list_order_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let png = encoded(4, 4, 0, ImageFormat::Png);
        let mut list = String::new();
        for i in 0..64 {
            if i % 5 != 3 {
                write(dir.path(), &format!("{i}.png"), &png);
            }
            list.push_str(&format!("{i}.png 0\n"));
        }
        let src = source(dir.path(), &list, "0.png 0\n");
        let splits = src.files().unwrap();
        for _ in 0..3 {
            assert!(pack_error(dir.path(), &splits.train).starts_with("`<root>/3.png` (line 4 of"));
        }
    }
}
