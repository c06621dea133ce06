//! The closed-form heads of [`analytic`](super::analytic), trained in host memory: the CPU path.
//!
//! On the CPU backend "the device" is host memory, so the device path pays for an upload of the
//! train matrix (plus a copy with the constant-1 bias column) and for running every elementwise op
//! as a separate pass through Burn's tensor ops. Here the same step reads the batch's rows straight
//! from the (memory-mapped) feature matrix into one small buffer, multiplies with `gemm` (on all
//! cores when the product is large; see [`gemm`](super::gemm)), and does the softmax, loss,
//! gradient and SGD update in fused loops over contiguous rows. The numbers are the device
//! path's (tests compare them); the memory is the feature matrix plus the batch rows (`B·D` per
//! stream), `B·H·K` logits and three `D·H·K` buffers (weights, momentum, gradient).
//!
//! Layouts: the weights of all heads are one `[D, H·K]` matrix (head `j`'s `Wᵀ` in columns
//! `j·K..(j+1)·K`) and the biases one `[H·K]` row; logits and their gradients are `[B, H·K]`. When
//! heads share a batch stream, a step is one `[B, D] × [D, H·K]` product and one
//! `[D, B] × [B, H·K]`; with one stream per head, each head multiplies its own rows into its own
//! column block.

use std::sync::Arc;

use rayon::prelude::*;

use super::analytic::{Layout, maxnorm_radii, momentum_rescale, per_class_nonzero};
use super::inference::NORM_EPS;
use super::plan::Member;
use super::plugin::SampleLoss;
use super::step::{HeadParams, StepInput};
use crate::gemm::{Mat, matmul};

/// Elements of an elementwise pass below which it stays on the calling thread: handing a pass to
/// the thread pool costs a wake-up and a wait (tens of µs), more than a small pass takes.
const PARALLEL_ELEMENTS: usize = 1 << 16;

/// A group of linear softmax-family heads trained with closed-form gradients on the host.
pub(crate) struct HostHeads {
    layout: Layout,
    h: usize,
    k: usize,
    d: usize,
    /// `[D, H·K]`.
    weight: Vec<f32>,
    /// `[H·K]`.
    bias: Vec<f32>,
    /// The momentum buffers scaled by the learning rate, `s = lr·v`, as on the device path; empty
    /// when no head has momentum.
    velocity_weight: Vec<f32>,
    velocity_bias: Vec<f32>,
    lr: Vec<f32>,
    momentum: Vec<f32>,
    weight_decay: Vec<f32>,
    /// This epoch's `lr·wd` per head.
    shrink: Vec<f32>,
    delta: Vec<f32>,
    /// Training-only logit offsets, `[H·K]`.
    prior: Option<Vec<f32>>,
    /// LDAM margins, `[H·K]`.
    margin: Option<Vec<f32>>,
    normalize_by_weight: Vec<bool>,
    /// Plugin losses per head (`None`: the softmax cross-entropy).
    plugin: Vec<Option<Arc<dyn SampleLoss>>>,
    step_radius: Option<Vec<f32>>,
    epoch_radius: Option<Vec<f32>>,
    /// Scratch: the batch's feature rows `[streams·B, D]`, logits then gradients `[B, H·K]`, and
    /// the weight gradient `[D, H·K]`.
    rows: Vec<f32>,
    logits: Vec<f32>,
    grad: Vec<f32>,
}

impl HostHeads {
    pub(crate) fn new(members: &[&Member], layout: Layout, k: usize, d: usize) -> Self {
        let h = members.len();
        let hk = h * k;
        let mut weight = vec![0.0f32; d * hk];
        let mut bias = vec![0.0f32; hk];
        for (j, member) in members.iter().enumerate() {
            for class in 0..k {
                let row = &member.init_weight[class * d..(class + 1) * d];
                for (i, &w) in row.iter().enumerate() {
                    weight[i * hk + j * k + class] = w;
                }
                bias[j * k + class] = member.init_bias[class];
            }
        }
        let momentum: Vec<f32> = members.iter().map(|m| m.momentum as f32).collect();
        let any_momentum = momentum.iter().any(|&m| m != 0.0);
        Self {
            layout,
            h,
            k,
            d,
            weight,
            bias,
            velocity_weight: if any_momentum {
                vec![0.0; d * hk]
            } else {
                Vec::new()
            },
            velocity_bias: if any_momentum {
                vec![0.0; hk]
            } else {
                Vec::new()
            },
            lr: vec![0.0; h],
            momentum,
            weight_decay: members.iter().map(|m| m.weight_decay as f32).collect(),
            shrink: vec![0.0; h],
            delta: members.iter().map(|m| m.delta).collect(),
            prior: per_class_nonzero(members, |m| &m.prior),
            margin: per_class_nonzero(members, |m| &m.margin),
            normalize_by_weight: members.iter().map(|m| m.normalize_by_weight).collect(),
            plugin: members
                .iter()
                .map(|m| m.plugin_loss.as_ref().map(|p| Arc::clone(&p.loss)))
                .collect(),
            step_radius: maxnorm_radii(members, true),
            epoch_radius: maxnorm_radii(members, false),
            rows: Vec::new(),
            logits: Vec::new(),
            grad: vec![0.0; d * hk],
        }
    }

    /// Sets this epoch's learning rates, rescaling the momentum buffers `s = lr·v` by
    /// `lr/lr_prev` (0 for heads that have not moved), as
    /// [`AnalyticHeads::begin_epoch`](super::analytic::AnalyticHeads::begin_epoch) explains.
    pub(crate) fn begin_epoch(&mut self, lrs: &[f64]) {
        let lrs: Vec<f32> = lrs.iter().map(|&l| l as f32).collect();
        if !self.velocity_weight.is_empty() {
            let ratio = momentum_rescale(&self.lr, &lrs);
            if ratio.iter().any(|&r| r != 1.0) {
                let k = self.k;
                let scale = |row: &mut [f32]| {
                    for (block, &r) in row.chunks_mut(k).zip(&ratio) {
                        block.iter_mut().for_each(|s| *s *= r);
                    }
                };
                self.velocity_weight.chunks_mut(self.h * k).for_each(scale);
                scale(&mut self.velocity_bias);
            }
        }
        self.shrink = (0..self.h).map(|j| lrs[j] * self.weight_decay[j]).collect();
        self.lr = lrs;
    }

    /// One SGD step on a batch of rows of `train` (`[N, D]`); returns the per-head losses, then
    /// the per-head numbers of correct argmax predictions of the raw logits.
    pub(crate) fn step(&mut self, train: &[f32], input: &StepInput) -> Vec<f32> {
        let (h, k, d, b) = (self.h, self.k, self.d, input.b);
        let hk = h * k;
        let streams = match self.layout {
            Layout::Shared => 1,
            Layout::PerHead => h,
        };
        // The batch's rows, stream after stream.
        self.rows.clear();
        self.rows.reserve(streams * b * d);
        for &id in &input.ids {
            let id = usize::try_from(id).expect("sample ids are non-negative");
            self.rows.extend_from_slice(&train[id * d..(id + 1) * d]);
        }

        // Forward: `z = x·W + b`, `[B, H·K]`.
        self.logits.clear();
        self.logits.resize(b * hk, 0.0);
        let weight_mat = Mat::dense(d, hk);
        match self.layout {
            Layout::Shared => matmul(
                &mut self.logits,
                Mat::dense(b, hk),
                false,
                &self.rows,
                Mat::dense(b, d),
                &self.weight,
                weight_mat,
            ),
            Layout::PerHead => {
                for j in 0..h {
                    matmul(
                        &mut self.logits,
                        Mat {
                            cols: k,
                            ..Mat::dense(b, hk).at(j * k)
                        },
                        false,
                        &self.rows,
                        Mat::dense(b, d).at(j * b * d),
                        &self.weight,
                        Mat {
                            cols: k,
                            ..weight_mat.at(j * k)
                        },
                    );
                }
            }
        }

        // Per (sample, head): loss terms, hits, and `lr·G` written over the logits.
        let norms: Vec<f32> = (0..h)
            .map(|j| match &input.weights {
                Some(w) if self.normalize_by_weight[j] => (0..b).map(|i| w[i * h + j]).sum(),
                _ => b as f32,
            })
            .collect();
        // Per (sample, head) terms, summed in sample order afterwards so that the result does
        // not depend on how the rows were split between threads.
        let rows = RowLoss {
            h,
            k,
            bias: &self.bias,
            prior: self.prior.as_deref(),
            margin: self.margin.as_deref(),
            delta: &self.delta,
            lr: &self.lr,
            norms: &norms,
            plugin: &self.plugin,
            input,
        };
        let mut terms = vec![0.0f32; b * h];
        let mut hits = vec![false; b * h];
        let work = self
            .logits
            .chunks_mut(hk)
            .zip(terms.chunks_mut(h))
            .zip(hits.chunks_mut(h));
        if b * hk < PARALLEL_ELEMENTS {
            let mut scratch = vec![0.0f32; k];
            for (i, ((z, t), hit)) in work.enumerate() {
                rows.apply(i, z, t, hit, &mut scratch);
            }
        } else {
            self.logits
                .par_chunks_mut(hk)
                .zip(terms.par_chunks_mut(h))
                .zip(hits.par_chunks_mut(h))
                .enumerate()
                .with_min_len((PARALLEL_ELEMENTS / hk).max(1))
                .for_each_init(
                    || vec![0.0f32; k],
                    |scratch, (i, ((z, t), hit))| rows.apply(i, z, t, hit, scratch),
                );
        }
        let mut losses = vec![0.0f32; h];
        let mut correct = vec![0.0f32; h];
        for (t, hit) in terms.chunks(h).zip(hits.chunks(h)) {
            for j in 0..h {
                losses[j] += t[j];
                correct[j] += f32::from(u8::from(hit[j]));
            }
        }

        // `lr·∂L/∂W = xᵀ·(lr·G)` and `lr·∂L/∂b = Σ_b lr·G`.
        match self.layout {
            Layout::Shared => matmul(
                &mut self.grad,
                weight_mat,
                false,
                &self.rows,
                Mat::dense(b, d).t(),
                &self.logits,
                Mat::dense(b, hk),
            ),
            Layout::PerHead => {
                for j in 0..h {
                    matmul(
                        &mut self.grad,
                        Mat {
                            cols: k,
                            ..weight_mat.at(j * k)
                        },
                        false,
                        &self.rows,
                        Mat::dense(b, d).at(j * b * d).t(),
                        &self.logits,
                        Mat {
                            cols: k,
                            ..Mat::dense(b, hk).at(j * k)
                        },
                    );
                }
            }
        }
        let mut grad_bias = vec![0.0f32; hk];
        for row in self.logits.chunks(hk) {
            grad_bias.iter_mut().zip(row).for_each(|(g, v)| *g += v);
        }
        self.update(&grad_bias);
        if let Some(radius) = self.step_radius.take() {
            self.project(&radius);
            self.step_radius = Some(radius);
        }
        losses.extend(correct);
        losses
    }

    /// `s ← μ·s + lr·g + lr·wd·θ`, `θ ← θ − s` on the weights and the bias (no buffer without
    /// momentum).
    fn update(&mut self, grad_bias: &[f32]) {
        let (k, hk) = (self.k, self.h * self.k);
        let settings = StepSettings {
            k,
            momentum: &self.momentum,
            shrink: &self.shrink,
        };
        let parallel = self.weight.len() >= PARALLEL_ELEMENTS;
        let min_rows = (PARALLEL_ELEMENTS / hk.max(1)).max(1);
        if self.velocity_weight.is_empty() {
            let rows = self.weight.chunks_mut(hk).zip(self.grad.chunks(hk));
            if parallel {
                let rows = self.weight.par_chunks_mut(hk).zip(self.grad.par_chunks(hk));
                rows.with_min_len(min_rows)
                    .for_each(|(w, g)| settings.apply(w, None, g));
            } else {
                rows.for_each(|(w, g)| settings.apply(w, None, g));
            }
            settings.apply(&mut self.bias, None, grad_bias);
        } else {
            if parallel {
                let rows = self
                    .weight
                    .par_chunks_mut(hk)
                    .zip(self.velocity_weight.par_chunks_mut(hk))
                    .zip(self.grad.par_chunks(hk));
                rows.with_min_len(min_rows)
                    .for_each(|((w, s), g)| settings.apply(w, Some(s), g));
            } else {
                let rows = self
                    .weight
                    .chunks_mut(hk)
                    .zip(self.velocity_weight.chunks_mut(hk))
                    .zip(self.grad.chunks(hk));
                rows.for_each(|((w, s), g)| settings.apply(w, Some(s), g));
            }
            settings.apply(&mut self.bias, Some(&mut self.velocity_bias), grad_bias);
        }
    }

    /// The end-of-epoch MaxNorm projection.
    pub(crate) fn end_epoch(&mut self) {
        if let Some(radius) = self.epoch_radius.take() {
            self.project(&radius);
            self.epoch_radius = Some(radius);
        }
    }

    /// Rescales class vectors (columns of the weights; not the bias) whose norm exceeds their
    /// head's radius to that radius.
    fn project(&mut self, radius: &[f32]) {
        let (k, hk) = (self.k, self.h * self.k);
        let mut norms = vec![0.0f32; hk];
        for row in self.weight.chunks(hk) {
            norms.iter_mut().zip(row).for_each(|(n, w)| *n += w * w);
        }
        // r/‖W_i‖ capped at 1, as on the device path: columns inside the ball are multiplied by
        // exactly 1.
        let factors: Vec<f32> = norms
            .iter()
            .enumerate()
            .map(|(at, &n)| (radius[at / k] / n.sqrt().max(NORM_EPS)).min(1.0))
            .collect();
        for row in self.weight.chunks_mut(hk) {
            row.iter_mut().zip(&factors).for_each(|(w, f)| *w *= f);
        }
    }

    /// The current parameters, per head.
    pub(crate) fn download(&self) -> Vec<HeadParams> {
        let (h, k, d) = (self.h, self.k, self.d);
        let hk = h * k;
        (0..h)
            .map(|j| HeadParams {
                weight: (0..k)
                    .flat_map(|class| (0..d).map(move |i| self.weight[i * hk + j * k + class]))
                    .collect(),
                bias: self.bias[j * k..(j + 1) * k].to_vec(),
                scale: None,
            })
            .collect()
    }
}

/// What the per-sample part of a step reads: the loss of every head on one sample, its gradient
/// w.r.t. the logits and whether the raw logits' argmax is the label.
struct RowLoss<'a> {
    h: usize,
    k: usize,
    bias: &'a [f32],
    prior: Option<&'a [f32]>,
    margin: Option<&'a [f32]>,
    delta: &'a [f32],
    lr: &'a [f32],
    /// The loss normaliser `N` per head.
    norms: &'a [f32],
    plugin: &'a [Option<Arc<dyn SampleLoss>>],
    input: &'a StepInput,
}

impl RowLoss<'_> {
    /// Sample `i`: adds the bias to its logits `row` (`[H·K]`, from `x·W`), writes each head's
    /// loss term to `terms` and hit to `hits`, and overwrites `row` with `lr·G`.
    fn apply(
        &self,
        i: usize,
        row: &mut [f32],
        terms: &mut [f32],
        hits: &mut [bool],
        scratch: &mut [f32],
    ) {
        let (h, k) = (self.h, self.k);
        row.iter_mut().zip(self.bias).for_each(|(z, b)| *z += b);
        for j in 0..h {
            let z = &mut row[j * k..(j + 1) * k];
            let y = self.input.label(i, j) as usize;
            let weight = self.input.weights.as_ref().map_or(1.0, |w| w[i * h + j]);
            let c = weight / self.norms[j];
            let (delta, lr) = (self.delta[j], self.lr[j]);
            hits[j] = argmax(z) == y;
            if let Some(loss) = &self.plugin[j] {
                // `c·ℓ(z)` and `lr·c·∂ℓ/∂z`.
                terms[j] = c * loss.loss_and_grad(z, y, scratch);
                let scale = lr * c;
                z.iter_mut()
                    .zip(scratch.iter())
                    .for_each(|(g, &d)| *g = d * scale);
                continue;
            }
            // Training logits `z' = z + p − m·e_y`.
            if let Some(prior) = self.prior {
                z.iter_mut()
                    .zip(&prior[j * k..(j + 1) * k])
                    .for_each(|(z, p)| *z += p);
            }
            if let Some(margin) = self.margin {
                z[y] -= margin[j * k + y];
            }
            let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            scratch
                .iter_mut()
                .zip(z.iter())
                .for_each(|(e, &z)| *e = z - max);
            exp_in_place(scratch);
            let sum: f32 = scratch.iter().sum();
            // `c·(lse − (1−δ)·z'_y − δ·mean z')` with `lse = max + ln Σ e^(z'−max)`.
            let mut term = (max + sum.ln()) * c - c * (1.0 - delta) * z[y];
            if delta != 0.0 {
                term -= c * delta * (z.iter().sum::<f32>() / k as f32);
            }
            terms[j] = term;
            // `lr·c·(softmax − (1−δ)·e_y − δ/K)`.
            let scale = lr * c / sum;
            let uniform = lr * c * delta / k as f32;
            z.iter_mut()
                .zip(scratch.iter())
                .for_each(|(g, &e)| *g = e * scale - uniform);
            z[y] -= lr * c * (1.0 - delta);
        }
    }
}

/// The per-head SGD factors of one step.
struct StepSettings<'a> {
    k: usize,
    momentum: &'a [f32],
    shrink: &'a [f32],
}

impl StepSettings<'_> {
    /// The update of one `[H·K]` row of parameters.
    fn apply(&self, weight: &mut [f32], velocity: Option<&mut [f32]>, lr_grad: &[f32]) {
        let k = self.k;
        match velocity {
            Some(velocity) => {
                let blocks = weight
                    .chunks_mut(k)
                    .zip(velocity.chunks_mut(k))
                    .zip(lr_grad.chunks(k));
                for (j, ((w, s), g)) in blocks.enumerate() {
                    let (mu, shrink) = (self.momentum[j], self.shrink[j]);
                    for ((w, s), g) in w.iter_mut().zip(s.iter_mut()).zip(g) {
                        *s = mu * *s + g + shrink * *w;
                        *w -= *s;
                    }
                }
            }
            None => {
                for (j, (w, g)) in weight.chunks_mut(k).zip(lr_grad.chunks(k)).enumerate() {
                    let shrink = self.shrink[j];
                    for (w, g) in w.iter_mut().zip(g) {
                        *w -= g + shrink * *w;
                    }
                }
            }
        }
    }
}

/// The index of the first maximum.
fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// A group's heads after their inference maps, stacked for one product per chunk of rows.
pub(crate) struct InferenceWeights {
    /// `[D, H·K]`, class vectors already unit-norm for cosine heads.
    pub weight: Vec<f32>,
    /// `[H·K]`, the inference offsets included.
    pub bias: Vec<f32>,
    /// Per head: the cosine scale (1 otherwise).
    pub scale: Vec<f32>,
    /// Whether the rows are scaled to unit norm first.
    pub cosine: bool,
    pub k: usize,
}

impl InferenceWeights {
    /// Rows per product: large enough for `gemm` to use every core, small enough that the logits
    /// of a large sweep on a large test set are never held at once.
    const CHUNK: usize = 2048;

    /// The logits of the rows of `features` (`[n, D]`), `[n, H·K]`, [`Self::CHUNK`] rows at a
    /// time: `on_chunk(first_row, logits)` sees every chunk, in order.
    pub(crate) fn logits(
        &self,
        features: &[f32],
        d: usize,
        mut on_chunk: impl FnMut(usize, &[f32]),
    ) {
        let hk = self.bias.len();
        let n = features.len() / d.max(1);
        let mut out = Vec::new();
        let mut normalized = Vec::new();
        for start in (0..n).step_by(Self::CHUNK) {
            let rows = Self::CHUNK.min(n - start);
            let mut x = &features[start * d..(start + rows) * d];
            if self.cosine {
                normalized.clear();
                normalized.extend_from_slice(x);
                for row in normalized.chunks_mut(d) {
                    let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(NORM_EPS);
                    row.iter_mut().for_each(|v| *v /= norm);
                }
                x = &normalized;
            }
            out.clear();
            out.resize(rows * hk, 0.0);
            matmul(
                &mut out,
                Mat::dense(rows, hk),
                false,
                x,
                Mat::dense(rows, d),
                &self.weight,
                Mat::dense(d, hk),
            );
            for row in out.chunks_mut(hk) {
                for ((z, b), s) in row
                    .chunks_mut(self.k)
                    .zip(self.bias.chunks(self.k))
                    .zip(&self.scale)
                {
                    z.iter_mut().zip(b).for_each(|(z, b)| *z = *z * s + b);
                }
            }
            on_chunk(start, &out);
        }
    }
}

/// `e^x` for every element, branch-free so that it vectorises: Cephes' `expf` (range reduction
/// by `ln 2`, a degree-6 polynomial, the exponent written into the bits). Relative error below
/// 2·10⁻⁷ on `[-87, 88]`; smaller arguments flush to `e^-87`, which is 0 next to the row's
/// maximum term `e^0 = 1`.
pub(crate) fn exp_in_place(values: &mut [f32]) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // `1.5·2²³`: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    for v in values.iter_mut() {
        let x = v.clamp(-87.0, 88.0);
        let shifted = x * LOG2E + ROUND;
        let n = shifted - ROUND;
        let r = x - n * LN2_HI - n * LN2_LO;
        let mut p = 1.987_569_1e-4_f32;
        p = p * r + 1.398_199_9e-3;
        p = p * r + 8.333_452e-3;
        p = p * r + 4.166_579_6e-2;
        p = p * r + 1.666_666_5e-1;
        p = p * r + 0.5; // Cephes: 5.0000001e-1, the same f32
        p = p * r * r + r + 1.0;
        // `shifted`'s bits are `ROUND`'s plus `n`; move `n + 127` into the exponent field.
        let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
        let two_n = f32::from_bits(n_bits.wrapping_add(127) << 23);
        *v = p * two_n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_the_standard_library_to_float_precision() {
        let mut worst = 0.0f64;
        let xs: Vec<f32> = (0..200_001)
            .map(|i| -87.0 + i as f32 * (175.0 / 200_000.0))
            .collect();
        let mut ys = xs.clone();
        exp_in_place(&mut ys);
        for (&x, &y) in xs.iter().zip(&ys) {
            let exact = f64::from(x).exp();
            worst = worst.max(((f64::from(y) - exact) / exact).abs());
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        let mut edge = [0.0, -1000.0, f32::NEG_INFINITY, 1.0];
        exp_in_place(&mut edge);
        assert_eq!(edge[0], 1.0);
        assert!(edge[1] > 0.0 && edge[1] < 1e-37 && edge[2] == edge[1]);
        assert!((edge[3] - std::f32::consts::E).abs() < 1e-6);
    }
}
