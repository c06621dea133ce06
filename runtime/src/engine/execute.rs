//! Execution: the stale stages of a plan on a pool of workers (one accelerator stage per device
//! at a time); a failing stage stops what depends on it while the rest goes on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::Instant;

use lortflow_lang::ir::Backend;

use super::downloads;
use super::status::{StageStatus, State};
use crate::plan::{ConcreteStage, external_files};
use crate::stage::{CancelToken, Registry, Reporter, StageContext, StageError, StageInput};
use crate::{
    Artifact, CacheKey, ExternalFile, FileDigestCache, InputRef, Manifest, RunRecord, StageOutcome,
    StageRun, Store, StoreError, Timestamp,
};

/// Options of a run.
#[derive(Clone)]
pub struct RunOptions {
    /// Parallel workers (tasks in flight, with a remote executor).
    pub jobs: usize,
    /// The backend.
    pub backend: Backend,
    /// The pipeline file, for the run record.
    pub pipeline: PathBuf,
    /// Where tasks run: here (`None`), or handed to a scheduler.
    pub remote: Option<Arc<dyn RemoteExecutor>>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("jobs", &self.jobs)
            .field("backend", &self.backend)
            .field("pipeline", &self.pipeline)
            .field("remote", &self.remote.is_some())
            .finish()
    }
}

/// One stage of a task handed to a [`RemoteExecutor`].
#[derive(Debug, Clone)]
pub struct RemoteStage<'p> {
    /// The stage.
    pub stage: &'p ConcreteStage,
    /// The key its artifact must be committed under.
    pub key: CacheKey,
    /// Whether it re-runs although cached (`--force`): the job replaces the old artifact.
    pub forced: bool,
}

/// Runs tasks somewhere else than in this process (a scheduler's jobs running `lortflow` against
/// the same store). The engine keeps planning, keys and reasons; the remote side commits the
/// artifacts with the same staging and verified rename, and the engine verifies them after.
pub trait RemoteExecutor: Send + Sync {
    /// Runs `task` (one stage, or a batch group) to its end. `Ok`: its artifacts are committed
    /// in the store. Stops early with [`StageError::Cancelled`] when `cancel` is set.
    fn run(
        &self,
        task: &[RemoteStage<'_>],
        cancel: &CancelToken,
        reporter: &dyn Reporter,
    ) -> Result<(), StageError>;
}

/// The outcome of a run.
#[derive(Debug)]
pub struct RunReport {
    /// The run record (also written to the store).
    pub record: RunRecord,
    /// Artifacts of the stages that finished (ran or cached), by plan index.
    pub artifacts: BTreeMap<usize, Artifact>,
    /// The keys and states the run started from, by plan index.
    pub statuses: Vec<StageStatus>,
}

impl RunReport {
    /// Whether any stage failed or was cancelled.
    pub fn failed(&self) -> bool {
        self.record
            .stages
            .iter()
            .any(|s| matches!(s.outcome, StageOutcome::Failed | StageOutcome::Cancelled))
    }

    /// How many stages had each outcome.
    pub fn summary(&self) -> RunSummary {
        let n = |o: StageOutcome| self.record.stages.iter().filter(|s| s.outcome == o).count();
        RunSummary {
            ran: n(StageOutcome::Ran),
            cached: n(StageOutcome::Cached),
            failed: n(StageOutcome::Failed),
            cancelled: n(StageOutcome::Cancelled),
            // Stages left out by `--only` are skipped without a reason; they are not news.
            skipped: self
                .record
                .stages
                .iter()
                .filter(|s| s.outcome == StageOutcome::Skipped && s.error.is_some())
                .count(),
            duration_s: self.record.duration_s,
        }
    }

    /// The names of the stages that had `outcome`, in plan order.
    pub fn stages_with(&self, outcome: StageOutcome) -> Vec<&str> {
        self.record
            .stages
            .iter()
            .filter(|s| s.outcome == outcome)
            .map(|s| s.name.as_str())
            .collect()
    }
}

/// Counts of a run's outcomes; `Display` is the one-line summary `run` and `watch` print:
/// `3 ran, 5 cached, 0 failed in 2.1s`, with `, N cancelled` and `, N skipped` when there are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunSummary {
    /// Stages that ran and stored an artifact.
    pub ran: usize,
    /// Stages whose artifact was reused.
    pub cached: usize,
    /// Stages that failed.
    pub failed: usize,
    /// Stages stopped by cancellation.
    pub cancelled: usize,
    /// Stages that could not run because an input did not finish.
    pub skipped: usize,
    /// Wall time of the run.
    pub duration_s: f64,
}

impl std::fmt::Display for RunSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ran, {} cached, {} failed",
            self.ran, self.cached, self.failed
        )?;
        if self.cancelled > 0 {
            write!(f, ", {} cancelled", self.cancelled)?;
        }
        if self.skipped > 0 {
            write!(f, ", {} skipped", self.skipped)?;
        }
        write!(f, " in {:.1}s", self.duration_s)
    }
}

/// Errors that stop a run before or outside any stage.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stage kind has no executor.
    #[error("no implementation is registered for `{0}` stages")]
    Unregistered(String),
    /// Another run holds the store, or its lock cannot be taken.
    #[error(transparent)]
    Lock(#[from] crate::LockError),
    /// The backend cannot run here (no CUDA driver or device, a build without `cuda`).
    #[error("{0}")]
    Backend(String),
}

enum Event {
    Done {
        index: usize,
        result: Result<(Artifact, f64), (StageError, f64)>,
    },
}

/// Executes the stale stages of a plan (`selected` limits the run to some stages; their inputs
/// must then be cached or selected too).
#[allow(clippy::too_many_arguments)]
pub fn execute(
    plan: &[ConcreteStage],
    statuses: &[StageStatus],
    selected: Option<&HashSet<usize>>,
    store: &Store,
    registry: &Registry,
    options: &RunOptions,
    cancel: &CancelToken,
    reporter: &dyn Reporter,
) -> Result<RunReport, EngineError> {
    let started = Timestamp::now();
    let clock = Instant::now();
    let mut record = RunRecord::new(options.pipeline.clone());
    record.started_at = started;
    record.id = RunRecord::make_id(started);
    for stage in plan {
        if registry.get(stage.kind()).is_none() {
            return Err(EngineError::Unregistered(stage.kind().to_string()));
        }
    }
    let n = plan.len();
    let in_run = |i: usize| selected.is_none_or(|s| s.contains(&i));
    let mut outcome: Vec<Option<(StageOutcome, f64, Option<String>)>> = vec![None; n];
    let mut artifacts: BTreeMap<usize, Artifact> = BTreeMap::new();
    let mut stale: Vec<bool> = statuses.iter().map(|s| s.state != State::Cached).collect();

    // Cached artifacts are verified before anything reads them; a corrupt one is reported,
    // evicted and rebuilt, and everything downstream runs again.
    for i in 0..n {
        if !in_run(i) {
            continue;
        }
        if stale[i] || plan[i].inputs.iter().any(|&(_, j)| stale[j]) {
            stale[i] = true;
            continue;
        }
        let Some(key) = &statuses[i].key else {
            continue;
        };
        match store.get(key) {
            Ok(Some(a)) => {
                artifacts.insert(i, a);
            }
            Ok(None) => stale[i] = true,
            Err(e) if e.is_corrupt() => {
                reporter.notice(&format!(
                    "the cached artifact of `{}` is corrupt ({e}); rebuilding it",
                    plan[i].name
                ));
                let _ = store.evict(key);
                stale[i] = true;
            }
            Err(e) => return Err(e.into()),
        }
    }

    // Two stages that compute the same thing (the same key under two names) run once: the
    // later one waits for the earlier one's artifact. Running both would race on the key's
    // work directory (a backbone's checkpoints).
    let mut twin_of: Vec<Option<usize>> = vec![None; n];
    let mut first_with_key: HashMap<&CacheKey, usize> = HashMap::new();
    for i in (0..n).filter(|&i| stale[i] && in_run(i)) {
        if let Some(key) = &statuses[i].key {
            match first_with_key.get(key) {
                Some(&j) => twin_of[i] = Some(j),
                None => {
                    first_with_key.insert(key, i);
                }
            }
        }
    }

    let (tx, rx) = mpsc::channel::<Event>();
    std::thread::scope(|scope| -> Result<(), EngineError> {
        let mut running: HashSet<usize> = HashSet::new();
        let mut device_busy = false;
        loop {
            // Settle everything decidable without running.
            let mut progressed = true;
            while progressed {
                progressed = false;
                for i in 0..n {
                    if outcome[i].is_some() || running.contains(&i) {
                        continue;
                    }
                    if !in_run(i) {
                        outcome[i] = Some((StageOutcome::Skipped, 0.0, None));
                        progressed = true;
                        continue;
                    }
                    if statuses[i].state == State::Blocked {
                        // A stage that cannot run fails; what depends on it is skipped.
                        let why = statuses[i].reasons.join("; ");
                        let o = if statuses[i].blocked_by_input {
                            StageOutcome::Skipped
                        } else {
                            StageOutcome::Failed
                        };
                        reporter.finished(&plan[i].name, o, 0.0, Some(&why));
                        outcome[i] = Some((o, 0.0, Some(why)));
                        progressed = true;
                        continue;
                    }
                    // An input that has settled without an artifact failed, was skipped or was
                    // cancelled: this stage cannot run.
                    if let Some(&(_, j)) = plan[i]
                        .inputs
                        .iter()
                        .find(|&&(_, j)| outcome[j].is_some() && !artifacts.contains_key(&j))
                    {
                        let why = format!("upstream `{}` did not finish", plan[j].name);
                        reporter.finished(&plan[i].name, StageOutcome::Skipped, 0.0, Some(&why));
                        outcome[i] = Some((StageOutcome::Skipped, 0.0, Some(why)));
                        progressed = true;
                        continue;
                    }
                    if let Some(j) = twin_of[i] {
                        if outcome[j].is_none() {
                            continue;
                        }
                        match artifacts.get(&j).cloned() {
                            Some(artifact) => {
                                remember_name(store, &plan[i].name, &artifact);
                                artifacts.insert(i, artifact);
                                reporter.finished(&plan[i].name, StageOutcome::Cached, 0.0, None);
                                outcome[i] = Some((StageOutcome::Cached, 0.0, None));
                            }
                            None => {
                                let why = format!(
                                    "`{}`, the same computation, did not finish",
                                    plan[j].name
                                );
                                reporter.finished(
                                    &plan[i].name,
                                    StageOutcome::Skipped,
                                    0.0,
                                    Some(&why),
                                );
                                outcome[i] = Some((StageOutcome::Skipped, 0.0, Some(why)));
                            }
                        }
                        progressed = true;
                        continue;
                    }
                    if !stale[i] && artifacts.contains_key(&i) {
                        remember_name(store, &plan[i].name, &artifacts[&i]);
                        reporter.finished(&plan[i].name, StageOutcome::Cached, 0.0, None);
                        outcome[i] = Some((StageOutcome::Cached, 0.0, None));
                        progressed = true;
                    }
                }
            }
            // Start ready stages; ready stages of one batch group start as one task.
            let ready: Vec<usize> = (0..n)
                .filter(|&i| outcome[i].is_none() && !running.contains(&i) && twin_of[i].is_none())
                .filter(|&i| {
                    plan[i]
                        .inputs
                        .iter()
                        .all(|&(_, j)| artifacts.contains_key(&j) && outcome[j].is_some())
                })
                .collect();
            let mut taken: HashSet<usize> = HashSet::new();
            for &i in &ready {
                if taken.contains(&i)
                    || running.len() >= options.jobs.max(1)
                    || cancel.is_cancelled()
                {
                    continue;
                }
                let executor = registry.get(plan[i].kind()).expect("checked above").clone();
                // A remote task gets its own node's device.
                let uses_device =
                    options.remote.is_none() && executor.uses_device(&plan[i], options.backend);
                if uses_device && device_busy {
                    continue;
                }
                let members: Vec<usize> = match executor.batch_group(&plan[i]) {
                    Some(group) => ready
                        .iter()
                        .copied()
                        .filter(|&j| {
                            !taken.contains(&j)
                                && plan[j].kind() == plan[i].kind()
                                && executor.batch_group(&plan[j]).as_deref() == Some(group.as_str())
                        })
                        .collect(),
                    None => vec![i],
                };
                device_busy |= uses_device;
                let mut jobs = Vec::with_capacity(members.len());
                for &m in &members {
                    taken.insert(m);
                    running.insert(m);
                    reporter.started(&plan[m].name, plan[m].kind());
                    let inputs: Vec<StageInput<'_>> = plan[m]
                        .inputs
                        .iter()
                        .map(|&(role, j)| input_tree(plan, &artifacts, role, j))
                        .collect();
                    jobs.push(Job {
                        index: m,
                        stage: &plan[m],
                        status: &statuses[m],
                        inputs,
                    });
                }
                let tx = tx.clone();
                scope.spawn(move || {
                    let t = Instant::now();
                    let results = match &options.remote {
                        None => run_batch(
                            jobs,
                            store,
                            executor.as_ref(),
                            options.backend,
                            cancel,
                            reporter,
                            Store::begin,
                        ),
                        Some(remote) => run_remote(jobs, store, remote.as_ref(), cancel, reporter),
                    };
                    let secs = t.elapsed().as_secs_f64() / results.len().max(1) as f64;
                    for (index, result) in results {
                        let result = result.map(|a| (a, secs)).map_err(|e| (e, secs));
                        let _ = tx.send(Event::Done { index, result });
                    }
                });
            }
            if running.is_empty() {
                break;
            }
            let Ok(Event::Done { index, result }) = rx.recv() else {
                break;
            };
            running.remove(&index);
            if options.remote.is_none()
                && registry
                    .get(plan[index].kind())
                    .is_some_and(|e| e.uses_device(&plan[index], options.backend))
            {
                device_busy = false;
            }
            match result {
                Ok((artifact, secs)) => {
                    reporter.finished(&plan[index].name, StageOutcome::Ran, secs, None);
                    artifacts.insert(index, artifact);
                    outcome[index] = Some((StageOutcome::Ran, secs, None));
                }
                Err((StageError::Cancelled, secs)) => {
                    reporter.finished(&plan[index].name, StageOutcome::Cancelled, secs, None);
                    outcome[index] = Some((StageOutcome::Cancelled, secs, None));
                }
                Err((e, secs)) => {
                    let message = e.to_string();
                    reporter.finished(
                        &plan[index].name,
                        StageOutcome::Failed,
                        secs,
                        Some(&message),
                    );
                    outcome[index] = Some((StageOutcome::Failed, secs, Some(message)));
                }
            }
        }
        Ok(())
    })?;

    for (i, stage) in plan.iter().enumerate() {
        let (o, secs, error) = outcome[i]
            .clone()
            .unwrap_or((StageOutcome::Cancelled, 0.0, None));
        record.stages.push(StageRun {
            name: stage.name.clone(),
            kind: stage.kind().to_string(),
            key: statuses[i].key.clone(),
            outcome: o,
            duration_s: secs,
            error,
        });
    }
    record.duration_s = clock.elapsed().as_secs_f64();
    store.write_run_record(&record)?;
    Ok(RunReport {
        record,
        artifacts,
        statuses: statuses.to_vec(),
    })
}

/// One stage of a task: what it needs before its context exists.
struct Job<'p> {
    index: usize,
    stage: &'p ConcreteStage,
    status: &'p StageStatus,
    inputs: Vec<StageInput<'p>>,
}

/// The input `j` with its whole upstream, artifacts included.
fn input_tree<'p>(
    plan: &'p [ConcreteStage],
    artifacts: &BTreeMap<usize, Artifact>,
    role: &'static str,
    j: usize,
) -> StageInput<'p> {
    StageInput {
        role,
        stage: &plan[j],
        artifact: artifacts[&j].clone(),
        upstream: plan[j]
            .inputs
            .iter()
            .map(|&(r, k)| input_tree(plan, artifacts, r, k))
            .collect(),
    }
}

/// Hands one task to `remote`, then verifies and records the artifacts its job committed.
fn run_remote(
    jobs: Vec<Job<'_>>,
    store: &Store,
    remote: &dyn RemoteExecutor,
    cancel: &CancelToken,
    reporter: &dyn Reporter,
) -> Vec<(usize, Result<Artifact, StageError>)> {
    let task: Vec<RemoteStage<'_>> = jobs
        .iter()
        .map(|job| RemoteStage {
            stage: job.stage,
            key: job.status.key.clone().expect("only unblocked stages run"),
            forced: job.status.forced,
        })
        .collect();
    let outcome = remote.run(&task, cancel, reporter);
    task.iter()
        .zip(&jobs)
        .map(|(t, job)| {
            let result = match &outcome {
                Err(StageError::Cancelled) => Err(StageError::Cancelled),
                Err(StageError::Failed { message }) => Err(StageError::failed(message.clone())),
                Ok(()) => match store.get(&t.key) {
                    Ok(Some(artifact)) => store
                        .record_stage(&t.stage.name, &t.key)
                        .map(|()| artifact)
                        .map_err(|e| StageError::from_error(&e)),
                    Ok(None) => Err(StageError::failed(format!(
                        "its job ended but left no artifact under {}",
                        t.key.short()
                    ))),
                    Err(e) => Err(StageError::failed(format!(
                        "the artifact its job committed does not verify: {e}"
                    ))),
                },
            };
            (job.index, result)
        })
        .collect()
}

/// What a job's stages ended with, by stage name.
pub type JobResults = Vec<(String, Result<Artifact, StageError>)>;

/// Runs the stages of `names` here, as a scheduler job does for the run that submitted it: no
/// lock (the submitting run holds it), the keys the submitter computed checked against this
/// plan's, every input already in the store, staging under `jobs/` ([`Store::begin_job`]), and
/// the same verified commit as a local run. `force`: replace the cached artifacts.
#[allow(clippy::too_many_arguments)]
pub fn execute_job(
    plan: &[ConcreteStage],
    statuses: &[StageStatus],
    names: &[(String, CacheKey)],
    store: &Store,
    registry: &Registry,
    backend: Backend,
    cancel: &CancelToken,
    reporter: &dyn Reporter,
) -> Result<JobResults, StageError> {
    let mut indices = Vec::new();
    for (name, expected) in names {
        let i = plan
            .iter()
            .position(|s| &s.name == name)
            .ok_or_else(|| StageError::failed(format!("the pipeline has no stage `{name}` now")))?;
        match &statuses[i].key {
            Some(key) if key == expected => {}
            Some(key) => {
                return Err(StageError::failed(format!(
                    "`{name}` would compute {} here but {} was submitted: the pipeline, its files or                      lortflow changed since the job was submitted; nothing was run",
                    key.short(),
                    expected.short()
                )));
            }
            None => {
                return Err(StageError::failed(format!(
                    "`{name}` cannot run: {}",
                    statuses[i].reasons.join("; ")
                )));
            }
        }
        indices.push(i);
    }
    // Every input of these stages, with its whole upstream, verified.
    let mut artifacts: BTreeMap<usize, Artifact> = BTreeMap::new();
    let mut stack: Vec<usize> = indices
        .iter()
        .flat_map(|&i| plan[i].inputs.iter().map(|&(_, j)| j))
        .collect();
    while let Some(j) = stack.pop() {
        if artifacts.contains_key(&j) {
            continue;
        }
        let key = statuses[j]
            .key
            .as_ref()
            .ok_or_else(|| StageError::failed(format!("input `{}` has no key", plan[j].name)))?;
        let artifact = store
            .get(key)
            .map_err(|e| StageError::from_error(&e))?
            .ok_or_else(|| {
                StageError::failed(format!(
                    "input `{}` is not in the store; the submitting run should have made it first",
                    plan[j].name
                ))
            })?;
        artifacts.insert(j, artifact);
        stack.extend(plan[j].inputs.iter().map(|&(_, k)| k));
    }
    let kind = plan[indices[0]].kind();
    let executor = registry
        .get(kind)
        .ok_or_else(|| {
            StageError::failed(format!(
                "no implementation is registered for `{kind}` stages"
            ))
        })?
        .clone();
    let jobs: Vec<Job<'_>> = indices
        .iter()
        .map(|&i| Job {
            index: i,
            stage: &plan[i],
            status: &statuses[i],
            inputs: plan[i]
                .inputs
                .iter()
                .map(|&(role, j)| input_tree(plan, &artifacts, role, j))
                .collect(),
        })
        .collect();
    for job in &jobs {
        reporter.started(&job.stage.name, job.stage.kind());
    }
    let results = run_batch(
        jobs,
        store,
        executor.as_ref(),
        backend,
        cancel,
        reporter,
        Store::begin_job,
    );
    Ok(results
        .into_iter()
        .map(|(i, r)| (plan[i].name.clone(), r))
        .collect())
}

/// Runs the stages of one task (one stage, or a batch group) and commits each artifact, staged
/// where `begin` puts it.
fn run_batch(
    jobs: Vec<Job<'_>>,
    store: &Store,
    executor: &dyn crate::stage::StageExecutor,
    backend: Backend,
    cancel: &CancelToken,
    reporter: &dyn Reporter,
    begin: fn(&Store, &CacheKey) -> Result<crate::Staging, StoreError>,
) -> Vec<(usize, Result<Artifact, StageError>)> {
    let io = |e: StoreError| StageError::from_error(&e);
    let started_at = Timestamp::now();
    let clock = Instant::now();
    // Staging and work directories first; a job that cannot get them fails alone.
    let mut results: Vec<(usize, Result<Artifact, StageError>)> = Vec::new();
    let mut prepared = Vec::new();
    for job in jobs {
        let key = job.status.key.clone().expect("only unblocked stages run");
        let work_dir = store.work_dir(&key);
        let staging = match begin(store, &key) {
            Ok(s) => s,
            Err(e) => {
                results.push((job.index, Err(io(e))));
                continue;
            }
        };
        if let Err(e) = std::fs::create_dir_all(&work_dir) {
            results.push((
                job.index,
                Err(StageError::failed(format!(
                    "cannot create `{}`: {e}",
                    work_dir.display()
                ))),
            ));
            continue;
        }
        let input_refs: Vec<InputRef> = job
            .inputs
            .iter()
            .map(|i| InputRef {
                name: i.role.to_string(),
                stage: i.stage.name.clone(),
                key: i.artifact.key().clone(),
            })
            .collect();
        prepared.push((job, key, staging, work_dir, input_refs));
    }
    let contexts: Vec<StageContext<'_>> = prepared
        .iter_mut()
        .map(|(job, _, staging, work_dir, _)| {
            let inputs = std::mem::take(&mut job.inputs);
            StageContext::new(
                job.stage,
                inputs,
                staging.path(),
                work_dir,
                backend,
                cancel,
                reporter,
            )
        })
        .collect();
    // A panicking executor (a bug, or a plugin's) fails its stages like an error would: the
    // message is kept, the staging directories are discarded, the rest of the run goes on.
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if contexts.len() == 1 {
            vec![executor.run(&contexts[0])]
        } else {
            executor.run_batch(&contexts)
        }
    }));
    let outputs = run.unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        (0..contexts.len())
            .map(|_| Err(StageError::failed(format!("the stage panicked: {message}"))))
            .collect()
    });
    drop(contexts);
    let duration = clock.elapsed().as_secs_f64() / prepared.len().max(1) as f64;
    for ((job, key, staging, work_dir, input_refs), output) in prepared.into_iter().zip(outputs) {
        let result = output.and_then(|summary| {
            if cancel.is_cancelled() {
                return Err(StageError::Cancelled);
            }
            inputs_unchanged(job.stage, &job.status.external, store)?;
            let mut manifest = Manifest::new(
                &job.stage.name,
                job.stage.kind().as_str(),
                &key,
                executor.version(),
            );
            manifest.params = job.status.params.clone();
            manifest.inputs = input_refs;
            manifest.external_files = job.status.external.clone();
            manifest.started_at = started_at;
            manifest.duration_s = duration;
            manifest.summary = summary;
            // A forced re-run replaces the old artifact only once its successor is complete: an
            // interrupted `--force` costs nothing that was already good.
            let artifact = if job.status.forced {
                staging.commit_replacing(manifest)
            } else {
                staging.commit(manifest)
            }
            .map_err(io)?;
            store.record_stage(&job.stage.name, &key).map_err(io)?;
            let _ = std::fs::remove_dir_all(&work_dir);
            Ok(artifact)
        });
        results.push((job.index, result));
    }
    results
}

/// Fails when an external file the stage read is not what it was when the key was computed: the
/// artifact would be stored under a key that does not describe it. (A user saving a file while a
/// stage reads it, as in watch mode; the next run picks the new content up.)
fn inputs_unchanged(
    stage: &ConcreteStage,
    keyed: &[ExternalFile],
    store: &Store,
) -> Result<(), StageError> {
    // A downloading stage writes its own files (verified against published checksums).
    if keyed.is_empty() || downloads(stage) {
        return Ok(());
    }
    // Unchanged files cost a `stat` each: their digests are cached by size and mtime.
    let mut digests = FileDigestCache::load(store.file_digests_path());
    for (written, resolved) in external_files(stage) {
        let Some(before) = keyed.iter().find(|f| f.path == written) else {
            continue;
        };
        let now = digests.digest(&resolved).ok().map(|d| d.hex());
        if now.as_deref() != Some(before.digest.as_str()) {
            return Err(StageError::failed(format!(
                "`{written}` changed while the stage was reading it; nothing was stored. Run again \
                 to use the new content"
            )));
        }
    }
    Ok(())
}

/// Records a cached artifact under the stage name it has now, when it was made (or last
/// recorded) under another one: after a rename, `status` compares the stage with its own last
/// run instead of calling it new. A failure to record is only a worse hint later.
fn remember_name(store: &Store, name: &str, artifact: &Artifact) {
    let key = artifact.key();
    let known = matches!(store.last_manifest_for(name), Ok(Some(m)) if &m.key == key);
    if !known && let Err(e) = store.record_stage(name, key) {
        tracing::debug!(stage = name, error = %e, "cannot record the stage's name");
    }
}

/// The indices of `targets` and everything they depend on.
pub fn with_upstream(plan: &[ConcreteStage], targets: &[usize]) -> HashSet<usize> {
    let mut keep = HashSet::new();
    let mut stack: Vec<usize> = targets.to_vec();
    while let Some(i) = stack.pop() {
        if keep.insert(i) {
            stack.extend(plan[i].inputs.iter().map(|&(_, j)| j));
        }
    }
    keep
}
