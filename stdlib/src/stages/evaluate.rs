//! The `evaluate` stage: the paper's metrics for every selected head on the balanced test split,
//! the Tab. 1-style results table, `metrics.json` (schema in `docs/metrics.md`), `report.md` and,
//! unless `plots false`, the figures under `plots/`.
//!
//! Accuracies over trials are reported as best and mean ± std (population std). Per-class metrics
//! (accuracy, Logits Magnitude, RSD, weight norms, confusion) are those of trial 0: the trial every
//! head has, and the one later heads start from. Which of them are written follows the stage's
//! `metrics` list; top-1 and the group accuracies always are.

use lortflow_lang::ir::{Backend, EvaluateSpec, Metric, StageSpec};
use lortflow_runtime::{ConcreteStage, StageContext, StageError, StageExecutor, StageInput};
use serde_json::{Value as Json, json};

use super::common::{META_FILE, Meta, fail, read_json, write_json};
use super::head::{HEAD_FILE, logits_file};
use crate::dataset::{Boundary, ClassGroups, GroupMeans};
use crate::metric::{Logits, RsdOver, StdKind, TrialSummary, group_accuracy};
use crate::report::{self, HeadPlot, SweepPoint};

/// The version of the `metrics.json` layout (documented in `docs/metrics.md`).
pub(crate) const METRICS_SCHEMA: &str = "lortflow.metrics.v1";

/// How Logits Magnitudes are normalised, as stated in `metrics.json`.
const NORMALISER: &str = "L̂_i = L_i / mean_k |L_k| (mean over the classes where L_i is defined)";

pub(crate) struct EvaluateStage;

/// The optional metrics of the stage's `metrics` list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Selected {
    magnitude: bool,
    rsd: bool,
    weight_norm: bool,
    confusion: bool,
    per_class: bool,
}

impl Selected {
    fn new(metrics: &[Metric]) -> Self {
        let has = |m: Metric| metrics.contains(&m);
        Selected {
            magnitude: has(Metric::LogitsMagnitude),
            rsd: has(Metric::Rsd),
            weight_norm: has(Metric::WeightNorm),
            confusion: has(Metric::Confusion),
            per_class: has(Metric::PerClass),
        }
    }

    /// The metrics as written in `metrics.json`: `top1` first, then the optional ones in a fixed
    /// order (the order in the file does not matter).
    fn names(self) -> Vec<&'static str> {
        let mut names = vec!["top1"];
        for (on, name) in [
            (self.per_class, "per-class"),
            (self.magnitude, "logits-magnitude"),
            (self.rsd, "rsd"),
            (self.weight_norm, "weight-norm"),
            (self.confusion, "confusion"),
        ] {
            if on {
                names.push(name);
            }
        }
        names
    }
}

impl StageExecutor for EvaluateStage {
    fn version(&self) -> &'static str {
        // 2: metrics by group, normalised magnitudes, plots, the `metrics` list respected.
        "2"
    }

    fn uses_device(&self, _: &ConcreteStage, _: Backend) -> bool {
        false
    }

    fn run(&self, cx: &StageContext<'_>) -> Result<Json, StageError> {
        let StageSpec::Evaluate(spec) = &cx.stage.stage.spec else {
            return Err(StageError::failed("not an evaluate stage"));
        };
        let selected = Selected::new(&spec.metrics);
        let over = rsd_over(spec);
        let mut heads = Vec::new();
        let mut plots = Vec::new();
        let inputs: Vec<&StageInput<'_>> = cx.inputs_with_role("heads").collect();
        let total = inputs.len() as u64;
        for (n, input) in inputs.into_iter().enumerate() {
            cx.check_cancelled()?;
            cx.progress(n as u64, total, "head", input.stage.name.clone());
            let (entry, plot) = evaluate_head(input, selected, over)?;
            heads.push(entry);
            plots.push(plot);
        }
        cx.progress(total, total, "head", "plots");
        let plot_files = if spec.plots {
            report::write_plots(cx.out_dir, &plots).map_err(fail)?
        } else {
            Vec::new()
        };
        let metrics = json!({
            "schema": METRICS_SCHEMA,
            "evaluate": cx.stage.name,
            "metrics": selected.names(),
            "split": "test",
            "rsd_over": rsd_over_name(over),
            "std": "population",
            "per_class_trial": 0,
            "magnitude_normaliser": NORMALISER,
            "plots": plot_files,
            "heads": heads,
        });
        write_json(&cx.out_dir.join("metrics.json"), &metrics)?;
        std::fs::write(cx.out_dir.join("report.md"), report::markdown(&metrics, ""))
            .map_err(|e| StageError::failed(format!("cannot write `report.md`: {e}")))?;
        cx.progress(total, total, "head", "done");
        Ok(json!({
            "heads": heads.len(),
            "table": report::accuracy_table(&metrics, report::Style::Text),
            "plots": metrics["plots"],
        }))
    }
}

fn rsd_over(spec: &EvaluateSpec) -> RsdOver {
    match spec.rsd_over {
        lortflow_lang::ir::RsdOver::Positive => RsdOver::Positive,
        lortflow_lang::ir::RsdOver::All => RsdOver::All,
        lortflow_lang::ir::RsdOver::Negative => RsdOver::Negative,
    }
}

fn rsd_over_name(over: RsdOver) -> &'static str {
    match over {
        RsdOver::Positive => "positive",
        RsdOver::Negative => "negative",
        RsdOver::All => "all",
    }
}

/// The `metrics.json` entry of one head and what its plots need.
fn evaluate_head(
    input: &StageInput<'_>,
    selected: Selected,
    over: RsdOver,
) -> Result<(Json, HeadPlot), StageError> {
    let meta: Meta = read_json(&input.artifact.file(META_FILE))?;
    let head: Json = read_json(&input.artifact.file(HEAD_FILE))?;
    let trials = head["trials"].as_array().map_or(0, Vec::len);
    if trials == 0 {
        return Err(StageError::failed(format!(
            "head `{}` has no trials",
            input.stage.name
        )));
    }
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
    let mut first = Json::Null;
    let mut per_class_accuracy = Vec::new();
    let (mut magnitude_groups, mut rsd_groups) = (None, None);
    for t in 0..trials {
        let file = crate::features::FeatureFile::open(&input.artifact.file(&logits_file(t)))
            .map_err(fail)?;
        let logits = Logits::new(file.features(), file.labels(), meta.num_classes).map_err(fail)?;
        let per_class = logits.per_class_accuracy();
        per_trial.push((logits.top1(), group_accuracy(&class_groups, &per_class)));
        if t > 0 {
            continue;
        }
        let mut fields = serde_json::Map::new();
        if selected.per_class {
            fields.insert("per_class_accuracy".into(), json!(per_class));
        }
        if selected.magnitude || selected.rsd {
            // The plots show the normalised magnitude whenever either is requested: it is what
            // RSD is measured against.
            let magnitude = report::defined(&logits.logits_magnitude());
            let normalised = report::normalise_mean_abs(&magnitude);
            let normalised_by_group = report::group_means(&normalised.values, &meta.groups);
            if selected.magnitude {
                magnitude_groups = Some(normalised_by_group);
                fields.insert(
                    "logits_magnitude".into(),
                    json!({
                        "per_class": magnitude,
                        "by_group": report::group_means(&magnitude, &meta.groups),
                        "normaliser": normalised.normaliser,
                        "normalised": normalised.values,
                        "normalised_by_group": normalised_by_group,
                    }),
                );
            }
        }
        if selected.rsd {
            let rsd = report::defined(&logits.rsd(over));
            let by_group = report::group_means(&rsd, &meta.groups);
            rsd_groups = Some(by_group);
            fields.insert(
                "rsd".into(),
                json!({ "per_class": rsd, "by_group": by_group }),
            );
        }
        if selected.weight_norm {
            let norms: Vec<Option<f64>> = head["trials"][0]["weight_norms"]
                .as_array()
                .map(|a| a.iter().map(Json::as_f64).collect())
                .unwrap_or_default();
            fields.insert(
                "weight_norms".into(),
                json!({
                    "per_class": norms,
                    "by_group": report::group_means(&norms, &meta.groups),
                }),
            );
        }
        if selected.confusion {
            // Rows by true class, columns by prediction.
            let flat = logits.confusion();
            let rows: Vec<&[u64]> = flat.chunks(meta.num_classes).collect();
            fields.insert("confusion".into(), json!(rows));
        }
        first = Json::Object(fields);
        per_class_accuracy = per_class;
    }
    let best = |f: &dyn Fn(&(f64, GroupMeans)) -> Option<f64>| {
        TrialSummary::new(
            &per_trial.iter().filter_map(f).collect::<Vec<_>>(),
            StdKind::Population,
        )
    };
    let summary = |f: &dyn Fn(&(f64, GroupMeans)) -> Option<f64>| {
        let values: Vec<f64> = per_trial.iter().filter_map(f).collect();
        best(f).map(|s| {
            json!({
                "best": s.best, "best_trial": s.best_trial, "mean": s.mean, "std": s.std,
                "values": values,
            })
        })
    };
    let sweep = (!input.stage.suffix.is_empty()).then(|| SweepPoint {
        sweep: input.stage.declared.clone(),
        params: input.stage.suffix.clone(),
    });
    let mut entry = json!({
        "name": input.stage.name,
        "stage": input.stage.declared,
        "sweep": sweep.as_ref().map(|s| json!({
            "name": s.sweep,
            "params": s.params.iter().map(|(k, v)| json!({
                "param": k,
                "value": v.parse::<f64>().map_or_else(|_| json!(v), |n| json!(n)),
            })).collect::<Vec<_>>(),
        })),
        "method": head["method"],
        "trials": trials,
        "top1": summary(&|t| Some(t.0)),
        "many": summary(&|t| t.1.many),
        "medium": summary(&|t| t.1.medium),
        "few": summary(&|t| t.1.few),
        "class_counts": meta.class_counts,
        "groups": meta.groups,
    });
    if let (Some(map), Json::Object(fields)) = (entry.as_object_mut(), first) {
        map.extend(fields);
    }
    let plot = HeadPlot {
        name: input.stage.name.clone(),
        sweep,
        top1: best(&|t| Some(t.0)).map_or(f64::NAN, |s| s.best),
        groups: GroupMeans {
            many: best(&|t| t.1.many).map(|s| s.best),
            medium: best(&|t| t.1.medium).map(|s| s.best),
            few: best(&|t| t.1.few).map(|s| s.best),
        },
        trials,
        per_class_accuracy,
        class_counts: meta.class_counts,
        class_groups: meta.groups,
        magnitude: magnitude_groups,
        rsd: rsd_groups,
    };
    Ok((entry, plot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selected_metrics_follow_the_list() {
        let s = Selected::new(&[Metric::Top1, Metric::Rsd, Metric::Confusion]);
        assert!(s.rsd && s.confusion && !s.magnitude && !s.weight_norm && !s.per_class);
        assert_eq!(s.names(), ["top1", "rsd", "confusion"]);
        assert_eq!(Selected::new(&[]).names(), ["top1"]);
    }
}
