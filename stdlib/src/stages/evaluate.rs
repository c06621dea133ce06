//! The `evaluate` stage: the paper's metrics for every selected head on the balanced test split,
//! the Tab. 1-style results table, `metrics.json` (schema in `docs/metrics.md`), `report.md` and,
//! unless `plots false`, the figures under `plots/`.
//!
//! Accuracies over trials are reported as best and mean ± std (population std). Per-class metrics
//! (accuracy, Logits Magnitude, RSD, weight norms, confusion) are those of trial 0: the trial every
//! head has, and the one later heads start from. Which of them are written follows the stage's
//! `metrics` list; top-1 and the group accuracies always are.

use lortflow_data::dataset::{Boundary, ClassGroups, GroupMeans};
use lortflow_lang::ir::{Backend, Init, Metric, StageSpec};
use lortflow_report::metric::{Logits, RsdOver, StdKind, TrialSummary, group_accuracy};
use lortflow_report::{self as report, HeadPlot, SweepPoint};
use lortflow_runtime::{ConcreteStage, StageContext, StageError, StageExecutor, StageInput};
use serde_json::{Value as Json, json};

use super::common::{
    CLASSIFIER_FILE, META_FILE, Meta, TEST_FEATURES, fail, load_classifier, read_json, write_json,
};
use super::convert::evaluate as convert;
use super::head::{HEAD_FILE, logits_file};
use crate::gemm::{Mat, matmul};

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
        // 3: the stage-1 rows. 4: each head's recipe, `mean±std` cells.
        "4"
    }

    fn uses_device(&self, _: &ConcreteStage, _: Backend) -> bool {
        false
    }

    fn run(&self, cx: &StageContext<'_>) -> Result<Json, StageError> {
        let StageSpec::Evaluate(spec) = &cx.stage.stage.spec else {
            return Err(StageError::failed("not an evaluate stage"));
        };
        let selected = Selected::new(&spec.metrics);
        let over = convert::rsd_over(spec.rsd_over);
        let mut heads = Vec::new();
        let mut plots = Vec::new();
        let inputs: Vec<&StageInput<'_>> = cx.inputs_with_role("heads").collect();
        let backbone_features = if spec.stage1 {
            features_with_a_classifier(&inputs)
        } else {
            Vec::new()
        };
        let total = (backbone_features.len() + inputs.len()) as u64;
        for (n, features) in backbone_features.iter().enumerate() {
            cx.check_cancelled()?;
            let name = stage1_name(features, backbone_features.len());
            cx.progress(n as u64, total, "head", name.clone());
            let (entry, plot) = evaluate_stage1(features, name, selected, over)?;
            heads.push(entry);
            plots.push(plot);
        }
        for (n, input) in inputs.into_iter().enumerate() {
            cx.check_cancelled()?;
            let done = (backbone_features.len() + n) as u64;
            cx.progress(done, total, "head", input.stage.name.clone());
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
            "rsd_over": convert::rsd_over_name(over),
            "std": "population",
            "per_class_trial": 0,
            "magnitude_normaliser": NORMALISER,
            "plots": plot_files,
            "heads": heads,
        });
        write_json(&cx.out_dir.join("metrics.json"), &metrics)?;
        std::fs::write(cx.out_dir.join("report.md"), report::markdown(&metrics, ""))
            .map_err(|e| StageError::with_source("cannot write `report.md`", e))?;
        cx.progress(total, total, "head", "done");
        Ok(json!({
            "heads": heads.len(),
            "table": report::accuracy_table(&metrics, report::Style::Text),
            "plots": metrics["plots"],
        }))
    }
}

/// The features stages (in the order the heads name them, each once) whose artifact holds the
/// backbone's classifier: one stage-1 row each.
fn features_with_a_classifier<'a>(heads: &[&'a StageInput<'a>]) -> Vec<&'a StageInput<'a>> {
    let mut seen = Vec::new();
    let mut found: Vec<&StageInput<'_>> = Vec::new();
    for head in heads {
        let Some(features) = head.find("features") else {
            continue;
        };
        let key = features.artifact.key().to_string();
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        if features.artifact.file(CLASSIFIER_FILE).exists() {
            found.push(features);
        }
    }
    found
}

/// `stage-1`, or `stage-1 (FEATURES)` when the heads read more than one features stage.
fn stage1_name(features: &StageInput<'_>, count: usize) -> String {
    if count == 1 {
        STAGE1.to_string()
    } else {
        format!("{STAGE1} ({})", features.stage.name)
    }
}

/// The name of the backbone-classifier rows.
const STAGE1: &str = "stage-1";

/// What a `metrics.json` entry says about where its classifier comes from.
struct Described {
    name: String,
    stage: String,
    kind: &'static str,
    sweep: Option<SweepPoint>,
    method: Json,
    /// How the classifier was (re-)trained: init, epochs, batch size, lr, weight decay.
    recipe: Json,
}

/// One trial's test logits: a head's stored file, or computed here.
enum TrialLogits {
    Stored(lortflow_data::features::FeatureFile),
    Computed { values: Vec<f32>, labels: Vec<u32> },
}

impl TrialLogits {
    fn logits(&self, num_classes: usize) -> Result<Logits<'_>, StageError> {
        let (values, labels) = match self {
            TrialLogits::Stored(file) => (file.features(), file.labels()),
            TrialLogits::Computed { values, labels } => (values.as_slice(), labels.as_slice()),
        };
        Logits::new(values, labels, num_classes).map_err(fail)
    }
}

/// The stage-1 row of `features`: the backbone's classifier applied to its test features (which
/// carry the stage's test-time augmentation, as the heads' inputs do).
fn evaluate_stage1(
    features: &StageInput<'_>,
    name: String,
    selected: Selected,
    over: RsdOver,
) -> Result<(Json, HeadPlot), StageError> {
    let meta: Meta = read_json(&features.artifact.file(META_FILE))?;
    let classifier = load_classifier(&features.artifact.file(CLASSIFIER_FILE))?;
    let test = lortflow_data::features::FeatureFile::open(&features.artifact.file(TEST_FEATURES))
        .map_err(fail)?;
    let (rows, dim, k) = (test.rows(), test.dim(), meta.num_classes);
    classifier.check(k, dim).map_err(|e| {
        StageError::failed(format!(
            "the backbone classifier of `{}` does not fit its features: {e}",
            features.stage.name
        ))
    })?;
    let mut values = Vec::with_capacity(rows * k);
    for _ in 0..rows {
        values.extend_from_slice(&classifier.bias);
    }
    // logits = F·Wᵀ + b, with the bias already in place.
    matmul(
        &mut values,
        Mat::dense(rows, k),
        true,
        test.features(),
        Mat::dense(rows, dim),
        &classifier.weight,
        Mat::dense(k, dim).t(),
    );
    let logits = TrialLogits::Computed {
        values,
        labels: test.labels().to_vec(),
    };
    let norms = classifier
        .row_norms()
        .into_iter()
        .map(|n| Some(f64::from(n)))
        .collect();
    // A features stage copied by a sweep upstream (one backbone per first-stage loss, say)
    // keeps its sweep point, so its row can be told from the others.
    let described = Described {
        name,
        stage: features.stage.declared.clone(),
        kind: STAGE1,
        sweep: (!features.stage.suffix.is_empty()).then(|| SweepPoint {
            sweep: features.stage.declared.clone(),
            params: features.stage.suffix.clone(),
        }),
        method: json!("backbone classifier"),
        recipe: Json::Null,
    };
    let mut once = Some(logits);
    evaluate_classifier(
        described,
        &meta,
        1,
        &mut |_| Ok(once.take().expect("stage-1 has one trial")),
        norms,
        selected,
        over,
    )
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
    let norms: Vec<Option<f64>> = head["trials"][0]["weight_norms"]
        .as_array()
        .map(|a| a.iter().map(Json::as_f64).collect())
        .unwrap_or_default();
    let described = Described {
        name: input.stage.name.clone(),
        stage: input.stage.declared.clone(),
        kind: "head",
        sweep: (!input.stage.suffix.is_empty()).then(|| SweepPoint {
            sweep: input.stage.declared.clone(),
            params: input.stage.suffix.clone(),
        }),
        method: head["method"].clone(),
        recipe: recipe(input),
    };
    evaluate_classifier(
        described,
        &meta,
        trials,
        &mut |t| {
            lortflow_data::features::FeatureFile::open(&input.artifact.file(&logits_file(t)))
                .map(TrialLogits::Stored)
                .map_err(fail)
        },
        norms,
        selected,
        over,
    )
}

/// A head's re-training recipe as its plan resolved it (the preset's defaults, the pipeline's
/// `defaults { head { … } }` and its own settings): what the table shows next to its accuracy.
fn recipe(input: &StageInput<'_>) -> Json {
    let StageSpec::Head(h) = &input.stage.stage.spec else {
        return Json::Null;
    };
    let init = match &h.init.value {
        Init::Random => "random".to_string(),
        Init::Backbone => "backbone".to_string(),
        Init::Head(from) => format!("head={}", from.value),
    };
    json!({
        "init": init,
        "epochs": h.train.epochs,
        "batch_size": h.train.batch_size,
        "lr": h.train.lr,
        "weight_decay": h.train.weight_decay,
    })
}

/// The `metrics.json` entry and plot data of one classifier from its test logits per trial;
/// `weight_norms` are those of trial 0.
fn evaluate_classifier(
    described: Described,
    meta: &Meta,
    trials: usize,
    trial_logits: &mut dyn FnMut(usize) -> Result<TrialLogits, StageError>,
    weight_norms: Vec<Option<f64>>,
    selected: Selected,
    over: RsdOver,
) -> Result<(Json, HeadPlot), StageError> {
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
        let stored = trial_logits(t)?;
        let logits = stored.logits(meta.num_classes)?;
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
            fields.insert(
                "weight_norms".into(),
                json!({
                    "per_class": weight_norms,
                    "by_group": report::group_means(&weight_norms, &meta.groups),
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
    let Described {
        name,
        stage,
        kind,
        sweep,
        method,
        recipe,
    } = described;
    let mut entry = json!({
        "name": name,
        "stage": stage,
        "kind": kind,
        "sweep": sweep.as_ref().map(|s| json!({
            "name": s.sweep,
            "params": s.params.iter().map(|(k, v)| json!({
                "param": k,
                "value": v.parse::<f64>().map_or_else(|_| json!(v), |n| json!(n)),
            })).collect::<Vec<_>>(),
        })),
        "method": method,
        "recipe": recipe,
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
        name,
        sweep,
        top1: best(&|t| Some(t.0)).map_or(f64::NAN, |s| s.best),
        groups: GroupMeans {
            many: best(&|t| t.1.many).map(|s| s.best),
            medium: best(&|t| t.1.medium).map(|s| s.best),
            few: best(&|t| t.1.few).map(|s| s.best),
        },
        trials,
        per_class_accuracy,
        class_counts: meta.class_counts.clone(),
        class_groups: meta.groups.clone(),
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
