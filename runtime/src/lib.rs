//! lortflow runtime: the content-addressed artifact store, cache keys, external-file digests,
//! the store lock and run records.
#![warn(missing_docs)]

pub mod artifact;
pub mod file_digest;
mod fsutil;
pub mod graph;
pub mod key;
pub mod lock;
pub mod manifest;
pub mod run_record;
pub mod staging;
pub mod store;
pub mod store_error;
pub mod time;

pub use artifact::Artifact;
pub use graph::StageGraph;
pub use file_digest::{DigestStats, FileDigest, FileDigestCache, FileDigestError};
pub use key::{CacheKey, KEY_FORMAT, KeyBuilder, ParseKeyError, canonical_json};
pub use lock::{LockError, StoreLock};
pub use manifest::{ExternalFile, FileEntry, InputRef, MANIFEST_FILE, MANIFEST_FORMAT, Manifest};
pub use run_record::{RunRecord, StageOutcome, StageRun};
pub use staging::Staging;
pub use store::{ArtifactInfo, GcReport, Store};
pub use store_error::StoreError;
pub use time::Timestamp;
