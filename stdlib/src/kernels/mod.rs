//! CPU kernels for the backbone's hot operations, on host slices (NCHW, f32), for the CPU
//! backend where Burn's generic implementations are slow (see PERFORMANCE.md): they call
//! [`gemm`](crate::gemm) directly, with well-shaped products and no layout copies, and split work
//! over samples on rayon's pool.
//!
//! Each kernel is checked against Burn's own op on property-generated shapes. Wiring them into
//! training (a custom autodiff op on `Autodiff<Flex>`, issue #17) is the next step; until then
//! `examples/conv_bench.rs` measures them against the path training takes today.

pub mod conv;
