//! Max-pooling and global average pooling for the backbones, with the kernels of
//! [`pool`](super::pool) on the CPU backend: on `Autodiff<Flex>` each is a custom autodiff op
//! (our forward, our backward), on plain `Flex` (inference) our forward; every other backend,
//! and any pooling the kernels do not cover, keeps Burn's.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::nn::PaddingConfig2d;
use burn::nn::pool::MaxPool2d;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};

use super::flex_glue::{CpuAutodiff, cast, cast_back, contiguous, dims4, flex, host};
use super::pool::{
    Pool2dShape, global_avg_pool as avg_kernel, global_avg_pool_backward, max_pool2d as max_kernel,
    max_pool2d_backward,
};

/// `pool.forward(x)`.
pub(crate) fn max_pool2d<B: Backend>(pool: &MaxPool2d, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let Some(shape) = covered(pool, n * c, [h, w]).filter(|_| !super::burn_ops_only()) else {
        return pool.forward(x);
    };
    let x = match cast::<Tensor<CpuAutodiff, 4>, _>(x) {
        Ok(x) if x.dtype() == DType::F32 => {
            return cast_back(tracked_max_pool(x, shape));
        }
        Ok(x) => cast_back(x),
        Err(x) => x,
    };
    match cast::<Tensor<Flex, 4>, _>(x) {
        Ok(x) if x.dtype() == DType::F32 => {
            let input = contiguous(x.into_primitive().tensor());
            let (values, _) = max_kernel(&shape, host(&input));
            let [oh, ow] = shape.out_size();
            cast_back(Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(
                flex(values, [n, c, oh, ow]),
            )))
        }
        Ok(x) => pool.forward(cast_back(x)),
        Err(x) => pool.forward(x),
    }
}

/// The geometry of `pool` over `planes` planes of `[H, W]`, when the kernels cover it (dilation
/// 1, floor mode, symmetric padding of at most half the window).
fn covered(pool: &MaxPool2d, planes: usize, [height, width]: [usize; 2]) -> Option<Pool2dShape> {
    if pool.dilation != [1, 1] || pool.ceil_mode {
        return None;
    }
    let padding = match pool.padding {
        PaddingConfig2d::Valid => [0, 0],
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            [top, left]
        }
        _ => return None,
    };
    let shape = Pool2dShape {
        planes,
        height,
        width,
        kernel: pool.kernel_size,
        stride: pool.stride,
        padding,
    };
    let fits = (0..2).all(|a| 2 * padding[a] <= shape.kernel[a] && shape.stride[a] > 0);
    let [oh, ow] = shape.out_size();
    (fits && oh > 0 && ow > 0).then_some(shape)
}

/// The max-pool recorded with [`MaxPoolBackward`].
fn tracked_max_pool(x: Tensor<CpuAutodiff, 4>, shape: Pool2dShape) -> Tensor<CpuAutodiff, 4> {
    let x = x.into_primitive().tensor();
    let [n, c, _, _] = dims4(&x.primitive);
    let input = contiguous(x.primitive.clone());
    let (values, indices) = max_kernel(&shape, host(&input));
    let [oh, ow] = shape.out_size();
    let y = flex(values, [n, c, oh, ow]);
    let out = match MaxPoolBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((shape, Arc::new(indices)), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

#[derive(Debug)]
struct MaxPoolBackward;

impl Backward<Flex, 1> for MaxPoolBackward {
    /// The geometry and the position of each window's maximum.
    type State = (Pool2dShape, Arc<Vec<u32>>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [Some(node)] = ops.parents else {
            return;
        };
        let grad_out = contiguous(grads.consume::<Flex>(&ops.node));
        let (shape, indices) = ops.state;
        let [n, c, _, _] = dims4(&grad_out);
        let grad = max_pool2d_backward(&shape, host(&grad_out), &indices);
        grads.register::<Flex>(node.id, flex(grad, [n, c, shape.height, shape.width]));
    }
}

/// `x.mean_dims(&[2, 3]).reshape([N, C])`: the mean of each channel's map.
pub(crate) fn global_avg_pool<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 2> {
    let burn = |x: Tensor<B, 4>| {
        let [n, c, _, _] = x.dims();
        x.mean_dims(&[2, 3]).reshape([n, c])
    };
    if super::burn_ops_only() {
        return burn(x);
    }
    let x = match cast::<Tensor<CpuAutodiff, 4>, _>(x) {
        Ok(x) if x.dtype() == DType::F32 => {
            return cast_back(tracked_avg_pool(x));
        }
        Ok(x) => cast_back(x),
        Err(x) => x,
    };
    match cast::<Tensor<Flex, 4>, _>(x) {
        Ok(x) if x.dtype() == DType::F32 => {
            let input = contiguous(x.into_primitive().tensor());
            let [n, c, h, w] = dims4(&input);
            let y = flex(avg_kernel(host(&input), h * w), [n, c]);
            cast_back(Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(y)))
        }
        Ok(x) => burn(cast_back(x)),
        Err(x) => burn(x),
    }
}

fn tracked_avg_pool(x: Tensor<CpuAutodiff, 4>) -> Tensor<CpuAutodiff, 2> {
    let x = x.into_primitive().tensor();
    let [n, c, h, w] = dims4(&x.primitive);
    let input = contiguous(x.primitive.clone());
    let y = flex(avg_kernel(host(&input), h * w), [n, c]);
    let out = match AvgPoolBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish([n, c, h, w], y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

#[derive(Debug)]
struct AvgPoolBackward;

impl Backward<Flex, 1> for AvgPoolBackward {
    /// The input's shape.
    type State = [usize; 4];

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [Some(node)] = ops.parents else {
            return;
        };
        let grad_out: FlexTensor = contiguous(grads.consume::<Flex>(&ops.node));
        let [n, c, h, w] = ops.state;
        let grad = global_avg_pool_backward(host(&grad_out), h * w);
        grads.register::<Flex>(node.id, flex(grad, [n, c, h, w]));
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::pool::MaxPool2dConfig;
    use burn::tensor::Distribution;

    use super::*;

    fn values<const D: usize>(t: Tensor<Flex, D>) -> Vec<f32> {
        t.into_data().to_vec().unwrap()
    }

    /// Output and input gradient of `sum(f(x) ⊙ sin(f(x)))` on the training backend.
    fn through<const D: usize>(
        x: &Tensor<CpuAutodiff, 4>,
        f: impl Fn(Tensor<CpuAutodiff, 4>) -> Tensor<CpuAutodiff, D>,
    ) -> (Vec<f32>, Vec<f32>) {
        let x = x.clone().detach().require_grad();
        let y = f(x.clone());
        let grads = (y.clone() * y.clone().sin().detach()).sum().backward();
        (values(y.inner()), values(x.grad(&grads).unwrap()))
    }

    /// Through the module, as the backbones call them: the same outputs and gradients as Burn's
    /// `MaxPool2d::forward` and `mean_dims` in training, and the same outputs in inference.
    #[test]
    fn the_ops_match_burns_forward_and_gradients() {
        let device = Default::default();
        let x = Tensor::<CpuAutodiff, 4>::random(
            [3, 4, 9, 10],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        for pool in [
            MaxPool2dConfig::new([2, 2]).init(),
            MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
        ] {
            assert!(covered(&pool, 12, [9, 10]).is_some());
            assert_eq!(
                through(&x, |x| max_pool2d(&pool, x)),
                through(&x, |x| pool.forward(x)),
                "{pool:?} in training"
            );
            assert_eq!(
                values(max_pool2d(&pool, x.clone().inner())),
                values(pool.forward(x.clone().inner())),
                "{pool:?} in inference"
            );
        }
        let burn_mean = |x: Tensor<CpuAutodiff, 4>| x.mean_dims(&[2, 3]).reshape([3, 4]);
        let (ours, theirs) = (through(&x, global_avg_pool), through(&x, burn_mean));
        for (a, b) in ours
            .0
            .iter()
            .zip(&theirs.0)
            .chain(ours.1.iter().zip(&theirs.1))
        {
            assert!((a - b).abs() < 1e-6, "{a} vs Burn {b}");
        }
        let inference = values(global_avg_pool(x.clone().inner()));
        for (a, b) in inference
            .iter()
            .zip(&values(x.inner().mean_dims(&[2, 3]).reshape([3, 4])))
        {
            assert!((a - b).abs() < 1e-6, "{a} vs Burn {b}");
        }
    }

    #[test]
    fn pools_the_kernels_do_not_cover_take_burns_path() {
        let dilated = MaxPool2dConfig::new([2, 2]).with_dilation([2, 2]).init();
        assert!(covered(&dilated, 1, [8, 8]).is_none());
        let ceil = MaxPool2dConfig::new([2, 2]).with_ceil_mode(true).init();
        assert!(covered(&ceil, 1, [7, 7]).is_none());
        let asymmetric = MaxPool2dConfig::new([3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 0, 0, 1))
            .init();
        assert!(covered(&asymmetric, 1, [7, 7]).is_none());
        let too_small = MaxPool2dConfig::new([3, 3]).init();
        assert!(covered(&too_small, 1, [2, 2]).is_none());
        // Still Burn's numbers through the public entry point.
        let x = Tensor::<Flex, 4>::random(
            [1, 2, 7, 7],
            Distribution::Normal(0.0, 1.0),
            &Default::default(),
        );
        assert_eq!(
            values(max_pool2d(&ceil, x.clone())),
            values(ceil.forward(x))
        );
    }
}
