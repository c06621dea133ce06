//! BatchNorm (+ ReLU) with batch statistics for the backbones' training, with the kernels of
//! [`batch_norm`](super::batch_norm) on the CPU backend: on `Autodiff<Flex>` one custom autodiff
//! op with parents `x`, `γ`, `β`, whose backward is the closed-form gradient. Other backends get
//! `Err(x)` back and take the tensor-op formulation (`backbone::fast_bn`).

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};

use super::batch_norm::{BnShape, batch_norm_train as bn_kernel, batch_norm_train_backward};
use super::flex_glue::{CpuAutodiff, cast, cast_back, contiguous, dims4, flex, host};

/// The output of a training-mode BatchNorm and the batch statistics, per channel, that the
/// running statistics are updated with.
pub(crate) struct BatchNormOutput<B: Backend> {
    pub y: Tensor<B, 4>,
    pub mean: Tensor<B, 1>,
    /// Biased (divided by `N·H·W`), as Burn's BatchNorm uses for its running variance.
    pub var: Tensor<B, 1>,
}

/// `relu?((x − μ)/√(var + ε)·γ + β)` with batch statistics, on the CPU training backend;
/// `Err(x)` on any other backend or precision.
pub(crate) fn batch_norm_train<B: Backend>(
    x: Tensor<B, 4>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    epsilon: f64,
    relu: bool,
) -> Result<BatchNormOutput<B>, Tensor<B, 4>> {
    if super::burn_ops_only() {
        return Err(x);
    }
    let device = x.device();
    let x = cast::<Tensor<CpuAutodiff, 4>, _>(x)?;
    let params = cast::<(Tensor<CpuAutodiff, 1>, Tensor<CpuAutodiff, 1>), _>((gamma, beta));
    let (Ok((gamma, beta)), true) = (params, x.dtype() == DType::F32) else {
        return Err(cast_back(x));
    };
    if [&gamma, &beta].iter().any(|p| p.dtype() != DType::F32) {
        return Err(cast_back(x));
    }
    let (y, mean, var) = tracked_batch_norm(x, gamma, beta, epsilon, relu);
    let c = mean.len();
    let stat = |values: Vec<f32>| Tensor::<B, 1>::from_data(TensorData::new(values, [c]), &device);
    Ok(BatchNormOutput {
        y: cast_back(y),
        mean: stat(mean),
        var: stat(var),
    })
}

/// The op, and the batch mean and variance.
fn tracked_batch_norm(
    x: Tensor<CpuAutodiff, 4>,
    gamma: Tensor<CpuAutodiff, 1>,
    beta: Tensor<CpuAutodiff, 1>,
    epsilon: f64,
    relu: bool,
) -> (Tensor<CpuAutodiff, 4>, Vec<f32>, Vec<f32>) {
    let [x, gamma, beta] = [
        x.into_primitive().tensor(),
        gamma.into_primitive().tensor(),
        beta.into_primitive().tensor(),
    ];
    let [n, c, h, w] = dims4(&x.primitive);
    let shape = BnShape {
        batch: n,
        channels: c,
        plane: h * w,
    };
    let input = contiguous(x.primitive.clone());
    let gamma_host = contiguous(gamma.primitive.clone());
    let beta_host = contiguous(beta.primitive.clone());
    let forward = bn_kernel(
        &shape,
        host(&input),
        host(&gamma_host),
        host(&beta_host),
        epsilon,
        relu,
    );
    let y = flex(forward.y, [n, c, h, w]);
    let out = match BatchNormBackward
        .prepare::<NoCheckpointing>([x.node.clone(), gamma.node.clone(), beta.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            BatchNormState {
                shape,
                relu,
                x: input,
                y: y.clone(),
                gamma: gamma_host,
                mean: Arc::new(forward.mean.clone()),
                inv_std: Arc::new(forward.inv_std),
            },
            y,
        ),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    (
        Tensor::from_primitive(TensorPrimitive::Float(out)),
        forward.mean,
        forward.var,
    )
}

/// What the backward pass reads: the input, the output (its zeros are the ReLU's mask), `γ`,
/// and the batch statistics.
#[derive(Debug, Clone)]
struct BatchNormState {
    shape: BnShape,
    relu: bool,
    x: FlexTensor,
    y: FlexTensor,
    gamma: FlexTensor,
    mean: Arc<Vec<f32>>,
    inv_std: Arc<Vec<f32>>,
}

#[derive(Debug)]
struct BatchNormBackward;

impl Backward<Flex, 3> for BatchNormBackward {
    type State = BatchNormState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad_out = contiguous(grads.consume::<Flex>(&ops.node));
        let s = ops.state;
        let (grad_x, grad_gamma, grad_beta) = batch_norm_train_backward(
            &s.shape,
            host(&s.x),
            host(&s.y),
            host(&grad_out),
            host(&s.gamma),
            &s.mean,
            &s.inv_std,
            s.relu,
        );
        let c = s.shape.channels;
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, flex(grad_x, dims4(&s.x)));
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, flex(grad_gamma, [c]));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, flex(grad_beta, [c]));
        }
    }
}
