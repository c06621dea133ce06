//! `.npy` files (NumPy format 1.0–3.0) for users who bring features from Python or take ours
//! into a notebook: `f4` matrices and integer label vectors, little-endian, C order.
//!
//! The reader reads the file into memory (these are the user's files, which may change while they
//! are read; see [`FileBytes`]); NumPy pads its header so that the data starts at a multiple of 64
//! bytes (format 1.0+), so `f4` data is viewed as `&[f32]` without a second copy.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::error::FeaturesError;
use super::file::{Backing, FileBytes, read_user_file};

const MAGIC: &[u8] = b"\x93NUMPY";

/// The integer type labels are written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelDtype {
    /// `<i8` (int64, what PyTorch's losses take).
    I64,
    /// `<u4` (uint32).
    U32,
}

fn write_npy(
    path: &Path,
    descr: &str,
    shape: &[usize],
    data: impl Iterator<Item = [u8; 8]>,
    width: usize,
) -> Result<(), FeaturesError> {
    let shape_str = match shape {
        [n] => format!("({n},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_str}, }}");
    // Version 1.0: magic (6) + version (2) + u16 length (2) + header ending in '\n', padded with
    // spaces to a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    if header.len() > u16::MAX as usize {
        return Err(FeaturesError::Shape("npy header too long".into()));
    }
    let file = File::create(path).map_err(FeaturesError::io("create", path))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let write = |out: &mut BufWriter<File>| -> std::io::Result<()> {
        out.write_all(MAGIC)?;
        out.write_all(&[1, 0])?;
        out.write_all(&(header.len() as u16).to_le_bytes())?;
        out.write_all(header.as_bytes())?;
        for bytes in data {
            out.write_all(&bytes[..width])?;
        }
        out.flush()
    };
    write(&mut out).map_err(FeaturesError::io("write", path))
}

/// Writes an `[rows, dim]` `<f4` matrix.
pub fn write_npy_f32(
    path: &Path,
    data: &[f32],
    rows: usize,
    dim: usize,
) -> Result<(), FeaturesError> {
    if data.len() != rows * dim {
        return Err(FeaturesError::Shape(format!(
            "{} values do not make a {rows}x{dim} matrix",
            data.len()
        )));
    }
    let bytes = data.iter().map(|v| {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&v.to_le_bytes());
        b
    });
    write_npy(path, "<f4", &[rows, dim], bytes, 4)
}

/// Writes a `<f4` vector.
pub fn write_npy_f32_vector(path: &Path, data: &[f32]) -> Result<(), FeaturesError> {
    let bytes = data.iter().map(|v| {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&v.to_le_bytes());
        b
    });
    write_npy(path, "<f4", &[data.len()], bytes, 4)
}

/// Writes a label vector as `<i8` or `<u4`.
pub fn write_npy_labels(
    path: &Path,
    labels: &[u32],
    dtype: LabelDtype,
) -> Result<(), FeaturesError> {
    match dtype {
        LabelDtype::I64 => write_npy(
            path,
            "<i8",
            &[labels.len()],
            labels.iter().map(|&l| i64::from(l).to_le_bytes()),
            8,
        ),
        LabelDtype::U32 => write_npy(
            path,
            "<u4",
            &[labels.len()],
            labels.iter().map(|&l| {
                let mut b = [0u8; 8];
                b[..4].copy_from_slice(&l.to_le_bytes());
                b
            }),
            4,
        ),
    }
}

/// A `.npy` file, read into memory.
pub struct NpyFile {
    path: PathBuf,
    map: FileBytes,
    descr: String,
    shape: Vec<usize>,
    data_start: usize,
}

impl NpyFile {
    /// Opens `path` and parses its header.
    pub fn open(path: &Path) -> Result<Self, FeaturesError> {
        let map = read_user_file(path)?;
        let bad = |m: &str| FeaturesError::Format {
            path: path.to_path_buf(),
            message: m.to_string(),
        };
        if map.len() < 10 || &map[..6] != MAGIC {
            return Err(bad("missing the NumPy magic string"));
        }
        let (header_len, header_start) = match map[6] {
            1 => (u16::from_le_bytes([map[8], map[9]]) as usize, 10),
            2 | 3 if map.len() >= 12 => (
                u32::from_le_bytes([map[8], map[9], map[10], map[11]]) as usize,
                12,
            ),
            _ => return Err(bad("unsupported .npy version")),
        };
        let data_start = header_start + header_len;
        let header = map
            .get(header_start..data_start)
            .and_then(|h| std::str::from_utf8(h).ok())
            .ok_or_else(|| bad("truncated or non-UTF-8 header"))?;
        let descr = dict_value(header, "descr")
            .map(|v| v.trim_matches(|c| c == '\'' || c == '"').to_string())
            .ok_or_else(|| bad("no `descr` in the header"))?;
        if dict_value(header, "fortran_order").is_some_and(|v| v.starts_with("True")) {
            return Err(bad(
                "Fortran-order arrays are not supported; save with C order",
            ));
        }
        let shape_text =
            dict_value(header, "shape").ok_or_else(|| bad("no `shape` in the header"))?;
        let inner = shape_text
            .strip_prefix('(')
            .and_then(|s| s.split(')').next())
            .ok_or_else(|| bad("malformed `shape`"))?;
        let shape = inner
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.trim_end_matches('L').parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| bad("malformed `shape`"))?;
        let npy = Self {
            path: path.to_path_buf(),
            map,
            descr,
            shape,
            data_start,
        };
        let item = npy.item_size().ok_or_else(|| bad("unsupported dtype"))?;
        let expected = npy
            .shape
            .iter()
            .try_fold(item, |n, &d| n.checked_mul(d))
            .ok_or_else(|| bad("the shape in the header is too large"))?;
        if npy.map.len().saturating_sub(data_start) < expected {
            return Err(bad("the file is shorter than its header says"));
        }
        Ok(npy)
    }

    /// The array's shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The NumPy type string (e.g. `<f4`).
    pub fn descr(&self) -> &str {
        &self.descr
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the array has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn item_size(&self) -> Option<usize> {
        Some(match self.descr.as_str() {
            "<f4" | "<i4" | "<u4" => 4,
            "<f8" | "<i8" | "<u8" => 8,
            "<i2" | "<u2" => 2,
            "|u1" | "|i1" | "<u1" => 1,
            _ => return None,
        })
    }

    fn data(&self) -> &[u8] {
        &self.map[self.data_start..]
    }

    /// The `<f4` data as `f32`, borrowed from the mapping (copied only if misaligned).
    pub fn into_f32(self) -> Result<NpyF32, FeaturesError> {
        if self.descr != "<f4" {
            return Err(FeaturesError::Format {
                path: self.path,
                message: format!(
                    "expected little-endian float32 (`<f4`), found `{}`",
                    self.descr
                ),
            });
        }
        let len = self.len();
        Ok(NpyF32 {
            shape: self.shape,
            backing: Backing::new(self.map, self.data_start, len),
        })
    }

    /// Integer labels (any signed or unsigned width), rejecting negative values.
    pub fn to_labels(&self) -> Result<Vec<u32>, FeaturesError> {
        let bad = |m: String| FeaturesError::Format {
            path: self.path.clone(),
            message: m,
        };
        let data = self.data();
        let n = self.len();
        let read = |i: usize| -> Result<i128, String> {
            Ok(match self.descr.as_str() {
                "<i8" => {
                    i64::from_le_bytes(data[i * 8..i * 8 + 8].try_into().expect("8 bytes")).into()
                }
                "<u8" => {
                    u64::from_le_bytes(data[i * 8..i * 8 + 8].try_into().expect("8 bytes")).into()
                }
                "<i4" => {
                    i32::from_le_bytes(data[i * 4..i * 4 + 4].try_into().expect("4 bytes")).into()
                }
                "<u4" => {
                    u32::from_le_bytes(data[i * 4..i * 4 + 4].try_into().expect("4 bytes")).into()
                }
                "<i2" => {
                    i16::from_le_bytes(data[i * 2..i * 2 + 2].try_into().expect("2 bytes")).into()
                }
                "<u2" => {
                    u16::from_le_bytes(data[i * 2..i * 2 + 2].try_into().expect("2 bytes")).into()
                }
                "|u1" | "<u1" => data[i].into(),
                "|i1" => (data[i] as i8).into(),
                other => return Err(format!("labels must be integers, found `{other}`")),
            })
        };
        (0..n)
            .map(|i| {
                let v = read(i).map_err(&bad)?;
                u32::try_from(v).map_err(|_| bad(format!("label {v} is not a class index")))
            })
            .collect()
    }
}

/// A float32 `.npy` array viewed from its mapping.
pub struct NpyF32 {
    shape: Vec<usize>,
    backing: Backing,
}

impl NpyF32 {
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        self.backing.floats()
    }
}

/// The raw text of `key`'s value in a Python dict literal (up to the next top-level comma).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pattern_single = format!("'{key}'");
    let pattern_double = format!("\"{key}\"");
    let at = header
        .find(&pattern_single)
        .map(|i| i + pattern_single.len())
        .or_else(|| {
            header
                .find(&pattern_double)
                .map(|i| i + pattern_double.len())
        })?;
    let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
    // The value ends at the first comma outside parentheses.
    let mut depth = 0usize;
    for (i, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    Some(rest.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 1.0).collect();
        let f = dir.path().join("f.npy");
        write_npy_f32(&f, &data, 3, 4).unwrap();
        let npy = NpyFile::open(&f).unwrap();
        assert_eq!(npy.shape(), [3, 4]);
        let arr = npy.into_f32().unwrap();
        assert_eq!(arr.data(), data.as_slice());
        for dtype in [LabelDtype::I64, LabelDtype::U32] {
            let l = dir.path().join("l.npy");
            write_npy_labels(&l, &[0, 7, 3], dtype).unwrap();
            let npy = NpyFile::open(&l).unwrap();
            assert_eq!(npy.shape(), [3]);
            assert_eq!(npy.to_labels().unwrap(), [0, 7, 3]);
        }
    }

    #[test]
    fn npy_header_is_64_aligned_and_parses_numpy_style() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f.npy");
        write_npy_f32(&f, &[1.0; 6], 2, 3).unwrap();
        let bytes = std::fs::read(&f).unwrap();
        assert_eq!((bytes.len() - 24) % 64, 0);
        assert_eq!(
            dict_value(
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
                "shape"
            ),
            Some("(2, 3)")
        );
    }

    #[test]
    fn bad_npy_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bad.npy");
        std::fs::write(&f, b"not numpy").unwrap();
        assert!(NpyFile::open(&f).is_err());
        write_npy_f32(&f, &[1.0; 6], 2, 3).unwrap();
        let mut bytes = std::fs::read(&f).unwrap();
        bytes.truncate(bytes.len() - 4);
        std::fs::write(&f, bytes).unwrap();
        let err = NpyFile::open(&f).err().unwrap();
        assert!(err.to_string().contains("shorter"), "{err}");
        write_npy_labels(&f, &[1, 2], LabelDtype::I64).unwrap();
        assert!(NpyFile::open(&f).unwrap().into_f32().is_err());
    }
}
