//! The `inat2018` source: the iNaturalist 2018 annotation files (COCO-like JSON) plus the image
//! root, listed like an `image-list` source.
//!
//! A file has top-level `images` ([{id, file_name, …}]), `annotations` ([{id, image_id,
//! category_id}]) and `categories` ([{id, name, …}]); other fields are ignored. The label of an
//! image is the `category_id` of the annotation whose `image_id` is the image's `id`. Unlike the
//! Decoupling converter, which pairs `images[i]` with `annotations[i]` and asserts equal ids, the
//! pairing here goes by id, so a file whose arrays are ordered differently still reads correctly;
//! an image without an annotation (or with two), an annotation naming an unknown image, or a
//! `category_id` not listed in `categories` is rejected. LTR code uses the category ids (0..8141)
//! as labels directly, and so does this source.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::error::DatasetError;
use super::image_list::{FileOrigin, ImageSplits, SplitFiles, count_classes};
use crate::images::PackEntry;

/// An iNaturalist dataset: the image root and the two JSON files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inat2018Source {
    /// The folder the `file_name`s are relative to.
    pub root: PathBuf,
    /// `train2018.json`.
    pub train: PathBuf,
    /// `val2018.json`, the test set of LTR papers.
    pub test: PathBuf,
}

impl Inat2018Source {
    /// Reads both annotation files (K depends on both); no image is opened.
    pub fn files(&self) -> Result<ImageSplits, DatasetError> {
        let read = |file: &Path| -> Result<SplitFiles, DatasetError> {
            let images = read_inat_json(file)?;
            let ids = images.iter().map(|e| e.id).collect();
            let entries = images
                .into_iter()
                .map(|e| PackEntry {
                    path: e.file_name,
                    label: e.label,
                    row: e.index as u32,
                })
                .collect();
            Ok(SplitFiles {
                root: self.root.clone(),
                entries,
                origin: FileOrigin::Json {
                    file: file.to_owned(),
                    ids,
                },
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

/// One labelled image of an annotation file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InatImage {
    /// Path relative to the image root.
    pub file_name: String,
    /// Its category id.
    pub label: u32,
    /// Position in the `images` array.
    pub index: usize,
    /// The image `id`.
    pub id: u64,
}

// Only the fields used are deserialized; the rest of each entry is skipped without allocating,
// which matters for the 437,513 images of the train file. They stay `Value`s so that a wrong type
// can be reported with its entry rather than as a line and column.
#[derive(Deserialize)]
struct RawFile {
    images: Option<Vec<RawImage>>,
    annotations: Option<Vec<RawAnnotation>>,
    categories: Option<Vec<RawCategory>>,
}

#[derive(Deserialize)]
struct RawImage {
    id: Option<Value>,
    file_name: Option<Value>,
}

#[derive(Deserialize)]
struct RawAnnotation {
    id: Option<Value>,
    image_id: Option<Value>,
    category_id: Option<Value>,
}

#[derive(Deserialize)]
struct RawCategory {
    id: Option<Value>,
}

/// Reads an annotation file into its labelled images, in the order of `images`.
pub fn read_inat_json(path: &Path) -> Result<Vec<InatImage>, DatasetError> {
    let bad = |problem: String| DatasetError::Annotation {
        path: path.to_owned(),
        problem,
    };
    let bytes = std::fs::read(path).map_err(|source| DatasetError::Io {
        path: path.to_owned(),
        source,
    })?;
    let raw: RawFile = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("not an iNaturalist annotation file: {e}")))?;
    let missing = |name: &str| bad(format!("no `{name}` array at the top level"));
    let images = raw.images.ok_or_else(|| missing("images"))?;
    let annotations = raw.annotations.ok_or_else(|| missing("annotations"))?;
    let categories = raw.categories.ok_or_else(|| missing("categories"))?;

    let mut category_ids = HashSet::with_capacity(categories.len());
    for (i, category) in categories.iter().enumerate() {
        let id = id_field(&category.id, "id").map_err(|p| bad(format!("categories[{i}]: {p}")))?;
        if !category_ids.insert(id) {
            return Err(bad(format!("categories[{i}]: id {id} appears twice")));
        }
    }

    // image id -> (index, file name)
    let mut by_id = HashMap::with_capacity(images.len());
    let mut names = Vec::with_capacity(images.len());
    for (i, image) in images.iter().enumerate() {
        let id = id_field(&image.id, "id").map_err(|p| bad(format!("images[{i}]: {p}")))?;
        let file_name = match &image.file_name {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(other) => {
                return Err(bad(format!(
                    "images[{i}] (id {id}): `file_name` is {other}, not a path"
                )));
            }
            None => return Err(bad(format!("images[{i}] (id {id}): no `file_name`"))),
        };
        if let Some(first) = by_id.insert(id, i) {
            return Err(bad(format!(
                "images[{i}]: id {id} is also the id of images[{first}]"
            )));
        }
        names.push((id, file_name));
    }

    // image index -> (label, annotation index)
    let mut labels: Vec<Option<(u32, usize)>> = vec![None; images.len()];
    for (j, annotation) in annotations.iter().enumerate() {
        // The annotation's own id only helps to find it; it may be absent.
        let which = match annotation.id.as_ref().and_then(Value::as_u64) {
            Some(id) => format!("annotations[{j}] (id {id})"),
            None => format!("annotations[{j}]"),
        };
        let image_id =
            id_field(&annotation.image_id, "image_id").map_err(|p| bad(format!("{which}: {p}")))?;
        let category = id_field(&annotation.category_id, "category_id")
            .map_err(|p| bad(format!("{which}: {p}")))?;
        let Some(&index) = by_id.get(&image_id) else {
            return Err(bad(format!(
                "{which}: `image_id` {image_id} is not the id of any entry of `images`"
            )));
        };
        if !category_ids.contains(&category) {
            return Err(bad(format!(
                "{which}: `category_id` {category} is not the id of any entry of `categories`"
            )));
        }
        let label = u32::try_from(category)
            .map_err(|_| bad(format!("{which}: `category_id` {category} is too large")))?;
        if let Some((_, first)) = labels[index] {
            return Err(bad(format!(
                "{which}: image {image_id} (images[{index}]) already has a category, from annotations[{first}]"
            )));
        }
        labels[index] = Some((label, j));
    }

    let mut out = Vec::with_capacity(images.len());
    for (index, ((id, file_name), label)) in names.into_iter().zip(labels).enumerate() {
        let Some((label, _)) = label else {
            return Err(bad(format!(
                "images[{index}] (id {id}) has no entry in `annotations`, so no category"
            )));
        };
        out.push(InatImage {
            file_name,
            label,
            index,
            id,
        });
    }
    if out.is_empty() {
        return Err(DatasetError::EmptyFile {
            path: path.to_owned(),
            what: "images",
        });
    }
    Ok(out)
}

/// A required non-negative integer field.
fn id_field(value: &Option<Value>, name: &str) -> Result<u64, String> {
    match value {
        Some(v) => v
            .as_u64()
            .ok_or_else(|| format!("`{name}` is {v}, not a non-negative integer")),
        None => Err(format!("no `{name}`")),
    }
}

#[cfg(test)]
mod tests {
    use image::ImageFormat;
    use serde_json::json;

    use super::super::image_list::tests::{encoded, pack_error, write};
    use super::*;

    fn json_file(dir: &Path, name: &str, value: &Value) -> PathBuf {
        write(dir, name, value.to_string().as_bytes())
    }

    fn categories(n: u64) -> Value {
        Value::Array(
            (0..n)
                .map(|i| json!({"id": i, "name": format!("c{i}")}))
                .collect(),
        )
    }

    /// Images `a` (category 1) and `b` (category 0), annotations listed in the opposite order.
    fn train_json() -> Value {
        json!({
            "info": {"year": 2018},
            "images": [
                {"id": 10, "file_name": "train_val2018/Plantae/1/a.jpg", "width": 6, "height": 8},
                {"id": 11, "file_name": "train_val2018/Plantae/0/b.png", "width": 8, "height": 6}
            ],
            "annotations": [
                {"id": 11, "image_id": 11, "category_id": 0},
                {"id": 10, "image_id": 10, "category_id": 1}
            ],
            "categories": categories(2),
            "licenses": []
        })
    }

    fn setup(train: &Value) -> (tempfile::TempDir, Inat2018Source) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            d,
            "train_val2018/Plantae/1/a.jpg",
            &encoded(6, 8, 50, ImageFormat::Jpeg),
        );
        write(
            d,
            "train_val2018/Plantae/0/b.png",
            &encoded(8, 6, 60, ImageFormat::Png),
        );
        let test = json!({
            "images": [{"id": 7, "file_name": "train_val2018/Plantae/0/b.png"}],
            "annotations": [{"id": 7, "image_id": 7, "category_id": 0}],
            "categories": categories(2)
        });
        let source = Inat2018Source {
            root: d.to_owned(),
            train: json_file(d, "train2018.json", train),
            test: json_file(d, "val2018.json", &test),
        };
        (dir, source)
    }

    fn error(train: Value) -> String {
        let (dir, source) = setup(&train);
        source
            .files()
            .unwrap_err()
            .to_string()
            .replace(&dir.path().display().to_string(), "<root>")
    }

    #[test]
    fn pairs_images_and_annotations_by_id() {
        let (_dir, source) = setup(&train_json());
        let splits = source.files().unwrap();
        assert_eq!(splits.train.labels(), [1, 0]);
        assert_eq!(splits.num_classes, 2);
        assert_eq!(
            splits.train.entries[1].path,
            "train_val2018/Plantae/0/b.png"
        );
        assert_eq!(splits.test.labels(), [0]);
    }

    #[test]
    fn inconsistent_entries_name_the_file_entry_and_field() {
        let with = |pointer: &str, value: Value| {
            let mut j = train_json();
            *j.pointer_mut(pointer).unwrap() = value;
            j
        };
        let without = |section: &str, index: usize, field: &str| {
            let mut j = train_json();
            j[section][index].as_object_mut().unwrap().remove(field);
            j
        };
        let prefix = "`<root>/train2018.json`: ";
        let cases = [
            (
                with("/annotations/1/category_id", json!(5)),
                "annotations[1] (id 10): `category_id` 5 is not the id of any entry of `categories`",
            ),
            (
                with("/annotations/0/image_id", json!(99)),
                "annotations[0] (id 11): `image_id` 99 is not the id of any entry of `images`",
            ),
            (
                with("/annotations/0/image_id", json!(10)),
                "annotations[1] (id 10): image 10 (images[0]) already has a category, from annotations[0]",
            ),
            (
                with("/annotations/0/category_id", json!("0")),
                "annotations[0] (id 11): `category_id` is \"0\", not a non-negative integer",
            ),
            (
                without("annotations", 1, "category_id"),
                "annotations[1] (id 10): no `category_id`",
            ),
            (
                without("images", 1, "file_name"),
                "images[1] (id 11): no `file_name`",
            ),
            (
                with("/images/0/id", json!(-3)),
                "images[0]: `id` is -3, not a non-negative integer",
            ),
            (
                with("/images/1/id", json!(10)),
                "images[1]: id 10 is also the id of images[0]",
            ),
            (
                with("/categories/1/id", json!(0)),
                "categories[1]: id 0 appears twice",
            ),
            (
                with(
                    "/annotations",
                    json!([{"id": 10, "image_id": 10, "category_id": 1}]),
                ),
                "images[1] (id 11) has no entry in `annotations`, so no category",
            ),
        ];
        for (json, expected) in cases {
            assert_eq!(error(json), format!("{prefix}{expected}"));
        }
        let mut no_categories = train_json();
        no_categories.as_object_mut().unwrap().remove("categories");
        assert_eq!(
            error(no_categories),
            format!("{prefix}no `categories` array at the top level")
        );
        let message = error(json!([1, 2]));
        assert!(
            message.starts_with(&format!(
                "{prefix}not an iNaturalist annotation file: invalid type"
            )),
            "{message}"
        );
    }

    #[test]
    fn missing_and_undecodable_images_name_the_entry() {
        let mut json = train_json();
        json["images"][0]["file_name"] = json!("nowhere.jpg");
        let (dir, source) = setup(&json);
        let splits = source.files().unwrap();
        let message = pack_error(dir.path(), &splits.train);
        assert!(
            message.starts_with(
                "`<root>/nowhere.jpg` (images[0] (id 10) of `<root>/train2018.json`): cannot read it: "
            ),
            "{message}"
        );
        write(
            dir.path(),
            "train_val2018/Plantae/0/b.png",
            b"\x89PNG broken",
        );
        let message = pack_error(dir.path(), &source.files().unwrap().test);
        assert!(message.contains("neither a JPEG nor a PNG"), "{message}");
    }
}
