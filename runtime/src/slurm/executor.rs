//! `--executor slurm`: each task (one stage, or a batch group of heads) becomes one Slurm job
//! that runs `lortflow stage-job` on a node against the same store. The submitting run keeps the
//! plan, keys and reasons; the job commits its artifact by the usual staging and verified
//! rename, and the engine verifies it afterwards.
//!
//! Under the store's `jobs/` directory each task has, named by its first stage's key, a batch
//! script (`KEY.sh`), the job's log (`KEY.log`) and, while the job lives, a record (`KEY.job`,
//! the job id): a run that finds a record of a job still pending or running waits for that job
//! instead of submitting a second one, so a killed submitter loses nothing. Every job in flight
//! is polled by one thread in one batched call per interval.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::client::{Slurm, SlurmError, Submission};
use super::profile::SlurmProfile;
use super::state::{JobId, JobState};
use crate::engine::{RemoteExecutor, RemoteStage};
use crate::stage::{CancelToken, Progress, Reporter, StageError};
use crate::store::Store;

/// How long a job may be missing from every listing before it counts as gone (Slurm purged it,
/// or it never existed).
const GONE_AFTER: Duration = Duration::from_secs(10);

/// The command line a job runs: `PROGRAM ARGS… --stage NAME=KEY …` (plus `--force`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobCommand {
    /// The `lortflow` executable, on a path the nodes see.
    pub program: PathBuf,
    /// `stage-job PIPELINE --store DIR [--set …] [--backend …]`.
    pub args: Vec<String>,
    /// The working directory of the job (the submitter's).
    pub dir: PathBuf,
}

/// The Slurm executor.
pub struct SlurmExecutor {
    slurm: Slurm,
    profile: SlurmProfile,
    store: Store,
    command: JobCommand,
    poller: Poller,
}

impl SlurmExecutor {
    /// An executor submitting to `slurm` with `profile`, for jobs of `store` running `command`.
    pub fn new(slurm: Slurm, profile: SlurmProfile, store: Store, command: JobCommand) -> Self {
        let poller = Poller::new(slurm.clone(), Duration::from_secs(profile.poll_interval_s));
        SlurmExecutor {
            slurm,
            profile,
            store,
            command,
            poller,
        }
    }

    /// The submission of `task`: what `--dry-run` prints and what `sbatch` gets.
    pub fn submission(&self, task: &[RemoteStage<'_>]) -> Submission {
        let first = &task[0];
        let dir = self.store.jobs_dir();
        let key = first.key.as_str();
        Submission {
            name: format!("lortflow-{}", first.stage.name),
            script: dir.join(format!("{key}.sh")),
            log: dir.join(format!("{key}.log")),
            options: self.profile.options(first.stage.kind().as_str()),
        }
    }

    /// The batch script of `task`.
    pub fn script(&self, task: &[RemoteStage<'_>]) -> String {
        let mut args: Vec<String> = self.command.args.clone();
        for t in task {
            args.push("--stage".into());
            args.push(format!("{}={}", t.stage.name, t.key.as_str()));
        }
        if task.iter().any(|t| t.forced) {
            args.push("--force".into());
        }
        let names: Vec<&str> = task.iter().map(|t| t.stage.name.as_str()).collect();
        format!(
            "#!/bin/sh\n# lortflow: {}\ncd {} || exit 1\nexec {} {}\n",
            names.join(", "),
            shell_quote(&self.command.dir.display().to_string()),
            shell_quote(&self.command.program.display().to_string()),
            args.iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        )
    }

    fn record_path(&self, task: &[RemoteStage<'_>]) -> PathBuf {
        self.store
            .jobs_dir()
            .join(format!("{}.job", task[0].key.as_str()))
    }

    /// The job of an earlier run for this task that is still queued or running.
    fn adoptable(&self, record: &Path) -> Option<JobId> {
        let id: JobId = std::fs::read_to_string(record).ok()?.parse().ok()?;
        match self.slurm.states(&[id]) {
            Ok(states) if states.get(&id).is_some_and(|s| !s.is_terminal()) => Some(id),
            _ => None,
        }
    }

    fn submit(&self, task: &[RemoteStage<'_>], record: &Path) -> Result<JobId, StageError> {
        let submission = self.submission(task);
        let dir = self.store.jobs_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| StageError::failed(format!("cannot create `{}`: {e}", dir.display())))?;
        write_executable(&submission.script, &self.script(task))?;
        let id = self.slurm.submit(&submission).map_err(|e| {
            StageError::failed(format!("cannot submit it to Slurm: {e}; nothing was lost"))
        })?;
        std::fs::write(record, format!("{id}\n")).map_err(|e| {
            StageError::failed(format!(
                "Slurm job {id} was submitted but `{}` cannot be written: {e}",
                record.display()
            ))
        })?;
        Ok(id)
    }
}

impl RemoteExecutor for SlurmExecutor {
    fn run(
        &self,
        task: &[RemoteStage<'_>],
        cancel: &CancelToken,
        reporter: &dyn Reporter,
    ) -> Result<(), StageError> {
        let record = self.record_path(task);
        let log = self.submission(task).log;
        let mut retries_left = self.profile.retries;
        let mut id = match self.adoptable(&record) {
            Some(id) => {
                reporter.notice(&format!(
                    "`{}`: Slurm job {id} of an earlier run is still alive; waiting for it",
                    task[0].stage.name
                ));
                id
            }
            None => self.submit(task, &record)?,
        };
        loop {
            let state = self.wait(id, task, cancel, reporter)?;
            match state {
                Some(JobState::Completed) => {
                    let _ = std::fs::remove_file(&record);
                    return Ok(());
                }
                // Slurm forgot the job (purged after MinJobAge): its artifact says how it ended.
                None if task.iter().all(|t| self.store.object_dir(&t.key).exists()) => {
                    let _ = std::fs::remove_file(&record);
                    return Ok(());
                }
                Some(state) if state.retryable() && retries_left > 0 => {
                    retries_left -= 1;
                    reporter.notice(&format!(
                        "`{}`: Slurm job {id} ended {state}; submitting it again ({} retr{} left)",
                        task[0].stage.name,
                        retries_left,
                        if retries_left == 1 { "y" } else { "ies" }
                    ));
                    id = self.submit(task, &record)?;
                }
                ended => {
                    let _ = std::fs::remove_file(&record);
                    let how = ended.map_or_else(
                        || "is no longer known to Slurm and left no artifact".to_string(),
                        |s| format!("ended {s}"),
                    );
                    return Err(StageError::failed(format!(
                        "Slurm job {id} {how}; the end of its log `{}`:\n{}",
                        log.display(),
                        log_tail(&log, 15)
                    )));
                }
            }
        }
    }
}

impl SlurmExecutor {
    /// Waits for job `id` to end, reporting its state as progress; cancels it when `cancel` is
    /// set. `None`: Slurm no longer knows it.
    fn wait(
        &self,
        id: JobId,
        task: &[RemoteStage<'_>],
        cancel: &CancelToken,
        reporter: &dyn Reporter,
    ) -> Result<Option<JobState>, StageError> {
        let updates = self.poller.watch(id);
        let mut last: Option<String> = None;
        let mut missing_since: Option<Instant> = None;
        loop {
            if cancel.is_cancelled() {
                self.poller.forget(id);
                return match self.slurm.cancel(&[id]) {
                    Ok(()) => {
                        let _ = std::fs::remove_file(self.record_path(task));
                        Err(StageError::Cancelled)
                    }
                    Err(e) => Err(StageError::failed(format!(
                        "cancelled, but Slurm job {id} could not be cancelled ({e}); cancel it with `scancel {id}`"
                    ))),
                };
            }
            match updates.recv_timeout(Duration::from_millis(200)) {
                Ok(Update::State(state)) => {
                    missing_since = None;
                    let shown = format!("Slurm job {id} {state}");
                    if last.as_deref() != Some(shown.as_str()) {
                        for t in task {
                            reporter.progress(
                                &t.stage.name,
                                &Progress {
                                    done: 0,
                                    total: 0,
                                    unit: "job",
                                    message: shown.clone(),
                                },
                            );
                        }
                        last = Some(shown);
                    }
                    if state.is_terminal() {
                        self.poller.forget(id);
                        return Ok(Some(state));
                    }
                }
                // A job can be missing from one listing (just submitted to a busy controller,
                // or between squeue and accounting); it is gone only when it stays missing.
                Ok(Update::Gone) => {
                    let since = *missing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= GONE_AFTER {
                        self.poller.forget(id);
                        return Ok(None);
                    }
                }
                Ok(Update::Unreachable(e)) => {
                    // The controller may come back; the job keeps running meanwhile.
                    reporter.notice(&format!("polling Slurm job {id}: {e}; trying again"));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(StageError::failed("the Slurm poller stopped"));
                }
            }
        }
    }
}

/// What the poller tells a waiting task.
enum Update {
    State(JobState),
    Gone,
    Unreachable(SlurmError),
}

/// One thread polling every job in flight in one call per interval.
#[derive(Clone)]
struct Poller {
    jobs: Arc<Mutex<HashMap<JobId, Sender<Update>>>>,
    slurm: Slurm,
    interval: Duration,
    running: Arc<Mutex<bool>>,
}

impl Poller {
    fn new(slurm: Slurm, interval: Duration) -> Self {
        Poller {
            jobs: Arc::default(),
            slurm,
            interval,
            running: Arc::default(),
        }
    }

    /// Starts reporting the states of `id`; the first poll is immediate.
    fn watch(&self, id: JobId) -> Receiver<Update> {
        let (tx, rx) = mpsc::channel();
        self.jobs.lock().expect("poller lock").insert(id, tx);
        let mut running = self.running.lock().expect("poller lock");
        if !*running {
            *running = true;
            let poller = self.clone();
            std::thread::spawn(move || poller.poll_loop());
        }
        rx
    }

    fn forget(&self, id: JobId) {
        self.jobs.lock().expect("poller lock").remove(&id);
    }

    fn poll_loop(self) {
        loop {
            let ids: Vec<JobId> = {
                let jobs = self.jobs.lock().expect("poller lock");
                if jobs.is_empty() {
                    *self.running.lock().expect("poller lock") = false;
                    return;
                }
                jobs.keys().copied().collect()
            };
            let result = self.slurm.states(&ids);
            {
                let jobs = self.jobs.lock().expect("poller lock");
                for id in &ids {
                    let Some(tx) = jobs.get(id) else { continue };
                    let update = match &result {
                        Ok(states) => states.get(id).cloned().map_or(Update::Gone, Update::State),
                        Err(e) => Update::Unreachable(e.clone()),
                    };
                    let _ = tx.send(update);
                }
            }
            std::thread::sleep(self.interval);
        }
    }
}

fn write_executable(path: &Path, text: &str) -> Result<(), StageError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)))
        .map_err(|e| StageError::failed(format!("cannot write `{}`: {e}", path.display())))
}

/// The last `lines` lines of the job's log (what a failed stage shows).
fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            if tail.is_empty() {
                "  (empty)".into()
            } else {
                tail.iter()
                    .map(|l| format!("  {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }
        Err(e) => format!("  (cannot read it: {e})"),
    }
}

/// `s` quoted for `sh` (single quotes; a quote inside becomes `'\''`).
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}
