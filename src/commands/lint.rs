//! `lortflow lint FILE...`: every problem of every file, for people or as JSON. A file that
//! checks is also expanded (sweeps, `--set`), so a sweep member or an override that cannot run
//! is reported here like a problem written in the file.

use std::io::Write;

use anyhow::Context;
use std::process::ExitCode;

use crate::cli::{DiagnosticFormat, LintArgs};
use crate::render;

pub(crate) fn run(args: LintArgs) -> anyhow::Result<ExitCode> {
    let overrides = args
        .set
        .iter()
        .map(|s| lortflow_lang::Override::parse(s).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()
        .context("invalid --set")?;
    let mut any_error = false;
    let mut unreadable = false;
    let mut json = Vec::new();
    let color = render::stderr_color();
    for file in &args.files {
        let mut checked = match lortflow_lang::load(file, &lortflow_lang::FsLoader) {
            Ok(c) => c,
            Err(e) => {
                unreadable = true;
                if args.format == DiagnosticFormat::Human {
                    eprintln!("error: cannot read `{}`: {e}", file.display());
                } else {
                    json.push(serde_json::json!({
                        "code": "lortflow::io",
                        "severity": "error",
                        "message": format!("cannot read `{}`: {e}", file.display()),
                        "file": file.display().to_string(),
                        "line": 0, "column": 0, "offset": 0, "length": 0,
                        "labels": [], "help": null,
                    }));
                }
                continue;
            }
        };
        if !checked.has_errors()
            && let Err(expansion) = lortflow_lang::expand(&checked.pipeline, &overrides)
        {
            checked.diagnostics.extend(expansion);
        }
        let failed =
            checked.has_errors() || (args.deny_warnings && !checked.diagnostics.is_empty());
        any_error |= failed;
        match args.format {
            DiagnosticFormat::Human => {
                eprint!(
                    "{}",
                    render::human(&checked.diagnostics, &checked.pipeline.sources, color)
                );
                let status = if failed { "error" } else { "ok" };
                eprintln!(
                    "{status}: `{}`: {}",
                    file.display(),
                    render::counts(&checked)
                );
            }
            DiagnosticFormat::Json => {
                json.extend(
                    checked
                        .diagnostics
                        .iter()
                        .map(|d| d.to_json(&checked.pipeline.sources)),
                );
            }
        }
    }
    if args.format == DiagnosticFormat::Json {
        let mut stdout = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut stdout, &json)?;
        writeln!(stdout)?;
    }
    Ok(if unreadable {
        ExitCode::from(2)
    } else if any_error {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
