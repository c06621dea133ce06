//! Run records: what one `lortflow run` did, stage by stage.
//!
//! The store keeps one JSON file per run under `runs/`, so `report` can show the last run and a
//! user can see why a stage ran, was served from the cache, failed or was skipped. Like the
//! manifest, the format only grows: new fields get serde defaults.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::key::CacheKey;
use crate::time::Timestamp;

/// The record of one pipeline run, written to `runs/<id>.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Unique id, `<compact UTC start time>-<pid>`, e.g. `20261126T194003.250Z-1234`. It sorts
    /// chronologically and names the record file.
    pub id: String,
    /// The pipeline file that was run.
    pub pipeline: PathBuf,
    /// When the run started.
    pub started_at: Timestamp,
    /// How long the whole run took, in seconds.
    pub duration_s: f64,
    /// Every stage of the plan, in the order the scheduler finished them.
    #[serde(default)]
    pub stages: Vec<StageRun>,
}

impl RunRecord {
    /// A record for a run of `pipeline` starting now, with no stages yet.
    pub fn new(pipeline: impl Into<PathBuf>) -> Self {
        let started_at = Timestamp::now();
        Self {
            id: Self::make_id(started_at),
            pipeline: pipeline.into(),
            started_at,
            duration_s: 0.0,
            stages: Vec::new(),
        }
    }

    /// The id of a run of this process starting at `started_at`.
    pub fn make_id(started_at: Timestamp) -> String {
        format!("{}-{}", started_at.compact(), std::process::id())
    }
}

/// What happened to one stage in a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageRun {
    /// The stage's name in the pipeline.
    pub name: String,
    /// The stage kind.
    pub kind: String,
    /// The stage's cache key, absent when it could not be computed (e.g. a missing dataset).
    #[serde(default)]
    pub key: Option<CacheKey>,
    /// The outcome.
    pub outcome: StageOutcome,
    /// Time spent on the stage, in seconds (near zero for a cache hit).
    pub duration_s: f64,
    /// The error message, for failed stages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The outcome of a stage in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageOutcome {
    /// The stage was executed and its artifact committed.
    Ran,
    /// The artifact was already in the store (a cache hit).
    Cached,
    /// The stage was executed and failed.
    Failed,
    /// The stage was not executed because an upstream stage failed or it was not selected.
    Skipped,
    /// The run was interrupted while the stage ran or waited.
    Cancelled,
}

impl StageOutcome {
    /// The outcome as written in run records: `ran`, `cached`, `failed`, `skipped`, `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ran => "ran",
            Self::Cached => "cached",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for StageOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_serialises_lowercase() {
        for outcome in [
            StageOutcome::Ran,
            StageOutcome::Cached,
            StageOutcome::Failed,
            StageOutcome::Skipped,
            StageOutcome::Cancelled,
        ] {
            let json = serde_json::to_string(&outcome).unwrap();
            assert_eq!(json, format!("\"{outcome}\""));
            assert_eq!(
                serde_json::from_str::<StageOutcome>(&json).unwrap(),
                outcome
            );
        }
    }

    #[test]
    fn id_has_time_and_pid() {
        let id = RunRecord::make_id(Timestamp::from_unix_seconds(1_795_722_003.25));
        assert_eq!(id, format!("20261126T194003.250Z-{}", std::process::id()));
    }
}
