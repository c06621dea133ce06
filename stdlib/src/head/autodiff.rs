//! The autodiff step: cosine and LWS logits, focal and BCE losses. The group's weights are one
//! `[D, H, K]` tensor (each head's `Wᵀ`, side by side), bias and LWS scales `[1, H, K]`; the sum
//! of the per-head losses of [`loss`](super::loss) is differentiated once per step, and the
//! update is [`SgdState`]'s.

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};

use super::inference::NORM_EPS;
use super::loss::{LossBatch, LossParams};
use super::plan::{LogitKind, Member};
use super::step::{
    HeadParams, SgdState, StepInput, per_head, per_head_class, per_head_rows, project, read,
    stack_transposed, unstack_transposed,
};

/// Momentum buffers of the trained tensors.
pub(crate) struct Velocity<B: Backend> {
    weight: Option<Tensor<B, 3>>,
    bias: Option<Tensor<B, 3>>,
    scale: Option<Tensor<B, 3>>,
}

/// Rescales class vectors `W_i` of `weight` (`[D, H, K]`) whose norm exceeds the per-head radius
/// (`[1, H, 1]`, `+∞` for unconstrained heads) to that radius.
pub(crate) fn project_maxnorm<B: Backend>(
    weight: Tensor<B, 3>,
    radius: &Tensor<B, 3>,
) -> Tensor<B, 3> {
    let norm = weight.clone().square().sum_dim(0).sqrt();
    // r/‖W_i‖ capped at 1: rows inside the ball are multiplied by exactly 1.
    let factor = (radius.clone() / norm.clamp_min(NORM_EPS)).clamp_max(1.0);
    weight * factor
}

/// A group trained through autodiff: cosine and LWS logits, focal and BCE losses. The trainable
/// tensors live on the inner backend between steps.
pub(crate) struct AutodiffHeads<B: AutodiffBackend> {
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
    pub(crate) fn new(members: &[&Member], k: usize, d: usize, device: &B::Device) -> Self {
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
    pub(crate) fn step(
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

    pub(crate) fn end_epoch(&mut self) {
        if let Some(radius) = &self.epoch_radius {
            self.weight = project_maxnorm(self.weight.clone(), radius);
        }
    }

    pub(crate) fn download(&self) -> Vec<HeadParams> {
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

/// The model's logits `[B, H, K]` for weights `[D, H, K]` and features `[1, B, D]` (shared by all
/// heads: one `[B, D] × [D, H·K]` matmul) or `[H, B, D]` (one batch per head: a batched matmul).
pub(crate) fn forward<B: Backend>(
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

/// The class vectors of `[D, H, K]` weights scaled to unit norm.
pub(crate) fn normalize_columns<B: Backend>(w: Tensor<B, 3>) -> Tensor<B, 3> {
    let norm = w.clone().square().sum_dim(0).sqrt().clamp_min(NORM_EPS);
    w / norm
}

/// `K×K` identity, whose rows are gathered into one-hot labels.
pub(crate) fn eye<B: Backend>(k: usize, device: &B::Device) -> Tensor<B, 2> {
    let mut values = vec![0.0f32; k * k];
    (0..k).for_each(|i| values[i * k + i] = 1.0);
    Tensor::from_data(TensorData::new(values, [k, k]), device)
}
