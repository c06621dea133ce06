//! Packing a split: read every listed file, check that it decodes, shrink what exceeds the cap,
//! and append it to a [`PackWriter`], on a pool of worker threads, in bounded memory.
//!
//! Files are taken in windows of a few per worker: the window is read and decoded in parallel,
//! then written in list order, so memory holds one window's encoded bytes and each worker's one
//! decoded image, whatever the size of the split. Every image is decoded in full once here: that
//! is what finds a truncated or corrupt file now, with its list line, rather than in epoch 37.

use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use super::decode::{DecodeError, ImageFormat, RgbImage, decode_rgb};
use super::pack::{FLAG_REENCODED, PackError, PackWriter};
use super::resize::resize_rgb;

/// One image to pack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackEntry {
    /// Path relative to the image root, as the list wrote it.
    pub path: String,
    /// Class label.
    pub label: u32,
    /// Where the list named it: line number (from 1) or JSON entry index (from 0).
    pub row: u32,
}

/// How a split is packed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PackOptions {
    /// Images whose longer side exceeds this are shrunk to it (antialiased bilinear) and
    /// re-encoded as JPEG; `None` keeps every image as it is.
    pub max_side: Option<u32>,
    /// JPEG quality of re-encoded images.
    pub quality: u8,
    /// Record bad images and go on, instead of stopping at the first.
    pub skip_bad_images: bool,
    /// Decode threads.
    pub workers: usize,
}

impl Default for PackOptions {
    fn default() -> Self {
        Self {
            max_side: None,
            quality: DEFAULT_QUALITY,
            skip_bad_images: false,
            workers: default_workers(),
        }
    }
}

/// JPEG quality of re-encoded images: FFCV's for ImageNet.
pub const DEFAULT_QUALITY: u8 = 90;

static WORKERS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// Sets the number of decode threads of this process (`lortflow --workers N`); the first call wins.
pub fn set_default_workers(workers: usize) {
    let _ = WORKERS.set(workers.max(1));
}

/// What [`set_default_workers`] set, if anything (passed on to scheduler jobs).
pub fn explicit_workers() -> Option<usize> {
    WORKERS.get().copied()
}

/// Decode threads: what [`set_default_workers`] set, else `LORTFLOW_WORKERS` (what a scheduler
/// job inherits), else every core this process may use. The number never changes results.
pub fn default_workers() -> usize {
    if let Some(&n) = WORKERS.get() {
        return n;
    }
    if let Ok(text) = std::env::var("LORTFLOW_WORKERS") {
        match text.trim().parse::<usize>() {
            Ok(n) if n > 0 => return n,
            _ => {
                tracing::warn!(value = %text, "LORTFLOW_WORKERS is not a positive integer; using every core")
            }
        }
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// An image that could not be packed, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BadImage {
    /// The file.
    pub path: PathBuf,
    /// Where the source named it, e.g. "line 3 of `train.txt`".
    pub origin: String,
    /// What is wrong with it.
    pub problem: String,
}

impl std::fmt::Display for BadImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` ({}): {}",
            self.path.display(),
            self.origin,
            self.problem
        )
    }
}

/// Why packing stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackSplitError {
    /// A bad image, without `skip_bad_images`.
    #[error(
        "{0}; fix or remove it, or set `skip-bad-images=#true` to leave such files out (they are then listed in the run's output)"
    )]
    Image(BadImage),
    /// Every image was bad.
    #[error("none of the {count} images of the split could be packed; the first: {first}")]
    NothingLeft {
        /// Images tried.
        count: usize,
        /// The first bad one.
        first: BadImage,
    },
    /// The pack file.
    #[error(transparent)]
    Pack(#[from] PackError),
    /// The worker pool.
    #[error("cannot start {workers} decode threads: {message}")]
    Pool {
        /// Threads asked for.
        workers: usize,
        /// The cause.
        message: String,
    },
    /// Stopped by the caller.
    #[error("packing stopped after {done} of {total} images")]
    Cancelled {
        /// Images packed.
        done: usize,
        /// Images to pack.
        total: usize,
    },
}

/// What a finished pack holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PackReport {
    /// Images in the pack.
    pub images: usize,
    /// Size of the pack file.
    pub bytes: u64,
    /// Images shrunk to `max_side` and re-encoded.
    pub reencoded: usize,
    /// Images left out (only with `skip_bad_images`).
    pub skipped: Vec<BadImage>,
}

/// Where the pack's inputs are and how to name them in errors.
pub struct PackInput<'a> {
    /// The folder entry paths are relative to.
    pub root: &'a Path,
    /// The images, in the order they are stored.
    pub entries: &'a [PackEntry],
    /// Number of classes (labels are below it).
    pub num_classes: usize,
    /// Describes an entry's `row` for errors, e.g. "line 3 of `train.txt`".
    pub describe: &'a (dyn Fn(u32) -> String + Sync),
}

/// Packs `input` into `out` (see the module doc); `progress(done, total)` after every window.
pub fn pack_split(
    input: &PackInput<'_>,
    out: &Path,
    options: &PackOptions,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PackReport, PackSplitError> {
    let workers = options.workers.max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .thread_name(|i| format!("lortflow-pack-{i}"))
        .build()
        .map_err(|e| PackSplitError::Pool {
            workers,
            message: e.to_string(),
        })?;
    let total = input.entries.len();
    let mut writer = PackWriter::create(out)?;
    let mut report = PackReport::default();
    let window = workers * 8;
    for chunk in input.entries.chunks(window) {
        if cancel.load(Ordering::Relaxed) {
            return Err(PackSplitError::Cancelled {
                done: writer.len(),
                total,
            });
        }
        let prepared: Vec<Result<Prepared, String>> = pool.install(|| {
            chunk
                .par_iter()
                .map(|entry| prepare(input.root, entry, options))
                .collect()
        });
        for (entry, result) in chunk.iter().zip(prepared) {
            match result {
                Ok(p) => {
                    if p.flags & FLAG_REENCODED != 0 {
                        report.reencoded += 1;
                    }
                    writer.push(
                        &p.bytes,
                        p.format,
                        entry.label,
                        p.original,
                        entry.row,
                        p.flags,
                    )?;
                }
                Err(problem) => {
                    let bad = BadImage {
                        path: input.root.join(&entry.path),
                        origin: (input.describe)(entry.row),
                        problem,
                    };
                    if !options.skip_bad_images {
                        return Err(PackSplitError::Image(bad));
                    }
                    report.skipped.push(bad);
                }
            }
        }
        progress(writer.len() + report.skipped.len(), total);
    }
    if writer.is_empty() && !report.skipped.is_empty() {
        return Err(PackSplitError::NothingLeft {
            count: total,
            first: report.skipped.swap_remove(0),
        });
    }
    report.images = writer.len();
    report.bytes = writer.finish(input.num_classes)?;
    Ok(report)
}

struct Prepared {
    bytes: Vec<u8>,
    format: ImageFormat,
    original: (u32, u32),
    flags: u8,
}

/// The path of a list entry under `root`, refusing one that leaves it.
pub fn entry_path(root: &Path, relative: &str) -> Result<PathBuf, String> {
    let rel = Path::new(relative);
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "the path `{relative}` leaves the image root (it is absolute or has `..`); paths in the list are relative to the root"
        ));
    }
    Ok(root.join(rel))
}

fn prepare(root: &Path, entry: &PackEntry, options: &PackOptions) -> Result<Prepared, String> {
    let path = entry_path(root, &entry.path)?;
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read it: {e}"))?;
    let image = decode_rgb(&bytes).map_err(|e: DecodeError| e.to_string())?;
    let format = ImageFormat::sniff(&bytes).expect("decoded, so the format is known");
    let original = (image.width, image.height);
    match options.max_side {
        Some(cap) if image.width.max(image.height) > cap => Ok(Prepared {
            bytes: shrink_and_encode(&image, cap, options.quality)?,
            format: ImageFormat::Jpeg,
            original,
            flags: FLAG_REENCODED,
        }),
        _ => Ok(Prepared {
            bytes,
            format,
            original,
            flags: 0,
        }),
    }
}

/// The size an image of `(w, h)` takes when its longer side becomes `cap`: the shorter side is
/// scaled by the same factor and rounded, at least 1.
pub fn capped_size(w: u32, h: u32, cap: u32) -> (u32, u32) {
    let long = w.max(h);
    let scale = |v: u32| {
        ((u64::from(v) * u64::from(cap) + u64::from(long) / 2) / u64::from(long)).max(1) as u32
    };
    (scale(w), scale(h))
}

fn shrink_and_encode(image: &RgbImage, cap: u32, quality: u8) -> Result<Vec<u8>, String> {
    let (w, h) = capped_size(image.width, image.height, cap);
    let small = resize_rgb(
        image,
        (0.0, 0.0, f64::from(image.width), f64::from(image.height)),
        w,
        h,
    );
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode(&small.pixels, w, h, image::ExtendedColorType::Rgb8)
        .map_err(|e| format!("cannot re-encode it at {w}x{h}: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::super::pack::PackedImages;
    use super::*;

    fn jpeg(w: u32, h: u32, seed: u8) -> Vec<u8> {
        let im = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 3) as u8 ^ seed, (y * 2) as u8, seed])
        });
        let mut out = Cursor::new(Vec::new());
        im.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    fn describe(row: u32) -> String {
        format!("line {row} of `list.txt`")
    }

    fn pack(
        root: &Path,
        entries: &[PackEntry],
        options: PackOptions,
    ) -> Result<(PackReport, PackedImages), PackSplitError> {
        let out = root.join("out.pack");
        let input = PackInput {
            root,
            entries,
            num_classes: 3,
            describe: &describe,
        };
        let report = pack_split(
            &input,
            &out,
            &options,
            &AtomicBool::new(false),
            &mut |_, _| {},
        )?;
        Ok((report, PackedImages::open(&out).unwrap()))
    }

    fn entry(path: &str, label: u32, row: u32) -> PackEntry {
        PackEntry {
            path: path.into(),
            label,
            row,
        }
    }

    #[test]
    fn packs_in_list_order_and_shrinks_only_what_exceeds_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let mut entries = Vec::new();
        let mut originals = Vec::new();
        for i in 0..37u32 {
            let (w, h) = if i % 5 == 0 { (90, 40) } else { (30, 20 + i) };
            let bytes = jpeg(w, h, i as u8);
            std::fs::write(dir.path().join(format!("{i}.jpg")), &bytes).unwrap();
            originals.push(bytes);
            entries.push(entry(&format!("{i}.jpg"), i % 3, i + 1));
        }
        let options = PackOptions {
            max_side: Some(64),
            workers: 3,
            ..Default::default()
        };
        let (report, packed) = pack(dir.path(), &entries, options).unwrap();
        assert_eq!((report.images, report.reencoded), (37, 8));
        assert_eq!(report.bytes, packed.file_len());
        for (i, original) in originals.iter().enumerate() {
            let r = packed.record(i).unwrap();
            assert_eq!((r.label, r.row), (i as u32 % 3, i as u32 + 1));
            if i % 5 == 0 {
                assert_eq!((r.width, r.height, r.flags), (90, 40, FLAG_REENCODED));
                let small = decode_rgb(packed.bytes(i).unwrap()).unwrap();
                assert_eq!((small.width, small.height), (64, 28));
            } else {
                assert_eq!(packed.bytes(i).unwrap(), original, "kept byte for byte");
            }
        }
    }

    #[test]
    fn bad_images_name_the_file_and_line_or_are_skipped_and_listed() {
        let dir = tempfile::tempdir().unwrap();
        let good = jpeg(40, 30, 1);
        std::fs::write(dir.path().join("good.jpg"), &good).unwrap();
        std::fs::write(dir.path().join("cut.jpg"), &good[..good.len() / 2]).unwrap();
        std::fs::write(dir.path().join("empty.jpg"), b"").unwrap();
        let entries = [
            entry("good.jpg", 0, 1),
            entry("cut.jpg", 1, 2),
            entry("missing.jpg", 1, 3),
            entry("../good.jpg", 2, 4),
            entry("empty.jpg", 2, 5),
        ];
        let err = pack(dir.path(), &entries, PackOptions::default()).unwrap_err();
        let root = dir.path().display().to_string();
        let message = err.to_string().replace(&root, "<root>");
        assert!(
            message
                .starts_with("`<root>/cut.jpg` (line 2 of `list.txt`): the JPEG data is truncated"),
            "{message}"
        );
        assert!(
            !dir.path().join("out.pack").exists(),
            "nothing that looks good"
        );
        let (report, packed) = pack(
            dir.path(),
            &entries,
            PackOptions {
                skip_bad_images: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(packed.len(), 1);
        let problems: Vec<String> = report
            .skipped
            .iter()
            .map(|b| b.to_string().replace(&root, "<root>"))
            .collect();
        assert_eq!(problems.len(), 4);
        assert!(
            problems[1].starts_with("`<root>/missing.jpg` (line 3 of `list.txt`): cannot read it:"),
            "{problems:?}"
        );
        assert!(
            problems[2].contains("leaves the image root"),
            "{problems:?}"
        );
        assert_eq!(
            problems[3],
            "`<root>/empty.jpg` (line 5 of `list.txt`): the file is empty (0 bytes)"
        );
    }

    #[test]
    fn capped_sizes_keep_the_aspect() {
        assert_eq!(capped_size(1000, 500, 512), (512, 256));
        assert_eq!(capped_size(375, 800, 512), (240, 512));
        assert_eq!(capped_size(5000, 1, 512), (512, 1));
    }
}
