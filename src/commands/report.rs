//! `lortflow report FILE`: the results of the last run of a pipeline, read from its run records
//! and the `metrics.json` of its evaluate artifacts; `--compare RUN` shows what changed since an
//! earlier run (old, new, change per head and metric).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use lortflow_lang::StageKind;
use lortflow_report::{self as report, Change};
use lortflow_runtime::engine::Force;
use lortflow_runtime::{RunRecord, StageOutcome};
use serde_json::{Value as Json, json};

use crate::cli::{ReportArgs, ReportFormat};
use crate::session::{Session, Start};

/// The results of one run: each finished evaluation with its metrics.
struct Results<'r> {
    run: &'r RunRecord,
    evaluations: Vec<Evaluation>,
}

struct Evaluation {
    name: String,
    key: String,
    dir: PathBuf,
    metrics: Json,
}

pub(crate) fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let Start::Ready(session) = Session::start(&args.pipeline)? else {
        return Ok(ExitCode::from(1));
    };
    let file = session.file.display().to_string();
    let runs: Vec<RunRecord> = session
        .engine
        .store()
        .list_runs()?
        .into_iter()
        .filter(|r| same_pipeline(&r.pipeline, &session.file))
        .collect();
    // Runs that finished at least one evaluation, newest first: a run with `--only HEAD` has
    // nothing to report and is passed over.
    let reportable: Vec<&RunRecord> = runs
        .iter()
        .filter(|r| !evaluate_stages(r).is_empty())
        .collect();
    let Some(latest) = reportable.first() else {
        eprintln!(
            "error: `{file}` has no results yet{}; run `lortflow run {file}` first",
            if runs.is_empty() {
                ""
            } else {
                " (no run finished an evaluate stage)"
            }
        );
        return Ok(ExitCode::from(1));
    };
    let current = load_results(&session, latest)?;
    warn_if_changed(&session, &current);
    let earlier = match &args.compare {
        None => None,
        Some(wanted) => Some(load_results(
            &session,
            find_run(&runs, &reportable, wanted, &file)?,
        )?),
    };
    if let Some(target) = &args.html {
        let target = target.clone().unwrap_or_else(|| html_path(&session.file));
        let page = html_page(&session, &current, earlier.as_ref(), &file)?;
        std::fs::write(&target, page)
            .with_context(|| format!("cannot write `{}`", target.display()))?;
        println!("{}", target.display());
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    let text = match (&earlier, args.format) {
        (None, ReportFormat::Human) => human(&current, &file),
        (None, ReportFormat::Markdown) => markdown(&current, &file),
        (None, ReportFormat::Json) => pretty(&json!({
            "pipeline": file,
            "run": run_json(current.run),
            "evaluations": evaluations_json(&current),
        }))?,
        (Some(old), format) => {
            let changes = changes(old, &current);
            match format {
                ReportFormat::Json => pretty(&json!({
                    "pipeline": file,
                    "run": run_json(current.run),
                    "compare": run_json(old.run),
                    "changes": changes,
                    "evaluations": evaluations_json(&current),
                }))?,
                ReportFormat::Human => diff_text(old.run, current.run, &changes, false),
                ReportFormat::Markdown => diff_text(old.run, current.run, &changes, true),
            }
        }
    };
    out.write_all(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// Where `report --html` writes without a FILE: beside the pipeline, `<stem>.report.html`.
fn html_path(pipeline: &Path) -> PathBuf {
    let stem = pipeline
        .file_stem()
        .map_or("pipeline".into(), |s| s.to_string_lossy().into_owned());
    pipeline.with_file_name(format!("{stem}.report.html"))
}

/// The HTML page of `current` (and its changes since `earlier`).
fn html_page(
    session: &Session,
    current: &Results<'_>,
    earlier: Option<&Results<'_>>,
    file: &str,
) -> anyhow::Result<String> {
    let digest = std::fs::read(&session.file)
        .map(|bytes| blake3::hash(&bytes).to_hex().to_string())
        .unwrap_or_else(|e| format!("unreadable: {e}"));
    let evaluations = current
        .evaluations
        .iter()
        .map(|e| {
            let plots = e.metrics["plots"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Json::as_str)
                .filter(|p| p.ends_with(".svg"))
                // Only the artifact's own `plots/NAME.svg`, whatever metrics.json says.
                .filter(|p| {
                    Path::new(p)
                        .components()
                        .all(|c| matches!(c, std::path::Component::Normal(_)))
                })
                .filter_map(|p| {
                    let svg = std::fs::read_to_string(e.dir.join(p)).ok()?;
                    let name = Path::new(p).file_name()?.to_string_lossy().into_owned();
                    Some((name, svg))
                })
                .collect();
            report::HtmlEvaluation {
                name: e.name.clone(),
                metrics: e.metrics.clone(),
                plots,
            }
        })
        .collect();
    let mut backbones = Vec::new();
    for s in &current.run.stages {
        if s.kind != StageKind::Backbone.as_str()
            || !matches!(s.outcome, StageOutcome::Ran | StageOutcome::Cached)
        {
            continue;
        }
        let Some(key) = &s.key else { continue };
        if let Some(artifact) = session.engine.store().get(key)? {
            backbones.push(report::HtmlBackbone {
                name: s.name.clone(),
                summary: artifact.manifest().summary.clone(),
            });
        }
    }
    let page = report::HtmlReport {
        pipeline: file,
        pipeline_digest: digest,
        version: env!("CARGO_PKG_VERSION"),
        backend: session.engine.backend().name().to_string(),
        run: report::RunInfo {
            id: current.run.id.clone(),
            started_at: current.run.started_at.to_string(),
            duration_s: current.run.duration_s,
            stages: current
                .run
                .stages
                .iter()
                .map(|s| {
                    (
                        s.name.clone(),
                        s.kind.clone(),
                        s.outcome.as_str().to_string(),
                        s.duration_s,
                    )
                })
                .collect(),
        },
        evaluations,
        backbones,
        compare: earlier.map(|old| (old.run.id.clone(), changes(old, current))),
    };
    Ok(report::html(&page))
}

/// Whether a run record is of this pipeline file. Records keep the path as given on the command
/// line, so compare resolved paths where both resolve, and file names otherwise.
fn same_pipeline(recorded: &Path, current: &Path) -> bool {
    if recorded == current {
        return true;
    }
    match (recorded.canonicalize(), current.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => recorded.file_name() == current.file_name(),
    }
}

/// The evaluate stages of a run that have an artifact (ran or served from the cache).
fn evaluate_stages(run: &RunRecord) -> Vec<(&str, &lortflow_runtime::CacheKey)> {
    run.stages
        .iter()
        .filter(|s| s.kind == StageKind::Evaluate.as_str())
        .filter(|s| matches!(s.outcome, StageOutcome::Ran | StageOutcome::Cached))
        .filter_map(|s| Some((s.name.as_str(), s.key.as_ref()?)))
        .collect()
}

fn load_results<'r>(session: &Session, run: &'r RunRecord) -> anyhow::Result<Results<'r>> {
    let file = session.file.display();
    // Plan order, so that reports list evaluations as the pipeline declares them.
    let position = |name: &str| session.engine.plan().iter().position(|s| s.name == name);
    let mut stages = evaluate_stages(run);
    stages.sort_by_key(|(name, _)| (position(name).unwrap_or(usize::MAX), name.to_string()));
    let mut evaluations = Vec::new();
    for (name, key) in stages {
        let Some(artifact) = session.engine.store().get(key)? else {
            bail!(
                "the results of `{name}` from run {} are no longer in the store (removed by \
                 `lortflow cache gc`?); run `lortflow run {file}` again",
                run.id
            );
        };
        let path = artifact.file("metrics.json");
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "`{name}` of run {} has no metrics.json (made by an older lortflow?); run \
                 `lortflow run {file}` again",
                run.id
            )
        })?;
        let metrics: Json = serde_json::from_slice(&bytes)
            .with_context(|| format!("`{}` is not valid JSON", path.display()))?;
        evaluations.push(Evaluation {
            name: name.to_string(),
            key: key.to_string(),
            dir: artifact.dir().to_path_buf(),
            metrics,
        });
    }
    Ok(Results { run, evaluations })
}

/// A note on stderr when an evaluation of the pipeline as it is now differs from the reported
/// run (edited since, or `--set`), so nobody mistakes old numbers for new ones.
fn warn_if_changed(session: &Session, results: &Results<'_>) {
    let statuses = session.status(&Force::None);
    for (stage, status) in session.engine.plan().iter().zip(&statuses) {
        if stage.kind() != StageKind::Evaluate {
            continue;
        }
        let reported = results.evaluations.iter().find(|e| e.name == stage.name);
        let current = status.key.as_ref().map(ToString::to_string);
        if reported.map(|e| Some(&e.key)) != Some(current.as_ref()) {
            eprintln!(
                "note: `{}` as the pipeline now stands differs from run {} (edited since, or \
                 another `--set`); `lortflow run {}` brings it up to date",
                stage.name,
                results.run.id,
                session.file.display()
            );
        }
    }
}

/// The run to compare with: `previous` (the reportable run before the latest) or an id.
fn find_run<'r>(
    runs: &'r [RunRecord],
    reportable: &[&'r RunRecord],
    wanted: &str,
    file: &str,
) -> anyhow::Result<&'r RunRecord> {
    if wanted == "previous" {
        return reportable.get(1).copied().with_context(|| {
            format!(
                "`{file}` has only one run with results; run `lortflow run {file}` again after a \
                 change to compare"
            )
        });
    }
    let Some(run) = runs.iter().find(|r| r.id == wanted) else {
        let listed: Vec<String> = reportable
            .iter()
            .take(10)
            .map(|r| format!("  {}  ({})", r.id, r.started_at))
            .collect();
        bail!(
            "no run `{wanted}` of `{file}`; runs with results, newest first:\n{}{}",
            listed.join("\n"),
            if reportable.len() > 10 {
                format!("\n  … and {} more", reportable.len() - 10)
            } else {
                String::new()
            }
        );
    };
    if evaluate_stages(run).is_empty() {
        bail!("run `{wanted}` finished no evaluate stage: there is nothing to compare with");
    }
    Ok(run)
}

fn run_json(run: &RunRecord) -> Json {
    json!({
        "id": run.id,
        "started_at": run.started_at.to_string(),
        "duration_s": run.duration_s,
    })
}

fn evaluations_json(results: &Results<'_>) -> Json {
    results
        .evaluations
        .iter()
        .map(|e| {
            json!({
                "name": e.name,
                "key": e.key,
                "dir": e.dir,
                "metrics": e.metrics,
            })
        })
        .collect()
}

fn pretty(value: &Json) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(value)? + "\n")
}

fn plot_paths(e: &Evaluation) -> Vec<String> {
    e.metrics["plots"]
        .as_array()
        .map(|p| {
            p.iter()
                .filter_map(Json::as_str)
                .map(|p| e.dir.join(p).display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn human(results: &Results<'_>, file: &str) -> String {
    let mut out = String::new();
    for e in &results.evaluations {
        out.push_str(&format!(
            "{file}: results of `{}` (run {}, {})\n\n{}",
            e.name,
            results.run.id,
            results.run.started_at,
            report::text(&e.metrics)
        ));
        let plots = plot_paths(e);
        if !plots.is_empty() {
            out.push_str("\nplots:\n");
            for p in plots {
                out.push_str(&format!("  {p}\n"));
            }
        }
        out.push('\n');
    }
    out
}

fn markdown(results: &Results<'_>, file: &str) -> String {
    let mut out = String::new();
    for e in &results.evaluations {
        // Links point into the artifact, wherever this report is pasted.
        let prefix = format!("{}/", e.dir.display());
        out.push_str(&format!(
            "<!-- {file}, run {}, started {} -->\n",
            results.run.id, results.run.started_at
        ));
        out.push_str(&report::markdown(&e.metrics, &prefix));
        out.push('\n');
    }
    out
}

/// Changes between the evaluations of two runs, matched by stage name.
fn changes(old: &Results<'_>, new: &Results<'_>) -> Vec<Change> {
    let mut names: Vec<&str> = new.evaluations.iter().map(|e| e.name.as_str()).collect();
    for e in &old.evaluations {
        if !names.contains(&e.name.as_str()) {
            names.push(&e.name);
        }
    }
    let metrics = |r: &Results<'_>, name: &str| {
        r.evaluations
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.metrics.clone())
    };
    names
        .into_iter()
        .flat_map(|name| {
            report::diff(
                name,
                metrics(old, name).as_ref(),
                metrics(new, name).as_ref(),
            )
        })
        .collect()
}

fn value_cell(metric: &str, value: Option<f64>, signed: bool) -> String {
    match value {
        None => "—".into(),
        Some(v) if report::is_accuracy(metric) && signed => format!("{:+.2}", 100.0 * v),
        Some(v) if report::is_accuracy(metric) => format!("{:.2}", 100.0 * v),
        Some(v) if signed && v >= 0.0 => format!("+{}", report::number(v, 4)),
        Some(v) => report::number(v, 4),
    }
}

/// The `dvc metrics diff`-like table: one row per changed metric.
fn diff_text(old: &RunRecord, new: &RunRecord, changes: &[Change], md: bool) -> String {
    let mut out = format!(
        "changes from run {} ({}) to run {} ({}); accuracies in %\n\n",
        old.id, old.started_at, new.id, new.started_at
    );
    if changes.is_empty() {
        out.push_str("no metric changed\n");
        return out;
    }
    let several = changes.iter().any(|c| c.evaluate != changes[0].evaluate);
    let mut headers = vec!["head", "metric", "old", "new", "change"];
    if several {
        headers.insert(0, "evaluate");
    }
    let rows: Vec<Vec<String>> = changes
        .iter()
        .map(|c| {
            let mut row = vec![
                if md {
                    format!("`{}`", c.head)
                } else {
                    c.head.clone()
                },
                c.metric.clone(),
                value_cell(&c.metric, c.old, false),
                value_cell(&c.metric, c.new, false),
                value_cell(&c.metric, c.change, true),
            ];
            if several {
                row.insert(0, c.evaluate.clone());
            }
            row
        })
        .collect();
    let left = headers.len() - 3;
    if md {
        out.push_str(&format!("| {} |\n", headers.join(" | ")));
        let rule: Vec<&str> = (0..headers.len())
            .map(|i| if i < left { "---" } else { "---:" })
            .collect();
        out.push_str(&format!("| {} |\n", rule.join(" | ")));
        for r in rows {
            out.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        return out;
    }
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([headers[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i < left {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        parts.join("  ").trim_end().to_string() + "\n"
    };
    out.push_str(&line(headers.clone()));
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}
