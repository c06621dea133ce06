//! The `image-list` source: a root folder plus one list file per split, each line
//! `relative/path label` (the ImageNet-LT and Places-LT format), and the decode path it shares
//! with the iNaturalist source.
//!
//! Images are decoded (JPEG or PNG, converted to RGB like the reference loaders' `convert('RGB')`),
//! their shorter side resized to `resize` and a centred `image_size` square cut out, for both
//! splits, once, at load time; the result is an `N×3×S×S` [`ImageTensorU8`] like every other
//! source. This deviates from the reference pipelines, which keep full-size images and apply
//! `RandomResizedCrop(224)` to them every epoch: here training augmentations (random-resized crop,
//! flips) operate on the stored `S×S` centre crop, which sees a little less of each image. It keeps
//! the whole data layer on one in-memory tensor type; the cost is memory (`N·3·S²` bytes, ~17 GB
//! for ImageNet-LT's train split at 224) and a decode on every load.
//!
//! Labels are used as they are; the number of classes K is the largest label of both splits + 1,
//! and every class in `0..K` must have an image in one of the splits, which catches 1-based labels.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use image::RgbImage;
use image::imageops::FilterType;
use rayon::prelude::*;

use super::base::{ImageTensorU8, LabeledImages, Split};
use super::error::DatasetError;

/// An `image-list` dataset: where the images and the two list files are, and the stored size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageListSource {
    /// The folder the list paths are relative to.
    pub root: PathBuf,
    /// List file of the train split.
    pub train: PathBuf,
    /// List file of the test split.
    pub test: PathBuf,
    /// How the images are brought to one size.
    pub transform: ResizeCrop,
}

impl ImageListSource {
    /// Loads `split`: both list files are read (K depends on both), only `split`'s images decoded.
    pub fn load(&self, split: Split) -> Result<LabeledImages, DatasetError> {
        let train = read_image_list(&self.train)?;
        let test = read_image_list(&self.test)?;
        let labels = |list: &[ListEntry]| list.iter().map(|e| e.label).collect::<Vec<_>>();
        let num_classes = count_classes(
            &[self.train.clone(), self.test.clone()],
            &[&labels(&train), &labels(&test)],
        )?;
        let (list_path, list) = match split {
            Split::Train => (&self.train, train),
            Split::Test => (&self.test, test),
        };
        let entries: Vec<ImageEntry<'_>> = list
            .into_iter()
            .map(|e| ImageEntry {
                path: self.root.join(&e.path),
                label: e.label,
                origin: Origin::Line {
                    list: list_path,
                    line: e.line,
                },
            })
            .collect();
        decode_labeled(&entries, self.transform, num_classes)
    }
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

/// Resize the shorter side to `resize`, then cut the centred `crop`×`crop` square: the test
/// transform of the reference pipelines (`Resize(256)` + `CenterCrop(224)`), applied to both
/// splits here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResizeCrop {
    resize: u32,
    crop: u32,
}

impl ResizeCrop {
    /// Fails unless `1 <= crop <= resize`.
    pub fn new(resize: u32, crop: u32) -> Result<Self, DatasetError> {
        if crop == 0 || resize < crop {
            return Err(DatasetError::CropLargerThanResize {
                image_size: crop,
                resize,
            });
        }
        Ok(Self { resize, crop })
    }

    /// The 256-for-224 ratio of the ImageNet test transform, for sources that only set the crop.
    pub fn imagenet_ratio(crop: u32) -> Result<Self, DatasetError> {
        Self::new((u64::from(crop) * 256).div_ceil(224) as u32, crop)
    }

    /// The side of the stored square.
    pub fn crop(&self) -> u32 {
        self.crop
    }

    /// The shorter side after resizing.
    pub fn resize(&self) -> u32 {
        self.resize
    }

    /// Applies the transform. Sizes follow torchvision: the longer side becomes
    /// `floor(resize · long / short)`, and the crop offset `round((side − crop) / 2)` with
    /// Python's round-half-to-even. The filter is the image crate's triangle (bilinear) filter,
    /// which widens its support when shrinking, i.e. antialiased like PIL's bilinear resize.
    pub fn apply(&self, image: &RgbImage) -> RgbImage {
        let (w, h) = image.dimensions();
        let (short, long) = (w.min(h), w.max(h));
        let scaled_long = (u64::from(self.resize) * u64::from(long) / u64::from(short)) as u32;
        let (new_w, new_h) = if w <= h {
            (self.resize, scaled_long)
        } else {
            (scaled_long, self.resize)
        };
        let resized = if (new_w, new_h) == (w, h) {
            image.clone()
        } else {
            image::imageops::resize(image, new_w, new_h, FilterType::Triangle)
        };
        let x = centre_offset(new_w, self.crop);
        let y = centre_offset(new_h, self.crop);
        image::imageops::crop_imm(&resized, x, y, self.crop, self.crop).to_image()
    }
}

/// `round((len − crop) / 2)` with round-half-to-even, as Python's `round` in torchvision's
/// `center_crop`: an odd margin of 2k+1 gives k when k is even and k+1 when k is odd.
fn centre_offset(len: u32, crop: u32) -> u32 {
    let margin = len - crop;
    let half = margin / 2;
    if margin % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// An image to decode, with the place that named it (for errors).
pub(super) struct ImageEntry<'a> {
    pub(super) path: PathBuf,
    pub(super) label: u32,
    pub(super) origin: Origin<'a>,
}

/// Where an image was named.
#[derive(Clone, Copy)]
pub(super) enum Origin<'a> {
    /// A line of a list file.
    Line { list: &'a Path, line: usize },
    /// An entry of the `images` array of an annotation JSON file.
    Json {
        file: &'a Path,
        index: usize,
        id: u64,
    },
}

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Line { list, line } => write!(f, "line {line} of `{}`", list.display()),
            Origin::Json { file, index, id } => {
                write!(f, "images[{index}] (id {id}) of `{}`", file.display())
            }
        }
    }
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

/// Decodes, resizes and crops every entry in parallel into one `N×3×S×S` tensor.
///
/// On failure the error is that of the first failing entry in list order, whatever the thread
/// timing: entries after a known failure are skipped, entries before it still run.
pub(super) fn decode_labeled(
    entries: &[ImageEntry<'_>],
    transform: ResizeCrop,
    num_classes: usize,
) -> Result<LabeledImages, DatasetError> {
    let side = transform.crop() as usize;
    let image_len = 3 * side * side;
    let mut pixels = vec![0u8; entries.len() * image_len];
    let first_failure = AtomicUsize::new(usize::MAX);
    let failure = pixels
        .par_chunks_mut(image_len)
        .zip(entries.par_iter())
        .enumerate()
        .filter_map(|(i, (out, entry))| {
            if i > first_failure.load(Ordering::Relaxed) {
                return None;
            }
            match decode_into(entry, transform, out) {
                Ok(()) => None,
                Err(e) => {
                    first_failure.fetch_min(i, Ordering::Relaxed);
                    Some((i, e))
                }
            }
        })
        .min_by_key(|(i, _)| *i);
    if let Some((_, error)) = failure {
        return Err(error);
    }
    let images = ImageTensorU8::new(entries.len(), 3, side, side, pixels)?;
    LabeledImages::new(
        images,
        entries.iter().map(|e| e.label).collect(),
        num_classes,
    )
}

fn decode_into(
    entry: &ImageEntry<'_>,
    transform: ResizeCrop,
    out: &mut [u8],
) -> Result<(), DatasetError> {
    let error = |problem: String| DatasetError::Image {
        image: entry.path.clone(),
        origin: entry.origin.to_string(),
        problem,
    };
    let bytes = std::fs::read(&entry.path).map_err(|e| error(format!("cannot read it: {e}")))?;
    let decoded = image::load_from_memory(&bytes)
        .map_err(|e| error(format!("cannot decode it as JPEG or PNG: {e}")))?;
    let rgb = transform.apply(&decoded.into_rgb8());
    // Interleaved RGB (H×W×3) to planar C×H×W.
    let plane = out.len() / 3;
    for (k, pixel) in rgb.pixels().enumerate() {
        out[k] = pixel[0];
        out[plane + k] = pixel[1];
        out[2 * plane + k] = pixel[2];
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use std::io::Cursor;

    use image::{ImageFormat, Rgb};

    use super::*;

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

    fn source(dir: &Path, train: &str, test: &str, resize: u32, crop: u32) -> ImageListSource {
        ImageListSource {
            root: dir.to_owned(),
            train: write(dir, "train.txt", train.as_bytes()),
            test: write(dir, "test.txt", test.as_bytes()),
            transform: ResizeCrop::new(resize, crop).unwrap(),
        }
    }

    fn error(dir: &tempfile::TempDir, source: &ImageListSource, split: Split) -> String {
        source
            .load(split)
            .unwrap_err()
            .to_string()
            .replace(&dir.path().display().to_string(), "<root>")
    }

    #[test]
    fn loads_png_and_jpeg_resized_and_centre_cropped() {
        let dir = root_with_images();
        let src = source(
            dir.path(),
            "img/a.png 0\nimg/b.png 2\n\nimg/c d.jpg   1\n",
            "img/e.jpg 2\n",
            4,
            4,
        );
        let train = src.load(Split::Train).unwrap();
        assert_eq!(train.images().shape(), [3, 3, 4, 4]);
        assert_eq!(train.labels(), [0, 2, 1]);
        assert_eq!(train.num_classes(), 3);
        // PNG is lossless: the blue plane is the seed everywhere, red grows left to right.
        let a = train.images().image(0).unwrap();
        assert!(a[32..48].iter().all(|&v| v == 10));
        assert!(a[0] < a[3], "red increases with x: {:?}", &a[..4]);
        let b = train.images().image(1).unwrap();
        assert!(b[32..48].iter().all(|&v| v == 20));
        let test = src.load(Split::Test).unwrap();
        assert_eq!(test.images().shape(), [1, 3, 4, 4]);
        assert_eq!(test.num_classes(), 3, "K comes from both splits");
        // JPEG is lossy, but a flat blue plane stays close.
        let e = test.images().image(0).unwrap();
        assert!(e[32..48].iter().all(|&v| v.abs_diff(40) <= 3), "{e:?}");
    }

    #[test]
    fn resize_keeps_the_aspect_ratio_and_crops_the_centre() {
        // 20×10 → shorter side 5 → 10×5 → centre 4×4 at x = round(6/2) = 3, y = round(1/2) = 0.
        let image = RgbImage::from_fn(20, 10, |x, y| Rgb([x as u8, y as u8, 0]));
        let out = ResizeCrop::new(5, 4).unwrap().apply(&image);
        assert_eq!(out.dimensions(), (4, 4));
        // Without resizing the crop is an exact window, at x = round(8.5) = 8, y = round(3.5) = 4.
        let same = ResizeCrop::new(10, 3).unwrap().apply(&image);
        assert_eq!(same.get_pixel(0, 0).0, [8, 4, 0]);
        assert_eq!(centre_offset(10, 3), 4); // margin 7: 3.5 → 4
        assert_eq!(centre_offset(9, 4), 2); // margin 5: 2.5 → 2
        assert_eq!(centre_offset(8, 4), 2);
        assert_eq!(ResizeCrop::imagenet_ratio(224).unwrap().resize(), 256);
        assert_eq!(ResizeCrop::imagenet_ratio(32).unwrap().resize(), 37);
        assert_eq!(
            ResizeCrop::new(3, 4).unwrap_err().to_string(),
            "cannot centre-crop 4x4 pixels out of images whose shorter side is resized to 3: `resize` must be at least `image-size`"
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
            let src = source(dir.path(), train, "img/e.jpg 0\n", 8, 8);
            assert_eq!(
                error(&dir, &src, Split::Test),
                format!("`<root>/train.txt` {expected}")
            );
        }
        let src = source(dir.path(), "\n \n", "img/e.jpg 0\n", 8, 8);
        assert_eq!(
            error(&dir, &src, Split::Test),
            "`<root>/train.txt` holds no images"
        );
    }

    #[test]
    fn missing_and_undecodable_images_name_the_list_line() {
        let dir = root_with_images();
        write(dir.path(), "img/bad.jpg", b"not a jpeg at all");
        let src = source(
            dir.path(),
            "img/a.png 0\nimg/missing.png 1\nimg/bad.jpg 1\n",
            "img/e.jpg 0\nimg/bad.jpg 1\n",
            8,
            8,
        );
        let message = error(&dir, &src, Split::Train);
        assert!(
            message.starts_with(
                "`<root>/img/missing.png` (line 2 of `<root>/train.txt`): cannot read it: "
            ),
            "{message}"
        );
        let message = error(&dir, &src, Split::Test);
        assert!(
            message.starts_with(
                "`<root>/img/bad.jpg` (line 2 of `<root>/test.txt`): cannot decode it as JPEG or PNG: "
            ),
            "{message}"
        );
    }

    #[test]
    fn labels_must_cover_every_class() {
        let dir = root_with_images();
        // 1-based labels: class 0 has no image anywhere.
        let src = source(
            dir.path(),
            "img/a.png 1\nimg/b.png 2\n",
            "img/e.jpg 2\n",
            8,
            8,
        );
        assert_eq!(
            error(&dir, &src, Split::Train),
            "class 0 has no image in `<root>/train.txt`, `<root>/test.txt`, although labels go up to 2: labels must be 0..K-1 with every class present (are they 1-based?)"
        );
        // A typo'd huge label is a gap too, found without allocating K slots.
        let src = source(
            dir.path(),
            "img/a.png 0\nimg/b.png 4000000000\n",
            "img/e.jpg 0\n",
            8,
            8,
        );
        assert!(error(&dir, &src, Split::Test).starts_with("class 1 has no image"));
        // A class present only in the test split is fine.
        let src = source(dir.path(), "img/a.png 0\n", "img/e.jpg 1\n", 8, 8);
        assert_eq!(src.load(Split::Train).unwrap().num_classes(), 2);
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
        let src = source(dir.path(), &list, "0.png 0\n", 4, 4);
        for _ in 0..3 {
            assert!(error(&dir, &src, Split::Train).starts_with("`<root>/3.png` (line 4 of"));
        }
    }
}
