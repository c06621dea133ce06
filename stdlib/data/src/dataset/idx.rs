//! Reader for the IDX format of MNIST and Fashion-MNIST, plain or gzip-compressed.
//!
//! An IDX file is a big-endian header — two zero bytes, a type byte (`0x08` = unsigned byte), the
//! number of dimensions, then one `u32` per dimension — followed by the data. Images are
//! `0x00000803` (`N×H×W`), labels `0x00000801` (`N`). Compression is detected from the gzip magic
//! `1f 8b`, not from the file name, because renamed and half-unpacked downloads are common.
//!
//! The header is read first and the body is then read with exactly the size it declares, so a
//! header that lies about its size is reported as truncated or as having trailing data (with
//! expected and actual byte counts) instead of allocating what it claims or being cut silently.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use super::base::ImageTensorU8;
use super::error::DatasetError;

/// Magic number of an IDX file of unsigned-byte images (`N×H×W`).
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned-byte labels (`N`).
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Reads an IDX image file (`0x00000803`, gzip or plain) into an `N×1×H×W` tensor.
pub fn read_idx_images(path: &Path) -> Result<ImageTensorU8, DatasetError> {
    let mut stream = IdxStream::open(path)?;
    let dims = stream.read_header("images", IDX_IMAGES_MAGIC, 3)?;
    let [len, height, width] = [dims[0], dims[1], dims[2]];
    for (name, value, offset) in [("height", height, 8), ("width", width, 12)] {
        if value == 0 {
            return Err(DatasetError::ZeroDimension {
                path: path.to_owned(),
                name,
                offset,
            });
        }
    }
    let body_len = u64::from(len)
        .checked_mul(u64::from(height))
        .and_then(|v| v.checked_mul(u64::from(width)))
        .ok_or_else(|| DatasetError::HeaderOverflow {
            path: path.to_owned(),
            dims: dims.clone(),
        })?;
    let pixels = stream.read_body(
        body_len,
        &dims,
        format!("16-byte header + {len} images of {height}x{width}"),
    )?;
    tracing::debug!(path = %path.display(), len, height, width, "read IDX images");
    // The conversions cannot fail: `read_body` only returns once `body_len` bytes, a `usize`
    // quantity, are in memory.
    ImageTensorU8::new(len as usize, 1, height as usize, width as usize, pixels)
}

/// Reads an IDX label file (`0x00000801`, gzip or plain) as raw bytes, one per item.
///
/// The range of the labels is not checked here, since the number of classes is a property of the
/// dataset, not of the format; see [`load_mnist_like`](super::load_mnist_like).
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>, DatasetError> {
    let mut stream = IdxStream::open(path)?;
    let dims = stream.read_header("labels", IDX_LABELS_MAGIC, 1)?;
    let labels = stream.read_body(
        u64::from(dims[0]),
        &dims,
        format!("8-byte header + {} labels", dims[0]),
    )?;
    tracing::debug!(path = %path.display(), len = labels.len(), "read IDX labels");
    Ok(labels)
}

/// Byte offset of label `index` in a label file (after the 8-byte header), for error messages.
pub(crate) fn label_offset(index: usize) -> u64 {
    8 + index as u64
}

enum Source {
    Plain(File),
    // `MultiGzDecoder` rather than `GzDecoder`: a concatenation of gzip members is a valid gzip
    // file (what `cat a.gz b.gz` or some archivers produce), and `GzDecoder` would stop after the
    // first member and make the file look truncated.
    Gzip(Box<MultiGzDecoder<File>>),
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::Plain(file) => file.read(buf),
            Source::Gzip(decoder) => decoder.read(buf),
        }
    }
}

/// A decompressed view of one IDX file that tracks the offset reached, for error messages.
struct IdxStream<'a> {
    path: &'a Path,
    source: Source,
    /// Bytes of the (decompressed) file consumed so far.
    offset: u64,
    /// Upper bound for pre-allocating the body: the file size for plain files. Compressed files
    /// get no hint, because a lying header must not make us reserve gigabytes up front.
    size_hint: Option<u64>,
}

impl<'a> IdxStream<'a> {
    fn open(path: &'a Path) -> Result<Self, DatasetError> {
        let io_error = |source| DatasetError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(io_error)?;
        let file_len = file.metadata().map_err(io_error)?.len();
        let mut magic = [0; 2];
        let n = read_full(&mut file, &mut magic).map_err(io_error)?;
        file.seek(SeekFrom::Start(0)).map_err(io_error)?;
        let (source, size_hint) = if n == 2 && magic == GZIP_MAGIC {
            (Source::Gzip(Box::new(MultiGzDecoder::new(file))), None)
        } else {
            (Source::Plain(file), Some(file_len))
        };
        Ok(Self {
            path,
            source,
            offset: 0,
            size_hint,
        })
    }

    fn unit(&self) -> &'static str {
        match self.source {
            Source::Plain(_) => "bytes",
            Source::Gzip(_) => "decompressed bytes",
        }
    }

    fn read_error(&self, source: io::Error) -> DatasetError {
        match self.source {
            Source::Plain(_) => DatasetError::Io {
                path: self.path.to_owned(),
                source,
            },
            Source::Gzip(_) => DatasetError::Gzip {
                path: self.path.to_owned(),
                offset: self.offset,
                source,
            },
        }
    }

    /// Fills `buf` as far as the stream allows and returns how much was read.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, DatasetError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.source.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => {
                    filled += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.read_error(e)),
            }
        }
        Ok(filled)
    }

    /// Reads and checks the magic number, then returns the `ndims` dimensions.
    fn read_header(
        &mut self,
        kind: &'static str,
        expected_magic: u32,
        ndims: usize,
    ) -> Result<Vec<u32>, DatasetError> {
        let header_len = 4 + 4 * ndims;
        let mut header = vec![0; header_len];
        let got = self.read_full(&mut header[..4])?;
        // A short file is named truncated only when what it has is a prefix of the right magic;
        // otherwise it is simply not this kind of file.
        let magic_bytes = expected_magic.to_be_bytes();
        if got < 4 && header[..got] == magic_bytes[..got] {
            return Err(self.truncated(
                header_len as u64,
                got as u64,
                format!("IDX {kind} header"),
            ));
        }
        let found = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        if got < 4 || found != expected_magic {
            return Err(DatasetError::BadMagic {
                path: self.path.to_owned(),
                kind,
                found,
                expected: expected_magic,
            });
        }
        let got = 4 + self.read_full(&mut header[4..])?;
        if got < header_len {
            return Err(self.truncated(
                header_len as u64,
                got as u64,
                format!("IDX {kind} header"),
            ));
        }
        Ok(header[4..]
            .chunks_exact(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// Reads exactly `body_len` bytes and checks that nothing follows them.
    fn read_body(
        &mut self,
        body_len: u64,
        dims: &[u32],
        what: String,
    ) -> Result<Vec<u8>, DatasetError> {
        let header_len = self.offset;
        let expected = header_len + body_len;
        let capacity = match self.size_hint {
            Some(file_len) => body_len.min(file_len),
            None => 0,
        };
        if usize::try_from(body_len).is_err() {
            return Err(DatasetError::HeaderOverflow {
                path: self.path.to_owned(),
                dims: dims.to_vec(),
            });
        }
        let mut body = Vec::with_capacity(capacity as usize);
        let result = (&mut self.source).take(body_len).read_to_end(&mut body);
        // On error `read_to_end` keeps what it read, so the offset stays exact.
        self.offset += body.len() as u64;
        result.map_err(|e| self.read_error(e))?;
        if (body.len() as u64) < body_len {
            return Err(self.truncated(expected, self.offset, what));
        }
        let trailing =
            io::copy(&mut self.source, &mut io::sink()).map_err(|e| self.read_error(e))?;
        if trailing > 0 {
            return Err(DatasetError::TrailingBytes {
                path: self.path.to_owned(),
                what,
                expected,
                actual: expected + trailing,
                unit: self.unit(),
            });
        }
        Ok(body)
    }

    fn truncated(&self, expected: u64, actual: u64, what: String) -> DatasetError {
        DatasetError::Truncated {
            path: self.path.to_owned(),
            what,
            expected,
            actual,
            unit: self.unit(),
        }
    }
}

fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Returns the first of `names` (joined to `root`) that exists, or an error listing them all.
pub(crate) fn find_file(
    root: &Path,
    names: &[String],
    what: &str,
) -> Result<PathBuf, DatasetError> {
    let candidates: Vec<PathBuf> = names.iter().map(|n| root.join(n)).collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| DatasetError::NotFound {
            what: what.to_owned(),
            root: root.to_owned(),
            candidates,
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::GzEncoder;

    use super::*;

    /// An IDX image file of `n` images of `h×w`, pixel `k` of the body equal to `k mod 251`.
    pub(crate) fn idx_images(n: u32, h: u32, w: u32) -> Vec<u8> {
        let mut bytes = IDX_IMAGES_MAGIC.to_be_bytes().to_vec();
        for d in [n, h, w] {
            bytes.extend(d.to_be_bytes());
        }
        bytes.extend((0..n * h * w).map(|k| (k % 251) as u8));
        bytes
    }

    pub(crate) fn idx_labels(labels: &[u8]) -> Vec<u8> {
        let mut bytes = IDX_LABELS_MAGIC.to_be_bytes().to_vec();
        bytes.extend((labels.len() as u32).to_be_bytes());
        bytes.extend(labels);
        bytes
    }

    pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Writes `bytes` and returns the error message of reading them as images.
    fn images_error(bytes: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "x-idx3-ubyte", bytes);
        let err = read_idx_images(&path).unwrap_err();
        err.to_string()
            .replace(&dir.path().display().to_string(), "<tmp>")
    }

    #[test]
    fn reads_plain_and_gzip_images_alike() {
        let dir = tempfile::tempdir().unwrap();
        let raw = idx_images(3, 2, 4);
        let plain = read_idx_images(&write(&dir, "a", &raw)).unwrap();
        let packed = read_idx_images(&write(&dir, "b.gz", &gzip(&raw))).unwrap();
        assert_eq!(plain, packed);
        assert_eq!(plain.shape(), [3, 1, 2, 4]);
        assert_eq!(plain.image(1).unwrap(), &[8, 9, 10, 11, 12, 13, 14, 15]);
    }

    #[test]
    fn reads_labels_and_concatenated_gzip_members() {
        let dir = tempfile::tempdir().unwrap();
        let raw = idx_labels(&[3, 1, 4, 1, 5]);
        let (head, tail) = raw.split_at(6);
        let two_members = [gzip(head), gzip(tail)].concat();
        let path = write(&dir, "labels.gz", &two_members);
        assert_eq!(read_idx_labels(&path).unwrap(), vec![3, 1, 4, 1, 5]);
    }

    #[test]
    fn wrong_magic_names_the_file_and_the_magic() {
        assert_eq!(
            images_error(&idx_labels(&[1, 2])),
            "`<tmp>/x-idx3-ubyte` is not an IDX images file: magic number at byte 0 is 0x00000801, expected 0x00000803"
        );
        assert!(images_error(b"PK\x03").contains("magic number at byte 0 is 0x504b0300"));
    }

    #[test]
    fn truncated_body_reports_expected_and_actual_bytes() {
        let mut raw = idx_images(3, 2, 2);
        raw.truncate(raw.len() - 5);
        assert_eq!(
            images_error(&raw),
            "`<tmp>/x-idx3-ubyte` is truncated: expected 28 bytes (16-byte header + 3 images of 2x2), found 23"
        );
    }

    #[test]
    fn truncated_gzip_content_counts_decompressed_bytes() {
        let mut raw = idx_images(3, 2, 2);
        raw.truncate(raw.len() - 1);
        assert!(images_error(&gzip(&raw)).ends_with(
            "expected 28 decompressed bytes (16-byte header + 3 images of 2x2), found 27"
        ),);
    }

    #[test]
    fn truncated_header_is_reported_as_such() {
        assert_eq!(
            images_error(&idx_images(1, 2, 2)[..10]),
            "`<tmp>/x-idx3-ubyte` is truncated: expected 16 bytes (IDX images header), found 10"
        );
        assert!(images_error(&[0, 0]).contains("expected 16 bytes (IDX images header), found 2"));
    }

    #[test]
    fn cut_gzip_stream_reports_the_offset() {
        let packed = gzip(&idx_images(50, 8, 8));
        let message = images_error(&packed[..packed.len() / 2]);
        assert!(
            message.starts_with("cannot decompress `<tmp>/x-idx3-ubyte`: gzip stream broken after"),
            "{message}"
        );
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut raw = idx_images(1, 2, 2);
        raw.extend([0; 3]);
        assert!(images_error(&raw).ends_with(
            "has trailing data: expected 20 bytes (16-byte header + 1 images of 2x2), found 23"
        ));
    }

    #[test]
    fn zero_dimension_and_huge_header_do_not_allocate() {
        let mut raw = idx_images(1, 2, 2);
        raw[8..12].copy_from_slice(&0u32.to_be_bytes());
        assert!(images_error(&raw).ends_with("declares a zero height at byte 8"));
        // A header that claims 4G images of 64Kx64K must fail on the size check, not on allocation.
        let mut raw = IDX_IMAGES_MAGIC.to_be_bytes().to_vec();
        for d in [u32::MAX, 65_536, 65_536] {
            raw.extend(d.to_be_bytes());
        }
        let message = images_error(&raw);
        assert!(
            message.contains("overflows") || message.contains("truncated"),
            "{message}"
        );
    }

    #[test]
    fn mutated_files_never_panic() {
        // Random truncations and byte changes of valid files, plain and gzip: every outcome must be
        // `Ok` or `Err`, never a panic or an attempt to allocate what a corrupt header claims.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fuzz");
        let mut rng = crate::dataset::Rng::seed_from_u64(11);
        let originals = [idx_images(4, 3, 5), idx_labels(&[0, 1, 2, 250])];
        for round in 0..400 {
            let mut bytes = originals[round % 2].clone();
            if round % 4 >= 2 {
                bytes = gzip(&bytes);
            }
            for _ in 0..=rng.below(3) {
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] = rng.below(256) as u8;
            }
            bytes.truncate(rng.below(bytes.len() as u64 + 1) as usize);
            std::fs::write(&path, &bytes).unwrap();
            let _ = read_idx_images(&path);
            let _ = read_idx_labels(&path);
        }
    }

    #[test]
    fn missing_file_is_an_io_error_naming_it() {
        let err = read_idx_labels(Path::new("/nonexistent/labels")).unwrap_err();
        assert_eq!(err.to_string(), "cannot read `/nonexistent/labels`");
    }
}
