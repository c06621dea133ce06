//! Between Burn's generic tensors and the host slices the kernels read: recognising the CPU
//! backend by type at run time (so that model code stays generic over `B: Backend` and needs no
//! extra bound), and flex tensors to and from dense `f32` buffers.

use std::any::Any;

use burn::backend::Autodiff;
use burn::tensor::{Shape, TensorData, TensorMetadata};
use burn_flex::{Flex, FlexTensor};

/// The CPU training backend.
pub(super) type CpuAutodiff = Autodiff<Flex>;

/// `value` as a `T` when it is one (when a generic `B` is the CPU backend), else `value` back.
pub(super) fn cast<T: 'static, U: 'static>(value: U) -> Result<T, U> {
    let boxed: Box<dyn Any> = Box::new(value);
    boxed.downcast::<T>().map(|t| *t).map_err(|other| {
        *other
            .downcast::<U>()
            .expect("a box holds the type it was made from")
    })
}

/// A value of type `T` that is known to be a `U` (the inverse of a successful [`cast`]).
pub(super) fn cast_back<T: 'static, U: 'static>(value: T) -> U {
    match cast::<U, T>(value) {
        Ok(u) => u,
        Err(_) => unreachable!("cast_back is called only on the type `cast` succeeded with"),
    }
}

/// `t` itself when its elements are one dense run from its start, else a dense copy.
pub(super) fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

/// The dense `f32` elements of a tensor made by [`contiguous`].
pub(super) fn host(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("a contiguous f32 tensor (the kernels are entered only for f32)")
}

/// A flex tensor owning `values`, of shape `shape`.
pub(super) fn flex(values: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// The four sizes of an NCHW tensor.
pub(super) fn dims4(t: &FlexTensor) -> [usize; 4] {
    let shape = t.shape();
    [shape[0], shape[1], shape[2], shape[3]]
}
