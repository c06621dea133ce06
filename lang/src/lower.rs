//! Lowering: from schema-checked nodes to the typed IR, filling in schema and preset defaults.
//!
//! The checker has already validated names, types and ranges, so lowering only reads values,
//! each through the schema into its type ([`settings`]); variant names are matched as the
//! vocabulary's enums, never as strings, and head presets are data (`schema::HEAD_PRESETS`).
//! What it reports are problems that need more than one node to see (a preset's parameter
//! overridden by an explicit component, `init "head"` without `head=`), and settings that have
//! no value at all.

mod settings;

use std::cell::RefCell;
use std::path::Path;

use crate::ast::{Node, Value};
use crate::choice::Choice;
use crate::diagnostic::{Code, Diagnostic};
use crate::ir::*;
use crate::schema::{self, COMPONENTS, DEFAULT_METHOD, HeadPreset, PresetValue, StageKind};
use crate::source::{Span, Spanned};
use settings::{Arg, Settings};

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
        problems: RefCell::new(Vec::new()),
    };
    let spec = match kind {
        StageKind::Dataset => cx.dataset(node).map(StageSpec::Dataset),
        StageKind::Backbone => cx.backbone(node, diags).map(StageSpec::Backbone),
        StageKind::Features => cx.features(node).map(StageSpec::Features),
        StageKind::Head => cx.head(node, diags).map(|h| StageSpec::Head(Box::new(h))),
        StageKind::Sweep => cx.sweep(node).map(StageSpec::Sweep),
        StageKind::Evaluate => cx.evaluate(node).map(StageSpec::Evaluate),
    };
    diags.extend(cx.problems.into_inner());
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
    // The checker accepted only `Backend::NAMES`; absent, these are the schema's defaults (a
    // pipeline without `defaults` has no node to read them from, and this has no stage to
    // report on).
    let backend = arg("backend")
        .and_then(|a| Some(Spanned::new(Backend::from_name(a.value.as_str()?)?, a.span)))
        .unwrap_or(Spanned::new(Backend::Cpu, Span::synthetic()));
    let seed = arg("seed").map_or(Spanned::new(0, Span::synthetic()), |a| {
        Spanned::new(a.value.as_i64().unwrap_or(0) as u64, a.span)
    });
    let devices = arg("devices").map_or(Spanned::new(1, Span::synthetic()), |a| {
        Spanned::new(a.value.as_i64().unwrap_or(1).max(1) as usize, a.span)
    });
    let head = node.and_then(|n| n.child("head")).cloned();
    Defaults {
        backend,
        seed,
        devices,
        head,
    }
}

struct Lower<'a> {
    dir: &'a Path,
    defaults: &'a Defaults,
    stage: &'a str,
    /// Settings without a value, and names the IR has no variant for (the checker lets none
    /// through, so each is a bug between the schema and the IR), reported rather than replaced
    /// by a default.
    problems: RefCell<Vec<Diagnostic>>,
}

impl Lower<'_> {
    /// The settings of a written node.
    fn of<'n>(&'n self, node: &'n Node) -> Settings<'n> {
        Settings::of(node, self.dir, self.stage, &self.problems)
    }

    /// The settings of `parent`'s child `child`, written or not (then its defaults apply).
    fn child<'n>(&'n self, parent: &'n Node, child: &str) -> Option<Settings<'n>> {
        match parent.child(child) {
            Some(c) => Some(self.of(c)),
            None => Some(Settings::absent(
                parent.spec.child(child)?,
                parent.name_span,
                self.dir,
                self.stage,
                &self.problems,
            )),
        }
    }

    /// A head component: its variant and settings, or the neutral variant when neither the
    /// head nor its preset sets it.
    fn component<'n, T: Choice>(
        &'n self,
        head: &'n Node,
        slot: &str,
        node: Option<&'n Node>,
        neutral: T,
    ) -> Option<(T, Settings<'n>)> {
        match node {
            Some(n) => {
                let s = self.of(n);
                Some((s.variant()?, s))
            }
            None => Some((neutral, self.child(head, slot)?)),
        }
    }

    fn dataset(&self, node: &Node) -> Option<DatasetSpec> {
        let src_node = node.child("source")?;
        let src = self.of(src_node);
        let source = match src.variant::<SourceFormat>()? {
            SourceFormat::FashionMnist => Source::FashionMnist {
                root: src.path("root")?,
                download: src.flag("download")?,
            },
            SourceFormat::Mnist => Source::Mnist {
                root: src.path("root")?,
                download: src.flag("download")?,
            },
            SourceFormat::Cifar10 => Source::Cifar10 {
                root: src.path("root")?,
                download: src.flag("download")?,
            },
            SourceFormat::Cifar100 => Source::Cifar100 {
                root: src.path("root")?,
                download: src.flag("download")?,
            },
            SourceFormat::ImageList => Source::ImageList {
                root: src.path("root")?,
                train: src.path("train")?,
                test: src.path("test")?,
                image_size: src.int("image-size")?,
                resize: src.int("resize")?,
                max_side: src.opt_int("max-side"),
                skip_bad_images: src.flag("skip-bad-images")?,
            },
            SourceFormat::Inat2018 => Source::Inat2018 {
                root: src.path("root")?,
                train: src.path("train")?,
                test: src.path("test")?,
                image_size: src.int("image-size")?,
                max_side: src.opt_int("max-side"),
                skip_bad_images: src.flag("skip-bad-images")?,
            },
            SourceFormat::ImageFolder => Source::ImageFolder {
                train: src.path("train")?,
                test: src.path("test")?,
                image_size: src.int("image-size")?,
                resize: src.int("resize")?,
                max_side: src.opt_int("max-side"),
                skip_bad_images: src.flag("skip-bad-images")?,
            },
            SourceFormat::Features => Source::Features {
                train: src.path("train")?,
                test: src.path("test")?,
                train_labels: src.opt_path("train-labels"),
                test_labels: src.opt_path("test-labels"),
            },
            SourceFormat::Synthetic => Source::Synthetic {
                kind: src.choice("kind")?,
                classes: src.int("classes")?,
                per_class: src.int("per-class")?,
                test_per_class: src.int("test-per-class")?,
                size: src.int("size")?,
                channels: src.int("channels")?,
                dim: src.int("dim")?,
                noise: src.float("noise")?,
                seed: src.int("seed")?,
            },
        };
        let lt = self.child(node, "long-tail")?;
        let long_tail = LongTail {
            // No `long-tail` (or one whose profile the checker rejected) keeps every sample.
            profile: match lt.written(Arg(0)) {
                Some(_) => lt.choice(Arg(0))?,
                None => TailProfile::None,
            },
            imbalance_ratio: lt.float("imbalance-ratio")?,
            max_per_class: lt.opt_int("max-per-class"),
            select: lt.choice("select")?,
            seed: lt.int("seed")?,
        };
        let g = self.child(node, "groups")?;
        let groups = Groups {
            many: g.float("many")?,
            few: g.float("few")?,
            rule: g.choice("rule")?,
            relative: g.flag("relative")?,
        };
        Some(DatasetSpec {
            source: Spanned::new(source, src_node.span),
            long_tail,
            groups,
        })
    }

    fn backbone(&self, node: &Node, diags: &mut Vec<Diagnostic>) -> Option<BackboneSpec> {
        let data = self.child(node, "data")?.name(Arg(0))?;
        let arch = self.child(node, "arch")?.spanned_choice::<Arch>(Arg(0))?;
        let weights = if let Some(ck) = node.child("checkpoint") {
            let ck = self.of(ck);
            Weights::Checkpoint {
                path: ck.path(Arg(0))?,
                format: ck.choice("format")?,
                trunk: ck.opt_text("trunk"),
                classifier: ck.opt_text("classifier"),
                classifier_kind: ck.choice("classifier-kind")?,
            }
        } else {
            let t = self.child(node, "train")?;
            Weights::Train(BackboneTrain {
                epochs: t.int("epochs")?,
                batch_size: t.int("batch-size")?,
                lr: t.float("lr")?,
                momentum: t.float("momentum")?,
                weight_decay: t.float("weight-decay")?,
                schedule: t.choice("schedule")?,
                warmup_epochs: t.int("warmup-epochs")?,
                loss: t.choice("loss")?,
                sampler: t.choice("sampler")?,
                // Unwritten, the pipeline's seed.
                seed: t.opt_int("seed").unwrap_or(self.defaults.seed.value),
            })
        };
        let augment = node
            .children_named("augment")
            .filter_map(|a| {
                let s = self.of(a);
                Some(match s.variant::<AugmentKind>()? {
                    AugmentKind::RandomCrop => Augment::RandomCrop {
                        padding: s.int("padding")?,
                    },
                    AugmentKind::RandomResizedCrop => Augment::RandomResizedCrop {
                        size: s.int("size")?,
                        min_scale: s.float("min-scale")?,
                    },
                    AugmentKind::Hflip => Augment::Hflip { p: s.float("p")? },
                    AugmentKind::ColorJitter => Augment::ColorJitter {
                        brightness: s.float("brightness")?,
                        contrast: s.float("contrast")?,
                        saturation: s.float("saturation")?,
                        hue: s.float("hue")?,
                    },
                })
            })
            .collect();
        let normalize = self.child(node, "normalize")?;
        let normalize_stats = normalize.required(Arg(0))?;
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
                     dataset's statistics (`normalize \"{}\"`)",
                    Normalize::Cifar.name(),
                    Normalize::NAMES
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    normalize_stats.value.as_str().unwrap_or_default(),
                )),
            );
        }
        let normalize = normalize.choice(Arg(0))?;
        Some(BackboneSpec {
            data,
            arch,
            weights,
            augment,
            normalize,
        })
    }

    fn features(&self, node: &Node) -> Option<FeaturesSpec> {
        Some(FeaturesSpec {
            backbone: self.child(node, "backbone")?.name(Arg(0))?,
            tta: self.child(node, "tta")?.choice(Arg(0))?,
            batch_size: self.child(node, "batch-size")?.int(Arg(0))?,
        })
    }

    fn head(&self, node: &Node, diags: &mut Vec<Diagnostic>) -> Option<HeadSpec> {
        let features = self.child(node, "features")?.name(Arg(0))?;
        let method_node = node.child("method");
        let method = match method_node {
            Some(m) => m.variant.clone()?,
            None => Spanned::new(DEFAULT_METHOD.to_string(), node.name_span),
        };
        let preset = schema::preset(&method.value)?;
        let method_span = method_node.map_or(node.name_span, |m| m.span);

        // Each component slot: the explicit node, else what the preset sets, else neutral.
        let mut slots: Vec<Option<Node>> = Vec::with_capacity(COMPONENTS.len());
        for slot in COMPONENTS {
            let explicit = node.child(slot).cloned();
            let from_preset = self.preset_component(node, method_node, preset, slot, method_span);
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
        let component = |name: &str| slot(name);

        // An absent component is the neutral one; every variant has its arm (the match is on
        // the vocabulary's enum, so a new name without one does not compile).
        let logits =
            match self.component(node, "logits", component("logits"), LogitsKind::Linear)? {
                (LogitsKind::Linear, _) => Logits::Linear,
                (LogitsKind::Cosine, s) => Logits::Cosine {
                    scale: s.float("scale")?,
                    init_norm: s.opt_float("init-norm"),
                },
                (LogitsKind::Lws, _) => Logits::Lws,
            };
        let targets =
            match self.component(node, "targets", component("targets"), TargetsKind::OneHot)? {
                (TargetsKind::OneHot, _) => Targets::OneHot,
                (TargetsKind::Smoothed, s) => Targets::Smoothed {
                    delta: s.float("delta")?,
                },
            };
        let margin = match self.component(node, "margin", component("margin"), MarginKind::None)? {
            (MarginKind::None, _) => Margin::None,
            (MarginKind::Ldam, s) => Margin::Ldam {
                max_m: s.float("max-m")?,
            },
            (MarginKind::BalancedSoftmax, _) => Margin::BalancedSoftmax,
            (MarginKind::LogitAdjust, s) => Margin::LogitAdjust {
                tau: s.float("tau")?,
            },
        };
        let weighting = match self.component(
            node,
            "weighting",
            component("weighting"),
            WeightingKind::None,
        )? {
            (WeightingKind::None, _) => Weighting::None,
            (WeightingKind::ClassBalanced, s) => Weighting::ClassBalanced {
                beta: s.float("beta")?,
                loss: s.choice("loss")?,
                gamma: s.float("gamma")?,
                from_epoch: s.int("from-epoch")?,
            },
            (WeightingKind::Focal, s) => Weighting::Focal {
                gamma: s.float("gamma")?,
            },
        };
        let sampler =
            match self.component(node, "sampler", component("sampler"), SamplerKind::Instance)? {
                (SamplerKind::Instance, _) => Sampler::Instance,
                (SamplerKind::ClassBalanced, s) => Sampler::ClassBalanced {
                    per_class: s.int("per-class")?,
                },
                (SamplerKind::Sqrt, _) => Sampler::Sqrt,
            };
        let constraint = match self.component(
            node,
            "constraint",
            component("constraint"),
            ConstraintKind::None,
        )? {
            (ConstraintKind::None, _) => Constraint::None,
            (ConstraintKind::Maxnorm, s) => Constraint::Maxnorm {
                thresh: s.float("thresh")?,
                radius: s.opt_float("radius"),
                every: s.choice("every")?,
            },
        };
        let inference = match self.component(
            node,
            "inference",
            component("inference"),
            InferenceKind::None,
        )? {
            (InferenceKind::None, _) => Inference::None,
            (InferenceKind::TauNorm, s) => Inference::TauNorm {
                tau: s.float("tau")?,
                bias: s.flag("bias")?,
            },
            (InferenceKind::LogitAdjust, s) => Inference::LogitAdjust {
                tau: s.float("tau")?,
            },
        };

        // A setting is the head's own, else the pipeline's budget, else the preset's, else the
        // schema's.
        let budget = self.budget(node, method_node);
        let d = preset_train(preset, method_node);
        let t = self
            .child(node, "train")?
            .or(budget.and_then(|b| b.child("train")))
            .default("epochs", Value::Int(d.epochs))
            .default("batch-size", Value::Int(d.batch_size))
            .default("lr", Value::Float(d.lr))
            .default("weight-decay", Value::Float(d.weight_decay));
        let train = HeadTrain {
            epochs: t.int("epochs")?,
            batch_size: t.int("batch-size")?,
            lr: t.float("lr")?,
            momentum: t.float("momentum")?,
            weight_decay: t.float("weight-decay")?,
            schedule: t.choice("schedule")?,
            // Unwritten, the pipeline's seed.
            seed: t.opt_int("seed").unwrap_or(self.defaults.seed.value),
        };

        let init = match node
            .child("init")
            .or_else(|| budget.and_then(|b| b.child("init")))
        {
            Some(i) => {
                let s = self.of(i);
                // Without its (required, so already reported) argument: a fresh classifier.
                let from = match s.written(Arg(0)) {
                    Some(_) => s.choice(Arg(0))?,
                    None => InitFrom::Random,
                };
                let v = match from {
                    InitFrom::Random => Init::Random,
                    InitFrom::Backbone => Init::Backbone,
                    InitFrom::Head => match s.written("head") {
                        Some(_) => Init::Head(s.name("head")?),
                        None => {
                            diags.push(
                                Diagnostic::new(
                                    Code::MissingRequired,
                                    format!(
                                        "head `{}` starts from another head but does not say which",
                                        self.stage
                                    ),
                                    i.span,
                                    "missing `head=`",
                                )
                                .with_help(
                                    "name the head to start from: `init \"head\" head=\"ce\"`",
                                ),
                            );
                            return None;
                        }
                    },
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
        let trials = self
            .child(node, "trials")?
            .or(budget.and_then(|b| b.child("trials")))
            .int::<u32>(Arg(0))?
            .max(1);
        let select = self
            .child(node, "select")?
            .spanned_choice::<EpochSelect>(Arg(0))?;
        let validation = match node.child("validation") {
            Some(v) => {
                let s = self.of(v);
                Some(Validation {
                    fraction: s.float("fraction")?,
                    seed: s.int("seed")?,
                })
            }
            None => None,
        };
        // A loss no plugin registered is the checker's error; the head lowers without it.
        let loss = node.child("loss").and_then(|n| self.plugin_loss(n));
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

    /// A plugin's loss with its parameters (numbers, read like any other setting).
    fn plugin_loss(&self, n: &Node) -> Option<Spanned<PluginLoss>> {
        let name = n.variant_name()?;
        let plugin = n.spec.plugin(name)?;
        let s = self.of(n);
        let params = n
            .spec
            .props_for(Some(name))
            .map(|spec| Some((spec.name.to_string(), s.float(spec.name)?)))
            .collect::<Option<_>>()?;
        Some(Spanned::new(
            PluginLoss {
                name: name.to_string(),
                version: plugin.version.to_string(),
                params,
            },
            n.span,
        ))
    }

    /// The pipeline's `defaults { head { … } }`, when it applies to `head`: always, except to a
    /// preset that only maps the stage-1 classifier (`epochs` 0: `tau-norm`, post-hoc
    /// `logit-adjust`) while the head does not ask for epochs itself — a re-training budget
    /// does not turn a map into a fine-tuning, and its trials would all be the same.
    fn budget(&self, head: &Node, method_node: Option<&Node>) -> Option<&Node> {
        let budget = self.defaults.head.as_ref()?;
        let method = method_node.and_then(|m| m.variant.as_ref());
        let preset = schema::preset(method.map_or(DEFAULT_METHOD, |m| m.value.as_str()))?;
        let maps_only = preset_train(preset, method_node).epochs == 0;
        let own_epochs = head.child("train").and_then(|t| t.prop("epochs")).is_some();
        (!maps_only || own_epochs).then_some(budget)
    }

    /// The component node a preset stands for in `slot`, built from the method's parameters:
    /// the preset's first setting of that node whose condition on them holds.
    fn preset_component(
        &self,
        head: &Node,
        method_node: Option<&Node>,
        preset: &HeadPreset,
        slot: &str,
        span: Span,
    ) -> Option<Node> {
        let method_prop = |name: &str| method_node.and_then(|m| m.prop_or_default(name));
        let setting = preset.components.iter().find(|c| {
            c.node == slot
                && c.when
                    .is_none_or(|w| method_prop(w.prop) == Some(Value::from_lit(w.is)))
        })?;
        let spec = head.spec.child(slot)?;
        let mut node = Node {
            spec,
            name_span: span,
            span,
            variant: Some(Spanned::new(setting.variant.to_string(), span)),
            args: vec![Spanned::new(Value::Str(setting.variant.to_string()), span)],
            props: Vec::new(),
            children: Vec::new(),
        };
        for (name, v) in setting.props {
            let value = match *v {
                PresetValue::Method(m) => method_prop(m),
                PresetValue::Lit(l) => Some(Value::from_lit(l)),
                PresetValue::EpochFraction { prop, num, den } => {
                    method_prop(prop).or_else(|| {
                        // The epochs the head trains for: its own or its budget's, else the
                        // preset's.
                        let epochs = head
                            .child("train")
                            .and_then(|t| t.prop("epochs"))
                            .or_else(|| {
                                self.budget(head, method_node)?
                                    .child("train")?
                                    .prop("epochs")
                            })
                            .and_then(|p| p.value.value.as_i64())
                            .unwrap_or(preset_train(preset, method_node).epochs);
                        Some(Value::Int(epochs * num / den))
                    })
                }
            };
            if let Some(value) = value {
                node.set_prop(name, Spanned::new(value, span));
            }
        }
        Some(node)
    }

    fn sweep(&self, node: &Node) -> Option<SweepSpec> {
        let base = self.child(node, "base")?.name(Arg(0))?;
        let vary = node
            .children_named("vary")
            .filter_map(|v| {
                Some(Vary {
                    param: self.of(v).name(Arg(0))?,
                    target: None,
                    // Typed later, like the parameter they vary.
                    values: v.args.get(1..)?.to_vec(),
                })
            })
            .collect();
        let trials = node
            .child("trials")
            .and_then(|t| self.of(t).opt_int(Arg(0)));
        Some(SweepSpec { base, vary, trials })
    }

    fn evaluate(&self, node: &Node) -> Option<EvaluateSpec> {
        let heads = node.child("heads")?;
        let heads = (0..heads.args.len())
            .map(|i| self.of(heads).name(Arg(i)))
            .collect::<Option<_>>()?;
        let metrics = match node.child("metrics") {
            Some(m) => (0..m.args.len())
                .map(|i| self.of(m).choice(Arg(i)))
                .collect::<Option<Vec<_>>>()?,
            // Top-1 is always reported.
            None => vec![Metric::Top1],
        };
        Some(EvaluateSpec {
            heads,
            metrics,
            rsd_over: self.child(node, "rsd")?.choice(Arg(0))?,
            plots: self.child(node, "plots")?.flag(Arg(0))?,
            stage1: self.child(node, "stage-1")?.flag(Arg(0))?,
        })
    }
}

/// A preset's training defaults for the method's written properties.
fn preset_train(preset: &HeadPreset, method_node: Option<&Node>) -> schema::TrainDefaults {
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

    /// The schema lists exactly the vocabulary's variants, and the IR's serde tag of each is
    /// its name: the spelling a cache key holds is the one a pipeline writes.
    #[test]
    fn schema_variants_ir_tags_and_vocabulary_agree() {
        use crate::vocab::*;
        let names = |spec: &crate::schema::NodeSpec| -> Vec<&str> {
            spec.variants.iter().map(|v| v.name).collect()
        };
        let head = stage_spec(StageKind::Head);
        let slot = |name: &str| names(head.child(name).expect("a component"));
        assert_eq!(slot("logits"), LogitsKind::NAMES);
        assert_eq!(slot("targets"), TargetsKind::NAMES);
        assert_eq!(slot("margin"), MarginKind::NAMES);
        assert_eq!(slot("weighting"), WeightingKind::NAMES);
        assert_eq!(slot("sampler"), SamplerKind::NAMES);
        assert_eq!(slot("constraint"), ConstraintKind::NAMES);
        assert_eq!(slot("inference"), InferenceKind::NAMES);
        let dataset = stage_spec(StageKind::Dataset);
        assert_eq!(names(dataset.child("source").unwrap()), SourceFormat::NAMES);
        let backbone = stage_spec(StageKind::Backbone);
        assert_eq!(
            names(backbone.child("augment").unwrap()),
            AugmentKind::NAMES
        );

        // Every component variant, lowered: its serde `kind` is the name written.
        for slot in COMPONENTS {
            let Some(spec) = head.child(slot) else {
                continue;
            };
            for variant in spec.variants {
                let text = format!(
                    "lortflow 1\ndataset \"d\" {{ source \"synthetic\" kind=\"vectors\" }}\n\
                     head \"h\" {{ features \"d\"; {slot} \"{}\" }}\n",
                    variant.name
                );
                let checked = check_text(Path::new("p.kdl"), text, &MemoryLoader::default());
                let h = checked.pipeline.stage("h").expect("the head lowers");
                let json = serde_json::to_value(&h.spec).unwrap();
                assert_eq!(json[slot]["kind"], variant.name, "{slot}");
            }
        }
        // Every source format and augmentation likewise (`format`, `kind`).
        let mut text = String::from("lortflow 1\n");
        for (i, v) in SourceFormat::NAMES.iter().enumerate() {
            text.push_str(&format!(
                "dataset \"d{i}\" {{ source \"{v}\" root=\"r\" train=\"a\" test=\"b\" }}\n"
            ));
        }
        text.push_str("backbone \"b\" { data \"d7\"; arch \"small-cnn\"");
        for v in AugmentKind::NAMES {
            text.push_str(&format!("; augment \"{v}\""));
        }
        text.push_str(" }\n");
        let checked = check_text(Path::new("p.kdl"), text, &MemoryLoader::default());
        for (i, v) in SourceFormat::NAMES.iter().enumerate() {
            let d = checked
                .pipeline
                .stage(&format!("d{i}"))
                .expect("the dataset lowers");
            let json = serde_json::to_value(&d.spec).unwrap();
            assert_eq!(json["source"]["format"], *v);
        }
        let b = checked.pipeline.stage("b").expect("the backbone lowers");
        let json = serde_json::to_value(&b.spec).unwrap();
        let kinds: Vec<_> = json["augment"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, AugmentKind::NAMES);
    }

    /// Presets that pick their components from their parameters, from the table's conditions.
    #[test]
    fn presets_pick_components_by_their_parameters() {
        use crate::ir::{Inference, Logits, Margin};
        let text = format!(
            "{BACKBONE}head \"la\" {{ features \"f\"; method \"logit-adjust\" tau=2 }}\n\
             head \"la-loss\" {{ features \"f\"; method \"logit-adjust\" form=\"loss\" tau=0.5 }}\n\
             head \"ldam\" {{ features \"f\"; method \"ldam\" scale=10 }}\n\
             head \"ldam-lin\" {{ features \"f\"; method \"ldam-drw\" normalized=#false drw-epoch=3 }}\n"
        );
        let heads: std::collections::BTreeMap<_, _> = heads(&text).into_iter().collect();
        let la = &heads["la"];
        assert_eq!(la.inference.value, Inference::LogitAdjust { tau: 2.0 });
        assert_eq!(la.margin.value, Margin::None);
        let la = &heads["la-loss"];
        assert_eq!(la.inference.value, Inference::None);
        assert_eq!(la.margin.value, Margin::LogitAdjust { tau: 0.5 });
        assert_eq!(
            heads["ldam"].logits.value,
            Logits::Cosine {
                scale: 10.0,
                init_norm: Some(1.0)
            }
        );
        let lin = &heads["ldam-lin"];
        assert_eq!(lin.logits.value, Logits::Linear);
        assert_eq!(lin.margin.value, Margin::Ldam { max_m: 0.5 });
        let crate::ir::Weighting::ClassBalanced { from_epoch, .. } = lin.weighting.value else {
            panic!("DRW weights classes");
        };
        assert_eq!(
            from_epoch, 3,
            "a written drw-epoch wins over 80% of the epochs"
        );
    }

    /// The settings whose absence means something (lowering reads them as `Option`s or fills
    /// them itself), as `node.setting`. Every other setting has a default or is required, so
    /// that lowering never lacks a value: a new one without either fails here, not as a
    /// `missing-required` error in someone's pipeline.
    const UNSET_MEANS_SOMETHING: &[&str] = &[
        "source.train-labels",
        "source.max-side",
        "source.test-labels",
        "long-tail.max-per-class",
        "train.seed",
        // A head's `train` takes these from its preset.
        "train.epochs",
        "train.batch-size",
        "train.lr",
        "train.weight-decay",
        "checkpoint.trunk",
        "checkpoint.classifier",
        "method.drw-epoch",
        "method.radius",
        "constraint.radius",
        "logits.init-norm",
        "method.init-norm",
        "init.head",
    ];

    #[test]
    fn every_setting_has_a_default_or_is_required_or_is_meaningfully_unset() {
        fn walk(spec: &'static crate::schema::NodeSpec, found: &mut Vec<String>) {
            let variants = spec.all_variants();
            let props = spec
                .props
                .iter()
                .chain(variants.iter().flat_map(|v| v.props.iter()));
            for p in spec.args.iter().chain(props) {
                if p.default.is_none() && !p.required {
                    found.push(format!("{}.{}", spec.name, p.name));
                }
            }
            for child in spec.children {
                walk(child, found);
            }
        }
        let mut found = Vec::new();
        for spec in crate::schema::TOP_LEVEL {
            walk(spec, &mut found);
        }
        found.sort();
        found.dedup();
        let mut expected: Vec<String> = UNSET_MEANS_SOMETHING
            .iter()
            .map(|s| s.to_string())
            .collect();
        expected.sort();
        assert_eq!(found, expected);
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
