//! The `evaluate` stage: the paper's metrics for every selected head on the balanced test split,
//! the Tab. 1-style results table, `metrics.json` and `report.md`.
//!
//! Per-class metrics (accuracy, Logits Magnitude, RSD, weight norms) are those of trial 0;
//! accuracies over trials are reported as best and mean ± std (population std).

use std::fmt::Write;

use lortflow_lang::ir::{Backend, StageSpec};
use lortflow_runtime::{ConcreteStage, StageContext, StageError, StageExecutor};
use serde_json::{Value as Json, json};

use super::common::{META_FILE, Meta, fail, read_json, write_json};
use super::head::{HEAD_FILE, logits_file};
use crate::dataset::{Boundary, ClassGroups, GroupMeans};
use crate::features::FeatureFile;
use crate::metric::{Logits, RsdOver, StdKind, TrialSummary, group_accuracy};

/// The version of the `metrics.json` layout (documented in `docs/metrics.md`).
pub(crate) const METRICS_SCHEMA: &str = "lortflow.metrics.v1";

pub(crate) struct EvaluateStage;

impl StageExecutor for EvaluateStage {
    fn version(&self) -> &'static str {
        "1"
    }

    fn uses_device(&self, _: &ConcreteStage, _: Backend) -> bool {
        false
    }

    fn run(&self, cx: &StageContext<'_>) -> Result<Json, StageError> {
        let StageSpec::Evaluate(spec) = &cx.stage.stage.spec else {
            return Err(StageError::failed("not an evaluate stage"));
        };
        let over = match spec.rsd_over.as_str() {
            "all" => RsdOver::All,
            "negative" => RsdOver::Negative,
            _ => RsdOver::Positive,
        };
        let mut heads = Vec::new();
        let mut rows = Vec::new();
        let total = cx.inputs.len() as u64;
        for (n, input) in cx.inputs_with_role("heads").enumerate() {
            cx.check_cancelled()?;
            cx.progress(n as u64, total, "head", input.stage.name.clone());
            let meta: Meta = read_json(&input.artifact.file(META_FILE))?;
            let head: Json = read_json(&input.artifact.file(HEAD_FILE))?;
            let trials = head["trials"].as_array().map_or(0, Vec::len);
            let class_groups = ClassGroups {
                groups: meta.groups.clone(),
                many_threshold: meta.many_threshold,
                few_threshold: meta.few_threshold,
                boundary: if meta.boundary == "inclusive" {
                    Boundary::Oltr
                } else {
                    Boundary::Strict
                },
            };
            let mut per_trial: Vec<(f64, GroupMeans)> = Vec::new();
            let mut first = None;
            for t in 0..trials {
                let file =
                    FeatureFile::open(&input.artifact.file(&logits_file(t))).map_err(fail)?;
                let logits =
                    Logits::new(file.features(), file.labels(), meta.num_classes).map_err(fail)?;
                let per_class = logits.per_class_accuracy();
                per_trial.push((logits.top1(), group_accuracy(&class_groups, &per_class)));
                if t == 0 {
                    first = Some(json!({
                        "per_class_accuracy": per_class,
                        "logits_magnitude": finite(logits.logits_magnitude()),
                        "rsd": finite(logits.rsd(over)),
                        "confusion": logits.confusion(),
                    }));
                }
            }
            let summary = |f: &dyn Fn(&(f64, GroupMeans)) -> Option<f64>| {
                let values: Vec<f64> = per_trial.iter().filter_map(f).collect();
                TrialSummary::new(&values, StdKind::Population).map(|s| {
                    json!({
                        "best": s.best, "mean": s.mean, "std": s.std, "values": values,
                    })
                })
            };
            let entry = json!({
                "name": input.stage.name,
                "method": head["method"],
                "trials": trials,
                "top1": summary(&|t| Some(t.0)),
                "many": summary(&|t| t.1.many),
                "medium": summary(&|t| t.1.medium),
                "few": summary(&|t| t.1.few),
                "class_counts": meta.class_counts,
                "groups": meta.groups,
                "weight_norms": head["trials"][0]["weight_norms"],
                "trial0": first,
            });
            rows.push(Row {
                name: input.stage.name.clone(),
                method: head["method"].as_str().unwrap_or("").to_string(),
                cells: ["top1", "many", "medium", "few"].map(|k| cell(&entry[k])),
            });
            heads.push(entry);
        }
        let table = render_table(&rows);
        let metrics = json!({
            "schema": METRICS_SCHEMA,
            "evaluate": cx.stage.name,
            "rsd_over": spec.rsd_over,
            "std": "population",
            "heads": heads,
        });
        write_json(&cx.out_dir.join("metrics.json"), &metrics)?;
        let mut report = format!("# Results of `{}`\n\n", cx.stage.name);
        report.push_str(&markdown_table(&rows));
        let _ = write!(
            report,
            "\nTop-1 accuracy (%) on the balanced test split. Many / medium / few are means of per-class \
             accuracies over the classes of each group (groups from training counts); `n/a` marks an empty \
             group. With several trials a cell reads `best (mean ± std)`.\n"
        );
        std::fs::write(cx.out_dir.join("report.md"), report)
            .map_err(|e| StageError::failed(e.to_string()))?;
        cx.progress(total, total, "head", "done");
        Ok(json!({ "heads": rows.len(), "table": table }))
    }
}

fn finite(values: Vec<f64>) -> Vec<Option<f64>> {
    values
        .into_iter()
        .map(|v| v.is_finite().then_some(v))
        .collect()
}

struct Row {
    name: String,
    method: String,
    cells: [String; 4],
}

fn cell(summary: &Json) -> String {
    let Some(best) = summary["best"].as_f64() else {
        return "n/a".into();
    };
    let values = summary["values"].as_array().map_or(0, Vec::len);
    if values > 1 {
        format!(
            "{:.2} ({:.2}±{:.2})",
            100.0 * best,
            100.0 * summary["mean"].as_f64().unwrap_or(0.0),
            100.0 * summary["std"].as_f64().unwrap_or(0.0)
        )
    } else {
        format!("{:.2}", 100.0 * best)
    }
}

fn render_table(rows: &[Row]) -> String {
    let headers = ["All", "Many", "Medium", "Few"];
    let name_w = rows
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let method_w = rows
        .iter()
        .map(|r| r.method.chars().count())
        .max()
        .unwrap_or(6)
        .max(6);
    let cell_w = rows
        .iter()
        .flat_map(|r| r.cells.iter().map(|c| c.chars().count()))
        .max()
        .unwrap_or(6)
        .max(6);
    let mut out = format!("{:<name_w$}  {:<method_w$}", "head", "method");
    for h in headers {
        let _ = write!(out, "  {h:>cell_w$}");
    }
    out.push('\n');
    for r in rows {
        let _ = write!(out, "{:<name_w$}  {:<method_w$}", r.name, r.method);
        for c in &r.cells {
            let _ = write!(out, "  {c:>cell_w$}");
        }
        out.push('\n');
    }
    out
}

fn markdown_table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| head | method | All | Many | Medium | Few |\n| --- | --- | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} | {} |",
            r.name, r.method, r.cells[0], r.cells[1], r.cells[2], r.cells[3]
        );
    }
    out
}
