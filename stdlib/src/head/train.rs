//! The training loop: SGD with momentum on cached features, many heads at once.
//!
//! The train matrix is uploaded to the device once per [`train_heads`] call (and the test matrix
//! once, for the test logits); batches are gathered from it on the device, so per step only the
//! batch's sample ids, labels and class weights (a few KB) cross to the device, and one `[2H]`
//! vector (losses and correct counts) comes back for the divergence check and the history.
//!
//! Heads of one group (see [`plan`](super::plan) for the rule) are stacked: weights `[D, H, K]`
//! (each head's `Wᵀ`, side by side), bias and LWS scales `[1, H, K]`. When the heads share a batch
//! stream a step is one `[B, D] × [D, H·K]` matmul — large enough for gemm to use every core —
//! and logits are `[B, H, K]`; with one stream per head it is a batched `[H, B, D] × [H, D, K]`. The sum of the
//! per-head losses is differentiated once; heads do not interact, so each head's gradient is the
//! gradient of its own loss.
//!
//! The optimiser is written out rather than taken from `burn::optim` because its settings differ
//! per head (lr, momentum, weight decay) and must act as per-head factors. It is PyTorch's SGD:
//! `g ← ∇ + wd·θ` (L2 added to the gradient, on weight and bias alike), `v ← μ·v + g` (the first
//! step gives `v = g`, as PyTorch's buffer initialisation does), `θ ← θ − lr·v`.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};

use super::base::{
    Classifier, EpochStats, FeatureView, HeadJob, HeadProgress, HeadResult, TrainedClassifier,
    TrainedHead,
};
use super::components::log_prior;
use super::error::HeadError;
use super::inference::NORM_EPS;
use super::loss::{LossBatch, LossParams, mul_rows};
use super::plan::{self, LogitKind, Member, SAMPLER_STREAM};
use super::sampler::EpochSampler;
use crate::dataset::Rng;

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
    features.validate()?;
    if let Some(init) = init {
        init.check(features.num_classes, features.dim)?;
    }
    let members = plan::resolve(features, init, jobs)?;
    let groups = plan::group(&members);
    let data = DeviceData::<B::InnerBackend>::upload(device, features);
    let log_prior: Vec<f32> = log_prior(features.class_counts)
        .into_iter()
        .map(|p| p as f32)
        .collect();

    let mut trained: Vec<Option<TrainedHead>> = vec![None; members.len()];
    for (index, group) in groups.iter().enumerate() {
        let group_members: Vec<&Member> = group.iter().map(|&i| &members[i]).collect();
        let mut context = GroupContext {
            device,
            features,
            data: &data,
            jobs,
            log_prior: &log_prior,
            cancel,
            progress: &mut *progress,
            index,
            groups: groups.len(),
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

/// The feature matrices on the device, uploaded once per call; the row-normalised copies that
/// cosine heads read are made on first use.
struct DeviceData<B: Backend> {
    train: Tensor<B, 2>,
    test: Tensor<B, 2>,
    train_normalized: std::cell::OnceCell<Tensor<B, 2>>,
    test_normalized: std::cell::OnceCell<Tensor<B, 2>>,
}

impl<B: Backend> DeviceData<B> {
    fn upload(device: &B::Device, features: &FeatureView<'_>) -> Self {
        let d = features.dim;
        let train = Tensor::from_data(
            TensorData::new(features.train.to_vec(), [features.num_train(), d]),
            device,
        );
        let test = Tensor::from_data(
            TensorData::new(features.test.to_vec(), [features.num_test(), d]),
            device,
        );
        Self {
            train,
            test,
            train_normalized: Default::default(),
            test_normalized: Default::default(),
        }
    }

    fn train(&self, normalized: bool) -> Tensor<B, 2> {
        if normalized {
            self.train_normalized
                .get_or_init(|| normalize_rows(self.train.clone()))
                .clone()
        } else {
            self.train.clone()
        }
    }

    fn test(&self, normalized: bool) -> Tensor<B, 2> {
        if normalized {
            self.test_normalized
                .get_or_init(|| normalize_rows(self.test.clone()))
                .clone()
        } else {
            self.test.clone()
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
    data: &'a DeviceData<B::InnerBackend>,
    jobs: &'a [HeadJob],
    log_prior: &'a [f32],
    cancel: &'a AtomicBool,
    progress: &'a mut dyn FnMut(HeadProgress),
    index: usize,
    groups: usize,
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

/// A per-head multiplier: a plain scalar when every head has the same value (the cheapest op),
/// else `[1, H, K]` rows.
#[derive(Clone)]
enum Factor<B: Backend> {
    Scalar(f32),
    Rows(Tensor<B, 3>),
}

impl<B: Backend> Factor<B> {
    fn new(values: &[f32], k: usize, device: &B::Device) -> Self {
        if values.iter().all(|&v| v == values[0]) {
            Factor::Scalar(values[0])
        } else {
            Factor::Rows(per_head_rows(values, k, device))
        }
    }

    fn is_zero(&self) -> bool {
        matches!(self, Factor::Scalar(v) if *v == 0.0)
    }

    fn mul(&self, t: Tensor<B, 3>) -> Tensor<B, 3> {
        match self {
            Factor::Scalar(v) => t.mul_scalar(*v),
            Factor::Rows(rows) => mul_rows(t, rows.clone()),
        }
    }
}

/// A `[1, H, K]` tensor of one row per head.
fn per_head_class<B: Backend>(rows: &[&[f32]], device: &B::Device) -> Tensor<B, 3> {
    let k = rows.first().map_or(0, |r| r.len());
    let values: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_data(TensorData::new(values, [1, rows.len(), k]), device)
}

/// The trainable state of a group, on the inner (non-autodiff) backend between steps.
struct Params<B: Backend> {
    /// `[D, H, K]`: each head's `Wᵀ`, the layout the matmul reads. Storing `W` as `[H, K, D]` and
    /// transposing in the graph would make every gradient a strided view, and flex's elementwise
    /// ops on strided views are several times slower than on contiguous ones.
    weight: Tensor<B, 3>,
    /// `[1, H, K]`.
    bias: Tensor<B, 3>,
    /// LWS scales, `[1, H, K]`.
    scale: Option<Tensor<B, 3>>,
}

/// Momentum buffers of the trained tensors.
struct Velocity<B: Backend> {
    weight: Option<Tensor<B, 3>>,
    bias: Option<Tensor<B, 3>>,
    scale: Option<Tensor<B, 3>>,
}

/// Per-head optimiser settings for one epoch.
struct SgdState<B: Backend> {
    lr: Factor<B>,
    momentum: Option<Factor<B>>,
    weight_decay: Option<Factor<B>>,
}

impl<B: Backend> SgdState<B> {
    /// One SGD step on `param`, updating its momentum buffer.
    fn step(
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

/// Rescales class vectors `W_i` of `weight` (`[D, H, K]`) whose norm exceeds the per-head radius
/// (`[1, H, 1]`, `+∞` for unconstrained heads) to that radius.
fn project_maxnorm<B: Backend>(weight: Tensor<B, 3>, radius: &Tensor<B, 3>) -> Tensor<B, 3> {
    let norm = weight.clone().square().sum_dim(0).sqrt();
    // r/‖W_i‖ capped at 1: rows inside the ball are multiplied by exactly 1.
    let factor = (radius.clone() / norm.clamp_min(NORM_EPS)).clamp_max(1.0);
    weight * factor
}

fn train_group<B: AutodiffBackend>(
    ctx: &mut GroupContext<'_, '_, B>,
    members: &[&Member],
) -> Result<Vec<TrainedHead>, HeadError> {
    type Inner<B> = <B as AutodiffBackend>::InnerBackend;
    let device = ctx.device;
    let first = members[0];
    let (h, k, d) = (members.len(), ctx.features.num_classes, ctx.features.dim);
    let (kind, epochs, batch_size) = (first.kind, first.epochs, first.batch_size);
    let labels = ctx.features.train_labels;
    let cosine = kind == LogitKind::Cosine;

    // Initial parameters.
    let weights: Vec<&[f32]> = members.iter().map(|m| m.init_weight.as_slice()).collect();
    let bias_init: Vec<f32> = members
        .iter()
        .flat_map(|m| m.init_bias.iter().copied())
        .collect();
    let mut params = Params::<Inner<B>> {
        weight: Tensor::from_data(
            TensorData::new(stack_transposed(&weights, k, d), [d, h, k]),
            device,
        ),
        bias: Tensor::from_data(TensorData::new(bias_init, [1, h, k]), device),
        scale: (kind == LogitKind::Lws).then(|| Tensor::ones([1, h, k], device)),
    };
    let mut history: Vec<Vec<EpochStats>> = vec![Vec::with_capacity(epochs as usize); h];

    if epochs > 0 {
        // Per-head loss constants, skipped entirely when no head of the group uses them.
        let any = |f: &dyn Fn(&Member) -> bool| members.iter().any(|m| f(m));
        let loss = LossParams::<B> {
            form: first.loss_form,
            num_classes: k,
            scale: cosine.then(|| {
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
        let weighted = any(&|m| m.class_weight.iter().any(|&w| w != 1.0));
        let eye: Option<Tensor<Inner<B>, 2>> = loss.needs_one_hot().then(|| eye(k, device));
        let radius = |every_step: bool| {
            any(&|m| matches!(m.maxnorm, Some((_, s)) if s == every_step)).then(|| {
                per_head::<Inner<B>>(
                    members.iter().map(|m| match m.maxnorm {
                        Some((r, s)) if s == every_step => r,
                        _ => f32::INFINITY,
                    }),
                    device,
                )
            })
        };
        let (step_radius, epoch_radius) = (radius(true), radius(false));
        let factor = |f: &dyn Fn(&Member) -> f64| {
            let values: Vec<f32> = members.iter().map(|m| f(m) as f32).collect();
            Some(Factor::<Inner<B>>::new(&values, k, device)).filter(|f| !f.is_zero())
        };
        let momentum = factor(&|m| m.momentum);
        let weight_decay = factor(&|m| m.weight_decay);

        // One batch stream when all heads share a seed, else one per head.
        let shared = members.iter().all(|m| m.seed == first.seed);
        let streams: Vec<u64> = if shared {
            vec![first.seed]
        } else {
            members.iter().map(|m| m.seed).collect()
        };
        let mut samplers: Vec<EpochSampler> = streams
            .iter()
            .map(|&seed| {
                EpochSampler::new(&first.sampler, labels, k, Rng::stream(seed, SAMPLER_STREAM))
            })
            .collect();
        let x_all = ctx.data.train(cosine);
        let mut velocity = Velocity::<Inner<B>> {
            weight: None,
            bias: None,
            scale: None,
        };
        let mut last_finite: Vec<Option<f64>> = vec![None; h];

        for epoch in 0..epochs {
            let lrs: Vec<f64> = members
                .iter()
                .map(|m| plan::lr_at(m.schedule, m.lr, epoch, epochs))
                .collect();
            let sgd = SgdState::<Inner<B>> {
                lr: Factor::new(
                    &lrs.iter().map(|&l| l as f32).collect::<Vec<_>>(),
                    k,
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
            let orders: Vec<Vec<u32>> = samplers.iter_mut().map(EpochSampler::next_epoch).collect();
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
                let streams = orders.len();
                let stream_of = |head: usize| if shared { 0 } else { head };

                // Batch features, one gather for all streams: `[b, D]` shared, `[H, b, D]` per head.
                let ids: Vec<i64> = orders
                    .iter()
                    .flat_map(|o| o[start..end].iter().map(|&i| i64::from(i)))
                    .collect();
                let ids = Tensor::<Inner<B>, 1, Int>::from_data(
                    TensorData::new(ids, [streams * b]),
                    device,
                );
                let x = Tensor::<B, 3>::from_inner(
                    x_all.clone().select(0, ids).reshape([streams, b, d]),
                );

                // Labels (and class weights) of sample `i` for head `j` at `[i, j]`.
                let label =
                    |i: usize, head: usize| labels[orders[stream_of(head)][start + i] as usize];
                let y_host: Vec<i64> = (0..b)
                    .flat_map(|i| (0..h).map(move |j| i64::from(label(i, j))))
                    .collect();
                let weights = epoch_weighted.then(|| {
                    let class_weights = &class_weights;
                    let w: Vec<f32> = (0..b)
                        .flat_map(|i| {
                            (0..h).map(move |j| {
                                let cw = class_weights[j];
                                if cw.is_empty() {
                                    1.0
                                } else {
                                    cw[label(i, j) as usize]
                                }
                            })
                        })
                        .collect();
                    Tensor::<B, 3>::from_data(TensorData::new(w, [b, h, 1]), device)
                });
                let one_hot = eye.as_ref().map(|eye| {
                    let stream_labels: Vec<i64> = (0..b)
                        .flat_map(|i| (0..streams).map(move |s| i64::from(label(i, s))))
                        .collect();
                    let idx = Tensor::<Inner<B>, 1, Int>::from_data(
                        TensorData::new(stream_labels, [b * streams]),
                        device,
                    );
                    Tensor::<B, 3>::from_inner(eye.clone().select(0, idx).reshape([b, streams, k]))
                });
                let y_inner = Tensor::<Inner<B>, 3, Int>::from_data(
                    TensorData::new(y_host, [b, h, 1]),
                    device,
                );
                let batch = LossBatch::<B> {
                    labels: Tensor::from_inner(y_inner.clone()),
                    one_hot,
                    weights,
                };

                // Forward: the model's logits `[b, H, K]`, then the per-head losses.
                let weight = Tensor::<B, 3>::from_inner(params.weight.clone());
                let bias = Tensor::<B, 3>::from_inner(params.bias.clone());
                let (weight, bias, scale) = match kind {
                    LogitKind::Linear => (weight.require_grad(), bias.require_grad(), None),
                    LogitKind::Cosine => (weight.require_grad(), bias, None),
                    LogitKind::Lws => {
                        let scale = params
                            .scale
                            .clone()
                            .map(|s| Tensor::<B, 3>::from_inner(s).require_grad());
                        (weight, bias, scale)
                    }
                };
                let logits = forward(kind, x, weight.clone(), bias.clone(), scale.clone());
                let losses = loss.losses(logits.clone(), &batch);
                let grads = losses.clone().sum().backward();

                // Read back this step's losses and correct counts in one transfer.
                let hits = logits
                    .inner()
                    .argmax(2)
                    .equal(y_inner)
                    .int()
                    .sum_dim(0)
                    .float()
                    .reshape([h]);
                let stats: Vec<f32> = Tensor::cat(vec![losses.inner(), hits], 0)
                    .into_data()
                    .to_vec()
                    .expect("a float tensor should read back as f32");
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

                // SGD on the trained tensors.
                match kind {
                    LogitKind::Linear | LogitKind::Cosine => {
                        let g = weight.grad(&grads).expect("the weight should be tracked");
                        params.weight = sgd.step(params.weight.clone(), g, &mut velocity.weight);
                        if kind == LogitKind::Linear {
                            let g = bias.grad(&grads).expect("the bias should be tracked");
                            params.bias = sgd.step(params.bias.clone(), g, &mut velocity.bias);
                        }
                    }
                    LogitKind::Lws => {
                        let scale = scale.expect("LWS heads should have scales");
                        let g = scale.grad(&grads).expect("the scales should be tracked");
                        let current = params.scale.take().expect("LWS heads should have scales");
                        params.scale = Some(sgd.step(current, g, &mut velocity.scale));
                    }
                }
                if let Some(radius) = &step_radius {
                    params.weight = project_maxnorm(params.weight.clone(), radius);
                }
            }
            if let Some(radius) = &epoch_radius {
                params.weight = project_maxnorm(params.weight.clone(), radius);
            }

            let mut mean_loss = 0.0;
            for head in 0..h {
                let loss = loss_sums[head] / steps as f64;
                mean_loss += loss / h as f64;
                history[head].push(EpochStats {
                    epoch,
                    lr: lrs[head],
                    loss,
                    train_accuracy: correct[head] / len as f64,
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
    finish_group::<Inner<B>>(
        ctx.device,
        ctx.data,
        ctx.features,
        ctx.jobs,
        ctx.log_prior,
        members,
        params,
        history,
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

/// Downloads the trained parameters, applies each head's inference map and computes the test
/// logits of all heads in one batched matmul.
#[allow(clippy::too_many_arguments)]
fn finish_group<B: Backend>(
    device: &B::Device,
    data: &DeviceData<B>,
    features: &FeatureView<'_>,
    jobs: &[HeadJob],
    log_prior: &[f32],
    members: &[&Member],
    params: Params<B>,
    history: Vec<Vec<EpochStats>>,
) -> Result<Vec<TrainedHead>, HeadError> {
    let (h, k, d) = (members.len(), features.num_classes, features.dim);
    let read = |t: Tensor<B, 3>| -> Vec<f32> {
        t.into_data()
            .to_vec()
            .expect("a float tensor should read back as f32")
    };
    let stacked = read(params.weight);
    let bias = read(params.bias);
    let scale = params.scale.map(read);
    let classifiers: Vec<TrainedClassifier> = (0..h)
        .map(|i| TrainedClassifier {
            num_classes: k,
            dim: d,
            logits: members[i].logits.clone(),
            weight: unstack_transposed(&stacked, i, h, k, d),
            bias: bias[i * k..(i + 1) * k].to_vec(),
            lws_scale: scale.as_ref().map(|s| s[i * k..(i + 1) * k].to_vec()),
            log_prior: log_prior.to_vec(),
        })
        .collect();

    // Test logits after the inference map: weights (τ-norm, LWS folding) on the host, then one
    // batched matmul; cosine heads read the normalised test features and normalised rows.
    let cosine = members[0].kind == LogitKind::Cosine;
    let mut w_inf = Vec::with_capacity(h);
    let mut b_inf = Vec::with_capacity(h * k);
    let mut scales = Vec::with_capacity(h);
    for (member, classifier) in members.iter().zip(&classifiers) {
        let mapped = classifier.for_inference(&member.inference);
        w_inf.push(mapped.weight);
        let offset = classifier.inference_offset(&member.inference);
        b_inf.extend(mapped.bias.iter().zip(&offset).map(|(b, o)| b + o));
        scales.push(member.scale);
    }
    let nt = features.num_test();
    let test_logits: Vec<f32> = if nt == 0 {
        Vec::new()
    } else {
        let w_inf: Vec<&[f32]> = w_inf.iter().map(Vec::as_slice).collect();
        let mut w = Tensor::<B, 3>::from_data(
            TensorData::new(stack_transposed(&w_inf, k, d), [d, h, k]),
            device,
        );
        if cosine {
            w = normalize_columns(w);
        }
        let b = Tensor::<B, 3>::from_data(TensorData::new(b_inf, [1, h, k]), device);
        let x = data.test(cosine).reshape([1, nt, d]);
        let mut z = project(x, w);
        if cosine {
            z = mul_rows(z, per_head_rows::<B>(&scales, k, device));
        }
        read(z + b)
    };

    let mut history = history.into_iter();
    Ok(members
        .iter()
        .zip(classifiers)
        .enumerate()
        .map(|(i, (member, classifier))| TrainedHead {
            name: jobs[member.job].name.clone(),
            trial: member.trial,
            seed: member.seed,
            classifier,
            inference: member.inference.clone(),
            history: history.next().unwrap_or_default(),
            // `[N_test, H, K]` → this head's `N_test×K`.
            test_logits: test_logits
                .chunks(h * k)
                .flat_map(|row| row[i * k..(i + 1) * k].iter().copied())
                .collect(),
        })
        .collect())
}
