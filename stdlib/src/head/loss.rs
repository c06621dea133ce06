//! The losses of the unified form (paper Eq. 1), for H heads at once.
//!
//! Logits come in as `[B, H, K]` (sample, head, class) — the layout of one `[B, D] × [D, H·K]`
//! matmul over all heads; every per-head setting is a `[1, H, 1]` or `[1, H, K]` tensor that
//! broadcasts over it, so one call computes a whole sweep's losses. The formulas
//! (ltr-reference §1, §3):
//!
//! - training logits `z' = s·(z − m ⊙ e_y) + p`: `s` the cosine scale (1 for linear logits), `m` the
//!   LDAM margins (in cosine units before scaling, as LDAM-DRW), `p` a training-only prior
//!   (`log n` for balanced softmax, `τ log π` for the loss form of logit adjustment);
//! - targets `ỹ = (1−δ)·e_y + δ/K`; the softmax loss is computed as
//!   `(1−δ)·(−log s_y) + δ·mean_k(−log s_k)`, which equals `−Σ_k ỹ_k log s_k` without building `ỹ`;
//! - per-sample factor `w_y · (1 − s_y)^γ` (class weight, focal modulation);
//! - reduction: softmax family `Σ_b w_{y_b}·ℓ_b / Σ_b w_{y_b}` — PyTorch's `cross_entropy(weight=w)`
//!   with `reduction='mean'` (with all weights 1 this is the plain batch mean), or `/ B` for the
//!   weighted focal loss; BCE: `Σ_{b,k} w_{y_b}·bce(s_bk, ỹ_bk) / (B·K)`, LTWB's
//!   `F.binary_cross_entropy(softmax(z), onehot, weight=w_y)`.
//!
//! With smoothed targets and class weights together, the weight multiplies the whole per-sample
//! loss (PyTorch instead weights the smoothing term of class `k` by `w_k`); the paper never
//! combines the two.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use super::plan::LossForm;

/// Smallest `1 − s_k` whose log is taken: keeps BCE and focal finite (and their gradients zero
/// rather than NaN) when a probability rounds to 1. PyTorch clamps the log at −100 instead; the two
/// differ only for saturated probabilities.
const PROB_FLOOR: f32 = 1e-30;

/// Per-head constants of a group, `[1, H, 1]` or `[1, H, K]`; `None` when no head uses them, so
/// their ops are skipped.
#[derive(Debug, Clone)]
pub(crate) struct LossParams<B: Backend> {
    pub form: LossForm,
    pub num_classes: usize,
    /// `s`, `[1, H, K]` (repeated over the classes: see `train::per_head_rows`).
    pub scale: Option<Tensor<B, 3>>,
    /// `s·m`, `[1, H, K]`.
    pub scaled_margin: Option<Tensor<B, 3>>,
    /// `p`, `[1, H, K]`.
    pub prior: Option<Tensor<B, 3>>,
    /// `δ`, `[1, H, 1]`.
    pub delta: Option<Tensor<B, 3>>,
    /// `γ`, `[1, H, 1]`.
    pub gamma: Option<Tensor<B, 3>>,
    /// 1 where the weighted loss is normalised by `Σ w`, 0 where by `B`; `[1, H, 1]`.
    pub normalize_by_weight: Option<Tensor<B, 3>>,
}

/// `t · rows` for `t` `[A, H, K]` and per-head rows `[1, H, K]`, computed as `[A, 1, H·K]` times
/// `[1, 1, H·K]`: flex's SIMD broadcast path takes a row shared over the *leading* dimensions only,
/// and the plain `[A, H, K] × [1, H, K]` broadcast runs a scalar strided loop several times slower.
pub(crate) fn mul_rows<B: Backend>(t: Tensor<B, 3>, rows: Tensor<B, 3>) -> Tensor<B, 3> {
    let [a, h, k] = t.dims();
    (t.reshape([a, 1, h * k]) * rows.reshape([1, 1, h * k])).reshape([a, h, k])
}

/// `t + rows`, shaped like [`mul_rows`] for the same reason.
pub(crate) fn add_rows<B: Backend>(t: Tensor<B, 3>, rows: Tensor<B, 3>) -> Tensor<B, 3> {
    let [a, h, k] = t.dims();
    (t.reshape([a, 1, h * k]) + rows.reshape([1, 1, h * k])).reshape([a, h, k])
}

/// Per-step inputs of the loss.
pub(crate) struct LossBatch<B: Backend> {
    /// Labels, `[B, H, 1]`.
    pub labels: Tensor<B, 3, Int>,
    /// One-hot labels, `[B, S, K]` (`S` = 1 when all heads share the batch, else H); needed by
    /// margins and BCE.
    pub one_hot: Option<Tensor<B, 3>>,
    /// Class weight of each sample, `[B, H, 1]`; `None` when all are 1.
    pub weights: Option<Tensor<B, 3>>,
}

impl<B: Backend> LossParams<B> {
    /// Whether a step needs the one-hot labels.
    pub(crate) fn needs_one_hot(&self) -> bool {
        self.scaled_margin.is_some() || self.form == LossForm::Bce
    }

    /// The training logits `z'` from the model's logits `z`, `[B, H, K]`.
    pub(crate) fn training_logits(
        &self,
        logits: Tensor<B, 3>,
        batch: &LossBatch<B>,
    ) -> Tensor<B, 3> {
        let mut z = logits;
        if let Some(scale) = &self.scale {
            z = mul_rows(z, scale.clone());
        }
        if let (Some(margin), Some(one_hot)) = (&self.scaled_margin, &batch.one_hot) {
            let [b, h, k] = z.dims();
            let margins = if one_hot.dims()[1] == h {
                one_hot.clone()
            } else {
                one_hot.clone().repeat_dim(1, h)
            };
            z = z - mul_rows(margins, margin.clone()).reshape([b, h, k]);
        }
        if let Some(prior) = &self.prior {
            z = add_rows(z, prior.clone());
        }
        z
    }

    /// The loss of every head, `[H]`.
    pub(crate) fn losses(&self, logits: Tensor<B, 3>, batch: &LossBatch<B>) -> Tensor<B, 1> {
        let [samples, heads, _] = logits.dims();
        let z = self.training_logits(logits, batch);
        let log_p = log_softmax(z, 2);
        let per_head = match self.form {
            LossForm::Softmax => self.softmax_family(log_p, batch, samples),
            LossForm::Bce => self.bce(log_p, batch, samples),
        };
        per_head.reshape([heads])
    }

    fn softmax_family(
        &self,
        log_p: Tensor<B, 3>,
        batch: &LossBatch<B>,
        samples: usize,
    ) -> Tensor<B, 3> {
        let nll = log_p.clone().gather(2, batch.labels.clone()).neg();
        let mut per_sample = match &self.delta {
            Some(delta) => {
                let uniform = log_p.mean_dim(2).neg();
                nll.clone() * delta.clone().neg().add_scalar(1.0) + uniform * delta.clone()
            }
            None => nll.clone(),
        };
        if let Some(gamma) = &self.gamma {
            // (1 − s_y)^γ as exp(γ·log(1 − s_y)): exactly 1 for γ = 0, finite when s_y rounds to 1.
            let one_minus = nll.neg().exp().neg().add_scalar(1.0).clamp_min(PROB_FLOOR);
            per_sample = per_sample * (one_minus.log() * gamma.clone()).exp();
        }
        match &batch.weights {
            Some(weights) => {
                let total = (per_sample * weights.clone()).sum_dim(0);
                let norm = match &self.normalize_by_weight {
                    Some(flag) => {
                        let by_weight = weights.clone().sum_dim(0);
                        by_weight * flag.clone()
                            + flag
                                .clone()
                                .neg()
                                .add_scalar(1.0)
                                .mul_scalar(samples as f32)
                    }
                    None => weights.clone().sum_dim(0),
                };
                total / norm
            }
            None => per_sample.sum_dim(0).div_scalar(samples as f32),
        }
    }

    fn bce(&self, log_p: Tensor<B, 3>, batch: &LossBatch<B>, samples: usize) -> Tensor<B, 3> {
        let one_hot = batch
            .one_hot
            .clone()
            .expect("BCE steps should carry one-hot labels");
        let k = self.num_classes as f32;
        let targets = match &self.delta {
            Some(delta) => {
                // `[1, H, K]` rows keep the broadcast on flex's fast path.
                let delta = delta.clone().repeat_dim(2, self.num_classes);
                one_hot * delta.clone().neg().add_scalar(1.0) + delta.div_scalar(k)
            }
            None => one_hot,
        };
        let log_one_minus = log_p
            .clone()
            .exp()
            .neg()
            .add_scalar(1.0)
            .clamp_min(PROB_FLOOR)
            .log();
        let log_p = log_p.clamp_min(-100.0);
        let bce = (targets.clone() * log_p + targets.neg().add_scalar(1.0) * log_one_minus).neg();
        let mut per_sample = bce.sum_dim(2);
        if let Some(weights) = &batch.weights {
            per_sample = per_sample * weights.clone();
        }
        per_sample.sum_dim(0).div_scalar(samples as f32 * k)
    }
}
