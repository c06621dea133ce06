//! `lortflow watch FILE`: run the pipeline, then re-lint and re-run what each save invalidates,
//! until Ctrl-C.
//!
//! The main thread owns the state and reacts to messages: debounced changes from the file watcher
//! (`lortflow_runtime::watch`), Ctrl-C, and the end of a run. A run executes on its own thread so
//! that changes keep arriving while stages train; a change that makes a running stage stale
//! cancels the run, and the next cycle starts as soon as it has returned. Errors follow the style
//! guide (§3): a watcher that cannot start (unreadable file, store locked by another run) is fatal
//! (exit code 2); a bad edit or a failed stage is reported and the watcher waits for the next
//! change.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use lortflow_lang::ir::Backend;
use lortflow_lang::{FsLoader, SourceMap, StageKind};
use lortflow_runtime::engine::{Engine, EngineError, Force, RemoteExecutor, RunRequest, State};
use lortflow_runtime::watch::{Change, FileWatcher, WatchSet};
use lortflow_runtime::{
    CacheKey, CancelToken, ConcreteStage, Override, Progress, Registry, RunReport, StageError,
    StageOutcome, StageStatus, Store, StoreLock,
};

use crate::cli::WatchArgs;
use crate::commands::run::print_tables;
use crate::render;
use crate::reporter::CliReporter;
use crate::session::{self, Session};

/// Trailing-edge debounce of file events: long enough to merge an editor's write, rename and
/// chmod into one change, short enough to stay well under the 300 ms save-to-run target.
const DEBOUNCE: Duration = Duration::from_millis(50);

enum Msg {
    Changed(Change),
    Interrupt,
    Finished(Box<Result<RunReport, EngineError>>),
}

pub(crate) fn run(args: WatchArgs, quiet: bool, verbose: bool) -> anyhow::Result<ExitCode> {
    let file = args.pipeline.file.clone();
    // Fatal: without a readable file, a valid `--set` and a store of our own there is nothing to
    // watch. A pipeline with errors is not fatal: the user is about to fix it.
    crate::commands::load(&file)?;
    let overrides = session::overrides(&args.pipeline)?;
    // An explicit `--backend` that cannot work is a usage error; a pipeline's default backend is
    // checked each cycle, since an edit can change it.
    let registry = lortflow_stdlib::stages::registry();
    if let Some(arg) = args.pipeline.backend {
        registry
            .check_backend(Backend::from(arg))
            .map_err(anyhow::Error::msg)?;
    }
    let store = session::open_store(&file, args.pipeline.store.as_deref())?;
    // Held for the watcher's lifetime: runs start at any moment, and no other run may interleave.
    let lock = Arc::new(store.lock()?);

    let (tx, rx) = mpsc::channel::<Msg>();
    let interrupts = AtomicUsize::new(0);
    let to_main = tx.clone();
    ctrlc::set_handler(move || {
        // A second Ctrl-C leaves at once, for a stage that does not notice cancellation; the
        // lock it leaves behind is recognised as stale by the next run.
        if interrupts.fetch_add(1, Ordering::SeqCst) > 0 {
            std::process::exit(130);
        }
        let _ = to_main.send(Msg::Interrupt);
    })
    .context("cannot install the Ctrl-C handler")?;
    let to_main = tx.clone();
    let files = FileWatcher::start(DEBOUNCE, move |change| {
        let _ = to_main.send(Msg::Changed(change));
    })?;

    let remote: Option<Arc<dyn RemoteExecutor>> = match args.executor.executor {
        crate::cli::ExecutorArg::Local => None,
        crate::cli::ExecutorArg::Slurm => Some(super::slurm_executor(
            &args.pipeline,
            &args.executor,
            &store,
            // The pipeline may change while watched: the profile's GPUs are used as written.
            None,
        )?),
    };
    let mut watch = Watch {
        // The cluster queues jobs: every ready stage is submitted at once.
        jobs: args.jobs.unwrap_or_else(|| {
            if remote.is_some() {
                usize::MAX
            } else {
                std::thread::available_parallelism().map_or(1, |n| n.get())
            }
        }),
        remote,
        args,
        overrides,
        store,
        registry,
        lock: Arc::clone(&lock),
        files,
        tx,
        quiet,
        verbose,
        cycle: 0,
        running: None,
        pending: None,
        last_good: WatchSet::new(),
    };
    // Watch the root file before reading it, so that a save during the first lint is not lost.
    watch.refresh(None, None)?;
    if !quiet {
        eprintln!(
            "watching `{}` and the files it reads; Ctrl-C stops",
            file.display()
        );
    }
    watch.start_cycle(None)?;
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Changed(change) => watch.on_change(change)?,
            Msg::Finished(result) => watch.on_finished(*result)?,
            Msg::Interrupt => break,
        }
    }
    if let Some(running) = watch.running.take() {
        running.cancel.cancel();
        if !quiet {
            eprintln!("stopping: cancelling the run in progress");
        }
        // The run's thread sends its report before it ends; nobody reads it any more.
        let _ = running.thread.join();
    }
    if !quiet {
        eprintln!("stopped");
    }
    drop(lock);
    Ok(ExitCode::SUCCESS)
}

/// The watcher's state, owned by the main thread.
struct Watch {
    args: WatchArgs,
    overrides: Vec<Override>,
    store: Store,
    registry: Registry,
    /// The store's lock, held from start to stop.
    lock: Arc<StoreLock>,
    files: FileWatcher,
    tx: mpsc::Sender<Msg>,
    quiet: bool,
    /// `-v`: failed stages show their errors' causes.
    verbose: bool,
    jobs: usize,
    /// Where stages run (`--executor slurm`), or here.
    remote: Option<Arc<dyn RemoteExecutor>>,
    /// Cycles started so far (runs and edits that did not lint).
    cycle: u64,
    running: Option<Running>,
    /// Changes that arrived during the run, for the cycle that follows it.
    pending: Option<Change>,
    /// What the last valid pipeline read: still watched while an edit does not lint, since a
    /// broken include cannot say which files it names.
    last_good: WatchSet,
}

/// A run on its background thread.
struct Running {
    cycle: u64,
    engine: Engine,
    cancel: CancelToken,
    reporter: Arc<WatchReporter>,
    thread: JoinHandle<()>,
    /// From the save to the start of the run.
    latency: Option<Duration>,
}

/// A valid pipeline with its plan and the state of every stage.
struct Planned {
    engine: Engine,
    statuses: Vec<StageStatus>,
}

impl Watch {
    /// Lints, plans and starts a run of what is stale; prints the diagnostics when the pipeline
    /// does not lint.
    fn start_cycle(&mut self, change: Option<Change>) -> anyhow::Result<()> {
        self.cycle += 1;
        let n = self.cycle;
        let Some(planned) = self.load()? else {
            eprintln!("cycle {n}: the pipeline has errors, nothing ran; waiting for a fix");
            return Ok(());
        };
        let latency = change.as_ref().map(since_save);
        if let Some(latency) = latency {
            tracing::debug!(
                cycle = n,
                latency_ms = latency.as_millis() as u64,
                "re-run started after a save"
            );
        }
        let Planned { engine, statuses } = planned;
        let keys = engine
            .plan()
            .iter()
            .zip(&statuses)
            .filter_map(|(stage, status)| Some((stage.name.clone(), status.key.clone()?)))
            .collect();
        let cancel = CancelToken::new();
        let reporter = Arc::new(WatchReporter {
            inner: CliReporter::new(self.quiet).show_causes(self.verbose),
            keys,
            cancel: cancel.clone(),
            state: Mutex::new(ReporterState::default()),
        });
        let request = RunRequest {
            jobs: self.jobs,
            remote: self.remote.clone(),
            ..RunRequest::default()
        };
        let thread = {
            let engine = engine.clone();
            let reporter = Arc::clone(&reporter);
            let cancel = cancel.clone();
            let lock = Arc::clone(&self.lock);
            let tx = self.tx.clone();
            std::thread::Builder::new()
                .name("lortflow-run".into())
                .spawn(move || {
                    // The statuses the reporter's keys came from, so that a change cancels
                    // this run only if it makes one of the stages it runs stale.
                    let result = engine.run_with_statuses(
                        &lock,
                        statuses,
                        &request,
                        &cancel,
                        reporter.as_ref(),
                    );
                    let _ = tx.send(Msg::Finished(Box::new(result)));
                })
                .context("cannot start a run thread")?
        };
        self.running = Some(Running {
            cycle: n,
            engine,
            cancel,
            reporter,
            thread,
            latency,
        });
        Ok(())
    }

    /// A debounced change: start a cycle, or, during a run, lint now (so diagnostics show at
    /// once), cancel the run if a running stage became stale, and start the next cycle after it.
    fn on_change(&mut self, change: Change) -> anyhow::Result<()> {
        tracing::debug!(
            paths = ?change.paths,
            debounced_ms = change.delivered.duration_since(change.first_event).as_millis() as u64,
            "change"
        );
        let Some(running) = &self.running else {
            return self.start_cycle(Some(change));
        };
        let cycle = running.cycle;
        let Some(planned) = self.load()? else {
            // The current text cannot run, so nothing is queued: the fix will be a change too.
            self.pending = None;
            eprintln!("change during cycle {cycle}: the pipeline has errors; the run goes on");
            return Ok(());
        };
        let current: HashSet<CacheKey> = planned
            .statuses
            .iter()
            .filter_map(|s| s.key.clone())
            .collect();
        let running = self.running.as_ref().expect("checked above");
        let stale = running.reporter.replan(current);
        if !self.quiet {
            if stale.is_empty() {
                eprintln!("change during cycle {cycle}: the next cycle starts when the run ends");
            } else {
                eprintln!(
                    "change during cycle {cycle}: cancelling the run ({} became stale)",
                    names(&stale)
                );
            }
        }
        match &mut self.pending {
            Some(pending) => {
                pending.paths.extend(change.paths);
                pending.rescan |= change.rescan;
            }
            None => self.pending = Some(change),
        }
        Ok(())
    }

    /// The run ended: print the cycle's summary and start the cycle of the changes that came
    /// during it.
    fn on_finished(&mut self, result: Result<RunReport, EngineError>) -> anyhow::Result<()> {
        let running = self
            .running
            .take()
            .expect("a run finishes only while one is running");
        let Running {
            cycle,
            engine,
            thread,
            latency,
            ..
        } = running;
        let _ = thread.join();
        let report = match result {
            Ok(report) => report,
            // The device went away between the check and the run: wait for the next change.
            Err(EngineError::Backend(e)) => {
                eprintln!("cycle {cycle}: error: {e}; nothing ran");
                if let Some(change) = self.pending.take() {
                    return self.start_cycle(Some(change));
                }
                return Ok(());
            }
            // The store failing under a run is fatal, as it is for `lortflow run`.
            Err(e) => return Err(e.into()),
        };
        print_tables(&self.args.pipeline.file, engine.plan(), &report)?;
        self.print_summary(cycle, latency, &report);
        if let Some(change) = self.pending.take() {
            return self.start_cycle(Some(change));
        }
        Ok(())
    }

    fn print_summary(&self, cycle: u64, latency: Option<Duration>, report: &RunReport) {
        let mut line = format!("cycle {cycle}: {}", report.summary());
        if let Some(latency) = latency {
            line.push_str(&format!(
                " (started {} ms after the save)",
                latency.as_millis()
            ));
        }
        if self.quiet && !report.failed() {
            return;
        }
        eprintln!("{line}");
        let ran = report.stages_with(StageOutcome::Ran);
        if !ran.is_empty() {
            eprintln!("  re-ran: {}", names(&ran));
        }
        // Their errors were printed as they happened.
        let failed = report.stages_with(StageOutcome::Failed);
        if !failed.is_empty() {
            eprintln!("  failed: {}", names(&failed));
        }
        let cancelled = report.stages_with(StageOutcome::Cancelled);
        if !cancelled.is_empty() {
            eprintln!("  cancelled: {}", names(&cancelled));
        }
    }

    /// Loads, checks and plans the pipeline, and refreshes the watched files. Prints the
    /// diagnostics and returns `None` when it cannot run; errors only when the store fails.
    fn load(&mut self) -> anyhow::Result<Option<Planned>> {
        let file = self.args.pipeline.file.clone();
        let checked = match lortflow_lang::load(&file, &FsLoader) {
            Ok(checked) => checked,
            Err(e) => {
                // An editor may have removed the file for a moment; its return is a change.
                eprintln!("error: cannot read `{}`: {e}", file.display());
                self.refresh(None, None)?;
                return Ok(None);
            }
        };
        let color = render::stderr_color();
        if !checked.diagnostics.is_empty() {
            eprint!(
                "{}",
                render::human(&checked.diagnostics, &checked.pipeline.sources, color)
            );
        }
        if checked.has_errors() {
            // The status line of `lortflow lint`.
            eprintln!("error: `{}`: {}", file.display(), render::counts(&checked));
            self.refresh(Some(&checked.pipeline.sources), None)?;
            return Ok(None);
        }
        let Some(plan) = session::plan(&checked, &self.overrides) else {
            self.refresh(Some(&checked.pipeline.sources), None)?;
            return Ok(None);
        };
        let session = Session::new(
            &self.args.pipeline,
            &checked,
            plan,
            self.store.clone(),
            self.registry.clone(),
        );
        self.refresh(Some(&checked.pipeline.sources), Some(session.plan()))?;
        if let Err(e) = self.registry.check_backend(session.engine.backend()) {
            eprintln!("error: {e}");
            return Ok(None);
        }
        let engine = session.engine;
        let statuses = engine.status(&Force::None);
        tracing::debug!(
            stale = statuses.iter().filter(|s| s.state != State::Cached).count(),
            "planned"
        );
        Ok(Some(Planned { engine, statuses }))
    }

    /// Re-resolves the watched set: the root file, its includes and, with a plan, the external
    /// files it reads; without one, also what the last valid plan read. Includes and dataset
    /// paths change with edits, so this runs after every lint.
    fn refresh(
        &mut self,
        sources: Option<&SourceMap>,
        plan: Option<&[ConcreteStage]>,
    ) -> anyhow::Result<()> {
        let mut set = WatchSet::new();
        set.ignore(self.store.root());
        set.add(&self.args.pipeline.file);
        if let Some(sources) = sources {
            set.extend(&WatchSet::for_pipeline(
                sources,
                plan.unwrap_or_default(),
                self.store.root(),
            ));
        }
        if plan.is_some() {
            self.last_good = set.clone();
        } else {
            set.extend(&self.last_good);
        }
        tracing::debug!(paths = set.len(), "watch set");
        let first = self.cycle == 0;
        match self.files.watch(set) {
            Ok(()) => Ok(()),
            // Fatal before the first cycle: the pipeline file itself cannot be watched.
            Err(e) if first => Err(e.into()),
            Err(e) => {
                eprintln!("warning: {e}; its changes will not be noticed");
                Ok(())
            }
        }
    }
}

/// From the save (the newest modification time of the changed files) to now. A change with no
/// readable file (a removal) counts from its first event.
fn since_save(change: &Change) -> Duration {
    let newest = change
        .paths
        .iter()
        .filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .max();
    match newest {
        Some(mtime) => SystemTime::now()
            .duration_since(mtime)
            .unwrap_or(Duration::ZERO),
        None => change.first_event.elapsed(),
    }
}

fn names<S: AsRef<str>>(names: &[S]) -> String {
    names
        .iter()
        .map(|n| format!("`{}`", n.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Forwards a run's events to the [`CliReporter`] (without the cached stages, which the cycle
/// summary counts) and tracks the running stages, so that a change can cancel a run whose
/// running stage became stale.
///
/// The engine has one cancellation token per run, so cancelling a stale stage cancels the stages
/// running beside it too; they are still stale and run again in the next cycle.
struct WatchReporter {
    inner: CliReporter,
    /// This run's cache key of each stage.
    keys: HashMap<String, CacheKey>,
    cancel: CancelToken,
    state: Mutex<ReporterState>,
}

#[derive(Default)]
struct ReporterState {
    running: BTreeSet<String>,
    /// The keys of the newest plan, once a change arrived during the run.
    current: Option<HashSet<CacheKey>>,
}

impl WatchReporter {
    /// Records the newest plan and cancels the run if a running stage is no longer in it;
    /// returns those stages.
    fn replan(&self, current: HashSet<CacheKey>) -> Vec<String> {
        let mut state = self.state.lock().expect("reporter state lock");
        let stale: Vec<String> = state
            .running
            .iter()
            .filter(|name| self.is_stale(name, &current))
            .cloned()
            .collect();
        state.current = Some(current);
        if !stale.is_empty() {
            self.cancel.cancel();
        }
        stale
    }

    /// `stage` no longer runs.
    fn stopped(&self, stage: &str) {
        self.state
            .lock()
            .expect("reporter state lock")
            .running
            .remove(stage);
    }

    fn is_stale(&self, stage: &str, current: &HashSet<CacheKey>) -> bool {
        self.keys.get(stage).is_none_or(|k| !current.contains(k))
    }
}

impl lortflow_runtime::Reporter for WatchReporter {
    fn started(&self, stage: &str, kind: StageKind) {
        let mut state = self.state.lock().expect("reporter state lock");
        state.running.insert(stage.to_string());
        // A stage the newest plan no longer has would only produce an artifact nobody reads.
        if state
            .current
            .as_ref()
            .is_some_and(|current| self.is_stale(stage, current))
        {
            self.cancel.cancel();
        }
        drop(state);
        self.inner.started(stage, kind);
    }

    fn progress(&self, stage: &str, progress: &Progress) {
        self.inner.progress(stage, progress);
    }

    fn finished(&self, stage: &str, outcome: StageOutcome, seconds: f64, error: Option<&str>) {
        self.stopped(stage);
        if outcome != StageOutcome::Cached {
            self.inner.finished(stage, outcome, seconds, error);
        }
    }

    fn failed(&self, stage: &str, seconds: f64, error: &StageError) {
        self.stopped(stage);
        self.inner.failed(stage, seconds, error);
    }

    fn notice(&self, message: &str) {
        self.inner.notice(message);
    }
}
