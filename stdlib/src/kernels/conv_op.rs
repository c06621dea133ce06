//! `Conv2d::forward` for the backbones, with the gradients of [`conv`](super::conv) on the CPU
//! backend: on `Autodiff<Flex>` the convolution is recorded as a custom autodiff op whose
//! forward is flex's own kernel and whose backward calls our two gradient kernels; on every
//! other backend (CUDA, inference) it is Burn's `Conv2d::forward`, unchanged.
//!
//! The backend is recognised by type at run time (`Any`), so the model code stays generic over
//! `B: Backend` and needs no extra bound.

use std::any::Any;

use burn::backend::Autodiff;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{ConvOptions, ModuleOps};
use burn::tensor::{DType, Tensor, TensorData, TensorMetadata, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};

use super::conv::{Conv2dShape, conv2d_input_grad, conv2d_weight_grad};

/// The CPU training backend.
type CpuAutodiff = Autodiff<Flex>;

/// `conv.forward(x)`, with our gradient kernels when `B` is the CPU training backend and the
/// convolution is one they cover (one group, no bias, symmetric padding).
pub(crate) fn conv2d_forward<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    #[cfg(test)]
    if BURN_CONV_ONLY.with(std::cell::Cell::get) {
        return conv.forward(x);
    }
    let Some(options) = covered(conv) else {
        return conv.forward(x);
    };
    let weight: Box<dyn Any> = Box::new((x, conv.weight.val()));
    match weight.downcast::<(Tensor<CpuAutodiff, 4>, Tensor<CpuAutodiff, 4>)>() {
        Ok(pair) => {
            let (x, weight) = *pair;
            let y: Box<dyn Any> = Box::new(fast_conv2d(x, weight, options));
            *y.downcast::<Tensor<B, 4>>()
                .expect("the same type it was downcast from")
        }
        Err(other) => {
            let (x, _) = *other
                .downcast::<(Tensor<B, 4>, Tensor<B, 4>)>()
                .expect("the type it was boxed as");
            conv.forward(x)
        }
    }
}

/// The options of a convolution the kernels cover.
fn covered<B: Backend>(conv: &Conv2d<B>) -> Option<ConvOptions<2>> {
    if conv.groups != 1 || conv.bias.is_some() {
        return None;
    }
    let padding = match conv.padding {
        PaddingConfig2d::Valid => [0, 0],
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            [top, left]
        }
        _ => return None,
    };
    Some(ConvOptions::new(conv.stride, padding, conv.dilation, 1))
}

#[cfg(test)]
thread_local! {
    /// Set by tests that train the same model on Burn's own convolution gradients, to compare.
    pub(crate) static BURN_CONV_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Calls of [`fast_conv2d`], for tests that must know the custom op ran.
#[cfg(test)]
static FAST_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `conv2d(x, weight)` recorded with [`Conv2dBackward`].
fn fast_conv2d(
    x: Tensor<CpuAutodiff, 4>,
    weight: Tensor<CpuAutodiff, 4>,
    options: ConvOptions<2>,
) -> Tensor<CpuAutodiff, 4> {
    #[cfg(test)]
    FAST_CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let x = x.into_primitive().tensor();
    let weight = weight.into_primitive().tensor();
    let out = match Conv2dBackward
        .prepare::<NoCheckpointing>([x.node.clone(), weight.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let x_state = prep.checkpoint(&x);
            let weight_state = prep.checkpoint(&weight);
            prep.finish(
                (x_state, weight_state, options.clone()),
                Flex::conv2d(x.primitive, weight.primitive, None, options),
            )
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(Flex::conv2d(x.primitive, weight.primitive, None, options))
        }
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

#[derive(Debug)]
struct Conv2dBackward;

impl Backward<Flex, 2> for Conv2dBackward {
    type State = (NodeId, NodeId, ConvOptions<2>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_weight] = ops.parents;
        let grad_out = grads.consume::<Flex>(&ops.node);
        let (x_state, weight_state, options) = ops.state;
        let x: FlexTensor = checkpointer.retrieve_node_output(x_state);
        let weight: FlexTensor = checkpointer.retrieve_node_output(weight_state);
        if [&x, &weight, &grad_out]
            .iter()
            .any(|t| t.dtype() != DType::F32)
        {
            // Our kernels are f32; other precisions take Burn's generic gradients.
            if let Some(node) = node_x {
                let g = Flex::conv2d_x_backward(
                    x.clone(),
                    weight.clone(),
                    grad_out.clone(),
                    options.clone(),
                );
                grads.register::<Flex>(node.id, g);
            }
            if let Some(node) = node_weight {
                let g = Flex::conv2d_weight_backward(x, weight, grad_out, options);
                grads.register::<Flex>(node.id, g);
            }
            return;
        }
        let [n, c, h, w] = dims(&x);
        let [o, _, kh, kw] = dims(&weight);
        let shape = Conv2dShape {
            batch: n,
            in_channels: c,
            height: h,
            width: w,
            out_channels: o,
            kernel: [kh, kw],
            stride: options.stride,
            padding: options.padding,
            dilation: options.dilation,
        };
        let grad_out = contiguous(grad_out);
        let grad_out = grad_out.as_slice::<f32>().expect("contiguous f32");
        if let Some(node) = node_x {
            let weight = contiguous(weight.clone());
            let g = conv2d_input_grad(&shape, weight.as_slice().expect("contiguous f32"), grad_out);
            grads.register::<Flex>(node.id, flex(g, [n, c, h, w]));
        }
        if let Some(node) = node_weight {
            let x = contiguous(x);
            let g = conv2d_weight_grad(&shape, x.as_slice().expect("contiguous f32"), grad_out);
            grads.register::<Flex>(node.id, flex(g, [o, c, kh, kw]));
        }
    }
}

fn dims(t: &FlexTensor) -> [usize; 4] {
    let shape = t.shape();
    [shape[0], shape[1], shape[2], shape[3]]
}

/// `t` itself when its elements are one dense run from its start, else a dense copy.
fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

fn flex(values: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

#[cfg(test)]
mod tests {
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::Distribution;

    use super::*;

    /// Loss and both gradients of `sum(conv(x) ⊙ g)` through `forward`.
    fn grads(
        conv: &Conv2d<CpuAutodiff>,
        x: &Tensor<CpuAutodiff, 4>,
        forward: fn(&Conv2d<CpuAutodiff>, Tensor<CpuAutodiff, 4>) -> Tensor<CpuAutodiff, 4>,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let x = x.clone().detach().require_grad();
        let y = forward(conv, x.clone());
        let g =
            Tensor::<CpuAutodiff, 4>::ones(y.dims(), &y.device()).mul_scalar(0.5) + y.clone().sin();
        let loss = (y.clone() * g.detach()).sum();
        let grads = loss.backward();
        let read = |t: Tensor<Flex, 4>| t.into_data().to_vec::<f32>().unwrap();
        (
            y.into_data().to_vec::<f32>().unwrap(),
            read(x.grad(&grads).unwrap()),
            read(conv.weight.val().grad(&grads).unwrap()),
        )
    }

    #[track_caller]
    fn assert_close(what: &str, a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len(), "{what}");
        let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        for (i, (p, q)) in a.iter().zip(b).enumerate() {
            assert!(
                (p - q).abs() <= 1e-4 * scale,
                "{what}[{i}]: {p} vs Burn {q}"
            );
        }
    }

    /// Through a module, as the backbones call it: the same outputs and gradients as Burn's
    /// `Conv2d::forward`, for the padding and stride forms the architectures use.
    #[test]
    fn the_custom_op_matches_conv2d_forward_and_its_gradients() {
        let device = Default::default();
        for (padding, stride, k) in [
            (PaddingConfig2d::Explicit(1, 1, 1, 1), [1, 1], 3),
            (PaddingConfig2d::Explicit(1, 1, 1, 1), [2, 2], 3),
            (PaddingConfig2d::Valid, [2, 2], 1),
            (PaddingConfig2d::Explicit(3, 3, 3, 3), [2, 2], 7),
        ] {
            let conv: Conv2d<CpuAutodiff> = Conv2dConfig::new([3, 5], [k, k])
                .with_padding(padding.clone())
                .with_stride(stride)
                .with_bias(false)
                .init(&device);
            assert!(covered(&conv).is_some(), "{padding:?}");
            let x = Tensor::<CpuAutodiff, 4>::random(
                [2, 3, 11, 11],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let (y0, gx0, gw0) = grads(&conv, &x, |c, x| c.forward(x));
            let before = FAST_CALLS.load(std::sync::atomic::Ordering::SeqCst);
            let (y1, gx1, gw1) = grads(&conv, &x, conv2d_forward);
            assert!(
                FAST_CALLS.load(std::sync::atomic::Ordering::SeqCst) > before,
                "the custom op did not run"
            );
            assert_close("output", &y1, &y0);
            assert_close("input gradient", &gx1, &gx0);
            assert_close("weight gradient", &gw1, &gw0);
        }
    }

    #[test]
    fn convolutions_the_kernels_do_not_cover_take_burns_path() {
        let device = burn_flex::FlexDevice;
        let grouped: Conv2d<Flex> = Conv2dConfig::new([4, 4], [3, 3])
            .with_groups(2)
            .init(&device);
        assert!(covered(&grouped).is_none());
        let biased: Conv2d<Flex> = Conv2dConfig::new([4, 4], [3, 3]).init(&device);
        assert!(covered(&biased).is_none());
        // Inference on the plain backend: Burn's forward, the same numbers.
        let conv: Conv2d<Flex> = Conv2dConfig::new([2, 3], [3, 3])
            .with_bias(false)
            .init(&device);
        let x = Tensor::<Flex, 4>::random([1, 2, 6, 6], Distribution::Normal(0.0, 1.0), &device);
        assert_eq!(
            conv2d_forward(&conv, x.clone()).into_data(),
            conv.forward(x).into_data()
        );
    }
}
