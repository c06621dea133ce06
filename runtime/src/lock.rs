//! The store lock: one lortflow run at a time per artifact store.
//!
//! Two runs sharing a store would race on staging, eviction and garbage collection, so a run holds
//! [`StoreLock`] for its whole duration. The lock is a file, `<store>/lock`, created exclusively
//! (`O_EXCL`) and holding JSON that says who holds it: pid, start time, host and command line. That
//! content serves two purposes: the error for a second run names the holder, and a lock left by a
//! killed run can be recognised as stale (its process is gone) and taken over without asking the
//! user to delete anything.
//!
//! Only std is used: liveness comes from `/proc` on Linux (and `kill -0` on other Unixes), and pid
//! reuse is detected by comparing the process start time recorded in the lock with the one in
//! `/proc/<pid>/stat`.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::time::Timestamp;

/// Name of the lock file inside the store.
pub const LOCK_FILE: &str = "lock";

/// A lock file that cannot be parsed is normally one being written right now (between its
/// creation and the write of its content). Past this age it is taken to be left by a crash.
const UNREADABLE_GRACE: Duration = Duration::from_secs(5);

/// After replacing a stale lock, wait this long before checking that the replacement is still
/// ours. Two runs that judged the same lock stale at the same moment both rename over it; the
/// pause lets the later rename land before the earlier run confirms, so only one of them wins.
const TAKEOVER_SETTLE: Duration = Duration::from_millis(20);

/// How long to keep retrying while the lock file changes under us before giving up.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors from acquiring the store lock.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum LockError {
    /// Another live process holds the lock.
    #[error(
        "the store `{}` is in use by another lortflow run (pid {pid}{}, started {started_at}); \
         wait for it to finish, or use --store DIR for a separate store",
        store.display(),
        host_suffix(hostname.as_deref())
    )]
    #[diagnostic(
        code(lortflow::runtime::store_locked),
        help("if no lortflow run is active, delete `{}/lock`", store.display())
    )]
    Held {
        /// The store directory.
        store: PathBuf,
        /// The holder's process id.
        pid: u32,
        /// When the holder started, in UTC, e.g. `2026-11-26 19:40:03 UTC`.
        started_at: String,
        /// The holder's host, when it is not this machine.
        hostname: Option<String>,
    },
    /// The lock file kept changing while we tried to take it (many runs starting at once).
    #[error("could not lock the store `{}`: other runs keep replacing its lock file", store.display())]
    #[diagnostic(code(lortflow::runtime::store_lock_contended))]
    Contended {
        /// The store directory.
        store: PathBuf,
    },
    /// A filesystem operation failed.
    #[error("cannot {action} `{}`", path.display())]
    #[diagnostic(code(lortflow::runtime::store_lock_io))]
    Io {
        /// What we were doing, e.g. "create the lock file".
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

fn host_suffix(hostname: Option<&str>) -> String {
    hostname.map(|h| format!(" on `{h}`")).unwrap_or_default()
}

/// What the lock file says about its holder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct LockInfo {
    pid: u32,
    /// Human-readable UTC start time.
    started_at: String,
    started_at_unix: f64,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks after boot), to tell a live holder from an
    /// unrelated process that reused its pid.
    #[serde(default)]
    process_start_ticks: Option<u64>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    command: String,
    /// Unique per acquisition, so a holder can tell its own lock from a successor's.
    token: String,
}

impl LockInfo {
    fn current() -> Self {
        let now = Timestamp::now();
        let pid = std::process::id();
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let command: Vec<String> = std::env::args_os()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        Self {
            pid,
            started_at: now.to_string(),
            started_at_unix: now.unix_seconds(),
            process_start_ticks: process_start_ticks(pid),
            hostname: hostname(),
            command: command.join(" "),
            token: format!("{}-{nanos}", fsutil::unique_name("lock")),
        }
    }

    fn started_at_display(&self) -> String {
        if self.started_at_unix.is_finite() && self.started_at_unix > 0.0 {
            Timestamp::from_unix_seconds(self.started_at_unix).to_string()
        } else {
            self.started_at.clone()
        }
    }
}

/// Exclusive ownership of an artifact store, released when dropped.
///
/// ```no_run
/// # use lortflow_runtime::StoreLock;
/// let lock = StoreLock::acquire(".lortflow".as_ref())?;
/// // ... run the pipeline ...
/// drop(lock);
/// # Ok::<(), lortflow_runtime::LockError>(())
/// ```
#[derive(Debug)]
pub struct StoreLock {
    file: LockFile,
}

/// The lock file and the token that marks it as ours; unlike [`StoreLock`], dropping it leaves
/// the file alone, which is what a failed acquisition needs.
#[derive(Debug)]
struct LockFile {
    store: PathBuf,
    path: PathBuf,
    token: String,
}

impl StoreLock {
    /// Takes the lock of the store at `store_root`, creating the directory if needed.
    ///
    /// Fails with [`LockError::Held`] when a live process holds it, including this process: the
    /// lock is not reentrant. A lock whose holder is dead (or whose file has been unreadable for
    /// a few seconds) is taken over; that is logged at info level.
    pub fn acquire(store_root: &Path) -> Result<Self, LockError> {
        fs::create_dir_all(store_root).map_err(|source| LockError::Io {
            action: "create the store directory",
            path: store_root.to_owned(),
            source,
        })?;
        let store = fs::canonicalize(store_root).map_err(|source| LockError::Io {
            action: "resolve the store directory",
            path: store_root.to_owned(),
            source,
        })?;
        let path = store.join(LOCK_FILE);
        let me = LockInfo::current();
        let content = serde_json::to_vec_pretty(&me).expect("lock info should serialise");
        let lock = LockFile {
            store,
            path,
            token: me.token.clone(),
        };

        let deadline = Instant::now() + ACQUIRE_TIMEOUT;
        while Instant::now() < deadline {
            if lock.try_create(&content)? {
                tracing::debug!(path = %lock.path.display(), "acquired store lock");
                return Ok(Self { file: lock });
            }
            match lock.inspect()? {
                Holder::Gone => {}
                Holder::Alive(info) => {
                    return Err(LockError::Held {
                        store: lock.store,
                        pid: info.pid,
                        started_at: info.started_at_display(),
                        hostname: info.hostname.filter(|h| Some(h) != hostname().as_ref()),
                    });
                }
                Holder::Dead { info, raw } => {
                    tracing::info!(
                        path = %lock.path.display(),
                        pid = info.pid,
                        started_at = %info.started_at_display(),
                        "taking over the lock of a lortflow run that is no longer running"
                    );
                    if lock.take_over(&raw, &content)? {
                        return Ok(Self { file: lock });
                    }
                }
                Holder::Unreadable { raw, age } if age >= UNREADABLE_GRACE => {
                    tracing::info!(
                        path = %lock.path.display(),
                        "taking over an unreadable lock file left by a crashed run"
                    );
                    if lock.take_over(&raw, &content)? {
                        return Ok(Self { file: lock });
                    }
                }
                Holder::Unreadable { .. } => thread::sleep(Duration::from_millis(50)),
            }
        }
        Err(LockError::Contended { store: lock.store })
    }

    /// The (canonical) store directory this lock protects.
    pub fn store_root(&self) -> &Path {
        &self.file.store
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.file.path
    }
}

impl LockFile {
    /// Creates the lock file exclusively; `Ok(false)` when it already exists.
    fn try_create(&self, content: &[u8]) -> Result<bool, LockError> {
        let io_error = |source| LockError::Io {
            action: "create the lock file",
            path: self.path.clone(),
            source,
        };
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&self.path)
        {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(err) => return Err(io_error(err)),
        };
        let written = file
            .write_all(content)
            .and_then(|()| file.sync_all())
            .and_then(|()| fsutil::sync_dir(&self.store));
        if let Err(err) = written {
            // A half-written lock would block other runs for the grace period; remove it.
            let _ = fs::remove_file(&self.path);
            return Err(io_error(err));
        }
        Ok(true)
    }

    fn inspect(&self) -> Result<Holder, LockError> {
        let raw = match fs::read(&self.path) {
            Ok(raw) => raw,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Holder::Gone),
            Err(source) => {
                return Err(LockError::Io {
                    action: "read the lock file",
                    path: self.path.clone(),
                    source,
                });
            }
        };
        match serde_json::from_slice::<LockInfo>(&raw) {
            Ok(info) if holder_is_alive(&info) => Ok(Holder::Alive(info)),
            Ok(info) => Ok(Holder::Dead { info, raw }),
            Err(_) => {
                let age = fs::metadata(&self.path)
                    .and_then(|meta| meta.modified())
                    .ok()
                    .and_then(|modified| modified.elapsed().ok())
                    .unwrap_or_default();
                Ok(Holder::Unreadable { raw, age })
            }
        }
    }

    /// Replaces a stale lock (whose content was `stale`) with ours; `Ok(true)` if we own it after.
    fn take_over(&self, stale: &[u8], content: &[u8]) -> Result<bool, LockError> {
        let temp = self.store.join(fsutil::unique_name(".lock-takeover"));
        let io_error = |action, source| LockError::Io {
            action,
            path: self.path.clone(),
            source,
        };
        fs::write(&temp, content)
            .and_then(|()| fs::File::open(&temp)?.sync_all())
            .map_err(|source| io_error("write a replacement lock file", source))?;
        // If another run replaced the stale lock since we read it, its lock is live: keep it.
        if fs::read(&self.path).ok().as_deref() != Some(stale) {
            let _ = fs::remove_file(&temp);
            return Ok(false);
        }
        if let Err(source) = fs::rename(&temp, &self.path) {
            let _ = fs::remove_file(&temp);
            return Err(io_error("replace the stale lock file", source));
        }
        let _ = fsutil::sync_dir(&self.store);
        thread::sleep(TAKEOVER_SETTLE);
        Ok(self.is_ours())
    }

    fn is_ours(&self) -> bool {
        fs::read(&self.path)
            .ok()
            .and_then(|raw| serde_json::from_slice::<LockInfo>(&raw).ok())
            .is_some_and(|info| info.token == self.token)
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        // Only remove the file if it is still ours: if another run judged us dead and took over,
        // removing its lock would let a third run in beside it.
        let file = &self.file;
        if file.is_ours() {
            if let Err(err) = fs::remove_file(&file.path) {
                tracing::debug!(path = %file.path.display(), error = %err, "cannot remove store lock");
            }
        } else {
            tracing::warn!(
                path = %file.path.display(),
                "the store lock was taken over by another run while this run held it"
            );
        }
    }
}

enum Holder {
    /// The lock file disappeared between our attempt to create it and reading it.
    Gone,
    Alive(LockInfo),
    Dead {
        info: LockInfo,
        raw: Vec<u8>,
    },
    Unreadable {
        raw: Vec<u8>,
        age: Duration,
    },
}

fn holder_is_alive(info: &LockInfo) -> bool {
    // A lock taken on another machine (a shared filesystem) cannot be checked from here; assume
    // it is live rather than break a running job.
    if let (Some(theirs), Some(ours)) = (&info.hostname, hostname()) {
        if *theirs != ours {
            return true;
        }
    }
    if !process_exists(info.pid) {
        return false;
    }
    match (info.process_start_ticks, process_start_ticks(info.pid)) {
        (Some(recorded), Some(actual)) => recorded == actual,
        _ => true,
    }
}

#[cfg(target_os = "linux")]
fn process_exists(pid: u32) -> bool {
    // A zombie has exited; it only waits for its parent to reap it.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat_fields(&stat).and_then(|mut f| f.next()) != Some("Z"),
        Err(_) => Path::new(&format!("/proc/{pid}")).exists(),
    }
}

#[cfg(all(unix, not(target_os = "linux")))]
fn process_exists(pid: u32) -> bool {
    // `kill -0` checks existence without sending a signal. If it cannot even run, assume the
    // holder is alive: a false "held" is recoverable, a false "stale" is not.
    std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .map(|status| status.success())
        .unwrap_or(true)
}

#[cfg(not(unix))]
fn process_exists(_pid: u32) -> bool {
    true
}

/// The fields of `/proc/<pid>/stat` after the command name, starting with the state (field 3).
/// The command name is in parentheses and may itself contain spaces and parentheses, so the
/// split happens at the last `)`.
fn stat_fields(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace())
}

/// Start time of a process in clock ticks after boot (field 22 of `/proc/<pid>/stat`).
fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 3 is the first after the name, so field 22 is the 20th.
    stat_fields(&stat)?.nth(19)?.parse().ok()
}

fn hostname() -> Option<String> {
    let name = fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acquire_and_release() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let lock = StoreLock::acquire(&store).unwrap();
        let info: LockInfo = serde_json::from_slice(&fs::read(lock.path()).unwrap()).unwrap();
        assert_eq!(info.pid, std::process::id());
        assert!(info.started_at.ends_with("UTC"), "{}", info.started_at);
        let path = lock.path().to_owned();
        drop(lock);
        assert!(!path.exists());
        // Released, so it can be taken again.
        StoreLock::acquire(&store).unwrap();
    }

    #[test]
    fn second_acquire_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let _lock = StoreLock::acquire(dir.path()).unwrap();
        let err = StoreLock::acquire(dir.path()).unwrap_err();
        let LockError::Held { pid, ref store, .. } = err else {
            panic!("expected Held, got {err:?}");
        };
        assert_eq!(pid, std::process::id());
        assert_eq!(store, &fs::canonicalize(dir.path()).unwrap());
        let message = err.to_string();
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        assert!(
            message.contains("is in use by another lortflow run"),
            "{message}"
        );
        assert!(message.contains("--store DIR"), "{message}");
        // The refused attempt must not have removed the holder's lock.
        assert!(dir.path().join(LOCK_FILE).exists());
    }

    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn stale_lock_of_a_dead_process_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let stale = LockInfo {
            pid: dead_pid(),
            process_start_ticks: None,
            token: "old".into(),
            ..LockInfo::current()
        };
        fs::write(
            dir.path().join(LOCK_FILE),
            serde_json::to_vec(&stale).unwrap(),
        )
        .unwrap();
        let lock = StoreLock::acquire(dir.path()).unwrap();
        assert!(lock.file.is_ours());
    }

    #[test]
    fn reused_pid_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        // Our own pid is alive, but with another start time it belongs to a different process.
        let stale = LockInfo {
            process_start_ticks: process_start_ticks(std::process::id()).map(|t| t + 1),
            token: "old".into(),
            ..LockInfo::current()
        };
        if stale.process_start_ticks.is_none() {
            return; // No /proc on this platform.
        }
        fs::write(
            dir.path().join(LOCK_FILE),
            serde_json::to_vec(&stale).unwrap(),
        )
        .unwrap();
        StoreLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn old_unreadable_lock_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE);
        fs::write(&path, b"").unwrap();
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(60))
            .unwrap();
        StoreLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn drop_keeps_a_successors_lock() {
        let dir = tempfile::tempdir().unwrap();
        let lock = StoreLock::acquire(dir.path()).unwrap();
        let successor = LockInfo {
            token: "successor".into(),
            ..LockInfo::current()
        };
        fs::write(lock.path(), serde_json::to_vec(&successor).unwrap()).unwrap();
        let path = lock.path().to_owned();
        drop(lock);
        assert!(path.exists());
    }

    #[test]
    fn parses_start_time_after_a_tricky_name() {
        let stat = "42 (a) b (c)) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 777 20";
        assert_eq!(stat_fields(stat).unwrap().nth(19), Some("777"));
    }
}
