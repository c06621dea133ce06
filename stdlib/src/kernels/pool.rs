//! Max-pooling (with the position of each window's maximum, for the backward pass) and global
//! average pooling over NCHW maps, one plane (`H×W` of one sample and channel) at a time.
//!
//! Flex's max-pool with indices walks every window through a generic strided loop and stores
//! the indices as an `i64` tensor; the backbones' pools (2x2/2 in the small CNN, 3x3/2 with
//! padding 1 in the torchvision stem) are small, regular windows over contiguous rows, so here
//! the planes are split over rayon's threads and each window is read straight from its rows.
//! The semantics are PyTorch's (and Burn's): padding never wins, ties go to the first element
//! in row-major order, a NaN wins; the index is the position inside the plane, `h·W + w`.

use rayon::prelude::*;

use super::{simd_kernel, vectorized};

/// The geometry of a 2-D max-pool (dilation 1, floor mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool2dShape {
    /// Independent planes, `N·C`.
    pub planes: usize,
    /// Input height, `H`.
    pub height: usize,
    /// Input width, `W`.
    pub width: usize,
    /// `[KH, KW]`, at least 1.
    pub kernel: [usize; 2],
    /// `[stride_h, stride_w]`, at least 1.
    pub stride: [usize; 2],
    /// Implicit `-inf` padding on each side, `[pad_h, pad_w]`, at most half the kernel.
    pub padding: [usize; 2],
}

impl Pool2dShape {
    /// `[OH, OW]`, as PyTorch and Burn compute it in floor mode (0 when the window does not fit).
    pub fn out_size(&self) -> [usize; 2] {
        let out = |size: usize, axis: usize| {
            (size + 2 * self.padding[axis])
                .checked_sub(self.kernel[axis])
                .map_or(0, |free| free / self.stride[axis] + 1)
        };
        [out(self.height, 0), out(self.width, 1)]
    }

    #[track_caller]
    fn check(&self, what: &str, len: usize, expected: usize) {
        assert!(
            self.kernel.iter().chain(&self.stride).all(|&v| v > 0),
            "{self:?}: kernel and stride must be at least 1"
        );
        assert!(
            (0..2).all(|a| 2 * self.padding[a] <= self.kernel[a]),
            "{self:?}: padding may be at most half the kernel"
        );
        assert_eq!(len, expected, "{what} of {self:?} has the wrong length");
    }
}

/// Planes per rayon task: enough work per task that splitting costs nothing noticeable.
fn planes_per_task(plane_len: usize) -> usize {
    (16 * 1024 / plane_len.max(1)).max(1)
}

/// The max-pool of `x` (`[planes, H, W]`) and, for each output, the position of its maximum in
/// its plane (`h·W + w`).
pub fn max_pool2d(shape: &Pool2dShape, x: &[f32]) -> (Vec<f32>, Vec<u32>) {
    let (h, w) = (shape.height, shape.width);
    let [oh, ow] = shape.out_size();
    shape.check("x", x.len(), shape.planes * h * w);
    assert!(h * w <= u32::MAX as usize, "{shape:?}: a plane too large");
    let out_len = oh * ow;
    let mut values = vec![0.0f32; shape.planes * out_len];
    let mut indices = vec![0u32; shape.planes * out_len];
    if out_len == 0 {
        return (values, indices);
    }
    let chunk = planes_per_task(h * w);
    values
        .par_chunks_mut(chunk * out_len)
        .zip(indices.par_chunks_mut(chunk * out_len))
        .zip(x.par_chunks(chunk * h * w))
        .for_each(|((values, indices), x)| {
            let planes = values
                .chunks_exact_mut(out_len)
                .zip(indices.chunks_exact_mut(out_len))
                .zip(x.chunks_exact(h * w));
            for ((values, indices), plane) in planes {
                if shape.kernel == [2, 2] && shape.stride == [2, 2] && shape.padding == [0, 0] {
                    vectorized(PoolPlane2x2 {
                        plane,
                        w,
                        out_size: [oh, ow],
                        values,
                        indices,
                    });
                } else {
                    pool_plane(shape, plane, [oh, ow], values, indices);
                }
            }
        });
    (values, indices)
}

/// The 2x2 stride-2 window of the small CNN: two input rows per output row, `lanes` outputs at
/// a time. A vector pair of `2·lanes` inputs is split into its even and odd columns by `pulp`'s
/// deinterleave, which returns them in its own lane order (on AVX2, windows 0 4 1 5 2 6 3 7);
/// the outputs are written back through that order, [`DeinterleavedOrder`]. The scalar loop did
/// the stride-2 reads one window at a time and was a quarter of the small CNN's extraction on
/// AVX2 (`perf annotate`).
struct PoolPlane2x2<'a> {
    plane: &'a [f32],
    w: usize,
    out_size: [usize; 2],
    values: &'a mut [f32],
    indices: &'a mut [u32],
}

/// Most f32 lanes of any instruction set (AVX-512).
const MAX_LANES: usize = 16;

/// For each lane of the even vector `deinterleave_shfl_f32s` makes of `2·lanes` consecutive
/// values, the window (pair of columns) it holds.
struct DeinterleavedOrder([usize; MAX_LANES]);

impl DeinterleavedOrder {
    #[inline(always)]
    fn new<S: pulp::Simd>(simd: S) -> DeinterleavedOrder {
        let lanes = S::F32_LANES;
        let ramp: [f32; 2 * MAX_LANES] = std::array::from_fn(|i| i as f32);
        let pair = [
            simd.partial_load_f32s(&ramp[..lanes]),
            simd.partial_load_f32s(&ramp[lanes..2 * lanes]),
        ];
        let [even, _] = simd.deinterleave_shfl_f32s(pair);
        let even: &[f32] = bytemuck::cast_slice(std::slice::from_ref(&even));
        DeinterleavedOrder(std::array::from_fn(|i| {
            if i < lanes { even[i] as usize / 2 } else { 0 }
        }))
    }
}

impl pulp::WithSimd for PoolPlane2x2<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let PoolPlane2x2 {
            plane,
            w,
            out_size: [oh, ow],
            values,
            indices,
        } = self;
        let lanes = S::F32_LANES;
        let order = DeinterleavedOrder::new(simd);
        let load = |row: &[f32], at: usize| -> [S::f32s; 2] {
            let v: &[S::f32s] = bytemuck::cast_slice(&row[at..at + 2 * lanes]);
            [v[0], v[1]]
        };
        let vectors = if lanes > 1 { ow / lanes * lanes } else { 0 };
        for oy in 0..oh {
            let top = &plane[2 * oy * w..(2 * oy + 1) * w];
            let bottom = &plane[(2 * oy + 1) * w..(2 * oy + 2) * w];
            let out = &mut values[oy * ow..(oy + 1) * ow];
            let at = &mut indices[oy * ow..(oy + 1) * ow];
            let first = (2 * oy * w) as u32;
            for ox0 in (0..vectors).step_by(lanes) {
                let [top_even, top_odd] = simd.deinterleave_shfl_f32s(load(top, 2 * ox0));
                let [bottom_even, bottom_odd] = simd.deinterleave_shfl_f32s(load(bottom, 2 * ox0));
                // As the scalar loop below: offsets 0, 1, W, W+1 in the window, the first
                // maximum winning ties and a NaN winning all.
                let (mut best, mut offset) = (top_even, simd.splat_u32s(0));
                for (v, o) in [
                    (top_odd, 1),
                    (bottom_even, w as u32),
                    (bottom_odd, w as u32 + 1),
                ] {
                    let nan_over_number = simd.and_m32s(
                        simd.not_m32s(simd.equal_f32s(v, v)),
                        simd.equal_f32s(best, best),
                    );
                    let take = simd.or_m32s(simd.greater_than_f32s(v, best), nan_over_number);
                    best = simd.select_f32s(take, v, best);
                    offset = simd.select_u32s(take, simd.splat_u32s(o), offset);
                }
                let best: &[f32] = bytemuck::cast_slice(std::slice::from_ref(&best));
                let offset: &[u32] = bytemuck::cast_slice(std::slice::from_ref(&offset));
                for lane in 0..lanes {
                    let ox = ox0 + order.0[lane];
                    out[ox] = best[lane];
                    at[ox] = first + 2 * ox as u32 + offset[lane];
                }
            }
            for ox in vectors..ow {
                let (mut best, mut offset) = (top[2 * ox], 0u32);
                for (v, o) in [
                    (top[2 * ox + 1], 1),
                    (bottom[2 * ox], w as u32),
                    (bottom[2 * ox + 1], w as u32 + 1),
                ] {
                    if v > best || (v.is_nan() && !best.is_nan()) {
                        (best, offset) = (v, o);
                    }
                }
                out[ox] = best;
                at[ox] = first + 2 * ox as u32 + offset;
            }
        }
    }
}

/// Any window, stride and padding; the part of the window outside the plane is skipped.
fn pool_plane(
    shape: &Pool2dShape,
    plane: &[f32],
    [oh, ow]: [usize; 2],
    values: &mut [f32],
    indices: &mut [u32],
) {
    let (h, w) = (shape.height, shape.width);
    let [kh, kw] = shape.kernel;
    let [sh, sw] = shape.stride;
    let [ph, pw] = shape.padding;
    for oy in 0..oh {
        // Rows of the window inside the plane (padding ≤ kernel/2 keeps at least one).
        let y0 = (oy * sh).saturating_sub(ph);
        let y1 = (oy * sh + kh - ph).min(h);
        for ox in 0..ow {
            let x0 = (ox * sw).saturating_sub(pw);
            let x1 = (ox * sw + kw - pw).min(w);
            let mut best = f32::NEG_INFINITY;
            let mut best_at = y0 * w + x0;
            for y in y0..y1 {
                for (x, &v) in plane[y * w + x0..y * w + x1].iter().enumerate() {
                    if v > best || (v.is_nan() && !best.is_nan()) {
                        best = v;
                        best_at = y * w + x0 + x;
                    }
                }
            }
            values[oy * ow + ox] = best;
            indices[oy * ow + ox] = best_at as u32;
        }
    }
}

/// The input gradient of [`max_pool2d`]: each output's gradient added at its maximum's position.
pub fn max_pool2d_backward(shape: &Pool2dShape, grad_out: &[f32], indices: &[u32]) -> Vec<f32> {
    let plane_len = shape.height * shape.width;
    let [oh, ow] = shape.out_size();
    let out_len = oh * ow;
    shape.check("grad_out", grad_out.len(), shape.planes * out_len);
    shape.check("indices", indices.len(), shape.planes * out_len);
    let mut grad = vec![0.0f32; shape.planes * plane_len];
    if out_len == 0 {
        return grad;
    }
    let chunk = planes_per_task(plane_len);
    grad.par_chunks_mut(chunk * plane_len)
        .zip(grad_out.par_chunks(chunk * out_len))
        .zip(indices.par_chunks(chunk * out_len))
        .for_each(|((grad, grad_out), indices)| {
            let planes = grad
                .chunks_exact_mut(plane_len)
                .zip(grad_out.chunks_exact(out_len))
                .zip(indices.chunks_exact(out_len));
            for ((grad, grad_out), indices) in planes {
                if shape.kernel == [2, 2] && shape.stride == [2, 2] && shape.padding == [0, 0] {
                    vectorized(UnpoolPlane2x2 {
                        grad,
                        w: shape.width,
                        out_size: [oh, ow],
                        grad_out,
                        indices,
                    });
                    continue;
                }
                // Written before it is read: the first touch of a fresh zeroed page is then a
                // write, not a read of the shared zero page followed by a copy-on-write fault.
                grad.fill(0.0);
                for (&g, &i) in grad_out.iter().zip(indices) {
                    grad[i as usize] += g;
                }
            }
        });
    grad
}

simd_kernel! {
    /// The 2x2 stride-2 windows do not overlap: every input element is written once, with its
    /// window's gradient if it was the maximum and zero otherwise (as are the last row and
    /// column of an odd-sized plane, which no window covers) — one pass, no zero-fill, no
    /// scatter.
    UnpoolPlane2x2<'a> {
        grad: &'a mut [f32],
        w: usize,
        out_size: [usize; 2],
        grad_out: &'a [f32],
        indices: &'a [u32],
    } -> () {
        let [oh, ow] = out_size;
        let h = grad.len() / w;
        for oy in 0..oh {
            let (top, bottom) = grad[2 * oy * w..(2 * oy + 2) * w].split_at_mut(w);
            let g = &grad_out[oy * ow..(oy + 1) * ow];
            let at = &indices[oy * ow..(oy + 1) * ow];
            let first = (2 * oy * w) as u32;
            for ox in 0..ow {
                let (g, offset) = (g[ox], at[ox].wrapping_sub(first + 2 * ox as u32));
                let put = |o: u32| if offset == o { g } else { 0.0 };
                top[2 * ox] = put(0);
                top[2 * ox + 1] = put(1);
                bottom[2 * ox] = put(w as u32);
                bottom[2 * ox + 1] = put(w as u32 + 1);
            }
            top[2 * ow..].fill(0.0);
            bottom[2 * ow..].fill(0.0);
        }
        grad[2 * oh * w..h * w].fill(0.0);
    }
}

/// The mean of each plane of `x` (`[planes, len]`): global average pooling, `[N, C]`.
pub fn global_avg_pool(x: &[f32], plane_len: usize) -> Vec<f32> {
    assert!(
        plane_len > 0 && x.len() % plane_len == 0,
        "global_avg_pool: {} values are not whole planes of {plane_len}",
        x.len()
    );
    let scale = 1.0 / plane_len as f32;
    x.par_chunks(plane_len * planes_per_task(plane_len))
        .flat_map_iter(|planes| {
            planes
                .chunks_exact(plane_len)
                .map(move |plane| plane.iter().sum::<f32>() * scale)
        })
        .collect()
}

/// The input gradient of [`global_avg_pool`]: each plane filled with its output's gradient over
/// the plane's size.
pub fn global_avg_pool_backward(grad_out: &[f32], plane_len: usize) -> Vec<f32> {
    let scale = 1.0 / plane_len as f32;
    let mut grad = vec![0.0f32; grad_out.len() * plane_len];
    if plane_len == 0 {
        return grad;
    }
    let chunk = planes_per_task(plane_len);
    grad.par_chunks_mut(chunk * plane_len)
        .zip(grad_out.par_chunks(chunk))
        .for_each(|(grad, grad_out)| {
            for (plane, &g) in grad.chunks_exact_mut(plane_len).zip(grad_out) {
                plane.fill(g * scale);
            }
        });
    grad
}

#[cfg(test)]
mod tests {
    use burn::backend::Autodiff;
    use burn::tensor::{Tensor, TensorData};
    use burn_flex::Flex;

    use super::*;
    use lortflow_data::dataset::Rng;

    type B = Autodiff<Flex>;

    /// Burn's max-pool of `x` and its input gradient for `grad_out`.
    fn burn_max_pool(shape: &Pool2dShape, x: &[f32], grad_out: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let device = Default::default();
        let xt = Tensor::<B, 4>::from_data(
            TensorData::new(x.to_vec(), [shape.planes, 1, shape.height, shape.width]),
            &device,
        )
        .require_grad();
        let y = burn::tensor::module::max_pool2d(
            xt.clone(),
            shape.kernel,
            shape.stride,
            shape.padding,
            [1, 1],
            false,
        );
        let g = Tensor::<B, 4>::from_data(TensorData::new(grad_out.to_vec(), y.dims()), &device);
        let grads = (y.clone() * g).sum().backward();
        (
            y.into_data().to_vec().unwrap(),
            xt.grad(&grads).unwrap().into_data().to_vec().unwrap(),
        )
    }

    fn values(rng: &mut Rng, len: usize, distinct: bool) -> Vec<f32> {
        (0..len)
            .map(|_| {
                let v = rng.next_f64() as f32 * 2.0 - 1.0;
                // Coarse values make ties, where the first maximum must win as in Burn.
                if distinct { v } else { (v * 3.0).round() }
            })
            .collect()
    }

    fn check(shape: Pool2dShape, rng: &mut Rng, distinct: bool) {
        let [oh, ow] = shape.out_size();
        let x = values(rng, shape.planes * shape.height * shape.width, distinct);
        let grad_out = values(rng, shape.planes * oh * ow, true);
        let (burn_y, burn_grad) = burn_max_pool(&shape, &x, &grad_out);
        let (y, indices) = max_pool2d(&shape, &x);
        assert_eq!(y, burn_y, "{shape:?}");
        let grad = max_pool2d_backward(&shape, &grad_out, &indices);
        for (i, (a, b)) in grad.iter().zip(&burn_grad).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6,
                "{shape:?} gradient {i}: {a} vs Burn {b}"
            );
        }
    }

    fn shape(planes: usize, side: usize, k: usize, stride: usize, padding: usize) -> Pool2dShape {
        Pool2dShape {
            planes,
            height: side,
            width: side,
            kernel: [k, k],
            stride: [stride, stride],
            padding: [padding, padding],
        }
    }

    /// The small CNN's 2x2 pools (28 → 14 → 7) and the torchvision stem's 3x3/2 pad 1.
    #[test]
    fn the_shipped_architectures_pools_match_burn() {
        let mut rng = Rng::seed_from_u64(11);
        for s in [
            shape(2 * 32, 28, 2, 2, 0),
            shape(2 * 64, 14, 2, 2, 0),
            shape(3 * 64, 7, 2, 2, 0),
            shape(2 * 8, 56, 3, 2, 1),
        ] {
            check(s, &mut rng, true);
            check(s, &mut rng, false);
        }
    }

    /// Odd sizes (the last row/column dropped in floor mode), rectangular windows, strides
    /// smaller or larger than the window, padding, many planes split over threads.
    #[test]
    fn random_shapes_match_burn() {
        let mut rng = Rng::seed_from_u64(12);
        let mut data = Rng::seed_from_u64(13);
        let mut checked = 0;
        while checked < 60 {
            let mut pick = |lo: usize, hi: usize| lo + rng.below((hi - lo + 1) as u64) as usize;
            let kernel = [pick(1, 4), pick(1, 4)];
            let s = Pool2dShape {
                planes: [1, 3, 200][pick(0, 2)],
                height: pick(1, 15),
                width: pick(1, 15),
                kernel,
                stride: [pick(1, 3), pick(1, 3)],
                padding: [pick(0, kernel[0] / 2), pick(0, kernel[1] / 2)],
            };
            let [oh, ow] = s.out_size();
            if oh == 0 || ow == 0 {
                continue;
            }
            let distinct = checked % 2 == 0;
            check(s, &mut data, distinct);
            checked += 1;
        }
    }

    #[test]
    fn a_nan_wins_its_window_as_in_pytorch() {
        let s = shape(1, 2, 2, 2, 0);
        let (y, at) = max_pool2d(&s, &[1.0, f32::NAN, 3.0, 2.0]);
        assert!(y[0].is_nan());
        assert_eq!(at, [1]);
    }

    /// The 2x2 kernel's vectors against the any-window loop, on rows of several vectors (every
    /// lane of the deinterleaved order, at every level this CPU runs) with ties, NaNs in every
    /// window position and NaN against NaN.
    #[test]
    fn the_2x2_vectors_match_the_any_window_loop_with_ties_and_nans() {
        use crate::cpu::CpuLevel;
        let mut rng = Rng::seed_from_u64(15);
        for side in [2, 6, 32, 34, 70] {
            let s = shape(3, side, 2, 2, 0);
            let mut x = values(&mut rng, 3 * side * side, false);
            for v in x.iter_mut() {
                if rng.below(9) == 0 {
                    *v = f32::NAN;
                }
            }
            let [oh, ow] = s.out_size();
            let mut expected = (vec![0.0; 3 * oh * ow], vec![0u32; 3 * oh * ow]);
            for p in 0..3 {
                pool_plane(
                    &s,
                    &x[p * side * side..][..side * side],
                    [oh, ow],
                    &mut expected.0[p * oh * ow..][..oh * ow],
                    &mut expected.1[p * oh * ow..][..oh * ow],
                );
            }
            for level in CpuLevel::available() {
                let (mut y, mut at) = (vec![0.0; 3 * oh * ow], vec![0u32; 3 * oh * ow]);
                for p in 0..3 {
                    level.arch().dispatch(PoolPlane2x2 {
                        plane: &x[p * side * side..][..side * side],
                        w: side,
                        out_size: [oh, ow],
                        values: &mut y[p * oh * ow..][..oh * ow],
                        indices: &mut at[p * oh * ow..][..oh * ow],
                    });
                }
                assert_eq!(at, expected.1, "{level}, side {side}");
                for (a, b) in y.iter().zip(&expected.0) {
                    assert!(a == b || (a.is_nan() && b.is_nan()), "{level}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn global_average_pool_and_its_gradient_match_burn() {
        let device = Default::default();
        let mut rng = Rng::seed_from_u64(14);
        for [n, c, h, w] in [[3, 5, 7, 7], [2, 64, 8, 8], [1, 1, 1, 3], [130, 3, 2, 2]] {
            let x = values(&mut rng, n * c * h * w, true);
            let g = values(&mut rng, n * c, true);
            let xt = Tensor::<B, 4>::from_data(TensorData::new(x.clone(), [n, c, h, w]), &device)
                .require_grad();
            let y = xt.clone().mean_dims(&[2, 3]).reshape([n, c]);
            let gt = Tensor::<B, 2>::from_data(TensorData::new(g.clone(), [n, c]), &device);
            let grads = (y.clone() * gt).sum().backward();
            let burn_y: Vec<f32> = y.into_data().to_vec().unwrap();
            let burn_grad: Vec<f32> = xt.grad(&grads).unwrap().into_data().to_vec().unwrap();
            let ours = global_avg_pool(&x, h * w);
            for (a, b) in ours.iter().zip(&burn_y) {
                assert!((a - b).abs() <= 1e-5, "{a} vs Burn {b}");
            }
            let grad = global_avg_pool_backward(&g, h * w);
            for (a, b) in grad.iter().zip(&burn_grad) {
                assert!((a - b).abs() <= 1e-6, "{a} vs Burn {b}");
            }
        }
    }
}
