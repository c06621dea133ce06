//! The packed split: one file holding a split's images still encoded, with an index, read through a
//! memory map so that an epoch touches the pages it needs and the process holds none of it.
//!
//! Layout (little-endian):
//!
//! ```text
//! "LFPACK01"                          8 bytes
//! image bytes, back to back           (each record's `offset`/`len` points into this)
//! records, 32 bytes each:             offset u64, len u32, label u32, width u32, height u32,
//!                                     row u32 (where the source named it), format u8, flags u8,
//!                                     2 bytes zero
//! footer, 32 bytes:                   records' offset u64, count u64, classes u64, "LFPACKIX"
//! ```
//!
//! The index sits at the end so that the writer streams images straight to disk without knowing
//! their sizes ahead. A file that lacks its footer (a pack stopped halfway) does not open, and the
//! writer only ever gives the finished file its final name.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::decode::ImageFormat;

const MAGIC: &[u8; 8] = b"LFPACK01";
const FOOTER_MAGIC: &[u8; 8] = b"LFPACKIX";
const RECORD_LEN: usize = 32;
const FOOTER_LEN: usize = 32;

/// Record flag: the stored bytes were re-encoded (the original's longer side exceeded the cap).
pub const FLAG_REENCODED: u8 = 1;

/// One image of a pack: where its bytes are and what they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackRecord {
    /// Byte offset of the encoded image in the file.
    pub offset: u64,
    /// Length of the encoded image.
    pub len: u32,
    /// Class label.
    pub label: u32,
    /// Width of the original image (before any re-encoding).
    pub width: u32,
    /// Height of the original image.
    pub height: u32,
    /// Where the source named it: the list line (from 1) or the JSON entry (from 0).
    pub row: u32,
    /// The stored container.
    pub format: ImageFormat,
    /// [`FLAG_REENCODED`] or 0.
    pub flags: u8,
}

/// An error reading or writing a pack.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    /// A file operation failed.
    #[error("cannot {action} `{path}`")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a complete pack.
    #[error(
        "`{path}` is not a complete image pack: {problem}; delete it and run the dataset stage again"
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PackError + use<> {
    let path = path.to_owned();
    move |source| PackError::Io {
        action,
        path,
        source,
    }
}

/// Writes a pack: images in the order they will be read, then [`finish`](Self::finish).
///
/// The data goes to `<path>.partial`, renamed to `path` only by `finish`: a writer dropped
/// halfway (an error, a panic, Ctrl-C) leaves no file under the final name.
pub struct PackWriter {
    path: PathBuf,
    partial: PathBuf,
    out: Option<BufWriter<File>>,
    offset: u64,
    records: Vec<PackRecord>,
    finished: bool,
}

impl PackWriter {
    /// Starts a pack at `path`.
    pub fn create(path: &Path) -> Result<Self, PackError> {
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let file = File::create(&partial).map_err(io("create", &partial))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(MAGIC).map_err(io("write", &partial))?;
        Ok(Self {
            path: path.to_owned(),
            partial,
            out: Some(out),
            offset: MAGIC.len() as u64,
            records: Vec::new(),
            finished: false,
        })
    }

    /// Appends one encoded image.
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        bytes: &[u8],
        format: ImageFormat,
        label: u32,
        (width, height): (u32, u32),
        row: u32,
        flags: u8,
    ) -> Result<(), PackError> {
        let len = u32::try_from(bytes.len()).map_err(|_| PackError::Invalid {
            path: self.partial.clone(),
            problem: format!(
                "an image of {} bytes does not fit a 4 GiB record",
                bytes.len()
            ),
        })?;
        self.writer()
            .write_all(bytes)
            .map_err(io("write", &self.partial))?;
        self.records.push(PackRecord {
            offset: self.offset,
            len,
            label,
            width,
            height,
            row,
            format,
            flags,
        });
        self.offset += u64::from(len);
        Ok(())
    }

    fn writer(&mut self) -> &mut BufWriter<File> {
        self.out.as_mut().expect("open until finish")
    }

    /// Images written so far.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Writes the index, syncs and gives the file its final name; returns its size in bytes.
    pub fn finish(mut self, num_classes: usize) -> Result<u64, PackError> {
        let index_offset = self.offset;
        for r in &self.records {
            let mut rec = [0u8; RECORD_LEN];
            rec[0..8].copy_from_slice(&r.offset.to_le_bytes());
            rec[8..12].copy_from_slice(&r.len.to_le_bytes());
            rec[12..16].copy_from_slice(&r.label.to_le_bytes());
            rec[16..20].copy_from_slice(&r.width.to_le_bytes());
            rec[20..24].copy_from_slice(&r.height.to_le_bytes());
            rec[24..28].copy_from_slice(&r.row.to_le_bytes());
            rec[28] = r.format.code();
            rec[29] = r.flags;
            let out = self.out.as_mut().expect("open until finish");
            out.write_all(&rec).map_err(io("write", &self.partial))?;
        }
        let mut footer = [0u8; FOOTER_LEN];
        footer[0..8].copy_from_slice(&index_offset.to_le_bytes());
        footer[8..16].copy_from_slice(&(self.records.len() as u64).to_le_bytes());
        footer[16..24].copy_from_slice(&(num_classes as u64).to_le_bytes());
        footer[24..32].copy_from_slice(FOOTER_MAGIC);
        let mut out = self.out.take().expect("open until finish");
        out.write_all(&footer).map_err(io("write", &self.partial))?;
        let file = out
            .into_inner()
            .map_err(|e| io("write", &self.partial)(e.into_error()))?;
        file.sync_all().map_err(io("sync", &self.partial))?;
        std::fs::rename(&self.partial, &self.path).map_err(io("rename", &self.partial))?;
        self.finished = true;
        Ok(index_offset + (self.records.len() * RECORD_LEN + FOOTER_LEN) as u64)
    }
}

impl Drop for PackWriter {
    fn drop(&mut self) {
        if !self.finished {
            drop(self.out.take());
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

/// A finished pack, memory-mapped.
pub struct PackedImages {
    path: PathBuf,
    map: Mmap,
    records: Vec<PackRecord>,
    labels: Vec<u32>,
    num_classes: usize,
}

impl std::fmt::Debug for PackedImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedImages")
            .field("path", &self.path)
            .field("len", &self.records.len())
            .finish_non_exhaustive()
    }
}

impl PackedImages {
    /// Opens and checks a pack: magic, footer, every record inside the image area.
    pub fn open(path: &Path) -> Result<Self, PackError> {
        let file = File::open(path).map_err(io("open", path))?;
        // SAFETY: the pack is an artifact of the store, written once and never modified in place;
        // a file truncated under us would fault, which is the same contract as every mmap reader.
        #[allow(unsafe_code)]
        let map = unsafe { Mmap::map(&file) }.map_err(io("map", path))?;
        let invalid = |problem: String| PackError::Invalid {
            path: path.to_owned(),
            problem,
        };
        if map.len() < MAGIC.len() + FOOTER_LEN || &map[..8] != MAGIC {
            return Err(invalid("it does not start with the pack signature".into()));
        }
        let footer = &map[map.len() - FOOTER_LEN..];
        if &footer[24..32] != FOOTER_MAGIC {
            return Err(invalid(
                "it has no index (the pack was stopped halfway)".into(),
            ));
        }
        let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let index_offset = u64_at(footer, 0);
        let count = u64_at(footer, 8);
        let num_classes = u64_at(footer, 16) as usize;
        let index_end = (map.len() - FOOTER_LEN) as u64;
        if count
            .checked_mul(RECORD_LEN as u64)
            .and_then(|n| index_offset.checked_add(n))
            != Some(index_end)
        {
            return Err(invalid(format!(
                "its index of {count} records does not end where the footer starts"
            )));
        }
        let mut records = Vec::with_capacity(count as usize);
        let index = &map[index_offset as usize..index_end as usize];
        for (i, rec) in index.chunks_exact(RECORD_LEN).enumerate() {
            let record = PackRecord {
                offset: u64_at(rec, 0),
                len: u32_at(rec, 8),
                label: u32_at(rec, 12),
                width: u32_at(rec, 16),
                height: u32_at(rec, 20),
                row: u32_at(rec, 24),
                format: ImageFormat::from_code(rec[28])
                    .ok_or_else(|| invalid(format!("record {i} has unknown format {}", rec[28])))?,
                flags: rec[29],
            };
            if record.offset < MAGIC.len() as u64
                || record
                    .offset
                    .checked_add(u64::from(record.len))
                    .is_none_or(|end| end > index_offset)
            {
                return Err(invalid(format!("record {i} points outside the image area")));
            }
            if record.label as usize >= num_classes {
                return Err(invalid(format!(
                    "record {i} has label {}, but the pack has {num_classes} classes",
                    record.label
                )));
            }
            records.push(record);
        }
        let labels = records.iter().map(|r| r.label).collect();
        Ok(Self {
            path: path.to_owned(),
            map,
            records,
            labels,
            num_classes,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the pack holds no image.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Number of classes of the dataset.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// One label per image.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// The record of image `i`.
    pub fn record(&self, i: usize) -> Option<&PackRecord> {
        self.records.get(i)
    }

    /// The encoded bytes of image `i`.
    pub fn bytes(&self, i: usize) -> Option<&[u8]> {
        let r = self.records.get(i)?;
        Some(&self.map[r.offset as usize..(r.offset + u64::from(r.len)) as usize])
    }

    /// Size of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.map.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pack_reads_back_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.pack");
        let mut writer = PackWriter::create(&path).unwrap();
        writer
            .push(b"\xFF\xD8\xFFone", ImageFormat::Jpeg, 1, (10, 20), 3, 0)
            .unwrap();
        writer
            .push(
                b"\x89PNGtwo!",
                ImageFormat::Png,
                0,
                (5, 6),
                4,
                FLAG_REENCODED,
            )
            .unwrap();
        assert!(!path.exists(), "no final name before finish");
        let size = writer.finish(2).unwrap();
        let pack = PackedImages::open(&path).unwrap();
        assert_eq!(pack.file_len(), size);
        assert_eq!(pack.len(), 2);
        assert_eq!(pack.labels(), [1, 0]);
        assert_eq!(pack.bytes(0).unwrap(), b"\xFF\xD8\xFFone");
        assert_eq!(pack.bytes(1).unwrap(), b"\x89PNGtwo!");
        let r = pack.record(1).unwrap();
        assert_eq!(
            (r.width, r.height, r.row, r.format, r.flags),
            (5, 6, 4, ImageFormat::Png, 1)
        );
        assert!(pack.bytes(2).is_none());
    }

    #[test]
    fn an_unfinished_or_damaged_pack_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.pack");
        {
            let mut writer = PackWriter::create(&path).unwrap();
            writer
                .push(b"abc", ImageFormat::Jpeg, 0, (1, 1), 1, 0)
                .unwrap();
            // Dropped without finish: as a failed or interrupted pack.
        }
        assert!(!path.exists());
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "partial removed"
        );
        let mut writer = PackWriter::create(&path).unwrap();
        writer
            .push(b"abc", ImageFormat::Jpeg, 0, (1, 1), 1, 0)
            .unwrap();
        writer.finish(1).unwrap();
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 5]).unwrap();
        let err = PackedImages::open(&path).unwrap_err().to_string();
        assert!(err.contains("has no index"), "{err}");
        let mut bad = full.clone();
        let at = full.len() - FOOTER_LEN - RECORD_LEN;
        bad[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&path, &bad).unwrap();
        let err = PackedImages::open(&path).unwrap_err().to_string();
        assert!(err.contains("outside the image area"), "{err}");
    }
}
