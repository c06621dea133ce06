//! `lortflow inspect FILE STAGE`: what a stage's cached artifact holds.

use std::io::Write;
use std::process::ExitCode;

use anyhow::bail;
use lortflow_runtime::engine::Force;

use crate::cli::{InspectArgs, OutputFormat};
use crate::session::{Session, Start};

pub(crate) fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let Start::Ready(session) = Session::start(&args.pipeline)? else {
        return Ok(ExitCode::from(1));
    };
    let indices = session.find(&args.stage)?;
    let statuses = session.status(&Force::None);
    let mut out = std::io::stdout().lock();
    let mut shown = Vec::new();
    for i in indices {
        let stage = &session.engine.plan()[i];
        let Some(key) = &statuses[i].key else {
            bail!(
                "`{}` cannot run: {}",
                stage.name,
                statuses[i].reasons.join("; ")
            );
        };
        let Some(artifact) = session.engine.store().get(key)? else {
            bail!(
                "`{}` has no artifact for its current parameters ({}); run `lortflow run {} --only {}` first",
                stage.name,
                statuses[i].reasons.join("; "),
                session.file.display(),
                stage.name
            );
        };
        let executor = session
            .engine
            .registry()
            .get(stage.kind())
            .expect("every kind is registered");
        let details = executor
            .inspect(&artifact)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let m = artifact.manifest();
        shown.push(serde_json::json!({
            "name": stage.name,
            "kind": stage.kind().as_str(),
            "key": key,
            "dir": artifact.dir(),
            "created": m.started_at.to_string(),
            "duration_s": m.duration_s,
            "size_bytes": m.total_size(),
            "files": m.files.keys().collect::<Vec<_>>(),
            "params": m.params,
            "details": details,
        }));
    }
    match args.format {
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &shown)?;
            writeln!(out)?;
        }
        OutputFormat::Human => {
            for s in &shown {
                writeln!(
                    out,
                    "{} `{}`  key {}",
                    s["kind"].as_str().unwrap_or(""),
                    s["name"].as_str().unwrap_or(""),
                    s["key"].as_str().unwrap_or("")
                )?;
                writeln!(
                    out,
                    "  created {} in {:.2}s, {} bytes in {}",
                    s["created"].as_str().unwrap_or(""),
                    s["duration_s"].as_f64().unwrap_or(0.0),
                    s["size_bytes"],
                    s["dir"].as_str().unwrap_or("")
                )?;
                if let Some(table) = s["details"].get("table").and_then(|t| t.as_str()) {
                    writeln!(out, "\n{table}")?;
                }
                writeln!(
                    out,
                    "{}",
                    indent(&serde_json::to_string_pretty(&strip_table(&s["details"]))?)
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn strip_table(v: &serde_json::Value) -> serde_json::Value {
    let mut v = v.clone();
    if let Some(map) = v.as_object_mut() {
        map.remove("table");
    }
    v
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
