//! The `image-folder` source: torchvision's `ImageFolder` layout, one folder per split with one
//! subfolder per class. Classes are numbered in the sorted order of the training split's folder
//! names (as `ImageFolder.find_classes` does); files are taken at any depth in torchvision's
//! order (`sorted(os.walk(...))`: by folder, then by name), following symbolic links, with
//! torchvision's image extensions (case-insensitive). A folder tagged as a cache
//! (`CACHEDIR.TAG`, as every lortflow store is) is not a class: a store may live inside a split.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::error::DatasetError;
use super::image_list::{FileOrigin, ImageSplits, SplitFiles};
use crate::images::PackEntry;

/// torchvision's `IMG_EXTENSIONS`. Only JPEG and PNG decode; another format found here is
/// reported (or skipped with `skip-bad-images`), never silently left out.
const IMAGE_EXTENSIONS: [&str; 9] = [
    "jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp",
];

/// An `image-folder` dataset: the two split folders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFolderSource {
    /// The training split's folder.
    pub train: PathBuf,
    /// The test split's folder.
    pub test: PathBuf,
}

impl ImageFolderSource {
    /// Lists both splits; the test split's class folders must be among the training split's.
    pub fn files(&self) -> Result<ImageSplits, DatasetError> {
        let classes = class_folders(&self.train)?;
        if classes.is_empty() {
            return Err(folder_error(
                &self.train,
                "has no class folders (expected one subfolder of images per class)".into(),
            ));
        }
        let test_classes = class_folders(&self.test)?;
        let known: HashSet<&String> = classes.iter().collect();
        if let Some(extra) = test_classes.iter().find(|c| !known.contains(c)) {
            return Err(folder_error(
                &self.test,
                format!(
                    "has a class folder `{extra}` that the training split `{}` lacks; both splits must use the same class names",
                    self.train.display()
                ),
            ));
        }
        let train = list_split(&self.train, &classes)?;
        if let Some((label, name)) = classes
            .iter()
            .enumerate()
            .find(|(label, _)| !train.entries.iter().any(|e| e.label as usize == *label))
        {
            return Err(folder_error(
                &self.train,
                format!("its class folder `{name}` (class {label}) holds no image files"),
            ));
        }
        let test = list_split(&self.test, &classes)?;
        Ok(ImageSplits {
            train,
            test,
            num_classes: classes.len(),
        })
    }
}

fn folder_error(path: &Path, problem: String) -> DatasetError {
    DatasetError::Annotation {
        path: path.to_owned(),
        problem,
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DatasetError + use<> {
    let path = path.to_owned();
    move |source| DatasetError::Io { path, source }
}

/// Whether `dir` is tagged as a cache directory (bford.info/cachedir).
fn is_tagged_cache(dir: &Path) -> bool {
    const SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";
    std::fs::read(dir.join("CACHEDIR.TAG")).is_ok_and(|bytes| bytes.starts_with(SIGNATURE))
}

/// The names of the subfolders of `dir`, sorted.
fn class_folders(dir: &Path) -> Result<Vec<String>, DatasetError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        if entry.path().is_dir() && !is_tagged_cache(&entry.path()) {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

fn list_split(dir: &Path, classes: &[String]) -> Result<SplitFiles, DatasetError> {
    let mut entries = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let mut files = Vec::new();
        let class_dir = dir.join(class);
        if class_dir.is_dir() {
            walk(&class_dir, class, &mut files, &mut HashSet::new())?;
        }
        // torchvision: the folders of `os.walk` sorted, then each folder's file names sorted.
        files.sort();
        entries.extend(files.into_iter().map(|(folder, name)| PackEntry {
            path: format!("{folder}/{name}"),
            label: label as u32,
            row: 0,
        }));
    }
    for (row, entry) in entries.iter_mut().enumerate() {
        entry.row = row as u32;
    }
    if entries.is_empty() {
        return Err(DatasetError::EmptyFile {
            path: dir.to_owned(),
            what: "images",
        });
    }
    Ok(SplitFiles {
        root: dir.to_owned(),
        entries,
        origin: FileOrigin::Folder(dir.to_owned()),
    })
}

/// Collects the image files under `dir` as (folder relative to the split folder, file name);
/// a folder reached twice through links is listed once, so a link loop ends.
fn walk(
    dir: &Path,
    prefix: &str,
    files: &mut Vec<(String, String)>,
    seen: &mut HashSet<PathBuf>,
) -> Result<(), DatasetError> {
    let canonical = std::fs::canonicalize(dir).map_err(io_error(dir))?;
    if !seen.insert(canonical) {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !is_tagged_cache(&path) {
                walk(&path, &format!("{prefix}/{name}"), files, seen)?;
            }
        } else if Path::new(&name)
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            files.push((prefix.to_owned(), name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, name: &str) {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let content: &[u8] = if name.ends_with("CACHEDIR.TAG") {
            b"Signature: 8a477f597d28d172789f06886806bc55\n"
        } else {
            b"x"
        };
        std::fs::write(path, content).unwrap();
    }

    #[test]
    fn classes_are_sorted_folder_names_and_files_sorted_within() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in [
            "train/zebra/b.JPG",
            "train/zebra/a.jpg",
            "train/ant/x/1.png",
            "train/ant/notes.txt",
            "test/zebra/c.jpeg",
        ] {
            touch(d, f);
        }
        let source = ImageFolderSource {
            train: d.join("train"),
            test: d.join("test"),
        };
        let splits = source.files().unwrap();
        assert_eq!(splits.num_classes, 2);
        let train: Vec<(&str, u32, u32)> = splits
            .train
            .entries
            .iter()
            .map(|e| (e.path.as_str(), e.label, e.row))
            .collect();
        assert_eq!(
            train,
            [
                ("ant/x/1.png", 0, 0),
                ("zebra/a.jpg", 1, 1),
                ("zebra/b.JPG", 1, 2)
            ]
        );
        assert_eq!(
            splits.test.labels(),
            [1],
            "numbered by the training split's classes"
        );
    }

    #[test]
    fn mismatched_or_empty_classes_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        touch(d, "train/a/1.jpg");
        touch(d, "train/b/readme.md");
        touch(d, "test/a/2.jpg");
        let source = ImageFolderSource {
            train: d.join("train"),
            test: d.join("test"),
        };
        let root = d.display().to_string();
        let err = source
            .files()
            .unwrap_err()
            .to_string()
            .replace(&root, "<root>");
        assert_eq!(
            err,
            "`<root>/train`: its class folder `b` (class 1) holds no image files"
        );
        touch(d, "train/b/1.png");
        touch(d, "test/c/3.jpg");
        let err = source
            .files()
            .unwrap_err()
            .to_string()
            .replace(&root, "<root>");
        assert!(
            err.contains("has a class folder `c` that the training split"),
            "{err}"
        );
    }
}
