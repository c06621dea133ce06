//! Lowering: from schema-checked nodes to the typed IR, filling in schema and preset defaults.
//!
//! The checker has already validated names, types and ranges, so lowering only reads values;
//! what it reports are problems that need more than one node to see (a preset's parameter
//! overridden by an explicit component, `init "head"` without `head=`).

use std::cell::RefCell;
use std::path::Path;

use crate::ast::{Node, Value};
use crate::diagnostic::{Code, Diagnostic};
use crate::ir::*;
use crate::schema::{self, COMPONENTS, PresetValue, StageKind};
use crate::source::{Span, Spanned};

/// Lowers one stage node. `dir` is the directory of the file it was written in; `defaults`
/// supply pipeline-wide values (the seed).
pub fn lower_stage(
    node: &Node,
    dir: &Path,
    defaults: &Defaults,
    diags: &mut Vec<Diagnostic>,
) -> Option<Stage> {
    let kind = node.spec.stage?;
    let name = node.args.first().and_then(|a| {
        a.value
            .as_str()
            .map(|s| Spanned::new(s.to_string(), a.span))
    })?;
    let cx = Lower {
        dir,
        defaults,
        stage: &name.value,
        unknown: RefCell::new(Vec::new()),
    };
    let spec = match kind {
        StageKind::Dataset => cx.dataset(node).map(StageSpec::Dataset),
        StageKind::Backbone => cx.backbone(node, diags).map(StageSpec::Backbone),
        StageKind::Features => cx.features(node).map(StageSpec::Features),
        StageKind::Head => cx.head(node, diags).map(|h| StageSpec::Head(Box::new(h))),
        StageKind::Sweep => cx.sweep(node).map(StageSpec::Sweep),
        StageKind::Evaluate => cx.evaluate(node).map(StageSpec::Evaluate),
    };
    diags.extend(cx.unknown.into_inner());
    Some(Stage {
        name,
        kind,
        node: node.clone(),
        spec: spec?,
    })
}

/// Lowers `defaults` (or the built-in defaults when absent).
pub fn lower_defaults(node: Option<&Node>) -> Defaults {
    let arg = |child: &str| {
        node.and_then(|n| n.child(child))
            .and_then(|c| c.args.first().cloned())
    };
    // The checker accepted only `Backend::NAMES`.
    let backend = arg("backend")
        .and_then(|a| Some(Spanned::new(Backend::from_name(a.value.as_str()?)?, a.span)))
        .unwrap_or(Spanned::new(Backend::Cpu, Span::synthetic()));
    let seed = arg("seed").map_or(Spanned::new(0, Span::synthetic()), |a| {
        Spanned::new(a.value.as_i64().unwrap_or(0) as u64, a.span)
    });
    let head = node.and_then(|n| n.child("head")).cloned();
    Defaults {
        backend,
        seed,
        head,
    }
}

struct Lower<'a> {
    dir: &'a Path,
    defaults: &'a Defaults,
    stage: &'a str,
    /// Names the IR has no variant for; the checker lets none through, so each is a bug
    /// between the schema and the IR, reported rather than replaced by a default.
    unknown: RefCell<Vec<Diagnostic>>,
}

/// A child's property (or its default), read through the schema.
fn value(node: Option<&Node>, parent: &Node, child: &str, prop: &str) -> Option<Value> {
    match node {
        Some(n) => n.prop_or_default(prop),
        None => parent
            .spec
            .child(child)?
            .prop(None, prop)?
            .default
            .map(Value::from_lit),
    }
}

fn f64_of(v: Option<Value>) -> f64 {
    v.and_then(|v| v.as_f64()).unwrap_or(0.0)
}
fn u32_of(v: Option<Value>) -> u32 {
    v.and_then(|v| v.as_i64())
        .map_or(0, |v| v.clamp(0, u32::MAX as i64) as u32)
}
fn u64_of(v: Option<Value>) -> u64 {
    v.and_then(|v| v.as_i64()).map_or(0, |v| v.max(0) as u64)
}
fn str_of(v: Option<Value>) -> String {
    v.and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
fn bool_of(v: Option<Value>) -> bool {
    v.and_then(|v| v.as_bool()).unwrap_or(false)
}

impl Lower<'_> {
    /// The variant of a choice the checker accepted.
    fn choice<T>(
        &self,
        value: Option<Value>,
        span: Span,
        what: &str,
        from_name: fn(&str) -> Option<T>,
    ) -> Option<T> {
        let name = str_of(value);
        let parsed = from_name(&name);
        if parsed.is_none() {
            self.unknown.borrow_mut().push(Diagnostic::new(
                Code::UnknownValue,
                format!(
                    "stage `{}`: `{name}` is not a known {what} (a bug in lortflow: the schema \
                     accepted a name its IR does not have; please report it)",
                    self.stage
                ),
                span,
                "here",
            ));
        }
        parsed
    }

    /// A component variant (`logits "cosine"`) the checker accepted, as `None` when unknown
    /// (reported like [`Lower::choice`]).
    fn unknown_variant(&self, slot: &str, name: &str, span: Span) {
        self.unknown.borrow_mut().push(Diagnostic::new(
            Code::UnknownValue,
            format!(
                "stage `{}`: `{slot} \"{name}\"` has no typed form (a bug in lortflow; please \
                 report it)",
                self.stage
            ),
            span,
            "here",
        ));
    }

    fn path(&self, node: &Node, prop: &str) -> Option<PathValue> {
        let written = node.prop_or_default(prop)?.as_str()?.to_string();
        Some(self.path_value(written, node.prop_span(prop)))
    }

    fn path_value(&self, written: String, span: Span) -> PathValue {
        let resolved = self.dir.join(&written);
        PathValue {
            written,
            resolved,
            span,
        }
    }

    /// The first argument of a child, or its default.
    fn arg(&self, parent: &Node, child: &str) -> Option<Spanned<Value>> {
        match parent.child(child) {
            Some(c) => c.args.first().cloned(),
            None => parent
                .spec
                .child(child)?
                .args
                .first()?
                .default
                .map(|d| Spanned::new(Value::from_lit(d), parent.name_span)),
        }
    }

    fn ref_arg(&self, parent: &Node, child: &str) -> Option<Spanned<String>> {
        let a = self.arg(parent, child)?;
        Some(Spanned::new(a.value.as_str()?.to_string(), a.span))
    }

    fn dataset(&self, node: &Node) -> Option<DatasetSpec> {
        let src = node.child("source")?;
        let format = src.variant.clone()?;
        let p = |name: &str| src.prop_or_default(name);
        let source = match format.value.as_str() {
            "fashion-mnist" | "mnist" | "cifar10" | "cifar100" => {
                let root = self.path(src, "root")?;
                let download = bool_of(p("download"));
                match format.value.as_str() {
                    "fashion-mnist" => Source::FashionMnist { root, download },
                    "mnist" => Source::Mnist { root, download },
                    "cifar10" => Source::Cifar10 { root, download },
                    _ => Source::Cifar100 { root, download },
                }
            }
            "image-list" => Source::ImageList {
                root: self.path(src, "root")?,
                train: self.path(src, "train")?,
                test: self.path(src, "test")?,
                image_size: u32_of(p("image-size")),
                resize: u32_of(p("resize")),
            },
            "inat2018" => Source::Inat2018 {
                root: self.path(src, "root")?,
                train: self.path(src, "train")?,
                test: self.path(src, "test")?,
                image_size: u32_of(p("image-size")),
            },
            "features" => Source::Features {
                train: self.path(src, "train")?,
                test: self.path(src, "test")?,
                train_labels: self.path(src, "train-labels"),
                test_labels: self.path(src, "test-labels"),
            },
            "synthetic" => Source::Synthetic {
                kind: self.choice(
                    p("kind"),
                    src.prop_span("kind"),
                    "synthetic kind",
                    SyntheticKind::from_name,
                )?,
                classes: u32_of(p("classes")),
                per_class: u32_of(p("per-class")),
                test_per_class: u32_of(p("test-per-class")),
                size: u32_of(p("size")),
                channels: u32_of(p("channels")),
                dim: u32_of(p("dim")),
                noise: f64_of(p("noise")),
                seed: u64_of(p("seed")),
            },
            _ => return None,
        };
        let lt = node.child("long-tail");
        let long_tail = LongTail {
            profile: match lt.and_then(|l| l.args.first()) {
                Some(a) => self.choice(
                    Some(a.value.clone()),
                    a.span,
                    "long-tail profile",
                    TailProfile::from_name,
                )?,
                None => TailProfile::None,
            },
            imbalance_ratio: f64_of(value(lt, node, "long-tail", "imbalance-ratio")),
            max_per_class: lt
                .and_then(|l| l.prop("max-per-class"))
                .and_then(|p| p.value.as_i64())
                .map(|v| v as u64),
            select: self.choice(
                value(lt, node, "long-tail", "select"),
                lt.map_or(node.name_span, |l| l.prop_span("select")),
                "long-tail selection",
                TailSelect::from_name,
            )?,
            seed: u64_of(value(lt, node, "long-tail", "seed")),
        };
        let g = node.child("groups");
        let groups = Groups {
            many: f64_of(value(g, node, "groups", "many")),
            few: f64_of(value(g, node, "groups", "few")),
            rule: self.choice(
                value(g, node, "groups", "rule"),
                g.map_or(node.name_span, |g| g.prop_span("rule")),
                "group rule",
                GroupRule::from_name,
            )?,
            relative: bool_of(value(g, node, "groups", "relative")),
        };
        Some(DatasetSpec {
            source: Spanned::new(source, src.span),
            long_tail,
            groups,
        })
    }

    fn backbone(&self, node: &Node, diags: &mut Vec<Diagnostic>) -> Option<BackboneSpec> {
        let data = self.ref_arg(node, "data")?;
        let arch_arg = self.arg(node, "arch")?;
        let arch = Spanned::new(
            self.choice(
                Some(arch_arg.value.clone()),
                arch_arg.span,
                "architecture",
                Arch::from_name,
            )?,
            arch_arg.span,
        );
        let weights = if let Some(ck) = node.child("checkpoint") {
            let path = ck.args.first()?;
            Weights::Checkpoint {
                path: self.path_value(path.value.as_str()?.to_string(), path.span),
                format: self.choice(
                    ck.prop_or_default("format"),
                    ck.prop_span("format"),
                    "checkpoint format",
                    CheckpointFormat::from_name,
                )?,
                trunk: ck
                    .prop("trunk")
                    .and_then(|p| p.value.as_str())
                    .map(str::to_string),
                classifier: ck
                    .prop("classifier")
                    .and_then(|p| p.value.as_str())
                    .map(str::to_string),
                classifier_kind: self.choice(
                    ck.prop_or_default("classifier-kind"),
                    ck.prop_span("classifier-kind"),
                    "classifier kind",
                    ClassifierKind::from_name,
                )?,
            }
        } else {
            let t = node.child("train");
            let v = |prop: &str| value(t, node, "train", prop);
            let span = |prop: &str| t.map_or(node.name_span, |t| t.prop_span(prop));
            Weights::Train(BackboneTrain {
                epochs: u32_of(v("epochs")),
                batch_size: u32_of(v("batch-size")),
                lr: f64_of(v("lr")),
                momentum: f64_of(v("momentum")),
                weight_decay: f64_of(v("weight-decay")),
                schedule: self.choice(
                    v("schedule"),
                    span("schedule"),
                    "schedule",
                    Schedule::from_name,
                )?,
                warmup_epochs: u32_of(v("warmup-epochs")),
                loss: self.choice(
                    v("loss"),
                    span("loss"),
                    "first-stage loss",
                    FirstStageLoss::from_name,
                )?,
                sampler: self.choice(
                    v("sampler"),
                    span("sampler"),
                    "sampler",
                    BackboneSampler::from_name,
                )?,
                seed: v("seed")
                    .and_then(|s| s.as_i64())
                    .map_or(self.defaults.seed.value, |s| s as u64),
            })
        };
        let augment = node
            .children_named("augment")
            .filter_map(|a| {
                let p = |name: &str| a.prop_or_default(name);
                let name = a.variant_name()?;
                Some(match name {
                    "random-crop" => Augment::RandomCrop {
                        padding: u32_of(p("padding")),
                    },
                    "random-resized-crop" => Augment::RandomResizedCrop {
                        size: u32_of(p("size")),
                        min_scale: f64_of(p("min-scale")),
                    },
                    "hflip" => Augment::Hflip { p: f64_of(p("p")) },
                    "color-jitter" => Augment::ColorJitter {
                        brightness: f64_of(p("brightness")),
                        contrast: f64_of(p("contrast")),
                        saturation: f64_of(p("saturation")),
                        hue: f64_of(p("hue")),
                    },
                    other => {
                        self.unknown_variant("augment", other, a.span);
                        return None;
                    }
                })
            })
            .collect();
        let normalize_arg = self.arg(node, "normalize")?;
        if let (Some(ck), None) = (node.child("checkpoint"), node.child("normalize")) {
            // Weights were trained on inputs normalised their way; this dataset's own
            // statistics are a guess that changes every feature silently.
            diags.push(
                Diagnostic::new(
                    Code::CheckpointNormalize,
                    format!(
                        "backbone `{}` loads a checkpoint but does not say how its inputs were normalised",
                        self.stage
                    ),
                    ck.span,
                    "trained elsewhere, on inputs normalised its own way",
                )
                .with_help(format!(
                    "state the normalisation it was trained with, e.g. `normalize \"{}\"` for the \
                     usual CIFAR constants (one of {}); without it, lortflow normalises with this \
                     dataset's statistics (`normalize \"dataset\"`)",
                    Normalize::Cifar.name(),
                    Normalize::NAMES
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            );
        }
        let normalize = self.choice(
            Some(normalize_arg.value),
            normalize_arg.span,
            "normalisation",
            Normalize::from_name,
        )?;
        Some(BackboneSpec {
            data,
            arch,
            weights,
            augment,
            normalize,
        })
    }

    fn features(&self, node: &Node) -> Option<FeaturesSpec> {
        let tta = self.arg(node, "tta")?;
        Some(FeaturesSpec {
            backbone: self.ref_arg(node, "backbone")?,
            tta: self.choice(Some(tta.value), tta.span, "TTA mode", Tta::from_name)?,
            batch_size: u32_of(self.arg(node, "batch-size").map(|a| a.value)),
        })
    }

    fn head(&self, node: &Node, diags: &mut Vec<Diagnostic>) -> Option<HeadSpec> {
        let features = self.ref_arg(node, "features")?;
        let method_node = node.child("method");
        let method = match method_node {
            Some(m) => m.variant.clone()?,
            None => Spanned::new("ce".to_string(), node.name_span),
        };
        let preset = schema::preset(&method.value)?;
        let method_span = method_node.map_or(node.name_span, |m| m.span);

        // Each component slot: the explicit node, else what the preset sets, else neutral.
        let mut slots: Vec<Option<Node>> = Vec::with_capacity(COMPONENTS.len());
        for slot in COMPONENTS {
            let explicit = node.child(slot).cloned();
            let from_preset =
                self.preset_component(node, method_node, &method.value, slot, method_span);
            if let (Some(explicit), Some(_), Some(m)) = (&explicit, &from_preset, method_node) {
                if !m.props.is_empty() {
                    diags.push(
                        Diagnostic::new(
                            Code::UnusedSetting,
                            format!(
                                "`{slot}` replaces the `{}` part of method `{}`; its parameters there may have no effect",
                                slot, method.value
                            ),
                            explicit.name_span,
                            format!("explicit `{slot}`"),
                        )
                        .with_label(m.span, "method parameters")
                        .with_help(format!("set the parameter on `{slot}` itself, or remove the `{slot}` node")),
                    );
                }
            }
            slots.push(explicit.or(from_preset));
        }
        let slot = |name: &str| {
            slots[COMPONENTS
                .iter()
                .position(|c| *c == name)
                .expect("known component")]
            .as_ref()
        };
        let span_of = |name: &str| slot(name).map_or(node.name_span, |n| n.span);
        let p = |name: &str, prop: &str| slot(name).and_then(|n| n.prop_or_default(prop));
        let variant = |name: &str| slot(name).and_then(|n| n.variant_name().map(str::to_string));

        // An absent component is the neutral one; every name the schema lists has its arm.
        let unknown = |name: &str, other: &str| {
            self.unknown_variant(name, other, span_of(name));
            None
        };
        let logits = match variant("logits").as_deref() {
            None | Some("linear") => Logits::Linear,
            Some("cosine") => Logits::Cosine {
                scale: f64_of(p("logits", "scale")),
            },
            Some("lws") => Logits::Lws,
            Some(other) => return unknown("logits", other),
        };
        let targets = match variant("targets").as_deref() {
            None | Some("one-hot") => Targets::OneHot,
            Some("smoothed") => Targets::Smoothed {
                delta: f64_of(p("targets", "delta")),
            },
            Some(other) => return unknown("targets", other),
        };
        let margin = match variant("margin").as_deref() {
            None | Some("none") => Margin::None,
            Some("ldam") => Margin::Ldam {
                max_m: f64_of(p("margin", "max-m")),
            },
            Some("balanced-softmax") => Margin::BalancedSoftmax,
            Some("logit-adjust") => Margin::LogitAdjust {
                tau: f64_of(p("margin", "tau")),
            },
            Some(other) => return unknown("margin", other),
        };
        let weighting = match variant("weighting").as_deref() {
            None | Some("none") => Weighting::None,
            Some("class-balanced") => Weighting::ClassBalanced {
                beta: f64_of(p("weighting", "beta")),
                loss: self.choice(
                    p("weighting", "loss"),
                    span_of("weighting"),
                    "class-balanced base loss",
                    BaseLoss::from_name,
                )?,
                gamma: f64_of(p("weighting", "gamma")),
                from_epoch: u32_of(p("weighting", "from-epoch")),
            },
            Some("focal") => Weighting::Focal {
                gamma: f64_of(p("weighting", "gamma")),
            },
            Some(other) => return unknown("weighting", other),
        };
        let sampler = match variant("sampler").as_deref() {
            None | Some("instance") => Sampler::Instance,
            Some("class-balanced") => Sampler::ClassBalanced {
                per_class: u32_of(p("sampler", "per-class")),
            },
            Some("sqrt") => Sampler::Sqrt,
            Some(other) => return unknown("sampler", other),
        };
        let constraint = match variant("constraint").as_deref() {
            None | Some("none") => Constraint::None,
            Some("maxnorm") => Constraint::Maxnorm {
                thresh: f64_of(p("constraint", "thresh")),
                radius: p("constraint", "radius").and_then(|v| v.as_f64()),
                every: self.choice(
                    p("constraint", "every"),
                    span_of("constraint"),
                    "constraint frequency",
                    ConstraintEvery::from_name,
                )?,
            },
            Some(other) => return unknown("constraint", other),
        };
        let inference = match variant("inference").as_deref() {
            None | Some("none") => Inference::None,
            Some("tau-norm") => Inference::TauNorm {
                tau: f64_of(p("inference", "tau")),
                bias: bool_of(p("inference", "bias")),
            },
            Some("logit-adjust") => Inference::LogitAdjust {
                tau: f64_of(p("inference", "tau")),
            },
            Some(other) => return unknown("inference", other),
        };

        // A setting is the head's own, else the pipeline's budget, else the preset's.
        let budget = self.budget(node, method_node);
        let written = |prop: &str| self.train_setting(node, method_node, prop);
        let tv = |prop: &str| written(prop).map(|p| p.value.value.clone());
        let d = preset_train(preset, method_node);
        let train = HeadTrain {
            epochs: tv("epochs").map_or(d.epochs as u32, |v| u32_of(Some(v))),
            batch_size: tv("batch-size").map_or(d.batch_size as u32, |v| u32_of(Some(v))),
            lr: tv("lr").map_or(d.lr, |v| f64_of(Some(v))),
            momentum: f64_of(tv("momentum").or_else(|| value(None, node, "train", "momentum"))),
            weight_decay: tv("weight-decay").map_or(d.weight_decay, |v| f64_of(Some(v))),
            schedule: self.choice(
                tv("schedule").or_else(|| value(None, node, "train", "schedule")),
                written("schedule").map_or(node.name_span, |p| p.value.span),
                "schedule",
                Schedule::from_name,
            )?,
            seed: tv("seed").map_or(self.defaults.seed.value, |v| u64_of(Some(v))),
        };

        let init = match node
            .child("init")
            .or_else(|| budget.and_then(|b| b.child("init")))
        {
            Some(i) => {
                let from = match i.args.first() {
                    Some(a) => self.choice(
                        Some(a.value.clone()),
                        a.span,
                        "initialisation",
                        InitFrom::from_name,
                    )?,
                    None => InitFrom::Random,
                };
                let v = match from {
                    InitFrom::Random => Init::Random,
                    InitFrom::Backbone => Init::Backbone,
                    InitFrom::Head => {
                        match i.prop("head") {
                            Some(h) => Init::Head(Spanned::new(
                                h.value.value.as_str()?.to_string(),
                                h.value.span,
                            )),
                            None => {
                                diags.push(
                                Diagnostic::new(
                                    Code::MissingRequired,
                                    format!("head `{}` starts from another head but does not say which", self.stage),
                                    i.span,
                                    "missing `head=`",
                                )
                                .with_help("name the head to start from: `init \"head\" head=\"ce\"`"),
                            );
                                return None;
                            }
                        }
                    }
                };
                Spanned::new(v, i.span)
            }
            None => Spanned::new(
                if d.init == InitFrom::Backbone {
                    Init::Backbone
                } else {
                    Init::Random
                },
                method_span,
            ),
        };
        let trials = node
            .child("trials")
            .or_else(|| budget.and_then(|b| b.child("trials")))
            .and_then(|c| c.args.first())
            .map_or(1, |a| u32_of(Some(a.value.clone())))
            .max(1);
        let select = match self.arg(node, "select") {
            Some(a) => Spanned::new(
                self.choice(
                    Some(a.value),
                    a.span,
                    "epoch selection",
                    EpochSelect::from_name,
                )?,
                a.span,
            ),
            None => Spanned::new(EpochSelect::Last, node.name_span),
        };
        let validation = node.child("validation").map(|v| Validation {
            fraction: f64_of(v.prop_or_default("fraction")),
            seed: u64_of(v.prop_or_default("seed")),
        });
        let loss = node.child("loss").and_then(|n| {
            let name = n.variant_name()?;
            let plugin = n.spec.plugin(name)?;
            let params = n
                .spec
                .props_for(Some(name))
                .map(|spec| (spec.name.to_string(), f64_of(n.prop_or_default(spec.name))))
                .collect();
            Some(Spanned::new(
                PluginLoss {
                    name: name.to_string(),
                    version: plugin.version.to_string(),
                    params,
                },
                n.span,
            ))
        });
        Some(HeadSpec {
            features,
            method,
            logits: Spanned::new(logits, span_of("logits")),
            targets: Spanned::new(targets, span_of("targets")),
            margin: Spanned::new(margin, span_of("margin")),
            loss,
            weighting: Spanned::new(weighting, span_of("weighting")),
            sampler: Spanned::new(sampler, span_of("sampler")),
            constraint: Spanned::new(constraint, span_of("constraint")),
            inference: Spanned::new(inference, span_of("inference")),
            train,
            init,
            trials,
            select,
            validation,
        })
    }

    /// The pipeline's `defaults { head { … } }`, when it applies to `head`: always, except to a
    /// preset that only maps the stage-1 classifier (`epochs` 0: `tau-norm`, post-hoc
    /// `logit-adjust`) while the head does not ask for epochs itself — a re-training budget
    /// does not turn a map into a fine-tuning, and its trials would all be the same.
    fn budget(&self, head: &Node, method_node: Option<&Node>) -> Option<&Node> {
        let budget = self.defaults.head.as_ref()?;
        let method = method_node.and_then(|m| m.variant.as_ref());
        let preset = schema::preset(method.map_or("ce", |m| m.value.as_str()))?;
        let maps_only = preset_train(preset, method_node).epochs == 0;
        let own_epochs = head.child("train").and_then(|t| t.prop("epochs")).is_some();
        (!maps_only || own_epochs).then_some(budget)
    }

    /// Where the `train` property `prop` of `head` is written: the head's own `train`, else the
    /// budget's (`None`: the preset's default or the schema's applies).
    fn train_setting<'n>(
        &'n self,
        head: &'n Node,
        method_node: Option<&Node>,
        prop: &str,
    ) -> Option<&'n crate::ast::Prop> {
        head.child("train")
            .and_then(|t| t.prop(prop))
            .or_else(|| self.budget(head, method_node)?.child("train")?.prop(prop))
    }

    /// The component node a preset stands for in `slot`, built from the method's parameters.
    fn preset_component(
        &self,
        head: &Node,
        method_node: Option<&Node>,
        method: &str,
        slot: &str,
        span: Span,
    ) -> Option<Node> {
        let preset = schema::preset(method)?;
        let method_prop = |name: &str| -> Option<Value> {
            match method_node {
                Some(m) => m.prop_or_default(name),
                None => None,
            }
        };
        // DRW starts at 80% of the epochs unless `drw-epoch` says otherwise (LDAM-DRW: 160/200).
        let method_prop = |name: &str| -> Option<Value> {
            match method_prop(name) {
                None if name == "drw-epoch" => {
                    let epochs = self
                        .train_setting(head, method_node, "epochs")
                        .and_then(|p| p.value.value.as_i64())
                        .unwrap_or(preset_train(preset, method_node).epochs);
                    Some(Value::Int(epochs * 4 / 5))
                }
                value => value,
            }
        };
        // Two presets pick their components from their parameters.
        let (variant, props): (&str, Vec<(&str, Option<Value>)>) = match (method, slot) {
            ("logit-adjust", "inference") if str_of(method_prop("form")) != "loss" => {
                ("logit-adjust", vec![("tau", method_prop("tau"))])
            }
            ("logit-adjust", "margin") if str_of(method_prop("form")) == "loss" => {
                ("logit-adjust", vec![("tau", method_prop("tau"))])
            }
            ("ldam" | "ldam-drw", "logits")
                if method_prop("normalized") == Some(Value::Bool(false)) =>
            {
                ("linear", vec![])
            }
            _ => {
                let setting = preset.components.iter().find(|c| c.node == slot)?;
                let props = setting
                    .props
                    .iter()
                    .map(|(name, v)| {
                        let value = match v {
                            PresetValue::Method(m) => method_prop(m),
                            PresetValue::Lit(l) => Some(Value::from_lit(*l)),
                        };
                        (*name, value)
                    })
                    .collect();
                (setting.variant, props)
            }
        };
        let spec = head.spec.child(slot)?;
        let mut node = Node {
            spec,
            name_span: span,
            span,
            variant: Some(Spanned::new(variant.to_string(), span)),
            args: vec![Spanned::new(Value::Str(variant.to_string()), span)],
            props: Vec::new(),
            children: Vec::new(),
        };
        for (name, value) in props {
            if let Some(value) = value {
                node.set_prop(name, Spanned::new(value, span));
            }
        }
        Some(node)
    }

    fn sweep(&self, node: &Node) -> Option<SweepSpec> {
        let base = self.ref_arg(node, "base")?;
        let vary = node
            .children_named("vary")
            .filter_map(|v| {
                let param = v.args.first()?;
                Some(Vary {
                    param: Spanned::new(param.value.as_str()?.to_string(), param.span),
                    target: None,
                    values: v.args[1..].to_vec(),
                })
            })
            .collect();
        let trials = node
            .child("trials")
            .and_then(|t| t.args.first())
            .and_then(|a| a.value.as_i64())
            .map(|v| v as u32);
        Some(SweepSpec { base, vary, trials })
    }

    fn evaluate(&self, node: &Node) -> Option<EvaluateSpec> {
        let heads = node
            .child("heads")?
            .args
            .iter()
            .filter_map(|a| Some(Spanned::new(a.value.as_str()?.to_string(), a.span)))
            .collect();
        let metrics = match node.child("metrics") {
            Some(m) => m
                .args
                .iter()
                .map(|a| self.choice(Some(a.value.clone()), a.span, "metric", Metric::from_name))
                .collect::<Option<Vec<_>>>()?,
            None => vec![Metric::Top1],
        };
        let rsd = self.arg(node, "rsd")?;
        Some(EvaluateSpec {
            heads,
            metrics,
            rsd_over: self.choice(
                Some(rsd.value),
                rsd.span,
                "RSD sample set",
                RsdOver::from_name,
            )?,
            plots: self
                .arg(node, "plots")
                .and_then(|a| a.value.as_bool())
                .unwrap_or(true),
            stage1: self
                .arg(node, "stage-1")
                .and_then(|a| a.value.as_bool())
                .unwrap_or(true),
        })
    }
}

/// A preset's training defaults for the method's written properties.
fn preset_train(preset: &schema::HeadPreset, method_node: Option<&Node>) -> schema::TrainDefaults {
    preset.train_for(|prop| {
        method_node
            .and_then(|m| m.prop_or_default(prop))
            .and_then(|v| v.as_str().map(str::to_string))
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::ir::Init;
    use crate::schema::{COMPONENTS, StageKind, stage_spec};
    use crate::{MemoryLoader, check_text};

    /// Every variant of every head component and every choice the schema accepts lowers to a
    /// typed value: a name added to the schema without its IR arm fails here, not at run time.
    #[test]
    fn every_schema_variant_has_a_typed_form() {
        let head = stage_spec(StageKind::Head);
        let mut heads = Vec::new();
        for slot in COMPONENTS {
            let Some(spec) = head.child(slot) else {
                continue;
            };
            for variant in spec.all_variants() {
                heads.push(format!("{slot} \"{}\"", variant.name));
            }
        }
        for (i, component) in heads.iter().enumerate() {
            let text = format!(
                "lortflow 1\ndataset \"d\" {{ source \"synthetic\" kind=\"vectors\" }}\n\
                 head \"h{i}\" {{ features \"d\"; {component} }}\nevaluate \"t\" {{ heads \"*\" }}\n"
            );
            let checked = check_text(Path::new("p.kdl"), text, &MemoryLoader::default());
            for d in &checked.diagnostics {
                assert!(
                    !d.message.contains("a bug in lortflow"),
                    "{component}: {d:?}"
                );
            }
        }
    }

    fn heads(text: &str) -> Vec<(String, crate::ir::HeadSpec)> {
        let checked = check_text(
            Path::new("p.kdl"),
            text.to_string(),
            &MemoryLoader::default(),
        );
        assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
        checked
            .pipeline
            .stages
            .iter()
            .filter_map(|s| match &s.spec {
                crate::ir::StageSpec::Head(h) => Some((s.name.value.clone(), (**h).clone())),
                _ => None,
            })
            .collect()
    }

    const BACKBONE: &str = "lortflow 1\n\
        dataset \"d\" { source \"synthetic\" kind=\"images\" }\n\
        backbone \"b\" { data \"d\"; arch \"small-cnn\"; train epochs=1 }\n\
        features \"f\" { backbone \"b\" }\n\
        evaluate \"t\" { heads \"*\" }\n";

    /// `defaults { head { … } }` reaches every head, whatever its preset, and a head's own
    /// setting wins one property at a time.
    #[test]
    fn a_budget_in_defaults_reaches_every_head_and_a_head_overrides_it() {
        let text = format!(
            "{BACKBONE}defaults {{\n    head {{\n        train epochs=7 lr=0.03 weight-decay=1e-4 batch-size=32 momentum=0.5\n        init \"backbone\"\n        trials 3\n    }}\n}}\n\
             head \"ce\" {{ features \"f\" }}\n\
             head \"crt\" {{ features \"f\"; method \"resample\" }}\n\
             head \"lort\" {{ features \"f\"; method \"lort\" }}\n\
             head \"own\" {{ features \"f\"; method \"lort\"; train lr=5e-4; init \"random\"; trials 1 }}\n"
        );
        for (name, h) in heads(&text) {
            let own = name == "own";
            assert_eq!(h.train.epochs, 7, "{name}");
            assert_eq!(h.train.batch_size, 32, "{name}");
            assert_eq!(h.train.weight_decay, 1e-4, "{name}");
            assert_eq!(h.train.momentum, 0.5, "{name}");
            assert_eq!(h.train.lr, if own { 5e-4 } else { 0.03 }, "{name}");
            let init = if own { Init::Random } else { Init::Backbone };
            assert_eq!(h.init.value, init, "{name}");
            assert_eq!(h.trials, if own { 1 } else { 3 }, "{name}");
        }
    }

    /// Heads that only map the stage-1 classifier keep doing so under a budget (unless they ask
    /// for epochs themselves), and DRW's default start follows the budget's epochs.
    #[test]
    fn a_budget_leaves_maps_alone_and_moves_drw() {
        let text = format!(
            "{BACKBONE}defaults {{ head {{ train epochs=30 lr=0.05; init \"random\"; trials 4 }} }}\n\
             head \"tau\" {{ features \"f\"; method \"tau-norm\" }}\n\
             head \"tau-ft\" {{ features \"f\"; method \"tau-norm\"; train epochs=5; init \"backbone\" }}\n\
             head \"drw\" {{ features \"f\"; method \"ldam-drw\" }}\n"
        );
        let heads: std::collections::BTreeMap<_, _> = heads(&text).into_iter().collect();
        let tau = &heads["tau"];
        assert_eq!(
            (tau.train.epochs, &tau.init.value, tau.trials),
            (0, &Init::Backbone, 1)
        );
        let ft = &heads["tau-ft"];
        assert_eq!((ft.train.epochs, ft.train.lr, ft.trials), (5, 0.05, 4));
        let crate::ir::Weighting::ClassBalanced { from_epoch, .. } = heads["drw"].weighting.value
        else {
            panic!("DRW weights classes");
        };
        assert_eq!((heads["drw"].train.epochs, from_epoch), (30, 24));
    }

    /// Without a budget the presets' recipes apply: τ-norm maps the backbone's classifier,
    /// cRT trains a fresh head, DRW starts at 80% of the epochs.
    #[test]
    fn presets_bring_their_references_recipes() {
        let text = format!(
            "{BACKBONE}head \"tau\" {{ features \"f\"; method \"tau-norm\" }}\n\
             head \"la\" {{ features \"f\"; method \"logit-adjust\" }}\n\
             head \"la-loss\" {{ features \"f\"; method \"logit-adjust\" form=\"loss\" }}\n\
             head \"crt\" {{ features \"f\"; method \"resample\" }}\n\
             head \"drw\" {{ features \"f\"; method \"ldam-drw\"; train epochs=30 }}\n"
        );
        let heads: std::collections::BTreeMap<_, _> = heads(&text).into_iter().collect();
        for map in ["tau", "la"] {
            assert_eq!(heads[map].train.epochs, 0, "{map}");
            assert_eq!(heads[map].init.value, Init::Backbone, "{map}");
        }
        assert_eq!(heads["la-loss"].train.epochs, 10);
        assert_eq!(heads["la-loss"].init.value, Init::Random);
        assert_eq!(
            (heads["crt"].train.lr, heads["crt"].train.batch_size),
            (0.2, 512)
        );
        let crate::ir::Weighting::ClassBalanced { from_epoch, .. } = heads["drw"].weighting.value
        else {
            panic!("DRW weights classes");
        };
        assert_eq!(from_epoch, 24);
    }
}
