//! The lortflow runtime: takes the concrete stages `lortflow_lang::expand` makes (sweeps expanded,
//! `--set` applied), computes content-addressed cache keys, decides what is stale and why, and
//! executes stages in parallel against an artifact store with atomic commits, a lock, and run
//! records. Stages are known only through the [`StageExecutor`] trait; this crate never names Burn.
#![warn(missing_docs)]

pub mod artifact;
pub mod engine;
pub mod file_digest;
mod fsutil;
pub mod graph;
pub mod key;
pub mod lock;
pub mod manifest;
pub mod plan;
pub mod run_record;
pub mod slurm;
pub mod stage;
pub mod staging;
pub mod store;
pub mod store_error;
pub mod time;
pub mod watch;

pub use artifact::Artifact;
pub use engine::{
    Engine, EngineError, Force, RemoteExecutor, RemoteStage, RunContext, RunOptions, RunReport,
    RunRequest, RunSummary, StageStatus, State,
};
pub use file_digest::{DigestStats, FileDigest, FileDigestCache, FileDigestError};
pub use graph::StageGraph;
pub use key::{CacheKey, KEY_FORMAT, KeyBuilder, ParseKeyError, canonical_json};
pub use lock::{LockError, StoreLock};
pub use manifest::{ExternalFile, FileEntry, InputRef, MANIFEST_FILE, MANIFEST_FORMAT, Manifest};
pub use plan::{Compute, ConcreteStage, Override};
pub use run_record::{RunRecord, StageOutcome, StageRun};
pub use stage::{
    CancelToken, FailureMessage, Progress, Registry, Reporter, SilentReporter, StageContext,
    StageError, StageExecutor, StageInput,
};
pub use staging::Staging;
pub use store::{ArtifactInfo, GcReport, Store};
pub use store_error::StoreError;
pub use time::Timestamp;
