//! Watch mode's file side: which paths a pipeline depends on ([`WatchSet`]), and a watcher that
//! reports changes to them in debounced batches ([`FileWatcher`]).
//!
//! Editors rarely write a file in place: many write a temporary file and rename it over the
//! original, which replaces the inode a per-file watch would follow. So the watcher watches the
//! *directories* holding the files and filters events by path. Directories a stage reads whole
//! (dataset roots) are watched recursively. The artifact store is ignored, or every commit would
//! trigger another cycle. Events are debounced on the trailing edge: a batch is delivered once no
//! relevant event arrived for the debounce interval, so one save (write, rename, chmod) is one
//! change. Deciding what to do with a change (re-lint, re-plan, cancel, run) is the caller's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lortflow_lang::SourceMap;
use notify::{EventKind, RecursiveMode, Watcher};

use crate::plan::{ConcreteStage, external_files};

/// A batch of continuous writes is delivered after at most this long, so a file that is written
/// without pause (a log in a watched dataset root) cannot hold changes back for ever.
const MAX_BATCH: Duration = Duration::from_secs(2);

/// The paths a pipeline depends on, and the paths to ignore.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchSet {
    /// Files whose own events matter (pipeline files, list files, checkpoints, features).
    files: BTreeSet<PathBuf>,
    /// Directories whose whole content matters (dataset roots).
    trees: BTreeSet<PathBuf>,
    /// Directories never reported (the artifact store).
    ignored: BTreeSet<PathBuf>,
}

impl WatchSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The files of a checked pipeline (the root file and its includes), the external files its
    /// plan reads, and the store to ignore.
    pub fn for_pipeline(sources: &SourceMap, plan: &[ConcreteStage], store_root: &Path) -> Self {
        let mut set = WatchSet::new();
        set.ignore(store_root);
        for (_, file) in sources.files() {
            set.add(&file.path);
        }
        for stage in plan {
            for (_, path) in external_files(stage) {
                set.add(&path);
            }
        }
        set
    }

    /// Adds a path: a directory is watched with everything below it, anything else (a file, or a
    /// path that does not exist yet) by its own events.
    pub fn add(&mut self, path: &Path) {
        let path = normalize(path);
        if path.is_dir() {
            self.trees.insert(path);
        } else {
            self.files.insert(path);
        }
    }

    /// Never reports events below `dir`.
    pub fn ignore(&mut self, dir: &Path) {
        self.ignored.insert(normalize(dir));
    }

    /// Adds every path of `other` (and its ignored directories).
    pub fn extend(&mut self, other: &WatchSet) {
        self.files.extend(other.files.iter().cloned());
        self.trees.extend(other.trees.iter().cloned());
        self.ignored.extend(other.ignored.iter().cloned());
    }

    /// How many files and directories are watched.
    pub fn len(&self) -> usize {
        self.files.len() + self.trees.len()
    }

    /// Whether nothing is watched.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an event on `path` (as the watcher reports it: normalized) is a change to the set.
    pub fn matches(&self, path: &Path) -> bool {
        if self.ignored.iter().any(|i| path.starts_with(i)) {
            return false;
        }
        if self.files.contains(path) || self.trees.iter().any(|t| path.starts_with(t)) {
            return true;
        }
        // A directory on the way to a watched path was created, renamed or removed: the path
        // may have appeared or gone.
        self.files
            .iter()
            .chain(&self.trees)
            .any(|t| t.starts_with(path))
    }

    /// The directories to register with the OS watcher, and how.
    fn anchors(&self) -> BTreeMap<PathBuf, RecursiveMode> {
        let mut anchors = BTreeMap::new();
        for tree in &self.trees {
            anchors.insert(tree.clone(), RecursiveMode::Recursive);
        }
        // A file is watched through its directory (editors replace files by renaming), a tree
        // also through its parent (a dataset directory can be replaced whole); a path that does
        // not exist yet through its nearest existing ancestor, to see it appear.
        for path in self.files.iter().chain(&self.trees) {
            if let Some(dir) = path.parent().and_then(existing_ancestor) {
                anchors.entry(dir).or_insert(RecursiveMode::NonRecursive);
            }
        }
        anchors
    }
}

/// The nearest existing directory at or above `path`.
fn existing_ancestor(path: &Path) -> Option<PathBuf> {
    path.ancestors().find(|a| a.is_dir()).map(Path::to_path_buf)
}

/// An absolute path with its existing prefix canonicalised (symlinks, `/tmp` on macOS), so
/// that it compares equal to the paths the OS watcher reports below a canonical directory.
fn normalize(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    // Lexically drop `.` and resolve `..`; the files named by a pipeline are not expected to
    // sit behind symlinked parents that `..` would leave differently.
    let mut lexical = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                lexical.pop();
            }
            other => lexical.push(other),
        }
    }
    for prefix in lexical.ancestors() {
        if let Ok(canonical) = std::fs::canonicalize(prefix) {
            let rest = lexical
                .strip_prefix(prefix)
                .expect("an ancestor is a prefix");
            return if rest.as_os_str().is_empty() {
                canonical
            } else {
                canonical.join(rest)
            };
        }
    }
    lexical
}

/// One debounced batch of changes.
#[derive(Debug, Clone)]
pub struct Change {
    /// The changed paths of the set (normalized), possibly none after a rescan.
    pub paths: BTreeSet<PathBuf>,
    /// The OS dropped events (queue overflow): anything may have changed.
    pub rescan: bool,
    /// When the first event of the batch arrived.
    pub first_event: Instant,
    /// When the batch was delivered (the end of the debounce).
    pub delivered: Instant,
}

/// Why the watcher could not start or watch a path. Fatal for watch mode: without it, no
/// change would ever be seen.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The OS watcher could not be created (inotify limits, ...).
    #[error("cannot start the file watcher: {0}")]
    Start(#[source] notify::Error),
    /// A directory could not be watched.
    #[error("cannot watch `{path}`: {source}")]
    Watch {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: notify::Error,
    },
}

/// Watches a [`WatchSet`] and calls back with each debounced [`Change`] (on its own thread).
pub struct FileWatcher {
    watcher: notify::RecommendedWatcher,
    set: Arc<Mutex<WatchSet>>,
    active: BTreeMap<PathBuf, RecursiveMode>,
}

impl std::fmt::Debug for FileWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatcher")
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

impl FileWatcher {
    /// Starts a watcher with an empty set; `on_change` receives the batches. The debounce thread
    /// ends when the watcher is dropped.
    pub fn start(
        debounce: Duration,
        on_change: impl Fn(Change) + Send + 'static,
    ) -> Result<Self, WatchError> {
        let set = Arc::new(Mutex::new(WatchSet::new()));
        let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
        let watcher = notify::recommended_watcher(tx).map_err(WatchError::Start)?;
        let filter = Arc::clone(&set);
        std::thread::Builder::new()
            .name("lortflow-watch".into())
            .spawn(move || debounce_loop(&rx, &filter, debounce, &on_change))
            .map_err(|e| WatchError::Start(notify::Error::io(e)))?;
        Ok(FileWatcher {
            watcher,
            set,
            active: BTreeMap::new(),
        })
    }

    /// Replaces the watched set: registers the directories it needs, drops the others.
    ///
    /// On error the set is still replaced (events of the directories that could be watched are
    /// reported), so a caller may treat the error as a warning after start.
    pub fn watch(&mut self, set: WatchSet) -> Result<(), WatchError> {
        let wanted = set.anchors();
        *self
            .set
            .lock()
            .expect("the watch set lock should not be poisoned") = set;
        for (dir, mode) in &self.active {
            if wanted.get(dir) != Some(mode) {
                // A directory that vanished is unwatched by the OS already.
                let _ = self.watcher.unwatch(dir);
            }
        }
        let mut first_error = None;
        let mut active = BTreeMap::new();
        for (dir, mode) in wanted {
            if self.active.get(&dir) != Some(&mode) {
                if let Err(source) = self.watcher.watch(&dir, mode) {
                    first_error.get_or_insert(WatchError::Watch {
                        path: dir.clone(),
                        source,
                    });
                    continue;
                }
                tracing::debug!(dir = %dir.display(), ?mode, "watching");
            }
            active.insert(dir, mode);
        }
        self.active = active;
        first_error.map_or(Ok(()), Err)
    }

    /// The directories registered with the OS watcher.
    pub fn directories(&self) -> impl Iterator<Item = &Path> {
        self.active.keys().map(PathBuf::as_path)
    }
}

/// Collects relevant events into batches and delivers each on its trailing edge.
fn debounce_loop(
    rx: &mpsc::Receiver<notify::Result<notify::Event>>,
    set: &Mutex<WatchSet>,
    debounce: Duration,
    on_change: &dyn Fn(Change),
) {
    let mut batch: Option<Change> = None;
    let mut last_event = Instant::now();
    loop {
        let received = match &batch {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(b) => {
                let quiet_until = last_event + debounce;
                let latest = b.first_event + MAX_BATCH;
                let wait = quiet_until
                    .min(latest)
                    .saturating_duration_since(Instant::now());
                rx.recv_timeout(wait)
            }
        };
        match received {
            Ok(Ok(event)) => {
                let now = Instant::now();
                let rescan = event.need_rescan();
                // Reads (our own digesting and linting included) are not changes.
                if matches!(event.kind, EventKind::Access(_)) && !rescan {
                    continue;
                }
                let relevant: Vec<PathBuf> = {
                    let set = set
                        .lock()
                        .expect("the watch set lock should not be poisoned");
                    event
                        .paths
                        .iter()
                        .filter(|p| set.matches(p))
                        .cloned()
                        .collect()
                };
                if relevant.is_empty() && !rescan {
                    continue;
                }
                tracing::trace!(kind = ?event.kind, paths = ?relevant, "relevant event");
                let b = batch.get_or_insert_with(|| Change {
                    paths: BTreeSet::new(),
                    rescan: false,
                    first_event: now,
                    delivered: now,
                });
                b.paths.extend(relevant);
                b.rescan |= rescan;
                last_event = now;
            }
            Ok(Err(e)) => tracing::warn!("file watcher: {e}"),
            Err(RecvTimeoutError::Timeout) => {
                if let Some(mut b) = batch.take() {
                    b.delivered = Instant::now();
                    on_change(b);
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(dir: &Path) -> WatchSet {
        let mut set = WatchSet::new();
        set.add(&dir.join("pipeline.kdl"));
        set.add(&dir.join("data"));
        set.add(&dir.join("missing/sub/file.bin"));
        set.ignore(&dir.join(".lortflow"));
        set
    }

    #[test]
    fn matches_watched_files_trees_and_missing_ancestors_but_not_the_store() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = normalize(tmp.path());
        std::fs::create_dir_all(dir.join("data/train")).unwrap();
        let set = set(&dir);
        for (path, expected) in [
            ("pipeline.kdl", true),
            ("pipeline.kdl.tmp", false),
            ("other.kdl", false),
            ("data", true),
            ("data/train/0.png", true),
            (".lortflow/objects/abc/manifest.json", false),
            ("missing", true),
            ("missing/sub", true),
            ("missing/sub/file.bin", true),
            ("missing/other", false),
        ] {
            assert_eq!(set.matches(&dir.join(path)), expected, "{path}");
        }
    }

    #[test]
    fn anchors_are_parents_trees_and_nearest_existing_ancestors() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = normalize(tmp.path());
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let anchors = set(&dir).anchors();
        assert_eq!(anchors.get(&dir), Some(&RecursiveMode::NonRecursive));
        assert_eq!(
            anchors.get(&dir.join("data")),
            Some(&RecursiveMode::Recursive)
        );
        assert_eq!(anchors.len(), 2, "{anchors:?}");
    }

    #[test]
    fn normalize_resolves_dots_and_keeps_missing_tails() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = normalize(tmp.path());
        assert_eq!(
            normalize(&tmp.path().join("./a/../b/c.kdl")),
            dir.join("b/c.kdl")
        );
    }

    #[track_caller]
    fn wait_for(rx: &mpsc::Receiver<Change>) -> Change {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("a change should be reported")
    }

    #[test]
    fn a_save_by_rename_is_one_debounced_change_and_the_store_is_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = normalize(tmp.path());
        let file = dir.join("pipeline.kdl");
        std::fs::write(&file, "lortflow 1\n").unwrap();
        std::fs::create_dir_all(dir.join(".lortflow")).unwrap();
        let (tx, rx) = mpsc::channel();
        let mut watcher = FileWatcher::start(Duration::from_millis(50), move |c| {
            let _ = tx.send(c);
        })
        .unwrap();
        let mut set = WatchSet::new();
        set.add(&file);
        set.ignore(&dir.join(".lortflow"));
        watcher.watch(set).unwrap();

        // Writes to the store and to unrelated files are not changes.
        std::fs::write(dir.join(".lortflow/lock"), "x").unwrap();
        std::fs::write(dir.join("notes.txt"), "x").unwrap();
        // Reading the watched file is not a change either.
        let _ = std::fs::read_to_string(&file).unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());

        // An editor's save: write a temporary file, then rename it over the original.
        let tmp_file = dir.join(".pipeline.kdl.swp");
        std::fs::write(&tmp_file, "lortflow 1\n// edited\n").unwrap();
        std::fs::rename(&tmp_file, &file).unwrap();
        let change = wait_for(&rx);
        assert_eq!(change.paths, BTreeSet::from([file.clone()]));
        // One save is one batch.
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());

        // The replaced file is still watched (through its directory).
        std::fs::write(&file, "lortflow 1\n// again\n").unwrap();
        assert_eq!(wait_for(&rx).paths, BTreeSet::from([file]));
    }

    #[test]
    fn a_directory_created_later_is_watched_after_the_set_is_refreshed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = normalize(tmp.path());
        let (tx, rx) = mpsc::channel();
        let mut watcher = FileWatcher::start(Duration::from_millis(50), move |c| {
            let _ = tx.send(c);
        })
        .unwrap();
        let mut set = WatchSet::new();
        set.add(&dir.join("feats/train.npy"));
        watcher.watch(set.clone()).unwrap();
        std::fs::create_dir(dir.join("feats")).unwrap();
        assert!(wait_for(&rx).paths.contains(&dir.join("feats")));
        // The caller re-resolves the set after each cycle.
        watcher.watch(set).unwrap();
        assert!(watcher.directories().any(|d| d == dir.join("feats")));
        std::fs::write(dir.join("feats/train.npy"), "x").unwrap();
        assert!(wait_for(&rx).paths.contains(&dir.join("feats/train.npy")));
    }
}
