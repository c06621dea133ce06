//! `features.safetensors`: a streaming writer and a memory-mapped reader.
//!
//! The file holds `features` (`F32`, `[N, D]`) and `labels` (`I64`, `[N]`, what PyTorch's losses
//! expect), in that order. The writer streams: it writes the header up front (sizes are known from
//! the sample count and the feature dimension) and then appends rows batch by batch, so that
//! extraction never holds the whole matrix. The header is padded with spaces to a multiple of 8
//! bytes, as the reference implementation does, which puts the `f32` data on an 8-byte boundary of
//! the page-aligned mapping; the reader can then hand out `&[f32]` straight from the mapping.
//! Files written by `safetensors.torch.save_file` have the same layout and load the same way.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde_json::json;

use super::error::FeaturesError;

/// Name of the feature tensor.
pub const FEATURES_TENSOR: &str = "features";
/// Name of the label tensor.
pub const LABELS_TENSOR: &str = "labels";

/// Writes `features.safetensors` row block by row block.
pub struct FeatureWriter {
    path: PathBuf,
    out: BufWriter<File>,
    dim: usize,
    labels: Vec<u32>,
    rows_written: usize,
}

impl FeatureWriter {
    /// Creates `path` for `labels.len()` rows of `dim` features; `metadata` goes into the
    /// header's `__metadata__` (e.g. the backbone and the TTA mode).
    pub fn create(
        path: &Path,
        dim: usize,
        labels: Vec<u32>,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Self, FeaturesError> {
        let n = labels.len();
        let feature_bytes = n * dim * 4;
        let label_bytes = n * 8;
        let mut header = json!({
            FEATURES_TENSOR: {"dtype": "F32", "shape": [n, dim], "data_offsets": [0, feature_bytes]},
            LABELS_TENSOR: {"dtype": "I64", "shape": [n], "data_offsets": [feature_bytes, feature_bytes + label_bytes]},
        });
        if !metadata.is_empty() {
            header["__metadata__"] = json!(metadata);
        }
        let mut header = serde_json::to_vec(&header).expect("a JSON value should serialize");
        // Pad so that the data starts at a multiple of 8 (8-byte length prefix + header).
        while header.len() % 8 != 0 {
            header.push(b' ');
        }
        let file = File::create(path).map_err(FeaturesError::io("create", path))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&(header.len() as u64).to_le_bytes())
            .and_then(|()| out.write_all(&header))
            .map_err(FeaturesError::io("write", path))?;
        Ok(Self {
            path: path.to_path_buf(),
            out,
            dim,
            labels,
            rows_written: 0,
        })
    }

    /// Appends rows (`rows.len()` must be a multiple of the dimension).
    pub fn write_rows(&mut self, rows: &[f32]) -> Result<(), FeaturesError> {
        if self.dim == 0 || rows.len() % self.dim != 0 {
            return Err(FeaturesError::Shape(format!(
                "{} values are not whole rows of {}",
                rows.len(),
                self.dim
            )));
        }
        let count = rows.len() / self.dim;
        if self.rows_written + count > self.labels.len() {
            return Err(FeaturesError::Shape(format!(
                "more rows than the {} announced",
                self.labels.len()
            )));
        }
        for v in rows {
            self.out
                .write_all(&v.to_le_bytes())
                .map_err(FeaturesError::io("write", &self.path))?;
        }
        self.rows_written += count;
        Ok(())
    }

    /// Writes the labels and flushes the file to disk; fails if rows are missing.
    pub fn finish(mut self) -> Result<PathBuf, FeaturesError> {
        if self.rows_written != self.labels.len() {
            return Err(FeaturesError::Shape(format!(
                "{} rows written but {} announced",
                self.rows_written,
                self.labels.len()
            )));
        }
        for &l in &self.labels {
            self.out
                .write_all(&i64::from(l).to_le_bytes())
                .map_err(FeaturesError::io("write", &self.path))?;
        }
        let file = self
            .out
            .into_inner()
            .map_err(|e| FeaturesError::io("write", &self.path)(e.into_error()))?;
        file.sync_all()
            .map_err(FeaturesError::io("sync", &self.path))?;
        Ok(self.path)
    }
}

/// Writes a whole feature matrix at once (for features computed elsewhere).
pub fn write_features(
    path: &Path,
    features: &[f32],
    dim: usize,
    labels: &[u32],
) -> Result<(), FeaturesError> {
    let mut writer = FeatureWriter::create(path, dim, labels.to_vec(), &BTreeMap::new())?;
    writer.write_rows(features)?;
    writer.finish().map(|_| ())
}

/// The bytes of a file: a read-only mapping for the store's own artifacts, which are never
/// modified in place, or a copy in memory for the user's files, which may be rewritten while a
/// stage reads them (watch mode re-runs on save): a mapping of a file that another process
/// truncates faults with SIGBUS on the next read, a copy cannot.
pub(crate) enum FileBytes {
    Mapped(Mmap),
    Read(Vec<u8>),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Read(v) => v,
        }
    }
}

/// Reads a user's file into memory; anything but a regular file is an error that says so.
pub(crate) fn read_user_file(path: &Path) -> Result<FileBytes, FeaturesError> {
    let meta = std::fs::metadata(path).map_err(FeaturesError::io("open", path))?;
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        return Err(FeaturesError::Format {
            path: path.to_path_buf(),
            message: format!("it is {what}; give the path of a `.npy` or `.safetensors` file"),
        });
    }
    let bytes = std::fs::read(path).map_err(FeaturesError::io("read", path))?;
    Ok(FileBytes::Read(bytes))
}

/// The backing bytes of a feature matrix: the file's bytes viewed in place, or an aligned copy
/// when the data is not 4-byte aligned (a hand-made file).
pub(crate) enum Backing {
    Mapped {
        map: Mmap,
        start: usize,
        len: usize,
    },
    Read {
        bytes: Vec<u8>,
        start: usize,
        len: usize,
    },
    Owned(Vec<f32>),
}

impl Backing {
    pub(crate) fn floats(&self) -> &[f32] {
        match self {
            Backing::Mapped { map, start, len } => {
                bytemuck::cast_slice(&map[*start..*start + *len * 4])
            }
            Backing::Read { bytes, start, len } => {
                bytemuck::cast_slice(&bytes[*start..*start + *len * 4])
            }
            Backing::Owned(v) => v,
        }
    }

    /// Drops the pages holding floats `range` from this process's memory (a mapping; a copy
    /// keeps its memory). They are re-read from the file if touched again. Errors are ignored:
    /// this only lowers memory use.
    pub(crate) fn release(&self, range: std::ops::Range<usize>) {
        #[cfg(unix)]
        if let Backing::Mapped { map, start, len } = self {
            let (from, to) = (range.start.min(*len), range.end.min(*len));
            if from >= to {
                return;
            }
            // SAFETY: the mapping is read-only (never written through) and the file is an
            // immutable artifact (see `map_file`), so `MADV_DONTNEED` only drops clean pages of
            // the page cache from this process: any later read faults in the same bytes from the
            // file, and no borrowed slice sees a change.
            #[allow(unsafe_code)]
            let _ = unsafe {
                map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start + from * 4,
                    (to - from) * 4,
                )
            };
        }
        #[cfg(not(unix))]
        let _ = range;
    }

    /// Views `bytes[start..start + 4·len]` of the file as `f32`, copying only when unaligned.
    /// The caller has checked that the range lies inside the file.
    pub(crate) fn new(file: FileBytes, start: usize, len: usize) -> Self {
        let bytes = &file[start..start + len * 4];
        if bytemuck::try_cast_slice::<u8, f32>(bytes).is_ok() && cfg!(target_endian = "little") {
            match file {
                FileBytes::Mapped(map) => Backing::Mapped { map, start, len },
                FileBytes::Read(bytes) => Backing::Read { bytes, start, len },
            }
        } else {
            let v = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Backing::Owned(v)
        }
    }
}

/// Maps `path` read-only.
pub(crate) fn map_file(path: &Path) -> Result<Mmap, FeaturesError> {
    let file = File::open(path).map_err(FeaturesError::io("open", path))?;
    // SAFETY: the mapping is read-only and lives as long as the returned value. Artifacts are
    // written once (to a temporary directory, then renamed) and never modified in place, so no
    // other process truncates or rewrites the file while it is mapped; that is the condition under
    // which reading a file mapping is sound.
    #[allow(unsafe_code)]
    let map = unsafe { Mmap::map(&file) }.map_err(FeaturesError::io("map", path))?;
    Ok(map)
}

/// A memory-mapped `features.safetensors`.
pub struct FeatureFile {
    features: Backing,
    labels: Vec<u32>,
    rows: usize,
    dim: usize,
    metadata: BTreeMap<String, String>,
}

impl FeatureFile {
    /// Opens and validates `path`, an artifact of the store (memory-mapped): a `features` tensor
    /// of `F32 [N, D]` and a `labels` tensor of `N` non-negative integers (I64, I32, U32, U8,
    /// I16, U16).
    pub fn open(path: &Path) -> Result<Self, FeaturesError> {
        Self::parse(path, FileBytes::Mapped(map_file(path)?))
    }

    /// Reads and validates a user's file like [`open`](Self::open), into memory: the user may
    /// rewrite it while it is read.
    pub fn read(path: &Path) -> Result<Self, FeaturesError> {
        Self::parse(path, read_user_file(path)?)
    }

    fn parse(path: &Path, map: FileBytes) -> Result<Self, FeaturesError> {
        let bad = |m: String| FeaturesError::Format {
            path: path.to_path_buf(),
            message: m,
        };
        // Validates the header and the offsets against the file size.
        let tensors = SafeTensors::deserialize(&map).map_err(|e| bad(e.to_string()))?;
        let (header_len, meta) =
            SafeTensors::read_metadata(&map).map_err(|e| bad(e.to_string()))?;
        let data_start = 8 + header_len;
        let info = meta
            .info(FEATURES_TENSOR)
            .ok_or_else(|| bad(format!("no `{FEATURES_TENSOR}` tensor")))?;
        if info.dtype != Dtype::F32 || info.shape.len() != 2 {
            return Err(bad(format!(
                "`{FEATURES_TENSOR}` must be F32 [N, D], found {:?} {:?}",
                info.dtype, info.shape
            )));
        }
        let (rows, dim) = (info.shape[0], info.shape[1]);
        let start = data_start + info.data_offsets.0;
        if rows.checked_mul(dim).and_then(|n| n.checked_mul(4))
            != Some(info.data_offsets.1 - info.data_offsets.0)
        {
            return Err(bad(format!(
                "`{FEATURES_TENSOR}` does not hold [{rows}, {dim}] floats"
            )));
        }
        let view = tensors
            .tensor(LABELS_TENSOR)
            .map_err(|_| bad(format!("no `{LABELS_TENSOR}` tensor")))?;
        if view.shape() != [rows] {
            return Err(bad(format!(
                "`{LABELS_TENSOR}` has shape {:?}, expected [{rows}]",
                view.shape()
            )));
        }
        let labels = decode_labels(view.dtype(), view.data()).map_err(bad)?;
        let metadata = meta
            .metadata()
            .clone()
            .map(|m| m.into_iter().collect())
            .unwrap_or_default();
        drop(tensors);
        Ok(Self {
            features: Backing::new(map, start, rows * dim),
            labels,
            rows,
            dim,
            metadata,
        })
    }

    /// All features, row-major `[N, D]`, borrowed from the mapping (no copy).
    pub fn features(&self) -> &[f32] {
        self.features.floats()
    }

    /// Gives back the memory of rows `rows` (pages of the mapping; re-read from the file if
    /// touched again). For consumers that are done with part of a large matrix.
    pub fn release_rows(&self, rows: std::ops::Range<usize>) {
        self.features
            .release(rows.start * self.dim..rows.end * self.dim);
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> Option<&[f32]> {
        self.features().get(i * self.dim..(i + 1) * self.dim)
    }

    /// One label per row.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// `N`.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// `D`.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The header's `__metadata__`.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }
}

/// Decodes little-endian integer labels, rejecting negative or too large values.
fn decode_labels(dtype: Dtype, bytes: &[u8]) -> Result<Vec<u32>, String> {
    fn convert<const W: usize>(
        bytes: &[u8],
        f: impl Fn([u8; W]) -> i128,
    ) -> Result<Vec<u32>, String> {
        bytes
            .chunks_exact(W)
            .map(|c| {
                let v = f(c.try_into().expect("chunks have width W"));
                u32::try_from(v).map_err(|_| format!("label {v} is not a class index"))
            })
            .collect()
    }
    match dtype {
        Dtype::I64 => convert::<8>(bytes, |b| i64::from_le_bytes(b).into()),
        Dtype::U64 => convert::<8>(bytes, |b| u64::from_le_bytes(b).into()),
        Dtype::I32 => convert::<4>(bytes, |b| i32::from_le_bytes(b).into()),
        Dtype::U32 => convert::<4>(bytes, |b| u32::from_le_bytes(b).into()),
        Dtype::I16 => convert::<2>(bytes, |b| i16::from_le_bytes(b).into()),
        Dtype::U16 => convert::<2>(bytes, |b| u16::from_le_bytes(b).into()),
        Dtype::U8 => convert::<1>(bytes, |b| b[0].into()),
        other => Err(format!("labels must be integers, found {other:?}")),
    }
}
