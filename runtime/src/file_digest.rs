//! Content digests of external files (datasets, checkpoints) that stages read, cached by file
//! metadata.
//!
//! External files feed cache keys, so they must be hashed by content: a dataset replaced in
//! place must invalidate everything built from it. Hashing gigabytes on every `run` or `status`
//! would blow the orchestration budget, so [`FileDigestCache`] remembers each file's digest
//! together with its size, modification time (ns) and, on Unix, inode and change time, and only
//! re-hashes a file when one of those changed. The cache persists as JSON at a path the caller
//! chooses (normally `.lortflow/file-digests.json`); a missing or corrupt cache file just means
//! everything is hashed again.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::{self, Metadata};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::fsutil;

/// Version of the persisted cache format; a file with another version is ignored and rebuilt.
const CACHE_FORMAT: u32 = 1;

/// Domain-separation prefix for directory digests, versioned like the cache-key encoding.
const DIR_FORMAT: &str = "lortflow.dir-digest.v1";

/// How long after a file's modification time its cached digest is still distrusted.
///
/// Filesystem timestamps are coarse (often a few milliseconds), so a file rewritten with the same
/// size just after being hashed can keep the recorded mtime. Like git's "racy clean" check, a
/// digest is only reused when the file had been quiet for this long before it was hashed; a file
/// hashed too soon after a write is simply hashed again next time.
const RACY_WINDOW_NS: i64 = 2_000_000_000;

/// The blake3 content digest and size of an external file or directory.
///
/// For a directory, the digest covers the sorted list of its files (path relative to the
/// directory, content digest, size), and the size is the total of its files' sizes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "FileDigestRepr", into = "FileDigestRepr")]
pub struct FileDigest {
    hash: blake3::Hash,
    size: u64,
}

impl FileDigest {
    /// The blake3 digest as 64 lowercase hex digits.
    pub fn hex(&self) -> String {
        self.hash.to_hex().to_string()
    }

    /// Size in bytes (the total over all files for a directory).
    pub fn size(&self) -> u64 {
        self.size
    }

    pub(crate) fn from_parts(hash: blake3::Hash, size: u64) -> Self {
        Self { hash, size }
    }
}

impl fmt::Display for FileDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hash.to_hex())
    }
}

/// How a [`FileDigest`] looks in JSON: `{"blake3": "<64 hex>", "size": 123}`.
#[derive(Serialize, Deserialize)]
struct FileDigestRepr {
    blake3: String,
    size: u64,
}

impl TryFrom<FileDigestRepr> for FileDigest {
    type Error = String;

    fn try_from(repr: FileDigestRepr) -> Result<Self, Self::Error> {
        let hash = blake3::Hash::from_hex(&repr.blake3)
            .map_err(|err| format!("invalid blake3 digest `{}`: {err}", repr.blake3))?;
        Ok(Self::from_parts(hash, repr.size))
    }
}

impl From<FileDigest> for FileDigestRepr {
    fn from(digest: FileDigest) -> Self {
        Self {
            blake3: digest.hex(),
            size: digest.size,
        }
    }
}

/// Errors from digesting external files or saving the digest cache.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum FileDigestError {
    /// The file or directory does not exist.
    #[error("external file `{}` does not exist", path.display())]
    #[diagnostic(code(lortflow::runtime::file_not_found))]
    NotFound {
        /// The path as the caller gave it.
        path: PathBuf,
    },
    /// The file or directory exists but could not be read.
    #[error("cannot read external file `{}`", path.display())]
    #[diagnostic(code(lortflow::runtime::file_unreadable))]
    Read {
        /// The file that failed (inside the directory, for a directory).
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The cache could not be written back.
    #[error("cannot save the file-digest cache `{}`", path.display())]
    #[diagnostic(code(lortflow::runtime::digest_cache_save))]
    Save {
        /// The cache file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// How many file digests were reused from the cache and how many were computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DigestStats {
    /// Files whose cached digest was reused.
    pub hits: u64,
    /// Files that were (re-)hashed.
    pub misses: u64,
}

/// Digests of external files, re-hashed only when their metadata changes.
///
/// ```no_run
/// # use lortflow_runtime::FileDigestCache;
/// let mut cache = FileDigestCache::load(".lortflow/file-digests.json");
/// let digest = cache.digest("data/train-images.idx".as_ref())?;
/// cache.save()?;
/// # Ok::<(), lortflow_runtime::FileDigestError>(())
/// ```
#[derive(Debug)]
pub struct FileDigestCache {
    path: PathBuf,
    entries: BTreeMap<String, Entry>,
    dirty: bool,
    stats: DigestStats,
}

/// The persisted form of the cache.
#[derive(Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    /// Keyed by absolute path.
    entries: BTreeMap<String, Entry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    stamp: Stamp,
    /// When the digest was computed, in ns since the Unix epoch (see [`RACY_WINDOW_NS`]).
    hashed_at_ns: i64,
    blake3: String,
}

/// The metadata that must be unchanged for a cached digest to be reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    mtime_ns: i64,
    /// Change time and inode catch tools that restore an old mtime after rewriting a file
    /// (`touch -r`, `rsync -t`). They are zero where the platform has no such notion.
    #[serde(default)]
    ctime_ns: i64,
    #[serde(default)]
    inode: u64,
}

impl Stamp {
    fn of(meta: &Metadata) -> Self {
        let mtime_ns = meta.modified().map(system_time_ns).unwrap_or(0);
        #[cfg(unix)]
        let (ctime_ns, inode) = {
            use std::os::unix::fs::MetadataExt;
            (
                meta.ctime()
                    .saturating_mul(1_000_000_000)
                    .saturating_add(meta.ctime_nsec()),
                meta.ino(),
            )
        };
        #[cfg(not(unix))]
        let (ctime_ns, inode) = (0, 0);
        Self {
            size: meta.len(),
            mtime_ns,
            ctime_ns,
            inode,
        }
    }
}

fn system_time_ns(time: SystemTime) -> i64 {
    let ns = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_nanos()).unwrap_or(i128::MAX),
        Err(before) => -i128::try_from(before.duration().as_nanos()).unwrap_or(i128::MAX),
    };
    ns.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

impl FileDigestCache {
    /// Loads the cache persisted at `path`, or starts empty.
    ///
    /// This never fails: a missing file is the normal first run, and an unreadable or corrupt
    /// one only costs re-hashing, so it is logged and replaced on the next [`save`](Self::save).
    pub fn load(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let mut cache = Self {
            path,
            entries: BTreeMap::new(),
            dirty: false,
            stats: DigestStats::default(),
        };
        match fs::read(&cache.path) {
            Ok(bytes) => match serde_json::from_slice::<CacheFile>(&bytes) {
                Ok(file) if file.version == CACHE_FORMAT => cache.entries = file.entries,
                Ok(file) => {
                    tracing::warn!(
                        path = %cache.path.display(),
                        version = file.version,
                        "ignoring file-digest cache of another format version; files will be re-hashed"
                    );
                    cache.dirty = true;
                }
                Err(err) => {
                    tracing::warn!(
                        path = %cache.path.display(),
                        error = %err,
                        "ignoring corrupt file-digest cache; files will be re-hashed"
                    );
                    cache.dirty = true;
                }
            },
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(
                    path = %cache.path.display(),
                    error = %err,
                    "cannot read file-digest cache; files will be re-hashed"
                );
            }
        }
        cache
    }

    /// Where the cache is persisted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Counts of reused and computed file digests since this cache was loaded.
    pub fn stats(&self) -> DigestStats {
        self.stats
    }

    /// The digest of a file or directory, from the cache when its metadata is unchanged.
    ///
    /// Symbolic links are followed. Inside a directory, every file is digested (each with its own
    /// cache entry), in the order of their relative paths; a directory reached twice through
    /// symbolic links is only walked once, so link cycles terminate.
    pub fn digest(&mut self, path: &Path) -> Result<FileDigest, FileDigestError> {
        let meta = fs::metadata(path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                FileDigestError::NotFound {
                    path: path.to_owned(),
                }
            } else {
                read_error(path, source)
            }
        })?;
        // Absolute paths make the cache independent of the working directory.
        let absolute = std::path::absolute(path).map_err(|source| read_error(path, source))?;
        if meta.is_dir() {
            self.digest_dir(&absolute)
        } else {
            self.digest_file(&absolute, &meta)
        }
    }

    /// Writes the cache back if anything changed, atomically, creating its directory if needed.
    pub fn save(&mut self) -> Result<(), FileDigestError> {
        if !self.dirty {
            return Ok(());
        }
        let file = CacheFile {
            version: CACHE_FORMAT,
            entries: self.entries.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&file).expect("the digest cache should serialise");
        let save_error = |source| FileDigestError::Save {
            path: self.path.clone(),
            source,
        };
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(save_error)?;
        }
        fsutil::write_atomic(&self.path, &bytes).map_err(save_error)?;
        self.dirty = false;
        Ok(())
    }

    fn digest_file(&mut self, path: &Path, meta: &Metadata) -> Result<FileDigest, FileDigestError> {
        let stamp = Stamp::of(meta);
        // Paths that are not UTF-8 are hashed every time rather than keyed lossily, because two
        // lossy keys could collide and return the wrong digest.
        let cache_key = path.to_str().map(str::to_owned);
        if let Some(entry) = cache_key.as_ref().and_then(|key| self.entries.get(key)) {
            let settled = entry.hashed_at_ns.saturating_sub(stamp.mtime_ns) > RACY_WINDOW_NS;
            if entry.stamp == stamp && settled {
                if let Ok(hash) = blake3::Hash::from_hex(&entry.blake3) {
                    self.stats.hits += 1;
                    return Ok(FileDigest::from_parts(hash, stamp.size));
                }
            }
        }

        // The stamp was taken before hashing: if the file changes while it is read, its new
        // metadata differs from the recorded one and the next lookup re-hashes it.
        let hashed_at_ns = system_time_ns(SystemTime::now());
        let (hash, size) = fsutil::hash_file(path).map_err(|source| read_error(path, source))?;
        self.stats.misses += 1;
        tracing::debug!(path = %path.display(), size, "hashed external file");
        if let Some(key) = cache_key {
            if size == stamp.size {
                let entry = Entry {
                    stamp,
                    hashed_at_ns,
                    blake3: hash.to_hex().to_string(),
                };
                self.entries.insert(key, entry);
                self.dirty = true;
            }
        }
        Ok(FileDigest::from_parts(hash, size))
    }

    fn digest_dir(&mut self, root: &Path) -> Result<FileDigest, FileDigestError> {
        let mut files = Vec::new();
        let mut visited = HashSet::new();
        self.walk(root, Vec::new(), &mut visited, &mut files)?;
        files.sort_by(|a, b| a.0.cmp(&b.0));

        let mut hasher = blake3::Hasher::new();
        put_bytes(&mut hasher, DIR_FORMAT.as_bytes());
        hasher.update(&(files.len() as u64).to_le_bytes());
        let mut total = 0u64;
        for (relative, digest) in &files {
            put_bytes(&mut hasher, relative);
            hasher.update(digest.hash.as_bytes());
            hasher.update(&digest.size.to_le_bytes());
            total = total.saturating_add(digest.size);
        }
        Ok(FileDigest::from_parts(hasher.finalize(), total))
    }

    /// Collects (relative path with `/` separators, digest) for every file under `dir`.
    fn walk(
        &mut self,
        dir: &Path,
        relative: Vec<u8>,
        visited: &mut HashSet<PathBuf>,
        files: &mut Vec<(Vec<u8>, FileDigest)>,
    ) -> Result<(), FileDigestError> {
        let canonical = fs::canonicalize(dir).map_err(|source| read_error(dir, source))?;
        if !visited.insert(canonical) {
            tracing::debug!(path = %dir.display(), "skipping directory already walked");
            return Ok(());
        }
        let entries = fs::read_dir(dir).map_err(|source| read_error(dir, source))?;
        for entry in entries {
            let entry = entry.map_err(|source| read_error(dir, source))?;
            let path = entry.path();
            let mut child = relative.clone();
            if !child.is_empty() {
                child.push(b'/');
            }
            child.extend_from_slice(entry.file_name().as_encoded_bytes());
            let meta = fs::metadata(&path).map_err(|source| read_error(&path, source))?;
            if meta.is_dir() && is_tagged_cache(&path) {
                // A lortflow store (or any tagged cache) inside a dataset folder is not data.
                tracing::debug!(path = %path.display(), "skipping tagged cache directory");
            } else if meta.is_dir() {
                self.walk(&path, child, visited, files)?;
            } else if meta.is_file() {
                let digest = self.digest_file(&path, &meta)?;
                files.push((child, digest));
            } else {
                // Sockets and FIFOs have no content to hash, and reading a FIFO would block.
                tracing::debug!(path = %path.display(), "skipping special file");
            }
        }
        Ok(())
    }
}

/// Whether `dir` holds a `CACHEDIR.TAG` with the standard signature.
fn is_tagged_cache(dir: &Path) -> bool {
    let signature = fsutil::CACHEDIR_SIGNATURE.as_bytes();
    let mut head = [0u8; 43];
    fs::File::open(dir.join(fsutil::CACHEDIR_TAG))
        .and_then(|mut f| io::Read::read_exact(&mut f, &mut head))
        .is_ok_and(|()| head[..] == signature[..])
}

fn put_bytes(hasher: &mut blake3::Hasher, bytes: &[u8]) {
    hasher.update(&(bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

fn read_error(path: &Path, source: io::Error) -> FileDigestError {
    FileDigestError::Read {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::time::Duration;

    use super::*;

    /// Writes a file and backdates its mtime, so it is outside the racy window.
    fn write_old(path: &Path, content: &[u8], age_s: u64) {
        fs::write(path, content).unwrap();
        let old = SystemTime::now() - Duration::from_secs(age_s);
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }

    #[test]
    fn a_store_inside_a_dataset_folder_is_not_part_of_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("images");
        fs::create_dir_all(root.join("cat")).unwrap();
        write_old(&root.join("cat/1.jpg"), b"pixels", 60);
        let mut cache = FileDigestCache::load(dir.path().join("cache.json"));
        let before = cache.digest(&root).unwrap();
        // The store writes its tag when opened, then artifacts appear in it.
        let store = crate::Store::open(&root.join(".lortflow")).unwrap();
        fs::write(store.root().join("objects/artifact.bin"), b"new").unwrap();
        assert_eq!(cache.digest(&root).unwrap(), before);
        // An untagged folder is data, and a fake tag does not hide one.
        fs::create_dir_all(root.join("dog")).unwrap();
        write_old(
            &root.join("dog/CACHEDIR.TAG"),
            b"Signature: not the real one",
            60,
        );
        assert_ne!(cache.digest(&root).unwrap(), before);
    }

    #[test]
    fn digest_matches_blake3_of_content() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data.bin");
        write_old(&file, b"hello", 60);
        let mut cache = FileDigestCache::load(dir.path().join("cache.json"));
        let digest = cache.digest(&file).unwrap();
        assert_eq!(digest.hex(), blake3::hash(b"hello").to_hex().as_str());
        assert_eq!(digest.size(), 5);
    }

    #[test]
    fn rehashes_only_when_metadata_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data.bin");
        let cache_path = dir.path().join("cache.json");
        write_old(&file, b"hello", 60);

        let mut cache = FileDigestCache::load(&cache_path);
        let first = cache.digest(&file).unwrap();
        let again = cache.digest(&file).unwrap();
        assert_eq!(first, again);
        assert_eq!(cache.stats(), DigestStats { hits: 1, misses: 1 });
        cache.save().unwrap();

        // A fresh process reuses the persisted digest.
        let mut cache = FileDigestCache::load(&cache_path);
        assert_eq!(cache.digest(&file).unwrap(), first);
        assert_eq!(cache.stats(), DigestStats { hits: 1, misses: 0 });

        // Same size, different content and mtime: re-hashed.
        write_old(&file, b"HELLO", 30);
        let changed = cache.digest(&file).unwrap();
        assert_ne!(changed, first);
        assert_eq!(cache.stats(), DigestStats { hits: 1, misses: 1 });

        // Only the mtime changes: re-hashed, same digest.
        File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(20))
            .unwrap();
        assert_eq!(cache.digest(&file).unwrap(), changed);
        assert_eq!(cache.stats(), DigestStats { hits: 1, misses: 2 });

        // The size changes: re-hashed.
        write_old(&file, b"hello, world", 10);
        assert_eq!(cache.digest(&file).unwrap().size(), 12);
        assert_eq!(cache.stats(), DigestStats { hits: 1, misses: 3 });
        assert_eq!(cache.digest(&file).unwrap().size(), 12);
        assert_eq!(cache.stats(), DigestStats { hits: 2, misses: 3 });
    }

    #[test]
    fn freshly_written_files_are_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data.bin");
        fs::write(&file, b"just written").unwrap();
        let mut cache = FileDigestCache::load(dir.path().join("cache.json"));
        cache.digest(&file).unwrap();
        cache.digest(&file).unwrap();
        assert_eq!(cache.stats(), DigestStats { hits: 0, misses: 2 });
    }

    #[test]
    fn corrupt_cache_file_is_ignored_and_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data.bin");
        let cache_path = dir.path().join("cache.json");
        write_old(&file, b"hello", 60);
        fs::write(&cache_path, b"{\"version\": 1, \"entr").unwrap();

        let mut cache = FileDigestCache::load(&cache_path);
        cache.digest(&file).unwrap();
        assert_eq!(cache.stats().misses, 1);
        cache.save().unwrap();

        let mut cache = FileDigestCache::load(&cache_path);
        cache.digest(&file).unwrap();
        assert_eq!(cache.stats(), DigestStats { hits: 1, misses: 0 });
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = FileDigestCache::load(dir.path().join("cache.json"));
        let missing = dir.path().join("nope.idx");
        let err = cache.digest(&missing).unwrap_err();
        assert!(matches!(&err, FileDigestError::NotFound { path } if path == &missing));
        assert!(err.to_string().contains("nope.idx"), "{err}");
    }

    #[test]
    fn directory_digest_covers_names_and_contents() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("dataset");
        fs::create_dir_all(data.join("sub")).unwrap();
        write_old(&data.join("a.bin"), b"a", 60);
        write_old(&data.join("sub/b.bin"), b"bb", 60);
        let mut cache = FileDigestCache::load(dir.path().join("cache.json"));

        let first = cache.digest(&data).unwrap();
        assert_eq!(first.size(), 3);
        assert_eq!(cache.digest(&data).unwrap(), first);
        assert_eq!(cache.stats(), DigestStats { hits: 2, misses: 2 });

        // Renaming a file changes the digest even though no content changed.
        fs::rename(data.join("sub/b.bin"), data.join("sub/c.bin")).unwrap();
        let renamed = cache.digest(&data).unwrap();
        assert_ne!(renamed, first);

        // Changing a nested file's content changes the digest.
        write_old(&data.join("sub/c.bin"), b"cc", 30);
        assert_ne!(cache.digest(&data).unwrap(), renamed);
    }

    #[cfg(unix)]
    #[test]
    fn symlink_cycles_terminate() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("dataset");
        fs::create_dir(&data).unwrap();
        write_old(&data.join("a.bin"), b"a", 60);
        std::os::unix::fs::symlink(&data, data.join("loop")).unwrap();
        let mut cache = FileDigestCache::load(dir.path().join("cache.json"));
        assert_eq!(cache.digest(&data).unwrap().size(), 1);
    }

    #[test]
    fn digest_serialises_as_hex_and_size() {
        let digest = FileDigest::from_parts(blake3::hash(b"x"), 1);
        let json = serde_json::to_value(&digest).unwrap();
        assert_eq!(json["blake3"], digest.hex());
        assert_eq!(json["size"], 1);
        assert_eq!(serde_json::from_value::<FileDigest>(json).unwrap(), digest);
    }
}
