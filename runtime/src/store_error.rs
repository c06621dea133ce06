//! Errors from the artifact store.
//!
//! Callers sort them by what happens next: [`StoreError::Corrupt`] is recoverable (report it,
//! evict the artifact, rebuild the stage), [`StoreError::InvalidArtifact`] is a bug in a stage,
//! and the rest mean the store itself cannot be used, which is fatal for the run.

use std::io;
use std::path::{Path, PathBuf};

use crate::key::CacheKey;

/// Errors from [`Store`](crate::Store) operations.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("cannot {action} `{}`", path.display())]
    #[diagnostic(code(lortflow::runtime::store_io))]
    Io {
        /// What the store was doing, e.g. "create the directory".
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// A committed artifact failed verification: its manifest is missing or unreadable, or one
    /// of its files is missing or differs from the manifest.
    #[error(
        "cached artifact {}{} is corrupt: `{}` {reason}",
        key.short(),
        stage_suffix(stage.as_deref()),
        path.display()
    )]
    #[diagnostic(
        code(lortflow::runtime::corrupt_artifact),
        help("the artifact will be removed and the stage run again")
    )]
    Corrupt {
        /// The artifact's key.
        key: CacheKey,
        /// The stage that produced it, when the manifest could be read.
        stage: Option<String>,
        /// The offending file (the manifest itself, or one of the artifact's files).
        path: PathBuf,
        /// What is wrong with it, e.g. "is missing".
        reason: String,
    },

    /// A stage wrote something the store cannot hold (a symbolic link, a file name that is not
    /// UTF-8, or its own `manifest.json`).
    #[error("cannot store `{}`: {reason}", path.display())]
    #[diagnostic(code(lortflow::runtime::invalid_artifact))]
    InvalidArtifact {
        /// The offending path in the staging directory.
        path: PathBuf,
        /// Why it cannot be stored.
        reason: String,
    },

    /// No artifact with this key is in the store.
    #[error("no artifact with key {} in the store", key.short())]
    #[diagnostic(code(lortflow::runtime::artifact_not_found))]
    NotFound {
        /// The key looked up.
        key: CacheKey,
    },

    /// An operation that needs the store lock was given the lock of another store.
    #[error(
        "the lock given is for the store `{}`, not `{}`",
        lock_store.display(),
        store.display()
    )]
    #[diagnostic(code(lortflow::runtime::wrong_lock))]
    WrongLock {
        /// This store.
        store: PathBuf,
        /// The store the lock belongs to.
        lock_store: PathBuf,
    },

    /// A run id that cannot name a run record (it must be a plain file name).
    #[error("`{id}` is not a valid run id")]
    #[diagnostic(code(lortflow::runtime::invalid_run_id))]
    InvalidRunId {
        /// The id given.
        id: String,
    },

    /// No run record with this id.
    #[error("no run record `{id}` in the store")]
    #[diagnostic(code(lortflow::runtime::run_not_found))]
    RunNotFound {
        /// The id looked up.
        id: String,
    },

    /// A run record that cannot be parsed.
    #[error("run record `{}` is corrupt: {reason}", path.display())]
    #[diagnostic(code(lortflow::runtime::corrupt_run_record))]
    CorruptRun {
        /// The record file.
        path: PathBuf,
        /// The parse error.
        reason: String,
    },
}

fn stage_suffix(stage: Option<&str>) -> String {
    stage
        .map(|stage| format!(" of stage `{stage}`"))
        .unwrap_or_default()
}

impl StoreError {
    /// Whether the error is a corrupt artifact, which the caller can recover from by evicting
    /// and rebuilding it.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Self::Corrupt { .. })
    }
}

/// Builds a `map_err` closure that wraps an `io::Error` with the action and path.
pub(crate) fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}
