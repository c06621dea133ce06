//! How the runtime knows stages: the [`StageExecutor`] trait, a registry by stage kind, and the
//! context a stage runs in (its inputs, output directory, cancellation and progress).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use lortflow_lang::StageKind;
use lortflow_lang::ir::Backend;
use serde_json::Value as Json;

use crate::artifact::Artifact;
use crate::plan::ConcreteStage;

/// A cooperative cancellation flag shared by the runtime and a running stage. Watch mode
/// cancels stages whose inputs changed; a cancelled stage returns [`StageError::Cancelled`]
/// and its staging directory is discarded, so nothing half-written is ever committed.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A fresh, uncancelled token.
    pub fn new() -> Self {
        Self::default()
    }
    /// Requests cancellation.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// The flag, for code that polls an `AtomicBool`.
    pub fn flag(&self) -> &AtomicBool {
        &self.0
    }
}

/// A progress update of a running stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Units done.
    pub done: u64,
    /// Units in all (0 when unknown).
    pub total: u64,
    /// What a unit is (`epoch`, `batch`, `image`).
    pub unit: &'static str,
    /// A short status (`loss 0.412, acc 81.2%`).
    pub message: String,
}

/// Receives the events of a run; the CLI draws bars or prints lines.
pub trait Reporter: Send + Sync {
    /// A stage starts running.
    fn started(&self, stage: &str, kind: StageKind);
    /// A running stage reports progress.
    fn progress(&self, stage: &str, progress: &Progress);
    /// A stage ended (ran, cached, failed, skipped or cancelled).
    fn finished(
        &self,
        stage: &str,
        outcome: crate::StageOutcome,
        seconds: f64,
        error: Option<&str>,
    );
    /// A notice that is not tied to a stage's outcome (a corrupt artifact being rebuilt).
    fn notice(&self, message: &str);
}

/// A reporter that drops everything (tests, `--quiet`).
#[derive(Debug, Default)]
pub struct SilentReporter;

impl Reporter for SilentReporter {
    fn started(&self, _: &str, _: StageKind) {}
    fn progress(&self, _: &str, _: &Progress) {}
    fn finished(&self, _: &str, _: crate::StageOutcome, _: f64, _: Option<&str>) {}
    fn notice(&self, _: &str) {}
}

/// An input artifact of a running stage.
#[derive(Debug)]
pub struct StageInput<'a> {
    /// The role (`data`, `features`, `init`, `heads`).
    pub role: &'static str,
    /// The input stage.
    pub stage: &'a ConcreteStage,
    /// Its artifact, verified.
    pub artifact: Artifact,
    /// The input's own inputs, recursively (a features stage reaches its dataset this way).
    pub upstream: Vec<StageInput<'a>>,
}

impl StageInput<'_> {
    /// The first input with `role` of this input, searched depth-first through its upstream.
    pub fn find(&self, role: &str) -> Option<&Self> {
        self.upstream
            .iter()
            .find(|u| u.role == role)
            .or_else(|| self.upstream.iter().find_map(|u| u.find(role)))
    }
}

/// Everything a stage sees while it runs.
pub struct StageContext<'a> {
    /// The stage.
    pub stage: &'a ConcreteStage,
    /// Its inputs, in the plan's order.
    pub inputs: Vec<StageInput<'a>>,
    /// Where to write the artifact's files; committed atomically on success.
    pub out_dir: &'a Path,
    /// Scratch space that survives an interrupted run of the same stage (checkpoints for
    /// resuming); removed once the artifact is committed.
    pub work_dir: &'a Path,
    /// The compute backend.
    pub backend: Backend,
    /// Cancellation.
    pub cancel: &'a CancelToken,
    reporter: &'a dyn Reporter,
}

impl<'a> StageContext<'a> {
    /// Builds a context (the engine does this; tests may too).
    pub fn new(
        stage: &'a ConcreteStage,
        inputs: Vec<StageInput<'a>>,
        out_dir: &'a Path,
        work_dir: &'a Path,
        backend: Backend,
        cancel: &'a CancelToken,
        reporter: &'a dyn Reporter,
    ) -> Self {
        StageContext {
            stage,
            inputs,
            out_dir,
            work_dir,
            backend,
            cancel,
            reporter,
        }
    }

    /// Reports progress.
    pub fn progress(&self, done: u64, total: u64, unit: &'static str, message: impl Into<String>) {
        self.reporter.progress(
            &self.stage.name,
            &Progress {
                done,
                total,
                unit,
                message: message.into(),
            },
        );
    }

    /// The inputs with a given role.
    pub fn inputs_with_role(&self, role: &str) -> impl Iterator<Item = &StageInput<'a>> {
        self.inputs.iter().filter(move |i| i.role == role)
    }

    /// The single input with a given role.
    pub fn input(&self, role: &str) -> Result<&StageInput<'a>, StageError> {
        self.inputs_with_role(role).next().ok_or_else(|| {
            StageError::failed(format!("stage `{}` has no `{role}` input", self.stage.name))
        })
    }

    /// Fails with [`StageError::Cancelled`] when cancellation was requested.
    pub fn check_cancelled(&self) -> Result<(), StageError> {
        if self.cancel.is_cancelled() {
            Err(StageError::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// Why a stage did not produce its artifact.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The stage failed; the message says why and what to do.
    #[error("{message}")]
    Failed {
        /// The message, with its causes.
        message: String,
    },
    /// The run was cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl StageError {
    /// A failure with a message.
    pub fn failed(message: impl Into<String>) -> Self {
        StageError::Failed {
            message: message.into(),
        }
    }

    /// A failure from an error, with its chain of causes.
    pub fn from_error(err: &dyn std::error::Error) -> Self {
        let mut message = err.to_string();
        let mut source = err.source();
        while let Some(s) = source {
            let text = s.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = s.source();
        }
        StageError::Failed { message }
    }
}

/// The implementation of one stage kind.
pub trait StageExecutor: Send + Sync {
    /// The implementation version: part of every cache key of this kind. Bump it when the same
    /// inputs would produce different outputs.
    fn version(&self) -> &'static str;

    /// Whether the stage occupies the accelerator on this backend (the scheduler runs one such
    /// stage per device at a time).
    fn uses_device(&self, _stage: &ConcreteStage, backend: Backend) -> bool {
        backend.uses_device()
    }

    /// Runs the stage, writing its files into `cx.out_dir`; returns the summary stored in the
    /// manifest (class counts, shapes, metrics...).
    fn run(&self, cx: &StageContext<'_>) -> Result<Json, StageError>;

    /// Stages of this kind with the same group that are ready at the same time run in one
    /// [`run_batch`](Self::run_batch) call: a sweep of heads over one feature matrix trains
    /// together instead of once per head. `None` (the default) never batches.
    fn batch_group(&self, _stage: &ConcreteStage) -> Option<String> {
        None
    }

    /// Runs several stages of one batch group; one result per context, in order.
    fn run_batch(&self, contexts: &[StageContext<'_>]) -> Vec<Result<Json, StageError>> {
        contexts.iter().map(|cx| self.run(cx)).collect()
    }

    /// What `lortflow inspect` shows about an artifact; the stored summary by default.
    fn inspect(&self, artifact: &Artifact) -> Result<Json, StageError> {
        Ok(artifact.manifest().summary.clone())
    }
}

/// Says whether a backend can run on this machine (a CUDA driver and device, a build with the
/// feature), with what to do when not.
pub type BackendCheck = Arc<dyn Fn(Backend) -> Result<(), String> + Send + Sync>;

/// The executors by stage kind, and how to tell whether a backend works here.
#[derive(Clone, Default)]
pub struct Registry {
    executors: HashMap<StageKind, Arc<dyn StageExecutor>>,
    backend_check: Option<BackendCheck>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("kinds", &self.executors.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the executor of a stage kind.
    pub fn register(&mut self, kind: StageKind, executor: Arc<dyn StageExecutor>) -> &mut Self {
        self.executors.insert(kind, executor);
        self
    }

    /// The executor of a kind.
    pub fn get(&self, kind: StageKind) -> Option<&Arc<dyn StageExecutor>> {
        self.executors.get(&kind)
    }

    /// Sets the check [`Registry::check_backend`] runs before any work starts.
    pub fn set_backend_check(&mut self, check: BackendCheck) -> &mut Self {
        self.backend_check = Some(check);
        self
    }

    /// Whether `backend` can run here; every backend can when no check is set.
    pub fn check_backend(&self, backend: Backend) -> Result<(), String> {
        match &self.backend_check {
            Some(check) => check(backend),
            None => Ok(()),
        }
    }
}
