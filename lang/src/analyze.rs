//! Whole-pipeline analysis: stage names and references, cycles, sweeps, evaluate patterns,
//! combinations of head components, and warnings about results nobody uses.

use std::collections::{HashMap, HashSet};

use crate::diagnostic::{Code, Diagnostic};
use crate::ir::*;
use crate::params;
use crate::schema::{StageKind, ValueType, stage_spec};
use crate::source::Spanned;
use crate::suggest::{or_list, suggest};

/// Checks the pipeline as a whole; drops stages whose references are broken so that later
/// phases only see a consistent graph.
pub(crate) fn analyze(pipeline: &mut Pipeline, raw: &RawStages, diags: &mut Vec<Diagnostic>) {
    duplicate_names(pipeline, diags);
    let broken = references(pipeline, raw, diags);
    cycles(pipeline, diags);
    sweeps(pipeline, diags);
    evaluate_patterns(pipeline, raw, diags);
    for stage in &pipeline.stages {
        match &stage.spec {
            StageSpec::Head(head) => head_combinations(pipeline, stage, head, diags),
            StageSpec::Backbone(b) => {
                backbone_data(pipeline, b, diags);
                backbone_devices(pipeline, stage, b, diags);
            }
            StageSpec::Dataset(d) => dataset_settings(stage, d, diags),
            _ => {}
        }
    }
    unused(pipeline, raw, diags);
    pipeline.stages.retain(|s| !broken.contains(&s.name.value));
}

/// The errors in one stage's own settings (combinations that cannot mean what was written),
/// for the stages that sweeps and `--set` make after the file was checked: a sweep over
/// `train.epochs` that reaches 0 on a re-initialised head is as wrong as writing it.
pub fn check_stage_settings(pipeline: &Pipeline, stage: &Stage) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    match &stage.spec {
        StageSpec::Head(head) => head_combinations(pipeline, stage, head, &mut diags),
        StageSpec::Backbone(b) => {
            backbone_data(pipeline, b, &mut diags);
            backbone_devices(pipeline, stage, b, &mut diags);
        }
        StageSpec::Dataset(d) => dataset_settings(stage, d, &mut diags),
        _ => {}
    }
    diags.retain(Diagnostic::is_error);
    diags
}

fn duplicate_names(pipeline: &mut Pipeline, diags: &mut Vec<Diagnostic>) {
    let mut seen: HashMap<String, Spanned<String>> = HashMap::new();
    let mut keep = Vec::with_capacity(pipeline.stages.len());
    for stage in pipeline.stages.drain(..) {
        if let Some(first) = seen.get(&stage.name.value) {
            let first_kind = first.clone();
            let mut d = Diagnostic::new(
                Code::DuplicateStage,
                format!("a stage named `{}` is already defined", stage.name.value),
                stage.name.span,
                "defined again here",
            )
            .with_help("stage names must be unique across the pipeline and its includes; rename one of them");
            d = d.with_label(first_kind.span, "first defined here");
            diags.push(d);
            continue;
        }
        seen.insert(stage.name.value.clone(), stage.name.clone());
        keep.push(stage);
    }
    pipeline.stages = keep;
}

/// Checks every reference; returns the names of stages with a broken one.
fn references(
    pipeline: &Pipeline,
    raw: &RawStages,
    diags: &mut Vec<Diagnostic>,
) -> HashSet<String> {
    let by_name: HashMap<&str, &Stage> = pipeline
        .stages
        .iter()
        .map(|s| (s.name.value.as_str(), s))
        .collect();
    let mut broken = HashSet::new();
    for stage in &pipeline.stages {
        for r in stage.inputs() {
            let child = stage_spec(stage.kind)
                .child(r.role)
                .or_else(|| stage_spec(stage.kind).child("init"));
            let kinds: &[StageKind] = match (stage.kind, r.role) {
                (_, "init") => &[StageKind::Head],
                _ => match child.and_then(|c| c.args.first()).map(|a| a.ty) {
                    Some(ValueType::StageRef(kinds)) => kinds,
                    _ => &[],
                },
            };
            let expected = kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>();
            match by_name.get(r.name.value.as_str()) {
                // Declared, but with errors of its own that were already reported.
                None if raw.declared.contains_key(&r.name.value) => {
                    broken.insert(stage.name.value.clone());
                }
                None => {
                    let candidates: Vec<&str> = pipeline
                        .stages
                        .iter()
                        .filter(|s| kinds.contains(&s.kind))
                        .map(|s| s.name.value.as_str())
                        .collect();
                    let help = match suggest(&r.name.value, candidates.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None if candidates.is_empty() => {
                            format!("define a {} stage first", or_list(&expected))
                        }
                        None => format!(
                            "the {} stages are {}",
                            or_list(&expected),
                            or_list(&candidates)
                        ),
                    };
                    diags.push(
                        Diagnostic::new(
                            Code::UndefinedStage,
                            format!(
                                "{} `{}` uses `{}`, which is not defined",
                                stage.kind, stage.name.value, r.name.value
                            ),
                            r.name.span,
                            "undefined stage",
                        )
                        .with_help(help),
                    );
                    broken.insert(stage.name.value.clone());
                }
                Some(target) => {
                    let features_dataset = stage.kind == StageKind::Head
                        && r.role == "features"
                        && target.kind == StageKind::Dataset;
                    if features_dataset {
                        if let StageSpec::Dataset(d) = &target.spec {
                            if !d.source.value.is_features() {
                                diags.push(
                                    Diagnostic::new(
                                        Code::WrongStageKind,
                                        format!(
                                            "head `{}` reads features from `{}`, a dataset of images",
                                            stage.name.value, r.name.value
                                        ),
                                        r.name.span,
                                        "a dataset of images",
                                    )
                                    .with_label(target.name.span, "defined here")
                                    .with_help(format!(
                                        "name a `features` stage (a backbone run over `{}`), or give the dataset `source \"features\"`",
                                        r.name.value
                                    )),
                                );
                                broken.insert(stage.name.value.clone());
                            }
                        }
                        continue;
                    }
                    if !kinds.contains(&target.kind) {
                        let candidates: Vec<&str> = pipeline
                            .stages
                            .iter()
                            .filter(|s| kinds.contains(&s.kind))
                            .map(|s| s.name.value.as_str())
                            .collect();
                        diags.push(
                            Diagnostic::new(
                                Code::WrongStageKind,
                                format!(
                                    "`{}` of {} `{}` must name a {} stage, but `{}` is a {}",
                                    r.role,
                                    stage.kind,
                                    stage.name.value,
                                    or_list(&expected),
                                    r.name.value,
                                    target.kind
                                ),
                                r.name.span,
                                format!("a {}", target.kind),
                            )
                            .with_label(
                                target.name.span,
                                format!("`{}` is defined here", r.name.value),
                            )
                            .with_help(if candidates.is_empty() {
                                format!("define a {} stage and name it here", or_list(&expected))
                            } else {
                                format!(
                                    "the {} stages are {}",
                                    or_list(&expected),
                                    or_list(&candidates)
                                )
                            }),
                        );
                        broken.insert(stage.name.value.clone());
                    }
                }
            }
        }
    }
    broken
}

fn cycles(pipeline: &Pipeline, diags: &mut Vec<Diagnostic>) {
    let index = pipeline.index_by_name();
    // 0 = unvisited, 1 = on the stack, 2 = done.
    let mut state = vec![0u8; pipeline.stages.len()];
    let mut reported: HashSet<Vec<usize>> = HashSet::new();
    fn visit(
        i: usize,
        pipeline: &Pipeline,
        index: &HashMap<&str, usize>,
        state: &mut [u8],
        path: &mut Vec<usize>,
        reported: &mut HashSet<Vec<usize>>,
        diags: &mut Vec<Diagnostic>,
    ) {
        state[i] = 1;
        path.push(i);
        for r in pipeline.stages[i].inputs() {
            let Some(&j) = index.get(r.name.value.as_str()) else {
                continue;
            };
            if state[j] == 1 {
                let start = path.iter().position(|&p| p == j).expect("on the stack");
                let members = path[start..].to_vec();
                let mut key = members.clone();
                key.sort_unstable();
                if reported.insert(key) {
                    let names: Vec<String> = members
                        .iter()
                        .chain(std::iter::once(&j))
                        .map(|&m| format!("`{}`", pipeline.stages[m].name.value))
                        .collect();
                    let mut d = Diagnostic::new(
                        Code::Cycle,
                        format!("stages depend on each other in a cycle: {}", names.join(" → ")),
                        r.name.span,
                        "closes the cycle",
                    )
                    .with_help("a stage cannot start from its own result; break the cycle by changing one `init` or `base`");
                    for &m in &members {
                        for mr in pipeline.stages[m].inputs() {
                            if index
                                .get(mr.name.value.as_str())
                                .is_some_and(|k| members.contains(k) || *k == j)
                                && mr.name.span != r.name.span
                            {
                                d = d.with_label(
                                    mr.name.span,
                                    format!(
                                        "`{}` uses `{}`",
                                        pipeline.stages[m].name.value, mr.name.value
                                    ),
                                );
                            }
                        }
                    }
                    diags.push(d);
                }
            } else if state[j] == 0 {
                visit(j, pipeline, index, state, path, reported, diags);
            }
        }
        path.pop();
        state[i] = 2;
    }
    for i in 0..pipeline.stages.len() {
        if state[i] == 0 {
            visit(
                i,
                pipeline,
                &index,
                &mut state,
                &mut Vec::new(),
                &mut reported,
                diags,
            );
        }
    }
}

fn sweeps(pipeline: &mut Pipeline, diags: &mut Vec<Diagnostic>) {
    let nodes: HashMap<String, crate::ast::Node> = pipeline
        .stages
        .iter()
        .map(|s| (s.name.value.clone(), s.node.clone()))
        .collect();
    for stage in &mut pipeline.stages {
        let StageSpec::Sweep(sweep) = &mut stage.spec else {
            continue;
        };
        let Some(base) = nodes.get(&sweep.base.value) else {
            continue;
        };
        let mut seen_targets: Vec<(ParamTarget, Spanned<String>)> = Vec::new();
        for vary in &mut sweep.vary {
            match params::resolve(base, &vary.param.value) {
                Err(e) => diags.push(param_diag(e, vary.param.span)),
                Ok((target, spec)) => {
                    if matches!(spec.ty, ValueType::StageRef(_) | ValueType::StagePattern) {
                        diags.push(
                            Diagnostic::new(
                                Code::InvalidSweep,
                                format!(
                                    "sweep `{}` cannot vary the reference `{target}`",
                                    stage.name.value
                                ),
                                vary.param.span,
                                "a stage reference",
                            )
                            .with_help("sweep over the parameters of the referenced stage instead"),
                        );
                        continue;
                    }
                    if let Some((_, first)) = seen_targets.iter().find(|(t, _)| *t == target) {
                        diags.push(
                            Diagnostic::new(
                                Code::InvalidSweep,
                                format!("sweep `{}` varies `{target}` twice", stage.name.value),
                                vary.param.span,
                                "varied again here",
                            )
                            .with_label(first.span, "first varied here")
                            .with_help("put all values in one `vary` node"),
                        );
                        continue;
                    }
                    seen_targets.push((target.clone(), vary.param.clone()));
                    let mut ok = true;
                    for v in &mut vary.values {
                        match params::check(spec, &target, &v.value) {
                            Ok(typed) => v.value = typed,
                            Err(e) => {
                                ok = false;
                                diags.push(param_diag(e, v.span));
                            }
                        }
                    }
                    let mut distinct = Vec::new();
                    for v in &vary.values {
                        if let Some(first) = distinct
                            .iter()
                            .find(|d: &&Spanned<crate::ast::Value>| d.value == v.value)
                        {
                            diags.push(
                                Diagnostic::new(
                                    Code::InvalidSweep,
                                    format!("value `{}` appears twice in the sweep over `{target}`", v.value),
                                    v.span,
                                    "repeated value",
                                )
                                .with_label(first.span, "first given here")
                                .with_help("each value names one member of the sweep; remove the repetition"),
                            );
                            ok = false;
                        } else {
                            distinct.push(v.clone());
                        }
                    }
                    if ok {
                        vary.target = Some(target);
                    }
                }
            }
        }
    }
}

fn param_diag(e: params::ParamError, span: crate::source::Span) -> Diagnostic {
    let mut d = Diagnostic::new(e.code, e.message, span, e.label);
    if let Some(h) = e.help {
        d = d.with_help(h);
    }
    d
}

fn evaluate_patterns(pipeline: &Pipeline, raw: &RawStages, diags: &mut Vec<Diagnostic>) {
    let candidates = evaluable(pipeline);
    for stage in &pipeline.stages {
        let StageSpec::Evaluate(eval) = &stage.spec else {
            continue;
        };
        for pattern in &eval.heads {
            if candidates
                .iter()
                .any(|c| glob_match(&pattern.value, &c.name.value))
            {
                continue;
            }
            // Heads with errors of their own still count as matches.
            let matches_failed = raw.declared.iter().any(|(name, kind)| {
                matches!(kind, StageKind::Head | StageKind::Sweep)
                    && pipeline.stage(name).is_none()
                    && glob_match(&pattern.value, name)
            });
            if matches_failed {
                continue;
            }
            let names: Vec<&str> = candidates.iter().map(|c| c.name.value.as_str()).collect();
            let help = match suggest(&pattern.value, names.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None if names.is_empty() => "define a `head` stage to evaluate".to_string(),
                None => format!("the heads and head sweeps are {}", or_list(&names)),
            };
            let what = match pipeline.stage(&pattern.value) {
                Some(other) => format!("`{}` is a {}, not a head", pattern.value, other.kind),
                None => format!("`{}` matches no head", pattern.value),
            };
            diags.push(
                Diagnostic::new(
                    Code::NoMatch,
                    format!("evaluate `{}`: {what}", stage.name.value),
                    pattern.span,
                    "matches no head",
                )
                .with_help(help),
            );
        }
    }
}

fn backbone_data(pipeline: &Pipeline, b: &BackboneSpec, diags: &mut Vec<Diagnostic>) {
    let Some(data) = pipeline.stage(&b.data.value) else {
        return;
    };
    if let StageSpec::Dataset(d) = &data.spec {
        if d.source.value.is_features() {
            diags.push(
                Diagnostic::new(
                    Code::InvalidCombination,
                    format!(
                        "dataset `{}` holds feature vectors; a backbone needs images",
                        b.data.value
                    ),
                    b.data.span,
                    "a dataset of features",
                )
                .with_label(d.source.span, "features come from here")
                .with_help(
                    "point a head's `features` at this dataset directly, without a backbone",
                ),
            );
        }
    }
}

/// A training backbone's batch is split evenly among `defaults devices` (a `--devices` given at
/// run time is checked when the stage starts).
fn backbone_devices(
    pipeline: &Pipeline,
    stage: &Stage,
    b: &BackboneSpec,
    diags: &mut Vec<Diagnostic>,
) {
    let devices = &pipeline.defaults.devices;
    let Weights::Train(train) = &b.weights else {
        return;
    };
    let batch = train.batch_size as usize;
    if devices.value <= 1 || batch % devices.value == 0 {
        return;
    }
    let span = stage
        .node
        .child("train")
        .map_or(stage.name.span, |t| t.prop_span("batch-size"));
    let devices_count = devices.value;
    diags.push(
        Diagnostic::new(
            Code::InvalidCombination,
            format!(
                "backbone `{}` trains on batches of {batch} images, which do not split evenly among {devices_count} devices",
                stage.name.value
            ),
            span,
            "this batch",
        )
        .with_label(devices.span, "the devices")
        .with_help(format!(
            "use a batch size that is a multiple of {devices_count} (the global batch: each device gets an equal part of it)"
        )),
    );
}

fn head_combinations(
    pipeline: &Pipeline,
    stage: &Stage,
    h: &HeadSpec,
    diags: &mut Vec<Diagnostic>,
) {
    let name = &stage.name.value;
    let mut error = |span,
                     message: String,
                     label: &str,
                     help: &str,
                     other: Option<(crate::source::Span, &str)>| {
        let mut d = Diagnostic::new(Code::InvalidCombination, message, span, label).with_help(help);
        if let Some((s, l)) = other {
            d = d.with_label(s, l);
        }
        diags.push(d);
    };
    let random_init = h.init.value == Init::Random;
    if h.logits.value == Logits::Lws && random_init {
        error(
            h.logits.span,
            format!("head `{name}` learns LWS scales on a re-initialised classifier"),
            "LWS logits",
            "LWS re-scales a trained classifier; add `init \"backbone\"` or `init \"head\" head=\"...\"`",
            Some((h.init.span, "re-initialised here")),
        );
    }
    if let Constraint::Maxnorm { radius: None, .. } = h.constraint.value {
        if random_init {
            error(
                h.constraint.span,
                format!(
                    "head `{name}` uses a relative MaxNorm radius without an initial classifier"
                ),
                "relative radius",
                "the relative radius is computed from the initial classifier's norms; add `init \"backbone\"`, or give an absolute `radius=`",
                Some((h.init.span, "re-initialised here")),
            );
        }
    }
    if let Some(loss) = &h.loss {
        let plugin = format!("the plugin loss `{}`", loss.value.name);
        if h.targets.value != Targets::OneHot {
            error(
                loss.span,
                format!("head `{name}` has both {plugin} and smoothed targets"),
                "plugin loss",
                "a plugin loss replaces the cross-entropy of `targets` and `margin`; put the smoothing into the plugin, or drop the `loss` node (or pick `method \"ce\"`)",
                Some((h.targets.span, "targets set here")),
            );
        }
        if h.margin.value != Margin::None {
            error(
                loss.span,
                format!("head `{name}` has both {plugin} and a training margin"),
                "plugin loss",
                "a plugin loss replaces the cross-entropy of `targets` and `margin`; put the margin into the plugin, or drop the `loss` node (or pick `method \"ce\"`)",
                Some((h.margin.span, "margin set here")),
            );
        }
        if h.logits.value != Logits::Linear {
            error(
                loss.span,
                format!("head `{name}` uses {plugin} with non-linear logits"),
                "plugin loss",
                "plugin losses train linear heads (the gradient w.r.t. the weights is xᵀ·∂L/∂z); use `logits \"linear\"`",
                Some((h.logits.span, "logits chosen here")),
            );
        }
        let reshaping = match &h.weighting.value {
            Weighting::Focal { .. } => true,
            // (γ applies to the focal base loss only.)
            Weighting::ClassBalanced { loss, .. } => *loss != BaseLoss::Softmax,
            Weighting::None => false,
        };
        if reshaping {
            error(
                loss.span,
                format!("head `{name}` combines {plugin} with a weighting that changes the loss"),
                "plugin loss",
                "only per-class weights (`weighting \"class-balanced\" loss=\"softmax\"`) combine with a plugin loss; focal and sigmoid losses are losses of their own",
                Some((h.weighting.span, "weighting set here")),
            );
        }
    }
    let cosine = matches!(h.logits.value, Logits::Cosine { .. });
    if cosine && matches!(h.inference.value, Inference::TauNorm { .. }) {
        error(
            h.inference.span,
            format!("head `{name}` τ-normalises a cosine classifier"),
            "τ-normalisation",
            "cosine logits already use unit-norm weights, so τ-normalisation changes nothing; drop one of them",
            Some((h.logits.span, "cosine logits")),
        );
    }
    if matches!(h.constraint.value, Constraint::Maxnorm { .. })
        && (cosine || h.logits.value == Logits::Lws)
    {
        error(
            h.constraint.span,
            format!("head `{name}` constrains weight norms that its logits do not use"),
            "MaxNorm",
            "MaxNorm bounds ‖W_i‖ of a linear head; cosine logits normalise W and LWS freezes it",
            Some((h.logits.span, "logits chosen here")),
        );
    }
    if h.train.epochs == 0 && random_init {
        error(
            stage.name.span,
            format!("head `{name}` has `epochs=0` and a re-initialised classifier"),
            "untrained head",
            "with `epochs=0` only the inference map is applied; start from a trained classifier with `init \"backbone\"` or `init \"head\"`",
            None,
        );
    }
    if h.init.value == Init::Backbone {
        if let Some(StageSpec::Dataset(_)) = pipeline.stage(&h.features.value).map(|s| &s.spec) {
            let by_default = stage.node.child("init").is_none();
            let from_budget = by_default
                && pipeline
                    .defaults
                    .head
                    .as_ref()
                    .is_some_and(|b| b.child("init").is_some());
            let message = if from_budget {
                format!(
                    "head `{name}` starts from the backbone's classifier (as `defaults {{ head {{ init … }} }}` says), but its features were imported"
                )
            } else if by_default {
                format!(
                    "head `{name}` starts from the backbone's classifier (as `method \"{}\"` does by default), but its features were imported",
                    h.method.value
                )
            } else {
                format!(
                    "head `{name}` starts from the backbone's classifier, but its features were imported"
                )
            };
            error(
                h.init.span,
                message,
                "no backbone here",
                "imported features come without a classifier; write `init \"random\"` with a recipe for a fresh head (`train epochs=… lr=…`), or `init \"head\" head=\"...\"`",
                Some((h.features.span, "imported features")),
            );
        }
    }

    // Warnings.
    let prior_in_loss = matches!(
        h.margin.value,
        Margin::BalancedSoftmax | Margin::LogitAdjust { .. }
    );
    if prior_in_loss && matches!(h.inference.value, Inference::LogitAdjust { .. }) {
        diags.push(
            Diagnostic::new(
                Code::DoubleBalancing,
                format!("head `{name}` corrects the class prior twice"),
                h.inference.span,
                "post-hoc adjustment",
            )
            .with_label(h.margin.span, "prior already in the loss")
            .with_help("a prior in the loss already yields balanced logits; adjusting them again over-corrects towards the tail"),
        );
    }
    let cb_sampler = matches!(h.sampler.value, Sampler::ClassBalanced { .. });
    if cb_sampler && (matches!(h.weighting.value, Weighting::ClassBalanced { .. }) || prior_in_loss)
    {
        diags.push(
            Diagnostic::new(
                Code::DoubleBalancing,
                format!("head `{name}` re-balances both the sampler and the loss"),
                h.sampler.span,
                "class-balanced sampler",
            )
            .with_help("either sample class-balanced or correct the loss; both together over-correct towards the tail"),
        );
    }
    if let Targets::Smoothed { delta } = h.targets.value {
        if delta < 0.5 && delta > 0.0 {
            diags.push(
                Diagnostic::new(
                    Code::SmallDelta,
                    format!("head `{name}` smooths with δ = {delta}: ordinary label smoothing, not LORT"),
                    h.targets.span,
                    "small δ",
                )
                .with_help("LORT uses δ close to 1 (0.98 for CIFAR100-LT, 0.99 for ImageNet-LT and iNaturalist); with 10 classes sweep δ to find the best value"),
            );
        }
    }
    if h.select.value == EpochSelect::BestTest {
        diags.push(
            Diagnostic::new(
                Code::TestSelection,
                format!("head `{name}` selects its epoch on the test split"),
                h.select.span,
                "test-set selection",
            )
            .with_help("this is what the reference code does, and it inflates results; prefer `select \"best-val\"`, and label reported numbers accordingly"),
        );
    }
    if h.validation.is_some() && h.select.value != EpochSelect::BestVal {
        if let Some(v) = stage.node.child("validation") {
            diags.push(
                Diagnostic::new(
                    Code::UnusedSetting,
                    format!("head `{name}` holds out a validation split but does not use it"),
                    v.name_span,
                    "unused validation split",
                )
                .with_help("add `select \"best-val\"`, or remove `validation` so the head trains on all samples"),
            );
        }
    }
    if let Weighting::ClassBalanced { from_epoch, .. } = h.weighting.value {
        if from_epoch > 0 && from_epoch >= h.train.epochs {
            diags.push(
                Diagnostic::new(
                    Code::UnusedSetting,
                    format!(
                        "head `{name}` starts re-weighting at epoch {from_epoch}, but trains {} epochs",
                        h.train.epochs
                    ),
                    h.weighting.span,
                    "re-weighting never starts",
                )
                .with_help("lower the start epoch (`drw-epoch` / `from-epoch`) below the number of epochs"),
            );
        }
    }
}

/// The most values (pixels or vector entries) a synthetic source may generate: 4 GiB of `f32`.
const MAX_SYNTHETIC_VALUES: u128 = 1 << 30;

/// Dataset settings that are each valid but cannot mean what was written together.
fn dataset_settings(stage: &Stage, d: &DatasetSpec, diags: &mut Vec<Diagnostic>) {
    let name = &stage.name.value;
    if let Source::Synthetic {
        kind,
        classes,
        per_class,
        test_per_class,
        size,
        channels,
        dim,
        ..
    } = &d.source.value
    {
        let per_sample = if *kind == SyntheticKind::Images {
            u128::from(*size) * u128::from(*size) * u128::from(*channels)
        } else {
            u128::from(*dim)
        };
        let values = u128::from(*classes)
            * (u128::from(*per_class) + u128::from(*test_per_class))
            * per_sample;
        if values > MAX_SYNTHETIC_VALUES {
            diags.push(
                Diagnostic::new(
                    Code::OutOfRange,
                    format!(
                        "dataset `{name}` would generate {values} values ({} GiB)",
                        (values * 4) >> 30
                    ),
                    d.source.span,
                    "too much synthetic data",
                )
                .with_help(format!(
                    "synthetic data is for trying stages in seconds; keep classes × (per-class + test-per-class) × {} under {MAX_SYNTHETIC_VALUES}",
                    if *kind == SyntheticKind::Images { "size² × channels" } else { "dim" }
                )),
            );
        }
    }
    if let Some(groups) = stage.node.child("groups") {
        let g = &d.groups;
        if g.relative && (g.many > 1.0 || g.few > 1.0) {
            let (prop, value) = if g.many > 1.0 {
                ("many", g.many)
            } else {
                ("few", g.few)
            };
            diags.push(
                Diagnostic::new(
                    Code::OutOfRange,
                    format!("dataset `{name}` has relative group thresholds, but `{prop}` is {value}"),
                    groups.prop_span(prop),
                    "more than the largest class",
                )
                .with_label(groups.prop_span("relative"), "fractions of n_max")
                .with_help("with `relative=#true`, `many` and `few` are fractions of the largest class (`many=0.2 few=0.04`); or drop `relative` to count images"),
            );
        }
        let overlap = if g.rule == GroupRule::Inclusive {
            g.few >= g.many
        } else {
            g.few > g.many
        };
        if overlap {
            diags.push(
                Diagnostic::new(
                    Code::ConflictingOptions,
                    format!(
                        "dataset `{name}` puts the few-group bound {} {} the many-group bound {}",
                        g.few,
                        if g.few > g.many { "above" } else { "at" },
                        g.many
                    ),
                    groups.prop_span("few"),
                    "few bound",
                )
                .with_label(groups.prop_span("many"), "many bound")
                .with_help("a class between the two bounds would be both many and few; `many` is the lower bound of the many group and `few` the upper bound of the few group (as in `groups many=100 few=20`)"),
            );
        }
    }
    if let Some(lt) = stage.node.child("long-tail") {
        if d.long_tail.profile == TailProfile::None {
            for prop in ["imbalance-ratio", "max-per-class"] {
                if let Some(p) = lt.prop(prop) {
                    diags.push(
                        Diagnostic::new(
                            Code::UnusedSetting,
                            format!("dataset `{name}` keeps every training sample, so `{prop}` has no effect"),
                            p.name.span,
                            "ignored",
                        )
                        .with_label(lt.name_span, "profile `none`")
                        .with_help("the `none` profile takes the split as it is (already long-tailed data); use `exp` or `step` to subsample it"),
                    );
                }
            }
        }
        if d.long_tail.select != TailSelect::Shuffle {
            if let Some(p) = lt.prop("seed") {
                diags.push(
                    Diagnostic::new(
                        Code::UnusedSetting,
                        format!("dataset `{name}` sets a shuffle seed but keeps the first samples of each class"),
                        p.name.span,
                        "unused seed",
                    )
                    .with_help("add `select=\"shuffle\"` to draw each class's samples with this seed, or remove `seed`"),
                );
            }
        }
    }
}

fn unused(pipeline: &Pipeline, raw: &RawStages, diags: &mut Vec<Diagnostic>) {
    let mut used: HashSet<&str> = raw.referenced.iter().map(String::as_str).collect();
    for stage in &pipeline.stages {
        for r in stage.inputs() {
            used.insert(r.name.value.as_str());
        }
    }
    let candidates = evaluable(pipeline);
    for stage in &pipeline.stages {
        if let StageSpec::Evaluate(eval) = &stage.spec {
            for pattern in &eval.heads {
                for c in &candidates {
                    if glob_match(&pattern.value, &c.name.value) {
                        used.insert(c.name.value.as_str());
                        if let StageSpec::Sweep(sw) = &c.spec {
                            used.insert(sw.base.value.as_str());
                        }
                    }
                }
            }
        }
    }
    // An evaluate stage with errors of its own may well name every head: stay quiet about heads.
    let failed_evaluate = raw
        .declared
        .iter()
        .any(|(name, kind)| *kind == StageKind::Evaluate && pipeline.stage(name).is_none());
    for stage in &pipeline.stages {
        if used.contains(stage.name.value.as_str())
            || (failed_evaluate && stage.kind == StageKind::Head)
        {
            continue;
        }
        let (what, help) = match stage.kind {
            StageKind::Dataset => (
                "no backbone or head uses it",
                "name it in a backbone's `data`, or remove it",
            ),
            StageKind::Backbone => (
                "no `features` stage runs it",
                "add `features \"...\" { backbone \"NAME\" }`, or remove it",
            ),
            StageKind::Features => (
                "no head is trained on them",
                "add a `head` with `features` naming it, or remove it",
            ),
            StageKind::Head => (
                "no `evaluate` stage reports it",
                "add it to an `evaluate` stage's `heads`, e.g. `heads \"*\"`",
            ),
            StageKind::Sweep | StageKind::Evaluate => continue,
        };
        diags.push(
            Diagnostic::new(
                Code::UnusedStage,
                format!("{} `{}` is unused: {what}", stage.kind, stage.name.value),
                stage.name.span,
                "unused",
            )
            .with_help(help),
        );
    }
}
/// What the written stages declare and reference, including stages that failed to lower, so
/// that one error does not cascade into "undefined" and "unused" reports about its neighbours.
#[derive(Debug, Default)]
pub(crate) struct RawStages {
    /// Every declared stage name, with its kind.
    pub(crate) declared: HashMap<String, crate::schema::StageKind>,
    /// Every stage name some node refers to.
    pub(crate) referenced: std::collections::HashSet<String>,
}

impl RawStages {
    pub(crate) fn collect(nodes: &[(crate::ast::Node, crate::source::FileId)]) -> RawStages {
        let mut raw = RawStages::default();
        for (node, _) in nodes {
            if let (Some(name), Some(kind)) = (
                node.args.first().and_then(|a| a.value.as_str()),
                node.spec.stage,
            ) {
                raw.declared.insert(name.to_string(), kind);
            }
            for child in &node.children {
                for (i, arg) in child.args.iter().enumerate() {
                    // Variadic arguments share the last argument's spec.
                    let spec = child.spec.args.get(i).or(child.spec.args.last());
                    if spec.is_some_and(|s| matches!(s.ty, crate::schema::ValueType::StageRef(_))) {
                        if let Some(name) = arg.value.as_str() {
                            raw.referenced.insert(name.to_string());
                        }
                    }
                }
                if let Some(p) = child.prop("head") {
                    if let Some(name) = p.value.value.as_str() {
                        raw.referenced.insert(name.to_string());
                    }
                }
            }
        }
        raw
    }
}
