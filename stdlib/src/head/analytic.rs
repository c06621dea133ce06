//! The closed-form training step of linear softmax-family heads, without autodiff.
//!
//! For linear logits `z = W f + b` and the loss of [`loss`](super::loss) with `γ = 0`, the
//! gradient w.r.t. the logits is known in closed form: margins and priors are constants added to
//! `z`, so `∂L/∂z = c ⊙ (softmax(z') − ỹ)` with `c_b = w_{y_b} / N` (`N` = `Σ_b w_{y_b}` or the
//! batch size) and `ỹ = (1−δ)·e_y + δ/K`. The weight gradient is then one matmul, `Xᵀ·G`.
//! Autodiff would compute the same numbers through a graph of ~30 recorded ops per step; here a
//! step is two matmuls, one fused softmax and a handful of elementwise ops, all on the inner
//! backend.
//!
//! The bias is folded into the weights: features carry a constant 1 as their last column
//! (`[N, D+1]`, uploaded once) and the weights a last row holding `b`, so the forward matmul adds
//! the bias and the gradient matmul produces `∂L/∂b` (`Σ_b G_b`) as its last row. Both get the same
//! SGD update (weight decay applies to the bias too, as PyTorch's SGD does over `parameters()`).
//!
//! Two layouts, as in the autodiff path (see [`train`](super::train)):
//! - heads sharing a batch stream: weights `[D+1, H, K]`, one `[B, D+1] × [D+1, H·K]` matmul
//!   forward and one `[D+1, B] × [B, H·K]` for the gradient; logits `[B, H, K]`;
//! - one stream per head: weights `[H, D+1, K]`, batched `[H, B, D+1] × [H, D+1, K]` forward and
//!   `[H, D+1, B] × [H, B, K]` backward; logits `[H, B, K]`.
//!
//! Every elementwise op is arranged to hit one of flex's two SIMD broadcast kernels (a row shared
//! by all outer indices, or one scalar per contiguous row; see `backbone/fast_bn.rs`): per-sample
//! factors are `[·, ·, 1]` per-row scalars, per-head rows are `[1, 1, H·K]` or per-head scalars
//! `[H, 1]` over `[H, (D+1)·K]`.

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

use super::inference::NORM_EPS;
use super::loss::add_rows;
use super::plan::Member;
use super::step::{Factor, FactorLayout, HeadParams, StepInput};

/// Where the sample and head axes of per-step tensors are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `[B, H, ·]`: all heads read the same batch.
    Shared,
    /// `[H, B, ·]`: every head reads its own batch.
    PerHead,
}

impl Layout {
    /// The axis of per-step tensors that indexes samples.
    fn sample_axis(self) -> usize {
        match self {
            Layout::Shared => 0,
            Layout::PerHead => 1,
        }
    }

    /// The shape of a per-(sample, head) tensor `[·, ·, 1]`.
    fn dims(self, b: usize, h: usize) -> [usize; 3] {
        match self {
            Layout::Shared => [b, h, 1],
            Layout::PerHead => [h, b, 1],
        }
    }

    /// The flat index of (sample `i`, head `j`) in such a tensor.
    fn index(self, i: usize, j: usize, b: usize, h: usize) -> usize {
        match self {
            Layout::Shared => i * h + j,
            Layout::PerHead => j * b + i,
        }
    }
}

/// Every head's per-class values (`f(member)`, `K` each) side by side; `None` when all are
/// zero, so that the step can skip the term.
pub(crate) fn per_class_nonzero(
    members: &[&Member],
    f: impl Fn(&Member) -> &[f32],
) -> Option<Vec<f32>> {
    members
        .iter()
        .any(|m| f(m).iter().any(|&v| v != 0.0))
        .then(|| members.iter().flat_map(|m| f(m).iter().copied()).collect())
}

/// MaxNorm radii per head for the constraints applied after every step (`every_step`) or every
/// epoch (`+∞` for heads without one); `None` when no head has such a constraint.
pub(crate) fn maxnorm_radii(members: &[&Member], every_step: bool) -> Option<Vec<f32>> {
    members
        .iter()
        .any(|m| matches!(m.maxnorm, Some((_, s)) if s == every_step))
        .then(|| {
            members
                .iter()
                .map(|m| match m.maxnorm {
                    Some((r, s)) if s == every_step => r,
                    _ => f32::INFINITY,
                })
                .collect()
        })
}

/// Per head, the factor `lr/lr_prev` that rescales the momentum buffer `s = lr·v` when the
/// learning rate changes; 0 for a head whose previous rate was 0 (it never moved).
pub(crate) fn momentum_rescale(previous: &[f32], next: &[f32]) -> Vec<f32> {
    previous
        .iter()
        .zip(next)
        .map(|(&prev, &next)| if prev > 0.0 { next / prev } else { 0.0 })
        .collect()
}

/// A group of linear softmax-family heads trained with closed-form gradients.
pub(crate) struct AnalyticHeads<B: Backend> {
    device: B::Device,
    layout: Layout,
    h: usize,
    k: usize,
    d: usize,
    /// Augmented weights (last row of each head's `Wᵀ` block is its bias): `[D+1, H, K]` shared,
    /// `[H, D+1, K]` per head. Taken out during a step so that it is the only reference to its
    /// buffer and flex updates it in place.
    weight: Option<Tensor<B, 3>>,
    /// The momentum buffer scaled by the learning rate, `s = lr·v` (see [`Self::begin_epoch`]).
    velocity: Option<Tensor<B, 3>>,
    /// Per-head SGD settings.
    lr: Vec<f32>,
    momentum: Vec<f32>,
    weight_decay: Vec<f32>,
    /// `μ` on `s`, and this epoch's `lr·wd` on the weights (`None` when zero).
    decay: Option<Factor<B>>,
    shrink: Option<Factor<B>>,
    /// `1 − δ` and `δ` per head.
    delta: Vec<f32>,
    any_delta: bool,
    /// Training-only logit offsets per head (`K` each), if any head has one.
    prior: Option<Vec<f32>>,
    /// The prior as `[1, H, K]` rows (shared layout) or `[H, B, K]` for the last batch size seen
    /// (per-head layout, where a `[H, 1, K]` broadcast would leave flex's fast paths).
    prior_tensor: Option<(usize, Tensor<B, 3>)>,
    /// LDAM margins per head (`K` each, in logit units), if any head has one.
    margin: Option<Vec<f32>>,
    normalize_by_weight: Vec<bool>,
    /// MaxNorm radii per head (`+∞` where unconstrained), applied after every step / epoch.
    step_radius: Option<Vec<f32>>,
    epoch_radius: Option<Vec<f32>>,
}

impl<B: Backend> AnalyticHeads<B> {
    pub(crate) fn new(
        members: &[&Member],
        layout: Layout,
        k: usize,
        d: usize,
        device: &B::Device,
    ) -> Self {
        let h = members.len();
        let d1 = d + 1;
        let mut weight = vec![0.0f32; d1 * h * k];
        for (j, member) in members.iter().enumerate() {
            for class in 0..k {
                let row = &member.init_weight[class * d..(class + 1) * d];
                for (i, &w) in row.iter().chain([&member.init_bias[class]]).enumerate() {
                    weight[match layout {
                        Layout::Shared => (i * h + j) * k + class,
                        Layout::PerHead => (j * d1 + i) * k + class,
                    }] = w;
                }
            }
        }
        let shape = match layout {
            Layout::Shared => [d1, h, k],
            Layout::PerHead => [h, d1, k],
        };
        Self {
            device: device.clone(),
            layout,
            h,
            k,
            d,
            weight: Some(Tensor::from_data(TensorData::new(weight, shape), device)),
            velocity: None,
            lr: vec![0.0; h],
            momentum: members.iter().map(|m| m.momentum as f32).collect(),
            weight_decay: members.iter().map(|m| m.weight_decay as f32).collect(),
            decay: None,
            shrink: None,
            delta: members.iter().map(|m| m.delta).collect(),
            any_delta: members.iter().any(|m| m.delta != 0.0),
            prior: per_class_nonzero(members, |m| &m.prior),
            prior_tensor: None,
            margin: per_class_nonzero(members, |m| &m.margin),
            normalize_by_weight: members.iter().map(|m| m.normalize_by_weight).collect(),
            step_radius: maxnorm_radii(members, true),
            epoch_radius: maxnorm_radii(members, false),
        }
    }

    /// Sets this epoch's learning rates.
    ///
    /// PyTorch's SGD is `v ← μ·v + g + wd·θ`, `θ ← θ − lr·v`. Here the buffer holds `s = lr·v`
    /// instead: `s ← μ·s + lr·g + lr·wd·θ`, `θ ← θ − s` — the same iterates, with `lr·g` coming
    /// out of the gradient matmul for free (the learning rate is folded into the per-sample
    /// coefficients of `G`) and one pass over the weights fewer per step. When the rate changes
    /// (once per epoch) the buffer is rescaled by `lr/lr_prev`; a head whose previous rate was 0
    /// has `s = 0` (it never moved), and the schedules never raise a rate from 0.
    pub(crate) fn begin_epoch(&mut self, lrs: &[f64]) {
        let lrs: Vec<f32> = lrs.iter().map(|&l| l as f32).collect();
        let layout = match self.layout {
            Layout::Shared => FactorLayout::Rows,
            Layout::PerHead => FactorLayout::Heads,
        };
        let factor = |values: &[f32]| Factor::new(values, self.k, layout, &self.device);
        if let Some(s) = self.velocity.take() {
            let ratio = momentum_rescale(&self.lr, &lrs);
            self.velocity = Some(if ratio.iter().all(|&r| r == 1.0) {
                s
            } else {
                factor(&ratio).mul(s)
            });
        }
        if self.decay.is_none() {
            self.decay = Some(factor(&self.momentum)).filter(|f| !f.is_zero());
        }
        let shrink: Vec<f32> = (0..self.h).map(|j| lrs[j] * self.weight_decay[j]).collect();
        self.shrink = Some(factor(&shrink)).filter(|f| !f.is_zero());
        self.lr = lrs;
    }

    /// A `[·, ·, 1]` tensor of per-(sample, head) values.
    fn per_sample(&self, values: Vec<f32>, b: usize) -> Tensor<B, 3> {
        Tensor::from_data(
            TensorData::new(values, self.layout.dims(b, self.h)),
            &self.device,
        )
    }

    /// `z + prior`.
    fn add_prior(&mut self, z: Tensor<B, 3>, b: usize) -> Tensor<B, 3> {
        let Some(prior) = &self.prior else {
            return z;
        };
        let (h, k) = (self.h, self.k);
        let stale = match (&self.prior_tensor, self.layout) {
            (None, _) => true,
            (Some((rows, _)), Layout::PerHead) => *rows != b,
            (Some(_), Layout::Shared) => false,
        };
        if stale {
            let tensor = match self.layout {
                Layout::Shared => {
                    Tensor::from_data(TensorData::new(prior.clone(), [1, h, k]), &self.device)
                }
                Layout::PerHead => {
                    let dense: Vec<f32> = prior
                        .chunks(k)
                        .flat_map(|row| std::iter::repeat_n(row, b).flatten().copied())
                        .collect();
                    Tensor::from_data(TensorData::new(dense, [h, b, k]), &self.device)
                }
            };
            self.prior_tensor = Some((b, tensor));
        }
        let (_, tensor) = self
            .prior_tensor
            .as_ref()
            .expect("the prior was just built");
        match self.layout {
            Layout::Shared => add_rows(z, tensor.clone()),
            Layout::PerHead => z + tensor.clone(),
        }
    }

    /// One SGD step on a batch; returns `[2H]`: the per-head losses, then the per-head numbers of
    /// correct argmax predictions of the raw logits.
    ///
    /// `x_all` is the augmented train matrix `[N, D+1]`.
    pub(crate) fn step(&mut self, x_all: &Tensor<B, 2>, input: &StepInput) -> Tensor<B, 1> {
        let (h, k, d1, b) = (self.h, self.k, self.d + 1, input.b);
        let layout = self.layout;
        let streams = match layout {
            Layout::Shared => 1,
            Layout::PerHead => h,
        };
        let ids = Tensor::<B, 1, Int>::from_data(
            TensorData::new(input.ids.clone(), [streams * b]),
            &self.device,
        );
        let x = x_all.clone().select(0, ids).reshape([streams, b, d1]);

        // Per-(sample, head) constants of the loss and its gradient, from the host: labels,
        // `c = w/N`, `−c·(1−δ)` (the one-hot part of the target) and `c·δ` (its uniform part) for
        // the loss; the same times the head's learning rate for the gradient (`δ/K` for the
        // uniform part).
        let norms: Vec<f32> = (0..h)
            .map(|j| match &input.weights {
                Some(w) if self.normalize_by_weight[j] => (0..b).map(|i| w[i * h + j]).sum(),
                _ => b as f32,
            })
            .collect();
        let n = b * h;
        let mut labels = vec![0i64; n];
        let (mut coef, mut one_hot_coef) = (vec![0f32; n], vec![0f32; n]);
        let (mut grad_coef, mut grad_one_hot) = (vec![0f32; n], vec![0f32; n]);
        let (mut grad_uniform, mut uniform_loss) = if self.any_delta {
            (vec![0f32; n], vec![0f32; n])
        } else {
            (Vec::new(), Vec::new())
        };
        let mut margins = self.margin.as_ref().map(|_| vec![0f32; n]);
        for i in 0..b {
            for j in 0..h {
                let at = layout.index(i, j, b, h);
                let y = input.label(i, j);
                let weight = input.weights.as_ref().map_or(1.0, |w| w[i * h + j]);
                let c = weight / norms[j];
                let (delta, lr) = (self.delta[j], self.lr[j]);
                labels[at] = i64::from(y);
                coef[at] = c;
                one_hot_coef[at] = -c * (1.0 - delta);
                grad_coef[at] = c * lr;
                grad_one_hot[at] = -c * lr * (1.0 - delta);
                if self.any_delta {
                    grad_uniform[at] = c * lr * delta / k as f32;
                    uniform_loss[at] = c * delta;
                }
                if let (Some(out), Some(margin)) = (&mut margins, &self.margin) {
                    out[at] = -margin[j * k + y as usize];
                }
            }
        }
        let labels = Tensor::<B, 3, Int>::from_data(
            TensorData::new(labels, layout.dims(b, h)),
            &self.device,
        );
        let coef = self.per_sample(coef, b);
        let one_hot_coef = self.per_sample(one_hot_coef, b);

        // Forward: raw logits (the bias comes from the features' constant column).
        let weight = self
            .weight
            .take()
            .expect("the weights are only taken during a step");
        let z = match layout {
            Layout::Shared => x
                .clone()
                .reshape([b, d1])
                .matmul(weight.clone().reshape([d1, h * k]))
                .reshape([b, h, k]),
            Layout::PerHead => x.clone().matmul(weight.clone()),
        };
        let (z_max, z_arg) = z.clone().max_dim_with_indices(2);
        let hits = z_arg
            .clone()
            .equal(labels.clone())
            .int()
            .sum_dim(layout.sample_axis())
            .float()
            .reshape([h]);

        // Training logits `z' = z + p − m ⊙ e_y`, and their row maxima and argmaxima.
        let (z, z_max, z_arg) = if self.prior.is_some() || margins.is_some() {
            let mut z = self.add_prior(z, b);
            if let Some(margins) = margins {
                z = z.scatter(
                    2,
                    labels.clone(),
                    self.per_sample(margins, b),
                    IndexingUpdateOp::Add,
                );
            }
            let (max, arg) = z.clone().max_dim_with_indices(2);
            (z, max, arg)
        } else {
            (z, z_max, z_arg)
        };

        // Loss `Σ_b c_b·(lse_b − (1−δ)·z'_{b,y} − δ·mean_k z'_{b,k})`, with the log-sum-exp taken
        // as `max z' − log(max softmax)`: exact and finite however far apart the logits are.
        let z_label = z.clone().gather(2, labels.clone());
        let z_mean = self.any_delta.then(|| z.clone().mean_dim(2));
        let p = softmax(z, 2);
        let p_max = p.clone().gather(2, z_arg);
        let mut terms = (z_max - p_max.log()) * coef + z_label * one_hot_coef;
        if let Some(z_mean) = z_mean {
            terms = terms - z_mean * self.per_sample(uniform_loss, b);
        }
        let losses = terms.sum_dim(layout.sample_axis()).reshape([h]);

        // `lr·G = lr·c·(softmax(z') − ỹ)`: per-row scalars, then the label entries.
        let mut g = p * self.per_sample(grad_coef, b);
        if self.any_delta {
            g = g - self.per_sample(grad_uniform, b);
        }
        let g = g.scatter(
            2,
            labels,
            self.per_sample(grad_one_hot, b),
            IndexingUpdateOp::Add,
        );
        // `lr·∂L/∂W`, bias row included.
        let grad = match layout {
            Layout::Shared => x
                .reshape([b, d1])
                .transpose()
                .matmul(g.reshape([b, h * k]))
                .reshape([d1, h, k]),
            Layout::PerHead => x.swap_dims(1, 2).matmul(g),
        };
        let mut weight = self.update(weight, grad);
        if let Some(radius) = &self.step_radius {
            weight = self.project(weight, radius);
        }
        self.weight = Some(weight);
        Tensor::cat(vec![losses, hits], 0)
    }

    /// `s ← decay·s + lr·g + shrink·θ`, `θ ← θ − s` (see [`Self::begin_epoch`]). `weight` and the
    /// buffer are uniquely owned, so every op but the weight-decay product runs in place.
    fn update(&mut self, weight: Tensor<B, 3>, lr_grad: Tensor<B, 3>) -> Tensor<B, 3> {
        let mut s = match (self.velocity.take(), &self.decay) {
            (Some(s), Some(decay)) => decay.mul(s) + lr_grad,
            _ => lr_grad,
        };
        if let Some(shrink) = &self.shrink {
            s = s + shrink.mul(weight.clone());
        }
        if self.decay.is_some() {
            self.velocity = Some(s.clone());
        }
        weight - s
    }

    /// The end-of-epoch MaxNorm projection.
    pub(crate) fn end_epoch(&mut self) {
        if let Some(radius) = &self.epoch_radius {
            let weight = self
                .weight
                .take()
                .expect("the weights are only taken during a step");
            self.weight = Some(self.project(weight, radius));
        }
    }

    /// Rescales class vectors `W_i` (not the bias row) whose norm exceeds the head's radius.
    fn project(&self, weight: Tensor<B, 3>, radius: &[f32]) -> Tensor<B, 3> {
        let (h, k, d) = (self.h, self.k, self.d);
        // The class vectors span the sample axis of the weights; the bias is the last entry.
        let axis = match self.layout {
            Layout::Shared => 0,
            Layout::PerHead => 1,
        };
        let w = weight.clone().narrow(axis, 0, d);
        let bias = weight.narrow(axis, d, 1);
        let norm = w.clone().square().sum_dim(axis).sqrt().clamp_min(NORM_EPS);
        let radius = Tensor::<B, 3>::from_data(
            TensorData::new(
                radius
                    .iter()
                    .flat_map(|&r| std::iter::repeat_n(r, k))
                    .collect::<Vec<_>>(),
                match self.layout {
                    Layout::Shared => [1, h, k],
                    Layout::PerHead => [h, 1, k],
                },
            ),
            &self.device,
        );
        // r/‖W_i‖ capped at 1: rows inside the ball are multiplied by exactly 1.
        let factor = (radius / norm).clamp_max(1.0);
        Tensor::cat(vec![w * factor, bias], axis)
    }

    /// The current parameters on the host, per head.
    pub(crate) fn download(&self) -> Vec<HeadParams> {
        let (h, k, d) = (self.h, self.k, self.d);
        let d1 = d + 1;
        let values: Vec<f32> = self
            .weight
            .clone()
            .expect("the weights are only taken during a step")
            .into_data()
            .to_vec()
            .expect("a float tensor should read back as f32");
        let at = |j: usize, i: usize, class: usize| match self.layout {
            Layout::Shared => values[(i * h + j) * k + class],
            Layout::PerHead => values[(j * d1 + i) * k + class],
        };
        (0..h)
            .map(|j| HeadParams {
                weight: (0..k)
                    .flat_map(|class| (0..d).map(move |i| (class, i)))
                    .map(|(class, i)| at(j, i, class))
                    .collect(),
                bias: (0..k).map(|class| at(j, d, class)).collect(),
                scale: None,
            })
            .collect()
    }
}
