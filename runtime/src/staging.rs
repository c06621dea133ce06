//! A staging directory: where a running stage writes its artifact before it is committed.
//!
//! Committing hashes every file into the manifest, makes files and manifest durable, and renames
//! the directory into `objects/` in one atomic step. Until then nothing outside `tmp/` changes, so
//! a stage that fails, panics or is killed cannot leave an artifact that a later run trusts.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::artifact::Artifact;
use crate::fsutil;
use crate::key::CacheKey;
use crate::manifest::{FileEntry, MANIFEST_FILE, MANIFEST_FORMAT, Manifest};
use crate::store::Store;
use crate::store_error::{StoreError, io_error};

/// An artifact under construction, from [`Store::begin`].
///
/// Dropping it without [`commit`](Self::commit) deletes the staging directory.
#[derive(Debug)]
pub struct Staging {
    store: Store,
    key: CacheKey,
    dir: PathBuf,
    /// Set once the directory has been renamed into `objects/` (or handed over), so Drop must
    /// leave it alone.
    committed: bool,
}

// Starting a staging directory is the store's operation but lives here, so that the store does
// not depend on its staging (a staging directory commits into its store).
impl Store {
    /// Starts building the artifact for `key` as a scheduler job does: staged under
    /// `jobs/<key>/`, not `tmp/`, because the submitting run holds the lock and clears `tmp/`
    /// when it starts (a re-run that adopts a job still running must not delete its work). What a
    /// killed job left there is removed by the next job for the same key.
    pub fn begin_job(&self, key: &CacheKey) -> Result<Staging, StoreError> {
        let dir = self.jobs_dir().join(key.as_str());
        fs::create_dir_all(&dir).map_err(io_error("create the directory", &dir))?;
        for (name, path) in
            fsutil::read_dir_sorted(&dir).map_err(io_error("list the directory", &dir))?
        {
            if name.starts_with("stage-") {
                fsutil::remove_all(&path).map_err(io_error("delete the leftover", &path))?;
            }
        }
        let staging = dir.join(fsutil::unique_name(&format!("stage-{}", key.short())));
        fs::create_dir(&staging).map_err(io_error("create the staging directory", &staging))?;
        Ok(Staging::new(self.clone(), key.clone(), staging))
    }

    /// Starts building the artifact for `key` in a fresh staging directory.
    pub fn begin(&self, key: &CacheKey) -> Result<Staging, StoreError> {
        let tmp = self.tmp_dir();
        // Recreate tmp/ in case someone deleted it while the store was open.
        fs::create_dir_all(&tmp).map_err(io_error("create the directory", &tmp))?;
        let dir = tmp.join(fsutil::unique_name(&format!("stage-{}", key.short())));
        fs::create_dir(&dir).map_err(io_error("create the staging directory", &dir))?;
        tracing::debug!(key = %key.short(), dir = %dir.display(), "staging artifact");
        Ok(Staging::new(self.clone(), key.clone(), dir))
    }
}

impl Staging {
    pub(crate) fn new(store: Store, key: CacheKey, dir: PathBuf) -> Self {
        Self {
            store,
            key,
            dir,
            committed: false,
        }
    }

    /// The directory the stage writes its files into.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The key the artifact will be stored under.
    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// Commits the artifact under its key and returns it.
    ///
    /// The manifest's `key` and `format` are set here, and its `files` map is replaced by the
    /// size and blake3 digest of every file in the staging directory (recursively, relative
    /// paths with `/` separators). Files are fsynced, `manifest.json` is written atomically, and
    /// the directory is renamed to `objects/<key>`.
    ///
    /// If an artifact with this key already exists (another process built the same key into a
    /// separate staging directory), the existing one is kept when it verifies, and this staging
    /// directory is discarded: equal keys mean equal inputs, so either copy will do, and keeping
    /// the existing one never pulls an artifact out from under a reader. A corrupt existing
    /// artifact is evicted and replaced.
    pub fn commit(self, manifest: Manifest) -> Result<Artifact, StoreError> {
        self.commit_with(manifest, false)
    }

    /// Commits the artifact under its key, replacing an existing artifact of that key (a forced
    /// re-run). The old artifact stays in place and trusted until this one is complete on disk;
    /// then it is moved aside and this one renamed in. A crash between those two renames leaves
    /// the old artifact in `tmp/`, from where [`Store::clean_tmp`] puts it back.
    pub fn commit_replacing(self, manifest: Manifest) -> Result<Artifact, StoreError> {
        self.commit_with(manifest, true)
    }

    fn commit_with(
        mut self,
        mut manifest: Manifest,
        replace: bool,
    ) -> Result<Artifact, StoreError> {
        manifest.key = self.key.clone();
        manifest.format = MANIFEST_FORMAT;

        let mut files = BTreeMap::new();
        let mut dirs = vec![self.dir.clone()];
        collect_files(&self.dir, "", &mut files, &mut dirs)?;
        manifest.files = files;

        let manifest_path = self.dir.join(MANIFEST_FILE);
        let bytes = serde_json::to_vec_pretty(&manifest).expect("a manifest should serialise");
        fsutil::write_atomic(&manifest_path, &bytes)
            .map_err(io_error("write the manifest", &manifest_path))?;
        // New directory entries are only durable once their parent directory is synced.
        for dir in &dirs {
            fsutil::sync_dir(dir).map_err(io_error("sync the directory", dir))?;
        }

        let target = self.store.object_dir(&self.key);
        if replace && target.exists() {
            let aside = self.store.set_aside(&self.key)?;
            let published = self.publish(&target);
            match published {
                Ok(()) => {
                    // The new artifact is in place; a leftover old copy is only garbage, which
                    // the next `clean_tmp` deletes (it restores a copy only when none is in place).
                    if let Err(err) = fsutil::remove_all(&aside) {
                        tracing::debug!(dir = %aside.display(), error = %err, "cannot delete the replaced artifact");
                    }
                }
                Err(err) => {
                    // Put the old artifact back: a failed replacement must not lose it.
                    let _ = fs::rename(&aside, &target);
                    return Err(io_error("commit the artifact", &target)(err));
                }
            }
            tracing::debug!(key = %self.key.short(), stage = %manifest.stage, "replaced artifact");
            return Ok(Artifact::new(self.key.clone(), target, manifest));
        }
        match self.publish(&target) {
            Ok(()) => {}
            Err(err) if target.exists() => return self.resolve_collision(&target, manifest, err),
            Err(err) => return Err(io_error("commit the artifact", &target)(err)),
        }
        tracing::debug!(key = %self.key.short(), stage = %manifest.stage, "committed artifact");
        Ok(Artifact::new(self.key.clone(), target, manifest))
    }

    /// Renames the staging directory to `target` and makes the rename durable.
    fn publish(&mut self, target: &Path) -> io::Result<()> {
        fs::rename(&self.dir, target)?;
        self.committed = true;
        if let Some(objects) = target.parent() {
            fsutil::sync_dir(objects)?;
        }
        Ok(())
    }

    fn resolve_collision(
        mut self,
        target: &Path,
        manifest: Manifest,
        rename_error: io::Error,
    ) -> Result<Artifact, StoreError> {
        match self.store.get(&self.key) {
            Ok(Some(existing)) => {
                tracing::debug!(
                    key = %self.key.short(),
                    "artifact already committed by another build; keeping it"
                );
                // Dropping `self` deletes our copy.
                return Ok(existing);
            }
            Ok(None) => {}
            Err(err) if err.is_corrupt() => {
                tracing::debug!(key = %self.key.short(), error = %err, "replacing corrupt artifact");
                self.store.evict(&self.key)?;
            }
            Err(err) => return Err(err),
        }
        if let Err(err) = self.publish(target) {
            tracing::debug!(first_error = %rename_error, "commit retry failed");
            return Err(io_error("commit the artifact", target)(err));
        }
        Ok(Artifact::new(self.key.clone(), target.to_owned(), manifest))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(err) = fsutil::remove_all(&self.dir) {
                // Not fatal: the next lock holder's `clean_tmp` removes it.
                tracing::debug!(dir = %self.dir.display(), error = %err, "cannot remove staging directory");
            }
        }
    }
}

/// Hashes and fsyncs every file under `dir` into `files`, and collects subdirectories into
/// `dirs` so their entries can be synced.
fn collect_files(
    dir: &Path,
    prefix: &str,
    files: &mut BTreeMap<String, FileEntry>,
    dirs: &mut Vec<PathBuf>,
) -> Result<(), StoreError> {
    let entries = fs::read_dir(dir).map_err(io_error("list the staging directory", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_error("list the staging directory", dir))?;
        let path = entry.path();
        let invalid = |reason: &str| StoreError::InvalidArtifact {
            path: path.clone(),
            reason: reason.to_owned(),
        };
        let Ok(name) = entry.file_name().into_string() else {
            return Err(invalid("file names in artifacts must be UTF-8"));
        };
        let relative = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if relative == MANIFEST_FILE {
            return Err(invalid("`manifest.json` is reserved for the store"));
        }
        let file_type = entry
            .file_type()
            .map_err(io_error("read the staged file", &path))?;
        if file_type.is_dir() {
            dirs.push(path.clone());
            collect_files(&path, &relative, files, dirs)?;
        } else if file_type.is_file() {
            let mut file = File::open(&path).map_err(io_error("read the staged file", &path))?;
            let (hash, size) = fsutil::hash_open_file(&mut file)
                .map_err(io_error("read the staged file", &path))?;
            // The stage may not have flushed its writes; the artifact must survive power loss
            // once it is visible in `objects/`.
            file.sync_all()
                .map_err(io_error("sync the staged file", &path))?;
            files.insert(
                relative,
                FileEntry {
                    size,
                    blake3: hash.to_hex().to_string(),
                },
            );
        } else if file_type.is_symlink() {
            return Err(invalid(
                "symbolic links are not allowed in artifacts; copy the file instead",
            ));
        } else {
            return Err(invalid("only regular files and directories can be stored"));
        }
    }
    Ok(())
}
