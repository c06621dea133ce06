//! `Conv2d::forward` for the backbones, with the kernels of [`conv`](super::conv) on the CPU
//! backend: on `Autodiff<Flex>` the convolution is recorded as a custom autodiff op whose
//! forward and backward are our kernels; on plain `Flex` (inference) the forward is ours; on
//! every other backend (CUDA) it is Burn's `Conv2d::forward`, unchanged.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{ActivationOps, ConvOptions, FloatTensorOps, ModuleOps};
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};

use super::batch_norm::channel_sums;
use super::conv::{
    Conv2dShape, Epilogue, conv2d, conv2d_input_grad, conv2d_then, conv2d_weight_grad,
};
use super::flex_glue::{CpuAutodiff, cast, cast_back, contiguous, dims4, flex, host};

/// `conv.forward(x)`, on our kernels when `B` is the CPU backend and the convolution is one they
/// cover (one group, symmetric padding; with or without bias).
pub(crate) fn conv2d_forward<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    conv2d_forward_then(conv, x, Then::Nothing)
}

/// What follows a convolution; in inference on the CPU backend it is applied as the kernel
/// writes its output, elsewhere by the ops it names.
pub(crate) enum Then<B: Backend> {
    Nothing,
    /// `relu(y)`.
    Relu,
    /// `relu(y + residual)` ([`super::add_relu`]).
    AddRelu(Tensor<B, 4>),
}

impl<B: Backend> Then<B> {
    fn after(self, y: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Then::Nothing => y,
            Then::Relu => burn::tensor::activation::relu(y),
            Then::AddRelu(residual) => super::add_relu(y, residual),
        }
    }
}

/// `then` applied to `conv.forward(x)`.
pub(crate) fn conv2d_forward_then<B: Backend>(
    conv: &Conv2d<B>,
    x: Tensor<B, 4>,
    then: Then<B>,
) -> Tensor<B, 4> {
    if super::burn_ops_only() || x.dtype() != DType::F32 {
        return then.after(conv.forward(x));
    }
    let Some(options) = covered(conv) else {
        return then.after(conv.forward(x));
    };
    let weight = conv.weight.val();
    let bias = conv.bias.as_ref().map(|b| b.val());
    let (x, bias) = match cast::<
        (
            Tensor<CpuAutodiff, 4>,
            Tensor<CpuAutodiff, 4>,
            Option<Tensor<CpuAutodiff, 1>>,
        ),
        _,
    >((x, weight, bias))
    {
        Ok((x, weight, bias)) => {
            return then.after(cast_back(fast_conv2d(x, weight, bias, options)));
        }
        Err((x, _, bias)) => (x, bias),
    };
    match cast::<(Tensor<Flex, 4>, Tensor<Flex, 4>, Option<Tensor<Flex, 1>>), _>((
        x,
        conv.weight.val(),
        bias,
    )) {
        Ok((x, weight, bias)) => {
            // `B` is `Flex` here, so the residual is too.
            let (relu, residual) = match then {
                Then::Nothing => (false, None),
                Then::Relu => (true, None),
                Then::AddRelu(residual) => match cast::<Tensor<Flex, 4>, _>(residual) {
                    Ok(residual) => (true, Some(residual.into_primitive().tensor())),
                    Err(_) => unreachable!("the residual is on the same backend as `x`"),
                },
            };
            let y = forward(
                x.into_primitive().tensor(),
                weight.into_primitive().tensor(),
                bias.map(|b| b.into_primitive().tensor()),
                &options,
                relu,
                residual,
            );
            cast_back(Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(y)))
        }
        Err((x, _, _)) => then.after(conv.forward(x)),
    }
}

/// The options of a convolution the kernels cover (bias or not).
fn covered<B: Backend>(conv: &Conv2d<B>) -> Option<ConvOptions<2>> {
    if conv.groups != 1 {
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

fn geometry(x: &FlexTensor, weight: &FlexTensor, options: &ConvOptions<2>) -> Conv2dShape {
    let [n, c, h, w] = dims4(x);
    let [o, _, kh, kw] = dims4(weight);
    Conv2dShape {
        batch: n,
        in_channels: c,
        height: h,
        width: w,
        out_channels: o,
        kernel: [kh, kw],
        stride: options.stride,
        padding: options.padding,
        dilation: options.dilation,
    }
}

/// Our forward kernel on flex tensors (f32, or Burn's kernel for other precisions), then ReLU
/// (after adding `residual`, when given) if `relu`.
fn forward(
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    options: &ConvOptions<2>,
    relu: bool,
    residual: Option<FlexTensor>,
) -> FlexTensor {
    if [Some(&x), Some(&weight), bias.as_ref(), residual.as_ref()]
        .into_iter()
        .flatten()
        .any(|t| t.dtype() != DType::F32)
    {
        let mut y = Flex::conv2d(x, weight, bias, options.clone());
        if let Some(residual) = residual {
            y = Flex::float_add(y, residual);
        }
        return if relu { Flex::relu(y) } else { y };
    }
    let shape = geometry(&x, &weight, options);
    let (x, weight) = (contiguous(x), contiguous(weight));
    let bias = bias.map(contiguous);
    let residual = residual.map(contiguous);
    let bias = bias.as_ref().map(host);
    let y = match (&residual, relu) {
        (Some(residual), _) => conv2d_then(
            &shape,
            host(&x),
            host(&weight),
            bias,
            Epilogue::AddRelu(host(residual)),
        ),
        (None, true) => conv2d_then(&shape, host(&x), host(&weight), bias, Epilogue::Relu),
        (None, false) => conv2d(&shape, host(&x), host(&weight), bias),
    };
    let [oh, ow] = shape.out_size();
    flex(y, [shape.batch, shape.out_channels, oh, ow])
}

#[cfg(test)]
thread_local! {
    /// Calls of [`fast_conv2d`] on this thread, for tests that must know the custom op ran
    /// (per thread: tests run in parallel, and the op's forward runs on the calling thread).
    static FAST_CALLS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// `conv2d(x, weight) + bias` recorded with [`Conv2dBackward`] (or [`Conv2dBiasBackward`]).
fn fast_conv2d(
    x: Tensor<CpuAutodiff, 4>,
    weight: Tensor<CpuAutodiff, 4>,
    bias: Option<Tensor<CpuAutodiff, 1>>,
    options: ConvOptions<2>,
) -> Tensor<CpuAutodiff, 4> {
    #[cfg(test)]
    FAST_CALLS.set(FAST_CALLS.get() + 1);
    let x = x.into_primitive().tensor();
    let weight = weight.into_primitive().tensor();
    let out = match bias {
        None => match Conv2dBackward
            .prepare::<NoCheckpointing>([x.node.clone(), weight.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (
                    prep.checkpoint(&x),
                    prep.checkpoint(&weight),
                    options.clone(),
                );
                prep.finish(
                    state,
                    forward(x.primitive, weight.primitive, None, &options, false, None),
                )
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(
                x.primitive,
                weight.primitive,
                None,
                &options,
                false,
                None,
            )),
        },
        Some(bias) => {
            let bias = bias.into_primitive().tensor();
            match Conv2dBiasBackward
                .prepare::<NoCheckpointing>([
                    x.node.clone(),
                    weight.node.clone(),
                    bias.node.clone(),
                ])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let state = (
                        prep.checkpoint(&x),
                        prep.checkpoint(&weight),
                        options.clone(),
                    );
                    let y = forward(
                        x.primitive,
                        weight.primitive,
                        Some(bias.primitive),
                        &options,
                        false,
                        None,
                    );
                    prep.finish(state, y)
                }
                OpsKind::UnTracked(prep) => prep.finish(forward(
                    x.primitive,
                    weight.primitive,
                    Some(bias.primitive),
                    &options,
                    false,
                    None,
                )),
            }
        }
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// The backward step of a convolution without bias.
#[derive(Debug)]
struct Conv2dBackward;

/// The backward step of a convolution with bias: the bias gradient is the output gradient
/// summed over every sample and position of its channel.
#[derive(Debug)]
struct Conv2dBiasBackward;

type ConvState = (NodeId, NodeId, ConvOptions<2>);

impl Backward<Flex, 2> for Conv2dBackward {
    type State = ConvState;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [x, weight] = ops.parents.map(|node| node.map(|n| n.id));
        let grad_out = grads.consume::<Flex>(&ops.node);
        register_conv_grads([x, weight, None], grad_out, ops.state, grads, checkpointer);
    }
}

impl Backward<Flex, 3> for Conv2dBiasBackward {
    type State = ConvState;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let parents = ops.parents.map(|node| node.map(|n| n.id));
        let grad_out = grads.consume::<Flex>(&ops.node);
        register_conv_grads(parents, grad_out, ops.state, grads, checkpointer);
    }
}

/// Registers the gradients of the parents (input, weight, bias) that need one.
fn register_conv_grads(
    [node_x, node_weight, node_bias]: [Option<NodeId>; 3],
    grad_out: FlexTensor,
    (x_state, weight_state, options): ConvState,
    grads: &mut Gradients,
    checkpointer: &mut Checkpointer,
) {
    let x: FlexTensor = checkpointer.retrieve_node_output(x_state);
    let weight: FlexTensor = checkpointer.retrieve_node_output(weight_state);
    if [&x, &weight, &grad_out]
        .iter()
        .any(|t| t.dtype() != DType::F32)
    {
        // Our kernels are f32; other precisions take Burn's generic gradients.
        if let Some(node) = node_bias {
            let [n, o, oh, ow] = dims4(&grad_out);
            let g = Flex::float_swap_dims(grad_out.clone(), 0, 1);
            let g = Flex::float_sum_dim(Flex::float_reshape(g, [o, n * oh * ow].into()), 1);
            grads.register::<Flex>(node, Flex::float_reshape(g, [o].into()));
        }
        if let Some(node) = node_x {
            let g = Flex::conv2d_x_backward(
                x.clone(),
                weight.clone(),
                grad_out.clone(),
                options.clone(),
            );
            grads.register::<Flex>(node, g);
        }
        if let Some(node) = node_weight {
            let g = Flex::conv2d_weight_backward(x, weight, grad_out, options);
            grads.register::<Flex>(node, g);
        }
        return;
    }
    let shape = geometry(&x, &weight, &options);
    let [n, c, h, w] = dims4(&x);
    let [o, _, kh, kw] = dims4(&weight);
    let grad_out = contiguous(grad_out);
    let grad_out = grad_out.as_slice::<f32>().expect("contiguous f32");
    if let Some(node) = node_bias {
        let [oh, ow] = shape.out_size();
        let g = channel_sums(grad_out, [n, o, oh * ow]);
        grads.register::<Flex>(node, flex(g, [o]));
    }
    if let Some(node) = node_x {
        let weight = contiguous(weight.clone());
        let g = conv2d_input_grad(&shape, weight.as_slice().expect("contiguous f32"), grad_out);
        grads.register::<Flex>(node, flex(g, [n, c, h, w]));
    }
    if let Some(node) = node_weight {
        let x = contiguous(x);
        let g = conv2d_weight_grad(&shape, x.as_slice().expect("contiguous f32"), grad_out);
        grads.register::<Flex>(node, flex(g, [o, c, kh, kw]));
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::Distribution;

    use super::*;
    use crate::kernels::assert_close_to_burn;

    /// Output and the gradients (input, weight, bias if any) of `sum(conv(x) ⊙ g)` through
    /// `forward`.
    fn grads(
        conv: &Conv2d<CpuAutodiff>,
        x: &Tensor<CpuAutodiff, 4>,
        forward: fn(&Conv2d<CpuAutodiff>, Tensor<CpuAutodiff, 4>) -> Tensor<CpuAutodiff, 4>,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let x = x.clone().detach().require_grad();
        let y = forward(conv, x.clone());
        let g =
            Tensor::<CpuAutodiff, 4>::ones(y.dims(), &y.device()).mul_scalar(0.5) + y.clone().sin();
        let loss = (y.clone() * g.detach()).sum();
        let grads = loss.backward();
        let read = |t: Tensor<Flex, 4>| t.into_data().to_vec::<f32>().unwrap();
        let bias = conv.bias.as_ref().map_or_else(Vec::new, |b| {
            b.val().grad(&grads).unwrap().into_data().to_vec().unwrap()
        });
        (
            y.into_data().to_vec::<f32>().unwrap(),
            read(x.grad(&grads).unwrap()),
            read(conv.weight.val().grad(&grads).unwrap()),
            bias,
        )
    }

    /// Through a module, as the backbones call it: the same outputs and gradients as Burn's
    /// `Conv2d::forward`, for the padding, stride and bias forms the architectures use.
    #[test]
    fn the_custom_op_matches_conv2d_forward_and_its_gradients() {
        let device = Default::default();
        for (padding, stride, k, bias) in [
            (PaddingConfig2d::Explicit(1, 1, 1, 1), [1, 1], 3, false),
            (PaddingConfig2d::Explicit(1, 1, 1, 1), [1, 1], 3, true),
            (PaddingConfig2d::Explicit(1, 1, 1, 1), [2, 2], 3, false),
            (PaddingConfig2d::Valid, [2, 2], 1, false),
            (PaddingConfig2d::Explicit(3, 3, 3, 3), [2, 2], 7, false),
            (PaddingConfig2d::Explicit(3, 3, 3, 3), [2, 2], 7, true),
        ] {
            let conv: Conv2d<CpuAutodiff> = Conv2dConfig::new([3, 5], [k, k])
                .with_padding(padding.clone())
                .with_stride(stride)
                .with_bias(bias)
                .init(&device);
            assert!(covered(&conv).is_some(), "{padding:?}");
            let x = Tensor::<CpuAutodiff, 4>::random(
                [2, 3, 11, 11],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let (y0, gx0, gw0, gb0) = grads(&conv, &x, |c, x| c.forward(x));
            let before = FAST_CALLS.get();
            let (y1, gx1, gw1, gb1) = grads(&conv, &x, conv2d_forward);
            assert!(FAST_CALLS.get() > before, "the custom op did not run");
            assert_close_to_burn("output", &y1, &y0);
            assert_close_to_burn("input gradient", &gx1, &gx0);
            assert_close_to_burn("weight gradient", &gw1, &gw0);
            assert_eq!(gb1.len(), if bias { 5 } else { 0 });
            assert_close_to_burn("bias gradient", &gb1, &gb0);
        }
    }

    #[test]
    fn convolutions_the_kernels_do_not_cover_take_burns_path() {
        let device = burn_flex::FlexDevice;
        let grouped: Conv2d<Flex> = Conv2dConfig::new([4, 4], [3, 3])
            .with_groups(2)
            .init(&device);
        assert!(covered(&grouped).is_none());
        let x = Tensor::<Flex, 4>::random([2, 4, 6, 6], Distribution::Normal(0.0, 1.0), &device);
        assert_eq!(
            conv2d_forward(&grouped, x.clone()).into_data(),
            grouped.forward(x).into_data()
        );
        // So is a grouped convolution in training.
        let grouped: Conv2d<CpuAutodiff> = Conv2dConfig::new([4, 4], [3, 3])
            .with_groups(2)
            .init(&device);
        let x =
            Tensor::<CpuAutodiff, 4>::random([1, 4, 6, 6], Distribution::Normal(0.0, 1.0), &device);
        let before = FAST_CALLS.get();
        let burn = grads(&grouped, &x, |c, x| c.forward(x));
        assert_eq!(burn, grads(&grouped, &x, conv2d_forward));
        assert_eq!(FAST_CALLS.get(), before);
    }

    /// Inference on the plain backend (the folded BatchNorm gives every convolution a bias):
    /// our forward, alone, with the ReLU and with a residual add + ReLU fused, within rounding of
    /// Burn's; stride 1 takes the direct kernel, stride 2 im2col.
    #[test]
    fn inference_convolutions_with_and_without_bias_match_burn() {
        let device = burn_flex::FlexDevice;
        for (bias, stride, padding) in [
            (true, [1, 1], PaddingConfig2d::Explicit(1, 1, 1, 1)),
            (false, [2, 2], PaddingConfig2d::Explicit(1, 1, 1, 1)),
            (true, [1, 1], PaddingConfig2d::Valid),
        ] {
            let conv: Conv2d<Flex> = Conv2dConfig::new([3, 4], [3, 3])
                .with_bias(bias)
                .with_stride(stride)
                .with_padding(padding)
                .init(&device);
            let x =
                Tensor::<Flex, 4>::random([2, 3, 7, 8], Distribution::Normal(0.0, 1.0), &device);
            let ours: Vec<f32> = conv2d_forward(&conv, x.clone())
                .into_data()
                .to_vec()
                .unwrap();
            let theirs: Vec<f32> = conv.forward(x.clone()).into_data().to_vec().unwrap();
            assert_close_to_burn("inference output", &ours, &theirs);
            let ours: Vec<f32> = conv2d_forward_then(&conv, x.clone(), Then::Relu)
                .into_data()
                .to_vec()
                .unwrap();
            let theirs: Vec<f32> = burn::tensor::activation::relu(conv.forward(x.clone()))
                .into_data()
                .to_vec()
                .unwrap();
            assert_close_to_burn("inference output after ReLU", &ours, &theirs);
            let y = conv.forward(x.clone());
            let residual =
                Tensor::<Flex, 4>::random(y.dims(), Distribution::Normal(0.0, 1.0), &device);
            let ours: Vec<f32> =
                conv2d_forward_then(&conv, x.clone(), Then::AddRelu(residual.clone()))
                    .into_data()
                    .to_vec()
                    .unwrap();
            let theirs: Vec<f32> = burn::tensor::activation::relu(y + residual)
                .into_data()
                .to_vec()
                .unwrap();
            assert_close_to_burn("inference output plus residual after ReLU", &ours, &theirs);
        }
    }
}
