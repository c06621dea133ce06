//! A bounds-checked view of the `gemm` crate's strided matrix multiply, for host-memory heads
//! and the CPU kernels.
//!
//! Burn's CPU backend calls the same crate through its own tensor layer; calling it directly
//! reads strided blocks (one head of a stacked weight matrix, a transposed batch) without copies,
//! and lets the head trainer choose when to use more than one thread (see [`PARALLEL_MACS`]).

/// Products smaller than this many multiply-adds run on the calling thread. Measured on the
/// 2-core development machine (`head_bench`): a head's step (`[128, 512] × [512, 100]`, 6.6M) took
/// 0.42 s per 20 epochs split over both cores and 0.32 s on one — waking the second thread costs
/// more than it saves — while a 25-head sweep (164M per product) gained ~3% from the second core.
const PARALLEL_MACS: usize = 1 << 26;

use crate::cpu::CpuLevel;

/// Where a matrix lives in its slice: element `(r, c)` is at `offset + r·row_stride + c·col_stride`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mat {
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl Mat {
    /// A dense row-major `rows × cols` matrix at the start of its slice.
    pub(crate) fn dense(rows: usize, cols: usize) -> Self {
        Self {
            offset: 0,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The same elements read as the transposed matrix.
    pub(crate) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Moves the view `by` elements into the slice.
    pub(crate) fn at(self, by: usize) -> Self {
        Self {
            offset: self.offset + by,
            ..self
        }
    }

    /// Panics unless every element is inside a slice of `len` elements (overflow included).
    fn check(&self, len: usize, what: &str) {
        if self.rows == 0 || self.cols == 0 {
            return;
        }
        let last = (self.rows - 1)
            .checked_mul(self.row_stride)
            .and_then(|r| (self.cols - 1).checked_mul(self.col_stride)?.checked_add(r))
            .and_then(|r| r.checked_add(self.offset));
        assert!(
            last.is_some_and(|last| last < len),
            "{what} {self:?} reaches past its {len} elements"
        );
    }

    /// Panics unless no two elements share a place (a destination written by several threads
    /// must not alias itself).
    fn check_distinct(&self) {
        let (r, c) = (self.rows, self.cols);
        let ok = r <= 1 && (c <= 1 || self.col_stride > 0)
            || c <= 1 && self.row_stride > 0
            || self.col_stride > 0 && self.row_stride >= c.saturating_mul(self.col_stride)
            || self.row_stride > 0 && self.col_stride >= r.saturating_mul(self.row_stride);
        assert!(ok, "dst {self:?} has elements that overlap");
    }
}

/// `dst ← accumulate·dst + a·b` (`accumulate` is 0 or 1: `dst` is overwritten or added to), on
/// all cores when the product is large enough for `gemm` to split it, with gemm's own kernels
/// unless `LORTFLOW_CPU_LEVEL` caps them ([`crate::cpu::cap`]).
///
/// Panics if the shapes disagree or a view reaches outside its slice; `dst` cannot alias the
/// inputs (it is borrowed mutably).
pub(crate) fn matmul(
    dst: &mut [f32],
    dst_mat: Mat,
    accumulate: bool,
    a: &[f32],
    a_mat: Mat,
    b: &[f32],
    b_mat: Mat,
) {
    matmul_at(
        crate::cpu::cap().unwrap_or(CpuLevel::Avx512),
        dst,
        dst_mat,
        accumulate,
        a,
        a_mat,
        b,
        b_mat,
    );
}

/// [`matmul`] at `level` (or the highest below it this CPU has).
#[allow(clippy::too_many_arguments)] // matmul's arguments and the level
pub(crate) fn matmul_at(
    level: CpuLevel,
    dst: &mut [f32],
    dst_mat: Mat,
    accumulate: bool,
    a: &[f32],
    a_mat: Mat,
    b: &[f32],
    b_mat: Mat,
) {
    assert_eq!(
        (dst_mat.rows, dst_mat.cols, a_mat.cols),
        (a_mat.rows, b_mat.cols, b_mat.rows),
        "matmul shapes: dst {dst_mat:?}, a {a_mat:?}, b {b_mat:?}"
    );
    dst_mat.check(dst.len(), "dst");
    dst_mat.check_distinct();
    if dst_mat.rows == 0 || dst_mat.cols == 0 {
        return;
    }
    if a_mat.cols == 0 {
        if !accumulate {
            for r in 0..dst_mat.rows {
                for c in 0..dst_mat.cols {
                    dst[dst_mat.offset + r * dst_mat.row_stride + c * dst_mat.col_stride] = 0.0;
                }
            }
        }
        return;
    }
    a_mat.check(a.len(), "lhs");
    b_mat.check(b.len(), "rhs");
    let parallelism = if dst_mat.rows * dst_mat.cols * a_mat.cols >= PARALLEL_MACS {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every element the call reads or writes is inside its slice (checked above, without
    // overflow); `dst`'s elements are distinct (checked), so the threads gemm splits it over
    // write disjoint places; `dst` is a unique borrow, so it overlaps neither input; `gemm` reads
    // `dst` only when `read_dst`.
    #[allow(unsafe_code)]
    unsafe {
        gemm_at(
            level,
            dst.as_mut_ptr().add(dst_mat.offset),
            dst_mat,
            accumulate,
            View {
                ptr: a.as_ptr().add(a_mat.offset),
                mat: a_mat,
            },
            View {
                ptr: b.as_ptr().add(b_mat.offset),
                mat: b_mat,
            },
            parallelism,
        );
    }
}

/// A matrix at a pointer.
#[derive(Clone, Copy)]
struct View {
    ptr: *const f32,
    mat: Mat,
}

/// `gemm::gemm` (f32, no conjugation, α = read_dst, β = 1) with its kernels chosen for `level`.
/// The crate picks them itself from what the CPU has, once per process, with no way to cap it;
/// below that, this calls the same generic driver with the same microkernel tables of the
/// capped instruction set, after the same change of layout (`gemm::gemm` transposes a product
/// whose destination is row-major: the microkernels write columns). Strides here are never
/// negative, the other case it normalises.
///
/// # Safety
/// As `gemm::gemm`: every element read or written lies in memory valid for it, `dst`'s elements
/// are distinct and writable, and it overlaps neither input.
#[allow(unsafe_code)]
unsafe fn gemm_at(
    level: CpuLevel,
    dst: *mut f32,
    dst_mat: Mat,
    read_dst: bool,
    lhs: View,
    rhs: View,
    parallelism: gemm::Parallelism,
) {
    let stride = |s: usize| isize::try_from(s).expect("strides fit in isize");
    let alpha = if read_dst { 1.0 } else { 0.0 };
    if level >= gemm_own_level() {
        // SAFETY: the caller's contract.
        unsafe {
            gemm::gemm(
                dst_mat.rows,
                dst_mat.cols,
                lhs.mat.cols,
                dst,
                stride(dst_mat.col_stride),
                stride(dst_mat.row_stride),
                read_dst,
                lhs.ptr,
                stride(lhs.mat.col_stride),
                stride(lhs.mat.row_stride),
                rhs.ptr,
                stride(rhs.mat.col_stride),
                stride(rhs.mat.row_stride),
                alpha,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
        return;
    }
    // (dst)ᵀ = rhsᵀ · lhsᵀ when dst is row-major, as gemm::gemm does.
    let (dst_mat, lhs, rhs) = if dst_mat.col_stride < dst_mat.row_stride {
        (dst_mat.t(), rhs.t(), lhs.t())
    } else {
        (dst_mat, lhs, rhs)
    };
    macro_rules! at_level {
        ($simd:expr, $kernels:path, $lanes:expr) => {{
            use $kernels as k;
            // SAFETY: the caller's contract; the layout is what gemm::gemm hands its kernels.
            unsafe {
                gemm_common::gemm::gemm_basic_generic::<
                    _,
                    f32,
                    { $lanes },
                    { k::MR_DIV_N * $lanes },
                    { k::NR },
                    { k::MR_DIV_N },
                    { k::H_M },
                    { k::H_N },
                >(
                    $simd,
                    dst_mat.rows,
                    dst_mat.cols,
                    lhs.mat.cols,
                    dst,
                    stride(dst_mat.col_stride),
                    stride(dst_mat.row_stride),
                    read_dst,
                    lhs.ptr,
                    stride(lhs.mat.col_stride),
                    stride(lhs.mat.row_stride),
                    rhs.ptr,
                    stride(rhs.mat.col_stride),
                    stride(rhs.mat.row_stride),
                    alpha,
                    1.0,
                    false,
                    false,
                    false,
                    |a, b, c| a * b + c,
                    &k::UKR,
                    &k::H_UKR,
                    false,
                    parallelism,
                )
            }
        }};
    }
    #[cfg(target_arch = "x86_64")]
    if level >= CpuLevel::Avx2
        && let Some(simd) = gemm_common::simd::V3::try_new()
    {
        // SAFETY (of the FMA kernels inside): `V3::try_new` found AVX2 and FMA. Only machines
        // whose gemm runs AVX-512 kernels get here (AVX2 is below what gemm picks itself).
        return at_level!(simd, gemm_f32::microkernel::fma::f32, 8);
    }
    at_level!(
        gemm_common::simd::Scalar,
        gemm_f32::microkernel::scalar::f32,
        1
    )
}

/// The level of the kernels `gemm::gemm` picks on this CPU, by its own test (`avx512f`, then
/// `fma`, in `gemm_common`'s `init_gemm_fn`), which is not pulp's (that one also asks for BW, DQ,
/// VL, BMI…): a cap at or above it leaves gemm's choice alone, anything below takes the capped
/// tables.
fn gemm_own_level() -> CpuLevel {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return CpuLevel::Avx512;
        }
        if std::arch::is_x86_feature_detected!("fma") {
            return CpuLevel::Avx2;
        }
    }
    // Elsewhere gemm has no levels to cap (NEON on AArch64 is its baseline).
    CpuLevel::Scalar
}

impl View {
    fn t(self) -> View {
        View {
            mat: self.mat.t(),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], am: Mat, b: &[f32], bm: Mat) -> Vec<f32> {
        let mut out = vec![0.0; am.rows * bm.cols];
        for r in 0..am.rows {
            for c in 0..bm.cols {
                out[r * bm.cols + c] = (0..am.cols)
                    .map(|k| {
                        a[am.offset + r * am.row_stride + k * am.col_stride]
                            * b[bm.offset + k * bm.row_stride + c * bm.col_stride]
                    })
                    .sum();
            }
        }
        out
    }

    #[test]
    fn strided_blocks_and_transposes_multiply_like_the_definition() {
        let a: Vec<f32> = (0..7 * 5).map(|i| (i % 11) as f32 - 5.0).collect();
        let b: Vec<f32> = (0..5 * 9).map(|i| (i % 7) as f32 * 0.5).collect();
        // `a` is 7×5 row-major; use the 5×3 block of its transpose that starts at column 2.
        let am = Mat {
            rows: 5,
            cols: 3,
            ..Mat::dense(7, 5).t().at(2 * 5)
        };
        // `b`: a 3×4 block of the 5×9 matrix at row 1, column 3.
        let bm = Mat {
            offset: 9 + 3,
            rows: 3,
            cols: 4,
            row_stride: 9,
            col_stride: 1,
        };
        let mut dst = vec![1.0f32; 5 * 4];
        matmul(&mut dst, Mat::dense(5, 4), false, &a, am, &b, bm);
        assert_eq!(dst, naive(&a, am, &b, bm));
        let before = dst.clone();
        matmul(&mut dst, Mat::dense(5, 4), true, &a, am, &b, bm);
        let twice: Vec<f32> = before.iter().map(|v| 2.0 * v).collect();
        assert_eq!(dst, twice);
    }

    /// Every level this CPU runs against the definition, on random shapes from one element to
    /// gemm's blocked and multi-threaded sizes, every layout (row- or column-major operands and
    /// destination, so both sides of gemm's transpose), overwriting and accumulating.
    #[test]
    fn every_level_multiplies_random_shapes_like_the_definition() {
        let mut rng = lortflow_data::dataset::Rng::seed_from_u64(21);
        let mut sizes: Vec<[usize; 3]> = (0..60)
            .map(|_| std::array::from_fn(|_| 1 + rng.below(48) as usize))
            .collect();
        sizes.extend([[300, 257, 129], [420, 420, 420]]);
        for (case, [m, n, k]) in sizes.into_iter().enumerate() {
            let mut values = |len: usize| -> Vec<f32> {
                (0..len)
                    .map(|_| rng.next_f64() as f32 * 2.0 - 1.0)
                    .collect()
            };
            let (a, b, start) = (values(m * k), values(k * n), values(m * n));
            let layout = |rows: usize, cols: usize, bit: usize| {
                if case >> bit & 1 == 1 {
                    Mat::dense(cols, rows).t()
                } else {
                    Mat::dense(rows, cols)
                }
            };
            let (am, bm, dm) = (layout(m, k, 0), layout(k, n, 1), layout(m, n, 2));
            let accumulate = case >> 3 & 1 == 1;
            let product = naive(&a, am, &b, bm);
            for level in CpuLevel::available() {
                let mut dst = start.clone();
                matmul_at(level, &mut dst, dm, accumulate, &a, am, &b, bm);
                for r in 0..m {
                    for c in 0..n {
                        let at = r * dm.row_stride + c * dm.col_stride;
                        let want = product[r * n + c] + if accumulate { start[at] } else { 0.0 };
                        let got = dst[at];
                        assert!(
                            (got - want).abs() <= 1e-5 * (k as f32).sqrt().max(1.0) * 4.0,
                            "{level}, {m}x{k} · {k}x{n} (case {case}) at ({r}, {c}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "overlap")]
    fn an_aliasing_destination_panics() {
        let mut dst = vec![0.0f32; 4];
        let dst_mat = Mat {
            offset: 0,
            rows: 2,
            cols: 2,
            row_stride: 1,
            col_stride: 1,
        };
        let (a, b) = ([1.0; 4], [1.0; 4]);
        matmul(
            &mut dst,
            dst_mat,
            false,
            &a,
            Mat::dense(2, 2),
            &b,
            Mat::dense(2, 2),
        );
    }

    #[test]
    #[should_panic(expected = "reaches past")]
    fn a_stride_that_overflows_panics() {
        let mut dst = vec![0.0f32; 4];
        let huge = Mat {
            row_stride: usize::MAX / 2 + 1,
            ..Mat::dense(2, 2)
        };
        let (a, b) = ([1.0; 4], [1.0; 4]);
        matmul(
            &mut dst,
            Mat::dense(2, 2),
            false,
            &a,
            huge,
            &b,
            Mat::dense(2, 2),
        );
    }

    #[test]
    #[should_panic(expected = "reaches past")]
    fn a_view_outside_its_slice_panics() {
        let mut dst = vec![0.0f32; 4];
        matmul(
            &mut dst,
            Mat::dense(2, 2),
            false,
            &[1.0; 4],
            Mat::dense(2, 3),
            &[1.0; 6],
            Mat::dense(3, 2),
        );
    }
}
