//! What one head is: its components of the paper's unified form (Eq. 1), its optimisation and
//! how its result is chosen, as plain values. The `head` stage builds a [`HeadConfig`] from the
//! pipeline; benchmarks and tests build one directly ([`HeadConfig::default`] is plain CE).
//!
//! Ranges are checked when a head is planned ([`super::train_heads`] fails with
//! [`HeadError::InvalidSpec`](super::HeadError::InvalidSpec)), so a config built by hand gets the
//! same errors as one from the language.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::plugin::SampleLoss;

/// Logit function `g`.
#[derive(Debug, Clone, PartialEq)]
pub enum Logits {
    /// `W f + b`.
    Linear,
    /// `s · cos(W_i, f)`, no bias (LDAM's `NormedLinear`).
    Cosine {
        /// The scale `s`.
        scale: f64,
        /// Norm to which each initial class vector is scaled (LDAM's `NormedLinear`: 1); `None`
        /// keeps the initial weights.
        init_norm: Option<f64>,
    },
    /// `c ⊙ (W f + b)` with `W`, `b` frozen (learnable weight scaling).
    Lws,
}

/// Training targets.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// One-hot.
    OneHot,
    /// Label smoothing by `delta` (LORT's large δ).
    Smoothed {
        /// δ in `[0, 1)`.
        delta: f64,
    },
}

/// Margins and priors added to the training logits.
#[derive(Debug, Clone, PartialEq)]
pub enum Margin {
    /// None.
    None,
    /// LDAM's `max_m·(n_min/n_j)^{1/4}` on the true class.
    Ldam {
        /// The margin of the rarest class.
        max_m: f64,
    },
    /// `+ log n_j` (balanced softmax).
    BalancedSoftmax,
    /// `+ τ log π_j` (logit-adjusted loss).
    LogitAdjust {
        /// τ.
        tau: f64,
    },
}

/// The base loss that class-balanced weights scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseLoss {
    /// Binary cross-entropy of the softmax, per class (LTWB).
    Bce,
    /// Softmax cross-entropy.
    Softmax,
    /// Focal loss.
    Focal,
}

/// Per-sample weighting `r_w`.
#[derive(Debug, Clone, PartialEq)]
pub enum Weighting {
    /// None.
    None,
    /// Effective-number weights `(1-β)/(1-β^{n_j})`, from epoch `from_epoch` on (DRW).
    ClassBalanced {
        /// β.
        beta: f64,
        /// The loss the weights scale.
        loss: BaseLoss,
        /// γ of the focal base loss.
        gamma: f64,
        /// The first 0-based epoch with weights.
        from_epoch: u32,
    },
    /// Focal modulation `(1-s_y)^γ`.
    Focal {
        /// γ.
        gamma: f64,
    },
}

/// Training sampler `r_s`.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampler {
    /// Every sample once per epoch (PyTorch's `RandomSampler`).
    Instance,
    /// cRT's class-aware round robin.
    ClassBalanced {
        /// Consecutive draws per class visit.
        per_class: u32,
    },
    /// Classes drawn with probability `∝ √n`.
    Sqrt,
}

/// A constraint on the classifier's weight rows.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// None.
    None,
    /// MaxNorm: every row projected into the ball of radius `r`.
    Maxnorm {
        /// Relative threshold (the radius is this quantile of the initial row norms), used when
        /// `radius` is unset.
        thresh: f64,
        /// Absolute radius.
        radius: Option<f64>,
        /// Applied after every optimiser step (else after every epoch).
        every_step: bool,
    },
}

/// Inference map `h`, applied to the trained classifier.
#[derive(Debug, Clone, PartialEq)]
pub enum Inference {
    /// None.
    None,
    /// τ-normalisation of the weight rows.
    TauNorm {
        /// τ.
        tau: f64,
        /// Keep (and scale) the bias.
        bias: bool,
    },
    /// Post-hoc logit adjustment `− τ log π`.
    LogitAdjust {
        /// τ.
        tau: f64,
    },
}

/// A head's learning-rate schedule, stepped once per epoch. Not the backbone's
/// ([`BackboneSchedule`](crate::backbone::BackboneSchedule)): the step decays differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadSchedule {
    /// `CosineAnnealingLR(T_max = epochs, eta_min = 0)`.
    Cosine,
    /// ÷10 at one and two thirds of the epochs (OLTR's `StepLR(10, 0.1)` over 30 epochs).
    StepThirds,
    /// Constant.
    Constant,
}

/// A head's optimisation: PyTorch's SGD.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadTrain {
    /// Epochs (0: the initial classifier, mapped by the inference map only).
    pub epochs: u32,
    /// Batch size.
    pub batch_size: u32,
    /// Initial learning rate.
    pub lr: f64,
    /// Momentum (no dampening, no Nesterov).
    pub momentum: f64,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// Learning-rate schedule.
    pub schedule: HeadSchedule,
}

/// Where a head starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Init {
    /// A fresh linear layer (PyTorch's default initialisation).
    Random,
    /// The backbone's classifier, handed to the trainer.
    Backbone,
    /// Another head's result (by name, for messages), handed to the trainer.
    Head(String),
}

/// Which epoch's weights a trial keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    /// The last epoch's (no evaluation during training).
    Last,
    /// The epoch with the best balanced accuracy on a held-out part of the train split.
    BestVal,
    /// The epoch with the best balanced accuracy on the test split (the reference code's
    /// protocol; it selects on the data it reports).
    BestTest,
}

/// The held-out part of the train split for [`Select::BestVal`]: a class-stratified
/// `fraction`, drawn with `seed`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Holdout {
    /// In `(0, 1)`.
    pub fraction: f64,
    /// Seed of the draw.
    pub seed: u64,
}

/// Builds a plugin's per-sample loss for one head from its properties and the class counts it
/// trains on; an `Err` says what is wrong with the settings.
pub type BuildLoss =
    dyn Fn(&BTreeMap<String, f64>, &[usize]) -> Result<Arc<dyn SampleLoss>, String> + Send + Sync;

/// A plugin's per-sample loss in place of the cross-entropy of `targets` and `margin`.
#[derive(Clone)]
pub struct PluginLoss {
    /// Its name, for grouping and messages.
    pub name: String,
    /// Its properties, defaults filled in.
    pub params: BTreeMap<String, f64>,
    /// Its builder.
    pub build: Arc<BuildLoss>,
}

impl std::fmt::Debug for PluginLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginLoss")
            .field("name", &self.name)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

/// One head: its components, optimisation, start and selection.
#[derive(Debug, Clone)]
pub struct HeadConfig {
    /// Logit function.
    pub logits: Logits,
    /// Targets.
    pub targets: Targets,
    /// Margin or prior during training.
    pub margin: Margin,
    /// A plugin's loss, replacing the cross-entropy of `targets` and `margin`.
    pub plugin_loss: Option<PluginLoss>,
    /// Per-sample weighting.
    pub weighting: Weighting,
    /// Sampler.
    pub sampler: Sampler,
    /// Weight constraint.
    pub constraint: Constraint,
    /// Inference map.
    pub inference: Inference,
    /// Optimisation.
    pub train: HeadTrain,
    /// Start.
    pub init: Init,
    /// Trials (each with the next seed).
    pub trials: u32,
    /// Epoch selection.
    pub select: Select,
    /// The held-out split of [`Select::BestVal`] (default: 10%, seed 0).
    pub validation: Option<Holdout>,
}

impl Default for HeadConfig {
    /// Plain CE: linear, one-hot, instance sampler, random init, 20 epochs, batch 128, lr 0.01,
    /// momentum 0.9, weight decay 5e-4, cosine schedule, one trial, the last epoch.
    fn default() -> Self {
        Self {
            logits: Logits::Linear,
            targets: Targets::OneHot,
            margin: Margin::None,
            plugin_loss: None,
            weighting: Weighting::None,
            sampler: Sampler::Instance,
            constraint: Constraint::None,
            inference: Inference::None,
            train: HeadTrain {
                epochs: 20,
                batch_size: 128,
                lr: 0.01,
                momentum: 0.9,
                weight_decay: 5e-4,
                schedule: HeadSchedule::Cosine,
            },
            init: Init::Random,
            trials: 1,
            select: Select::Last,
            validation: None,
        }
    }
}
