//! CPU kernels for the backbone's hot operations, on host slices (NCHW, f32), for the CPU
//! backend where Burn's generic implementations are slow (see PERFORMANCE.md): they call
//! [`gemm`](crate::gemm) directly, with well-shaped products and no layout copies, and split work
//! over samples on rayon's pool.
//!
//! Each kernel is checked against Burn's own op on property-generated shapes. Training reaches
//! them through [`conv2d_forward`] (a custom autodiff op on `Autodiff<Flex>`; the model code
//! stays Burn's); `examples/conv_bench.rs` measures them against Burn's generic gradients.

pub mod conv;
mod conv_op;

#[cfg(test)]
pub(crate) use conv_op::BURN_CONV_ONLY;
pub(crate) use conv_op::conv2d_forward;
