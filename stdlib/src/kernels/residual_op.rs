//! `relu(a + b)`, the end of every residual block, as one op on the CPU training backend: one
//! pass forward, and backward one pass that hands the same masked gradient to both inputs.
//! Burn records an addition and a ReLU, each a full pass over the map both ways. Every other
//! backend, and plain `Flex` in inference, computes `relu(a + b)` with Burn's ops.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorMetadata, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::flex_glue::{CpuAutodiff, cast, cast_back, contiguous, flex, host};
use std::mem::MaybeUninit;

use super::{simd_kernel, vectorized, written_in_parallel};

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// `relu(a + b)` for two tensors of the same shape.
pub(crate) fn add_relu<B: Backend, const D: usize>(
    a: Tensor<B, D>,
    b: Tensor<B, D>,
) -> Tensor<B, D> {
    let covered = !super::burn_ops_only()
        && a.dims() == b.dims()
        && a.dtype() == DType::F32
        && b.dtype() == DType::F32;
    if !covered {
        return relu(a + b);
    }
    match cast::<(Tensor<CpuAutodiff, D>, Tensor<CpuAutodiff, D>), _>((a, b)) {
        Ok((a, b)) => cast_back(tracked_add_relu(a, b)),
        Err((a, b)) => relu(a + b),
    }
}

fn tracked_add_relu<const D: usize>(
    a: Tensor<CpuAutodiff, D>,
    b: Tensor<CpuAutodiff, D>,
) -> Tensor<CpuAutodiff, D> {
    let shape = a.shape();
    let (a, b) = (a.into_primitive().tensor(), b.into_primitive().tensor());
    let (a_host, b_host) = (
        contiguous(a.primitive.clone()),
        contiguous(b.primitive.clone()),
    );
    let (av, bv) = (host(&a_host), host(&b_host));
    let y = written_in_parallel(av.len(), CHUNK, |i, out| {
        let at = i * CHUNK..(i * CHUNK + out.len());
        vectorized(AddReluChunk {
            out,
            a: &av[at.clone()],
            b: &bv[at.clone()],
        });
        at.len()
    });
    let y = flex(y, shape);
    let out = match AddReluBackward
        .prepare::<NoCheckpointing>([a.node.clone(), b.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(y.clone(), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

simd_kernel! {
    AddReluChunk<'a> { out: &'a mut [MaybeUninit<f32>], a: &'a [f32], b: &'a [f32] } -> () {
        for ((y, &a), &b) in out.iter_mut().zip(a).zip(b) {
            y.write((a + b).max(0.0));
        }
    }
}

simd_kernel! {
    /// The output gradient where the ReLU passed, zero where it clipped.
    MaskChunk<'a> { m: &'a mut [f32], g: &'a [f32], y: &'a [f32] } -> () {
        for ((m, &g), &y) in m.iter_mut().zip(g).zip(y) {
            *m = if y > 0.0 { g } else { 0.0 };
        }
    }
}

#[derive(Debug)]
struct AddReluBackward;

impl Backward<Flex, 2> for AddReluBackward {
    /// The output, whose zeros are the ReLU's mask.
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_a, node_b] = ops.parents;
        let grad_out = contiguous(grads.consume::<Flex>(&ops.node));
        let y = ops.state;
        let (g, yv) = (host(&grad_out), host(&y));
        let mut masked = vec![0.0f32; g.len()];
        masked
            .par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(yv.par_chunks(CHUNK)))
            .for_each(|(m, (g, y))| vectorized(MaskChunk { m, g, y }));
        let masked = flex(masked, y.shape());
        // Both inputs receive the same gradient: one buffer, shared.
        if let Some(node) = node_a {
            grads.register::<Flex>(node.id, masked.clone());
        }
        if let Some(node) = node_b {
            grads.register::<Flex>(node.id, masked);
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;

    #[test]
    fn matches_burns_add_and_relu_with_gradients_for_both_inputs() {
        let device = Default::default();
        let make = || {
            Tensor::<CpuAutodiff, 4>::random([3, 5, 9, 7], Distribution::Normal(0.0, 1.0), &device)
        };
        let (a, b, w) = (make(), make(), make());
        let run = |f: &dyn Fn(
            Tensor<CpuAutodiff, 4>,
            Tensor<CpuAutodiff, 4>,
        ) -> Tensor<CpuAutodiff, 4>| {
            let (a, b) = (a.clone().require_grad(), b.clone().require_grad());
            let y = f(a.clone(), b.clone());
            let grads = (y.clone() * w.clone()).sum().backward();
            let read = |t: Tensor<Flex, 4>| t.into_data().to_vec::<f32>().unwrap();
            (
                read(y.inner()),
                read(a.grad(&grads).unwrap()),
                read(b.grad(&grads).unwrap()),
            )
        };
        assert_eq!(run(&|a, b| add_relu(a, b)), run(&|a, b| relu(a + b)));
        // The same tensor on both sides (x + x) sums the two gradients, as Burn does.
        let x = a.clone().require_grad();
        let grads = (add_relu(x.clone(), x.clone()) * w.clone())
            .sum()
            .backward();
        let ours: Vec<f32> = x.grad(&grads).unwrap().into_data().to_vec().unwrap();
        let x = a.clone().require_grad();
        let grads = (relu(x.clone() + x.clone()) * w.clone()).sum().backward();
        let theirs: Vec<f32> = x.grad(&grads).unwrap().into_data().to_vec().unwrap();
        assert_eq!(ours, theirs);
    }
}
