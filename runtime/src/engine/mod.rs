//! The engine: the runtime's one entry point. An [`Engine`] is a plan with the store it caches
//! into, the stage implementations and the backend; [`Engine::status`] says what is cached and
//! why not, [`Engine::run`] executes what is stale, taking the store's lock and clearing what
//! killed runs left behind. `lortflow run`, `lortflow watch`, the library example and the tests
//! all go through it.
//!
//! The two halves are modules of their own: [`status`](mod@status) (cache keys and staleness)
//! and [`execute`](mod@execute) (the scheduler: worker pool, batch groups, commits). Dependencies
//! point one way: this module uses both, `execute` uses `status`, neither uses this module.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lortflow_lang::ir::Backend;

pub mod execute;
pub mod status;

pub use execute::{
    EngineError, JobResults, RemoteExecutor, RemoteStage, RunContext, RunOptions, RunReport,
    RunSummary, execute, execute_job, with_upstream,
};
pub use status::{Force, StageStatus, State, diff_json, status};

use crate::file_digest::FileDigestCache;
use crate::key::CacheKey;
use crate::lock::StoreLock;
use crate::plan::{Compute, ConcreteStage};
use crate::stage::StageError;
use crate::stage::{CancelToken, Registry, Reporter};
use crate::store::Store;

/// What a run executes.
#[derive(Clone)]
pub struct RunRequest {
    /// Stages to re-run although cached.
    pub force: Force,
    /// Only these plan indices (they and their inputs: see [`with_upstream`]); `None`: all.
    pub only: Option<HashSet<usize>>,
    /// Parallel workers (tasks in flight, with a remote executor).
    pub jobs: usize,
    /// Hand every task to a scheduler instead of running it here.
    pub remote: Option<Arc<dyn RemoteExecutor>>,
}

impl std::fmt::Debug for RunRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunRequest")
            .field("force", &self.force)
            .field("only", &self.only)
            .field("jobs", &self.jobs)
            .field("remote", &self.remote.is_some())
            .finish()
    }
}

impl Default for RunRequest {
    /// Everything stale, one worker per CPU.
    fn default() -> Self {
        Self {
            force: Force::None,
            only: None,
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            remote: None,
        }
    }
}

/// A plan bound to its store, stage implementations and backend. Cheap to clone (the plan is
/// shared), so a caller can hand one to a background thread.
#[derive(Clone)]
pub struct Engine {
    plan: Arc<[ConcreteStage]>,
    store: Store,
    registry: Registry,
    compute: Compute,
    pipeline: PathBuf,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("stages", &self.plan.len())
            .field("store", &self.store.root())
            .field("compute", &self.compute)
            .field("pipeline", &self.pipeline)
            .finish()
    }
}

impl Engine {
    /// An engine for `plan` (from [`crate::plan::expand`]) of the pipeline file `pipeline`
    /// (named in run records), caching into `store`.
    pub fn new(
        plan: Vec<ConcreteStage>,
        store: Store,
        registry: Registry,
        backend: Backend,
        pipeline: impl Into<PathBuf>,
    ) -> Self {
        Self {
            plan: plan.into(),
            store,
            registry,
            compute: Compute::on(backend),
            pipeline: pipeline.into(),
        }
    }

    /// The same plan on another backend (keys of numeric stages differ per backend).
    pub fn with_backend(mut self, backend: Backend) -> Self {
        self.compute.backend = backend;
        self
    }

    /// The same plan trained data-parallel on `devices` devices (at least 1; the keys of
    /// data-parallel stages name the count when it is above 1).
    pub fn with_devices(mut self, devices: usize) -> Self {
        self.compute.devices = devices.max(1);
        self
    }

    /// The concrete stages, in dependency order.
    pub fn plan(&self) -> &[ConcreteStage] {
        &self.plan
    }

    /// The artifact store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The stage implementations.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The backend numeric stages run on.
    pub fn backend(&self) -> Backend {
        self.compute.backend
    }

    /// The backend and the devices of data-parallel stages.
    pub fn compute(&self) -> Compute {
        self.compute
    }

    /// The pipeline file.
    pub fn pipeline(&self) -> &Path {
        &self.pipeline
    }

    /// Keys and states of every stage, with reasons. Reads manifests and hashes the external
    /// files that changed since the last look (the digest cache is saved for next time); needs no
    /// lock, so it can run beside another process's run.
    pub fn status(&self, force: &Force) -> Vec<StageStatus> {
        let mut digests = FileDigestCache::load(self.store.file_digests_path());
        let statuses = status(
            &self.plan,
            &self.store,
            &self.registry,
            &mut digests,
            self.compute,
            force,
        );
        // A digest cache that cannot be saved only costs re-hashing next time.
        let _ = digests.save();
        statuses
    }

    /// Runs what is stale: takes the store's lock (failing at once, naming the holder, when
    /// another run has it), checks that the backend works here, deletes what killed runs left in
    /// `tmp/`, computes the statuses under the lock and executes.
    pub fn run(
        &self,
        request: &RunRequest,
        cancel: &CancelToken,
        reporter: &dyn Reporter,
    ) -> Result<RunReport, EngineError> {
        let lock = self.store.lock()?;
        self.run_locked(&lock, request, cancel, reporter)
    }

    /// [`Engine::run`] for a caller that holds the store's lock across runs (`lortflow watch`).
    pub fn run_locked(
        &self,
        lock: &StoreLock,
        request: &RunRequest,
        cancel: &CancelToken,
        reporter: &dyn Reporter,
    ) -> Result<RunReport, EngineError> {
        self.prepare(lock)?;
        let statuses = self.status(&request.force);
        self.execute_locked(statuses, request, cancel, reporter)
    }

    /// [`Engine::run_locked`] from statuses the caller computed while holding `lock` (`watch`
    /// decides from them which change cancels the run, so the run must use exactly these
    /// keys). `request.force` was applied when they were computed.
    pub fn run_with_statuses(
        &self,
        lock: &StoreLock,
        statuses: Vec<StageStatus>,
        request: &RunRequest,
        cancel: &CancelToken,
        reporter: &dyn Reporter,
    ) -> Result<RunReport, EngineError> {
        self.prepare(lock)?;
        self.execute_locked(statuses, request, cancel, reporter)
    }

    /// Runs the stages `names` (with the keys their submitter computed) as a scheduler job:
    /// see [`execute_job`]. Takes no lock; the backend must work on this node.
    pub fn run_job(
        &self,
        names: &[(String, CacheKey)],
        force: bool,
        cancel: &CancelToken,
        reporter: &dyn Reporter,
    ) -> Result<JobResults, StageError> {
        self.registry
            .check_backend(self.compute.backend)
            .map_err(StageError::failed)?;
        let force = if force {
            Force::Stages(names.iter().map(|(n, _)| n.clone()).collect())
        } else {
            Force::None
        };
        let statuses = self.status(&force);
        execute_job(
            &self.plan,
            &statuses,
            names,
            &self.store,
            &self.registry,
            self.compute,
            cancel,
            reporter,
        )
    }

    /// What every run does first: the backend must work here, and what killed runs left in
    /// `tmp/` goes (an artifact set aside by an interrupted `--force` comes back).
    fn prepare(&self, lock: &StoreLock) -> Result<(), EngineError> {
        self.registry
            .check_backend(self.compute.backend)
            .map_err(EngineError::Backend)?;
        self.store.clean_tmp(lock)?;
        Ok(())
    }

    fn execute_locked(
        &self,
        statuses: Vec<StageStatus>,
        request: &RunRequest,
        cancel: &CancelToken,
        reporter: &dyn Reporter,
    ) -> Result<RunReport, EngineError> {
        let options = RunOptions {
            jobs: request.jobs.max(1),
            compute: self.compute,
            pipeline: self.pipeline.clone(),
            remote: request.remote.clone(),
        };
        execute(RunContext {
            plan: &self.plan,
            statuses: &statuses,
            selected: request.only.as_ref(),
            store: &self.store,
            registry: &self.registry,
            options: &options,
            cancel,
            reporter,
        })
    }
}
