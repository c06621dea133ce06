//! `lortflow status FILE`: each stage cached or stale, and why.

use std::io::Write;
use std::process::ExitCode;

use lortflow_runtime::engine::{Force, State};

use crate::cli::{OutputFormat, StatusArgs};
use crate::session::{Session, Start};

pub(crate) fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let Start::Ready(session) = Session::start(&args.pipeline)? else {
        return Ok(ExitCode::from(1));
    };
    let statuses = session.status(&Force::None);
    let mut out = std::io::stdout().lock();
    match args.format {
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &serde_json::json!({ "stages": statuses }))?;
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
                writeln!(
                    out,
                    "{state} {:<9} {:<width$}  {key:<12}  {}",
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
