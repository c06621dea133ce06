//! One module per subcommand.

mod bench;
mod cache;
mod docs;
mod export;
mod graph;
mod inspect;
mod lint;
mod report;
mod run;
mod stage_job;
mod status;
mod watch;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use lortflow_lang::{Checked, FsLoader};

use crate::cli::{Arguments, Command};

pub(crate) fn run(args: Arguments) -> anyhow::Result<ExitCode> {
    let quiet = args.global.quiet;
    // `-v`: a failed stage's error shows its causes one per line.
    let verbose = args.global.verbose > 0;
    match args.command {
        Command::Run(a) => run::run(a, quiet, verbose),
        Command::Watch(a) => watch::run(a, quiet, verbose),
        Command::Status(a) => status::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Cache(c) => cache::run(c),
        Command::Export(a) => export::run(a),
        Command::Lint(a) => lint::run(a),
        Command::Graph(a) => graph::run(a),
        Command::Report(a) => report::run(a),
        Command::Docs => docs::run(),
        Command::Bench(c) => bench::run(c, quiet),
        Command::StageJob(a) => stage_job::run(a),
    }
}

/// Loads and checks a pipeline; an unreadable root file is an error (exit code 2).
pub(crate) fn load(path: &Path) -> anyhow::Result<Checked> {
    lortflow_lang::load(path, &FsLoader)
        .with_context(|| format!("cannot read pipeline `{}`", path.display()))
}

/// Loads a pipeline for a command that needs it valid: prints its diagnostics to stderr and
/// returns `None` when it has errors.
pub(crate) fn load_valid(path: &Path) -> anyhow::Result<Option<Checked>> {
    let checked = load(path)?;
    if !checked.diagnostics.is_empty() {
        eprint!(
            "{}",
            crate::render::human(
                &checked.diagnostics,
                &checked.pipeline.sources,
                crate::render::stderr_color()
            )
        );
    }
    if checked.has_errors() {
        eprintln!(
            "error: `{}` has {}; fix them first (`lortflow lint` shows them again)",
            path.display(),
            crate::render::counts(&checked)
        );
        return Ok(None);
    }
    Ok(Some(checked))
}

/// The Slurm executor of a run (`--executor slurm`): the profile named, found beside the pipeline
/// or in the user's config, or none; jobs run this `lortflow` binary on the same pipeline, store,
/// overrides and backend.
///
/// `compute`, when known: a CUDA run on several devices asks for that many GPUs for the stages
/// that use them (training backbones, feature extraction), unless the profile asks for more.
pub(crate) fn slurm_executor(
    pipeline: &crate::cli::PipelineArgs,
    executor: &crate::cli::ExecutorArgs,
    store: &lortflow_runtime::Store,
    compute: Option<lortflow_runtime::Compute>,
) -> anyhow::Result<std::sync::Arc<lortflow_runtime::slurm::SlurmExecutor>> {
    use lortflow_runtime::slurm::{JobCommand, Slurm, SlurmExecutor, SlurmProfile};
    let profile_path = executor
        .slurm_profile
        .clone()
        .or_else(|| SlurmProfile::find(&pipeline.file));
    let mut profile = match &profile_path {
        Some(path) => SlurmProfile::load(path)?,
        None => SlurmProfile::default(),
    };
    if let Some(compute) = compute
        && compute.backend == lortflow_lang::ir::Backend::Cuda
        && compute.devices > 1
    {
        let devices = u32::try_from(compute.devices).unwrap_or(u32::MAX);
        for kind in ["backbone", "features"] {
            profile = profile.with_min_gpus(kind, devices);
        }
    }
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut args = vec![
        "stage-job".to_string(),
        absolute(&pipeline.file).display().to_string(),
        "--store".into(),
        absolute(store.root()).display().to_string(),
    ];
    for set in &pipeline.set {
        args.extend(["--set".to_string(), set.clone()]);
    }
    if let Some(backend) = pipeline.backend {
        let name = lortflow_lang::ir::Backend::from(backend).name();
        args.extend(["--backend".to_string(), name.into()]);
    }
    if let Some(devices) = pipeline.devices {
        args.extend(["--devices".to_string(), devices.to_string()]);
    }
    // An explicit `--workers` goes with the job; otherwise a job decodes on the cores Slurm
    // gave it (or `LORTFLOW_WORKERS`, which the job inherits).
    if let Some(workers) = lortflow_data::images::explicit_workers() {
        args.extend(["--workers".to_string(), workers.to_string()]);
    }
    let command = JobCommand {
        program: std::env::current_exe().context("cannot find the lortflow executable")?,
        args,
        dir: std::env::current_dir().context("cannot read the working directory")?,
    };
    Ok(std::sync::Arc::new(SlurmExecutor::new(
        Slurm::default(),
        profile,
        store.clone(),
        command,
    )))
}
