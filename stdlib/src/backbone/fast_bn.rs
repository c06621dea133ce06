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

use burn::nn::BatchNorm;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// `bn.forward(x)` for `x: [N, C, H, W]`: batch statistics (and a running-statistics update)
/// when autodiff is enabled, running statistics otherwise — the same rule as Burn's BatchNorm.
pub fn batch_norm<B: Backend>(bn: &BatchNorm<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    if B::ad_enabled(&x.device()) {
        forward_train(bn, x)
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

fn forward_train<B: Backend>(bn: &BatchNorm<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let device = x.device();
    let [n, c, h, w] = x.dims();
    let rows = x.reshape([n * c, h * w]);

    let mean = channel_mean(rows.clone(), n, c); // [1, C]
    let centered = rows - per_row(mean.clone(), n);
    let var = channel_mean(centered.clone() * centered.clone(), n, c); // biased, as Burn's

    let momentum = bn.momentum;
    let running_mean = bn.running_mean.value_sync().to_device(&device);
    let running_var = bn.running_var.value_sync().to_device(&device);
    let running_mean = running_mean
        .mul_scalar(1.0 - momentum)
        .add(mean.detach().mul_scalar(momentum).reshape([c]));
    let running_var = running_var
        .mul_scalar(1.0 - momentum)
        .add(var.clone().detach().mul_scalar(momentum).reshape([c]));
    bn.running_mean.update(running_mean.detach());
    bn.running_var.update(running_var.detach());

    let std = var.add_scalar(bn.epsilon).sqrt();
    let scale = bn.gamma.val().reshape([1, c]) / std;
    let beta = bn.beta.val().reshape([1, c]);
    (centered * per_row(scale, n) + per_row(beta, n)).reshape([n, c, h, w])
}

fn forward_inference<B: Backend>(bn: &BatchNorm<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let device = x.device();
    let [n, c, h, w] = x.dims();
    let (scale, shift) = inference_affine(bn, &device);
    let rows = x.reshape([n * c, h * w]);
    (rows * per_row(scale.reshape([1, c]), n) + per_row(shift.reshape([1, c]), n))
        .reshape([n, c, h, w])
}

/// The inference-mode BatchNorm as an affine map per channel: `y = x * scale + shift`, both `[C]`.
pub fn inference_affine<B: Backend>(
    bn: &BatchNorm<B>,
    device: &B::Device,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let mean = bn.running_mean.value().to_device(device);
    let var = bn.running_var.value().to_device(device);
    let scale = bn.gamma.val().to_device(device) / var.add_scalar(bn.epsilon).sqrt();
    let shift = bn.beta.val().to_device(device) - mean * scale.clone();
    (scale, shift)
}
