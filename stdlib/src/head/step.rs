//! What the three step implementations (`host`, `analytic`, `autodiff`, dispatched by
//! [`Heads`](super::heads::Heads)) share: the batch a step reads ([`StepInput`]), PyTorch's SGD
//! update with per-head settings ([`SgdState`], [`Factor`]), the parameters a group hands back
//! ([`HeadParams`]) and the `[D, H, K]` weight layout.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::loss::mul_rows;

/// A `[1, H, 1]` tensor of one value per head.
pub(crate) fn per_head<B: Backend>(
    values: impl IntoIterator<Item = f32>,
    device: &B::Device,
) -> Tensor<B, 3> {
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
pub(crate) fn per_head_rows<B: Backend>(
    values: &[f32],
    k: usize,
    device: &B::Device,
) -> Tensor<B, 3> {
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
pub(crate) fn per_head_class<B: Backend>(rows: &[&[f32]], device: &B::Device) -> Tensor<B, 3> {
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
    pub(crate) lr: Factor<B>,
    pub(crate) momentum: Option<Factor<B>>,
    pub(crate) weight_decay: Option<Factor<B>>,
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

/// A float tensor's values on the host.
pub(crate) fn read<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .to_vec()
        .expect("a float tensor should read back as f32")
}

/// `H` row-major `K×D` matrices as one `[D, H, K]` buffer (`out[(d·H + h)·K + k] = W_h[k, d]`).
pub(crate) fn stack_transposed(weights: &[&[f32]], k: usize, d: usize) -> Vec<f32> {
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
pub(crate) fn unstack_transposed(
    stacked: &[f32],
    head: usize,
    h: usize,
    k: usize,
    d: usize,
) -> Vec<f32> {
    let mut out = vec![0.0; k * d];
    for class in 0..k {
        for j in 0..d {
            out[class * d + j] = stacked[(j * h + head) * k + class];
        }
    }
    out
}

/// `x·W` for every head, `[B, H, K]`, from `x` `[S, B, D]` and `weight` `[D, H, K]`.
pub(crate) fn project<B: Backend>(x: Tensor<B, 3>, weight: Tensor<B, 3>) -> Tensor<B, 3> {
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
