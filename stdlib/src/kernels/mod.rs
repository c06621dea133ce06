//! CPU kernels for the backbone's hot operations, on host slices (NCHW, f32), for the CPU
//! backend where Burn's generic implementations are slow (see PERFORMANCE.md): stride-1
//! convolutions and their gradients read straight from the image on a padded grid
//! ([`direct_conv`]), the other convolutions as well-shaped [`gemm`](crate::gemm) products
//! ([`conv`]), max-pool with the argmax kept for the backward pass, global average pooling, and
//! BatchNorm (+ ReLU) in two passes each way. Work is split over samples, channels or planes on
//! rayon's pool.
//!
//! Each kernel is checked against Burn's own op on property-generated shapes. The backbones reach
//! them through the functions re-exported here, custom autodiff ops on `Autodiff<Flex>` (and the
//! plain forward on `Flex` for inference) that fall back to Burn's ops on every other backend, so
//! the model code stays Burn's; `examples/conv_bench.rs` measures the convolutions against Burn's
//! and against each other.

use std::mem::MaybeUninit;

use rayon::prelude::*;

pub mod batch_norm;
mod bn_op;
pub mod conv;
mod conv_op;
mod conv_shape;
pub mod direct_conv;
mod flex_glue;
pub mod pool;
mod pool_op;
mod residual_op;

pub(crate) use bn_op::batch_norm_train;
pub(crate) use conv_op::{Then, conv2d_forward, conv2d_forward_then};
pub(crate) use pool_op::{global_avg_pool, max_pool2d};
pub(crate) use residual_op::add_relu;

/// `kernel`, compiled for the process's instruction-set level ([`crate::cpu`]: the best this
/// CPU has — AVX-512, AVX2 + FMA, or the baseline — unless `LORTFLOW_CPU_LEVEL` caps it), chosen
/// at run time. The crate is built for baseline x86-64, so without this the kernels'
/// element-wise loops vectorise to SSE2's 4 lanes only; inside, they get 16 or 8.
///
/// A kernel is a struct of its arguments whose `with_simd` is `#[inline(always)]` all the way
/// down ([`simd_kernel!`]): a closure or a function called through `FnOnce` is compiled on its
/// own, for the baseline, whenever LLVM declines to inline it into the dispatched function —
/// which it did for every kernel loop here (`perf annotate`: `xmm` registers only).
#[inline(always)]
pub(crate) fn vectorized<K: pulp::WithSimd>(kernel: K) -> K::Output {
    crate::cpu::dispatch(kernel)
}

/// `simd_kernel!(Name<'a> { field: Type, … } -> Output { body })` declares the struct `Name`
/// and a `pulp::WithSimd` whose `#[inline(always)]` `with_simd` runs `body` with the fields in
/// scope, for [`vectorized`].
macro_rules! simd_kernel {
    (
        $(#[$meta:meta])*
        $name:ident<$lt:lifetime $(, const $c:ident: $ct:ty)?> { $($field:ident: $ty:ty),* $(,)? }
        -> $out:ty $body:block
    ) => {
        $(#[$meta])*
        struct $name<$lt $(, const $c: $ct)?> { $($field: $ty),* }

        impl<$lt $(, const $c: $ct)?> pulp::WithSimd for $name<$lt $(, $c)?> {
            type Output = $out;

            #[inline(always)]
            fn with_simd<S: pulp::Simd>(self, _: S) -> $out {
                let $name { $($field),* } = self;
                $body
            }
        }
    };
}
pub(crate) use simd_kernel;

/// A vector of `len` values written chunk by chunk on rayon's threads, without zeroing it first:
/// the kernels' outputs are 1–30 MB and overwritten at once, and zeroing them was ~10% of a
/// training step. `write(i, chunk)` writes chunk `i` (`chunk` elements, the last one possibly
/// fewer) and returns how many of its elements it wrote, from the front; anything but all of
/// them panics before the vector could be read.
pub(crate) fn written_in_parallel<T: Copy + Send + Sync>(
    len: usize,
    chunk: usize,
    write: impl Fn(usize, &mut [MaybeUninit<T>]) -> usize + Sync,
) -> Vec<T> {
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, part)| {
            let expected = part.len();
            assert_eq!(write(i, part), expected, "chunk {i} was not written whole");
        });
    // SAFETY: the first `len` elements are initialised: every chunk of them was written whole
    // (checked above; a panic leaves `out` empty).
    #[allow(unsafe_code)]
    unsafe {
        out.set_len(len)
    };
    out
}

/// Panics unless `ours` equals Burn's `theirs` element by element within 1e-4 of the largest
/// magnitude in `theirs` (at least 1e-3): the tolerance every kernel test compares with.
#[cfg(test)]
#[track_caller]
pub(crate) fn assert_close_to_burn(what: &str, ours: &[f32], theirs: &[f32]) {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths differ");
    let scale = theirs.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * scale,
            "{what}: element {i} is {a}, Burn says {b}"
        );
    }
}

#[cfg(test)]
thread_local! {
    /// Set by tests that run the same model on Burn's own ops alone, to compare with the kernels.
    pub(crate) static BURN_OPS_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread must take Burn's ops (tests only; always `false` otherwise).
fn burn_ops_only() -> bool {
    #[cfg(test)]
    return BURN_OPS_ONLY.with(std::cell::Cell::get);
    #[cfg(not(test))]
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel tests (each against Burn's ops, the im2col path or the definition), the
    /// matrix products' and the level's own, run again in a child process at every level below
    /// this CPU's best, selected by `LORTFLOW_CPU_LEVEL` as a user would (this process runs them
    /// at the best). The child checks that it runs at the level asked
    /// (`cpu::tests::the_process_runs_at_the_variable_s_level`).
    #[test]
    fn every_level_passes_the_kernel_tests() {
        use crate::cpu::{CpuLevel, LEVEL_VARIABLE, tests::EXPECTED_LEVEL_VARIABLE};
        if std::env::var(LEVEL_VARIABLE).is_ok_and(|v| !v.trim().is_empty()) {
            return; // a child, or a run at a chosen level: its own level is the one tested
        }
        let exe = std::env::current_exe().expect("the test binary's path");
        let best = CpuLevel::detected();
        for level in CpuLevel::available().filter(|&l| l < best) {
            let out = std::process::Command::new(&exe)
                .args(["kernels::", "gemm::", "cpu::", "--test-threads", "2"])
                .env(LEVEL_VARIABLE, level.name())
                .env(EXPECTED_LEVEL_VARIABLE, level.name())
                .output()
                .expect("the test binary runs again");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "the kernel tests fail at {level}:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let passed: usize = stdout
                .lines()
                .find_map(|l| l.strip_prefix("test result: ok. "))
                .and_then(|l| l.split(' ').next()?.parse().ok())
                .unwrap_or(0);
            assert!(
                passed >= 10,
                "only {passed} tests ran at {level}:\n{stdout}"
            );
        }
    }

    #[test]
    fn written_in_parallel_fills_every_chunk() {
        let v = written_in_parallel(10_007, 100, |i, part| {
            for (j, slot) in part.iter_mut().enumerate() {
                slot.write((i * 100 + j) as u32);
            }
            part.len()
        });
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32));
    }

    #[test]
    #[should_panic(expected = "was not written whole")]
    fn a_chunk_left_partly_unwritten_panics() {
        let _ = written_in_parallel(50, 10, |_, part: &mut [MaybeUninit<f32>]| {
            part[0].write(1.0);
            1
        });
    }
}
