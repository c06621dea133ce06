//! The `head` stage: re-trains a classifier on cached features. Heads over the same features
//! and the same initial classifier form one batch group, so a sweep (or the many heads of a
//! Tab. 1 pipeline) trains as one batched computation that reads each batch of features once.

use lortflow_data::features::{FeatureFile, write_features};
use lortflow_lang::ir::{HeadSpec, Init, StageSpec};
use lortflow_runtime::{ConcreteStage, StageContext, StageError, StageExecutor};
use serde_json::{Value as Json, json};

use super::common::{
    CLASSIFIER_FILE, META_FILE, Meta, TEST_FEATURES, TRAIN_FEATURES, fail, load_classifier,
    read_json, save_classifier, write_json,
};
use super::convert::head as convert;
use crate::head::{
    Classifier, FeatureSplit, FeatureView, HeadError, HeadJob, HeadResult, train_heads,
};

pub(crate) const HEAD_FILE: &str = "head.json";

/// The file of trial `t`'s test logits (after the inference map).
pub(crate) fn logits_file(trial: usize) -> String {
    format!("test_logits_t{trial}.safetensors")
}

pub(crate) struct HeadStage;

fn head_spec(stage: &ConcreteStage) -> Result<&HeadSpec, StageError> {
    match &stage.stage.spec {
        StageSpec::Head(h) => Ok(h),
        _ => Err(StageError::failed(format!(
            "`{}` is not a head",
            stage.name
        ))),
    }
}

impl StageExecutor for HeadStage {
    fn version(&self) -> &'static str {
        // 2: epoch selection (`selected_epoch`, per-epoch selection accuracy in head.json) and
        // the closed-form gradient of linear heads (same results up to rounding). 3: on the CPU
        // backend, closed-form heads train in host memory (same results up to rounding).
        "3"
    }

    fn batch_group(&self, stage: &ConcreteStage) -> Option<String> {
        let h = head_spec(stage).ok()?;
        let init = match &h.init.value {
            Init::Random => "random".to_string(),
            Init::Backbone => "backbone".to_string(),
            Init::Head(name) => format!("head:{}", name.value),
        };
        Some(format!("{}|{init}", h.features.value))
    }

    fn run(&self, cx: &StageContext<'_>) -> Result<Json, StageError> {
        self.run_batch(std::slice::from_ref(cx))
            .pop()
            .unwrap_or_else(|| Err(StageError::failed("no result")))
    }

    fn run_batch(&self, contexts: &[StageContext<'_>]) -> Vec<Result<Json, StageError>> {
        match train_group(contexts) {
            Ok(results) => results,
            Err(e) => contexts.iter().map(|_| Err(e.clone())).collect(),
        }
    }
}

/// Trains every head of one batch group (same features, same initial classifier).
fn train_group(contexts: &[StageContext<'_>]) -> Result<Vec<Result<Json, StageError>>, StageError> {
    let first = contexts
        .first()
        .ok_or_else(|| StageError::failed("an empty batch"))?;
    let features = first.input("features")?;
    let meta: Meta = read_json(&features.artifact.file(META_FILE))?;
    let train = FeatureFile::open(&features.artifact.file(TRAIN_FEATURES)).map_err(fail)?;
    let test = FeatureFile::open(&features.artifact.file(TEST_FEATURES)).map_err(fail)?;
    // The trainer hands back the mapped rows it is done with, so that a head stage holds about
    // one split of the features in memory at a time.
    let release = |split: FeatureSplit, rows: std::ops::Range<usize>| match split {
        FeatureSplit::Train => train.release_rows(rows),
        FeatureSplit::Test => test.release_rows(rows),
    };
    let view = FeatureView {
        dim: train.dim(),
        train: train.features(),
        train_labels: train.labels(),
        test: test.features(),
        test_labels: test.labels(),
        num_classes: meta.num_classes,
        class_counts: &meta.class_counts,
        release: Some(&release),
    };
    let specs: Vec<&HeadSpec> = contexts
        .iter()
        .map(|cx| head_spec(cx.stage))
        .collect::<Result<_, _>>()?;
    let init: Option<Classifier> = match &specs[0].init.value {
        Init::Random => None,
        Init::Backbone => {
            let path = features.artifact.file(CLASSIFIER_FILE);
            if !path.exists() {
                return Err(StageError::failed(format!(
                    "`{}` starts from the backbone's classifier, but `{}` has none (imported features); use `init \"random\"`",
                    first.stage.name, features.stage.name
                )));
            }
            Some(load_classifier(&path)?)
        }
        Init::Head(_) => Some(load_classifier(
            &first.input("init")?.artifact.file(CLASSIFIER_FILE),
        )?),
    };
    let jobs: Vec<HeadJob> = contexts
        .iter()
        .zip(&specs)
        .map(|(cx, spec)| convert::head_job(&cx.stage.name, spec).map_err(StageError::failed))
        .collect::<Result<_, _>>()?;
    let backend = first.backend;
    let cancel = first.cancel;
    let mut report = |p: crate::head::HeadProgress| {
        for cx in contexts {
            cx.progress(
                u64::from(p.epoch),
                u64::from(p.epochs),
                "epoch",
                format!(
                    "loss {:.4} ({}, group {}/{})",
                    p.loss,
                    match p.heads {
                        1 => "1 head".to_string(),
                        n => format!("{n} heads together"),
                    },
                    p.group + 1,
                    p.groups
                ),
            );
        }
    };
    let results: Vec<HeadResult> =
        crate::with_backend!(super::convert::backend(backend), |B, device| {
            train_heads::<B>(
                &device,
                &view,
                init.as_ref(),
                &jobs,
                cancel.flag(),
                &mut report,
            )
        })
        .map_err(fail)?
        .map_err(|e| match e {
            HeadError::Cancelled => StageError::Cancelled,
            other => fail(other),
        })?;
    Ok(contexts
        .iter()
        .zip(results)
        .zip(&specs)
        .map(|((cx, result), spec)| write_head(cx, spec, &result, &meta, test.labels()))
        .collect())
}

/// Writes one head's artifact and returns its summary.
fn write_head(
    cx: &StageContext<'_>,
    spec: &HeadSpec,
    result: &HeadResult,
    meta: &Meta,
    test_labels: &[u32],
) -> Result<Json, StageError> {
    let k = meta.num_classes;
    let mut trials = Vec::new();
    let mut top1s = Vec::new();
    for (t, trial) in result.trials.iter().enumerate() {
        write_features(
            &cx.out_dir.join(logits_file(t)),
            &trial.test_logits,
            k,
            test_labels,
        )
        .map_err(fail)?;
        let correct = trial
            .test_logits
            .chunks(k)
            .zip(test_labels)
            .filter(|(row, y)| argmax(row) == **y as usize)
            .count();
        let top1 = correct as f64 / test_labels.len().max(1) as f64;
        top1s.push(top1);
        trials.push(json!({
            "trial": t,
            "seed": trial.seed,
            "top1": top1,
            "weight_norms": trial.classifier.weight_norms(),
            "selected_epoch": trial.selected_epoch,
            "history": trial.history.iter().map(|h| {
                let mut epoch = json!({
                    "epoch": h.epoch, "lr": h.lr, "loss": h.loss, "train_accuracy": h.train_accuracy,
                });
                // The selection metric (balanced accuracy), only where the head selects on it.
                if let Some(v) = h.val_accuracy {
                    epoch["val_accuracy"] = json!(v);
                }
                if let Some(v) = h.test_accuracy {
                    epoch["test_accuracy"] = json!(v);
                }
                epoch
            }).collect::<Vec<_>>(),
        }));
    }
    // The first trial's classifier is the one later heads start from (`init "head"`): picking
    // the best trial would select on the test split.
    let first = result
        .trials
        .first()
        .ok_or_else(|| StageError::failed("no trial was trained"))?;
    let effective = first.classifier.effective();
    save_classifier(
        &cx.out_dir.join(CLASSIFIER_FILE),
        &effective.weight,
        &effective.bias,
        k,
    )?;
    write_json(&cx.out_dir.join(META_FILE), meta)?;
    write_json(
        &cx.out_dir.join(HEAD_FILE),
        &json!({ "method": method_label(spec), "select": spec.select.value, "trials": trials }),
    )?;
    let n = top1s.len() as f64;
    let mean = top1s.iter().sum::<f64>() / n;
    let std = (top1s.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    let best = top1s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Ok(json!({
        "method": method_label(spec),
        "trials": top1s.len(),
        "top1": top1s,
        "top1_mean": mean,
        "top1_std": std,
        "top1_best": best,
        "final_loss": first.history.last().map(|h| h.loss),
    }))
}

/// The method a head reports: its plugin loss when it has one (the preset then only supplies
/// the training defaults), else its preset.
fn method_label(spec: &HeadSpec) -> String {
    spec.loss
        .as_ref()
        .map_or_else(|| spec.method.value.clone(), |loss| loss.value.name.clone())
}

/// Index of the largest value; the lowest index wins ties.
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}
