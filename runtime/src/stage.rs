//! How the runtime knows stages: the [`StageExecutor`] trait, a registry by stage kind, and the
//! context a stage runs in (its inputs, output directory, cancellation and progress).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use lortflow_lang::StageKind;
use lortflow_lang::ir::Backend;

use crate::plan::Compute;
use serde_json::Value as Json;

use crate::artifact::Artifact;
use crate::plan::ConcreteStage;
use crate::run_record::StageOutcome;

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
    fn finished(&self, stage: &str, outcome: StageOutcome, seconds: f64, error: Option<&str>);
    /// A notice that is not tied to a stage's outcome (a corrupt artifact being rebuilt).
    fn notice(&self, message: &str);
    /// A stage ran and failed with `error`. By default [`Reporter::finished`] with the error's
    /// one-line text; a reporter that shows the causes one by one walks them from `error`.
    fn failed(&self, stage: &str, seconds: f64, error: &StageError) {
        self.finished(
            stage,
            StageOutcome::Failed,
            seconds,
            Some(&error.to_string()),
        );
    }
}

/// A reporter that drops everything (tests, `--quiet`).
#[derive(Debug, Default)]
pub struct SilentReporter;

impl Reporter for SilentReporter {
    fn started(&self, _: &str, _: StageKind) {}
    fn progress(&self, _: &str, _: &Progress) {}
    fn finished(&self, _: &str, _: StageOutcome, _: f64, _: Option<&str>) {}
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
    /// Devices a data-parallel stage trains on (1: no data parallelism).
    pub devices: usize,
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
        compute: Compute,
        cancel: &'a CancelToken,
        reporter: &'a dyn Reporter,
    ) -> Self {
        StageContext {
            stage,
            inputs,
            out_dir,
            work_dir,
            backend: compute.backend,
            devices: compute.devices,
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
///
/// `Display` is the failure on one line, causes included (`what failed: why: the io error`):
/// what run records store and what the CLI prints by default. A failure made from an error
/// ([`StageError::from_source`], [`StageError::with_source`]) also keeps that error, so
/// [`std::error::Error::source`] walks its causes one by one (`lortflow run -v` prints them).
#[derive(Debug, Clone)]
pub enum StageError {
    /// The stage failed; the message says why and what to do.
    Failed {
        /// The message, with the errors that caused it.
        message: FailureMessage,
    },
    /// The run was cancelled.
    Cancelled,
}

/// An error kept as the cause of a failure; shared, so that a failure can be cloned for every
/// stage of a batch group without losing it.
type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// What a failed stage says: its own text, the error that caused it, or both.
#[derive(Debug, Clone)]
pub struct FailureMessage {
    /// The stage's own words; `None` when the cause speaks for itself ([`StageError::from_source`]).
    text: Option<String>,
    cause: Option<Cause>,
}

impl FailureMessage {
    /// The failure without its causes: the stage's own words, or its error's.
    pub fn headline(&self) -> String {
        match (&self.text, &self.cause) {
            (Some(text), _) => text.clone(),
            (None, Some(cause)) => cause.to_string(),
            (None, None) => String::new(),
        }
    }

    /// The first error below the headline.
    fn first_cause(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let cause = self.cause.as_deref()?;
        match self.text {
            Some(_) => Some(cause),
            // The headline is the cause's own text: its causes come next.
            None => cause.source(),
        }
    }
}

impl std::fmt::Display for FailureMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&one_line(self.headline(), self.first_cause()))
    }
}

impl From<FailureMessage> for String {
    fn from(message: FailureMessage) -> Self {
        message.to_string()
    }
}

/// `headline: cause: its cause…`, leaving out a cause whose text is already there (many errors
/// repeat their source's text in their own).
fn one_line(headline: String, mut cause: Option<&(dyn std::error::Error + 'static)>) -> String {
    let mut line = headline;
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

impl StageError {
    /// A failure with a message.
    pub fn failed(message: impl Into<String>) -> Self {
        StageError::Failed {
            message: FailureMessage {
                text: Some(message.into()),
                cause: None,
            },
        }
    }

    /// A failure from a borrowed error: its chain of causes goes into the message as text.
    /// [`StageError::from_source`] keeps the error itself.
    pub fn from_error(err: &dyn std::error::Error) -> Self {
        StageError::failed(one_line(err.to_string(), err.source()))
    }

    /// A failure that is `err`, keeping it: the same text as [`StageError::from_error`], and
    /// [`std::error::Error::source`] walks `err`'s causes.
    pub fn from_source(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        StageError::Failed {
            message: FailureMessage {
                text: None,
                cause: Some(Arc::new(err)),
            },
        }
    }

    /// A failure saying `message`, caused by `err` (kept: [`std::error::Error::source`] returns
    /// it). The text is `message: err: its causes…`.
    pub fn with_source(
        message: impl Into<String>,
        err: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StageError::Failed {
            message: FailureMessage {
                text: Some(message.into()),
                cause: Some(Arc::new(err)),
            },
        }
    }

    /// The failure without its causes (`cancelled` for a cancelled stage); with
    /// [`std::error::Error::source`], what a reporter prints as one line per cause.
    pub fn headline(&self) -> String {
        match self {
            StageError::Failed { message } => message.headline(),
            StageError::Cancelled => self.to_string(),
        }
    }
}

impl std::fmt::Display for StageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StageError::Failed { message } => message.fmt(f),
            StageError::Cancelled => f.write_str("cancelled"),
        }
    }
}

impl std::error::Error for StageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StageError::Failed { message } => message.first_cause(),
            StageError::Cancelled => None,
        }
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

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    /// `outer` caused by `inner`, the way error types built with `thiserror` nest.
    #[derive(Debug, thiserror::Error)]
    #[error("cannot read the checkpoint")]
    struct Outer(#[source] std::io::Error);

    fn nested() -> Outer {
        Outer(std::io::Error::other("disk quota exceeded"))
    }

    /// The texts of the causes below `err`, walked with `Error::source`.
    fn causes(err: &dyn Error) -> Vec<String> {
        std::iter::successors(err.source(), |&e| e.source())
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn the_old_constructors_say_the_same_and_keep_no_source() {
        let e = StageError::failed("no input");
        assert_eq!(e.to_string(), "no input");
        assert!(e.source().is_none());
        let e = StageError::from_error(&nested());
        assert_eq!(
            e.to_string(),
            "cannot read the checkpoint: disk quota exceeded"
        );
        assert!(e.source().is_none());
        assert_eq!(StageError::Cancelled.to_string(), "cancelled");
    }

    #[test]
    fn from_source_keeps_the_chain_with_the_text_of_from_error() {
        let e = StageError::from_source(nested());
        assert_eq!(e.to_string(), StageError::from_error(&nested()).to_string());
        assert_eq!(e.headline(), "cannot read the checkpoint");
        assert_eq!(causes(&e), ["disk quota exceeded"]);
    }

    #[test]
    fn with_source_keeps_the_chain_under_its_own_message() {
        let e = StageError::with_source("training stopped", nested());
        assert_eq!(
            e.to_string(),
            "training stopped: cannot read the checkpoint: disk quota exceeded"
        );
        assert_eq!(e.headline(), "training stopped");
        assert_eq!(
            causes(&e),
            ["cannot read the checkpoint", "disk quota exceeded"]
        );
        // A batch group's members each get the failure; the chain survives the copy.
        assert_eq!(causes(&e.clone()), causes(&e));
        let io = e.source().unwrap().source().unwrap();
        assert!(io.downcast_ref::<std::io::Error>().is_some());
    }

    #[test]
    fn a_cause_that_repeats_the_message_is_not_repeated_on_one_line() {
        let e = StageError::with_source(
            "disk quota exceeded",
            std::io::Error::other("disk quota exceeded"),
        );
        assert_eq!(e.to_string(), "disk quota exceeded");
        assert_eq!(causes(&e), ["disk quota exceeded"]);
    }

    #[test]
    fn a_failure_message_converts_to_the_text_callers_stored_before() {
        let StageError::Failed { message } = StageError::with_source("stopped", nested()) else {
            unreachable!()
        };
        let text: String = message.clone().into();
        assert_eq!(text, message.to_string());
        assert_eq!(StageError::failed(message).to_string(), text);
    }
}
