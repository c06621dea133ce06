//! Slurm, the scheduler of the clusters lortflow's users have: job states, the commands that
//! submit, poll and cancel jobs (one batched call per poll), and the cluster profile that says
//! what each kind of stage asks for. The executor that hands stages to it builds on these.

mod client;
mod executor;
mod profile;
mod state;

pub use client::{Commands, Slurm, SlurmError, Submission};
pub use executor::{JobCommand, SlurmExecutor};
pub use profile::{ProfileError, STAGE_KINDS, SlurmProfile, StageResources};
pub use state::{EndState, JobId, JobState};

#[cfg(test)]
mod tests;
