//! Reading the weight files PyTorch users have: `torch.save` archives (zip, PyTorch ≥ 1.6),
//! legacy pickles (`_use_new_zipfile_serialization=False`, and every file before 1.6), and
//! safetensors.
//!
//! Every tensor of a nested checkpoint is listed under its dotted path from the root
//! (`state_dict.feat_model.module.conv1.weight`), so a sub-dict to descend into and a key prefix to
//! strip are one thing: a prefix. A tensor's bytes are read only when asked for, and a tensor
//! whose bytes the file does not fully hold is an error that names it and the byte the file
//! ends at — never zeros. float16, bfloat16 and float64 convert to float32.

mod pickle;

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::Path;

pub use pickle::Dtype;
#[cfg(test)]
use pickle::StorageRef;
use pickle::{TensorRef, Value};

/// A problem with a weights file. The caller adds the file's path.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Bytes a tensor (or the file's index) needs are past the end of the file.
    #[error("the file is truncated at byte {size}: {what}; re-download or re-copy it")]
    Truncated { size: u64, what: String },
    #[error("{0}")]
    Invalid(String),
}

/// A tensor as the file describes it.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    location: Location,
}

#[derive(Clone, Debug)]
enum Location {
    /// A view of a pickled storage.
    Torch(TensorRef),
    /// Bytes `[start, end)` of a safetensors file.
    Range(usize, usize),
}

/// The kind of file, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    TorchZip,
    TorchLegacy,
    Safetensors,
}

impl FileKind {
    pub fn describe(self) -> &'static str {
        match self {
            FileKind::TorchZip => "a PyTorch archive",
            FileKind::TorchLegacy => "a legacy PyTorch pickle",
            FileKind::Safetensors => "a safetensors file",
        }
    }
}

/// The tensors of a weights file, by dotted path, in file order.
pub struct WeightsFile {
    pub kind: FileKind,
    tensors: Vec<(String, TensorInfo)>,
    index: HashMap<String, usize>,
    bytes: Vec<u8>,
    storages: Storages,
}

enum Storages {
    None,
    /// Entry name of each storage key in the archive.
    Zip(HashMap<String, String>),
    /// Per storage key: its first byte and element count in the file, or the byte it needs up
    /// to (`None`: it lies after an earlier storage that was cut).
    Legacy(HashMap<String, Result<(usize, usize), Option<u64>>>),
}

impl WeightsFile {
    /// Opens `path`, telling the format by its first bytes.
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        let bytes = fs::read(path)?;
        // safetensors: an 8-byte header length, then the JSON header (byte 8 of a zip archive
        // or a `torch.save` pickle is never `{`).
        if bytes.get(8) == Some(&b'{') {
            return Self::safetensors(bytes);
        }
        if bytes.starts_with(b"PK\x03\x04") {
            return Self::zip(bytes);
        }
        if bytes.starts_with(b"\x80") {
            return Self::legacy(bytes);
        }
        Err(ReadError::Invalid(
            "it is neither a PyTorch checkpoint (zip archive or pickle) nor safetensors".into(),
        ))
    }

    /// Tensor paths in file order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|(k, _)| k.as_str())
    }

    pub fn get(&self, key: &str) -> Option<&TensorInfo> {
        self.index.get(key).map(|&i| &self.tensors[i].1)
    }

    /// How many tensors the file holds.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the file holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The values of tensor `key` as float32, row-major.
    pub fn read_f32(&self, key: &str) -> Result<Vec<f32>, ReadError> {
        let info = self
            .get(key)
            .ok_or_else(|| ReadError::Invalid(format!("no tensor `{key}`")))?;
        let truncated = |what: String| ReadError::Truncated {
            size: self.bytes.len() as u64,
            what,
        };
        match &info.location {
            Location::Range(start, end) => {
                let bytes = self
                    .bytes
                    .get(*start..*end)
                    .ok_or_else(|| truncated(format!("tensor `{key}` needs bytes up to {end}")))?;
                convert(bytes, info.dtype, key)
            }
            Location::Torch(t) => {
                if t.storage_end() > t.storage.numel {
                    return Err(ReadError::Invalid(format!(
                        "tensor `{key}` reads past the end of its storage"
                    )));
                }
                let needed = t.storage_end().saturating_mul(t.storage.dtype.size());
                let data: std::borrow::Cow<'_, [u8]> = match &self.storages {
                    Storages::Zip(entries) => {
                        let name = entries.get(&t.storage.key).ok_or_else(|| {
                            ReadError::Invalid(format!(
                                "the archive has no data for tensor `{key}` (storage {})",
                                t.storage.key
                            ))
                        })?;
                        std::borrow::Cow::Owned(read_zip_entry(&self.bytes, name, key)?)
                    }
                    Storages::Legacy(starts) => match starts.get(&t.storage.key) {
                        Some(Ok((start, count))) => {
                            if t.storage_end() > *count {
                                return Err(ReadError::Invalid(format!(
                                    "tensor `{key}` reads past the {count} elements its storage has in the file"
                                )));
                            }
                            std::borrow::Cow::Borrowed(
                                self.bytes
                                    .get(*start..start.saturating_add(needed))
                                    .unwrap_or(&[]),
                            )
                        }
                        Some(Err(Some(end))) => {
                            return Err(truncated(format!(
                                "tensor `{key}` needs bytes up to {end}"
                            )));
                        }
                        Some(Err(None)) => {
                            return Err(truncated(format!("tensor `{key}` lies after the cut")));
                        }
                        None => {
                            return Err(ReadError::Invalid(format!(
                                "tensor `{key}` names storage {}, which the file does not list",
                                t.storage.key
                            )));
                        }
                    },
                    Storages::None => unreachable!("pickled tensors come with storages"),
                };
                if data.len() < needed {
                    return Err(ReadError::Invalid(format!(
                        "the data of tensor `{key}` is {} bytes, {needed} expected",
                        data.len()
                    )));
                }
                let storage = convert(&data[..needed], t.storage.dtype, key)?;
                Ok(gather(&storage, t))
            }
        }
    }

    fn new(
        kind: FileKind,
        tensors: Vec<(String, TensorInfo)>,
        bytes: Vec<u8>,
        storages: Storages,
    ) -> Self {
        let index = tensors
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
        Self {
            kind,
            tensors,
            index,
            bytes,
            storages,
        }
    }

    fn safetensors(bytes: Vec<u8>) -> Result<Self, ReadError> {
        let size = bytes.len() as u64;
        let truncated = |what: &str| ReadError::Truncated {
            size,
            what: what.to_string(),
        };
        let header_len = bytes
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
            .ok_or_else(|| truncated("its 8-byte header length is incomplete"))?;
        let header_end = 8usize.saturating_add(usize::try_from(header_len).unwrap_or(usize::MAX));
        let header = bytes
            .get(8..header_end)
            .ok_or_else(|| truncated(&format!("its header needs bytes up to {header_end}")))?;
        let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header)
            .map_err(|e| {
                ReadError::Invalid(format!("its safetensors header is not valid JSON: {e}"))
            })?;
        let mut tensors = Vec::new();
        for (name, entry) in header {
            if name == "__metadata__" {
                continue;
            }
            let invalid = || ReadError::Invalid(format!("its header entry `{name}` is malformed"));
            let dtype = match entry["dtype"].as_str().ok_or_else(invalid)? {
                "F64" => Dtype::F64,
                "F32" => Dtype::F32,
                "F16" => Dtype::F16,
                "BF16" => Dtype::Bf16,
                "I64" => Dtype::I64,
                "I32" => Dtype::I32,
                "I16" => Dtype::I16,
                "I8" => Dtype::I8,
                "U8" => Dtype::U8,
                "BOOL" => Dtype::Bool,
                other => {
                    return Err(ReadError::Invalid(format!(
                        "tensor `{name}` has dtype {other}, which lortflow cannot convert to float32"
                    )));
                }
            };
            let shape: Vec<usize> = entry["shape"]
                .as_array()
                .ok_or_else(invalid)?
                .iter()
                .map(|d| d.as_u64().map(|d| d as usize))
                .collect::<Option<_>>()
                .ok_or_else(invalid)?;
            let offsets = entry["data_offsets"].as_array().ok_or_else(invalid)?;
            let (Some(start), Some(end)) = (
                offsets.first().and_then(|v| v.as_u64()),
                offsets.get(1).and_then(|v| v.as_u64()),
            ) else {
                return Err(invalid());
            };
            let bytes_needed = shape
                .iter()
                .try_fold(dtype.size(), |n, d| n.checked_mul(*d))
                .ok_or_else(invalid)?;
            let (Some(start), Some(end)) = (
                header_end.checked_add(start as usize),
                header_end.checked_add(end as usize),
            ) else {
                return Err(invalid());
            };
            if end < start || end - start != bytes_needed {
                return Err(invalid());
            }
            tensors.push((
                name,
                TensorInfo {
                    dtype,
                    shape,
                    location: Location::Range(start, end),
                },
            ));
        }
        // The header is a JSON object, whose order serde does not keep; the data's order is the
        // file's.
        tensors.sort_by_key(|(_, t)| match t.location {
            Location::Range(start, _) => start,
            Location::Torch(_) => 0,
        });
        Ok(Self::new(
            FileKind::Safetensors,
            tensors,
            bytes,
            Storages::None,
        ))
    }

    fn zip(bytes: Vec<u8>) -> Result<Self, ReadError> {
        let size = bytes.len() as u64;
        let mut archive =
            zip::ZipArchive::new(std::io::Cursor::new(bytes.as_slice())).map_err(|e| {
                match e {
                    // The directory of a zip archive is its last part: a cut file has none.
                    zip::result::ZipError::InvalidArchive(_) => ReadError::Truncated {
                        size,
                        what: "the zip archive's directory, which is at its end, is missing".into(),
                    },
                    other => {
                        ReadError::Invalid(format!("it is not a readable zip archive: {other}"))
                    }
                }
            })?;
        let pickle_name = archive
            .file_names()
            .find(|n| n.ends_with("data.pkl"))
            .map(str::to_string)
            .ok_or_else(|| {
                ReadError::Invalid(
                    "the zip archive has no `data.pkl`: it was not written by `torch.save`".into(),
                )
            })?;
        let prefix = pickle_name.trim_end_matches("data.pkl").to_string();
        if let Ok(mut order) = archive.by_name(&format!("{prefix}byteorder")) {
            let mut text = String::new();
            let _ = order.read_to_string(&mut text);
            if text.trim() == "big" {
                return Err(ReadError::Invalid(
                    "it was saved on a big-endian machine, which lortflow does not read".into(),
                ));
            }
        }
        let entries: HashMap<String, String> = archive
            .file_names()
            .filter_map(|n| {
                n.strip_prefix(&format!("{prefix}data/"))
                    .map(|key| (key.to_string(), n.to_string()))
            })
            .collect();
        drop(archive);
        let pickle = read_zip_entry(&bytes, &pickle_name, "data.pkl")?;
        let (root, _) = pickle::read(&pickle)
            .map_err(|e| ReadError::Invalid(format!("its `data.pkl` is damaged: {e}")))?;
        let tensors = flatten(root)?;
        Ok(Self::new(
            FileKind::TorchZip,
            tensors,
            bytes,
            Storages::Zip(entries),
        ))
    }

    /// Magic number, protocol version, system info, the object, the storage keys, then each
    /// storage as an 8-byte element count and its elements.
    fn legacy(bytes: Vec<u8>) -> Result<Self, ReadError> {
        let size = bytes.len() as u64;
        let damaged = |part: &str, e: pickle::PickleError| match e {
            pickle::PickleError::Truncated(_) => ReadError::Truncated {
                size,
                what: format!("its {part} is incomplete"),
            },
            other => ReadError::Invalid(format!("its {part} is damaged: {other}")),
        };
        let mut pos = 0;
        // Each part is one pickle after the other; the object's also lists every storage.
        let mut next = |part: &str| -> Result<(Value, Vec<pickle::StorageRef>), ReadError> {
            let (value, used, storages) =
                pickle::read_with_storages(&bytes[pos..]).map_err(|e| damaged(part, e))?;
            pos += used;
            Ok((value, storages))
        };
        // 0x1950a86a20f9469cfc6c, little-endian: what `torch.save` writes first.
        const MAGIC: &[u8] = b"\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";
        if next("magic number")?.0 != Value::BigInt(MAGIC.to_vec()) {
            return Err(ReadError::Invalid(
                "it is a pickle but not one written by `torch.save`".into(),
            ));
        }
        next("protocol version")?;
        next("system info")?;
        let (root, storages) = next("object")?;
        let keys = match next("storage list")?.0 {
            Value::List(keys) => keys
                .into_iter()
                .map(|k| match k {
                    Value::Str(s) => Ok(s),
                    _ => Err(ReadError::Invalid(
                        "its storage list is not a list of keys".into(),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => return Err(ReadError::Invalid("its storage list is missing".into())),
        };
        let tensors = flatten(root)?;
        // Element sizes come from the persistent ids that name each storage.
        let dtypes: HashMap<&str, Dtype> =
            storages.iter().map(|s| (s.key.as_str(), s.dtype)).collect();
        let mut starts = HashMap::new();
        let mut at = Some(pos);
        for key in &keys {
            let Some(dtype) = dtypes.get(key.as_str()) else {
                // A storage nothing names (it has no size we know); nothing after it is usable.
                break;
            };
            let Some(here) = at else {
                starts.insert(key.clone(), Err(None));
                continue;
            };
            let data_start = here.saturating_add(8);
            let Some(count) = bytes.get(here..data_start) else {
                starts.insert(key.clone(), Err(Some(data_start as u64)));
                at = None;
                continue;
            };
            let count = usize::try_from(u64::from_le_bytes(count.try_into().unwrap()))
                .unwrap_or(usize::MAX);
            let end = count
                .checked_mul(dtype.size())
                .and_then(|n| data_start.checked_add(n));
            match end {
                Some(end) if end <= bytes.len() => {
                    starts.insert(key.clone(), Ok((data_start, count)));
                    at = Some(end);
                }
                _ => {
                    let needed = end.map_or(u64::MAX, |e| e as u64);
                    starts.insert(key.clone(), Err(Some(needed)));
                    at = None;
                }
            }
        }
        Ok(Self::new(
            FileKind::TorchLegacy,
            tensors,
            bytes,
            Storages::Legacy(starts),
        ))
    }
}

fn read_zip_entry(bytes: &[u8], name: &str, tensor: &str) -> Result<Vec<u8>, ReadError> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| ReadError::Invalid(format!("it is not a readable zip archive: {e}")))?;
    let mut entry = archive
        .by_name(name)
        .map_err(|e| ReadError::Invalid(format!("cannot find `{name}` in the archive: {e}")))?;
    // The entry's size is the file's claim: never allocate more than the file could hold.
    let mut data = Vec::with_capacity((entry.size() as usize).min(bytes.len()));
    // The zip reader checks the entry's CRC at its end: damaged bytes are an error here.
    entry.read_to_end(&mut data).map_err(|e| {
        ReadError::Invalid(format!("the data of `{tensor}` (`{name}`) is damaged: {e}"))
    })?;
    Ok(data)
}

/// Every tensor under the root, by dotted path (dict keys and list indices).
fn flatten(root: Value) -> Result<Vec<(String, TensorInfo)>, ReadError> {
    if let Value::Object { class, .. } = &root {
        let class = match class.as_ref() {
            Value::Global(module, name) => format!("{module}.{name}"),
            _ => "an object".into(),
        };
        return Err(ReadError::Invalid(format!(
            "it holds a pickled `{class}`, not a state dict: in PyTorch, load it and save \
             `model.state_dict()` instead"
        )));
    }
    let mut out = Vec::new();
    walk(root, String::new(), &mut out);
    Ok(out)
}

fn walk(value: Value, path: String, out: &mut Vec<(String, TensorInfo)>) {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        Value::Dict(items) => {
            for (key, value) in items {
                let key = match key {
                    Value::Str(s) => s,
                    Value::Int(i) => i.to_string(),
                    _ => continue,
                };
                walk(value, join(&key), out);
            }
        }
        Value::List(items) | Value::Tuple(items) => {
            for (i, value) in items.into_iter().enumerate() {
                walk(value, join(&i.to_string()), out);
            }
        }
        Value::Tensor(t) => out.push((
            path,
            TensorInfo {
                dtype: t.storage.dtype,
                shape: t.shape.clone(),
                location: Location::Torch(t),
            },
        )),
        _ => {}
    }
}

/// Little-endian elements of `dtype` as float32.
fn convert(bytes: &[u8], dtype: Dtype, key: &str) -> Result<Vec<f32>, ReadError> {
    let chunks = |n| bytes.chunks_exact(n);
    Ok(match dtype {
        Dtype::F32 => chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Dtype::F64 => chunks(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
            .collect(),
        Dtype::F16 => chunks(2)
            .map(|b| half::f16::from_le_bytes(b.try_into().unwrap()).to_f32())
            .collect(),
        Dtype::Bf16 => chunks(2)
            .map(|b| half::bf16::from_le_bytes(b.try_into().unwrap()).to_f32())
            .collect(),
        _ => {
            return Err(ReadError::Invalid(format!(
                "tensor `{key}` holds {} values where weights (floats) are expected",
                dtype.name()
            )));
        }
    })
}

/// The elements of the view `t` of `storage`, row-major.
fn gather(storage: &[f32], t: &TensorRef) -> Vec<f32> {
    let numel = t.numel();
    let contiguous = {
        let mut expected = 1;
        let mut ok = true;
        for (n, s) in t.shape.iter().zip(&t.stride).rev() {
            if *n != 1 && *s != expected {
                ok = false;
            }
            expected *= n;
        }
        ok
    };
    if contiguous {
        return storage[t.offset..t.offset + numel].to_vec();
    }
    let mut out = Vec::with_capacity(numel);
    let mut index = vec![0usize; t.shape.len()];
    for _ in 0..numel {
        let at = t.offset
            + index
                .iter()
                .zip(&t.stride)
                .map(|(i, s)| i * s)
                .sum::<usize>();
        out.push(storage[at]);
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < t.shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathers_a_transposed_view() {
        // A 2x3 matrix stored column-major (the transpose of a contiguous 3x2).
        let storage = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
        let t = TensorRef {
            storage: StorageRef {
                key: "0".into(),
                dtype: Dtype::F32,
                numel: 6,
            },
            offset: 0,
            shape: vec![2, 3],
            stride: vec![1, 2],
        };
        assert_eq!(gather(&storage, &t), vec![0.0, 2.0, 4.0, 1.0, 3.0, 5.0]);
    }

    #[test]
    fn converts_half_precision_and_doubles() {
        let f16: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        assert_eq!(convert(&f16, Dtype::F16, "x").unwrap(), vec![1.5, -2.0]);
        let bf16: Vec<u8> = half::bf16::from_f32(3.0).to_le_bytes().to_vec();
        assert_eq!(convert(&bf16, Dtype::Bf16, "x").unwrap(), vec![3.0]);
        let f64: Vec<u8> = 0.25f64.to_le_bytes().to_vec();
        assert_eq!(convert(&f64, Dtype::F64, "x").unwrap(), vec![0.25]);
        assert!(convert(&[0; 8], Dtype::I64, "x").is_err());
    }

    #[test]
    fn a_pickled_module_is_not_a_state_dict() {
        let root = Value::Object {
            class: Box::new(Value::Global("models.resnet".into(), "ResNet".into())),
            args: Box::new(Value::Tuple(vec![])),
            state: None,
        };
        let err = flatten(root).unwrap_err().to_string();
        assert!(
            err.contains("`models.resnet.ResNet`") && err.contains("state_dict()"),
            "{err}"
        );
    }
}
