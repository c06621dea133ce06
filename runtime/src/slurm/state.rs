//! Slurm job states, as `squeue`, `sacct` and `scontrol` print them.

use std::fmt;

/// A Slurm job id (`sbatch --parsable` prints it; arrays and federations add `_…` / `;…`, which
/// lortflow never submits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::str::FromStr for JobId {
    type Err = String;

    /// `1234`, or `1234;cluster` as `sbatch --parsable` prints on a multi-cluster setup.
    fn from_str(s: &str) -> Result<Self, String> {
        let id = s.trim().split(';').next().unwrap_or_default();
        id.parse()
            .map(JobId)
            .map_err(|_| format!("`{}` is not a Slurm job id", s.trim()))
    }
}

/// Where a job is, in the terms a stage cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Queued (`PENDING`, `CONFIGURING`, `REQUEUED`, `SUSPENDED`, …): not running yet, or not now.
    Pending(String),
    /// Running (`RUNNING`, `COMPLETING`).
    Running,
    /// `COMPLETED`: the job's command exited 0.
    Completed,
    /// Ended without success; the stage fails unless the state is [`retryable`](Self::retryable).
    Ended(EndState),
}

/// How a job ended without success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndState {
    /// `FAILED`: the command exited non-zero.
    Failed,
    /// `TIMEOUT`: it ran past its time limit.
    Timeout,
    /// `OUT_OF_MEMORY`.
    OutOfMemory,
    /// `NODE_FAIL`: its node failed.
    NodeFail,
    /// `PREEMPTED`.
    Preempted,
    /// `CANCELLED` (by a user or an administrator).
    Cancelled,
    /// `BOOT_FAIL`: its node did not boot.
    BootFail,
    /// `DEADLINE`: it could not finish before its deadline.
    Deadline,
}

impl EndState {
    /// The state's Slurm name.
    pub fn name(self) -> &'static str {
        match self {
            EndState::Failed => "FAILED",
            EndState::Timeout => "TIMEOUT",
            EndState::OutOfMemory => "OUT_OF_MEMORY",
            EndState::NodeFail => "NODE_FAIL",
            EndState::Preempted => "PREEMPTED",
            EndState::Cancelled => "CANCELLED",
            EndState::BootFail => "BOOT_FAIL",
            EndState::Deadline => "DEADLINE",
        }
    }
}

impl JobState {
    /// The state named `s` (`CANCELLED by 0` and `CANCELLED+` as `sacct` prints them included).
    /// `None` for a word Slurm does not use: the caller reports the output as malformed rather
    /// than guessing.
    pub fn parse(s: &str) -> Option<JobState> {
        let word = s
            .split_whitespace()
            .next()?
            .trim_end_matches('+')
            .to_ascii_uppercase();
        Some(match word.as_str() {
            "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_FED" | "REQUEUE_HOLD"
            | "RESV_DEL_HOLD" | "SUSPENDED" | "STOPPED" | "RESIZING" | "SIGNALING"
            | "STAGE_OUT" | "POWER_UP_NODE" => JobState::Pending(word),
            "RUNNING" | "COMPLETING" => JobState::Running,
            "COMPLETED" => JobState::Completed,
            "FAILED" | "SPECIAL_EXIT" => JobState::Ended(EndState::Failed),
            "TIMEOUT" => JobState::Ended(EndState::Timeout),
            "OUT_OF_MEMORY" => JobState::Ended(EndState::OutOfMemory),
            "NODE_FAIL" => JobState::Ended(EndState::NodeFail),
            "PREEMPTED" => JobState::Ended(EndState::Preempted),
            "CANCELLED" | "REVOKED" => JobState::Ended(EndState::Cancelled),
            "BOOT_FAIL" => JobState::Ended(EndState::BootFail),
            "DEADLINE" => JobState::Ended(EndState::Deadline),
            _ => return None,
        })
    }

    /// Whether the job will not change state any more.
    pub fn is_terminal(&self) -> bool {
        matches!(self, JobState::Completed | JobState::Ended(_))
    }

    /// Whether the job ended for a reason that is not the stage's (its node failed, it was
    /// preempted or its node did not boot): worth submitting again.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            JobState::Ended(EndState::NodeFail | EndState::Preempted | EndState::BootFail)
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobState::Pending(word) => write!(f, "{word}"),
            JobState::Running => write!(f, "RUNNING"),
            JobState::Completed => write!(f, "COMPLETED"),
            JobState::Ended(end) => write!(f, "{}", end.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_slurm_prints_has_a_meaning() {
        for (text, state) in [
            ("PENDING", JobState::Pending("PENDING".into())),
            ("CONFIGURING", JobState::Pending("CONFIGURING".into())),
            ("RUNNING", JobState::Running),
            ("COMPLETING", JobState::Running),
            ("COMPLETED", JobState::Completed),
            ("FAILED", JobState::Ended(EndState::Failed)),
            ("TIMEOUT", JobState::Ended(EndState::Timeout)),
            ("OUT_OF_MEMORY", JobState::Ended(EndState::OutOfMemory)),
            ("NODE_FAIL", JobState::Ended(EndState::NodeFail)),
            ("PREEMPTED", JobState::Ended(EndState::Preempted)),
            ("CANCELLED by 0", JobState::Ended(EndState::Cancelled)),
            ("CANCELLED+", JobState::Ended(EndState::Cancelled)),
            ("BOOT_FAIL", JobState::Ended(EndState::BootFail)),
            ("DEADLINE", JobState::Ended(EndState::Deadline)),
        ] {
            assert_eq!(JobState::parse(text), Some(state), "{text}");
        }
        assert_eq!(JobState::parse("EXPLODED"), None);
        assert_eq!(JobState::parse(""), None);
    }

    #[test]
    fn only_failures_of_the_machine_are_retried() {
        let retryable: Vec<&str> = [
            "FAILED",
            "TIMEOUT",
            "OUT_OF_MEMORY",
            "NODE_FAIL",
            "PREEMPTED",
            "CANCELLED",
            "BOOT_FAIL",
            "COMPLETED",
            "RUNNING",
        ]
        .into_iter()
        .filter(|s| JobState::parse(s).unwrap().retryable())
        .collect();
        assert_eq!(retryable, ["NODE_FAIL", "PREEMPTED", "BOOT_FAIL"]);
        assert!(!JobState::parse("PENDING").unwrap().is_terminal());
        assert!(JobState::parse("TIMEOUT").unwrap().is_terminal());
    }

    #[test]
    fn job_ids_parse_as_sbatch_prints_them() {
        assert_eq!("1234\n".parse::<JobId>(), Ok(JobId(1234)));
        assert_eq!("77;cluster".parse::<JobId>(), Ok(JobId(77)));
        assert!("Submitted batch job 5".parse::<JobId>().is_err());
    }
}
