//! `lortflow run FILE`: plan, execute what is stale, print the results.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;

use lortflow_runtime::engine::{self, Force, RemoteStage, RunRequest, State};
use lortflow_runtime::slurm::SlurmExecutor;
use lortflow_runtime::{CancelToken, ConcreteStage, RunReport, StageOutcome};

use crate::cli::{ExecutorArg, RunArgs};
use crate::reporter::CliReporter;
use crate::session::{Session, Start};

pub(crate) fn run(args: RunArgs, quiet: bool, verbose: bool) -> anyhow::Result<ExitCode> {
    let Start::Ready(session) = Session::start(&args.pipeline)? else {
        return Ok(ExitCode::from(1));
    };
    let force = if args.force.is_empty() {
        Force::None
    } else if args.force.iter().any(String::is_empty) {
        Force::All
    } else {
        for name in &args.force {
            session.find(name)?;
        }
        Force::Stages(args.force.clone())
    };
    let only: Option<HashSet<usize>> = match &args.only {
        Some(name) => Some(engine::with_upstream(session.plan(), &session.find(name)?)),
        None => None,
    };
    let slurm = match args.executor.executor {
        ExecutorArg::Local => None,
        ExecutorArg::Slurm => Some(super::slurm_executor(
            &args.pipeline,
            &args.executor,
            session.engine.store(),
            Some(session.engine.compute()),
        )?),
    };
    if args.dry_run {
        let statuses = session.status(&force);
        print_plan(&session, &statuses, only.as_ref())?;
        if let Some(slurm) = &slurm {
            print_submissions(&session, &statuses, only.as_ref(), slurm)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut request = RunRequest {
        force,
        only,
        ..RunRequest::default()
    };
    if let Some(slurm) = slurm {
        // The cluster queues the jobs; every ready stage is submitted at once.
        request.jobs = session.plan().len().max(1);
        request.remote = Some(slurm);
    }
    if let Some(jobs) = args.jobs {
        request.jobs = jobs;
    }
    let reporter = CliReporter::new(quiet).show_causes(verbose);
    let cancel = CancelToken::new();
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        // Ctrl-C stops the running stages at their next check and ends the run cleanly (its
        // record written, the cache as it was); a second Ctrl-C leaves at once. Either way
        // nothing committed is lost: stages only ever publish complete artifacts.
        let cancel = cancel.clone();
        let interrupted = Arc::clone(&interrupted);
        ctrlc::set_handler(move || {
            if interrupted.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\nstopping: the running stages end at their next step (Ctrl-C again to quit at once)");
            cancel.cancel();
        })
        .context("cannot install the Ctrl-C handler")?;
    }
    let report = session.engine.run(&request, &cancel, &reporter)?;
    print_tables(&session.file, session.plan(), &report)?;
    let summary = report.summary();
    if interrupted.load(Ordering::SeqCst) && summary.cancelled > 0 {
        eprintln!("interrupted: {summary}; finished stages were stored, nothing partial was");
        return Ok(ExitCode::from(130));
    }
    if report.failed() {
        // Each failure was printed with its error as it happened (also with `--quiet`): name
        // them here, once more would be noise.
        let failed: Vec<String> = report
            .stages_with(StageOutcome::Failed)
            .iter()
            .map(|n| format!("`{n}`"))
            .collect();
        eprintln!("error: {summary}");
        if !failed.is_empty() {
            eprintln!("  failed: {}", failed.join(", "));
        }
        return Ok(ExitCode::from(1));
    }
    if !quiet {
        eprintln!("{summary}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `--dry-run --executor slurm`: the `sbatch` command each stale stage would get.
fn print_submissions(
    session: &Session,
    statuses: &[lortflow_runtime::StageStatus],
    selected: Option<&HashSet<usize>>,
    slurm: &SlurmExecutor,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "
Slurm jobs (heads of one batch group share the first one's job):"
    )?;
    for (i, (stage, status)) in session.plan().iter().zip(statuses).enumerate() {
        if selected.is_some_and(|s| !s.contains(&i)) || status.state != State::Stale {
            continue;
        }
        let Some(key) = &status.key else { continue };
        let task = [RemoteStage {
            stage,
            key: key.clone(),
            forced: status.forced,
        }];
        let submission = slurm.submission(&task);
        writeln!(
            out,
            "  {}: sbatch {}",
            stage.name,
            submission.args().join(" ")
        )?;
    }
    Ok(())
}

/// Prints the table of every evaluation that finished (ran or cached) to stdout.
pub(crate) fn print_tables(
    file: &Path,
    plan: &[ConcreteStage],
    report: &RunReport,
) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    for (i, artifact) in &report.artifacts {
        if plan[*i].kind() != lortflow_lang::StageKind::Evaluate {
            continue;
        }
        if let Some(table) = artifact
            .manifest()
            .summary
            .get("table")
            .and_then(|t| t.as_str())
        {
            writeln!(
                stdout,
                "\n{}: results of `{}`\n\n{table}",
                file.display(),
                plan[*i].name
            )?;
        }
    }
    Ok(())
}

fn print_plan(
    session: &Session,
    statuses: &[lortflow_runtime::StageStatus],
    selected: Option<&HashSet<usize>>,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let width = session
        .plan()
        .iter()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(0);
    let mut runs = 0;
    for (i, (stage, status)) in session.plan().iter().zip(statuses).enumerate() {
        if selected.is_some_and(|s| !s.contains(&i)) {
            continue;
        }
        let verb = match status.state {
            State::Cached => "cached ",
            State::Stale => {
                runs += 1;
                "run    "
            }
            State::Blocked => "blocked",
        };
        writeln!(
            out,
            "{verb} {:<9} {:<width$}  {}",
            stage.kind().as_str(),
            stage.name,
            status.reasons.join("; ")
        )?;
    }
    writeln!(
        out,
        "\n{runs} of {} stages would run (dry run: nothing was executed)",
        selected.map_or(session.plan().len(), |s| s.len())
    )?;
    Ok(())
}
