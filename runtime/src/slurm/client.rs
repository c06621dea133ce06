//! The Slurm commands lortflow calls: `sbatch` to submit, one batched `squeue` (then `sacct`, or
//! `scontrol` without accounting) to poll, `scancel` to cancel. Every failure is a
//! [`SlurmError`] naming the command and what it printed; nothing here retries or sleeps.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::state::{JobId, JobState};

/// Where the Slurm commands are: on `PATH` by default; tests point them at stand-in scripts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commands {
    /// `sbatch`.
    pub sbatch: PathBuf,
    /// `squeue`.
    pub squeue: PathBuf,
    /// `sacct`.
    pub sacct: PathBuf,
    /// `scontrol`.
    pub scontrol: PathBuf,
    /// `scancel`.
    pub scancel: PathBuf,
}

impl Default for Commands {
    fn default() -> Self {
        Commands {
            sbatch: "sbatch".into(),
            squeue: "squeue".into(),
            sacct: "sacct".into(),
            scontrol: "scontrol".into(),
            scancel: "scancel".into(),
        }
    }
}

impl Commands {
    /// The five commands in `dir` (a directory of stand-ins, or a Slurm installation's `bin/`).
    pub fn in_dir(dir: &Path) -> Self {
        Commands {
            sbatch: dir.join("sbatch"),
            squeue: dir.join("squeue"),
            sacct: dir.join("sacct"),
            scontrol: dir.join("scontrol"),
            scancel: dir.join("scancel"),
        }
    }
}

/// What went wrong talking to Slurm.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlurmError {
    /// The command is not installed (or not on `PATH`).
    #[error(
        "`{command}` was not found: run lortflow with `--executor slurm` on a machine with the Slurm client commands (a login node), or put them on PATH"
    )]
    Missing {
        /// The command.
        command: String,
    },
    /// The command ran and failed: the controller is down, the request was refused, ….
    #[error("`{command}` failed{}: {}", status.map(|s| format!(" (exit {s})")).unwrap_or_default(), message.trim())]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status, if it exited.
        status: Option<i32>,
        /// What it printed on stderr (or stdout when stderr was empty).
        message: String,
    },
    /// The command's output is not what this version of lortflow understands.
    #[error("cannot read the output of `{command}`: {line:?} ({why})")]
    Malformed {
        /// The command line.
        command: String,
        /// The line that could not be read.
        line: String,
        /// Why.
        why: String,
    },
}

/// One job to submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// `--job-name`.
    pub name: String,
    /// The batch script.
    pub script: PathBuf,
    /// `--output` (stdout and stderr of the job).
    pub log: PathBuf,
    /// Further `sbatch` options (partition, account, time, resources, extra arguments).
    pub options: Vec<String>,
}

impl Submission {
    /// The `sbatch` arguments, in the order they are passed: what `--dry-run` prints.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--parsable".to_string(),
            format!("--job-name={}", self.name),
            format!("--output={}", self.log.display()),
        ];
        args.extend(self.options.iter().cloned());
        args.push(self.script.display().to_string());
        args
    }
}

/// The Slurm client.
#[derive(Debug, Clone, Default)]
pub struct Slurm {
    commands: Commands,
}

impl Slurm {
    /// A client calling `commands`.
    pub fn new(commands: Commands) -> Self {
        Slurm { commands }
    }

    /// Submits `job` and returns its id.
    pub fn submit(&self, job: &Submission) -> Result<JobId, SlurmError> {
        let args = job.args();
        let output = run(&self.commands.sbatch, &args)?;
        let command = command_line(&self.commands.sbatch, &args);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        line.parse().map_err(|why| SlurmError::Malformed {
            command,
            line: line.to_string(),
            why,
        })
    }

    /// The states of `jobs`, in one `squeue` call; jobs `squeue` no longer lists are asked of
    /// `sacct` (one call) and, where accounting is off, of `scontrol`. A job none of them knows
    /// is missing from the map (Slurm purged it): the caller decides from what the job left.
    pub fn states(&self, jobs: &[JobId]) -> Result<BTreeMap<JobId, JobState>, SlurmError> {
        let mut states = BTreeMap::new();
        if jobs.is_empty() {
            return Ok(states);
        }
        let list = join(jobs);
        let args = [
            "--noheader",
            "--states=all",
            "--format=%i|%T",
            "--jobs",
            &list,
        ]
        .map(String::from);
        match run(&self.commands.squeue, &args) {
            Ok(output) => parse_pairs(
                &command_line(&self.commands.squeue, &args),
                &output.stdout,
                jobs,
                &mut states,
            )?,
            // squeue refuses a list whose jobs it has all forgotten; the others are asked below.
            Err(SlurmError::Failed { message, .. }) if message.contains("Invalid job id") => {}
            Err(e) => return Err(e),
        }
        let missing: Vec<JobId> = jobs
            .iter()
            .copied()
            .filter(|j| !states.contains_key(j))
            .collect();
        if missing.is_empty() {
            return Ok(states);
        }
        let list = join(&missing);
        let args = [
            "--noheader",
            "--parsable2",
            "--allocations",
            "--format=JobID,State",
            "--jobs",
            &list,
        ]
        .map(String::from);
        match run(&self.commands.sacct, &args) {
            Ok(output) => parse_pairs(
                &command_line(&self.commands.sacct, &args),
                &output.stdout,
                &missing,
                &mut states,
            )?,
            // Without accounting (`AccountingStorageType=none`) sacct has nothing to say.
            Err(SlurmError::Failed { .. } | SlurmError::Missing { .. }) => {}
            Err(e) => return Err(e),
        }
        let unknown: Vec<JobId> = missing
            .into_iter()
            .filter(|j| !states.contains_key(j))
            .collect();
        for job in unknown {
            let args = [
                "--oneliner".to_string(),
                "show".into(),
                "job".into(),
                job.to_string(),
            ];
            match run(&self.commands.scontrol, &args) {
                Ok(output) => {
                    let command = command_line(&self.commands.scontrol, &args);
                    let text = String::from_utf8_lossy(&output.stdout);
                    let state = text
                        .split_whitespace()
                        .find_map(|field| field.strip_prefix("JobState="))
                        .ok_or_else(|| SlurmError::Malformed {
                            command: command.clone(),
                            line: text.trim().to_string(),
                            why: "no JobState= field".into(),
                        })?;
                    let parsed = JobState::parse(state).ok_or_else(|| SlurmError::Malformed {
                        command,
                        line: text.trim().to_string(),
                        why: format!("unknown job state `{state}`"),
                    })?;
                    states.insert(job, parsed);
                }
                Err(SlurmError::Failed { message, .. }) if message.contains("Invalid job id") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(states)
    }

    /// Cancels `jobs` (one `scancel` call); jobs that already ended are no error.
    pub fn cancel(&self, jobs: &[JobId]) -> Result<(), SlurmError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let args: Vec<String> = jobs.iter().map(JobId::to_string).collect();
        match run(&self.commands.scancel, &args) {
            Ok(_) => Ok(()),
            Err(SlurmError::Failed { message, .. }) if message.contains("Invalid job id") => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn join(jobs: &[JobId]) -> String {
    jobs.iter()
        .map(JobId::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn command_line(program: &Path, args: &[String]) -> String {
    std::iter::once(program.display().to_string())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `program args`; a non-zero exit is [`SlurmError::Failed`].
fn run(program: &Path, args: &[String]) -> Result<Output, SlurmError> {
    let output = Command::new(program).args(args).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            SlurmError::Missing {
                command: program.display().to_string(),
            }
        } else {
            SlurmError::Failed {
                command: command_line(program, args),
                status: None,
                message: e.to_string(),
            }
        }
    })?;
    if output.status.success() {
        return Ok(output);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let message = if stderr.trim().is_empty() {
        String::from_utf8_lossy(&output.stdout).into_owned()
    } else {
        stderr.into_owned()
    };
    Err(SlurmError::Failed {
        command: command_line(program, args),
        status: output.status.code(),
        message,
    })
}

/// `ID|STATE` lines (`squeue --format=%i|%T`, `sacct --parsable2 --format=JobID,State`) for the
/// jobs asked about; lines of other jobs (job steps `123.batch`, array members) are skipped.
fn parse_pairs(
    command: &str,
    stdout: &[u8],
    asked: &[JobId],
    into: &mut BTreeMap<JobId, JobState>,
) -> Result<(), SlurmError> {
    for line in String::from_utf8_lossy(stdout).lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let malformed = |why: String| SlurmError::Malformed {
            command: command.to_string(),
            line: line.to_string(),
            why,
        };
        let (id, state) = line
            .split_once('|')
            .ok_or_else(|| malformed("expected `ID|STATE`".into()))?;
        let Ok(id) = id.parse::<JobId>() else {
            if id.contains(['.', '_', '+']) {
                continue;
            }
            return Err(malformed(format!("`{id}` is not a job id")));
        };
        if !asked.contains(&id) {
            continue;
        }
        let state = JobState::parse(state)
            .ok_or_else(|| malformed(format!("unknown job state `{state}`")))?;
        into.insert(id, state);
    }
    Ok(())
}
