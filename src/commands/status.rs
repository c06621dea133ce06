//! `lortflow status FILE`: each stage cached or stale, and why.

use std::io::Write;
use std::process::ExitCode;

use std::collections::BTreeMap;

use lortflow_runtime::engine::{Force, State};
use lortflow_runtime::slurm::{JobId, Slurm};

use crate::cli::{OutputFormat, StatusArgs};
use crate::session::{Session, Start};

pub(crate) fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let Start::Ready(session) = Session::start(&args.pipeline)? else {
        return Ok(ExitCode::from(1));
    };
    let statuses = session.status(&Force::None);
    let jobs = slurm_jobs(&session, &statuses);
    let mut out = std::io::stdout().lock();
    match args.format {
        OutputFormat::Json => {
            let jobs: Vec<_> = jobs
                .iter()
                .map(|(stage, (id, state))| {
                    serde_json::json!({ "stage": stage, "job": id.0, "state": state })
                })
                .collect();
            serde_json::to_writer_pretty(
                &mut out,
                &serde_json::json!({ "stages": statuses, "slurm_jobs": jobs }),
            )?;
            writeln!(out)?;
        }
        OutputFormat::Human => {
            let width = statuses
                .iter()
                .map(|s| s.name.chars().count())
                .max()
                .unwrap_or(0);
            for s in &statuses {
                let state = match s.state {
                    State::Cached => "cached ",
                    State::Stale => "stale  ",
                    State::Blocked => "blocked",
                };
                let key = s
                    .key
                    .as_ref()
                    .map_or("-".to_string(), |k| k.short().to_string());
                let job = jobs
                    .get(&s.name)
                    .map(|(id, state)| format!(" [Slurm job {id} {state}]"))
                    .unwrap_or_default();
                writeln!(
                    out,
                    "{state} {:<9} {:<width$}  {key:<12}  {}{job}",
                    s.kind,
                    s.name,
                    s.reasons.join("; ")
                )?;
            }
            let stale = statuses.iter().filter(|s| s.state != State::Cached).count();
            writeln!(out, "\n{} cached, {stale} to run", statuses.len() - stale)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The Slurm jobs of stages that are still to be made (`--executor slurm` records them in the
/// store's `jobs/`), by stage name, with their state from one batched query (`unknown` when Slurm
/// cannot be asked from here).
fn slurm_jobs(
    session: &Session,
    statuses: &[lortflow_runtime::StageStatus],
) -> BTreeMap<String, (JobId, String)> {
    let dir = session.engine.store().jobs_dir();
    let recorded: Vec<(String, JobId)> = statuses
        .iter()
        .filter(|s| s.state != State::Cached)
        .filter_map(|s| {
            let key = s.key.as_ref()?;
            let text = std::fs::read_to_string(dir.join(format!("{}.job", key.as_str()))).ok()?;
            Some((s.name.clone(), text.parse().ok()?))
        })
        .collect();
    if recorded.is_empty() {
        return BTreeMap::new();
    }
    let ids: Vec<JobId> = recorded.iter().map(|(_, id)| *id).collect();
    let states = Slurm::default().states(&ids);
    recorded
        .into_iter()
        .map(|(name, id)| {
            let state = match &states {
                Ok(states) => states
                    .get(&id)
                    .map_or_else(|| "ended".to_string(), ToString::to_string),
                Err(_) => "unknown".to_string(),
            };
            (name, (id, state))
        })
        .collect()
}
