//! Small filesystem helpers shared by the store, the lock and the file-digest cache: atomic
//! writes, directory fsync, streaming hashes and unique temporary names.
//!
//! They return plain `io::Result`s; callers attach the path and the action to the error, because
//! only they know which one the user cares about.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The Cache Directory Tagging file (bford.info/cachedir): backup tools skip a tagged directory,
/// and so do lortflow's own digests of dataset folders, so that a store kept inside an image root
/// does not change the root's digest while a stage writes to it. Every store has one.
pub(crate) const CACHEDIR_TAG: &str = "CACHEDIR.TAG";
/// The first line a valid `CACHEDIR.TAG` starts with.
pub(crate) const CACHEDIR_SIGNATURE: &str = "Signature: 8a477f597d28d172789f06886806bc55";

/// A name that is unique among all temporary names made by any process on this machine:
/// the process id tells processes apart, the counter tells calls within one process apart.
pub(crate) fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Prefix of the temporary files made by [`write_atomic`]; [`is_atomic_temp`] recognises them so
/// leftovers from killed processes can be swept and listings can skip them.
const ATOMIC_TEMP_PREFIX: &str = ".tmp";

/// Whether `name` is a temporary file left by [`write_atomic`].
pub(crate) fn is_atomic_temp(name: &str) -> bool {
    name.strip_prefix(ATOMIC_TEMP_PREFIX)
        .is_some_and(|rest| rest.starts_with('-'))
}

/// Writes `bytes` to `path` so that readers see either the old content or the new content,
/// never a mix, even if the process is killed or the machine loses power.
///
/// The data goes to a temporary file in the same directory (rename is only atomic within one
/// filesystem), is fsynced, renamed over `path`, and then the directory is fsynced so the rename
/// itself is durable.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let temp = dir.join(unique_name(ATOMIC_TEMP_PREFIX));
    let result = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        // Best effort: the temp file is garbage either way, and the original error matters more.
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Flushes a directory's entries (creations, renames) to disk.
///
/// On Unix a rename is only durable after the directory is fsynced. Other platforms cannot open
/// directories as files, and their rename is as durable as it gets, so this is a no-op there.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Streams a file through blake3 and returns its digest and its length in bytes.
///
/// `update_reader` reads in fixed-size chunks, so memory use does not grow with the file, which
/// matters for multi-gigabyte feature matrices and checkpoints.
pub(crate) fn hash_file(path: &Path) -> io::Result<(blake3::Hash, u64)> {
    hash_open_file(&mut File::open(path)?)
}

/// Like [`hash_file`], for a file the caller already opened.
pub(crate) fn hash_open_file(file: &mut File) -> io::Result<(blake3::Hash, u64)> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(file)?;
    Ok((hasher.finalize(), hasher.count()))
}

/// Removes a file or a directory tree; a path that is already gone is not an error, because
/// several cleaners (eviction, `clean_tmp`) may race for the same leftover.
pub(crate) fn remove_all(path: &Path) -> io::Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(err) => Err(err),
    };
    match result {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Total size in bytes of the regular files under `path` (symlinks are not followed), for
/// `cache ls` and garbage-collection reports. Unreadable entries count as zero: this is a report,
/// not a check.
pub(crate) fn disk_usage(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    let Ok(entries) = fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| disk_usage(&entry.path()))
        .sum()
}

/// Lists the entries of a directory as (name, path) pairs, sorted by name, skipping names that
/// are not UTF-8 (the store never creates such names).
pub(crate) fn read_dir_sorted(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Ok(name) = entry.file_name().into_string() {
            entries.push((name, entry.path()));
        }
    }
    entries.sort();
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = read_dir_sorted(dir.path())
            .unwrap()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names, ["a.json"]);
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique_name("x"), unique_name("x"));
    }

    #[test]
    fn remove_all_tolerates_missing() {
        let dir = tempfile::tempdir().unwrap();
        remove_all(&dir.path().join("missing")).unwrap();
    }
}
