//! What every pipeline command starts from: the checked pipeline, its plan, the store and the
//! registry of stage implementations.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use lortflow_lang::Checked;
use lortflow_lang::ir::Backend;
use lortflow_runtime::engine::{Engine, Force, StageStatus};
use lortflow_runtime::plan::{ConcreteStage, Override, expand};
use lortflow_runtime::{Registry, Store};

use crate::cli::PipelineArgs;
use crate::render;

/// A loaded, planned pipeline: the file as given on the command line and its engine.
pub(crate) struct Session {
    pub(crate) file: PathBuf,
    pub(crate) engine: Engine,
}

/// Why a session could not start: the diagnostics were printed (exit 1), or the input was
/// unusable (exit 2, via the error).
pub(crate) enum Start {
    Ready(Box<Session>),
    Invalid,
}

impl Session {
    pub(crate) fn start(args: &PipelineArgs) -> anyhow::Result<Start> {
        let Some(checked) = crate::commands::load_valid(&args.file)? else {
            return Ok(Start::Invalid);
        };
        let overrides = overrides(args)?;
        let Some(plan) = plan(&checked, &overrides) else {
            return Ok(Start::Invalid);
        };
        let store = open_store(&args.file, args.store.as_deref())?;
        let registry = lortflow_stdlib::stages::registry();
        Ok(Start::Ready(Box::new(Session::new(
            args, &checked, plan, store, registry,
        ))))
    }

    /// The session of a pipeline already loaded, checked and planned: what [`Session::start`]
    /// ends with, and what each cycle of `watch` makes (it loads the pipeline itself, since an
    /// edit that breaks it is not fatal there).
    pub(crate) fn new(
        args: &PipelineArgs,
        checked: &Checked,
        plan: Vec<ConcreteStage>,
        store: Store,
        registry: Registry,
    ) -> Session {
        let engine = Engine::new(plan, store, registry, backend(args, checked), &args.file)
            .with_devices(devices(args, checked));
        Session {
            file: args.file.clone(),
            engine,
        }
    }

    /// Keys and states of every stage.
    pub(crate) fn status(&self, force: &Force) -> Vec<StageStatus> {
        self.engine.status(force)
    }

    /// The concrete stages.
    pub(crate) fn plan(&self) -> &[ConcreteStage] {
        self.engine.plan()
    }

    /// The plan index of a stage given by concrete or declared name.
    pub(crate) fn find(&self, name: &str) -> anyhow::Result<Vec<usize>> {
        let exact: Vec<usize> = self
            .plan()
            .iter()
            .enumerate()
            .filter(|(_, s)| s.name == name)
            .map(|(i, _)| i)
            .collect();
        if !exact.is_empty() {
            return Ok(exact);
        }
        let declared: Vec<usize> = self
            .plan()
            .iter()
            .enumerate()
            .filter(|(_, s)| s.declared == name)
            .map(|(i, _)| i)
            .collect();
        if !declared.is_empty() {
            return Ok(declared);
        }
        let names: Vec<&str> = self.plan().iter().map(|s| s.name.as_str()).collect();
        let close = names
            .iter()
            .filter(|n| strsim_like(n, name))
            .take(3)
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>();
        if close.is_empty() {
            bail!(
                "no stage `{name}` in `{}`; `lortflow graph {}` lists them",
                self.file.display(),
                self.file.display()
            )
        }
        bail!(
            "no stage `{name}` in `{}`; did you mean {}?",
            self.file.display(),
            close.join(" or ")
        )
    }
}

/// The `--set` overrides.
pub(crate) fn overrides(args: &PipelineArgs) -> anyhow::Result<Vec<Override>> {
    args.set
        .iter()
        .map(|s| Override::parse(s).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()
        .context("invalid --set")
}

/// Plans a checked pipeline without errors; prints the diagnostics to stderr and returns `None`
/// when it has no valid plan.
pub(crate) fn plan(checked: &Checked, overrides: &[Override]) -> Option<Vec<ConcreteStage>> {
    match expand(&checked.pipeline, overrides) {
        Ok(plan) => Some(plan),
        Err(diags) => {
            eprint!(
                "{}",
                render::human(&diags, &checked.pipeline.sources, render::stderr_color())
            );
            if diags.is_empty() {
                eprintln!("error: the pipeline has no valid stage order");
            }
            None
        }
    }
}

/// `--backend`, or the pipeline's `defaults backend`.
fn backend(args: &PipelineArgs, checked: &Checked) -> Backend {
    args.backend
        .map_or(checked.pipeline.defaults.backend.value, Backend::from)
}

/// `--devices`, or the pipeline's `defaults devices`.
fn devices(args: &PipelineArgs, checked: &Checked) -> usize {
    args.devices
        .map_or(checked.pipeline.defaults.devices.value, |n| n as usize)
}

fn strsim_like(candidate: &str, name: &str) -> bool {
    candidate.contains(name)
        || name.contains(candidate)
        || candidate.starts_with(&name[..name.len().min(3)])
}

/// Opens `--store DIR`, or `.lortflow/` beside the pipeline.
pub(crate) fn open_store(pipeline: &Path, store: Option<&Path>) -> anyhow::Result<Store> {
    let dir = store_dir(pipeline, store);
    Store::open(&dir).with_context(|| format!("cannot open the artifact store `{}`", dir.display()))
}

/// `--store DIR`, or `.lortflow/` beside the pipeline.
pub(crate) fn store_dir(pipeline: &Path, store: Option<&Path>) -> PathBuf {
    match store {
        Some(dir) => dir.to_path_buf(),
        None => pipeline
            .parent()
            .unwrap_or(Path::new("."))
            .join(".lortflow"),
    }
}
