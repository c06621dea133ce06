//! Errors of the data layer.
//!
//! Two enums, split by who can fix the problem: [`DatasetError`] is about files and in-memory data
//! (a corrupt download, a wrong path), [`LongTailError`] about the long-tail and group settings of
//! a pipeline (an imbalance ratio the data cannot support). Reader errors always name the file and
//! the place in it — byte offset or record index — because "invalid data" alone sends the user
//! hunting through a 50 MB file.

use std::io;
use std::path::PathBuf;

/// An error while reading a dataset file or building an in-memory dataset.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatasetError {
    /// The file could not be opened or read.
    #[error("cannot read `{path}`")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// None of the accepted file names exists under the dataset root.
    #[error("no {what} under `{root}` (looked for {})", display_paths(.candidates))]
    NotFound {
        /// What was looked for, e.g. "Fashion-MNIST train images".
        what: String,
        /// The dataset root.
        root: PathBuf,
        /// Every path that was tried.
        candidates: Vec<PathBuf>,
    },

    /// A gzip file could not be decompressed (corrupt or cut short).
    #[error("cannot decompress `{path}`: gzip stream broken after {offset} decompressed bytes")]
    Gzip {
        /// The file.
        path: PathBuf,
        /// Decompressed bytes successfully read before the failure.
        offset: u64,
        /// The decoder's error.
        #[source]
        source: io::Error,
    },

    /// The file does not start with the expected IDX magic number.
    #[error(
        "`{path}` is not an IDX {kind} file: magic number at byte 0 is 0x{found:08x}, expected 0x{expected:08x}"
    )]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// "images" or "labels".
        kind: &'static str,
        /// The four bytes found, big-endian.
        found: u32,
        /// The magic number of the expected kind.
        expected: u32,
    },

    /// An IDX image dimension (height or width) is zero.
    #[error("`{path}` declares a zero {name} at byte {offset}")]
    ZeroDimension {
        /// The file.
        path: PathBuf,
        /// "height" or "width".
        name: &'static str,
        /// Byte offset of the dimension in the (decompressed) file.
        offset: u64,
    },

    /// The header's dimensions multiply to more bytes than can be addressed.
    #[error("`{path}` declares dimensions {dims:?} whose product overflows")]
    HeaderOverflow {
        /// The file.
        path: PathBuf,
        /// The declared dimensions.
        dims: Vec<u32>,
    },

    /// The file (or its header) ends before the size its header declares.
    #[error("`{path}` is truncated: expected {expected} {unit} ({what}), found {actual}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What the expected size covers, e.g. "16-byte header + 3 images of 28x28".
        what: String,
        /// Expected size, header included.
        expected: u64,
        /// Bytes actually present.
        actual: u64,
        /// "bytes", or "decompressed bytes" for gzip files.
        unit: &'static str,
    },

    /// The file holds more bytes than its header declares.
    #[error("`{path}` has trailing data: expected {expected} {unit} ({what}), found {actual}")]
    TrailingBytes {
        /// The file.
        path: PathBuf,
        /// What the expected size covers.
        what: String,
        /// Expected size, header included.
        expected: u64,
        /// Bytes actually present.
        actual: u64,
        /// "bytes", or "decompressed bytes" for gzip files.
        unit: &'static str,
    },

    /// A CIFAR file's size is not a whole number of records.
    #[error(
        "`{path}` has {size} bytes, which is not a multiple of the {format} record size {record_size}"
    )]
    RecordSize {
        /// The file.
        path: PathBuf,
        /// "CIFAR-10" or "CIFAR-100".
        format: &'static str,
        /// File size in bytes.
        size: u64,
        /// Bytes per record.
        record_size: usize,
    },

    /// A file holds no record at all.
    #[error("`{path}` holds no {what}")]
    EmptyFile {
        /// The file.
        path: PathBuf,
        /// "records" or "images".
        what: &'static str,
    },

    /// A label stored in a file is not a valid class.
    #[error(
        "`{path}`: {what} {label} of record {record} (byte {offset}) is out of range for {num_classes} classes"
    )]
    LabelOutOfRange {
        /// The file.
        path: PathBuf,
        /// "label", "fine label" or "coarse label".
        what: &'static str,
        /// Index of the record (image) in the file, from 0.
        record: usize,
        /// Byte offset of the label in the (decompressed) file.
        offset: u64,
        /// The label found.
        label: u32,
        /// Number of classes of the format.
        num_classes: usize,
    },

    /// An image file and its label file disagree on the number of items.
    #[error("`{images_path}` holds {images} images but `{labels_path}` holds {labels} labels")]
    CountMismatch {
        /// The image file.
        images_path: PathBuf,
        /// Number of images.
        images: usize,
        /// The label file.
        labels_path: PathBuf,
        /// Number of labels.
        labels: usize,
    },

    /// Images of different shapes were to be concatenated.
    #[error("`{path}` holds {found:?} images, but the earlier files hold {expected:?}")]
    ShapeMismatch {
        /// The file that differs.
        path: PathBuf,
        /// `[C, H, W]` of the earlier files.
        expected: [usize; 3],
        /// `[C, H, W]` of this file.
        found: [usize; 3],
    },

    /// An image shape with a zero dimension.
    #[error("image shape {channels}x{height}x{width} has a zero dimension")]
    EmptyImageShape {
        /// `C`.
        channels: usize,
        /// `H`.
        height: usize,
        /// `W`.
        width: usize,
    },

    /// A tensor shape whose element count overflows `usize`.
    #[error("shape {shape:?} is too large to address")]
    ShapeOverflow {
        /// `[N, C, H, W]`.
        shape: [usize; 4],
    },

    /// A pixel buffer whose length does not match its shape.
    #[error("shape {shape:?} needs {expected} pixels: expected {expected} bytes, got {actual}")]
    PixelCount {
        /// `[N, C, H, W]`.
        shape: [usize; 4],
        /// `N·C·H·W`.
        expected: usize,
        /// The buffer's length.
        actual: usize,
    },

    /// A feature buffer whose length does not match `rows × dim`.
    #[error("{rows} rows of dimension {dim} need {} values, got {actual}", .rows * .dim)]
    FeatureCount {
        /// Number of rows (labels).
        rows: usize,
        /// Feature dimension.
        dim: usize,
        /// The buffer's length.
        actual: usize,
    },

    /// In-memory images and labels of different counts.
    #[error("{images} images but {labels} labels")]
    LabelCount {
        /// Number of images.
        images: usize,
        /// Number of labels.
        labels: usize,
    },

    /// An in-memory label that is not a valid class.
    #[error("label {label} at index {index} is out of range for {num_classes} classes")]
    InvalidLabel {
        /// Position of the label.
        index: usize,
        /// The label.
        label: u32,
        /// Number of classes.
        num_classes: usize,
    },

    /// A sample id that does not name a sample.
    #[error("sample id {id} at position {position} is out of range for {len} samples")]
    SampleIdOutOfRange {
        /// Position of the id in the id list.
        position: usize,
        /// The id.
        id: u32,
        /// Number of samples.
        len: usize,
    },

    /// A dataset holds more samples than a `u32` sample id can name.
    #[error("{len} samples exceed the u32 sample-id range")]
    TooManySamples {
        /// Number of samples.
        len: usize,
    },

    /// A generator setting is invalid.
    #[error("invalid synthetic dataset config: {message}")]
    InvalidConfig {
        /// What is wrong, and what is expected.
        message: String,
    },

    /// A line of an image list file that is not `relative/path label`.
    #[error("`{path}` line {line}: {problem}")]
    ListLine {
        /// The list file.
        path: PathBuf,
        /// Line number, from 1 (as editors count).
        line: usize,
        /// What is wrong, e.g. "no label after the path `a.jpg`".
        problem: String,
    },

    /// An entry of an annotation JSON file (iNaturalist) that is missing, malformed or inconsistent.
    #[error("`{path}`: {problem}")]
    Annotation {
        /// The JSON file.
        path: PathBuf,
        /// The entry and field at fault, e.g. "annotations[3] (id 7): `category_id` 9000 is not
        /// among the `categories`".
        problem: String,
    },

    /// Labels that skip a class: K is taken as the largest label + 1, so a class without any
    /// image in either split means the labels are not `0..K-1` (often: they start at 1).
    #[error(
        "class {class} has no image in {}, although labels go up to {max_label}: labels must be 0..K-1 with every class present (are they 1-based?)",
        display_paths(.files)
    )]
    ClassGap {
        /// The label sources of both splits.
        files: Vec<PathBuf>,
        /// The first class without an image.
        class: u32,
        /// The largest label found.
        max_label: u32,
    },

    /// An image file named by a list or annotation file that cannot be read or decoded.
    #[error("`{image}` ({origin}): {problem}")]
    Image {
        /// The image file.
        image: PathBuf,
        /// Where it was named, e.g. "line 3 of `train.txt`".
        origin: String,
        /// What went wrong.
        problem: String,
    },

    /// Resize and crop sizes that cannot work together.
    #[error(
        "cannot centre-crop {image_size}x{image_size} pixels out of images whose shorter side is resized to {resize}: `resize` must be at least `image-size`"
    )]
    CropLargerThanResize {
        /// The crop side.
        image_size: u32,
        /// The shorter side after resizing.
        resize: u32,
    },

    /// An official dataset file could not be downloaded (offline, server error, connection cut).
    #[error(
        "cannot download {what}: {}\n{}",
        .attempts.join("; "),
        manual_steps(.files)
    )]
    Download {
        /// The dataset, e.g. "CIFAR-10".
        what: String,
        /// One line per URL tried, with the reason it failed.
        attempts: Vec<String>,
        /// Every file still missing, so that the user can fetch them by hand.
        files: Vec<ManualDownload>,
    },

    /// A downloaded file whose MD5 differs from the published one; the download was deleted.
    #[error(
        "the file downloaded from {url} has MD5 {actual}, but the published checksum is {expected}; the download was deleted, run again to fetch it from scratch, or download it by hand and save it as `{dest}`"
    )]
    Checksum {
        /// Where it came from.
        url: String,
        /// Its final name (it was never put there).
        dest: PathBuf,
        /// The published MD5.
        expected: String,
        /// The MD5 of the bytes received.
        actual: String,
    },

    /// A download that was stopped by the caller; the partial file is kept for resuming.
    #[error(
        "download of `{dest}` stopped; the {bytes} bytes received are kept in `{partial}` and resumed next time"
    )]
    DownloadStopped {
        /// Its final name.
        dest: PathBuf,
        /// The partial file.
        partial: PathBuf,
        /// Bytes received so far.
        bytes: u64,
    },

    /// A downloaded archive that could not be unpacked.
    #[error("cannot unpack `{archive}` into `{dest}`")]
    Unpack {
        /// The archive.
        archive: PathBuf,
        /// The folder it was unpacked into.
        dest: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// A file to fetch by hand when lortflow cannot download it: what the error message lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManualDownload {
    /// The official URL.
    pub url: String,
    /// Where to save it.
    pub dest: PathBuf,
    /// Its published MD5.
    pub md5: String,
}

/// An error in long-tail or many/medium/few settings, or in the labels they are applied to.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LongTailError {
    /// There are no classes.
    #[error("the dataset has no classes")]
    NoClasses,

    /// A label is not below the number of classes.
    #[error("label {label} of sample {index} is out of range for {num_classes} classes")]
    LabelOutOfRange {
        /// Sample index.
        index: usize,
        /// The label.
        label: u32,
        /// Number of classes.
        num_classes: usize,
    },

    /// More samples than a `u32` sample id can name.
    #[error("{len} samples exceed the u32 sample-id range")]
    TooManySamples {
        /// Number of samples.
        len: usize,
    },

    /// A class has no sample at all in the source split.
    #[error("class {class} has no samples in the training split; every class needs at least one")]
    NoSourceSamples {
        /// The class.
        class: u32,
    },

    /// The source split has no samples, so no default `n_max` exists.
    #[error("the source split has no samples")]
    NoSamples,

    /// An imbalance ratio below 1, or not finite.
    #[error("imbalance ratio must be a finite number >= 1, got {ratio}")]
    InvalidImbalanceRatio {
        /// The ratio given.
        ratio: f64,
    },

    /// The imbalance ratio would leave the tail class with no sample.
    #[error(
        "imbalance ratio {ratio} leaves class {class} with 0 samples (n_max = {n_max}); the largest possible imbalance ratio is {max_ratio}"
    )]
    ImbalanceTooLarge {
        /// The ratio given.
        ratio: f64,
        /// The class that would be empty.
        class: u32,
        /// The head count.
        n_max: usize,
        /// The largest ratio for which every class keeps at least one sample.
        max_ratio: f64,
    },

    /// The step profile needs an even number of classes.
    #[error(
        "the `step` profile needs an even number of classes, got {num_classes} (LDAM-DRW's step profile silently drops the last class of an odd count)"
    )]
    StepNeedsEvenClasses {
        /// Number of classes.
        num_classes: usize,
    },

    /// `n_max` or `max_per_class` is zero.
    #[error("`{name}` must be at least 1")]
    ZeroCount {
        /// The setting.
        name: &'static str,
    },

    /// A class has fewer samples than its target count.
    #[error(
        "class {class} needs {required} samples at n_max = {n_max} but only {available} are available{}",
        fits.map_or(String::new(), |f| format!("; every class can fill n_max = {f} (`max-per-class`), the default when it is not set"))
    )]
    InsufficientSamples {
        /// The class.
        class: u32,
        /// Target count.
        required: usize,
        /// Samples of the class in the source.
        available: usize,
        /// The head count that asked for too many.
        n_max: usize,
        /// The largest head count every class can fill, if one works.
        fits: Option<usize>,
    },

    /// No head count gives every class enough samples at this imbalance ratio.
    #[error(
        "no head count works at imbalance ratio {ratio}: class {class} has {available} samples, which allows n_max = {fits} at most, and at that head count the tail class keeps no sample; lower `imbalance-ratio`, or drop the small class"
    )]
    NoHeadCount {
        /// The ratio given.
        ratio: f64,
        /// The class that limits the head count.
        class: u32,
        /// Its samples.
        available: usize,
        /// The largest head count it allows.
        fits: usize,
    },

    /// A class would be empty after subsampling.
    #[error("class {class} is empty after subsampling")]
    EmptyClass {
        /// The class.
        class: u32,
    },

    /// An explicit class order is not a permutation of `0..K`.
    #[error("class order is not a permutation of 0..{num_classes}: {problem}")]
    InvalidClassOrder {
        /// Number of classes.
        num_classes: usize,
        /// What is wrong.
        problem: String,
    },

    /// Many/few thresholds that cannot define three groups.
    #[error("invalid many/few thresholds: {problem}")]
    InvalidThresholds {
        /// What is wrong.
        problem: String,
    },

    /// Per-class values whose count differs from the number of classes.
    #[error("expected one value per class ({num_classes}), got {actual}")]
    ValueCount {
        /// Number of classes.
        num_classes: usize,
        /// Values given.
        actual: usize,
    },
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| format!("`{}`", p.display()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn manual_steps(files: &[ManualDownload]) -> String {
    let mut text = String::from(
        "To download by hand, fetch each file below and save it under the given name (lortflow checks the MD5 and unpacks archives on the next run):",
    );
    for f in files {
        text.push_str(&format!(
            "\n  {} -> `{}` (MD5 {})",
            f.url,
            f.dest.display(),
            f.md5
        ));
    }
    text
}
