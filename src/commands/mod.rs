//! One module per subcommand.

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
    match args.command {
        Command::Run(a) => run::run(a, quiet),
        Command::Watch(a) => watch::run(a, quiet),
        Command::Status(a) => status::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Cache(c) => cache::run(c),
        Command::Export(a) => export::run(a),
        Command::Lint(a) => lint::run(a),
        Command::Graph(a) => graph::run(a),
        Command::Report(a) => report::run(a),
        Command::Docs => docs::run(),
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
