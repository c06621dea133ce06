//! From head configurations to trainable members and groups.
//!
//! Each (job, trial) becomes a [`Member`]: every component resolved to per-class numbers (margins,
//! priors, weights, radius) and checked, so the training loop sees only tensors and flags.
//!
//! **Grouping rule.** Members train together, as one batched computation, when they share what
//! shapes the computation: epochs, batch size, sampler (kind and `per-class`), logit function kind
//! (linear / cosine / LWS), loss form (softmax family / BCE), the held-out validation split of
//! `select "best-val"` (the samples trained on) and whether the closed-form gradient applies (see
//! [`Member::analytic`]; a focal head in a linear sweep trains apart rather than pulling the whole
//! sweep onto the autodiff path). Everything else — δ, lr, momentum, weight decay, schedule,
//! margins, priors, weights, γ, scale, constraint, init, inference map, epoch selection rule and
//! seed — enters as per-head tensors or per-head bookkeeping. If all members of a group have the same seed they draw the
//! same batches, and each batch of features is gathered once for all heads; otherwise every member
//! draws its own batches (its own seed's stream), gathered together into one `[H, B, D]` tensor.
//! Either way a member's result is the same as when it trains alone.

use lortflow_data::dataset::Rng;

use super::base::{Classifier, FeatureView, HeadJob};
use super::components::{
    balanced_softmax_prior, class_balanced_weights, ldam_margins, log_prior, random_linear,
    relative_radius,
};
use super::config::{
    BaseLoss, Constraint, HeadSchedule, Holdout, Inference, Init, Logits, Margin, Sampler, Select,
    Targets, Weighting,
};
use super::error::HeadError;
use super::inference::normalize_rows_in_place;
use super::plugin::ResolvedLoss;

/// Sub-stream of a member's seed that initialises a random head.
pub(crate) const INIT_STREAM: u64 = 0x1417;
/// Sub-stream of a member's seed that orders the training samples.
pub(crate) const SAMPLER_STREAM: u64 = 0x5A3F;
/// Sub-stream of `validation.seed` that picks the held-out samples of each class.
pub(crate) const VALIDATION_STREAM: u64 = 0x7A1D;
/// Held-out fraction of `select "best-val"` without a `validation` node (the schema's default).
pub(crate) const DEFAULT_VALIDATION_FRACTION: f64 = 0.1;

/// The selection rule of a job and, for `best-val`, its held-out split.
pub(crate) fn selection(job: &HeadJob) -> Result<(Select, Option<Holdout>), HeadError> {
    let config = &job.config;
    let invalid = |message: String| HeadError::InvalidSpec {
        job: job.name.clone(),
        message,
    };
    let select = config.select;
    if select != Select::BestVal {
        // A `validation` node without `best-val` is linted; the head then trains on all samples.
        return Ok((select, None));
    }
    let (fraction, seed) = config
        .validation
        .map_or((DEFAULT_VALIDATION_FRACTION, 0), |v| (v.fraction, v.seed));
    if !(fraction.is_finite() && fraction > 0.0 && fraction < 1.0) {
        return Err(invalid(format!(
            "validation `fraction` must be in (0, 1), got {fraction}"
        )));
    }
    Ok((select, Some(Holdout { fraction, seed })))
}

/// The parameterisation of the logits, which decides the trainable tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogitKind {
    /// `W f + b`: trains `W` and `b`.
    Linear,
    /// `s · cos(W_i, f)`: trains `W` (no bias).
    Cosine,
    /// `c ⊙ (W f + b)`: trains `c`, `W` and `b` frozen.
    Lws,
}

/// The functional form of the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LossForm {
    /// `w_y · (1−s_y)^γ · (−Σ_k ỹ_k log s_k)`, normalised by `Σ w_y` or by the batch size.
    Softmax,
    /// LTWB's `binary_cross_entropy(softmax(z), ỹ, weight=w_y)`, mean over `B×K`.
    Bce,
}

/// The learning rate of 0-based `epoch` out of `epochs`.
///
/// Cosine is the closed form of PyTorch's `CosineAnnealingLR` with `eta_min = 0`, stepped once per
/// epoch: `lr·(1 + cos(π·e/T))/2`. Step decays by 10 at one and two thirds of the run (OLTR's
/// `StepLR(10, 0.1)` over 30 epochs).
pub(crate) fn lr_at(schedule: HeadSchedule, lr: f64, epoch: u32, epochs: u32) -> f64 {
    match schedule {
        HeadSchedule::Cosine => {
            lr * 0.5 * (1.0 + (std::f64::consts::PI * epoch as f64 / epochs.max(1) as f64).cos())
        }
        HeadSchedule::StepThirds => {
            let step = epochs.div_ceil(3).max(1);
            lr * 0.1f64.powi((epoch / step) as i32)
        }
        HeadSchedule::Constant => lr,
    }
}

/// One (job, trial), fully resolved.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub job: usize,
    pub trial: u32,
    pub seed: u64,
    pub logits: Logits,
    pub kind: LogitKind,
    pub loss_form: LossForm,
    /// Cosine scale `s`, 1 otherwise.
    pub scale: f32,
    pub delta: f32,
    /// LDAM margins in logit units before scaling (zeros without LDAM).
    pub margin: Vec<f32>,
    /// A plugin's loss, in place of the softmax cross-entropy (with zero `delta` and margins).
    pub plugin_loss: Option<ResolvedLoss>,
    /// Offset added to the training logits (log n, τ log π or zeros).
    pub prior: Vec<f32>,
    /// Class weights once active (ones without class-balanced weighting).
    pub class_weight: Vec<f32>,
    /// 0-based epoch from which `class_weight` applies (DRW).
    pub weight_from: u32,
    pub gamma: f32,
    /// Normalise the weighted loss by `Σ_b w_{y_b}` (PyTorch `weight=`) rather than by `B`.
    pub normalize_by_weight: bool,
    /// MaxNorm radius and whether it is applied after every step (else after every epoch).
    pub maxnorm: Option<(f32, bool)>,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub schedule: HeadSchedule,
    pub epochs: u32,
    pub batch_size: usize,
    pub sampler: Sampler,
    pub init_weight: Vec<f32>,
    pub init_bias: Vec<f32>,
    pub inference: Inference,
    pub select: Select,
    /// The held-out split (`best-val` only); members train on the rest.
    pub holdout: Option<Holdout>,
}

impl Member {
    /// Whether two members can share one batched computation (see the module docs).
    pub(crate) fn same_group(&self, other: &Member) -> bool {
        self.epochs == other.epochs
            && self.batch_size == other.batch_size
            && self.sampler == other.sampler
            && self.kind == other.kind
            && self.loss_form == other.loss_form
            && self.holdout == other.holdout
            && self.analytic() == other.analytic()
            && self.plugin_loss.is_some() == other.plugin_loss.is_some()
    }

    /// Whether the gradient w.r.t. the logits has the closed form `w·(softmax(z') − ỹ)/N` and
    /// the trainer can skip autodiff: linear logits (the parameters enter through one matmul) and
    /// the softmax-family loss without focal modulation. Margins and priors are additive
    /// constants of `z'` and class weights per-sample factors, so they keep the closed form;
    /// cosine and LWS logits, focal and BCE losses take the autodiff path.
    pub(crate) fn analytic(&self) -> bool {
        self.kind == LogitKind::Linear && self.loss_form == LossForm::Softmax && self.gamma == 0.0
    }
}

/// Resolves every trial of every job. `counts[j]` are the class counts job `j` trains on: those
/// of the whole train split, or of what its held-out split leaves.
pub(crate) fn resolve(
    features: &FeatureView<'_>,
    init: Option<&Classifier>,
    jobs: &[HeadJob],
    counts: &[&[usize]],
) -> Result<Vec<Member>, HeadError> {
    let mut members = Vec::new();
    for (index, job) in jobs.iter().enumerate() {
        let trials = job.config.trials.max(1);
        for trial in 0..trials {
            members.push(resolve_one(
                features,
                init,
                index,
                job,
                trial,
                counts[index],
            )?);
        }
    }
    Ok(members)
}

/// Partitions members into groups (indices into `members`, in order of first appearance).
pub(crate) fn group(members: &[Member]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, member) in members.iter().enumerate() {
        match groups.iter_mut().find(|g| members[g[0]].same_group(member)) {
            Some(group) => group.push(i),
            None => groups.push(vec![i]),
        }
    }
    groups
}

fn resolve_one(
    features: &FeatureView<'_>,
    init: Option<&Classifier>,
    job_index: usize,
    job: &HeadJob,
    trial: u32,
    counts: &[usize],
) -> Result<Member, HeadError> {
    let config = &job.config;
    let invalid = |message: String| HeadError::InvalidSpec {
        job: job.name.clone(),
        message,
    };
    let (k, d) = (features.num_classes, features.dim);
    let need_counts = |what: &str| -> Result<(), HeadError> {
        match counts.iter().position(|&n| n == 0) {
            Some(class) => Err(invalid(format!(
                "{what} needs every class in the training set, but class {class} has no samples"
            ))),
            None => Ok(()),
        }
    };
    let finite_in =
        |name: &str, v: f64, lo: f64, hi: f64, hi_open: bool| -> Result<f32, HeadError> {
            let ok = v.is_finite() && v >= lo && if hi_open { v < hi } else { v <= hi };
            if ok {
                Ok(v as f32)
            } else {
                let close = if hi_open { ")" } else { "]" };
                Err(invalid(format!(
                    "`{name}` must be in [{lo}, {hi}{close}, got {v}"
                )))
            }
        };

    let (select, holdout) = selection(job)?;
    let train = &config.train;
    if train.batch_size == 0 {
        return Err(invalid("`batch-size` must be at least 1".into()));
    }
    finite_in("lr", train.lr, 0.0, f64::MAX, false)?;
    finite_in("momentum", train.momentum, 0.0, 1.0, true)?;
    finite_in("weight-decay", train.weight_decay, 0.0, f64::MAX, false)?;
    let schedule = train.schedule;

    let (kind, scale, init_norm) = match config.logits {
        Logits::Linear => (LogitKind::Linear, 1.0, None),
        Logits::Cosine { scale, init_norm } => (
            LogitKind::Cosine,
            finite_in("scale", scale, f64::MIN_POSITIVE, f64::MAX, false)?,
            init_norm
                .map(|n| finite_in("init-norm", n, f64::MIN_POSITIVE, f64::MAX, false))
                .transpose()?,
        ),
        Logits::Lws => (LogitKind::Lws, 1.0, None),
    };
    let delta = match config.targets {
        Targets::OneHot => 0.0,
        Targets::Smoothed { delta } => finite_in("delta", delta, 0.0, 1.0, true)?,
    };
    let zeros = vec![0.0f32; k];
    let (margin, prior) = match config.margin {
        Margin::None => (zeros.clone(), zeros.clone()),
        Margin::Ldam { max_m } => {
            finite_in("max-m", max_m, 0.0, f64::MAX, false)?;
            need_counts("the LDAM margin")?;
            (to_f32(ldam_margins(counts, max_m)), zeros.clone())
        }
        Margin::BalancedSoftmax => {
            need_counts("the balanced-softmax prior")?;
            (zeros.clone(), to_f32(balanced_softmax_prior(counts)))
        }
        Margin::LogitAdjust { tau } => {
            finite_in("tau", tau, 0.0, f64::MAX, false)?;
            (
                zeros.clone(),
                log_prior(counts)
                    .into_iter()
                    .map(|p| (tau * p) as f32)
                    .collect(),
            )
        }
    };
    let ones = vec![1.0f32; k];
    let (class_weight, weight_from, gamma, normalize_by_weight, loss_form) = match &config.weighting
    {
        Weighting::None => (ones, 0, 0.0, true, LossForm::Softmax),
        Weighting::Focal { gamma } => (
            ones,
            0,
            finite_in("gamma", *gamma, 0.0, f64::MAX, false)?,
            true,
            LossForm::Softmax,
        ),
        Weighting::ClassBalanced {
            beta,
            loss,
            gamma,
            from_epoch,
        } => {
            finite_in("beta", *beta, 0.0, 1.0, true)?;
            need_counts("class-balanced weighting")?;
            let weights = to_f32(class_balanced_weights(counts, *beta));
            match loss {
                BaseLoss::Softmax => (weights, *from_epoch, 0.0, true, LossForm::Softmax),
                BaseLoss::Bce => (weights, *from_epoch, 0.0, true, LossForm::Bce),
                // Weighted focal, mean over the batch like LDAM-DRW's `FocalLoss` (without its quirk of
                // taking s_y from the weighted CE).
                BaseLoss::Focal => (
                    weights,
                    *from_epoch,
                    finite_in("gamma", *gamma, 0.0, f64::MAX, false)?,
                    false,
                    LossForm::Softmax,
                ),
            }
        }
    };
    let plugin_loss = match &config.plugin_loss {
        None => None,
        Some(loss) => {
            let name = &loss.name;
            let reshaped = loss_form != LossForm::Softmax || gamma != 0.0;
            if kind != LogitKind::Linear
                || delta != 0.0
                || config.margin != Margin::None
                || reshaped
            {
                return Err(invalid(format!(
                    "the plugin loss `{name}` replaces targets and margin and needs linear logits \
                     and a softmax-weighted (or no) weighting"
                )));
            }
            let built = (loss.build)(&loss.params, counts)
                .map_err(|message| invalid(format!("loss `{name}`: {message}")))?;
            Some(ResolvedLoss {
                name: name.clone(),
                loss: built,
            })
        }
    };
    if let Sampler::ClassBalanced { per_class: 0 } = config.sampler {
        return Err(invalid("`per-class` must be at least 1".into()));
    }

    let seed = job.seed.wrapping_add(u64::from(trial));
    let (mut init_weight, mut init_bias) = match &config.init {
        Init::Random => random_linear(k, d, &mut Rng::stream(seed, INIT_STREAM)),
        Init::Backbone | Init::Head(_) => {
            let Some(classifier) = init else {
                let init = match &config.init {
                    Init::Head(name) => format!("head `{name}`"),
                    _ => "the backbone's classifier".to_string(),
                };
                return Err(HeadError::NoInitialClassifier {
                    job: job.name.clone(),
                    init,
                });
            };
            (classifier.weight.clone(), classifier.bias.clone())
        }
    };
    if kind == LogitKind::Cosine {
        // Cosine logits have no bias (LDAM's `NormedLinear`); an initial bias is dropped.
        init_bias = zeros.clone();
    }
    if let Some(norm) = init_norm {
        // Directions kept: the logits are the same, the first steps are not (lr·s/‖W_i‖²).
        normalize_rows_in_place(&mut init_weight, d);
        init_weight.iter_mut().for_each(|v| *v *= norm);
    }

    let maxnorm = match &config.constraint {
        Constraint::None => None,
        Constraint::Maxnorm {
            thresh,
            radius,
            every_step,
        } => {
            if kind == LogitKind::Lws {
                return Err(invalid(
                    "a MaxNorm constraint has no effect on LWS logits, whose weights are frozen"
                        .into(),
                ));
            }
            let radius = match radius {
                Some(r) => finite_in("radius", *r, f64::MIN_POSITIVE, f64::MAX, false)?,
                None => {
                    let thresh = finite_in("thresh", *thresh, 0.0, 1.0, false)?;
                    let norms = super::base::row_norms(&init_weight, d);
                    relative_radius(&norms, f64::from(thresh)) as f32
                }
            };
            Some((radius, *every_step))
        }
    };
    match config.inference {
        Inference::TauNorm { tau, .. } => {
            finite_in("tau", tau, 0.0, f64::MAX, false)?;
        }
        Inference::LogitAdjust { tau } => {
            finite_in("tau", tau, 0.0, f64::MAX, false)?;
        }
        Inference::None => {}
    }

    Ok(Member {
        job: job_index,
        trial,
        seed,
        logits: config.logits.clone(),
        kind,
        loss_form,
        scale,
        delta,
        margin,
        plugin_loss,
        prior,
        class_weight,
        weight_from,
        gamma,
        normalize_by_weight,
        maxnorm,
        lr: train.lr,
        momentum: train.momentum,
        weight_decay: train.weight_decay,
        schedule,
        epochs: train.epochs,
        batch_size: train.batch_size as usize,
        sampler: config.sampler.clone(),
        init_weight,
        init_bias,
        inference: config.inference.clone(),
        select,
        holdout,
    })
}

fn to_f32(values: Vec<f64>) -> Vec<f32> {
    values.into_iter().map(|v| v as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_schedule_matches_cosine_annealing_lr() {
        // CosineAnnealingLR(T_max=4): 1, 0.8536, 0.5, 0.1464.
        let lrs: Vec<f64> = (0..4)
            .map(|e| lr_at(HeadSchedule::Cosine, 1.0, e, 4))
            .collect();
        for (got, want) in
            lrs.iter()
                .zip([1.0, 0.853_553_390_593_273_8, 0.5, 0.146_446_609_406_726_24])
        {
            assert!((got - want).abs() < 1e-12);
        }
        assert_eq!(lr_at(HeadSchedule::StepThirds, 1.0, 6, 20), 1.0);
        assert!((lr_at(HeadSchedule::StepThirds, 1.0, 7, 20) - 0.1).abs() < 1e-15);
        assert!((lr_at(HeadSchedule::StepThirds, 1.0, 19, 20) - 0.01).abs() < 1e-15);
        assert_eq!(lr_at(HeadSchedule::Constant, 0.3, 9, 10), 0.3);
    }
}
