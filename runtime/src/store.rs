//! The content-addressed artifact store, normally `.lortflow/` next to the pipeline.
//!
//! Layout:
//!
//! ```text
//! .lortflow/
//!   objects/<key>/       one committed artifact: the stage's files plus manifest.json
//!   tmp/                 staging directories of running stages, and evicted artifacts
//!   work/<key>/          checkpoints of a stage that has not finished (a backbone resumes from
//!                        its last epoch); deleted when its artifact commits, or by `gc` once no
//!                        pipeline needs the key
//!   stages/<name>.json   the last artifact recorded under each stage name (for `status`)
//!   runs/<id>.json       one record per run (for `report`)
//!   lock                 held by the run using the store (see `StoreLock`)
//! ```
//!
//! The invariant that makes caching safe: a directory under `objects/` is only ever created by
//! an atomic rename of a staging directory whose files and manifest are already on disk. A run
//! killed mid-stage leaves at most a directory under `tmp/`, which nothing reads and the next
//! lock holder deletes. Reads verify every file against the manifest's digests, so damage done
//! after the commit (a truncated copy, a bit flip, a user editing a file) is reported as
//! [`StoreError::Corrupt`] instead of flowing silently into downstream stages.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::artifact::Artifact;
use crate::fsutil::{self, CACHEDIR_SIGNATURE, CACHEDIR_TAG};
use crate::key::CacheKey;
use crate::lock::{LockError, StoreLock};
use crate::manifest::{MANIFEST_FILE, Manifest};
use crate::run_record::RunRecord;
use crate::store_error::{StoreError, io_error};
use crate::time::Timestamp;

const OBJECTS_DIR: &str = "objects";
const TMP_DIR: &str = "tmp";
/// Name prefix in `tmp/` of an artifact moved aside while its replacement is renamed in.
const REPLACED_PREFIX: &str = "replaced-";
const STAGES_DIR: &str = "stages";
const RUNS_DIR: &str = "runs";
const WORK_DIR: &str = "work";
/// Batch scripts, logs, records and staging directories of stages handed to a scheduler.
const JOBS_DIR: &str = "jobs";
/// Digests of large artifact files, cached by file metadata (see `Store::large_file_digest`).
const ARTIFACT_DIGESTS: &str = "artifact-digests.json";
/// Artifact files at least this large are verified through the digest cache.
const LARGE_ARTIFACT_FILE: u64 = 64 << 20;

/// Temporary files of atomic writes younger than this are left alone by
/// [`Store::clean_tmp`]: a process that does not hold the lock (`status` saving the digest
/// cache) may be about to rename one into place.
const ATOMIC_TEMP_MIN_AGE: Duration = Duration::from_secs(60);

/// An artifact store rooted at a directory.
///
/// Reading (`get`, `list`, `last_manifest_for`, `list_runs`) is safe without the lock, so
/// `status` and `report` can run beside a pipeline run. Operations that delete other runs' work
/// ([`clean_tmp`](Self::clean_tmp), [`gc`](Self::gc)) take a [`StoreLock`] as proof that no
/// other run uses the store.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// One artifact in [`Store::list`], for `lortflow cache ls`.
#[derive(Clone, Debug, PartialEq)]
pub struct ArtifactInfo {
    /// The artifact's key.
    pub key: CacheKey,
    /// The stage that produced it; `None` when its manifest is missing or unreadable.
    pub stage: Option<String>,
    /// The stage kind; `None` when its manifest is missing or unreadable.
    pub kind: Option<String>,
    /// Bytes on disk, manifest included.
    pub size_bytes: u64,
    /// When the artifact was committed (the manifest's modification time).
    pub created: Timestamp,
}

/// What [`Store::gc`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Artifacts removed.
    pub removed: usize,
    /// Artifacts kept.
    pub kept: usize,
    /// Work directories (checkpoints of unfinished stages) removed.
    pub work_removed: usize,
    /// Bytes freed by the removed artifacts and work directories.
    pub bytes_freed: u64,
}

/// The last artifact recorded under a stage name, stored in `stages/`.
///
/// The whole manifest is copied, not only the key, so `status` can still explain what changed
/// after the artifact itself was garbage-collected.
#[derive(Serialize, Deserialize)]
struct StageIndexEntry {
    stage: String,
    recorded_at: Timestamp,
    manifest: Manifest,
}

impl Store {
    /// Opens the store at `root`, creating it and its subdirectories if needed.
    ///
    /// Opening does not take the lock and does not clean up: see [`Store::lock`] and
    /// [`Store::clean_tmp`].
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        for dir in [OBJECTS_DIR, TMP_DIR, STAGES_DIR, RUNS_DIR] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(io_error("create the directory", &path))?;
        }
        let tag = root.join(CACHEDIR_TAG);
        if !tag.exists() {
            let text = format!(
                "{CACHEDIR_SIGNATURE}\n# This is a lortflow artifact store: caches that can be rebuilt.\n# For information about cache directory tags, see https://bford.info/cachedir/\n"
            );
            // A store that cannot take the tag (read-only) still works; only a dataset folder
            // around it would then count it as data.
            if let Err(err) = fs::write(&tag, text) {
                tracing::warn!(path = %tag.display(), error = %err, "cannot tag the store as a cache directory");
            }
        }
        // A canonical root makes lock checks and error paths independent of how the store was
        // named (relative path, symlink).
        let root = fs::canonicalize(root).map_err(io_error("resolve the store directory", root))?;
        Ok(Self { root })
    }

    /// The store's (canonical) root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the store lock; see [`StoreLock::acquire`].
    pub fn lock(&self) -> Result<StoreLock, LockError> {
        StoreLock::acquire(&self.root)
    }

    /// The work directory of the stage with `key`: checkpoints it resumes from after an
    /// interruption, deleted once its artifact commits.
    pub fn work_dir(&self, key: &CacheKey) -> PathBuf {
        self.root.join(WORK_DIR).join(key.as_str())
    }

    /// The directory of the artifact with `key`, whether or not it exists.
    pub fn object_dir(&self, key: &CacheKey) -> PathBuf {
        self.root.join(OBJECTS_DIR).join(key.as_str())
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join(TMP_DIR)
    }

    /// Where the scheduler jobs of this store keep their scripts, logs and records.
    pub fn jobs_dir(&self) -> PathBuf {
        self.root.join(JOBS_DIR)
    }

    /// The artifact with `key`, verified against its manifest; `None` when it is not in the
    /// store.
    ///
    /// Verification re-hashes every file, so it costs one read of the artifact. A failed check
    /// returns [`StoreError::Corrupt`] naming the stage and the file; the caller reports it,
    /// calls [`evict`](Self::evict) and rebuilds. Files in the artifact directory that the
    /// manifest does not list are ignored.
    pub fn get(&self, key: &CacheKey) -> Result<Option<Artifact>, StoreError> {
        let Some(artifact) = self.get_unverified(key)? else {
            return Ok(None);
        };
        self.verify(&artifact)?;
        Ok(Some(artifact))
    }

    /// The artifact with `key`, checking only that its manifest parses and names `key`; for
    /// cheap status displays. Use [`get`](Self::get) before reading the artifact's files.
    pub fn get_unverified(&self, key: &CacheKey) -> Result<Option<Artifact>, StoreError> {
        let dir = self.object_dir(key);
        match fs::symlink_metadata(&dir) {
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(io_error("read the artifact directory", &dir)(err)),
        }
        let manifest_path = dir.join(MANIFEST_FILE);
        let corrupt = |reason: String| StoreError::Corrupt {
            key: key.clone(),
            stage: None,
            path: manifest_path.clone(),
            reason,
        };
        let bytes = match fs::read(&manifest_path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(corrupt("is missing".into()));
            }
            Err(err) if err.kind() == io::ErrorKind::NotADirectory => {
                return Err(corrupt(
                    "is missing (the artifact is not a directory)".into(),
                ));
            }
            Err(err) => return Err(io_error("read the manifest", &manifest_path)(err)),
        };
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|err| corrupt(format!("is not a valid manifest: {err}")))?;
        if manifest.key != *key {
            return Err(StoreError::Corrupt {
                key: key.clone(),
                stage: Some(manifest.stage),
                path: manifest_path,
                reason: format!("belongs to another artifact ({})", manifest.key.short()),
            });
        }
        Ok(Some(Artifact::new(key.clone(), dir, manifest)))
    }

    fn verify(&self, artifact: &Artifact) -> Result<(), StoreError> {
        let manifest = artifact.manifest();
        for (relative, entry) in &manifest.files {
            let path = artifact.dir().join(relative);
            let corrupt = |reason: String| StoreError::Corrupt {
                key: artifact.key().clone(),
                stage: Some(manifest.stage.clone()),
                path: path.clone(),
                reason,
            };
            if !is_plain_relative(relative) {
                return Err(corrupt("is not a valid path inside an artifact".into()));
            }
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    return Err(corrupt("is missing".into()));
                }
                Err(err) => return Err(io_error("read the artifact file", &path)(err)),
            };
            if !meta.is_file() {
                return Err(corrupt("is not a regular file".into()));
            }
            if meta.len() != entry.size {
                return Err(corrupt(format!(
                    "has {} bytes, the manifest says {}",
                    meta.len(),
                    entry.size
                )));
            }
            let hash = if entry.size >= LARGE_ARTIFACT_FILE {
                self.large_file_digest(&path)?
            } else {
                fsutil::hash_file(&path)
                    .map_err(io_error("read the artifact file", &path))?
                    .0
                    .to_hex()
                    .to_string()
            };
            if hash != entry.blake3 {
                return Err(corrupt("does not match its digest in the manifest".into()));
            }
        }
        Ok(())
    }

    /// The digest of a large artifact file (a packed image split, a big feature matrix), re-hashed
    /// only when its size, times or inode changed since it was last hashed, as external files
    /// are (`artifact-digests.json`): a cached run of an ImageNet-sized pipeline does not read
    /// its packs again. Small files are hashed on every [`get`](Self::get).
    fn large_file_digest(&self, path: &Path) -> Result<String, StoreError> {
        let mut cache = crate::FileDigestCache::load(self.root.join(ARTIFACT_DIGESTS));
        let digest = cache.digest(path).map_err(|err| StoreError::Io {
            action: "read the artifact file",
            path: path.to_owned(),
            source: io::Error::other(err.to_string()),
        })?;
        if let Err(err) = cache.save() {
            tracing::debug!(error = %err, "cannot save the artifact digest cache");
        }
        Ok(digest.hex())
    }

    /// Removes the artifact with `key`; `Ok(false)` if it was not there.
    ///
    /// The directory is first renamed into `tmp/` and then deleted, so a reader never sees a
    /// half-deleted artifact, and a crash during the deletion leaves only garbage in `tmp/`.
    pub fn evict(&self, key: &CacheKey) -> Result<bool, StoreError> {
        let dir = self.object_dir(key);
        let tmp = self.tmp_dir();
        fs::create_dir_all(&tmp).map_err(io_error("create the directory", &tmp))?;
        let aside = tmp.join(fsutil::unique_name(&format!("evict-{}", key.short())));
        match fs::rename(&dir, &aside) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(io_error("move aside the artifact", &dir)(err)),
        }
        tracing::debug!(key = %key.short(), "evicted artifact");
        fsutil::remove_all(&aside).map_err(io_error("delete the evicted artifact", &aside))?;
        Ok(true)
    }

    /// Where the digests of external files are cached (see [`crate::FileDigestCache`]).
    pub fn file_digests_path(&self) -> PathBuf {
        self.root.join("file-digests.json")
    }

    /// Moves the artifact with `key` to `tmp/` under a name that [`clean_tmp`](Self::clean_tmp)
    /// recognises, so that it is put back if its replacement never arrives. Returns where it is.
    pub(crate) fn set_aside(&self, key: &CacheKey) -> Result<PathBuf, StoreError> {
        let dir = self.object_dir(key);
        let tmp = self.tmp_dir();
        fs::create_dir_all(&tmp).map_err(io_error("create the directory", &tmp))?;
        let aside = tmp.join(format!("{REPLACED_PREFIX}{}", key.as_str()));
        // A leftover of an earlier interrupted replacement of the same key is stale by now.
        fsutil::remove_all(&aside).map_err(io_error("delete the leftover", &aside))?;
        fs::rename(&dir, &aside).map_err(io_error("move aside the artifact", &dir))?;
        fsutil::sync_dir(&tmp).map_err(io_error("sync the directory", &tmp))?;
        Ok(aside)
    }

    /// Every artifact in the store, oldest first, including corrupt ones (with `stage: None`
    /// when the manifest is unreadable) so they can be seen and collected.
    pub fn list(&self) -> Result<Vec<ArtifactInfo>, StoreError> {
        let objects = self.root.join(OBJECTS_DIR);
        let entries =
            fsutil::read_dir_sorted(&objects).map_err(io_error("list the directory", &objects))?;
        let mut infos = Vec::new();
        for (name, path) in entries {
            let Ok(key) = name.parse::<CacheKey>() else {
                tracing::debug!(path = %path.display(), "ignoring a foreign entry in objects/");
                continue;
            };
            let manifest_path = path.join(MANIFEST_FILE);
            let manifest = fs::read(&manifest_path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Manifest>(&bytes).ok());
            let created = fs::metadata(&manifest_path)
                .or_else(|_| fs::metadata(&path))
                .and_then(|meta| meta.modified())
                .map(Timestamp::from_system_time)
                .unwrap_or(Timestamp::from_unix_seconds(0.0));
            infos.push(ArtifactInfo {
                key,
                stage: manifest.as_ref().map(|m| m.stage.clone()),
                kind: manifest.map(|m| m.kind),
                size_bytes: fsutil::disk_usage(&path),
                created,
            });
        }
        infos.sort_by(|a, b| {
            a.created
                .unix_seconds()
                .total_cmp(&b.created.unix_seconds())
                .then_with(|| a.key.cmp(&b.key))
        });
        Ok(infos)
    }

    /// Removes every artifact whose key is not in `keep`.
    ///
    /// Needs the lock, because another run may be about to read an artifact that this run's
    /// pipeline no longer references.
    pub fn gc(&self, keep: &HashSet<CacheKey>, lock: &StoreLock) -> Result<GcReport, StoreError> {
        self.check_lock(lock)?;
        let objects = self.root.join(OBJECTS_DIR);
        let entries =
            fsutil::read_dir_sorted(&objects).map_err(io_error("list the directory", &objects))?;
        let mut report = GcReport::default();
        for (name, path) in entries {
            let Ok(key) = name.parse::<CacheKey>() else {
                continue;
            };
            if keep.contains(&key) {
                report.kept += 1;
                continue;
            }
            let size = fsutil::disk_usage(&path);
            if self.evict(&key)? {
                report.removed += 1;
                report.bytes_freed += size;
            }
        }
        // Checkpoints of stages that never finished, for keys no pipeline needs any more.
        let work = self.root.join(WORK_DIR);
        let unfinished = if work.is_dir() {
            fsutil::read_dir_sorted(&work).map_err(io_error("list the directory", &work))?
        } else {
            Vec::new()
        };
        for (name, path) in unfinished {
            if name
                .parse::<CacheKey>()
                .is_ok_and(|key| keep.contains(&key))
            {
                continue;
            }
            let size = fsutil::disk_usage(&path);
            fsutil::remove_all(&path).map_err(io_error("delete the work directory", &path))?;
            report.work_removed += 1;
            report.bytes_freed += size;
        }
        tracing::debug!(?report, "garbage-collected the store");
        Ok(report)
    }

    /// Deletes what killed runs left behind: everything in `tmp/` (staging directories, evicted
    /// artifacts), and stale temporary files of atomic writes. Returns how many entries were
    /// removed.
    ///
    /// Call it right after taking the lock and before staging anything, since it also deletes
    /// the lock holder's own staging directories.
    pub fn clean_tmp(&self, lock: &StoreLock) -> Result<usize, StoreError> {
        self.check_lock(lock)?;
        let mut removed = 0;
        let tmp = self.tmp_dir();
        for (name, path) in
            fsutil::read_dir_sorted(&tmp).map_err(io_error("list the directory", &tmp))?
        {
            // An artifact set aside for a replacement that a crash cut short goes back.
            if let Some(key) = name.strip_prefix(REPLACED_PREFIX) {
                let target = self.root.join(OBJECTS_DIR).join(key);
                if !target.exists() && fs::rename(&path, &target).is_ok() {
                    tracing::debug!(
                        key,
                        "restored an artifact whose replacement was interrupted"
                    );
                    removed += 1;
                    continue;
                }
            }
            fsutil::remove_all(&path).map_err(io_error("delete the leftover", &path))?;
            removed += 1;
        }
        for dir in [
            self.root.clone(),
            self.root.join(STAGES_DIR),
            self.root.join(RUNS_DIR),
        ] {
            let entries =
                fsutil::read_dir_sorted(&dir).map_err(io_error("list the directory", &dir))?;
            for (name, path) in entries {
                if fsutil::is_atomic_temp(&name) && is_older_than(&path, ATOMIC_TEMP_MIN_AGE) {
                    fsutil::remove_all(&path).map_err(io_error("delete the leftover", &path))?;
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            tracing::debug!(removed, "cleaned leftovers of interrupted runs");
        }
        Ok(removed)
    }

    fn check_lock(&self, lock: &StoreLock) -> Result<(), StoreError> {
        if lock.store_root() == self.root {
            Ok(())
        } else {
            Err(StoreError::WrongLock {
                store: self.root.clone(),
                lock_store: lock.store_root().to_owned(),
            })
        }
    }

    /// Records that stage `stage_name` last produced the artifact `key`, copying its manifest
    /// into `stages/` (atomically) for [`last_manifest_for`](Self::last_manifest_for).
    pub fn record_stage(&self, stage_name: &str, key: &CacheKey) -> Result<(), StoreError> {
        let artifact = self
            .get_unverified(key)?
            .ok_or_else(|| StoreError::NotFound { key: key.clone() })?;
        let entry = StageIndexEntry {
            stage: stage_name.to_owned(),
            recorded_at: Timestamp::now(),
            manifest: artifact.into_manifest(),
        };
        let bytes =
            serde_json::to_vec_pretty(&entry).expect("a stage index entry should serialise");
        let dir = self.root.join(STAGES_DIR);
        fs::create_dir_all(&dir).map_err(io_error("create the directory", &dir))?;
        let path = dir.join(stage_file_name(stage_name));
        fsutil::write_atomic(&path, &bytes).map_err(io_error("write the stage index", &path))
    }

    /// The manifest last recorded for `stage_name`, if any.
    ///
    /// An unreadable index entry is treated as absent (the stage will look new to `status`),
    /// because it is only a hint; failing to read the directory at all is an error.
    pub fn last_manifest_for(&self, stage_name: &str) -> Result<Option<Manifest>, StoreError> {
        let path = self.root.join(STAGES_DIR).join(stage_file_name(stage_name));
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(io_error("read the stage index", &path)(err)),
        };
        match serde_json::from_slice::<StageIndexEntry>(&bytes) {
            Ok(entry) if entry.stage == stage_name => Ok(Some(entry.manifest)),
            Ok(entry) => {
                tracing::debug!(path = %path.display(), found = %entry.stage, "stage index entry is for another name");
                Ok(None)
            }
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "ignoring corrupt stage index entry");
                Ok(None)
            }
        }
    }

    /// Writes a run record to `runs/<id>.json` (atomically) and returns its path.
    pub fn write_run_record(&self, record: &RunRecord) -> Result<PathBuf, StoreError> {
        let path = self.run_path(&record.id)?;
        let bytes = serde_json::to_vec_pretty(record).expect("a run record should serialise");
        let dir = self.root.join(RUNS_DIR);
        fs::create_dir_all(&dir).map_err(io_error("create the directory", &dir))?;
        fsutil::write_atomic(&path, &bytes).map_err(io_error("write the run record", &path))?;
        Ok(path)
    }

    /// All run records, newest first. Unreadable records are skipped (and logged), so one bad
    /// file does not hide the history.
    pub fn list_runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        let dir = self.root.join(RUNS_DIR);
        let entries =
            fsutil::read_dir_sorted(&dir).map_err(io_error("list the directory", &dir))?;
        let mut runs = Vec::new();
        for (name, path) in entries {
            if fsutil::is_atomic_temp(&name) || !name.ends_with(".json") {
                continue;
            }
            match read_run(&path) {
                Ok(record) => runs.push(record),
                Err(err) => tracing::warn!(error = %err, "skipping unreadable run record"),
            }
        }
        runs.sort_by(|a, b| {
            b.started_at
                .unix_seconds()
                .total_cmp(&a.started_at.unix_seconds())
                .then_with(|| b.id.cmp(&a.id))
        });
        Ok(runs)
    }

    /// The run record with `id`.
    pub fn load_run(&self, id: &str) -> Result<RunRecord, StoreError> {
        let path = self.run_path(id)?;
        match read_run(&path) {
            Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::RunNotFound { id: id.to_owned() })
            }
            other => other,
        }
    }

    fn run_path(&self, id: &str) -> Result<PathBuf, StoreError> {
        // Ids become file names: refuse anything that could escape `runs/` or hide as a dot file.
        let valid = !id.is_empty()
            && id.len() <= 200
            && !id.starts_with('.')
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !valid {
            return Err(StoreError::InvalidRunId { id: id.to_owned() });
        }
        Ok(self.root.join(RUNS_DIR).join(format!("{id}.json")))
    }
}

fn read_run(path: &Path) -> Result<RunRecord, StoreError> {
    let bytes = fs::read(path).map_err(io_error("read the run record", path))?;
    serde_json::from_slice(&bytes).map_err(|err| StoreError::CorruptRun {
        path: path.to_owned(),
        reason: err.to_string(),
    })
}

/// The file name of a stage's index entry.
///
/// Names that are safe as file names are used as they are, so `stages/` is easy to read. Others
/// have unsafe characters replaced and a digest of the full name appended, so that `a.b` and
/// `a_b` do not share an entry.
fn stage_file_name(name: &str) -> String {
    let safe = !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if safe {
        return format!("{name}.json");
    }
    let sanitised: String = name
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let digest = blake3::hash(name.as_bytes()).to_hex();
    format!("{sanitised}-{}.json", &digest[..12])
}

/// Whether a manifest path stays inside the artifact directory: relative, made of plain
/// components only, and not the manifest itself.
pub(crate) fn is_plain_relative(relative: &str) -> bool {
    let path = Path::new(relative);
    !relative.is_empty()
        && relative != MANIFEST_FILE
        && path
            .components()
            .all(|component| matches!(component, Component::Normal(_)))
}

fn is_older_than(path: &Path, age: Duration) -> bool {
    fs::symlink_metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
        .and_then(|modified| SystemTime::now().duration_since(modified).ok())
        .is_some_and(|elapsed| elapsed >= age)
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use serde_json::json;

    use super::*;
    use crate::key::KeyBuilder;
    use crate::run_record::{StageOutcome, StageRun};

    fn key(n: u32) -> CacheKey {
        KeyBuilder::new(n, "test", "1").finish()
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join(".lortflow")).unwrap();
        (dir, store)
    }

    /// Commits an artifact for `key` with two files, one nested.
    fn commit(store: &Store, key: &CacheKey, stage: &str) -> Artifact {
        let staging = store.begin(key).unwrap();
        fs::write(staging.path().join("weights.bin"), b"0123456789").unwrap();
        fs::create_dir(staging.path().join("metrics")).unwrap();
        fs::write(staging.path().join("metrics/acc.json"), b"{\"acc\": 0.5}").unwrap();
        let mut manifest = Manifest::new(stage, "head", key, "1");
        manifest.params = json!({"lr": 0.1});
        manifest.summary = json!({"acc": 0.5});
        staging.commit(manifest).unwrap()
    }

    fn tmp_entries(store: &Store) -> usize {
        fs::read_dir(store.tmp_dir()).unwrap().count()
    }

    #[test]
    fn open_creates_the_layout() {
        let (_dir, store) = store();
        for sub in ["objects", "tmp", "stages", "runs"] {
            assert!(store.root().join(sub).is_dir(), "{sub}");
        }
    }

    #[test]
    fn commit_then_get_round_trips() {
        let (_dir, store) = store();
        let key = key(1);
        assert!(store.get(&key).unwrap().is_none());

        let committed = commit(&store, &key, "lort");
        assert_eq!(committed.dir(), store.object_dir(&key));
        let manifest = committed.manifest();
        assert_eq!(manifest.key, key);
        let files: Vec<_> = manifest.files.keys().map(String::as_str).collect();
        assert_eq!(files, ["metrics/acc.json", "weights.bin"]);
        assert_eq!(manifest.files["weights.bin"].size, 10);
        assert_eq!(
            manifest.files["weights.bin"].blake3,
            blake3::hash(b"0123456789").to_hex().as_str()
        );

        let got = store.get(&key).unwrap().unwrap();
        assert_eq!(got.manifest(), committed.manifest());
        assert_eq!(fs::read(got.file("weights.bin")).unwrap(), b"0123456789");
        assert_eq!(tmp_entries(&store), 0, "staging directory left behind");
    }

    #[test]
    fn flipped_byte_is_reported_naming_stage_and_file() {
        let (_dir, store) = store();
        let key = key(1);
        let artifact = commit(&store, &key, "lort");
        let path = artifact.file("weights.bin");
        let mut bytes = fs::read(&path).unwrap();
        bytes[3] ^= 0x01;
        fs::write(&path, bytes).unwrap();

        let err = store.get(&key).unwrap_err();
        let StoreError::Corrupt {
            stage, path: bad, ..
        } = &err
        else {
            panic!("expected Corrupt, got {err:?}");
        };
        assert_eq!(stage.as_deref(), Some("lort"));
        assert_eq!(bad, &path);
        let message = err.to_string();
        assert!(message.contains("`lort`"), "{message}");
        assert!(message.contains("weights.bin"), "{message}");
        assert!(message.contains("does not match its digest"), "{message}");
        // The cheap check does not hash, so it still succeeds.
        assert!(store.get_unverified(&key).unwrap().is_some());
    }

    /// A large file is hashed once its metadata settles, then trusted while the metadata stays;
    /// a rewrite of the same size changes its times and is hashed (and caught) again.
    #[test]
    fn a_large_file_is_verified_through_the_digest_cache() {
        let (_dir, store) = store();
        let key = key(1);
        let staging = store.begin(&key).unwrap();
        let big = vec![7u8; LARGE_ARTIFACT_FILE as usize];
        let path = staging.path().join("train.pack");
        fs::write(&path, &big).unwrap();
        // Outside the racy window, as a pack written long enough ago.
        let old = std::time::SystemTime::now() - Duration::from_secs(60);
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let artifact = staging
            .commit(Manifest::new("photos", "dataset", &key, "1"))
            .unwrap();
        store.get(&key).unwrap().unwrap();
        let cached = fs::read_to_string(store.root().join(ARTIFACT_DIGESTS)).unwrap();
        assert!(cached.contains("train.pack"), "{cached}");
        store.get(&key).unwrap().unwrap();
        let mut changed = big.clone();
        changed[12345] = 8;
        fs::write(artifact.file("train.pack"), &changed).unwrap();
        let err = store.get(&key).unwrap_err().to_string();
        assert!(err.contains("does not match its digest"), "{err}");
    }

    #[test]
    fn truncated_file_is_reported() {
        let (_dir, store) = store();
        let key = key(1);
        let artifact = commit(&store, &key, "lort");
        File::options()
            .write(true)
            .open(artifact.file("metrics/acc.json"))
            .unwrap()
            .set_len(2)
            .unwrap();
        let err = store.get(&key).unwrap_err();
        assert!(err.to_string().contains("has 2 bytes"), "{err}");
    }

    #[test]
    fn missing_file_is_reported() {
        let (_dir, store) = store();
        let key = key(1);
        let artifact = commit(&store, &key, "lort");
        fs::remove_file(artifact.file("weights.bin")).unwrap();
        let err = store.get(&key).unwrap_err();
        assert!(err.to_string().contains("weights.bin` is missing"), "{err}");
    }

    #[test]
    fn truncated_manifest_is_reported() {
        let (_dir, store) = store();
        let key = key(1);
        let artifact = commit(&store, &key, "lort");
        let manifest = artifact.dir().join(MANIFEST_FILE);
        let bytes = fs::read(&manifest).unwrap();
        fs::write(&manifest, &bytes[..bytes.len() / 2]).unwrap();

        for err in [
            store.get(&key).unwrap_err(),
            store.get_unverified(&key).unwrap_err(),
        ] {
            let StoreError::Corrupt { path, stage, .. } = &err else {
                panic!("expected Corrupt, got {err:?}");
            };
            assert_eq!(path, &manifest);
            assert_eq!(stage, &None);
            assert!(err.to_string().contains("is not a valid manifest"), "{err}");
        }
    }

    #[test]
    fn manifest_path_escaping_the_artifact_is_corrupt() {
        let (_dir, store) = store();
        let key = key(1);
        let artifact = commit(&store, &key, "lort");
        let mut manifest = artifact.manifest().clone();
        let entry = manifest.files["weights.bin"].clone();
        manifest.files.insert("../../lock".into(), entry);
        fs::write(
            artifact.dir().join(MANIFEST_FILE),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
        let err = store.get(&key).unwrap_err();
        assert!(err.is_corrupt(), "{err:?}");
    }

    #[test]
    fn evict_then_rebuild() {
        let (_dir, store) = store();
        let key = key(1);
        let artifact = commit(&store, &key, "lort");
        fs::write(artifact.file("weights.bin"), b"garbage!!!").unwrap();
        assert!(store.get(&key).unwrap_err().is_corrupt());

        assert!(store.evict(&key).unwrap());
        assert!(!store.evict(&key).unwrap());
        assert!(store.get(&key).unwrap().is_none());
        assert_eq!(tmp_entries(&store), 0);
        commit(&store, &key, "lort");
        assert!(store.get(&key).unwrap().is_some());
    }

    #[test]
    fn a_replacement_keeps_the_old_artifact_until_the_new_one_is_committed() {
        let (_dir, store) = store();
        let key = key(1);
        commit(&store, &key, "old");
        let staging = store.begin(&key).unwrap();
        fs::write(staging.path().join("weights.bin"), b"new weights").unwrap();
        // While the new artifact is being built, the old one is still there and trusted.
        assert_eq!(store.get(&key).unwrap().unwrap().manifest().stage, "old");
        let replaced = staging
            .commit_replacing(Manifest::new("new", "head", &key, "1"))
            .unwrap();
        assert_eq!(replaced.manifest().stage, "new");
        assert_eq!(store.get(&key).unwrap().unwrap().manifest().stage, "new");
        assert_eq!(tmp_entries(&store), 0);

        // An abandoned replacement (Ctrl-C, a failed stage) leaves the old artifact alone.
        let staging = store.begin(&key).unwrap();
        fs::write(staging.path().join("weights.bin"), b"half").unwrap();
        drop(staging);
        assert_eq!(store.get(&key).unwrap().unwrap().manifest().stage, "new");
    }

    #[test]
    fn a_replacement_cut_short_between_its_renames_is_undone_by_clean_tmp() {
        let (_dir, store) = store();
        let key = key(1);
        commit(&store, &key, "old");
        // The process dies right after moving the old artifact aside.
        let aside = store.set_aside(&key).unwrap();
        assert!(aside.exists());
        assert!(store.get(&key).unwrap().is_none());
        let lock = store.lock().unwrap();
        store.clean_tmp(&lock).unwrap();
        assert_eq!(store.get(&key).unwrap().unwrap().manifest().stage, "old");
        assert_eq!(tmp_entries(&store), 0);

        // Once the replacement is in place, a leftover old copy is just garbage.
        commit(&store, &key, "old");
        let aside = store.set_aside(&key).unwrap();
        commit(&store, &key, "new");
        assert!(aside.exists());
        store.clean_tmp(&lock).unwrap();
        assert_eq!(store.get(&key).unwrap().unwrap().manifest().stage, "new");
        assert_eq!(tmp_entries(&store), 0);
    }

    #[test]
    fn uncommitted_staging_is_never_returned_and_is_cleaned() {
        let (_dir, store) = store();
        let key = key(1);
        let staging = store.begin(&key).unwrap();
        fs::write(staging.path().join("weights.bin"), b"half").unwrap();
        let path = staging.path().to_owned();
        // Simulate SIGKILL: the process dies without running destructors.
        std::mem::forget(staging);

        assert!(store.get(&key).unwrap().is_none());
        assert!(store.list().unwrap().is_empty());
        assert!(path.exists());

        let lock = store.lock().unwrap();
        assert_eq!(store.clean_tmp(&lock).unwrap(), 1);
        assert!(!path.exists());
        assert!(store.get(&key).unwrap().is_none());
    }

    #[test]
    fn dropped_staging_is_removed() {
        let (_dir, store) = store();
        let staging = store.begin(&key(1)).unwrap();
        fs::write(staging.path().join("x"), b"x").unwrap();
        let path = staging.path().to_owned();
        drop(staging);
        assert!(!path.exists());
    }

    #[test]
    fn clean_tmp_needs_this_stores_lock() {
        let (_dir, store) = store();
        let (_other_dir, other) = self::store();
        let lock = other.lock().unwrap();
        assert!(matches!(
            store.clean_tmp(&lock),
            Err(StoreError::WrongLock { .. })
        ));
    }

    #[test]
    fn clean_tmp_removes_only_old_atomic_temps() {
        let (_dir, store) = store();
        let runs = store.root().join("runs");
        let old = runs.join(".tmp-1-0");
        let fresh = runs.join(".tmp-1-1");
        fs::write(&old, b"").unwrap();
        fs::write(&fresh, b"").unwrap();
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        let lock = store.lock().unwrap();
        assert_eq!(store.clean_tmp(&lock).unwrap(), 1);
        assert!(!old.exists());
        assert!(fresh.exists());
    }

    #[test]
    fn second_commit_of_the_same_key_keeps_the_first() {
        let (_dir, store) = store();
        let key = key(1);
        let first = store.begin(&key).unwrap();
        let second = store.begin(&key).unwrap();
        fs::write(first.path().join("out"), b"first").unwrap();
        fs::write(second.path().join("out"), b"second").unwrap();
        first.commit(Manifest::new("a", "k", &key, "1")).unwrap();
        let kept = second.commit(Manifest::new("a", "k", &key, "1")).unwrap();
        assert_eq!(fs::read(kept.file("out")).unwrap(), b"first");
        assert_eq!(tmp_entries(&store), 0);
    }

    #[test]
    fn commit_replaces_a_corrupt_artifact() {
        let (_dir, store) = store();
        let key = key(1);
        let artifact = commit(&store, &key, "lort");
        fs::remove_file(artifact.dir().join(MANIFEST_FILE)).unwrap();
        let staging = store.begin(&key).unwrap();
        fs::write(staging.path().join("out"), b"new").unwrap();
        let replaced = staging
            .commit(Manifest::new("lort", "k", &key, "1"))
            .unwrap();
        assert_eq!(fs::read(replaced.file("out")).unwrap(), b"new");
        assert!(store.get(&key).unwrap().is_some());
    }

    #[test]
    fn commit_overrides_the_manifest_key() {
        let (_dir, store) = store();
        let staging = store.begin(&key(1)).unwrap();
        let artifact = staging
            .commit(Manifest::new("a", "k", &key(2), "1"))
            .unwrap();
        assert_eq!(artifact.manifest().key, key(1));
    }

    #[test]
    fn stage_may_not_write_its_own_manifest() {
        let (_dir, store) = store();
        let key = key(1);
        let staging = store.begin(&key).unwrap();
        fs::write(staging.path().join(MANIFEST_FILE), b"{}").unwrap();
        let err = staging
            .commit(Manifest::new("a", "k", &key, "1"))
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidArtifact { .. }), "{err:?}");
        assert!(store.get(&key).unwrap().is_none());
        assert_eq!(tmp_entries(&store), 0);
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_refused() {
        let (_dir, store) = store();
        let key = key(1);
        let staging = store.begin(&key).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", staging.path().join("link")).unwrap();
        let err = staging
            .commit(Manifest::new("a", "k", &key, "1"))
            .unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }

    #[test]
    fn list_and_gc_keep_only_the_given_keys() {
        let (_dir, store) = store();
        let keys: Vec<_> = (1..=3).map(key).collect();
        for (i, key) in keys.iter().enumerate() {
            commit(&store, key, &format!("stage{i}"));
        }
        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 3);
        let info = listed.iter().find(|info| info.key == keys[0]).unwrap();
        assert_eq!(info.stage.as_deref(), Some("stage0"));
        assert_eq!(info.kind.as_deref(), Some("head"));
        // Manifests differ in length (their timestamps do), so measure each one.
        let size_of = |key: &CacheKey| {
            let manifest = fs::metadata(store.object_dir(key).join(MANIFEST_FILE)).unwrap();
            10 + 12 + manifest.len()
        };
        assert_eq!(info.size_bytes, size_of(&keys[0]));
        let expected_freed = size_of(&keys[0]) + size_of(&keys[2]);

        // Checkpoints of an unfinished stage no pipeline needs, and of one a pipeline still does.
        for key in [&keys[1], &key(9)] {
            fs::create_dir_all(store.work_dir(key)).unwrap();
            fs::write(store.work_dir(key).join("epoch.mpk"), b"12345").unwrap();
        }

        let keep: HashSet<_> = [keys[1].clone()].into();
        let lock = store.lock().unwrap();
        let report = store.gc(&keep, &lock).unwrap();
        assert_eq!(report.removed, 2);
        assert_eq!(report.kept, 1);
        assert_eq!(report.work_removed, 1);
        assert_eq!(report.bytes_freed, expected_freed + 5);
        assert!(!store.work_dir(&key(9)).exists());
        assert!(store.work_dir(&keys[1]).join("epoch.mpk").exists());
        let left: Vec<_> = store.list().unwrap().into_iter().map(|i| i.key).collect();
        assert_eq!(left, [keys[1].clone()]);
        assert!(store.get(&keys[1]).unwrap().is_some());
    }

    #[test]
    fn list_shows_corrupt_artifacts() {
        let (_dir, store) = store();
        let key = key(1);
        let artifact = commit(&store, &key, "lort");
        fs::write(artifact.dir().join(MANIFEST_FILE), b"not json").unwrap();
        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].stage, None);
    }

    #[test]
    fn stage_index_remembers_the_last_manifest() {
        let (_dir, store) = store();
        assert!(store.last_manifest_for("lort").unwrap().is_none());
        let first = key(1);
        let second = key(2);
        commit(&store, &first, "lort");
        commit(&store, &second, "lort");
        store.record_stage("lort", &first).unwrap();
        store.record_stage("lort", &second).unwrap();
        let manifest = store.last_manifest_for("lort").unwrap().unwrap();
        assert_eq!(manifest.key, second);
        assert_eq!(manifest.params, json!({"lr": 0.1}));

        // The record survives garbage collection of the artifact.
        store.evict(&second).unwrap();
        assert_eq!(
            store.last_manifest_for("lort").unwrap().unwrap().key,
            second
        );
        assert!(matches!(
            store.record_stage("lort", &key(3)),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn stage_names_are_sanitised_without_collisions() {
        assert_eq!(stage_file_name("head_lort-1"), "head_lort-1.json");
        let dotted = stage_file_name("a.b");
        let slashed = stage_file_name("../a/b");
        assert!(dotted.starts_with("a_b-"), "{dotted}");
        assert!(
            !slashed.contains('/') && !slashed.starts_with('.'),
            "{slashed}"
        );
        assert_ne!(dotted, stage_file_name("a_b"));
        assert_ne!(dotted, stage_file_name("a:b"));

        let (_dir, store) = store();
        let key = key(1);
        commit(&store, &key, "a.b");
        store.record_stage("a.b", &key).unwrap();
        assert!(store.last_manifest_for("a.b").unwrap().is_some());
        assert!(store.last_manifest_for("a_b").unwrap().is_none());
        assert!(store.last_manifest_for("a:b").unwrap().is_none());
    }

    #[test]
    fn corrupt_stage_index_reads_as_absent() {
        let (_dir, store) = store();
        fs::write(store.root().join("stages/lort.json"), b"{").unwrap();
        assert!(store.last_manifest_for("lort").unwrap().is_none());
    }

    fn run(id: &str, started_at: f64) -> RunRecord {
        RunRecord {
            id: id.into(),
            pipeline: "pipelines/cifar.kdl".into(),
            started_at: Timestamp::from_unix_seconds(started_at),
            duration_s: 2.5,
            stages: vec![
                StageRun {
                    name: "features".into(),
                    kind: "extract".into(),
                    key: Some(key(1)),
                    outcome: StageOutcome::Cached,
                    duration_s: 0.0,
                    error: None,
                },
                StageRun {
                    name: "lort".into(),
                    kind: "head".into(),
                    key: None,
                    outcome: StageOutcome::Failed,
                    duration_s: 2.0,
                    error: Some("loss is NaN at epoch 3".into()),
                },
            ],
        }
    }

    #[test]
    fn run_records_round_trip_newest_first() {
        let (_dir, store) = store();
        let older = run("20261126T194003.000Z-10", 1_795_722_003.0);
        let newer = run("20261126T194103.000Z-11", 1_795_722_063.0);
        let fresh = RunRecord::new("pipelines/cifar.kdl");
        for record in [&newer, &older, &fresh] {
            store.write_run_record(record).unwrap();
        }
        fs::write(store.root().join("runs/garbage.json"), b"[").unwrap();

        assert_eq!(store.load_run(&older.id).unwrap(), older);
        let ids: Vec<_> = store
            .list_runs()
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, [fresh.id.clone(), newer.id.clone(), older.id.clone()]);

        assert!(matches!(
            store.load_run("20000101T000000.000Z-1"),
            Err(StoreError::RunNotFound { .. })
        ));
        assert!(matches!(
            store.load_run("../lock"),
            Err(StoreError::InvalidRunId { .. })
        ));
        assert!(matches!(
            store.load_run("garbage"),
            Err(StoreError::CorruptRun { .. })
        ));
    }
}
