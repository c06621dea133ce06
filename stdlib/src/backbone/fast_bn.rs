//! BatchNorm over NCHW feature maps, computing exactly what `burn::nn::BatchNorm::forward` computes
//! but in a form the flex CPU backend runs on its fast paths.
//!
//! Burn's BatchNorm broadcasts `[1, C, 1, 1]` vectors against `[N, C, H, W]` maps. Flex has SIMD
//! kernels for two broadcast layouts only (a row shared by every outer index, and one scalar per
//! contiguous row); a per-channel vector in the middle of NCHW is neither, so every `x - mean`,
//! `/ std`, `* gamma`, `+ beta` (forward and backward) went through a scalar strided iterator and
//! took most of the training time. Here the map is viewed as `[N*C, H*W]` (free for a contiguous
//! tensor) and the per-channel vectors are repeated to `[N*C, 1]` (small), which is flex's
//! "per-row scalar" fast path; the statistics are row sums (`sum_dim(1)`) followed by a sum over
//! the batch, both contiguous reductions. Autodiff sees ordinary tensor operations, so the
//! backward pass is the exact gradient of the same function.
//!
//! The module stays `burn::nn::BatchNorm` (same fields, same records); only its forward is ours.
//! Differences to Burn's forward are rounding only: sums are taken in another order, and
//! `(x - mean) / std * gamma + beta` is evaluated as `(x - mean) * (gamma / std) + beta`
//! (training) or `x * scale + shift` with `scale = gamma / std`, `shift = beta - mean * scale`
//! (inference).

use burn::module::Param;
use burn::nn::BatchNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;

use crate::kernels::Then;

/// `batch_norm(bn, conv.forward(x))`; see [`conv_bn_relu`].
pub(crate) fn conv_bn<B: Backend>(
    conv: &Conv2d<B>,
    bn: &BatchNorm<B>,
    x: Tensor<B, 4>,
) -> Tensor<B, 4> {
    conv_bn_then(conv, bn, x, Then::Nothing)
}

/// `relu(batch_norm(bn, conv.forward(x)))`. In training, on the CPU backend, the convolution's
/// gradients and the whole BatchNorm + ReLU are [`crate::kernels`]' (one op each). In inference
/// mode (no autodiff) the BatchNorm is an affine map per output channel and is folded into the
/// convolution: weights scaled by `scale`, bias `shift` (+ `scale * bias` if the convolution has
/// one), which saves two passes over the map, and the ReLU is applied as the kernel writes.
pub(crate) fn conv_bn_relu<B: Backend>(
    conv: &Conv2d<B>,
    bn: &BatchNorm<B>,
    x: Tensor<B, 4>,
) -> Tensor<B, 4> {
    conv_bn_then(conv, bn, x, Then::Relu)
}

/// `relu(batch_norm(bn, conv.forward(x)) + residual)`: the end of a residual block, in one
/// pass in inference as [`conv_bn_relu`]'s ReLU.
pub(crate) fn conv_bn_add_relu<B: Backend>(
    conv: &Conv2d<B>,
    bn: &BatchNorm<B>,
    x: Tensor<B, 4>,
    residual: Tensor<B, 4>,
) -> Tensor<B, 4> {
    conv_bn_then(conv, bn, x, Then::AddRelu(residual))
}

fn conv_bn_then<B: Backend>(
    conv: &Conv2d<B>,
    bn: &BatchNorm<B>,
    x: Tensor<B, 4>,
    then: Then<B>,
) -> Tensor<B, 4> {
    if B::ad_enabled(&x.device()) {
        let y = crate::kernels::conv2d_forward(conv, x);
        return match then {
            Then::Nothing => forward_train(bn, y, false),
            Then::Relu => forward_train(bn, y, true),
            Then::AddRelu(residual) => {
                crate::kernels::add_relu(forward_train(bn, y, false), residual)
            }
        };
    }
    let device = x.device();
    let (scale, shift) = inference_affine(bn, &device);
    let weight = conv.weight.val();
    let dims = weight.dims();
    let folded = (weight.reshape([dims[0], dims[1] * dims[2] * dims[3]])
        * scale.clone().reshape([dims[0], 1]))
    .reshape(dims);
    let bias = match &conv.bias {
        Some(bias) => shift + bias.val() * scale,
        None => shift,
    };
    let folded = Conv2d {
        weight: Param::from_tensor(folded),
        bias: Some(Param::from_tensor(bias)),
        stride: conv.stride,
        kernel_size: conv.kernel_size,
        dilation: conv.dilation,
        groups: conv.groups,
        padding: conv.padding.clone(),
    };
    crate::kernels::conv2d_forward_then(&folded, x, then)
}

/// `bn.forward(x)` for `x: [N, C, H, W]`: batch statistics (and a running-statistics update)
/// when autodiff is enabled, running statistics otherwise — the same rule as Burn's BatchNorm.
#[cfg(test)]
pub(crate) fn batch_norm<B: Backend>(bn: &BatchNorm<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    if B::ad_enabled(&x.device()) {
        forward_train(bn, x, false)
    } else {
        forward_inference(bn, x)
    }
}

/// `v: [1, C]` → `[N*C, 1]`, row `n*C + c` holding `v[c]`.
fn per_row<B: Backend>(v: Tensor<B, 2>, n: usize) -> Tensor<B, 2> {
    let c = v.dims()[1];
    v.repeat_dim(0, n).reshape([n * c, 1])
}

/// Per-channel mean of the rows of `rows: [N*C, L]` over the batch and the `L` positions → `[1, C]`.
fn channel_mean<B: Backend>(rows: Tensor<B, 2>, n: usize, c: usize) -> Tensor<B, 2> {
    let count = (n * rows.dims()[1]) as f64;
    rows.sum_dim(1).reshape([n, c]).sum_dim(0).div_scalar(count)
}

/// Training-mode BatchNorm (then ReLU if `with_relu`), updating the running statistics: the
/// kernels' op on the CPU backend, tensor operations on the others.
fn forward_train<B: Backend>(bn: &BatchNorm<B>, x: Tensor<B, 4>, with_relu: bool) -> Tensor<B, 4> {
    let fused =
        crate::kernels::batch_norm_train(x, bn.gamma.val(), bn.beta.val(), bn.epsilon, with_relu);
    let x = match fused {
        Ok(out) => {
            update_running_statistics(bn, out.mean, out.var);
            return out.y;
        }
        Err(x) => x,
    };
    let [n, c, h, w] = x.dims();
    let rows = x.reshape([n * c, h * w]);

    let mean = channel_mean(rows.clone(), n, c); // [1, C]
    let centered = rows - per_row(mean.clone(), n);
    let var = channel_mean(centered.clone() * centered.clone(), n, c); // biased, as Burn's
    update_running_statistics(bn, mean.reshape([c]), var.clone().reshape([c]));

    let std = var.add_scalar(bn.epsilon).sqrt();
    let scale = bn.gamma.val().reshape([1, c]) / std;
    let beta = bn.beta.val().reshape([1, c]);
    let y = (centered * per_row(scale, n) + per_row(beta, n)).reshape([n, c, h, w]);
    if with_relu { relu(y) } else { y }
}

/// `running ← (1 − momentum)·running + momentum·batch`, outside the autodiff graph.
fn update_running_statistics<B: Backend>(bn: &BatchNorm<B>, mean: Tensor<B, 1>, var: Tensor<B, 1>) {
    let device = mean.device();
    let momentum = bn.momentum;
    let running_mean = bn.running_mean.value_sync().to_device(&device);
    let running_var = bn.running_var.value_sync().to_device(&device);
    let running_mean = running_mean
        .mul_scalar(1.0 - momentum)
        .add(mean.detach().mul_scalar(momentum));
    let running_var = running_var
        .mul_scalar(1.0 - momentum)
        .add(var.detach().mul_scalar(momentum));
    bn.running_mean.update(running_mean.detach());
    bn.running_var.update(running_var.detach());
}

#[cfg(test)]
fn forward_inference<B: Backend>(bn: &BatchNorm<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let device = x.device();
    let [n, c, h, w] = x.dims();
    let (scale, shift) = inference_affine(bn, &device);
    let rows = x.reshape([n * c, h * w]);
    (rows * per_row(scale.reshape([1, c]), n) + per_row(shift.reshape([1, c]), n))
        .reshape([n, c, h, w])
}

/// The inference-mode BatchNorm as an affine map per channel: `y = x * scale + shift`, both `[C]`.
pub(crate) fn inference_affine<B: Backend>(
    bn: &BatchNorm<B>,
    device: &B::Device,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let mean = bn.running_mean.value().to_device(device);
    let var = bn.running_var.value().to_device(device);
    let scale = bn.gamma.val().to_device(device) / var.add_scalar(bn.epsilon).sqrt();
    let shift = bn.beta.val().to_device(device) - mean * scale.clone();
    (scale, shift)
}

#[cfg(test)]
mod tests {
    use burn::module::AutodiffModule;
    use burn::nn::BatchNormConfig;
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::{Distribution, Tensor};

    use super::*;
    use crate::backend::{CpuAutodiff, CpuDevice};

    fn close<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>, what: &str) {
        let (a, b): (Vec<f32>, Vec<f32>) = (
            a.into_data().to_vec().unwrap(),
            b.into_data().to_vec().unwrap(),
        );
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    /// Same outputs, running statistics and gradients as `burn::nn::BatchNorm::forward`, through
    /// the kernels' op and through the tensor-op formulation other backends take.
    #[test]
    fn batch_norm_matches_burn_in_training_and_inference() {
        for burn_only in [false, true] {
            crate::kernels::BURN_OPS_ONLY.with(|f| f.set(burn_only));
            compare_with_burn();
        }
        crate::kernels::BURN_OPS_ONLY.with(|f| f.set(false));
    }

    fn compare_with_burn() {
        let device = CpuDevice::default();
        let make = || {
            let mut bn = BatchNormConfig::new(3).init::<CpuAutodiff>(&device);
            bn.gamma = Param::from_tensor(
                Tensor::random([3], Distribution::Normal(1.0, 0.5), &device).require_grad(),
            );
            bn.beta = Param::from_tensor(
                Tensor::random([3], Distribution::Normal(0.0, 0.5), &device).require_grad(),
            );
            bn
        };
        let ours = make();
        let mut theirs = make();
        theirs.gamma = Param::from_tensor(ours.gamma.val().detach().require_grad());
        theirs.beta = Param::from_tensor(ours.beta.val().detach().require_grad());
        let x =
            Tensor::<CpuAutodiff, 4>::random([4, 3, 5, 6], Distribution::Normal(2.0, 3.0), &device);
        let w =
            Tensor::<CpuAutodiff, 4>::random([4, 3, 5, 6], Distribution::Normal(0.0, 1.0), &device);
        for _ in 0..2 {
            let fresh = || Tensor::<CpuAutodiff, 4>::from_inner(x.clone().inner()).require_grad();
            let (xa, xb) = (fresh(), fresh());
            let ya = batch_norm(&ours, xa.clone());
            let yb = theirs.forward(xb.clone());
            close(ya.clone(), yb.clone(), "y");
            let ga = (ya * w.clone()).sum().backward();
            let gb = (yb * w.clone()).sum().backward();
            close(xa.grad(&ga).unwrap(), xb.grad(&gb).unwrap(), "dx");
            close(
                ours.gamma.val().grad(&ga).unwrap(),
                theirs.gamma.val().grad(&gb).unwrap(),
                "dgamma",
            );
            close(
                ours.beta.val().grad(&ga).unwrap(),
                theirs.beta.val().grad(&gb).unwrap(),
                "dbeta",
            );
            close(
                ours.running_mean.value(),
                theirs.running_mean.value(),
                "running_mean",
            );
            close(
                ours.running_var.value(),
                theirs.running_var.value(),
                "running_var",
            );
        }

        // Inference: BatchNorm folded into the preceding convolution.
        let conv = Conv2dConfig::new([3, 5], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .with_stride([2, 2])
            .init::<CpuAutodiff>(&device);
        let bn5 = BatchNormConfig::new(5).init::<CpuAutodiff>(&device);
        let _ = bn5.forward(conv.forward(x.clone()));
        let (conv, bn5) = (conv.valid(), bn5.valid());
        let xi = x.inner();
        let a = conv_bn(&conv, &bn5, xi.clone());
        let b = bn5.forward(conv.forward(xi));
        close(a, b, "inference");
    }
}
