//! A `head` stage's IR: its components, optimisation, start and selection as a [`HeadConfig`],
//! and the job that trains it.

use std::sync::Arc;

use lortflow_lang::ir;

use crate::head::{
    BaseLoss, Constraint, HeadConfig, HeadJob, HeadSchedule, HeadTrain, Holdout, Inference, Init,
    Logits, Margin, PluginLoss, Sampler, Select, Targets, Weighting,
};
use crate::stages::plugin;

/// The job of head `name`: its configuration and the seed of its first trial. Fails when the
/// head names a plugin loss that this program has not registered.
pub(crate) fn head_job(name: &str, spec: &ir::HeadSpec) -> Result<HeadJob, String> {
    Ok(HeadJob {
        name: name.to_string(),
        config: head_config(spec)?,
        seed: spec.train.seed,
    })
}

/// The head's configuration.
pub(crate) fn head_config(spec: &ir::HeadSpec) -> Result<HeadConfig, String> {
    Ok(HeadConfig {
        logits: logits(&spec.logits.value),
        targets: match spec.targets.value {
            ir::Targets::OneHot => Targets::OneHot,
            ir::Targets::Smoothed { delta } => Targets::Smoothed { delta },
        },
        margin: match spec.margin.value {
            ir::Margin::None => Margin::None,
            ir::Margin::Ldam { max_m } => Margin::Ldam { max_m },
            ir::Margin::BalancedSoftmax => Margin::BalancedSoftmax,
            ir::Margin::LogitAdjust { tau } => Margin::LogitAdjust { tau },
        },
        plugin_loss: spec
            .loss
            .as_ref()
            .map(|loss| plugin_loss(&loss.value))
            .transpose()?,
        weighting: match spec.weighting.value {
            ir::Weighting::None => Weighting::None,
            ir::Weighting::ClassBalanced {
                beta,
                loss,
                gamma,
                from_epoch,
            } => Weighting::ClassBalanced {
                beta,
                loss: match loss {
                    ir::BaseLoss::Bce => BaseLoss::Bce,
                    ir::BaseLoss::Softmax => BaseLoss::Softmax,
                    ir::BaseLoss::Focal => BaseLoss::Focal,
                },
                gamma,
                from_epoch,
            },
            ir::Weighting::Focal { gamma } => Weighting::Focal { gamma },
        },
        sampler: match spec.sampler.value {
            ir::Sampler::Instance => Sampler::Instance,
            ir::Sampler::ClassBalanced { per_class } => Sampler::ClassBalanced { per_class },
            ir::Sampler::Sqrt => Sampler::Sqrt,
        },
        constraint: match spec.constraint.value {
            ir::Constraint::None => Constraint::None,
            ir::Constraint::Maxnorm {
                thresh,
                radius,
                every,
            } => Constraint::Maxnorm {
                thresh,
                radius,
                every_step: every == ir::ConstraintEvery::Step,
            },
        },
        inference: match spec.inference.value {
            ir::Inference::None => Inference::None,
            ir::Inference::TauNorm { tau, bias } => Inference::TauNorm { tau, bias },
            ir::Inference::LogitAdjust { tau } => Inference::LogitAdjust { tau },
        },
        train: HeadTrain {
            epochs: spec.train.epochs,
            batch_size: spec.train.batch_size,
            lr: spec.train.lr,
            momentum: spec.train.momentum,
            weight_decay: spec.train.weight_decay,
            schedule: match spec.train.schedule {
                ir::Schedule::Cosine => HeadSchedule::Cosine,
                ir::Schedule::Step => HeadSchedule::StepThirds,
                ir::Schedule::Constant => HeadSchedule::Constant,
            },
        },
        init: match &spec.init.value {
            ir::Init::Random => Init::Random,
            ir::Init::Backbone => Init::Backbone,
            ir::Init::Head(name) => Init::Head(name.value.clone()),
        },
        trials: spec.trials,
        select: match spec.select.value {
            ir::EpochSelect::Last => Select::Last,
            ir::EpochSelect::BestVal => Select::BestVal,
            ir::EpochSelect::BestTest => Select::BestTest,
        },
        validation: spec.validation.as_ref().map(|v| Holdout {
            fraction: v.fraction,
            seed: v.seed,
        }),
    })
}

/// The logit function.
pub(crate) fn logits(logits: &ir::Logits) -> Logits {
    match *logits {
        ir::Logits::Linear => Logits::Linear,
        ir::Logits::Cosine { scale, init_norm } => Logits::Cosine { scale, init_norm },
        ir::Logits::Lws => Logits::Lws,
    }
}

/// A plugin loss with the builder its registered plugin supplies.
fn plugin_loss(loss: &ir::PluginLoss) -> Result<PluginLoss, String> {
    let plugin = plugin::find(&loss.name).ok_or_else(|| {
        format!(
            "the plugin loss `{}` is not registered with the head trainer; register it with \
             `lortflow_stdlib::stages::register_loss`",
            loss.name
        )
    })?;
    Ok(PluginLoss {
        name: loss.name.clone(),
        params: loss.params.clone(),
        build: Arc::new(move |params, counts| plugin.build(params, counts)),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use lortflow_lang::{MemoryLoader, check_text};

    use super::*;
    use crate::head::tests::{assert_step_paths_agree, job, long_tailed};

    /// One head per variant of every component the schema lists, as the language lowers it (required
    /// properties given a value in range, the rest defaulted), so that a component or variant added
    /// to the schema is trained on every step path without anyone listing it here.
    fn every_component_variant() -> Vec<HeadJob> {
        use lortflow_lang::ir::StageSpec;
        use lortflow_lang::schema::{COMPONENTS, StageKind, ValueType, stage_spec};
        let head = stage_spec(StageKind::Head);
        // LWS only rescales a trained classifier: every head starts from `base` to lint.
        let mut text = String::from(
            "lortflow 1\ndataset \"d\" { source \"synthetic\" kind=\"vectors\" }\n\
             head \"base\" { features \"d\" }\n",
        );
        let mut names = Vec::new();
        for slot in COMPONENTS {
            let node = head
                .child(slot)
                .unwrap_or_else(|| panic!("component `{slot}` is not a child of `head`"));
            for variant in node.all_variants() {
                let props: String = variant
                    .props
                    .iter()
                    .filter(|p| p.required && p.default.is_none())
                    .map(|p| match p.ty {
                        ValueType::Float => format!(" {}=0.5", p.name),
                        ValueType::Int => format!(" {}=2", p.name),
                        ref other => panic!("give `{}` ({other:?}) an example value", p.name),
                    })
                    .collect();
                let name = format!("{slot}-{}", variant.name);
                text.push_str(&format!(
                    "head \"{name}\" {{ features \"d\"; {slot} \"{}\"{props}; init \"head\" head=\"base\" }}\n",
                    variant.name
                ));
                names.push((slot, name));
            }
        }
        text.push_str("evaluate \"t\" { heads \"*\" }\n");
        let checked = lortflow_lang::check_text(
            std::path::Path::new("components.kdl"),
            text,
            &lortflow_lang::MemoryLoader::default(),
        );
        assert!(!checked.has_errors(), "{:#?}", checked.diagnostics);
        names
            .into_iter()
            .map(|(slot, name)| {
                let Some(StageSpec::Head(lowered)) =
                    checked.pipeline.stage(&name).map(|s| s.spec.clone())
                else {
                    panic!("`{name}` did not lower to a head");
                };
                let lowered = head_config(&lowered).unwrap();
                job(&name, |s| match *slot {
                    "logits" => s.logits = lowered.logits,
                    "targets" => s.targets = lowered.targets,
                    "margin" => s.margin = lowered.margin,
                    "weighting" => s.weighting = lowered.weighting,
                    "sampler" => s.sampler = lowered.sampler,
                    "constraint" => s.constraint = lowered.constraint,
                    "inference" => s.inference = lowered.inference,
                    other => panic!("copy the new component `{other}` into the test config here"),
                })
            })
            .collect()
    }

    #[test]
    fn every_component_variant_trains_the_same_on_every_step_path() {
        let jobs = every_component_variant();
        assert!(jobs.len() >= 15, "{} variants", jobs.len());
        assert_step_paths_agree(&long_tailed(5, 8, 60, 10.0, 1.0), &jobs);
    }

    /// A head that names a plugin loss this program has not registered fails with a message
    /// that says how to register it.
    #[test]
    fn a_plugin_loss_that_is_not_registered_is_an_error() {
        let text = "lortflow 1\ndataset \"d\" { source \"synthetic\" kind=\"vectors\" }\n\
                    head \"h\" { features \"d\" }\nevaluate \"t\" { heads \"*\" }\n";
        let checked = check_text(Path::new("p.kdl"), text.into(), &MemoryLoader::default());
        assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
        let Some(ir::StageSpec::Head(spec)) = checked.pipeline.stage("h").map(|s| s.spec.clone())
        else {
            panic!("`h` is a head");
        };
        let mut spec = *spec;
        spec.loss = Some(lortflow_lang::source::Spanned::new(
            ir::PluginLoss {
                name: "not-registered".into(),
                version: "1".into(),
                params: Default::default(),
            },
            lortflow_lang::source::Span::synthetic(),
        ));
        let err = head_job("h", &spec).unwrap_err();
        assert!(err.contains("not registered"), "{err}");
        assert!(err.contains("register_loss"), "{err}");
    }
}
