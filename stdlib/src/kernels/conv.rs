//! A 2-D convolution (NCHW, groups = 1) and its two gradients. Stride-1 convolutions go to
//! [`direct_conv`] (read straight from the image) where it is faster; everything else, and the
//! comparison in `examples/conv_bench.rs`, is im2col and one well-shaped matrix product per
//! sample:
//!
//! With `col` the im2col matrix of one sample (`[C·KH·KW, OH·OW]`: row `(c, ki, kj)` holds the
//! input pixels that kernel tap meets at every output position, zero in the padding):
//!
//! - weight gradient: `∂W[O, C·KH·KW] = Σ_n ∂Y_n[O, OH·OW] · col_nᵀ`;
//! - input gradient: `∂col_n = Wᵀ[C·KH·KW, O] · ∂Y_n`, scattered back onto the image (col2im).
//!
//! Burn's generic versions (what `Autodiff<Flex>` runs today) swap the batch and channel axes
//! first, which flex copies element by element, and then run a convolution whose product is
//! shaped for a forward pass. Here every product reads its operands where they are. Samples are
//! split over rayon's threads: the input gradient per sample, the weight gradient in one chunk
//! of samples per thread, each with its own accumulator, summed at the end.

use rayon::prelude::*;

pub use super::conv_shape::{Conv2dShape, Epilogue};
use super::direct_conv;
use crate::gemm::{Mat, matmul};

/// Input channels up to which the direct kernel is at least as fast as im2col + `gemm`: each of
/// its tiles reads every (channel, tap) row of a block of positions, which outgrows the caches
/// beyond ~128 channels, where `gemm`'s own blocking wins (`examples/conv_bench.rs`, ResNet-50's
/// 3x3 layers at 224x224, batch 16, forward: 64 channels at 56x56 1.8x faster direct, 128 at
/// 28x28 even, 256 at 14x14 1.2x and 512 at 7x7 1.7x slower; the input gradient alike).
pub const DIRECT_MAX_CHANNELS: usize = 128;

fn forward_is_direct(shape: &Conv2dShape) -> bool {
    direct_conv::covers(shape) && shape.in_channels <= DIRECT_MAX_CHANNELS
}

/// The output `[N, O, OH, OW]` of the convolution of `x` (`[N, C, H, W]`) with `weight`
/// (`[O, C, KH, KW]`), plus `bias[o]` on every output of channel `o` when given: per sample,
/// `Y_n[O, OH·OW] = W[O, C·KH·KW] · col_n` (a 1x1 stride-1 convolution multiplies `x` itself).
/// Stride-1 convolutions with up to [`DIRECT_MAX_CHANNELS`] input channels are read straight
/// from the image ([`direct_conv`]); the rest take im2col.
pub fn conv2d(shape: &Conv2dShape, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    if forward_is_direct(shape) {
        return direct_conv::conv2d_then(shape, x, weight, bias, None);
    }
    im2col_conv2d(shape, x, weight, bias)
}

/// [`conv2d`] then `epilogue`, fused into the direct kernel's last pass (after it otherwise).
pub fn conv2d_then(
    shape: &Conv2dShape,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    epilogue: Epilogue<'_>,
) -> Vec<f32> {
    let [oh, ow] = shape.out_size();
    if let Epilogue::AddRelu(residual) = epilogue {
        let len = shape.batch * shape.out_channels * oh * ow;
        assert_eq!(
            residual.len(),
            len,
            "residual of {shape:?} has the wrong length"
        );
    }
    if forward_is_direct(shape) {
        return direct_conv::conv2d_then(shape, x, weight, bias, Some(epilogue));
    }
    let mut y = im2col_conv2d(shape, x, weight, bias);
    y.par_iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v = epilogue.apply(*v, i));
    y
}

/// [`conv2d`] through im2col and one `gemm` per sample, for every geometry (what
/// `examples/conv_bench.rs` compares the direct kernel with).
pub fn im2col_conv2d(
    shape: &Conv2dShape,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let (n, o) = (shape.batch, shape.out_channels);
    let (input, patch, positions) = (shape.input_len(), shape.patch_len(), shape.positions());
    shape.check("x", x.len(), n * input);
    shape.check("weight", weight.len(), o * patch);
    if let Some(bias) = bias {
        shape.check("bias", bias.len(), o);
    }
    let mut out = vec![0.0f32; n * o * positions];
    if positions == 0 || out.is_empty() {
        return out;
    }
    let pointwise = shape.kernel == [1, 1] && shape.stride == [1, 1] && shape.padding == [0, 0];
    out.par_chunks_mut(o * positions)
        .zip(x.par_chunks(input))
        .for_each_init(
            || vec![0.0f32; if pointwise { 0 } else { patch * positions }],
            |col, (y, x)| {
                let col: &[f32] = if pointwise {
                    x
                } else {
                    im2col(shape, x, col);
                    col
                };
                matmul(
                    y,
                    Mat::dense(o, positions),
                    false,
                    weight,
                    Mat::dense(o, patch),
                    col,
                    Mat::dense(patch, positions),
                );
                if let Some(bias) = bias {
                    for (row, &b) in y.chunks_exact_mut(positions).zip(bias) {
                        row.iter_mut().for_each(|v| *v += b);
                    }
                }
            },
        );
    out
}

/// The weight gradient `[O, C, KH, KW]` from the input `x` (`[N, C, H, W]`) and the output
/// gradient `grad_out` (`[N, O, OH, OW]`). Stride 1 with few output channels is read straight
/// from the image ([`direct_conv::weight_grad`]): im2col's product `[O, P] · [P, C·KH·KW]` has
/// mostly empty `gemm` tiles below ~32 output channels (ResNet-32's first two stages: 1.5–2.7x
/// faster direct, `examples/conv_bench.rs`), while above it the `gemm` is efficient and the
/// direct kernel's grid padding costs more (the small CNN's 64 and 128 channels, 14x14 and 7x7).
/// The rest goes through im2col.
pub fn conv2d_weight_grad(shape: &Conv2dShape, x: &[f32], grad_out: &[f32]) -> Vec<f32> {
    if direct_conv::covers(shape)
        && shape.out_channels <= 32
        && shape.in_channels >= direct_conv::TILE_CHANNELS
    {
        return direct_conv::weight_grad(shape, x, grad_out);
    }
    im2col_conv2d_weight_grad(shape, x, grad_out)
}

/// [`conv2d_weight_grad`] through im2col and one `gemm` per sample, for every geometry.
pub fn im2col_conv2d_weight_grad(shape: &Conv2dShape, x: &[f32], grad_out: &[f32]) -> Vec<f32> {
    let (n, o) = (shape.batch, shape.out_channels);
    let (input, patch, positions) = (shape.input_len(), shape.patch_len(), shape.positions());
    shape.check("x", x.len(), n * input);
    shape.check("grad_out", grad_out.len(), n * o * positions);
    let weight_len = o * patch;
    if n == 0 || positions == 0 || weight_len == 0 {
        return vec![0.0; weight_len];
    }
    // One chunk of samples per thread, each summing into its own gradient.
    let per_chunk = n.div_ceil(rayon::current_num_threads().clamp(1, n));
    let partials: Vec<Vec<f32>> = (0..n)
        .step_by(per_chunk)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|start| {
            let mut grad = vec![0.0f32; weight_len];
            let mut col = vec![0.0f32; patch * positions];
            for s in start..(start + per_chunk).min(n) {
                im2col(shape, &x[s * input..(s + 1) * input], &mut col);
                matmul(
                    &mut grad,
                    Mat::dense(o, patch),
                    s > start,
                    grad_out,
                    Mat::dense(o, positions).at(s * o * positions),
                    &col,
                    Mat::dense(patch, positions).t(),
                );
            }
            grad
        })
        .collect();
    let mut partials = partials.into_iter();
    let mut total = partials.next().unwrap_or_else(|| vec![0.0; weight_len]);
    for partial in partials {
        total.iter_mut().zip(&partial).for_each(|(t, p)| *t += p);
    }
    total
}

/// The input gradient `[N, C, H, W]` from the weight (`[O, C, KH, KW]`) and the output gradient
/// (`[N, O, OH, OW]`).
/// Stride 1 is the forward convolution of `grad_out` with the flipped kernel
/// ([`direct_conv::input_grad_as_forward`], whose input is the output gradient: up to
/// [`DIRECT_MAX_CHANNELS`] output channels) unless the input has so few channels that the
/// direct kernel's tiles of output channels would mostly compute padding; the rest take col2im.
pub fn conv2d_input_grad(shape: &Conv2dShape, weight: &[f32], grad_out: &[f32]) -> Vec<f32> {
    if direct_conv::covers(shape)
        && shape.out_channels <= DIRECT_MAX_CHANNELS
        && shape.in_channels >= direct_conv::TILE_CHANNELS
    {
        return direct_conv::input_grad_as_forward(shape, weight, grad_out);
    }
    im2col_conv2d_input_grad(shape, weight, grad_out)
}

/// [`conv2d_input_grad`] through one `gemm` per sample and col2im, for every geometry.
pub fn im2col_conv2d_input_grad(shape: &Conv2dShape, weight: &[f32], grad_out: &[f32]) -> Vec<f32> {
    let (n, o) = (shape.batch, shape.out_channels);
    let (input, patch, positions) = (shape.input_len(), shape.patch_len(), shape.positions());
    shape.check("weight", weight.len(), o * patch);
    shape.check("grad_out", grad_out.len(), n * o * positions);
    let mut grad = vec![0.0f32; n * input];
    if positions == 0 || input == 0 {
        return grad;
    }
    grad.par_chunks_mut(input)
        .zip(grad_out.par_chunks(o * positions))
        .for_each_init(
            || vec![0.0f32; patch * positions],
            |col, (grad_n, grad_out_n)| {
                matmul(
                    col,
                    Mat::dense(patch, positions),
                    false,
                    weight,
                    Mat::dense(o, patch).t(),
                    grad_out_n,
                    Mat::dense(o, positions),
                );
                col2im(shape, col, grad_n);
            },
        );
    grad
}

/// The output columns `ow` whose tap `k` (offset `k·dilation − padding`) lands inside a row of
/// `size` pixels, as a half-open range.
fn valid_columns(
    shape: &Conv2dShape,
    axis: usize,
    k: usize,
    size: usize,
    outputs: usize,
) -> (usize, usize) {
    let (stride, pad) = (shape.stride[axis], shape.padding[axis]);
    let offset = (k * shape.dilation[axis]) as isize - pad as isize;
    // First o with o·stride + offset ≥ 0, and first o with o·stride + offset ≥ size.
    let first = |bound: isize| -> usize {
        let need = bound - offset;
        if need <= 0 {
            0
        } else {
            (need as usize).div_ceil(stride)
        }
    };
    let lo = first(0).min(outputs);
    let hi = first(size as isize).min(outputs);
    (lo, hi.max(lo))
}

/// One sample's `[C·KH·KW, OH·OW]` im2col matrix into `col`.
fn im2col(shape: &Conv2dShape, x: &[f32], col: &mut [f32]) {
    let (h, w) = (shape.height, shape.width);
    let [kh, kw] = shape.kernel;
    let [oh, ow] = shape.out_size();
    let [sh, sw] = shape.stride;
    let mut rows = col.chunks_exact_mut(oh * ow);
    for c in 0..shape.in_channels {
        let plane = &x[c * h * w..(c + 1) * h * w];
        for ki in 0..kh {
            let (y_lo, y_hi) = valid_columns(shape, 0, ki, h, oh);
            let y_offset = (ki * shape.dilation[0]) as isize - shape.padding[0] as isize;
            for kj in 0..kw {
                let row = rows.next().expect("col has C·KH·KW rows");
                let (x_lo, x_hi) = valid_columns(shape, 1, kj, w, ow);
                let x_offset = (kj * shape.dilation[1]) as isize - shape.padding[1] as isize;
                for (oy, out) in row.chunks_exact_mut(ow).enumerate() {
                    if oy < y_lo || oy >= y_hi {
                        out.fill(0.0);
                        continue;
                    }
                    let iy = (oy * sh) as isize + y_offset;
                    let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                    out[..x_lo].fill(0.0);
                    out[x_hi..].fill(0.0);
                    let start = (x_lo * sw) as isize + x_offset;
                    if sw == 1 {
                        let start = start as usize;
                        out[x_lo..x_hi].copy_from_slice(&src[start..start + (x_hi - x_lo)]);
                    } else {
                        for (i, v) in out[x_lo..x_hi].iter_mut().enumerate() {
                            *v = src[start as usize + i * sw];
                        }
                    }
                }
            }
        }
    }
}

/// Adds one sample's `[C·KH·KW, OH·OW]` column gradients onto its image gradient (the adjoint
/// of [`im2col`]).
fn col2im(shape: &Conv2dShape, col: &[f32], grad: &mut [f32]) {
    let (h, w) = (shape.height, shape.width);
    let [kh, kw] = shape.kernel;
    let [oh, ow] = shape.out_size();
    let [sh, sw] = shape.stride;
    let mut rows = col.chunks_exact(oh * ow);
    for c in 0..shape.in_channels {
        let plane = &mut grad[c * h * w..(c + 1) * h * w];
        for ki in 0..kh {
            let (y_lo, y_hi) = valid_columns(shape, 0, ki, h, oh);
            let y_offset = (ki * shape.dilation[0]) as isize - shape.padding[0] as isize;
            for kj in 0..kw {
                let row = rows.next().expect("col has C·KH·KW rows");
                let (x_lo, x_hi) = valid_columns(shape, 1, kj, w, ow);
                let x_offset = (kj * shape.dilation[1]) as isize - shape.padding[1] as isize;
                for oy in y_lo..y_hi {
                    let iy = ((oy * sh) as isize + y_offset) as usize;
                    let dst = &mut plane[iy * w..(iy + 1) * w];
                    let src = &row[oy * ow + x_lo..oy * ow + x_hi];
                    let start = ((x_lo * sw) as isize + x_offset) as usize;
                    if sw == 1 {
                        dst[start..start + src.len()]
                            .iter_mut()
                            .zip(src)
                            .for_each(|(d, s)| *d += s);
                    } else {
                        for (i, s) in src.iter().enumerate() {
                            dst[start + i * sw] += s;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::Autodiff;
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::{Tensor, TensorData};
    use burn_flex::Flex;

    use super::*;
    use crate::kernels::assert_close_to_burn;
    use lortflow_data::dataset::Rng;

    type B = Autodiff<Flex>;

    /// The output and both gradients of `sum(conv2d(x, w) ⊙ grad_out)` through Burn's own ops: what
    /// `Autodiff<Flex>` computes in training today.
    fn burn_grads(
        shape: &Conv2dShape,
        x: &[f32],
        w: &[f32],
        grad_out: &[f32],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let device = Default::default();
        let s = shape;
        let xt = Tensor::<B, 4>::from_data(
            TensorData::new(x.to_vec(), [s.batch, s.in_channels, s.height, s.width]),
            &device,
        )
        .require_grad();
        let wt = Tensor::<B, 4>::from_data(
            TensorData::new(
                w.to_vec(),
                [s.out_channels, s.in_channels, s.kernel[0], s.kernel[1]],
            ),
            &device,
        )
        .require_grad();
        let y = burn::tensor::module::conv2d(
            xt.clone(),
            wt.clone(),
            None,
            ConvOptions::new(s.stride, s.padding, s.dilation, 1),
        );
        let [oh, ow] = s.out_size();
        assert_eq!(y.dims(), [s.batch, s.out_channels, oh, ow], "{s:?}");
        let g = Tensor::<B, 4>::from_data(TensorData::new(grad_out.to_vec(), y.dims()), &device);
        let grads = (y.clone() * g).sum().backward();
        let read = |t: Tensor<Flex, 4>| t.into_data().to_vec::<f32>().unwrap();
        (
            read(y.inner()),
            read(xt.grad(&grads).unwrap()),
            read(wt.grad(&grads).unwrap()),
        )
    }

    fn values(rng: &mut Rng, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| rng.next_f64() as f32 * 2.0 - 1.0)
            .collect()
    }

    fn check(shape: Conv2dShape, rng: &mut Rng) {
        let [oh, ow] = shape.out_size();
        let x = values(rng, shape.batch * shape.input_len());
        let w = values(rng, shape.out_channels * shape.patch_len());
        let grad_out = values(rng, shape.batch * shape.out_channels * oh * ow);
        let (burn_y, burn_x, burn_w) = burn_grads(&shape, &x, &w, &grad_out);
        assert_close_to_burn(
            &format!("output {shape:?}"),
            &conv2d(&shape, &x, &w, None),
            &burn_y,
        );
        let bias = values(rng, shape.out_channels);
        let [oh, ow] = shape.out_size();
        let biased: Vec<f32> = burn_y
            .iter()
            .enumerate()
            .map(|(i, v)| v + bias[i / (oh * ow) % shape.out_channels])
            .collect();
        assert_close_to_burn(
            &format!("biased output {shape:?}"),
            &conv2d(&shape, &x, &w, Some(&bias)),
            &biased,
        );
        assert_close_to_burn(
            &format!("input gradient {shape:?}"),
            &conv2d_input_grad(&shape, &w, &grad_out),
            &burn_x,
        );
        assert_close_to_burn(
            &format!("weight gradient {shape:?}"),
            &conv2d_weight_grad(&shape, &x, &grad_out),
            &burn_w,
        );
    }

    fn shape(
        [batch, in_channels, height, width]: [usize; 4],
        out_channels: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Conv2dShape {
        Conv2dShape {
            batch,
            in_channels,
            height,
            width,
            out_channels,
            kernel: [k, k],
            stride: [stride, stride],
            padding: [padding, padding],
            dilation: [1, 1],
        }
    }

    /// The convolutions of every shipped architecture, at small batch sizes: the small CNN's
    /// 3x3 layers on 28x28, ResNet-32's 3x3 layers of each stage (direct kernel) and its
    /// stride-2 ones (im2col) on 32x32, the 1x1 stride-2
    /// projections, and a ResNet stem's 7x7 stride 2.
    #[test]
    fn the_shipped_architectures_shapes_match_burn() {
        let mut rng = Rng::seed_from_u64(1);
        for s in [
            shape([2, 1, 28, 28], 32, 3, 1, 1),
            shape([2, 32, 14, 14], 64, 3, 1, 1),
            shape([2, 3, 32, 32], 16, 3, 1, 1),
            shape([3, 16, 32, 32], 16, 3, 1, 1),
            shape([2, 32, 16, 16], 32, 3, 1, 1),
            shape([2, 64, 8, 8], 64, 3, 1, 1),
            shape([2, 16, 32, 32], 32, 3, 2, 1),
            shape([2, 16, 32, 32], 32, 1, 2, 0),
            shape([1, 64, 8, 8], 64, 1, 1, 0),
            shape([1, 3, 40, 40], 8, 7, 2, 3),
        ] {
            check(s, &mut rng);
        }
    }

    /// Random geometries: batch 1 to 3, 1 or 3 channels and more, odd sizes, stride 1 to 3,
    /// padding 0 to 2, dilation 1 or 2, rectangular kernels and images.
    #[test]
    fn random_shapes_match_burn() {
        let mut rng = Rng::seed_from_u64(7);
        let mut pick = |lo: usize, hi: usize| lo + rng.below((hi - lo + 1) as u64) as usize;
        let mut checked = 0;
        let mut data_rng = Rng::seed_from_u64(8);
        while checked < 40 {
            let kernel = [pick(1, 4), pick(1, 4)];
            let s = Conv2dShape {
                batch: pick(1, 3),
                in_channels: [1, 3, 5][pick(0, 2)],
                height: pick(1, 13),
                width: pick(1, 13),
                out_channels: pick(1, 6),
                kernel,
                stride: [pick(1, 3), pick(1, 3)],
                padding: [pick(0, 2), pick(0, 2)],
                dilation: [pick(1, 2), pick(1, 2)],
            };
            let [oh, ow] = s.out_size();
            if oh == 0 || ow == 0 {
                continue;
            }
            check(s, &mut data_rng);
            checked += 1;
        }
    }

    #[test]
    fn valid_columns_cover_exactly_the_taps_inside_the_image() {
        let mut rng = Rng::seed_from_u64(3);
        for _ in 0..500 {
            let mut pick = |n: usize| rng.below(n as u64) as usize;
            let s = Conv2dShape {
                batch: 1,
                in_channels: 1,
                height: 1 + pick(12),
                width: 1 + pick(12),
                out_channels: 1,
                kernel: [1, 1 + pick(5)],
                stride: [1, 1 + pick(3)],
                padding: [0, pick(3)],
                dilation: [1, 1 + pick(2)],
            };
            let ow = s.out_size()[1];
            for k in 0..s.kernel[1] {
                let (lo, hi) = valid_columns(&s, 1, k, s.width, ow);
                for o in 0..ow {
                    let i = (o * s.stride[1] + k * s.dilation[1]) as isize - s.padding[1] as isize;
                    let inside = i >= 0 && (i as usize) < s.width;
                    assert_eq!(inside, (lo..hi).contains(&o), "{s:?} k={k} o={o}");
                }
            }
        }
    }
}
