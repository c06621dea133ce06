//! Execution: the stale stages of a plan on a pool of workers (one accelerator stage per device
//! at a time); a failing stage stops what depends on it while the rest goes on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::thread::Scope;
use std::time::Instant;

use super::status::{StageStatus, State};
use crate::artifact::Artifact;
use crate::file_digest::FileDigestCache;
use crate::key::CacheKey;
use crate::lock::LockError;
use crate::manifest::{ExternalFile, InputRef, Manifest};
use crate::plan::{Compute, ConcreteStage, external_files};
use crate::run_record::{RunRecord, StageOutcome, StageRun};
use crate::stage::{
    CancelToken, Registry, Reporter, StageContext, StageError, StageExecutor, StageInput,
};
use crate::staging::Staging;
use crate::store::Store;
use crate::store_error::StoreError;
use crate::time::Timestamp;

/// Options of a run.
#[derive(Clone)]
pub struct RunOptions {
    /// Parallel workers (tasks in flight, with a remote executor).
    pub jobs: usize,
    /// The backend and devices.
    pub compute: Compute,
    /// The pipeline file, for the run record.
    pub pipeline: PathBuf,
    /// Where tasks run: here (`None`), or handed to a scheduler.
    pub remote: Option<Arc<dyn RemoteExecutor>>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("jobs", &self.jobs)
            .field("compute", &self.compute)
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
    Lock(#[from] LockError),
    /// The backend cannot run here (no CUDA driver or device, a build without `cuda`).
    #[error("{0}")]
    Backend(String),
}

/// Everything a run reads and reports to, borrowed for its length.
#[derive(Clone, Copy)]
pub struct RunContext<'r> {
    /// The concrete stages, in dependency order.
    pub plan: &'r [ConcreteStage],
    /// Their keys and states, by plan index.
    pub statuses: &'r [StageStatus],
    /// Only these plan indices (their inputs must then be cached or selected too); `None`: all.
    pub selected: Option<&'r HashSet<usize>>,
    /// The artifact store.
    pub store: &'r Store,
    /// The stage implementations.
    pub registry: &'r Registry,
    /// Workers, backend, pipeline file and where tasks run.
    pub options: &'r RunOptions,
    /// Stops the run: no task starts after it is set, and running ones are asked to stop.
    pub cancel: &'r CancelToken,
    /// Receives the run's events.
    pub reporter: &'r dyn Reporter,
}

impl RunContext<'_> {
    fn in_run(&self, i: usize) -> bool {
        self.selected.is_none_or(|s| s.contains(&i))
    }

    /// Whether stage `i` occupies this machine's accelerator (a remote task gets its own node's
    /// device).
    fn uses_device(&self, i: usize) -> bool {
        self.options.remote.is_none()
            && self
                .registry
                .get(self.plan[i].kind())
                .is_some_and(|e| e.uses_device(&self.plan[i], self.options.compute.backend))
    }
}

/// Executes the stale stages of a plan: verifies what is cached, then starts every stage whose
/// inputs are ready until nothing is left to start or the run is cancelled.
pub fn execute(cx: RunContext<'_>) -> Result<RunReport, EngineError> {
    let started = Timestamp::now();
    let clock = Instant::now();
    let mut scheduler = Scheduler::new(cx)?;
    let (tx, rx) = mpsc::channel::<Finished>();
    std::thread::scope(|scope| {
        loop {
            scheduler.settle_without_running();
            scheduler.start_ready(scope, &tx);
            if scheduler.running.is_empty() {
                break;
            }
            let Ok(finished) = rx.recv() else {
                break;
            };
            scheduler.collect(finished);
        }
    });
    let report = scheduler.into_report(started, clock.elapsed().as_secs_f64());
    cx.store.write_run_record(&report.record)?;
    Ok(report)
}

/// What a task's thread sends back for each of its stages.
struct Finished {
    index: usize,
    seconds: f64,
    result: Result<Artifact, StageError>,
}

/// How a stage ended in this run.
#[derive(Clone)]
struct Settled {
    outcome: StageOutcome,
    seconds: f64,
    error: Option<String>,
}

impl Settled {
    /// A stage that settled without running takes no time.
    fn without_running(outcome: StageOutcome, error: Option<String>) -> Self {
        Settled {
            outcome,
            seconds: 0.0,
            error,
        }
    }
}

/// The state of one run: which stages are settled and how, which are running, and the
/// artifacts the settled ones left. Stages settle either without running (cached, blocked,
/// downstream of a failure, the twin of another) or when their task's thread reports back.
struct Scheduler<'r> {
    cx: RunContext<'r>,
    /// Stages that must run: not cached, or downstream of one that is not.
    stale: Vec<bool>,
    /// The earlier stage with the same key, whose artifact this one takes.
    twin_of: Vec<Option<usize>>,
    /// The results: how each settled stage ended, by plan index.
    settled: Vec<Option<Settled>>,
    /// The artifacts of the stages that settled with one, by plan index.
    artifacts: BTreeMap<usize, Artifact>,
    /// Stages whose task is running.
    running: HashSet<usize>,
    /// A running stage holds the accelerator (one at a time per device).
    device_busy: bool,
}

impl<'r> Scheduler<'r> {
    fn new(cx: RunContext<'r>) -> Result<Self, EngineError> {
        for stage in cx.plan {
            if cx.registry.get(stage.kind()).is_none() {
                return Err(EngineError::Unregistered(stage.kind().to_string()));
            }
        }
        let n = cx.plan.len();
        let mut scheduler = Scheduler {
            cx,
            stale: cx
                .statuses
                .iter()
                .map(|s| s.state != State::Cached)
                .collect(),
            twin_of: vec![None; n],
            settled: vec![None; n],
            artifacts: BTreeMap::new(),
            running: HashSet::new(),
            device_busy: false,
        };
        scheduler.verify_cached()?;
        scheduler.find_twins();
        Ok(scheduler)
    }

    /// Cached artifacts are verified before anything reads them; a corrupt one is reported,
    /// evicted and rebuilt, and everything downstream runs again.
    fn verify_cached(&mut self) -> Result<(), EngineError> {
        let cx = self.cx;
        for i in 0..cx.plan.len() {
            if !cx.in_run(i) {
                continue;
            }
            if self.stale[i] || cx.plan[i].inputs.iter().any(|&(_, j)| self.stale[j]) {
                self.stale[i] = true;
                continue;
            }
            let Some(key) = &cx.statuses[i].key else {
                continue;
            };
            match cx.store.get(key) {
                Ok(Some(a)) => {
                    self.artifacts.insert(i, a);
                }
                Ok(None) => self.stale[i] = true,
                Err(e) if e.is_corrupt() => {
                    cx.reporter.notice(&format!(
                        "the cached artifact of `{}` is corrupt ({e}); rebuilding it",
                        cx.plan[i].name
                    ));
                    let _ = cx.store.evict(key);
                    self.stale[i] = true;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Two stages that compute the same thing (the same key under two names) run once: the
    /// later one waits for the earlier one's artifact. Running both would race on the key's
    /// work directory (a backbone's checkpoints).
    fn find_twins(&mut self) {
        let cx = self.cx;
        let mut first_with_key: HashMap<&CacheKey, usize> = HashMap::new();
        for i in (0..cx.plan.len()).filter(|&i| self.stale[i] && cx.in_run(i)) {
            if let Some(key) = &cx.statuses[i].key {
                match first_with_key.get(key) {
                    Some(&j) => self.twin_of[i] = Some(j),
                    None => {
                        first_with_key.insert(key, i);
                    }
                }
            }
        }
    }

    /// Settles everything decidable without running, until nothing more is.
    fn settle_without_running(&mut self) {
        let mut progressed = true;
        while progressed {
            progressed = false;
            for i in 0..self.cx.plan.len() {
                if self.settled[i].is_none() && !self.running.contains(&i) {
                    progressed |= self.settle_one(i);
                }
            }
        }
    }

    /// Settles stage `i` if it can be without running; whether it was.
    fn settle_one(&mut self, i: usize) -> bool {
        if !self.cx.in_run(i) {
            // Stages left out by `--only` are not news: nothing is reported.
            self.settled[i] = Some(Settled::without_running(StageOutcome::Skipped, None));
            return true;
        }
        if self.cx.statuses[i].state == State::Blocked {
            self.settle_blocked(i);
            return true;
        }
        if self.skip_if_upstream_unfinished(i) {
            return true;
        }
        if let Some(j) = self.twin_of[i] {
            return self.settle_twin(i, j);
        }
        if !self.stale[i] && self.artifacts.contains_key(&i) {
            remember_name(self.cx.store, &self.cx.plan[i].name, &self.artifacts[&i]);
            self.settle(i, StageOutcome::Cached, None);
            return true;
        }
        false
    }

    /// A stage that cannot run fails; one whose input cannot run is skipped.
    fn settle_blocked(&mut self, i: usize) {
        let status = &self.cx.statuses[i];
        let outcome = if status.blocked_by_input {
            StageOutcome::Skipped
        } else {
            StageOutcome::Failed
        };
        self.settle(i, outcome, Some(status.reasons.join("; ")));
    }

    /// Fails the downstream of a failure: an input that settled without an artifact failed, was
    /// skipped or was cancelled, so stage `i` cannot run and is skipped.
    fn skip_if_upstream_unfinished(&mut self, i: usize) -> bool {
        let plan = self.cx.plan;
        let unfinished = plan[i]
            .inputs
            .iter()
            .find(|&&(_, j)| self.settled[j].is_some() && !self.artifacts.contains_key(&j));
        let Some(&(_, j)) = unfinished else {
            return false;
        };
        let why = format!("upstream `{}` did not finish", plan[j].name);
        self.settle(i, StageOutcome::Skipped, Some(why));
        true
    }

    /// Stage `i` takes the artifact of its twin `j` once `j` has settled.
    fn settle_twin(&mut self, i: usize, j: usize) -> bool {
        if self.settled[j].is_none() {
            return false;
        }
        match self.artifacts.get(&j).cloned() {
            Some(artifact) => {
                remember_name(self.cx.store, &self.cx.plan[i].name, &artifact);
                self.artifacts.insert(i, artifact);
                self.settle(i, StageOutcome::Cached, None);
            }
            None => {
                let why = format!(
                    "`{}`, the same computation, did not finish",
                    self.cx.plan[j].name
                );
                self.settle(i, StageOutcome::Skipped, Some(why));
            }
        }
        true
    }

    /// Records and reports how a stage that did not run ended.
    fn settle(&mut self, i: usize, outcome: StageOutcome, why: Option<String>) {
        self.cx
            .reporter
            .finished(&self.cx.plan[i].name, outcome, 0.0, why.as_deref());
        self.settled[i] = Some(Settled::without_running(outcome, why));
    }

    /// The stages that can start: unsettled, not running, not waiting for a twin, every input
    /// settled with an artifact.
    fn ready(&self) -> Vec<usize> {
        (0..self.cx.plan.len())
            .filter(|&i| {
                self.settled[i].is_none() && !self.running.contains(&i) && self.twin_of[i].is_none()
            })
            .filter(|&i| {
                self.cx.plan[i]
                    .inputs
                    .iter()
                    .all(|&(_, j)| self.artifacts.contains_key(&j) && self.settled[j].is_some())
            })
            .collect()
    }

    /// Starts tasks of ready stages while workers are free.
    fn start_ready<'s>(&mut self, scope: &'s Scope<'s, '_>, tx: &mpsc::Sender<Finished>)
    where
        'r: 's,
    {
        let ready = self.ready();
        while let Some(task) = self.pick(&ready) {
            self.start(scope, tx, task);
        }
    }

    /// The next task among `ready` that may start now: one stage, or the ready stages of its
    /// batch group. `None` when every worker is busy, the run is cancelled, or what is left
    /// waits for the accelerator.
    fn pick(&mut self, ready: &[usize]) -> Option<Vec<usize>> {
        let cx = self.cx;
        if self.running.len() >= cx.options.jobs.max(1) || cx.cancel.is_cancelled() {
            return None;
        }
        let waits_for_device = |i: usize| self.device_busy && cx.uses_device(i);
        let i = ready
            .iter()
            .copied()
            .find(|&i| !self.running.contains(&i) && !waits_for_device(i))?;
        let executor = self.executor(i);
        let members = match executor.batch_group(&cx.plan[i]) {
            Some(group) => ready
                .iter()
                .copied()
                .filter(|&j| {
                    !self.running.contains(&j)
                        && cx.plan[j].kind() == cx.plan[i].kind()
                        && executor.batch_group(&cx.plan[j]).as_deref() == Some(group.as_str())
                })
                .collect(),
            None => vec![i],
        };
        self.device_busy |= cx.uses_device(i);
        Some(members)
    }

    /// Starts the task of `members` on a thread of `scope`; it reports to `tx`.
    fn start<'s>(
        &mut self,
        scope: &'s Scope<'s, '_>,
        tx: &mpsc::Sender<Finished>,
        members: Vec<usize>,
    ) where
        'r: 's,
    {
        let cx = self.cx;
        let executor = self.executor(members[0]);
        let mut jobs = Vec::with_capacity(members.len());
        for m in members {
            self.running.insert(m);
            cx.reporter.started(&cx.plan[m].name, cx.plan[m].kind());
            let inputs: Vec<StageInput<'_>> = cx.plan[m]
                .inputs
                .iter()
                .map(|&(role, j)| input_tree(cx.plan, &self.artifacts, role, j))
                .collect();
            jobs.push(Job {
                index: m,
                stage: &cx.plan[m],
                status: &cx.statuses[m],
                inputs,
            });
        }
        let tx = tx.clone();
        scope.spawn(move || {
            let clock = Instant::now();
            let results = match &cx.options.remote {
                None => run_batch(
                    jobs,
                    cx.store,
                    executor.as_ref(),
                    cx.options.compute,
                    cx.cancel,
                    cx.reporter,
                    Store::begin,
                ),
                Some(remote) => run_remote(jobs, cx.store, remote.as_ref(), cx.cancel, cx.reporter),
            };
            let seconds = clock.elapsed().as_secs_f64() / results.len().max(1) as f64;
            for (index, result) in results {
                let _ = tx.send(Finished {
                    index,
                    seconds,
                    result,
                });
            }
        });
    }

    fn executor(&self, i: usize) -> Arc<dyn StageExecutor> {
        let kind = self.cx.plan[i].kind();
        Arc::clone(
            self.cx
                .registry
                .get(kind)
                .expect("checked in Scheduler::new"),
        )
    }

    /// Takes in a stage its task's thread finished: frees its worker (and the accelerator), and
    /// records and reports how it ended.
    fn collect(&mut self, finished: Finished) {
        let Finished {
            index,
            seconds,
            result,
        } = finished;
        self.running.remove(&index);
        if self.cx.uses_device(index) {
            self.device_busy = false;
        }
        let name = &self.cx.plan[index].name;
        let settled = |outcome, error| Settled {
            outcome,
            seconds,
            error,
        };
        let settled = match result {
            Ok(artifact) => {
                self.artifacts.insert(index, artifact);
                self.cx
                    .reporter
                    .finished(name, StageOutcome::Ran, seconds, None);
                settled(StageOutcome::Ran, None)
            }
            Err(StageError::Cancelled) => {
                self.cx
                    .reporter
                    .finished(name, StageOutcome::Cancelled, seconds, None);
                settled(StageOutcome::Cancelled, None)
            }
            Err(e) => {
                self.cx.reporter.failed(name, seconds, &e);
                settled(StageOutcome::Failed, Some(e.to_string()))
            }
        };
        self.settled[index] = Some(settled);
    }

    /// The run's report; a stage that never settled was cancelled (the run stopped before it
    /// could start).
    fn into_report(self, started_at: Timestamp, duration_s: f64) -> RunReport {
        let cx = self.cx;
        let mut record = RunRecord::new(cx.options.pipeline.clone());
        record.started_at = started_at;
        record.id = RunRecord::make_id(started_at);
        for (i, stage) in cx.plan.iter().enumerate() {
            let settled = self.settled[i]
                .clone()
                .unwrap_or(Settled::without_running(StageOutcome::Cancelled, None));
            record.stages.push(StageRun {
                name: stage.name.clone(),
                kind: stage.kind().to_string(),
                key: cx.statuses[i].key.clone(),
                outcome: settled.outcome,
                duration_s: settled.seconds,
                error: settled.error,
            });
        }
        record.duration_s = duration_s;
        RunReport {
            record,
            artifacts: self.artifacts,
            statuses: cx.statuses.to_vec(),
        }
    }
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
                Err(e) => Err(e.clone()),
                Ok(()) => match store.get(&t.key) {
                    Ok(Some(artifact)) => store
                        .record_stage(&t.stage.name, &t.key)
                        .map(|()| artifact)
                        .map_err(StageError::from_source),
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
    compute: Compute,
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
            .map_err(StageError::from_source)?
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
        compute,
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
    executor: &dyn StageExecutor,
    compute: Compute,
    cancel: &CancelToken,
    reporter: &dyn Reporter,
    begin: fn(&Store, &CacheKey) -> Result<Staging, StoreError>,
) -> Vec<(usize, Result<Artifact, StageError>)> {
    let io = StageError::from_source;
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
                compute,
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
    if keyed.is_empty() || stage.stage.downloads() {
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

#[cfg(test)]
mod tests {
    use std::error::Error;
    use std::sync::Mutex;

    use lortflow_lang::{MemoryLoader, StageKind, check_text};
    use serde_json::Value as Json;

    use super::*;
    use crate::engine::{Engine, RunRequest};
    use crate::plan::expand;
    use crate::stage::{Progress, StageExecutor};

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read the checkpoint")]
    struct Unreadable(#[source] std::io::Error);

    /// Fails every stage named `fail…` with a nested error; the others write nothing and pass.
    struct FailsWithCause;

    impl StageExecutor for FailsWithCause {
        fn version(&self) -> &'static str {
            "test-1"
        }
        fn run(&self, cx: &StageContext<'_>) -> Result<Json, StageError> {
            if cx.stage.name.starts_with("fail") {
                let io = std::io::Error::other("disk quota exceeded");
                return Err(StageError::with_source("training stopped", Unreadable(io)));
            }
            Ok(Json::Null)
        }
    }

    /// Keeps what the reporter hooks were given for failed stages.
    #[derive(Default)]
    struct Failures {
        /// `failed`: the headline and the causes, walked with `Error::source`.
        chains: Mutex<Vec<Vec<String>>>,
        /// `finished` with a failure: its text.
        lines: Mutex<Vec<String>>,
    }

    impl Reporter for Failures {
        fn started(&self, _: &str, _: StageKind) {}
        fn progress(&self, _: &str, _: &Progress) {}
        fn finished(&self, _: &str, outcome: StageOutcome, _: f64, error: Option<&str>) {
            if outcome == StageOutcome::Failed {
                self.lines.lock().unwrap().push(error.unwrap().to_string());
            }
        }
        fn notice(&self, _: &str) {}
        fn failed(&self, _: &str, _: f64, error: &StageError) {
            let causes = std::iter::successors(error.source(), |&e| e.source());
            let chain = std::iter::once(error.headline())
                .chain(causes.map(|e| e.to_string()))
                .collect();
            self.chains.lock().unwrap().push(chain);
        }
    }

    /// A reporter that leaves `failed` to its default.
    #[derive(Default)]
    struct LinesOnly(Failures);

    impl Reporter for LinesOnly {
        fn started(&self, _: &str, _: StageKind) {}
        fn progress(&self, _: &str, _: &Progress) {}
        fn finished(&self, stage: &str, outcome: StageOutcome, s: f64, error: Option<&str>) {
            self.0.finished(stage, outcome, s, error);
        }
        fn notice(&self, _: &str) {}
    }

    fn engine(dir: &std::path::Path) -> Engine {
        let text = r#"lortflow 1
dataset "fail" { source "synthetic" kind="vectors" }
"#;
        let checked = check_text(&dir.join("p.kdl"), text.into(), &MemoryLoader::default());
        assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
        let plan = expand(&checked.pipeline, &[]).unwrap();
        let mut registry = Registry::new();
        for kind in StageKind::ALL {
            registry.register(kind, Arc::new(FailsWithCause));
        }
        let store = Store::open(&dir.join(".lortflow")).unwrap();
        Engine::new(
            plan,
            store,
            registry,
            lortflow_lang::ir::Backend::Cpu,
            "p.kdl",
        )
    }

    #[test]
    fn a_stage_failing_with_a_nested_error_keeps_the_chain_up_to_the_reporter() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path());
        let reporter = Failures::default();
        let report = engine
            .run(&RunRequest::default(), &CancelToken::new(), &reporter)
            .unwrap();
        assert_eq!(
            *reporter.chains.lock().unwrap(),
            [[
                "training stopped",
                "cannot read the checkpoint",
                "disk quota exceeded"
            ]]
        );
        // The run record keeps the one-line text, as before.
        let line = "training stopped: cannot read the checkpoint: disk quota exceeded";
        assert_eq!(report.record.stages[0].outcome, StageOutcome::Failed);
        assert_eq!(report.record.stages[0].error.as_deref(), Some(line));
        assert!(reporter.lines.lock().unwrap().is_empty());

        // A reporter that does not look at causes gets the same line through `finished`.
        let reporter = LinesOnly::default();
        engine
            .run(&RunRequest::default(), &CancelToken::new(), &reporter)
            .unwrap();
        assert_eq!(*reporter.0.lines.lock().unwrap(), [line]);
    }
}
