//! Stride-1 convolution read straight from the image, without an im2col matrix.
//!
//! The im2col path writes every input pixel `KH·KW` times and `gemm` copies that matrix once
//! more into its packed panels; for ResNet-32's 16- and 32-channel layers that traffic cost as
//! much as the products (PERFORMANCE.md). Here a chunk of samples is laid out once on a *padded
//! grid*: every channel is one flat row of values, each image row preceded by `pad_w` zeros and
//! each image followed by `pad_h` zero rows (the zeros after one row are the left padding of the
//! next, so the padding is shared). On that grid the tap `(ki, kj)` of the output at grid
//! position `q` reads the input at `q + ki·dil·row + kj·dil`, the same offset for every output:
//! a convolution becomes, per input channel and tap, one shifted row times one weight,
//!
//! `Y[o][q] = Σ_c Σ_(ki,kj) W[o, c, ki, kj] · X[c][q + offset(ki, kj)]`,
//!
//! computed in register tiles of output channels × vectors of grid positions, the weight
//! broadcast and the row loaded unaligned: 4 × 6 vectors on AVX-512 (24 of its 32 registers
//! accumulate), 6 × 2 on AVX2 (12 of 16, leaving room for the two rows and a weight: 4 × 3
//! needed all 16 and LLVM spilled accumulators to the stack in the inner loop, half the speed
//! of `gemm`), 4 × 4 otherwise. Grid positions
//! outside the image (the padding columns and rows) are computed and dropped: 6 % more work on a
//! 32x32 image, 27 % on 8x8, far less than the copies it replaces. The input gradient of a
//! stride-1 convolution is the same computation on the output gradient with the kernel flipped
//! and transposed ([`input_grad_as_forward`]); the weight gradient sums, per output channel and
//! (channel, tap) pair, the output gradient's row times the input's shifted row
//! ([`weight_grad`]).

use std::mem::MaybeUninit;

use pulp::{Simd, WithSimd};
use rayon::prelude::*;

use super::conv_shape::{Conv2dShape, Epilogue};

/// Bytes of one chunk's input grid in the weight gradient: well inside the L2 cache of the
/// CPUs we run on (512 KB to 2 MB per core).
const L2_BUDGET: usize = 384 * 1024;

/// Output channels per register tile of the weight gradient, and the fewest per tile of the
/// forward ([`Tile`]).
pub const TILE_CHANNELS: usize = 4;
/// Grid positions per tile on the widest instruction set (6 vectors of 16); every tile width
/// in use divides it, so one grid geometry serves every CPU.
const TILE_POSITIONS: usize = 96;

/// The forward's register tile on a vector of `lanes` f32 values: output channels × vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tile {
    channels: usize,
    vectors: usize,
}

impl Tile {
    const AVX512: Tile = Tile {
        channels: 4,
        vectors: 6,
    };
    const AVX2: Tile = Tile {
        channels: 6,
        vectors: 2,
    };
    const OTHER: Tile = Tile {
        channels: 4,
        vectors: 4,
    };

    fn for_lanes(lanes: usize) -> Tile {
        match lanes {
            16 => Tile::AVX512,
            8 => Tile::AVX2,
            _ => Tile::OTHER,
        }
    }
}

/// Whether [`conv2d`] computes this convolution: stride 1 and padding smaller than the kernel's
/// reach on each axis (so every output row lies inside its image's rows on the grid).
pub fn covers(shape: &Conv2dShape) -> bool {
    let [oh, ow] = shape.out_size();
    shape.stride == [1, 1]
        && (0..2).all(|a| shape.padding[a] < reach(shape, a))
        && oh > 0
        && ow > 0
        && shape.batch > 0
        && shape.in_channels > 0
        && shape.out_channels > 0
}

fn reach(shape: &Conv2dShape, axis: usize) -> usize {
    shape.dilation[axis] * (shape.kernel[axis].max(1) - 1) + 1
}

/// Where `samples` images of one convolution lie on the padded grid.
#[derive(Debug, Clone, Copy)]
struct Grid {
    samples: usize,
    /// Grid row length, `W + pad_w`.
    row: usize,
    /// Grid rows per image, `H + pad_h`.
    image_rows: usize,
    /// Output grid positions computed, a multiple of [`TILE_POSITIONS`].
    positions: usize,
    /// Length of one input channel on the grid: every position a tap can read.
    plane: usize,
}

impl Grid {
    fn new(shape: &Conv2dShape, samples: usize) -> Grid {
        let row = shape.width + shape.padding[1];
        let image_rows = shape.height + shape.padding[0];
        let positions = (samples * image_rows * row).next_multiple_of(TILE_POSITIONS);
        let last_tap = (reach(shape, 0) - 1) * row + reach(shape, 1) - 1;
        Grid {
            samples,
            row,
            image_rows,
            positions,
            plane: positions + last_tap,
        }
    }

    /// Grid position of the output `(n, y, x)`; the input pixel `(n, i, j)` lies at
    /// `output_position(n, i + pad_h, j + pad_w)`.
    fn output_position(&self, n: usize, y: usize, x: usize) -> usize {
        (n * self.image_rows + y) * self.row + x
    }
}

/// The output `[N, O, OH, OW]` of a convolution [`covers`] accepts, plus `bias[o]` on channel
/// `o` when given — the same contract as [`super::conv::conv2d`] — then `epilogue` (when given),
/// in the same pass as the gather of the outputs.
pub fn conv2d_then(
    shape: &Conv2dShape,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    epilogue: Option<Epilogue<'_>>,
) -> Vec<f32> {
    conv2d_on(Isa::Process, shape, x, weight, bias, epilogue)
}

/// The instruction set the tiles run on: the process's ([`crate::cpu::level`]), or (tests) a
/// given level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    Process,
    #[cfg(test)]
    Level(crate::cpu::CpuLevel),
}

impl Isa {
    #[inline(always)]
    fn run<K: WithSimd>(self, kernel: K) -> K::Output {
        match self {
            Isa::Process => crate::cpu::dispatch(kernel),
            #[cfg(test)]
            Isa::Level(level) => level.arch().dispatch(kernel),
        }
    }
}

fn conv2d_on(
    isa: Isa,
    shape: &Conv2dShape,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    epilogue: Option<Epilogue<'_>>,
) -> Vec<f32> {
    assert!(
        covers(shape),
        "{shape:?} is not a stride-1 convolution the grid covers"
    );
    let (n, c, o) = (shape.batch, shape.in_channels, shape.out_channels);
    let [kh, kw] = shape.kernel;
    let [oh, ow] = shape.out_size();
    let (image, out_image) = (c * shape.height * shape.width, o * oh * ow);
    assert_eq!(x.len(), n * image, "x of {shape:?} has the wrong length");
    assert_eq!(
        weight.len(),
        o * c * kh * kw,
        "weight of {shape:?} has the wrong length"
    );
    if let Some(bias) = bias {
        assert_eq!(bias.len(), o, "bias of {shape:?} has the wrong length");
    }
    let packed = PackedWeights::new(shape, weight, Tile::for_lanes(isa.run(crate::cpu::Lanes)));
    // Chunks whose input and output grids stay in L2 together (the tiles sweep both once per
    // block of positions), at least four per thread to balance the load.
    let grids_per_sample = (Grid::new(shape, 1).plane * c
        + packed.channels_padded * Grid::new(shape, 1).positions)
        * std::mem::size_of::<f32>();
    let per_chunk = (L2_BUDGET / grids_per_sample)
        .clamp(1, n.div_ceil(rayon::current_num_threads() * 4).max(1));
    thread_local! {
        /// Each thread's grids, kept from call to call (a few MB at most).
        static GRIDS: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const {
            std::cell::RefCell::new((Vec::new(), Vec::new()))
        };
    }
    super::written_in_parallel(n * out_image, per_chunk * out_image, |chunk, out| {
        let samples = out.len() / out_image;
        GRIDS.with_borrow_mut(|(input, output)| {
            let chunk = Chunk {
                shape,
                grid: Grid::new(shape, samples),
                packed: &packed,
                x: &x[chunk * per_chunk * image..][..samples * image],
                bias,
                // The chunk's part of the residual, indexed from the chunk's first output.
                epilogue: epilogue.map(|e| match e {
                    Epilogue::AddRelu(r) => Epilogue::AddRelu(
                        &r[chunk * per_chunk * out_image..][..samples * out_image],
                    ),
                    other => other,
                }),
                input,
                output,
                out,
            };
            isa.run(chunk)
        })
    })
}

/// The input gradient `[N, C, H, W]` of a convolution [`covers`] accepts, as the forward
/// convolution of `grad_out` with the kernel flipped and its channel axes swapped, padded by
/// `reach − 1 − pad` (that convolution's output is `H x W` again).
pub fn input_grad_as_forward(shape: &Conv2dShape, weight: &[f32], grad_out: &[f32]) -> Vec<f32> {
    let (shape_t, weight_t) = transposed(shape, weight);
    conv2d_then(&shape_t, grad_out, &weight_t, None, None)
}

/// The convolution whose forward is `shape`'s input gradient, and its weight.
fn transposed(shape: &Conv2dShape, weight: &[f32]) -> (Conv2dShape, Vec<f32>) {
    let (c, o) = (shape.in_channels, shape.out_channels);
    let [kh, kw] = shape.kernel;
    let [oh, ow] = shape.out_size();
    let t = Conv2dShape {
        batch: shape.batch,
        in_channels: o,
        height: oh,
        width: ow,
        out_channels: c,
        kernel: shape.kernel,
        stride: [1, 1],
        padding: [
            reach(shape, 0) - 1 - shape.padding[0],
            reach(shape, 1) - 1 - shape.padding[1],
        ],
        dilation: shape.dilation,
    };
    let mut flipped = vec![0.0f32; weight.len()];
    for oc in 0..o {
        for ic in 0..c {
            for ki in 0..kh {
                for kj in 0..kw {
                    flipped[((ic * o + oc) * kh + ki) * kw + kj] =
                        weight[((oc * c + ic) * kh + kh - 1 - ki) * kw + kw - 1 - kj];
                }
            }
        }
    }
    debug_assert_eq!(t.out_size(), [shape.height, shape.width]);
    (t, flipped)
}

/// The weights in the order the tiles read them: per tile of `tile.channels` output channels,
/// per input channel and tap, the tile's weights side by side (zero for the channels past `O`
/// in the last tile), and each (channel, tap)'s offset on the grid.
struct PackedWeights {
    tile: Tile,
    channels_padded: usize,
    /// `[O / tile.channels][C·KH·KW][tile.channels]`.
    values: Vec<f32>,
    /// Tap offsets `ki·dil·row + kj·dil`, in `(ki, kj)` order.
    taps: Vec<usize>,
}

impl PackedWeights {
    fn new(shape: &Conv2dShape, weight: &[f32], tile: Tile) -> PackedWeights {
        let (c, o) = (shape.in_channels, shape.out_channels);
        let [kh, kw] = shape.kernel;
        let taps = kh * kw;
        let channels_padded = o.next_multiple_of(tile.channels);
        let mut values = vec![0.0f32; channels_padded * c * taps];
        for oc in 0..o {
            let (tile_index, lane) = (oc / tile.channels, oc % tile.channels);
            for k in 0..c * taps {
                values[(tile_index * c * taps + k) * tile.channels + lane] =
                    weight[oc * c * taps + k];
            }
        }
        PackedWeights {
            tile,
            channels_padded,
            values,
            taps: PackedWeights::tap_offsets(shape),
        }
    }

    /// Grid offsets `ki·dil·row + kj·dil` of the taps, in `(ki, kj)` order.
    fn tap_offsets(shape: &Conv2dShape) -> Vec<usize> {
        let row = shape.width + shape.padding[1];
        let [kh, kw] = shape.kernel;
        (0..kh)
            .flat_map(|ki| (0..kw).map(move |kj| (ki, kj)))
            .map(|(ki, kj)| ki * shape.dilation[0] * row + kj * shape.dilation[1])
            .collect()
    }
}

/// `x` (one chunk, NCHW) onto the padded grid in `input` (`C` planes of `grid.plane`), in one
/// pass: zeros where the padding is, the image rows between.
#[inline(always)]
fn lay_out(shape: &Conv2dShape, grid: &Grid, x: &[f32], input: &mut Vec<f32>) {
    let (h, w) = (shape.height, shape.width);
    let [ph, pw] = shape.padding;
    let len = shape.in_channels * grid.plane;
    if input.len() < len {
        input.resize(len, 0.0);
    }
    for (c, plane) in input[..len].chunks_exact_mut(grid.plane).enumerate() {
        let mut at = 0;
        for n in 0..grid.samples {
            let image = &x[(n * shape.in_channels + c) * h * w..][..h * w];
            for (i, src) in image.chunks_exact(w).enumerate() {
                let start = grid.output_position(n, i + ph, pw);
                plane[at..start].fill(0.0);
                plane[start..start + w].copy_from_slice(src);
                at = start + w;
            }
        }
        plane[at..].fill(0.0);
    }
}

/// The valid outputs on the grid (`channels_padded` planes of `grid.positions`) into `out`
/// (NCHW), plus the bias, then the epilogue; returns how many values it wrote (all of `out`).
#[inline(always)]
fn gather(
    shape: &Conv2dShape,
    grid: &Grid,
    output: &[f32],
    bias: Option<&[f32]>,
    epilogue: Option<Epilogue<'_>>,
    out: &mut [MaybeUninit<f32>],
) -> usize {
    let o = shape.out_channels;
    let [oh, ow] = shape.out_size();
    let mut written = 0;
    for (image, out) in out.chunks_exact_mut(o * oh * ow).enumerate() {
        for (oc, out) in out.chunks_exact_mut(oh * ow).enumerate() {
            let plane = &output[oc * grid.positions..][..grid.positions];
            let b = bias.map_or(0.0, |b| b[oc]);
            for (y, dst) in out.chunks_exact_mut(ow).enumerate() {
                let at = grid.output_position(image, y, 0);
                let src = &plane[at..at + ow];
                let first = ((image * o + oc) * oh + y) * ow;
                match epilogue {
                    None => {
                        for (d, s) in dst.iter_mut().zip(src) {
                            d.write(s + b);
                        }
                    }
                    Some(Epilogue::Relu) => {
                        for (d, s) in dst.iter_mut().zip(src) {
                            d.write((s + b).max(0.0));
                        }
                    }
                    Some(Epilogue::AddRelu(residual)) => {
                        let residual = &residual[first..first + ow];
                        for ((d, s), r) in dst.iter_mut().zip(src).zip(residual) {
                            d.write((s + b + r).max(0.0));
                        }
                    }
                }
                written += ow;
            }
        }
    }
    written
}

/// One chunk of samples: laid out on the grid, every register tile, gathered into the output,
/// all on the instruction set `pulp` picked.
struct Chunk<'a> {
    shape: &'a Conv2dShape,
    grid: Grid,
    packed: &'a PackedWeights,
    x: &'a [f32],
    bias: Option<&'a [f32]>,
    epilogue: Option<Epilogue<'a>>,
    input: &'a mut Vec<f32>,
    output: &'a mut Vec<f32>,
    out: &'a mut [MaybeUninit<f32>],
}

impl WithSimd for Chunk<'_> {
    /// Values written into `out`.
    type Output = usize;

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> usize {
        let Chunk {
            shape,
            grid,
            packed,
            x,
            bias,
            epilogue,
            input,
            output,
            out,
        } = self;
        lay_out(shape, &grid, x, input);
        let output_len = packed.channels_padded * grid.positions;
        if output.len() < output_len {
            output.resize(output_len, 0.0);
        }
        let tiles = Tiles {
            grid: &grid,
            packed,
            input,
            output: &mut output[..output_len],
        };
        let tile = packed.tile;
        assert_eq!(
            tile,
            Tile::for_lanes(S::F32_LANES),
            "weights packed for another level"
        );
        match (tile.channels, tile.vectors) {
            (4, 6) => tiles.run::<S, 4, 6>(simd),
            (6, 2) => tiles.run::<S, 6, 2>(simd),
            _ => tiles.run::<S, 4, 4>(simd),
        }
        gather(shape, &grid, output, bias, epilogue, out)
    }
}

/// The register tiles of one chunk.
struct Tiles<'a> {
    grid: &'a Grid,
    packed: &'a PackedWeights,
    input: &'a [f32],
    output: &'a mut [f32],
}

impl Tiles<'_> {
    /// Tiles of `T` output channels × `V` vectors, position blocks outermost so that a block of
    /// every input plane stays in L1 while all output channels read it.
    #[inline(always)]
    fn run<S: Simd, const T: usize, const V: usize>(self, simd: S) {
        let lanes = S::F32_LANES;
        let width = V * lanes;
        assert_eq!(TILE_POSITIONS % width, 0, "{width} positions per tile");
        let Tiles {
            grid,
            packed,
            input,
            output,
        } = self;
        assert_eq!(packed.tile.channels, T);
        let channels = packed.values.len() / (packed.channels_padded * packed.taps.len());
        let input = &input[..channels * grid.plane];
        let depth = channels * packed.taps.len();
        let offsets: Vec<usize> = (0..channels)
            .flat_map(|c| packed.taps.iter().map(move |t| c * grid.plane + t))
            .collect();
        // Every read below is `input[offset + q .. offset + q + width]` with `q + width ≤
        // positions`, inside the plane by `Grid::plane`'s construction.
        assert!(
            offsets
                .iter()
                .all(|&off| off + grid.positions <= input.len())
        );
        for q in (0..grid.positions).step_by(width) {
            for (tile, weights) in packed.values.chunks_exact(depth * T).enumerate() {
                let mut acc = [[simd.splat_f32s(0.0); V]; T];
                for (&offset, w) in offsets.iter().zip(weights.chunks_exact(T)) {
                    // SAFETY: `offset + q + width ≤ offset + positions ≤ input.len()` (asserted
                    // above for every offset). Unchecked: the two bounds checks and their index
                    // arithmetic were a third of the loop's instructions, which on AVX2 (12
                    // FMAs per iteration) is what the core's dispatch width can barely take.
                    #[allow(unsafe_code)]
                    let rows: &[S::f32s] = bytemuck::cast_slice(unsafe {
                        input.get_unchecked(offset + q..offset + q + width)
                    });
                    for (i, &w) in w.iter().enumerate() {
                        let w = simd.splat_f32s(w);
                        for (a, &r) in acc[i].iter_mut().zip(rows) {
                            *a = simd.mul_add_e_f32s(w, r, *a);
                        }
                    }
                }
                for (i, acc) in acc.iter().enumerate() {
                    let oc = tile * T + i;
                    let dst = &mut output[oc * grid.positions + q..][..width];
                    let dst: &mut [S::f32s] = bytemuck::cast_slice_mut(dst);
                    dst.copy_from_slice(acc);
                }
            }
        }
    }
}

/// The weight gradient `[O, C, KH, KW]` of a convolution [`covers`] accepts, from the input `x`
/// and the output gradient `grad_out`:
///
/// `∂W[o, c, ki, kj] = Σ_q ∂Y[o][q] · X[c][q + offset(ki, kj)]`
///
/// over the grid positions `q` of a chunk of samples, with `∂Y` laid on the output grid (zero
/// at the positions that are not outputs, so the padding's reads add nothing). Register tiles
/// of 4 output channels × 6 (channel, tap) pairs on AVX-512, 2 otherwise, summed over blocks
/// of grid positions (the tile's output-gradient rows stay in L1); chunks of samples sized so
/// that their input grid stays in L2, one partial gradient per thread, added at the end.
pub fn weight_grad(shape: &Conv2dShape, x: &[f32], grad_out: &[f32]) -> Vec<f32> {
    weight_grad_on(Isa::Process, shape, x, grad_out)
}

fn weight_grad_on(isa: Isa, shape: &Conv2dShape, x: &[f32], grad_out: &[f32]) -> Vec<f32> {
    assert!(
        covers(shape),
        "{shape:?} is not a stride-1 convolution the grid covers"
    );
    let (n, c, o) = (shape.batch, shape.in_channels, shape.out_channels);
    let [oh, ow] = shape.out_size();
    let (image, out_image) = (c * shape.height * shape.width, o * oh * ow);
    assert_eq!(x.len(), n * image, "x of {shape:?} has the wrong length");
    assert_eq!(
        grad_out.len(),
        n * out_image,
        "grad_out of {shape:?} has the wrong length"
    );
    let taps: Vec<usize> = PackedWeights::tap_offsets(shape);
    let weight_len = o * c * taps.len();
    // Chunks whose input grid fits in L2 (it is read once per tile of output channels), and
    // at least one per thread.
    let grid_per_sample = Grid::new(shape, 1).plane * c * std::mem::size_of::<f32>();
    let per_chunk =
        (L2_BUDGET / grid_per_sample).clamp(1, n.div_ceil(rayon::current_num_threads()).max(1));
    (0..n.div_ceil(per_chunk))
        .into_par_iter()
        .fold(
            || vec![0.0f32; weight_len],
            |mut total, chunk| {
                let first = chunk * per_chunk;
                let samples = per_chunk.min(n - first);
                let grid = Grid::new(shape, samples);
                let mut input = Vec::new();
                lay_out(
                    shape,
                    &grid,
                    &x[first * image..][..samples * image],
                    &mut input,
                );
                let outputs = lay_out_outputs(
                    shape,
                    &grid,
                    &grad_out[first * out_image..][..samples * out_image],
                );
                let job = WeightGrad {
                    grid: &grid,
                    taps: &taps,
                    input: &input,
                    grad: &outputs,
                    channels: c,
                    out_channels: o,
                };
                let partial = isa.run(job);
                total.iter_mut().zip(&partial).for_each(|(t, p)| *t += p);
                total
            },
        )
        .reduce_with(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
            a
        })
        .unwrap_or_else(|| vec![0.0; weight_len])
}

/// One chunk's output gradient (NCHW) on the output grid: `O` planes rounded up to
/// [`TILE_CHANNELS`] (the extra ones zero) of `grid.positions`, zero where no output lies.
fn lay_out_outputs(shape: &Conv2dShape, grid: &Grid, grad_out: &[f32]) -> Vec<f32> {
    let o = shape.out_channels;
    let [oh, ow] = shape.out_size();
    let mut planes = vec![0.0f32; o.next_multiple_of(TILE_CHANNELS) * grid.positions];
    for (oc, plane) in planes.chunks_exact_mut(grid.positions).take(o).enumerate() {
        for n in 0..grid.samples {
            let image = &grad_out[(n * o + oc) * oh * ow..][..oh * ow];
            for (y, src) in image.chunks_exact(ow).enumerate() {
                let at = grid.output_position(n, y, 0);
                plane[at..at + ow].copy_from_slice(src);
            }
        }
    }
    planes
}

/// The weight-gradient tiles of one chunk.
struct WeightGrad<'a> {
    grid: &'a Grid,
    taps: &'a [usize],
    input: &'a [f32],
    grad: &'a [f32],
    channels: usize,
    out_channels: usize,
}

impl WithSimd for WeightGrad<'_> {
    /// This chunk's `[O, C·KH·KW]` gradient.
    type Output = Vec<f32>;

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> Vec<f32> {
        match S::F32_LANES {
            16 => self.run::<S, 6>(simd),
            _ => self.run::<S, 2>(simd),
        }
    }
}

impl WeightGrad<'_> {
    #[inline(always)]
    fn run<S: Simd, const P: usize>(self, simd: S) -> Vec<f32> {
        let lanes = S::F32_LANES;
        let WeightGrad {
            grid,
            taps,
            input,
            grad,
            channels,
            out_channels,
        } = self;
        let positions = grid.positions;
        assert_eq!(positions % lanes, 0);
        let pairs = channels * taps.len();
        // (channel, tap) offsets, padded to whole tiles with reads of the first (dropped).
        let mut offsets: Vec<usize> = (0..channels)
            .flat_map(|c| taps.iter().map(move |t| c * grid.plane + t))
            .collect();
        offsets.resize(pairs.next_multiple_of(P), 0);
        assert!(offsets.iter().all(|&off| off + positions <= input.len()));
        assert!(grad.len() >= out_channels.next_multiple_of(TILE_CHANNELS) * positions);
        // Per tile of output channels, blocks of positions (the tile's gradient rows in L1),
        // and in each block every pair tile, its accumulators kept in `partial` between blocks:
        // the chunk's input grid (sized to fit L2) is read once per tile of output channels.
        let block = 64 * lanes;
        let pair_tiles = offsets.len() / P;
        let mut partial = vec![[[simd.splat_f32s(0.0); P]; TILE_CHANNELS]; pair_tiles];
        let mut out = vec![0.0f32; out_channels * pairs];
        for tile in 0..out_channels.div_ceil(TILE_CHANNELS) {
            partial.fill([[simd.splat_f32s(0.0); P]; TILE_CHANNELS]);
            for start in (0..positions).step_by(block) {
                let end = (start + block).min(positions);
                let rows: [&[f32]; TILE_CHANNELS] = std::array::from_fn(|i| {
                    &grad[(tile * TILE_CHANNELS + i) * positions + start..][..end - start]
                });
                for (slot, offsets) in partial.iter_mut().zip(offsets.chunks_exact(P)) {
                    let sources: [&[f32]; P] =
                        std::array::from_fn(|j| &input[offsets[j] + start..][..end - start]);
                    // In registers while the block runs.
                    let mut acc = *slot;
                    for q in (0..end - start).step_by(lanes) {
                        let g: [S::f32s; TILE_CHANNELS] = std::array::from_fn(|i| {
                            bytemuck::cast_slice::<f32, S::f32s>(&rows[i][q..q + lanes])[0]
                        });
                        for (j, source) in sources.iter().enumerate() {
                            let v = bytemuck::cast_slice::<f32, S::f32s>(&source[q..q + lanes])[0];
                            for (acc, &g) in acc.iter_mut().zip(&g) {
                                acc[j] = simd.mul_add_e_f32s(g, v, acc[j]);
                            }
                        }
                    }
                    *slot = acc;
                }
            }
            for (pair_tile, acc) in partial.iter().enumerate() {
                for (i, acc) in acc.iter().enumerate() {
                    let oc = tile * TILE_CHANNELS + i;
                    for (j, &acc) in acc.iter().enumerate() {
                        let pair = pair_tile * P + j;
                        if oc < out_channels && pair < pairs {
                            out[oc * pairs + pair] = simd.reduce_sum_f32s(acc);
                        }
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::assert_close_to_burn;
    use lortflow_data::dataset::Rng;

    fn values(rng: &mut Rng, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| rng.next_f64() as f32 * 2.0 - 1.0)
            .collect()
    }

    /// Against the im2col path (itself checked against Burn's ops) on random stride-1
    /// geometries: batch 1 to 9 (chunks of several images and a short last chunk), 1 to 9
    /// channels (output tiles with padding channels), odd sizes, padding 0 to reach − 1,
    /// dilation 1 or 2.
    #[test]
    fn random_stride_one_shapes_match_the_im2col_path() {
        let mut rng = Rng::seed_from_u64(11);
        let mut data = Rng::seed_from_u64(12);
        let mut checked = 0;
        while checked < 60 {
            let mut pick = |lo: usize, hi: usize| lo + rng.below((hi - lo + 1) as u64) as usize;
            let kernel = [pick(1, 4), pick(1, 4)];
            let dilation = [pick(1, 2), pick(1, 2)];
            let s = Conv2dShape {
                batch: pick(1, 9),
                in_channels: pick(1, 9),
                height: pick(1, 12),
                width: pick(1, 12),
                out_channels: pick(1, 9),
                kernel,
                stride: [1, 1],
                padding: [
                    pick(0, dilation[0] * (kernel[0] - 1)),
                    pick(0, dilation[1] * (kernel[1] - 1)),
                ],
                dilation,
            };
            if !covers(&s) {
                continue;
            }
            let [oh, ow] = s.out_size();
            let x = values(&mut data, s.batch * s.in_channels * s.height * s.width);
            let w = values(
                &mut data,
                s.out_channels * s.in_channels * kernel[0] * kernel[1],
            );
            let b = values(&mut data, s.out_channels);
            let g = values(&mut data, s.batch * s.out_channels * oh * ow);
            let expected = super::super::conv::im2col_conv2d(&s, &x, &w, Some(&b));
            let isas: Vec<Isa> = std::iter::once(Isa::Process)
                .chain(crate::cpu::CpuLevel::available().map(Isa::Level))
                .collect();
            for &isa in &isas {
                assert_close_to_burn(
                    &format!("output {s:?} on {isa:?}"),
                    &conv2d_on(isa, &s, &x, &w, Some(&b), None),
                    &expected,
                );
            }
            let expected = super::super::conv::im2col_conv2d_weight_grad(&s, &x, &g);
            for &isa in &isas {
                assert_close_to_burn(
                    &format!("weight gradient {s:?} on {isa:?}"),
                    &weight_grad_on(isa, &s, &x, &g),
                    &expected,
                );
            }
            assert_close_to_burn(
                &format!("input gradient {s:?}"),
                &input_grad_as_forward(&s, &w, &g),
                &super::super::conv::im2col_conv2d_input_grad(&s, &w, &g),
            );
            checked += 1;
        }
    }
}
