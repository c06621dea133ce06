//! Batches of a packed split, decoded and transformed on a pool of worker threads, delivered in
//! order, in a fixed set of reusable buffers.
//!
//! A producer thread takes the next free buffer, has the pool decode and transform the batch's
//! images into it in parallel (each worker writes its own images' slots), and queues it; the
//! consumer gets each batch by reference and its buffer goes back to the free list. So at most
//! `prefetch + 1` batches of `u8` pixels exist at any time, whatever the size of the split, and
//! the model never waits for data the workers could have prepared.
//!
//! The draws of the image at position `p` of epoch `e` come from the stream `(seed, e, p)`, as in
//! [`super::loader`], so batches are bit-identical for any number of workers and across resumes.
//! For a GPU, pixels travel as `u8` (4x less than `f32`) and are normalised on the device
//! ([`BatchOutput::Bytes`]); for a CPU model the workers normalise each image as they write it
//! ([`BatchOutput::Normalized`]), so that this work scales with them too.

use std::ops::ControlFlow;
use std::sync::mpsc::{channel, sync_channel};

use rayon::prelude::*;

use super::augment::Normalization;
use super::error::DataError;
use super::loader::{AUGMENT_STREAM, BatchOutput, normalize_planes};
use super::vision::VisionPipeline;
use crate::dataset::Rng;
use crate::images::{PackedImages, RgbImage, decode_rgb};

/// How a packed split is streamed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamConfig {
    /// Images per batch; the last batch of an epoch may be smaller.
    pub batch_size: usize,
    /// Decode threads.
    pub workers: usize,
    /// Batches prepared ahead of the consumer (at least 1).
    pub prefetch: usize,
    /// Seed of the augmentation draws.
    pub seed: u64,
    /// What the batches hold.
    pub output: BatchOutput,
}

/// One batch of transformed images, `N×3×S×S`, image after image, each channel-major.
#[derive(Clone, Debug, PartialEq)]
pub struct PixelBatch {
    /// The pixels, with [`BatchOutput::Bytes`] (empty otherwise).
    pub pixels: Vec<u8>,
    /// The normalised values, with [`BatchOutput::Normalized`] (empty otherwise). A consumer may
    /// take the vector (`std::mem::take`) to hand it to a tensor without a copy; the buffer is
    /// then allocated again for a later batch.
    pub values: Vec<f32>,
    /// One label per image.
    pub labels: Vec<u32>,
    /// `[N, 3, S, S]`.
    pub shape: [usize; 4],
    /// 0-based index of the batch within the epoch.
    pub index: usize,
}

impl PixelBatch {
    /// `ToTensor` + `Normalize` of every image, `N×3×S×S` floats.
    pub fn normalized(&self, pipeline: &VisionPipeline) -> Vec<f32> {
        normalize_planes(
            &self.pixels,
            self.shape[2] * self.shape[3],
            pipeline.normalization(),
        )
    }
}

/// Streams the images `order` of `pack` through `pipeline` in batches, calling `consume` on each
/// in order; stops early when it returns `Break` or an error. Every image gets the training
/// view's draws from `(seed, epoch, position)`; an evaluation pipeline makes none. `train` selects the random view
pub fn stream_batches<E: From<DataError>>(
    pack: &PackedImages,
    order: &[u32],
    pipeline: &VisionPipeline,
    config: &StreamConfig,
    epoch: usize,
    mut consume: impl FnMut(&mut PixelBatch) -> Result<ControlFlow<()>, E>,
) -> Result<(), E> {
    if config.batch_size == 0 {
        return Err(DataError::Invalid("batch size must be at least 1".into()).into());
    }
    if let Some(&id) = order.iter().find(|&&id| id as usize >= pack.len()) {
        return Err(DataError::SampleOutOfRange {
            id,
            len: pack.len(),
        }
        .into());
    }
    let workers = config.workers.max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .thread_name(|i| format!("lortflow-decode-{i}"))
        .build()
        .map_err(|e| DataError::Pool {
            workers,
            message: e.to_string(),
        })?;
    let image_len = pipeline.output_len();
    let side = pipeline.side() as usize;
    let buffers = config.prefetch.max(1) + 1;
    let (filled_tx, filled_rx) = sync_channel::<Result<PixelBatch, DataError>>(buffers);
    let (free_tx, free_rx) = channel::<PixelBatch>();
    for _ in 0..buffers {
        let (bytes, floats) = match config.output {
            BatchOutput::Bytes => (config.batch_size * image_len, 0),
            BatchOutput::Normalized => (0, config.batch_size * image_len),
        };
        free_tx
            .send(PixelBatch {
                pixels: Vec::with_capacity(bytes),
                values: Vec::with_capacity(floats),
                labels: Vec::with_capacity(config.batch_size),
                shape: [0, 3, side, side],
                index: 0,
            })
            .expect("the receiver is alive");
    }
    std::thread::scope(|scope| {
        let producer = std::thread::Builder::new()
            .name("lortflow-batches".into())
            .spawn_scoped(scope, move || {
                for (index, ids) in order.chunks(config.batch_size).enumerate() {
                    // No free buffer means the consumer stopped.
                    let Ok(mut batch) = free_rx.recv() else { break };
                    let filled = pool
                        .install(|| fill(pack, ids, pipeline, config, epoch, index, &mut batch));
                    let stop = filled.is_err();
                    if filled_tx.send(filled.map(|()| batch)).is_err() || stop {
                        break;
                    }
                }
            })
            .map_err(|e| DataError::WorkerPanicked(format!("cannot start: {e}")))?;
        let mut result = Ok(());
        for item in filled_rx.iter() {
            let mut batch = match item {
                Ok(batch) => batch,
                Err(e) => {
                    result = Err(e.into());
                    break;
                }
            };
            match consume(&mut batch) {
                Ok(ControlFlow::Continue(())) => {}
                Ok(ControlFlow::Break(())) => break,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            // The producer may have finished and dropped its receiver: nothing to return to.
            let _ = free_tx.send(batch);
        }
        // Unblocks a producer waiting for a free buffer or for room in the queue.
        drop(free_tx);
        drop(filled_rx);
        if let Err(payload) = producer.join() {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            return Err(DataError::WorkerPanicked(msg).into());
        }
        result
    })
}

/// Per-channel mean and standard deviation (pixels scaled to `[0, 1]`) of the images `ids` of
/// `pack` through `view` (an evaluation view: no draws), summed exactly in integers.
pub fn pixel_statistics(
    pack: &PackedImages,
    ids: &[u32],
    view: &VisionPipeline,
    workers: usize,
) -> Result<Normalization, DataError> {
    if ids.is_empty() {
        return Err(DataError::EmptySubset);
    }
    let config = StreamConfig {
        batch_size: 64,
        workers,
        prefetch: 1,
        seed: 0,
        output: BatchOutput::Bytes,
    };
    let (mut sum, mut sum_sq, mut count) = ([0u64; 3], [0u64; 3], 0u64);
    stream_batches::<DataError>(pack, ids, view, &config, 0, |batch| {
        let plane = batch.shape[2] * batch.shape[3];
        for (k, channel) in batch.pixels.chunks_exact(plane).enumerate() {
            sum[k % 3] += channel.iter().map(|&p| u64::from(p)).sum::<u64>();
            sum_sq[k % 3] += channel
                .iter()
                .map(|&p| u64::from(p) * u64::from(p))
                .sum::<u64>();
        }
        count += (batch.shape[0] * plane) as u64;
        Ok(ControlFlow::Continue(()))
    })?;
    let n = count as f64;
    let mean: Vec<f32> = sum.iter().map(|&s| (s as f64 / n / 255.0) as f32).collect();
    let std = sum
        .iter()
        .zip(&sum_sq)
        .map(|(&s, &s2)| {
            let m = s as f64 / n;
            let sd = (s2 as f64 / n - m * m).max(0.0).sqrt() / 255.0;
            // A constant channel would divide by zero; leave it unscaled instead.
            if sd > 1e-8 { sd as f32 } else { 1.0 }
        })
        .collect();
    Ok(Normalization { mean, std })
}

fn fill(
    pack: &PackedImages,
    ids: &[u32],
    pipeline: &VisionPipeline,
    config: &StreamConfig,
    epoch: usize,
    index: usize,
    batch: &mut PixelBatch,
) -> Result<(), DataError> {
    let image_len = pipeline.output_len();
    let side = pipeline.side() as usize;
    batch.labels.clear();
    batch
        .labels
        .extend(ids.iter().map(|&id| pack.labels()[id as usize]));
    batch.shape = [ids.len(), 3, side, side];
    batch.index = index;
    // Each image: decode, transform into the worker's interleaved scratch, then write its slot.
    let prepare = |rgb: &mut Vec<u8>, i: usize, id: u32| -> Result<(), DataError> {
        let image = decode(pack, id as usize)?;
        let position = (index * config.batch_size + i) as u64;
        let mut rng = Rng::stream(
            config.seed ^ AUGMENT_STREAM,
            ((epoch as u64) << 32) | position,
        );
        pipeline.apply_u8(&image, &mut rng, rgb);
        Ok(())
    };
    let scratch = || vec![0u8; image_len];
    match config.output {
        BatchOutput::Bytes => {
            batch.values.clear();
            sized(&mut batch.pixels, ids.len() * image_len);
            batch
                .pixels
                .par_chunks_mut(image_len)
                .zip(ids.par_iter())
                .enumerate()
                .try_for_each_init(scratch, |rgb, (i, (out, &id))| {
                    prepare(rgb, i, id)?;
                    planar(rgb, out);
                    Ok(())
                })
        }
        BatchOutput::Normalized => {
            batch.pixels.clear();
            sized(&mut batch.values, ids.len() * image_len);
            batch
                .values
                .par_chunks_mut(image_len)
                .zip(ids.par_iter())
                .enumerate()
                .try_for_each_init(scratch, |rgb, (i, (out, &id))| {
                    prepare(rgb, i, id)?;
                    pipeline.normalize_into(rgb, out);
                    Ok(())
                })
        }
    }
}

/// Makes `buffer` `len` long. A buffer the consumer took away (capacity 0) is allocated zeroed
/// (`calloc`: fresh pages from the kernel, faulted in by the workers as they write, in parallel),
/// not grown and zero-filled here on the producer thread while the workers wait.
fn sized<T: Copy + Default>(buffer: &mut Vec<T>, len: usize) {
    if buffer.capacity() < len {
        *buffer = vec![T::default(); len];
    } else {
        buffer.resize(len, T::default());
    }
}

/// Interleaved RGB to channel-major.
fn planar(rgb: &[u8], out: &mut [u8]) {
    let plane = rgb.len() / 3;
    for (k, p) in rgb.chunks_exact(3).enumerate() {
        out[k] = p[0];
        out[plane + k] = p[1];
        out[2 * plane + k] = p[2];
    }
}

fn decode(pack: &PackedImages, index: usize) -> Result<RgbImage, DataError> {
    let bytes = pack.bytes(index).expect("ids were range-checked");
    decode_rgb(bytes).map_err(|e| DataError::PackedImage {
        pack: pack.path().to_owned(),
        index,
        row: pack.record(index).map_or(0, |r| r.row),
        problem: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::images::{PackEntry, PackInput, PackOptions, pack_split};
    use crate::input::{Geometry, Normalization, Transform};

    fn packed(dir: &std::path::Path, n: u32) -> PackedImages {
        let mut entries = Vec::new();
        for i in 0..n {
            let im = image::RgbImage::from_fn(40 + i % 7 * 9, 30 + i % 5 * 11, |x, y| {
                image::Rgb([(x * 5 + i) as u8, (y * 3) as u8, (i * 17) as u8])
            });
            let mut bytes = Cursor::new(Vec::new());
            im.write_to(&mut bytes, image::ImageFormat::Jpeg).unwrap();
            std::fs::write(dir.join(format!("{i}.jpg")), bytes.into_inner()).unwrap();
            entries.push(PackEntry {
                path: format!("{i}.jpg"),
                label: i % 4,
                row: i + 1,
            });
        }
        let out = dir.join("train.pack");
        let input = PackInput {
            root: dir,
            entries: &entries,
            num_classes: 4,
            describe: &|row| format!("line {row}"),
        };
        pack_split(
            &input,
            &out,
            &PackOptions::default(),
            &AtomicBool::new(false),
            &mut |_, _| {},
        )
        .unwrap();
        PackedImages::open(&out).unwrap()
    }

    fn train_pipeline() -> VisionPipeline {
        VisionPipeline::train(
            &[
                Transform::RandomResizedCrop {
                    size: 24,
                    min_scale: 0.08,
                },
                Transform::Hflip { p: 0.5 },
                Transform::ColorJitter {
                    brightness: 0.4,
                    contrast: 0.4,
                    saturation: 0.4,
                    hue: 0.1,
                },
            ],
            Geometry::ResizeCenterCrop {
                resize: 28,
                crop: 24,
            },
            Normalization::imagenet(),
        )
        .unwrap()
    }

    fn collect(
        pack: &PackedImages,
        workers: usize,
        prefetch: usize,
        stop: Option<usize>,
        output: BatchOutput,
    ) -> Vec<PixelBatch> {
        let order: Vec<u32> = (0..pack.len() as u32).rev().collect();
        let config = StreamConfig {
            batch_size: 5,
            workers,
            prefetch,
            seed: 11,
            output,
        };
        let mut out = Vec::new();
        stream_batches::<DataError>(pack, &order, &train_pipeline(), &config, 3, |b| {
            out.push(b.clone());
            Ok(match stop {
                Some(n) if out.len() == n => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            })
        })
        .unwrap();
        out
    }

    #[test]
    fn batches_are_bit_identical_for_any_number_of_workers() {
        let dir = tempfile::tempdir().unwrap();
        let pack = packed(dir.path(), 23);
        let one = collect(&pack, 1, 1, None, BatchOutput::Bytes);
        assert_eq!(one.len(), 5);
        assert_eq!(one[4].shape, [3, 3, 24, 24]);
        assert_eq!(one[0].labels, [22 % 4, 21 % 4, 20 % 4, 19 % 4, 18 % 4]);
        for (workers, prefetch) in [(2, 1), (3, 4), (8, 2)] {
            assert_eq!(
                collect(&pack, workers, prefetch, None, BatchOutput::Bytes),
                one,
                "{workers} workers"
            );
        }
        // Normalised in the workers: the same as normalising the bytes afterwards.
        let pipeline = train_pipeline();
        let floats = collect(&pack, 2, 1, None, BatchOutput::Normalized);
        for (f, b) in floats.iter().zip(&one) {
            assert!(f.pixels.is_empty());
            assert_eq!(f.values, b.normalized(&pipeline));
        }
    }

    #[test]
    fn stopping_early_releases_the_producer() {
        let dir = tempfile::tempdir().unwrap();
        let pack = packed(dir.path(), 23);
        assert_eq!(collect(&pack, 2, 1, Some(2), BatchOutput::Bytes).len(), 2);
        assert_eq!(
            collect(&pack, 2, 3, Some(1), BatchOutput::Normalized).len(),
            1
        );
    }

    #[test]
    fn normalisation_matches_to_tensor_and_normalize() {
        let batch = PixelBatch {
            pixels: vec![0, 255, 128, 128, 64, 64],
            values: Vec::new(),
            labels: vec![0],
            shape: [1, 3, 1, 2],
            index: 0,
        };
        let x = batch.normalized(&train_pipeline());
        let expect =
            |v: f32, c: usize| (v / 255.0 - [0.485, 0.456, 0.406][c]) / [0.229, 0.224, 0.225][c];
        assert!((x[1] - expect(255.0, 0)).abs() < 1e-6);
        assert!((x[4] - expect(64.0, 2)).abs() < 1e-6, "{x:?}");
    }
}
