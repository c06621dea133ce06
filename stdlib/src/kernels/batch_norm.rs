//! BatchNorm in training mode (batch statistics), optionally followed by ReLU, over NCHW maps
//! viewed as `[N, C, L]` (`L = H·W`): the forward pass and its exact gradient in two passes each.
//!
//! Autodiff of BatchNorm written as tensor operations records a dozen element-wise ops (centre,
//! square, scale, shift, each broadcast over the map) and as many in the backward pass; each is a
//! full read and write of the map. Here the forward pass reads the map three times (mean,
//! centred variance, output) and the backward pass twice (the two per-channel sums, the input
//! gradient), with the ReLU mask read from the output. Channels are split over rayon's threads
//! for the statistics and rows for the element-wise passes.
//!
//! With `x̂ = (x − μ)·σ⁻¹`, `σ = √(var + ε)` (biased variance, as Burn and PyTorch normalise),
//! `y = γ·x̂ + β` and `g = ∂y` (zero where the ReLU clipped), over the `M = N·L` values of a
//! channel:
//! `∂β = Σg`, `∂γ = Σ g·x̂`, `∂x = γσ⁻¹·(g − ∂β/M − x̂·∂γ/M)`.

use rayon::prelude::*;

use std::mem::MaybeUninit;

use super::{simd_kernel, vectorized, written_in_parallel};

/// The sizes of a `[N, C, L]` map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BnShape {
    /// Samples, `N`.
    pub batch: usize,
    /// Channels, `C`.
    pub channels: usize,
    /// Values per channel and sample, `L = H·W`.
    pub plane: usize,
}

impl BnShape {
    fn len(&self) -> usize {
        self.batch * self.channels * self.plane
    }

    /// Values per channel, `M = N·L`.
    fn count(&self) -> usize {
        self.batch * self.plane
    }

    /// The `N` rows of channel `c`.
    fn rows<'a>(&self, x: &'a [f32], c: usize) -> impl Iterator<Item = &'a [f32]> {
        let (channels, plane) = (self.channels, self.plane);
        (0..self.batch).map(move |n| &x[(n * channels + c) * plane..][..plane])
    }

    #[track_caller]
    fn check(&self, what: &str, len: usize, expected: usize) {
        assert!(
            self.count() > 0,
            "{self:?}: BatchNorm needs at least one value per channel"
        );
        assert_eq!(len, expected, "{what} of {self:?} has the wrong length");
    }
}

/// What the forward pass computed: the output and, per channel, the batch mean, the biased
/// variance (for the running statistics) and `σ⁻¹` (for the backward pass).
#[derive(Debug, Clone)]
pub struct BnForward {
    pub y: Vec<f32>,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub inv_std: Vec<f32>,
}

/// Values summed in `f32` lanes before the lanes move into the `f64` total: at most 256 per
/// lane plus one row's share (rows longer than this are summed in pieces of it), few enough
/// that the `f32` rounding stays near the data's own. The sums run over whole channels, across
/// rows: moving the lanes into `f64` after every row cost as much as the sums themselves on
/// ResNet-32's 8x8 maps (AVX2, `perf annotate`: scalar conversions).
const VALUES_PER_FLUSH: usize = 1 << 12;

/// Lanes of the channel sums: two AVX2 registers, one AVX-512 register, independent chains.
const LANES: usize = 16;

/// `K` running sums over a channel's rows: in [`LANES`] `f32` lanes each, moved into `f64`
/// totals every [`VALUES_PER_FLUSH`] values.
struct LaneSums<const K: usize> {
    lanes: [[f32; LANES]; K],
    totals: [f64; K],
    pending: usize,
}

impl<const K: usize> LaneSums<K> {
    #[inline(always)]
    fn new() -> Self {
        LaneSums {
            lanes: [[0.0; LANES]; K],
            totals: [0.0; K],
            pending: 0,
        }
    }

    /// Counts `values` more values into the lanes (already added), flushing when due.
    #[inline(always)]
    fn added(&mut self, values: usize) {
        self.pending += values;
        if self.pending >= VALUES_PER_FLUSH {
            self.flush();
        }
    }

    #[inline(always)]
    fn flush(&mut self) {
        for (total, lanes) in self.totals.iter_mut().zip(&mut self.lanes) {
            *total += lanes.iter().map(|&v| v as f64).sum::<f64>();
            *lanes = [0.0; LANES];
        }
        self.pending = 0;
    }

    #[inline(always)]
    fn totals(mut self) -> [f64; K] {
        self.flush();
        self.totals
    }
}

/// `Σ f(v)` over `rows`, in [`LaneSums`] so that the loop vectorises.
#[inline(always)]
fn channel_sum<'a>(rows: impl Iterator<Item = &'a [f32]>, f: impl Fn(f32) -> f32) -> f64 {
    let mut sums = LaneSums::<1>::new();
    for row in rows.flat_map(|row| row.chunks(VALUES_PER_FLUSH)) {
        let chunks = row.chunks_exact(LANES);
        let rest = chunks.remainder();
        let [lanes] = &mut sums.lanes;
        for chunk in chunks {
            for (lane, &v) in lanes.iter_mut().zip(chunk) {
                *lane += f(v);
            }
        }
        for (lane, &v) in lanes.iter_mut().zip(rest) {
            *lane += f(v);
        }
        sums.added(row.len());
    }
    let [total] = sums.totals();
    total
}

/// BatchNorm with batch statistics (then ReLU if `relu`) of `x` (`[N, C, L]`).
pub fn batch_norm_train(
    shape: &BnShape,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    epsilon: f64,
    relu: bool,
) -> BnForward {
    shape.check("x", x.len(), shape.len());
    shape.check("gamma", gamma.len(), shape.channels);
    shape.check("beta", beta.len(), shape.channels);
    let stats: Vec<(f32, f32, f32)> = (0..shape.channels)
        .into_par_iter()
        .map(|c| {
            vectorized(ChannelStats {
                shape,
                x,
                c,
                epsilon,
            })
        })
        .collect();
    let plane = shape.plane;
    let y = written_in_parallel(x.len(), plane, |row, y| {
        let c = row % shape.channels;
        let (mean, _, inv_std) = stats[c];
        let scale = gamma[c] * inv_std;
        let shift = beta[c] - mean * scale;
        let x = &x[row * plane..(row + 1) * plane];
        vectorized(NormalizeRow {
            y,
            x,
            scale,
            shift,
            relu,
        });
        x.len()
    });
    BnForward {
        y,
        mean: stats.iter().map(|s| s.0).collect(),
        var: stats.iter().map(|s| s.1).collect(),
        inv_std: stats.iter().map(|s| s.2).collect(),
    }
}

/// `Σ x` over the `N·L` values of every channel of `x` (`[N, C, L]`): the bias gradient of a
/// convolution from its output gradient.
pub fn channel_sums(x: &[f32], [batch, channels, plane]: [usize; 3]) -> Vec<f32> {
    let shape = BnShape {
        batch,
        channels,
        plane,
    };
    assert_eq!(x.len(), shape.len(), "x of {shape:?} has the wrong length");
    (0..channels)
        .into_par_iter()
        .map(|c| {
            vectorized(ChannelTotal {
                shape: &shape,
                x,
                c,
            }) as f32
        })
        .collect()
}

simd_kernel! {
    /// `Σ x` over channel `c`.
    ChannelTotal<'a> { shape: &'a BnShape, x: &'a [f32], c: usize } -> f64 {
        channel_sum(shape.rows(x, c), |v| v)
    }
}

/// The gradients `(∂x, ∂γ, ∂β)` of [`batch_norm_train`] for the output gradient `grad_out`;
/// `y` is the forward output (its zeros are where the ReLU clipped, when `relu`).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train_backward(
    shape: &BnShape,
    x: &[f32],
    y: &[f32],
    grad_out: &[f32],
    gamma: &[f32],
    mean: &[f32],
    inv_std: &[f32],
    relu: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    for (what, len) in [("x", x.len()), ("y", y.len()), ("grad_out", grad_out.len())] {
        shape.check(what, len, shape.len());
    }
    for (what, len) in [
        ("gamma", gamma.len()),
        ("mean", mean.len()),
        ("inv_std", inv_std.len()),
    ] {
        shape.check(what, len, shape.channels);
    }
    let maps = Maps { x, y, grad_out };
    if relu {
        backward::<true>(shape, maps, gamma, mean, inv_std)
    } else {
        backward::<false>(shape, maps, gamma, mean, inv_std)
    }
}

/// The three `[N, C, L]` maps the backward pass reads.
#[derive(Clone, Copy)]
struct Maps<'a> {
    x: &'a [f32],
    y: &'a [f32],
    grad_out: &'a [f32],
}

/// The gradient reaching the BatchNorm: zero where the ReLU's output was (with `RELU`).
///
/// A bit mask rather than `if y <= 0 { 0 } else { g }`: LLVM compiles the branch into a
/// conditional scalar load per element, the mask into one vector `and` (measured with `perf
/// annotate`: the backward pass's reductions went from scalar to SIMD).
#[inline(always)]
fn passed<const RELU: bool>(y: f32, g: f32) -> f32 {
    if !RELU {
        return g;
    }
    let keep = u32::from(y > 0.0).wrapping_neg();
    f32::from_bits(g.to_bits() & keep)
}

/// Adds one row's `(Σ g, Σ g·(x − m))`, with `g` masked by the ReLU, into `sums`, lane by lane
/// so that the loop vectorises.
///
/// The mask is a multiplication by 0 or 1 here: LLVM turns both a branch and a bit mask into a
/// conditional scalar load of `g` per lane (seen with `perf annotate`), which does not
/// vectorise. It differs from the mask only for a non-finite gradient (0·∞ is NaN), and
/// training stops at the first non-finite loss anyway.
#[inline(always)]
fn add_row_sums<const RELU: bool>(sums: &mut LaneSums<2>, x: &[f32], y: &[f32], g: &[f32], m: f32) {
    let keep = |y: f32| if !RELU || y > 0.0 { 1.0f32 } else { 0.0 };
    let (xs, ys, gs) = (
        x.chunks_exact(LANES),
        y.chunks_exact(LANES),
        g.chunks_exact(LANES),
    );
    let tail = xs
        .remainder()
        .iter()
        .zip(ys.remainder())
        .zip(gs.remainder());
    let [lanes_g, lanes_gx] = &mut sums.lanes;
    for ((x, y), g) in xs.zip(ys).zip(gs) {
        for i in 0..LANES {
            let gi = g[i] * keep(y[i]);
            lanes_g[i] += gi;
            lanes_gx[i] += gi * (x[i] - m);
        }
    }
    for (i, ((&x, &y), &g)) in tail.enumerate() {
        let gi = g * keep(y);
        lanes_g[i] += gi;
        lanes_gx[i] += gi * (x - m);
    }
    sums.added(x.len());
}

simd_kernel! {
    /// Mean, biased variance and `σ⁻¹` of channel `c` (two passes: the variance is centred).
    ChannelStats<'a> { shape: &'a BnShape, x: &'a [f32], c: usize, epsilon: f64 }
    -> (f32, f32, f32) {
        let count = shape.count() as f64;
        let mean = channel_sum(shape.rows(x, c), |v| v) / count;
        let m = mean as f32;
        let var = channel_sum(shape.rows(x, c), |v| (v - m) * (v - m)) / count;
        (m, var as f32, (1.0 / (var + epsilon).sqrt()) as f32)
    }
}

simd_kernel! {
    /// One row of the output, `x·scale + shift` (then ReLU).
    NormalizeRow<'a> {
        y: &'a mut [MaybeUninit<f32>],
        x: &'a [f32],
        scale: f32,
        shift: f32,
        relu: bool,
    } -> () {
        if relu {
            for (y, &x) in y.iter_mut().zip(x) {
                y.write((x * scale + shift).max(0.0));
            }
        } else {
            for (y, &x) in y.iter_mut().zip(x) {
                y.write(x * scale + shift);
            }
        }
    }
}

simd_kernel! {
    /// `(Σ g, Σ g·(x − m))` over the rows of channel `c`.
    ChannelSums<'a, const RELU: bool> { shape: &'a BnShape, maps: Maps<'a>, c: usize, m: f32 }
    -> (f64, f64) {
        let rows = shape
            .rows(maps.x, c)
            .zip(shape.rows(maps.y, c))
            .zip(shape.rows(maps.grad_out, c));
        let mut sums = LaneSums::<2>::new();
        let pieces = |row: &'a [f32]| row.chunks(VALUES_PER_FLUSH);
        for ((x, y), g) in rows {
            for ((x, y), g) in pieces(x).zip(pieces(y)).zip(pieces(g)) {
                add_row_sums::<RELU>(&mut sums, x, y, g, m);
            }
        }
        let [g, gx] = sums.totals();
        (g, gx)
    }
}

simd_kernel! {
    /// One row of the input gradient, `k·(g − a − (x − m)·b)`.
    GradRow<'a, const RELU: bool> {
        dx: &'a mut [MaybeUninit<f32>],
        x: &'a [f32],
        y: &'a [f32],
        g: &'a [f32],
        coefficients: [f32; 4],
    } -> () {
        let [k, a, b, m] = coefficients;
        for (((dx, &x), &y), &g) in dx.iter_mut().zip(x).zip(y).zip(g) {
            dx.write(k * (passed::<RELU>(y, g) - a - (x - m) * b));
        }
    }
}

fn backward<const RELU: bool>(
    shape: &BnShape,
    maps: Maps<'_>,
    gamma: &[f32],
    mean: &[f32],
    inv_std: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let plane = shape.plane;
    let sums: Vec<(f64, f64)> = (0..shape.channels)
        .into_par_iter()
        .map(|c| {
            vectorized(ChannelSums::<RELU> {
                shape,
                maps,
                c,
                m: mean[c],
            })
        })
        .collect();
    let count = shape.count() as f64;
    // ∂x = k·(g − a − (x − μ)·b) per channel.
    let coefficients: Vec<(f32, f32, f32)> = sums
        .iter()
        .enumerate()
        .map(|(c, &(sum_g, sum_gx))| {
            let inv_std = inv_std[c] as f64;
            (
                (gamma[c] as f64 * inv_std) as f32,
                (sum_g / count) as f32,
                (sum_gx * inv_std * inv_std / count) as f32,
            )
        })
        .collect();
    let grad_x = written_in_parallel(maps.x.len(), plane, |row, dx| {
        let c = row % shape.channels;
        let (k, a, b) = coefficients[c];
        let m = mean[c];
        let at = row * plane..(row + 1) * plane;
        let (x, y, g) = (&maps.x[at.clone()], &maps.y[at.clone()], &maps.grad_out[at]);
        vectorized(GradRow::<RELU> {
            dx,
            x,
            y,
            g,
            coefficients: [k, a, b, m],
        });
        x.len()
    });
    let grad_gamma = sums
        .iter()
        .zip(inv_std)
        .map(|(&(_, sum_gx), &s)| (sum_gx * s as f64) as f32)
        .collect();
    let grad_beta = sums.iter().map(|&(sum_g, _)| sum_g as f32).collect();
    (grad_x, grad_gamma, grad_beta)
}

#[cfg(test)]
mod tests {
    use burn::backend::Autodiff;
    use burn::module::Param;
    use burn::nn::BatchNormConfig;
    use burn::tensor::activation::relu as burn_relu;
    use burn::tensor::{Tensor, TensorData};
    use burn_flex::Flex;

    use super::*;
    use crate::kernels::assert_close_to_burn;
    use lortflow_data::dataset::Rng;

    type B = Autodiff<Flex>;

    fn values(rng: &mut Rng, len: usize, mean: f32, spread: f32) -> Vec<f32> {
        (0..len)
            .map(|_| mean + spread * (rng.next_f64() as f32 * 2.0 - 1.0))
            .collect()
    }

    /// Against `burn::nn::BatchNorm::forward` (and ReLU) under autodiff: output, running
    /// statistics' inputs, and all three gradients.
    fn check(shape: BnShape, relu: bool, rng: &mut Rng) {
        let device = Default::default();
        let BnShape {
            batch: n,
            channels: c,
            plane: l,
        } = shape;
        // An offset mean and a large spread, as real conv outputs have.
        let x = values(rng, n * c * l, 3.0, 5.0);
        let gamma = values(rng, c, 1.0, 0.5);
        let beta = values(rng, c, 0.0, 0.5);
        let grad_out = values(rng, n * c * l, 0.0, 1.0);

        let mut bn = BatchNormConfig::new(c).init::<B>(&device);
        bn.gamma = Param::from_tensor(Tensor::from_data(
            TensorData::new(gamma.clone(), [c]),
            &device,
        ));
        bn.beta = Param::from_tensor(Tensor::from_data(
            TensorData::new(beta.clone(), [c]),
            &device,
        ));
        let xt = Tensor::<B, 3>::from_data(TensorData::new(x.clone(), [n, c, l]), &device)
            .require_grad();
        let yt = bn.forward(xt.clone().reshape([n, c, l, 1]));
        let yt = if relu { burn_relu(yt) } else { yt };
        let g = Tensor::<B, 4>::from_data(TensorData::new(grad_out.clone(), [n, c, l, 1]), &device);
        let grads = (yt.clone() * g).sum().backward();
        let read = |t: Tensor<Flex, 1>| t.into_data().to_vec::<f32>().unwrap();
        let burn_y: Vec<f32> = yt.into_data().to_vec().unwrap();
        let burn_dx: Vec<f32> = xt.grad(&grads).unwrap().into_data().to_vec().unwrap();
        let burn_dgamma = read(bn.gamma.val().grad(&grads).unwrap());
        let burn_dbeta = read(bn.beta.val().grad(&grads).unwrap());
        // The statistics, directly in f64.
        let channels = c;
        let channel =
            |k: usize| (0..n).flat_map(move |s| (0..l).map(move |i| (s * channels + k) * l + i));
        let m = (n * l) as f64;
        let exact_mean: Vec<f64> = (0..c)
            .map(|k| channel(k).map(|i| x[i] as f64).sum::<f64>() / m)
            .collect();
        let exact_var: Vec<f32> = (0..c)
            .map(|k| {
                let mu = exact_mean[k];
                (channel(k).map(|i| (x[i] as f64 - mu).powi(2)).sum::<f64>() / m) as f32
            })
            .collect();
        let exact_mean: Vec<f32> = exact_mean.iter().map(|&v| v as f32).collect();

        let fwd = batch_norm_train(&shape, &x, &gamma, &beta, 1e-5, relu);
        assert_close_to_burn("y", &fwd.y, &burn_y);
        assert_close_to_burn("mean", &fwd.mean, &exact_mean);
        assert_close_to_burn("variance", &fwd.var, &exact_var);
        let (dx, dgamma, dbeta) = batch_norm_train_backward(
            &shape,
            &x,
            &fwd.y,
            &grad_out,
            &gamma,
            &fwd.mean,
            &fwd.inv_std,
            relu,
        );
        assert_close_to_burn("∂x", &dx, &burn_dx);
        assert_close_to_burn("∂γ", &dgamma, &burn_dgamma);
        assert_close_to_burn("∂β", &dbeta, &burn_dbeta);
    }

    /// The backbones' maps (small CNN 28²/14²/7², ResNet 32²/8²) and odd ones: batch 1,
    /// one channel, one value per plane, planes that are not a multiple of the lane width.
    #[test]
    fn forward_and_gradients_match_burn() {
        let mut rng = Rng::seed_from_u64(21);
        for (shape, relu) in [
            ((4, 32, 28 * 28), true),
            ((3, 64, 14 * 14), true),
            ((5, 128, 49), true),
            ((2, 16, 32 * 32), false),
            ((2, 64, 64), false),
            ((1, 3, 7), true),
            ((1, 1, 13), false),
            ((9, 5, 1), true),
            ((2, 7, 11 * 9), true),
        ] {
            let (batch, channels, plane) = shape;
            let shape = BnShape {
                batch,
                channels,
                plane,
            };
            check(shape, relu, &mut rng);
        }
    }

    #[test]
    fn the_variance_is_the_biased_one_and_stable_for_large_means() {
        let shape = BnShape {
            batch: 2,
            channels: 1,
            plane: 2,
        };
        let x = [1000.0, 1001.0, 1002.0, 1003.0];
        let fwd = batch_norm_train(&shape, &x, &[1.0], &[0.0], 0.0, false);
        assert_eq!(fwd.mean, [1001.5]);
        assert!((fwd.var[0] - 1.25).abs() < 1e-6, "{:?}", fwd.var);
    }
}
