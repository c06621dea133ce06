//! Lowering: from schema-checked nodes to the typed IR, filling in schema and preset defaults.
//!
//! The checker has already validated names, types and ranges, so lowering only reads values;
//! what it reports are problems that need more than one node to see (a preset's parameter
//! overridden by an explicit component, `init "head"` without `head=`).

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
    };
    let spec = match kind {
        StageKind::Dataset => StageSpec::Dataset(cx.dataset(node)?),
        StageKind::Backbone => StageSpec::Backbone(cx.backbone(node)?),
        StageKind::Features => StageSpec::Features(cx.features(node)?),
        StageKind::Head => StageSpec::Head(Box::new(cx.head(node, diags)?)),
        StageKind::Sweep => StageSpec::Sweep(cx.sweep(node)?),
        StageKind::Evaluate => StageSpec::Evaluate(cx.evaluate(node)?),
    };
    Some(Stage {
        name,
        kind,
        node: node.clone(),
        spec,
    })
}

/// Lowers `defaults` (or the built-in defaults when absent).
pub fn lower_defaults(node: Option<&Node>) -> Defaults {
    let arg = |child: &str| {
        node.and_then(|n| n.child(child))
            .and_then(|c| c.args.first().cloned())
    };
    let backend = arg("backend").map_or(Spanned::new(Backend::Cpu, Span::synthetic()), |a| {
        Spanned::new(
            if a.value.as_str() == Some("cuda") {
                Backend::Cuda
            } else {
                Backend::Cpu
            },
            a.span,
        )
    });
    let seed = arg("seed").map_or(Spanned::new(0, Span::synthetic()), |a| {
        Spanned::new(a.value.as_i64().unwrap_or(0) as u64, a.span)
    });
    Defaults { backend, seed }
}

struct Lower<'a> {
    dir: &'a Path,
    defaults: &'a Defaults,
    stage: &'a str,
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
                kind: str_of(p("kind")),
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
            profile: lt
                .and_then(|l| l.args.first())
                .and_then(|a| a.value.as_str())
                .unwrap_or("none")
                .to_string(),
            imbalance_ratio: f64_of(value(lt, node, "long-tail", "imbalance-ratio")),
            max_per_class: lt
                .and_then(|l| l.prop("max-per-class"))
                .and_then(|p| p.value.as_i64())
                .map(|v| v as u64),
            select: str_of(value(lt, node, "long-tail", "select")),
            seed: u64_of(value(lt, node, "long-tail", "seed")),
        };
        let g = node.child("groups");
        let groups = Groups {
            many: f64_of(value(g, node, "groups", "many")),
            few: f64_of(value(g, node, "groups", "few")),
            rule: str_of(value(g, node, "groups", "rule")),
            relative: bool_of(value(g, node, "groups", "relative")),
        };
        Some(DatasetSpec {
            source: Spanned::new(source, src.span),
            long_tail,
            groups,
        })
    }

    fn backbone(&self, node: &Node) -> Option<BackboneSpec> {
        let data = self.ref_arg(node, "data")?;
        let arch_arg = self.arg(node, "arch")?;
        let arch = Spanned::new(Arch::from_name(arch_arg.value.as_str()?)?, arch_arg.span);
        let weights = if let Some(ck) = node.child("checkpoint") {
            let path = ck.args.first()?;
            Weights::Checkpoint {
                path: self.path_value(path.value.as_str()?.to_string(), path.span),
                format: str_of(ck.prop_or_default("format")),
            }
        } else {
            let t = node.child("train");
            let v = |prop: &str| value(t, node, "train", prop);
            Weights::Train(BackboneTrain {
                epochs: u32_of(v("epochs")),
                batch_size: u32_of(v("batch-size")),
                lr: f64_of(v("lr")),
                momentum: f64_of(v("momentum")),
                weight_decay: f64_of(v("weight-decay")),
                schedule: str_of(v("schedule")),
                warmup_epochs: u32_of(v("warmup-epochs")),
                loss: str_of(v("loss")),
                sampler: str_of(v("sampler")),
                seed: v("seed")
                    .and_then(|s| s.as_i64())
                    .map_or(self.defaults.seed.value, |s| s as u64),
            })
        };
        let augment = node
            .children_named("augment")
            .filter_map(|a| {
                let p = |name: &str| a.prop_or_default(name);
                Some(match a.variant_name()? {
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
                    _ => return None,
                })
            })
            .collect();
        let normalize = str_of(self.arg(node, "normalize").map(|a| a.value));
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
            backbone: self.ref_arg(node, "backbone")?,
            tta: str_of(self.arg(node, "tta").map(|a| a.value)),
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

        let logits = match variant("logits").as_deref() {
            Some("cosine") => Logits::Cosine {
                scale: f64_of(p("logits", "scale")),
            },
            Some("lws") => Logits::Lws,
            _ => Logits::Linear,
        };
        let targets = match variant("targets").as_deref() {
            Some("smoothed") => Targets::Smoothed {
                delta: f64_of(p("targets", "delta")),
            },
            _ => Targets::OneHot,
        };
        let margin = match variant("margin").as_deref() {
            Some("ldam") => Margin::Ldam {
                max_m: f64_of(p("margin", "max-m")),
            },
            Some("balanced-softmax") => Margin::BalancedSoftmax,
            Some("logit-adjust") => Margin::LogitAdjust {
                tau: f64_of(p("margin", "tau")),
            },
            _ => Margin::None,
        };
        let weighting = match variant("weighting").as_deref() {
            Some("class-balanced") => Weighting::ClassBalanced {
                beta: f64_of(p("weighting", "beta")),
                loss: str_of(p("weighting", "loss")),
                gamma: f64_of(p("weighting", "gamma")),
                from_epoch: u32_of(p("weighting", "from-epoch")),
            },
            Some("focal") => Weighting::Focal {
                gamma: f64_of(p("weighting", "gamma")),
            },
            _ => Weighting::None,
        };
        let sampler = match variant("sampler").as_deref() {
            Some("class-balanced") => Sampler::ClassBalanced {
                per_class: u32_of(p("sampler", "per-class")),
            },
            Some("sqrt") => Sampler::Sqrt,
            _ => Sampler::Instance,
        };
        let constraint = match variant("constraint").as_deref() {
            Some("maxnorm") => Constraint::Maxnorm {
                thresh: f64_of(p("constraint", "thresh")),
                radius: p("constraint", "radius").and_then(|v| v.as_f64()),
                every: str_of(p("constraint", "every")),
            },
            _ => Constraint::None,
        };
        let inference = match variant("inference").as_deref() {
            Some("tau-norm") => Inference::TauNorm {
                tau: f64_of(p("inference", "tau")),
                bias: bool_of(p("inference", "bias")),
            },
            Some("logit-adjust") => Inference::LogitAdjust {
                tau: f64_of(p("inference", "tau")),
            },
            _ => Inference::None,
        };

        let t = node.child("train");
        let tv = |prop: &str| t.and_then(|t| t.prop(prop)).map(|p| p.value.value.clone());
        let d = preset.train;
        let train = HeadTrain {
            epochs: tv("epochs").map_or(d.epochs as u32, |v| u32_of(Some(v))),
            batch_size: tv("batch-size").map_or(d.batch_size as u32, |v| u32_of(Some(v))),
            lr: tv("lr").map_or(d.lr, |v| f64_of(Some(v))),
            momentum: f64_of(value(t, node, "train", "momentum")),
            weight_decay: tv("weight-decay").map_or(d.weight_decay, |v| f64_of(Some(v))),
            schedule: str_of(value(t, node, "train", "schedule")),
            seed: tv("seed").map_or(self.defaults.seed.value, |v| u64_of(Some(v))),
        };

        let init = match node.child("init") {
            Some(i) => {
                let kind = i
                    .args
                    .first()
                    .and_then(|a| a.value.as_str())
                    .unwrap_or("random");
                let v = match kind {
                    "backbone" => Init::Backbone,
                    "head" => {
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
                    _ => Init::Random,
                };
                Spanned::new(v, i.span)
            }
            None => Spanned::new(
                if d.init == "backbone" {
                    Init::Backbone
                } else {
                    Init::Random
                },
                method_span,
            ),
        };
        let trials = u32_of(self.arg(node, "trials").map(|a| a.value)).max(1);
        let select = self
            .arg(node, "select")
            .and_then(|a| Some(Spanned::new(a.value.as_str()?.to_string(), a.span)))
            .unwrap_or_else(|| Spanned::new("last".into(), node.name_span));
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
        let metrics = node.child("metrics").map_or_else(
            || vec!["top1".to_string()],
            |m| {
                m.args
                    .iter()
                    .filter_map(|a| a.value.as_str().map(str::to_string))
                    .collect()
            },
        );
        Some(EvaluateSpec {
            heads,
            metrics,
            rsd_over: str_of(self.arg(node, "rsd").map(|a| a.value)),
            plots: self
                .arg(node, "plots")
                .and_then(|a| a.value.as_bool())
                .unwrap_or(true),
        })
    }
}
