//! The training loop: SGD with momentum on cached features, many heads at once, and epoch
//! selection.
//!
//! On a GPU the train matrix is uploaded to the device once per [`train_heads`] call (and the
//! test matrix once, for the test logits); batches are gathered from it on the device, so per step
//! only the batch's sample ids, labels and per-sample constants (a few KB) cross to the device,
//! and one `[2H]` vector (losses and correct counts) comes back for the divergence check and the
//! history. On the CPU backend, whose "device" is host memory, closed-form heads train on the
//! (memory-mapped) feature slices directly ([`host`](super::host)), and evaluation and test
//! logits are computed from them in chunks, without a copy of the features (autodiff heads still
//! read an uploaded train matrix).
//!
//! Heads of one group (see [`plan`](super::plan) for the rule) are stacked. When the heads share a
//! batch stream a step is one `[B, D] × [D, H·K]` matmul — large enough for gemm to use every
//! core — and logits are `[B, H, K]`; with one stream per head it is a batched
//! `[H, B, D] × [H, D, K]`. Heads do not interact, so each head's gradient is the gradient of its
//! own loss. Three step implementations share the loop:
//!
//! - linear softmax-family heads without focal modulation (most of the paper's methods, and
//!   every δ / lr / weight-decay sweep of them) take the closed-form gradient: in host memory on
//!   the CPU backend ([`host`](super::host), which also runs plugin losses, on any backend), on
//!   the device otherwise ([`analytic`](super::analytic), the bias folded into the matmul);
//! - cosine and LWS logits, focal and BCE losses differentiate [`loss`](super::loss) with
//!   autodiff: weights `[D, H, K]` (each head's `Wᵀ`, side by side), bias and LWS scales
//!   `[1, H, K]`; the sum of the per-head losses is differentiated once.
//!
//! The optimiser is written out rather than taken from `burn::optim` because its settings differ
//! per head (lr, momentum, weight decay) and must act as per-head factors. It is PyTorch's SGD:
//! `g ← ∇ + wd·θ` (L2 added to the gradient, on weight and bias alike), `v ← μ·v + g` (the first
//! step gives `v = g`, as PyTorch's buffer initialisation does), `θ ← θ − lr·v`.
//!
//! **Epoch selection.** Heads with `select "best-val"` or `"best-test"` are evaluated after every
//! epoch — balanced accuracy of the logits after the inference map, on the held-out split or on
//! the test split — and keep the weights of their best epoch (the earliest on ties). `best-val`
//! heads train without their held-out samples (see [`select`](super::select)); `last` heads are
//! never evaluated during training.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};

use super::analytic::{AnalyticHeads, Layout};
use super::base::{
    EpochStats, FeatureSplit, FeatureView, HeadJob, HeadProgress, HeadResult, TrainedClassifier,
    TrainedHead,
};
use super::components::log_prior;
use super::error::HeadError;
use super::host::{HostHeads, InferenceWeights};
use super::inference::NORM_EPS;
use super::loss::{LossBatch, LossParams, mul_rows};
use super::plan::{self, Holdout, LogitKind, Member, SAMPLER_STREAM, Select};
use super::sampler::EpochSampler;
use super::select::{Split, balanced_accuracy, stratified_split};
use crate::dataset::Rng;
use crate::head::Classifier;

/// Trains every trial of every job and returns them per job, in job order.
///
/// Jobs are split into groups that train as one batched computation (rule in
/// [`plan`](super::plan)). `init` is the classifier that `init "backbone"` and `init "head"` start
/// from; jobs that start from different classifiers need separate calls. `cancel` is checked before
/// every step; `progress` is called after every epoch of every group.
///
/// On CPU the result is deterministic for a given input and seeds.
pub fn train_heads<B: AutodiffBackend>(
    device: &B::Device,
    features: &FeatureView<'_>,
    init: Option<&Classifier>,
    jobs: &[HeadJob],
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(HeadProgress),
) -> Result<Vec<HeadResult>, HeadError> {
    train_heads_with::<B>(
        device,
        features,
        init,
        jobs,
        cancel,
        progress,
        StepPath::Auto,
    )
}

/// Which step implementation trains the analytic heads (tests compare the three).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StepPath {
    /// Host memory ([`host`](super::host)) on the CPU backend, the device otherwise; autodiff for
    /// heads without a closed-form gradient.
    Auto,
    /// The closed form on the device ([`analytic`](super::analytic)), whatever the backend.
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "only tests run the device path on the CPU backend"
        )
    )]
    Device,
    /// Autodiff for every head.
    Autodiff,
}

/// [`train_heads`] through a chosen step implementation.
pub(crate) fn train_heads_with<B: AutodiffBackend>(
    device: &B::Device,
    features: &FeatureView<'_>,
    init: Option<&Classifier>,
    jobs: &[HeadJob],
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(HeadProgress),
    path: StepPath,
) -> Result<Vec<HeadResult>, HeadError> {
    features.validate()?;
    if let Some(init) = init {
        init.check(features.num_classes, features.dim)?;
    }
    // Held-out splits first: `best-val` jobs resolve priors, margins and weights from the class
    // counts of what they train on. One split per distinct `validation` setting.
    let mut splits: Vec<(Holdout, Split)> = Vec::new();
    let mut job_split: Vec<Option<usize>> = Vec::with_capacity(jobs.len());
    for job in jobs {
        let (_, holdout) = plan::selection(job)?;
        job_split.push(holdout.map(|holdout| {
            splits
                .iter()
                .position(|(h, _)| *h == holdout)
                .unwrap_or_else(|| {
                    let split = stratified_split(
                        features.train_labels,
                        features.num_classes,
                        holdout.fraction,
                        holdout.seed,
                    );
                    splits.push((holdout, split));
                    splits.len() - 1
                })
        }));
    }
    for (job, split) in jobs.iter().zip(&job_split) {
        if let Some(split) = split
            && splits[*split].1.val_ids.is_empty()
        {
            return Err(HeadError::InvalidSpec {
                job: job.name.clone(),
                message: "the validation split is empty (every class has fewer than 2 samples, \
                          or the fraction rounds to 0); raise `validation fraction`"
                    .into(),
            });
        }
    }
    let counts: Vec<&[usize]> = job_split
        .iter()
        .map(|s| s.map_or(features.class_counts, |s| splits[s].1.counts.as_slice()))
        .collect();
    let members = plan::resolve(features, init, jobs, &counts)?;
    let groups = plan::group(&members);
    let data = DeviceData::<B::InnerBackend>::new(device, features);
    let log_prior: Vec<f32> = log_prior(features.class_counts)
        .into_iter()
        .map(|p| p as f32)
        .collect();

    let mut trained: Vec<Option<TrainedHead>> = vec![None; members.len()];
    for (index, group) in groups.iter().enumerate() {
        let group_members: Vec<&Member> = group.iter().map(|&i| &members[i]).collect();
        let split = job_split[group_members[0].job].map(|s| &splits[s].1);
        let mut context = GroupContext {
            device,
            features,
            data: &data,
            jobs,
            log_prior: &log_prior,
            split,
            cancel,
            progress: &mut *progress,
            index,
            groups: groups.len(),
            path,
            host: path == StepPath::Auto && is_cpu::<B::InnerBackend>(),
        };
        let heads = train_group::<B>(&mut context, &group_members)?;
        for (&member, head) in group.iter().zip(heads) {
            trained[member] = Some(head);
        }
    }

    let mut results: Vec<HeadResult> = jobs
        .iter()
        .map(|job| HeadResult {
            name: job.name.clone(),
            trials: Vec::new(),
        })
        .collect();
    for (member, head) in members.iter().zip(trained) {
        results[member.job]
            .trials
            .push(head.expect("every member should belong to a group"));
    }
    Ok(results)
}

/// The feature matrices on the device, each uploaded on first use and then shared by all groups
/// of the call: the train matrix as is (autodiff path), with a constant-1 column (analytic path,
/// which folds the bias into the matmul), row-normalised (cosine heads), and the test matrix.
struct DeviceData<'f, B: Backend> {
    device: B::Device,
    features: FeatureView<'f>,
    train: OnceCell<Tensor<B, 2>>,
    train_augmented: OnceCell<Tensor<B, 2>>,
    train_normalized: OnceCell<Tensor<B, 2>>,
    test: OnceCell<Tensor<B, 2>>,
    test_normalized: OnceCell<Tensor<B, 2>>,
}

impl<'f, B: Backend> DeviceData<'f, B> {
    fn new(device: &B::Device, features: &FeatureView<'f>) -> Self {
        Self {
            device: device.clone(),
            features: *features,
            train: OnceCell::new(),
            train_augmented: OnceCell::new(),
            train_normalized: OnceCell::new(),
            test: OnceCell::new(),
            test_normalized: OnceCell::new(),
        }
    }

    fn upload(&self, values: &[f32], rows: usize, cols: usize) -> Tensor<B, 2> {
        Tensor::from_data(TensorData::new(values.to_vec(), [rows, cols]), &self.device)
    }

    fn train(&self, normalized: bool) -> Tensor<B, 2> {
        let f = &self.features;
        self.split(
            &self.train,
            &self.train_normalized,
            f.train,
            f.num_train(),
            normalized,
        )
    }

    /// A split uploaded once (and row-normalised once, for cosine heads), on first use.
    fn split(
        &self,
        plain: &OnceCell<Tensor<B, 2>>,
        normalized_cell: &OnceCell<Tensor<B, 2>>,
        values: &[f32],
        rows: usize,
        normalized: bool,
    ) -> Tensor<B, 2> {
        let plain = || {
            plain
                .get_or_init(|| self.upload(values, rows, self.features.dim))
                .clone()
        };
        if normalized {
            normalized_cell
                .get_or_init(|| normalize_rows(plain()))
                .clone()
        } else {
            plain()
        }
    }

    /// `[N, D+1]`: every row followed by a 1.
    fn train_augmented(&self) -> Tensor<B, 2> {
        self.train_augmented
            .get_or_init(|| {
                let f = &self.features;
                let values: Vec<f32> = f
                    .train
                    .chunks(f.dim)
                    .flat_map(|row| row.iter().copied().chain([1.0]))
                    .collect();
                Tensor::from_data(
                    TensorData::new(values, [f.num_train(), f.dim + 1]),
                    &self.device,
                )
            })
            .clone()
    }

    fn test(&self, normalized: bool) -> Tensor<B, 2> {
        let f = &self.features;
        self.split(
            &self.test,
            &self.test_normalized,
            f.test,
            f.num_test(),
            normalized,
        )
    }

    /// Rows `ids` of the train features, `[ids.len(), D]` (normalised for cosine heads).
    fn train_rows(&self, ids: &[u32], normalized: bool) -> Tensor<B, 2> {
        let f = &self.features;
        let d = f.dim;
        let values: Vec<f32> = ids
            .iter()
            .flat_map(|&i| {
                f.train[i as usize * d..(i as usize + 1) * d]
                    .iter()
                    .copied()
            })
            .collect();
        let rows = self.upload(&values, ids.len(), d);
        if normalized {
            normalize_rows(rows)
        } else {
            rows
        }
    }
}

/// Rows scaled to unit norm (`F.normalize(x, dim=-1)`), for any rank.
fn normalize_rows<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let norm = x.clone().square().sum_dim(D - 1).sqrt().clamp_min(NORM_EPS);
    x / norm
}

struct GroupContext<'a, 'f, B: AutodiffBackend> {
    device: &'a B::Device,
    features: &'a FeatureView<'f>,
    data: &'a DeviceData<'f, B::InnerBackend>,
    jobs: &'a [HeadJob],
    log_prior: &'a [f32],
    /// The held-out split of the group's `best-val` heads.
    split: Option<&'a Split>,
    cancel: &'a AtomicBool,
    progress: &'a mut dyn FnMut(HeadProgress),
    index: usize,
    groups: usize,
    path: StepPath,
    /// Whether the backend computes in host memory (the CPU backend): then the closed-form heads
    /// train on the host, and every group's evaluation and test logits are computed there, from
    /// the (memory-mapped) features rather than from an uploaded copy.
    host: bool,
}

/// Whether `B` is the CPU backend, whose tensors are host memory.
fn is_cpu<B: Backend>() -> bool {
    std::any::TypeId::of::<B>() == std::any::TypeId::of::<crate::backend::CpuBackend>()
}

/// A `[1, H, 1]` tensor of one value per head.
fn per_head<B: Backend>(values: impl IntoIterator<Item = f32>, device: &B::Device) -> Tensor<B, 3> {
    let values: Vec<f32> = values.into_iter().collect();
    let h = values.len();
    Tensor::from_data(TensorData::new(values, [1, h, 1]), device)
}

/// A `[1, H, K]` tensor holding one value per head, repeated over the classes.
///
/// Per-head factors that multiply `[·, H, K]` tensors are stored this way rather than as
/// `[1, H, 1]`, and applied through [`super::loss::mul_rows`]: flex has a SIMD fast path only for a
/// row broadcast over leading dimensions; anything else falls back to a scalar strided loop that
/// was half of all training time.
fn per_head_rows<B: Backend>(values: &[f32], k: usize, device: &B::Device) -> Tensor<B, 3> {
    let rows: Vec<f32> = values
        .iter()
        .flat_map(|&v| std::iter::repeat_n(v, k))
        .collect();
    Tensor::from_data(TensorData::new(rows, [1, values.len(), k]), device)
}

/// Where the head axis of the tensors a [`Factor`] multiplies is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FactorLayout {
    /// `[A, H, K]`: the factor is a `[1, H, K]` row shared by the leading index.
    Rows,
    /// `[H, A, K]`: the factor is one scalar per head over `[H, A·K]`.
    Heads,
}

/// A per-head multiplier: a plain scalar when every head has the same value (the cheapest op),
/// else a tensor laid out for one of flex's fast broadcasts.
#[derive(Clone)]
pub(crate) enum Factor<B: Backend> {
    Scalar(f32),
    /// `[1, H, K]` rows.
    Rows(Tensor<B, 3>),
    /// `[H, 1]`.
    Heads(Tensor<B, 2>),
}

impl<B: Backend> Factor<B> {
    pub(crate) fn new(values: &[f32], k: usize, layout: FactorLayout, device: &B::Device) -> Self {
        if values.iter().all(|&v| v == values[0]) {
            return Factor::Scalar(values[0]);
        }
        match layout {
            FactorLayout::Rows => Factor::Rows(per_head_rows(values, k, device)),
            FactorLayout::Heads => Factor::Heads(Tensor::from_data(
                TensorData::new(values.to_vec(), [values.len(), 1]),
                device,
            )),
        }
    }

    pub(crate) fn is_zero(&self) -> bool {
        matches!(self, Factor::Scalar(v) if *v == 0.0)
    }

    pub(crate) fn mul(&self, t: Tensor<B, 3>) -> Tensor<B, 3> {
        match self {
            Factor::Scalar(v) => t.mul_scalar(*v),
            Factor::Rows(rows) => mul_rows(t, rows.clone()),
            Factor::Heads(heads) => {
                let [h, a, k] = t.dims();
                (t.reshape([h, a * k]) * heads.clone()).reshape([h, a, k])
            }
        }
    }
}

/// A `[1, H, K]` tensor of one row per head.
fn per_head_class<B: Backend>(rows: &[&[f32]], device: &B::Device) -> Tensor<B, 3> {
    let k = rows.first().map_or(0, |r| r.len());
    let values: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_data(TensorData::new(values, [1, rows.len(), k]), device)
}

/// One head's parameters on the host.
#[derive(Debug, Clone)]
pub(crate) struct HeadParams {
    /// `K×D` row-major.
    pub weight: Vec<f32>,
    /// `K`.
    pub bias: Vec<f32>,
    /// LWS scales, `K`.
    pub scale: Option<Vec<f32>>,
}

/// Per-head optimiser settings for one epoch.
pub(crate) struct SgdState<B: Backend> {
    lr: Factor<B>,
    momentum: Option<Factor<B>>,
    weight_decay: Option<Factor<B>>,
}

impl<B: Backend> SgdState<B> {
    /// One SGD step on `param`, updating its momentum buffer.
    pub(crate) fn step(
        &self,
        param: Tensor<B, 3>,
        grad: Tensor<B, 3>,
        velocity: &mut Option<Tensor<B, 3>>,
    ) -> Tensor<B, 3> {
        let mut g = grad;
        if let Some(wd) = &self.weight_decay {
            g = g + wd.mul(param.clone());
        }
        if let Some(momentum) = &self.momentum {
            g = match velocity.take() {
                Some(v) => momentum.mul(v) + g,
                None => g,
            };
            *velocity = Some(g.clone());
        }
        param - self.lr.mul(g)
    }
}

/// The host side of one step: the batch's sample ids and, per (sample, head), labels and class
/// weights.
pub(crate) struct StepInput {
    /// Samples in the batch.
    pub b: usize,
    /// Heads.
    pub h: usize,
    /// Sample ids, `streams × b` (one stream when the heads share batches, else one per head).
    pub ids: Vec<i64>,
    /// Label of sample `i` for head `j` at `i·H + j`.
    pub labels: Vec<u32>,
    /// Class weight of sample `i` for head `j` at `i·H + j`; `None` when all are 1.
    pub weights: Option<Vec<f32>>,
}

impl StepInput {
    pub(crate) fn label(&self, i: usize, j: usize) -> u32 {
        self.labels[i * self.h + j]
    }
}

/// Momentum buffers of the trained tensors.
struct Velocity<B: Backend> {
    weight: Option<Tensor<B, 3>>,
    bias: Option<Tensor<B, 3>>,
    scale: Option<Tensor<B, 3>>,
}

/// Rescales class vectors `W_i` of `weight` (`[D, H, K]`) whose norm exceeds the per-head radius
/// (`[1, H, 1]`, `+∞` for unconstrained heads) to that radius.
fn project_maxnorm<B: Backend>(weight: Tensor<B, 3>, radius: &Tensor<B, 3>) -> Tensor<B, 3> {
    let norm = weight.clone().square().sum_dim(0).sqrt();
    // r/‖W_i‖ capped at 1: rows inside the ball are multiplied by exactly 1.
    let factor = (radius.clone() / norm.clamp_min(NORM_EPS)).clamp_max(1.0);
    weight * factor
}

/// A group trained through autodiff: cosine and LWS logits, focal and BCE losses. The trainable
/// tensors live on the inner backend between steps.
struct AutodiffHeads<B: AutodiffBackend> {
    kind: LogitKind,
    h: usize,
    k: usize,
    d: usize,
    device: B::Device,
    /// `[D, H, K]`: each head's `Wᵀ`, the layout the matmul reads. Storing `W` as `[H, K, D]` and
    /// transposing in the graph would make every gradient a strided view, and flex's elementwise
    /// ops on strided views are several times slower than on contiguous ones.
    weight: Tensor<B::InnerBackend, 3>,
    /// `[1, H, K]`.
    bias: Tensor<B::InnerBackend, 3>,
    /// LWS scales, `[1, H, K]`.
    scale: Option<Tensor<B::InnerBackend, 3>>,
    velocity: Velocity<B::InnerBackend>,
    loss: LossParams<B>,
    /// `K×K` identity whose rows are gathered into one-hot labels, when the loss needs them.
    eye: Option<Tensor<B::InnerBackend, 2>>,
    step_radius: Option<Tensor<B::InnerBackend, 3>>,
    epoch_radius: Option<Tensor<B::InnerBackend, 3>>,
}

impl<B: AutodiffBackend> AutodiffHeads<B> {
    fn new(members: &[&Member], k: usize, d: usize, device: &B::Device) -> Self {
        let first = members[0];
        let h = members.len();
        let kind = first.kind;
        let weights: Vec<&[f32]> = members.iter().map(|m| m.init_weight.as_slice()).collect();
        let bias_init: Vec<f32> = members
            .iter()
            .flat_map(|m| m.init_bias.iter().copied())
            .collect();
        // Per-head loss constants, skipped entirely when no head of the group uses them.
        let any = |f: &dyn Fn(&Member) -> bool| members.iter().any(|m| f(m));
        let loss = LossParams::<B> {
            form: first.loss_form,
            num_classes: k,
            scale: (kind == LogitKind::Cosine).then(|| {
                per_head_rows(
                    &members.iter().map(|m| m.scale).collect::<Vec<_>>(),
                    k,
                    device,
                )
            }),
            scaled_margin: any(&|m| m.margin.iter().any(|&v| v != 0.0)).then(|| {
                let rows: Vec<Vec<f32>> = members
                    .iter()
                    .map(|m| m.margin.iter().map(|v| v * m.scale).collect())
                    .collect();
                per_head_class(&rows.iter().map(Vec::as_slice).collect::<Vec<_>>(), device)
            }),
            prior: any(&|m| m.prior.iter().any(|&v| v != 0.0)).then(|| {
                per_head_class(
                    &members
                        .iter()
                        .map(|m| m.prior.as_slice())
                        .collect::<Vec<_>>(),
                    device,
                )
            }),
            delta: any(&|m| m.delta != 0.0)
                .then(|| per_head(members.iter().map(|m| m.delta), device)),
            gamma: any(&|m| m.gamma != 0.0)
                .then(|| per_head(members.iter().map(|m| m.gamma), device)),
            normalize_by_weight: any(&|m| !m.normalize_by_weight).then(|| {
                per_head(
                    members
                        .iter()
                        .map(|m| f32::from(u8::from(m.normalize_by_weight))),
                    device,
                )
            }),
        };
        let eye = loss.needs_one_hot().then(|| eye(k, device));
        let radius = |every_step: bool| {
            any(&|m| matches!(m.maxnorm, Some((_, s)) if s == every_step)).then(|| {
                per_head::<B::InnerBackend>(
                    members.iter().map(|m| match m.maxnorm {
                        Some((r, s)) if s == every_step => r,
                        _ => f32::INFINITY,
                    }),
                    device,
                )
            })
        };
        Self {
            kind,
            h,
            k,
            d,
            device: device.clone(),
            weight: Tensor::from_data(
                TensorData::new(stack_transposed(&weights, k, d), [d, h, k]),
                device,
            ),
            bias: Tensor::from_data(TensorData::new(bias_init, [1, h, k]), device),
            scale: (kind == LogitKind::Lws).then(|| Tensor::ones([1, h, k], device)),
            velocity: Velocity {
                weight: None,
                bias: None,
                scale: None,
            },
            loss,
            eye,
            step_radius: radius(true),
            epoch_radius: radius(false),
        }
    }

    /// One SGD step; returns `[2H]` losses and correct counts. `x_all` is the train matrix
    /// (row-normalised for cosine heads).
    fn step(
        &mut self,
        x_all: &Tensor<B::InnerBackend, 2>,
        input: &StepInput,
        sgd: &SgdState<B::InnerBackend>,
    ) -> Tensor<B::InnerBackend, 1> {
        let (h, k, d, b) = (self.h, self.k, self.d, input.b);
        let device = &self.device;
        let streams = input.ids.len() / b;
        // Batch features, one gather for all streams: `[1, b, D]` shared, `[H, b, D]` per head.
        let ids = Tensor::<B::InnerBackend, 1, Int>::from_data(
            TensorData::new(input.ids.clone(), [streams * b]),
            device,
        );
        let x = Tensor::<B, 3>::from_inner(x_all.clone().select(0, ids).reshape([streams, b, d]));
        let y_host: Vec<i64> = input.labels.iter().map(|&y| i64::from(y)).collect();
        let weights = input
            .weights
            .as_ref()
            .map(|w| Tensor::<B, 3>::from_data(TensorData::new(w.clone(), [b, h, 1]), device));
        let one_hot = self.eye.as_ref().map(|eye| {
            let stream_labels: Vec<i64> = (0..b)
                .flat_map(|i| (0..streams).map(move |s| i64::from(input.label(i, s))))
                .collect();
            let idx = Tensor::<B::InnerBackend, 1, Int>::from_data(
                TensorData::new(stream_labels, [b * streams]),
                device,
            );
            Tensor::<B, 3>::from_inner(eye.clone().select(0, idx).reshape([b, streams, k]))
        });
        let y_inner = Tensor::<B::InnerBackend, 3, Int>::from_data(
            TensorData::new(y_host, [b, h, 1]),
            device,
        );
        let batch = LossBatch::<B> {
            labels: Tensor::from_inner(y_inner.clone()),
            one_hot,
            weights,
        };

        // Forward: the model's logits `[b, H, K]`, then the per-head losses.
        let weight = Tensor::<B, 3>::from_inner(self.weight.clone());
        let bias = Tensor::<B, 3>::from_inner(self.bias.clone());
        let (weight, bias, scale) = match self.kind {
            LogitKind::Linear => (weight.require_grad(), bias.require_grad(), None),
            LogitKind::Cosine => (weight.require_grad(), bias, None),
            LogitKind::Lws => {
                let scale = self
                    .scale
                    .clone()
                    .map(|s| Tensor::<B, 3>::from_inner(s).require_grad());
                (weight, bias, scale)
            }
        };
        let logits = forward(self.kind, x, weight.clone(), bias.clone(), scale.clone());
        let losses = self.loss.losses(logits.clone(), &batch);
        let grads = losses.clone().sum().backward();
        let hits = logits
            .inner()
            .argmax(2)
            .equal(y_inner)
            .int()
            .sum_dim(0)
            .float()
            .reshape([h]);

        // SGD on the trained tensors.
        match self.kind {
            LogitKind::Linear | LogitKind::Cosine => {
                let g = weight.grad(&grads).expect("the weight should be tracked");
                self.weight = sgd.step(self.weight.clone(), g, &mut self.velocity.weight);
                if self.kind == LogitKind::Linear {
                    let g = bias.grad(&grads).expect("the bias should be tracked");
                    self.bias = sgd.step(self.bias.clone(), g, &mut self.velocity.bias);
                }
            }
            LogitKind::Lws => {
                let scale = scale.expect("LWS heads should have scales");
                let g = scale.grad(&grads).expect("the scales should be tracked");
                let current = self.scale.take().expect("LWS heads should have scales");
                self.scale = Some(sgd.step(current, g, &mut self.velocity.scale));
            }
        }
        if let Some(radius) = &self.step_radius {
            self.weight = project_maxnorm(self.weight.clone(), radius);
        }
        Tensor::cat(vec![losses.inner(), hits], 0)
    }

    fn end_epoch(&mut self) {
        if let Some(radius) = &self.epoch_radius {
            self.weight = project_maxnorm(self.weight.clone(), radius);
        }
    }

    fn download(&self) -> Vec<HeadParams> {
        let (h, k, d) = (self.h, self.k, self.d);
        let stacked = read(self.weight.clone());
        let bias = read(self.bias.clone());
        let scale = self.scale.clone().map(read);
        (0..h)
            .map(|j| HeadParams {
                weight: unstack_transposed(&stacked, j, h, k, d),
                bias: bias[j * k..(j + 1) * k].to_vec(),
                scale: scale.as_ref().map(|s| s[j * k..(j + 1) * k].to_vec()),
            })
            .collect()
    }
}

/// A float tensor's values on the host.
fn read<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .to_vec()
        .expect("a float tensor should read back as f32")
}

/// The two step implementations (see the module docs).
enum Heads<B: AutodiffBackend> {
    Autodiff(Box<AutodiffHeads<B>>),
    Analytic(Box<AnalyticHeads<B::InnerBackend>>),
    Host(Box<HostHeads>),
}

impl<B: AutodiffBackend> Heads<B> {
    /// One step; returns the per-head losses, then the per-head correct counts. `x_all` is the
    /// train matrix on the device (absent for host heads, which read `train`).
    fn step(
        &mut self,
        x_all: Option<&Tensor<B::InnerBackend, 2>>,
        train: &[f32],
        input: &StepInput,
        sgd: &SgdState<B::InnerBackend>,
    ) -> Vec<f32> {
        let on_device = || x_all.expect("device heads have the train matrix on the device");
        match self {
            Heads::Autodiff(heads) => read(heads.step(on_device(), input, sgd)),
            Heads::Analytic(heads) => read(heads.step(on_device(), input)),
            Heads::Host(heads) => heads.step(train, input),
        }
    }

    fn begin_epoch(&mut self, lrs: &[f64]) {
        match self {
            Heads::Autodiff(_) => {}
            Heads::Analytic(heads) => heads.begin_epoch(lrs),
            Heads::Host(heads) => heads.begin_epoch(lrs),
        }
    }

    fn end_epoch(&mut self) {
        match self {
            Heads::Autodiff(heads) => heads.end_epoch(),
            Heads::Analytic(heads) => heads.end_epoch(),
            Heads::Host(heads) => heads.end_epoch(),
        }
    }

    fn download(&self) -> Vec<HeadParams> {
        match self {
            Heads::Autodiff(heads) => heads.download(),
            Heads::Analytic(heads) => heads.download(),
            Heads::Host(heads) => heads.download(),
        }
    }
}

/// What selecting heads are evaluated on after every epoch.
struct EvalSet<'f, B: Backend> {
    features: EvalFeatures<'f, B>,
    labels: Vec<u32>,
}

/// `[N, D]` evaluation features.
enum EvalFeatures<'f, B: Backend> {
    /// On the device, row-normalised for cosine heads.
    Device(Tensor<B, 2>),
    /// In host memory, as stored (the test split is borrowed, held-out rows gathered).
    Host(Cow<'f, [f32]>),
}

fn train_group<B: AutodiffBackend>(
    ctx: &mut GroupContext<'_, '_, B>,
    members: &[&Member],
) -> Result<Vec<TrainedHead>, HeadError> {
    type Inner<B> = <B as AutodiffBackend>::InnerBackend;
    let device = ctx.device;
    let first = members[0];
    let (h, k, d) = (members.len(), ctx.features.num_classes, ctx.features.dim);
    let (epochs, batch_size) = (first.epochs, first.batch_size);
    let cosine = first.kind == LogitKind::Cosine;
    // One batch stream when all heads share a seed, else one per head.
    let shared = members.iter().all(|m| m.seed == first.seed);
    let analytic = first.analytic() && ctx.path != StepPath::Autodiff;
    let layout = if shared {
        Layout::Shared
    } else {
        Layout::PerHead
    };
    // Plugin losses are written for host slices: their groups train on the host on any backend.
    let plugin = first.plugin_loss.is_some();
    debug_assert!(
        !plugin || first.analytic(),
        "plan::resolve admits plugin losses on linear softmax-family heads only"
    );
    let mut heads: Heads<B> = if plugin || (analytic && ctx.host) {
        Heads::Host(Box::new(HostHeads::new(members, layout, k, d)))
    } else if analytic {
        Heads::Analytic(Box::new(AnalyticHeads::new(members, layout, k, d, device)))
    } else {
        Heads::Autodiff(Box::new(AutodiffHeads::new(members, k, d, device)))
    };
    let mut history: Vec<Vec<EpochStats>> = vec![Vec::with_capacity(epochs as usize); h];
    // Per selecting head: best balanced accuracy, its epoch and the weights then.
    let mut best: Vec<Option<(f64, u32, HeadParams)>> = vec![None; h];

    if epochs > 0 {
        let eval =
            members
                .iter()
                .any(|m| m.select != Select::Last)
                .then(|| match (ctx.split, ctx.host) {
                    (Some(split), false) => EvalSet::<Inner<B>> {
                        features: EvalFeatures::Device(ctx.data.train_rows(&split.val_ids, cosine)),
                        labels: split.val_labels.clone(),
                    },
                    (Some(split), true) => EvalSet {
                        features: EvalFeatures::Host(Cow::Owned(
                            split
                                .val_ids
                                .iter()
                                .flat_map(|&i| ctx.features.train_row(i as usize).iter().copied())
                                .collect(),
                        )),
                        labels: split.val_labels.clone(),
                    },
                    (None, false) => EvalSet {
                        features: EvalFeatures::Device(ctx.data.test(cosine)),
                        labels: ctx.features.test_labels.to_vec(),
                    },
                    (None, true) => EvalSet {
                        features: EvalFeatures::Host(Cow::Borrowed(ctx.features.test)),
                        labels: ctx.features.test_labels.to_vec(),
                    },
                });
        // The samples the heads train on: all of the train split, or what the hold-out leaves.
        let (train_ids, train_labels) = match ctx.split {
            Some(split) => (Some(&split.train_ids), split.train_labels.as_slice()),
            None => (None, ctx.features.train_labels),
        };
        let labels = ctx.features.train_labels;
        let weighted = members
            .iter()
            .any(|m| m.class_weight.iter().any(|&w| w != 1.0));
        // (The analytic heads build their own factors, in their layout.)
        let factor_layout = FactorLayout::Rows;
        let factor = |f: &dyn Fn(&Member) -> f64| {
            let values: Vec<f32> = members.iter().map(|m| f(m) as f32).collect();
            Some(Factor::<Inner<B>>::new(&values, k, factor_layout, device))
                .filter(|f| !f.is_zero())
        };
        let momentum = factor(&|m| m.momentum);
        let weight_decay = factor(&|m| m.weight_decay);
        let streams: Vec<u64> = if shared {
            vec![first.seed]
        } else {
            members.iter().map(|m| m.seed).collect()
        };
        let mut samplers: Vec<EpochSampler> = streams
            .iter()
            .map(|&seed| {
                EpochSampler::new(
                    &first.sampler,
                    train_labels,
                    k,
                    Rng::stream(seed, SAMPLER_STREAM),
                )
            })
            .collect();
        let x_all = match &heads {
            Heads::Analytic(_) => Some(ctx.data.train_augmented()),
            Heads::Autodiff(_) => Some(ctx.data.train(cosine)),
            Heads::Host(_) => None,
        };
        let mut last_finite: Vec<Option<f64>> = vec![None; h];

        for epoch in 0..epochs {
            let lrs: Vec<f64> = members
                .iter()
                .map(|m| plan::lr_at(m.schedule, m.lr, epoch, epochs))
                .collect();
            heads.begin_epoch(&lrs);
            let sgd = SgdState::<Inner<B>> {
                lr: Factor::new(
                    &lrs.iter().map(|&l| l as f32).collect::<Vec<_>>(),
                    k,
                    factor_layout,
                    device,
                ),
                momentum: momentum.clone(),
                weight_decay: weight_decay.clone(),
            };
            // Class weights per head for this epoch (DRW: ones before `weight_from`).
            let class_weights: Vec<&[f32]> = members
                .iter()
                .map(|m| {
                    if epoch >= m.weight_from {
                        m.class_weight.as_slice()
                    } else {
                        &[]
                    }
                })
                .collect();
            let epoch_weighted = weighted
                && class_weights
                    .iter()
                    .any(|w| !w.is_empty() && w.iter().any(|&v| v != 1.0));
            // Sampler positions index the training samples; map them to rows of the features.
            let orders: Vec<Vec<u32>> = samplers
                .iter_mut()
                .map(|sampler| {
                    let order = sampler.next_epoch();
                    match train_ids {
                        Some(ids) => order.into_iter().map(|p| ids[p as usize]).collect(),
                        None => order,
                    }
                })
                .collect();
            let len = orders[0].len();
            let steps = len.div_ceil(batch_size);
            let mut loss_sums = vec![0.0f64; h];
            let mut correct = vec![0.0f64; h];

            for step in 0..steps {
                if ctx.cancel.load(Ordering::Relaxed) {
                    return Err(HeadError::Cancelled);
                }
                let (start, end) = (step * batch_size, ((step + 1) * batch_size).min(len));
                let b = end - start;
                let stream_of = |head: usize| if shared { 0 } else { head };
                let label =
                    |i: usize, head: usize| labels[orders[stream_of(head)][start + i] as usize];
                let input = StepInput {
                    b,
                    h,
                    ids: orders
                        .iter()
                        .flat_map(|o| o[start..end].iter().map(|&i| i64::from(i)))
                        .collect(),
                    labels: (0..b)
                        .flat_map(|i| (0..h).map(move |j| label(i, j)))
                        .collect(),
                    weights: epoch_weighted.then(|| {
                        (0..b)
                            .flat_map(|i| {
                                let class_weights = &class_weights;
                                (0..h).map(move |j| {
                                    let cw = class_weights[j];
                                    if cw.is_empty() {
                                        1.0
                                    } else {
                                        cw[label(i, j) as usize]
                                    }
                                })
                            })
                            .collect()
                    }),
                };
                let stats = heads.step(x_all.as_ref(), ctx.features.train, &input, &sgd);
                for head in 0..h {
                    let value = f64::from(stats[head]);
                    if !value.is_finite() {
                        return Err(HeadError::NonFiniteLoss {
                            job: ctx.jobs[members[head].job].name.clone(),
                            epoch,
                            step,
                            loss: value,
                            last_finite: last_finite[head],
                        });
                    }
                    last_finite[head] = Some(value);
                    loss_sums[head] += value;
                    correct[head] += f64::from(stats[h + head]);
                }
            }
            heads.end_epoch();

            // Selection: evaluate every head (one batched matmul), keep the improving ones.
            let accuracy: Vec<Option<f64>> = match &eval {
                Some(eval) => {
                    let params = heads.download();
                    let classifiers = classifiers(members, &params, k, d, ctx.log_prior);
                    let predictions = match &eval.features {
                        EvalFeatures::Device(x) => {
                            predict::<Inner<B>>(device, members, &classifiers, x.clone(), cosine)
                        }
                        EvalFeatures::Host(x) => {
                            let predictions = predict_host(members, &classifiers, x, d, cosine);
                            if ctx.split.is_none() {
                                // The test split, read once per epoch: give its pages back.
                                ctx.features
                                    .release(FeatureSplit::Test, 0..ctx.features.num_test());
                            }
                            predictions
                        }
                    };
                    let n = eval.labels.len();
                    let mut out = vec![None; h];
                    for (j, params) in params.into_iter().enumerate() {
                        if members[j].select == Select::Last {
                            continue;
                        }
                        let mine: Vec<u32> = (0..n).map(|i| predictions[i * h + j]).collect();
                        let value = balanced_accuracy(&mine, &eval.labels, k);
                        out[j] = Some(value);
                        // Strictly better: ties keep the earliest epoch.
                        if best[j].as_ref().is_none_or(|(b, _, _)| value > *b) {
                            best[j] = Some((value, epoch, params));
                        }
                    }
                    out
                }
                None => vec![None; h],
            };

            let mut mean_loss = 0.0;
            for head in 0..h {
                let loss = loss_sums[head] / steps as f64;
                mean_loss += loss / h as f64;
                let select = members[head].select;
                history[head].push(EpochStats {
                    epoch,
                    lr: lrs[head],
                    loss,
                    train_accuracy: correct[head] / len as f64,
                    val_accuracy: accuracy[head].filter(|_| select == Select::BestVal),
                    test_accuracy: accuracy[head].filter(|_| select == Select::BestTest),
                });
            }
            (ctx.progress)(HeadProgress {
                group: ctx.index,
                groups: ctx.groups,
                heads: h,
                epoch: epoch + 1,
                epochs,
                loss: mean_loss,
            });
        }
    }
    if ctx.cancel.load(Ordering::Relaxed) {
        return Err(HeadError::Cancelled);
    }
    if matches!(heads, Heads::Host(_)) {
        // Host heads read the train rows straight from the features; the next group (if any)
        // faults them back in from the page cache.
        ctx.features
            .release(FeatureSplit::Train, 0..ctx.features.num_train());
    }
    let mut params = heads.download();
    let mut selected = vec![epochs.checked_sub(1); h];
    for (j, best) in best.into_iter().enumerate() {
        if let Some((_, epoch, kept)) = best {
            params[j] = kept;
            selected[j] = Some(epoch);
        }
    }
    finish_group::<Inner<B>>(
        ctx.device,
        if ctx.host {
            Logits::Host
        } else {
            Logits::Device(ctx.data)
        },
        ctx.features,
        ctx.jobs,
        ctx.log_prior,
        members,
        params,
        history,
        selected,
    )
}

/// The model's logits `[B, H, K]` for weights `[D, H, K]` and features `[1, B, D]` (shared by all
/// heads: one `[B, D] × [D, H·K]` matmul) or `[H, B, D]` (one batch per head: a batched matmul).
fn forward<B: Backend>(
    kind: LogitKind,
    x: Tensor<B, 3>,
    weight: Tensor<B, 3>,
    bias: Tensor<B, 3>,
    scale: Option<Tensor<B, 3>>,
) -> Tensor<B, 3> {
    // Features arrive normalised for cosine heads (once per call); the weight columns are
    // normalised here, inside the graph, so the gradient sees the normalisation.
    let weight = if kind == LogitKind::Cosine {
        normalize_columns(weight)
    } else {
        weight
    };
    let z = project(x, weight);
    match kind {
        LogitKind::Linear => z + bias,
        LogitKind::Cosine => z,
        LogitKind::Lws => (z + bias) * scale.expect("LWS heads should have scales"),
    }
}

/// `x·W` for every head, `[B, H, K]`, from `x` `[S, B, D]` and `weight` `[D, H, K]`.
fn project<B: Backend>(x: Tensor<B, 3>, weight: Tensor<B, 3>) -> Tensor<B, 3> {
    let [streams, b, d] = x.dims();
    let [_, h, k] = weight.dims();
    if streams == 1 {
        x.reshape([b, d])
            .matmul(weight.reshape([d, h * k]))
            .reshape([b, h, k])
    } else {
        x.matmul(weight.swap_dims(0, 1)).swap_dims(0, 1)
    }
}

/// The class vectors of `[D, H, K]` weights scaled to unit norm.
fn normalize_columns<B: Backend>(w: Tensor<B, 3>) -> Tensor<B, 3> {
    let norm = w.clone().square().sum_dim(0).sqrt().clamp_min(NORM_EPS);
    w / norm
}

/// `H` row-major `K×D` matrices as one `[D, H, K]` buffer (`out[(d·H + h)·K + k] = W_h[k, d]`).
fn stack_transposed(weights: &[&[f32]], k: usize, d: usize) -> Vec<f32> {
    let h = weights.len();
    let mut out = vec![0.0; d * h * k];
    for (head, w) in weights.iter().enumerate() {
        for class in 0..k {
            for j in 0..d {
                out[(j * h + head) * k + class] = w[class * d + j];
            }
        }
    }
    out
}

/// Head `head`'s `K×D` matrix out of a `[D, H, K]` buffer.
fn unstack_transposed(stacked: &[f32], head: usize, h: usize, k: usize, d: usize) -> Vec<f32> {
    let mut out = vec![0.0; k * d];
    for class in 0..k {
        for j in 0..d {
            out[class * d + j] = stacked[(j * h + head) * k + class];
        }
    }
    out
}

/// `K×K` identity, whose rows are gathered into one-hot labels.
fn eye<B: Backend>(k: usize, device: &B::Device) -> Tensor<B, 2> {
    let mut values = vec![0.0f32; k * k];
    (0..k).for_each(|i| values[i * k + i] = 1.0);
    Tensor::from_data(TensorData::new(values, [k, k]), device)
}

/// The classifiers of a group's heads from their host parameters.
fn classifiers(
    members: &[&Member],
    params: &[HeadParams],
    k: usize,
    d: usize,
    log_prior: &[f32],
) -> Vec<TrainedClassifier> {
    members
        .iter()
        .zip(params)
        .map(|(member, p)| TrainedClassifier {
            num_classes: k,
            dim: d,
            logits: member.logits.clone(),
            weight: p.weight.clone(),
            bias: p.bias.clone(),
            lws_scale: p.scale.clone(),
            log_prior: log_prior.to_vec(),
        })
        .collect()
}

/// Logits after each head's inference map for features `x` (`[N, D]`, row-normalised for cosine
/// heads), `[N, H, K]`: weights mapped on the host (τ-norm, LWS folding), then one batched matmul.
fn inference_logits<B: Backend>(
    device: &B::Device,
    members: &[&Member],
    classifiers: &[TrainedClassifier],
    x: Tensor<B, 2>,
    cosine: bool,
) -> Tensor<B, 3> {
    let h = members.len();
    let [n, d] = x.dims();
    let k = classifiers[0].num_classes;
    let mut w_inf = Vec::with_capacity(h);
    let mut b_inf = Vec::with_capacity(h * k);
    let mut scales = Vec::with_capacity(h);
    for (member, classifier) in members.iter().zip(classifiers) {
        let mapped = classifier.for_inference(&member.inference);
        w_inf.push(mapped.weight);
        let offset = classifier.inference_offset(&member.inference);
        b_inf.extend(mapped.bias.iter().zip(&offset).map(|(b, o)| b + o));
        scales.push(member.scale);
    }
    let w_inf: Vec<&[f32]> = w_inf.iter().map(Vec::as_slice).collect();
    let mut w = Tensor::<B, 3>::from_data(
        TensorData::new(stack_transposed(&w_inf, k, d), [d, h, k]),
        device,
    );
    if cosine {
        w = normalize_columns(w);
    }
    let b = Tensor::<B, 3>::from_data(TensorData::new(b_inf, [1, h, k]), device);
    let mut z = project(x.reshape([1, n, d]), w);
    if cosine {
        z = mul_rows(z, per_head_rows::<B>(&scales, k, device));
    }
    z + b
}

/// The inference maps of a group's heads as host matrices: [`inference_logits`] without a
/// device.
fn inference_weights(
    members: &[&Member],
    classifiers: &[TrainedClassifier],
    cosine: bool,
) -> InferenceWeights {
    let k = classifiers[0].num_classes;
    let d = classifiers[0].dim;
    let h = members.len();
    let mut w_inf = Vec::with_capacity(h);
    let mut bias = Vec::with_capacity(h * k);
    for (member, classifier) in members.iter().zip(classifiers) {
        let mapped = classifier.for_inference(&member.inference);
        w_inf.push(mapped.weight);
        let offset = classifier.inference_offset(&member.inference);
        bias.extend(mapped.bias.iter().zip(&offset).map(|(b, o)| b + o));
    }
    if cosine {
        for w in &mut w_inf {
            for row in w.chunks_mut(d) {
                let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(NORM_EPS);
                row.iter_mut().for_each(|v| *v /= norm);
            }
        }
    }
    let w_inf: Vec<&[f32]> = w_inf.iter().map(Vec::as_slice).collect();
    InferenceWeights {
        weight: stack_transposed(&w_inf, k, d),
        bias,
        scale: members
            .iter()
            .map(|m| if cosine { m.scale } else { 1.0 })
            .collect(),
        cosine,
        k,
    }
}

/// [`predict`] on host rows `x` (`[N, D]`, as stored).
fn predict_host(
    members: &[&Member],
    classifiers: &[TrainedClassifier],
    x: &[f32],
    d: usize,
    cosine: bool,
) -> Vec<u32> {
    let weights = inference_weights(members, classifiers, cosine);
    let k = weights.k;
    let mut out = Vec::with_capacity(x.len() / d.max(1) * members.len());
    weights.logits(x, d, |_, logits| {
        out.extend(
            logits
                .chunks(k)
                .map(|z| (0..k).fold(0, |best, c| if z[c] > z[best] { c } else { best }) as u32),
        );
    });
    out
}

/// Where [`finish_group`] computes the test logits.
enum Logits<'d, 'f, B: Backend> {
    Device(&'d DeviceData<'f, B>),
    Host,
}

/// Argmax predictions of every head after its inference map, `[N, H]` row-major.
fn predict<B: Backend>(
    device: &B::Device,
    members: &[&Member],
    classifiers: &[TrainedClassifier],
    x: Tensor<B, 2>,
    cosine: bool,
) -> Vec<u32> {
    if x.dims()[0] == 0 {
        return Vec::new();
    }
    inference_logits(device, members, classifiers, x, cosine)
        .argmax(2)
        .into_data()
        .iter::<i64>()
        .map(|c| c as u32)
        .collect()
}

/// Applies each head's inference map to its selected parameters and computes the test logits of
/// all heads in one batched matmul.
#[allow(clippy::too_many_arguments)]
fn finish_group<B: Backend>(
    device: &B::Device,
    logits_on: Logits<'_, '_, B>,
    features: &FeatureView<'_>,
    jobs: &[HeadJob],
    log_prior: &[f32],
    members: &[&Member],
    params: Vec<HeadParams>,
    history: Vec<Vec<EpochStats>>,
    selected: Vec<Option<u32>>,
) -> Result<Vec<TrainedHead>, HeadError> {
    let (h, k, d) = (members.len(), features.num_classes, features.dim);
    let classifiers = classifiers(members, &params, k, d, log_prior);
    let cosine = members[0].kind == LogitKind::Cosine;
    let n_test = features.num_test();
    // Per head: `N_test×K`.
    let mut test_logits: Vec<Vec<f32>> = vec![Vec::with_capacity(n_test * k); h];
    if n_test > 0 {
        match logits_on {
            Logits::Device(data) => {
                let all = read(inference_logits(
                    device,
                    members,
                    &classifiers,
                    data.test(cosine),
                    cosine,
                ));
                // `[N_test, H, K]` → per head.
                for row in all.chunks(h * k) {
                    for (out, z) in test_logits.iter_mut().zip(row.chunks(k)) {
                        out.extend_from_slice(z);
                    }
                }
            }
            Logits::Host => {
                inference_weights(members, &classifiers, cosine).logits(
                    features.test,
                    d,
                    |start, chunk| {
                        for row in chunk.chunks(h * k) {
                            for (out, z) in test_logits.iter_mut().zip(row.chunks(k)) {
                                out.extend_from_slice(z);
                            }
                        }
                        let rows = chunk.len() / (h * k).max(1);
                        features.release(FeatureSplit::Test, start..start + rows);
                    },
                );
            }
        }
    }

    let mut history = history.into_iter();
    Ok(members
        .iter()
        .zip(classifiers)
        .zip(selected)
        .zip(test_logits)
        .map(
            |(((member, classifier), selected_epoch), test_logits)| TrainedHead {
                name: jobs[member.job].name.clone(),
                trial: member.trial,
                seed: member.seed,
                classifier,
                inference: member.inference.clone(),
                history: history.next().unwrap_or_default(),
                selected_epoch,
                test_logits,
            },
        )
        .collect())
}
