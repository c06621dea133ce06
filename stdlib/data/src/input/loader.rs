//! Batches prepared on a worker thread, ahead of the model.
//!
//! The worker decodes and augments batch `i+1..i+prefetch` while the model trains on batch `i`,
//! and hands them over through a bounded channel, so memory stays at `prefetch + 1` batches and a
//! slow model never makes the worker run away. The worker is a scoped thread: it borrows the
//! dataset instead of needing an `Arc` copy of it, and it is joined (after the channel is closed)
//! before [`for_each_batch`] returns, even when the consumer stops early.

use std::ops::ControlFlow;
use std::sync::mpsc::sync_channel;

use super::augment::{ImagePipeline, Normalization};
use super::error::DataError;
use crate::dataset::{LabeledImages, Rng};

/// Stream of [`Rng::stream`] reserved for augmentation draws.
pub(crate) const AUGMENT_STREAM: u64 = 0x4155_474D_0000_0000;

/// How batches are formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Images per batch; the last batch of an epoch may be smaller.
    pub batch_size: usize,
    /// Batches prepared ahead (at least 1).
    pub prefetch: usize,
    /// Seed of the augmentation draws.
    pub seed: u64,
    /// Random (training) transforms, or the evaluation view.
    pub train: bool,
    /// What a streamed batch of a packed split holds (see [`BatchImages`]). In-memory splits,
    /// small by nature, always give normalised values.
    pub output: BatchOutput,
}

/// The form in which batches hand over their images.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BatchOutput {
    /// `u8` pixels, to be normalised by the consumer: for a GPU, which then receives 4x fewer
    /// bytes and normalises at no cost.
    Bytes,
    /// `ToTensor` + `Normalize`d `f32` values, written by the decode workers: for a CPU model,
    /// so that this work scales with the workers instead of holding up the model.
    #[default]
    Normalized,
}

/// The images of a prepared batch, `N×C×H×W`, channel-major.
#[derive(Clone, Debug, PartialEq)]
pub enum BatchImages {
    /// Normalised values.
    Normalized(Vec<f32>),
    /// Pixels and the normalisation still to apply: `(p / 255 - mean[c]) / std[c]`.
    Bytes {
        /// The pixels.
        pixels: Vec<u8>,
        /// Mean and standard deviation per channel (of pixels scaled to `[0, 1]`).
        normalization: Normalization,
    },
}

impl BatchImages {
    /// The normalised values, computed here (on the host) for `Bytes`.
    pub fn into_normalized(self, plane: usize) -> Vec<f32> {
        match self {
            Self::Normalized(values) => values,
            Self::Bytes {
                pixels,
                normalization,
            } => normalize_planes(&pixels, plane, &normalization),
        }
    }
}

/// `ToTensor` + `Normalize` of channel-major pixels whose channel planes are `plane` long.
pub(crate) fn normalize_planes(pixels: &[u8], plane: usize, norm: &Normalization) -> Vec<f32> {
    let channels = norm.mean.len();
    let mut out = vec![0f32; pixels.len()];
    for (k, (dst, src)) in out.chunks_mut(plane).zip(pixels.chunks(plane)).enumerate() {
        let c = k % channels;
        let (m, inv) = (norm.mean[c], 1.0 / norm.std[c]);
        for (d, &p) in dst.iter_mut().zip(src) {
            *d = (f32::from(p) * (1.0 / 255.0) - m) * inv;
        }
    }
    out
}

/// One prepared batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// The images.
    pub images: BatchImages,
    /// One label per image.
    pub labels: Vec<u32>,
    /// `[N, C, H, W]`.
    pub shape: [usize; 4],
    /// 0-based index of the batch within the epoch.
    pub index: usize,
}

/// Prepares the images `order` of `data` in batches and calls `consume` on each, in order.
///
/// Stops early when `consume` returns `Break` or an error. The augmentation of the image at
/// position `p` of epoch `epoch` draws from its own stream of `(config.seed, epoch, p)`, so batches
/// are identical whatever the thread timing and whether or not earlier epochs ran in this process.
pub fn for_each_batch<E: From<DataError>>(
    data: &LabeledImages,
    order: &[u32],
    pipeline: &ImagePipeline,
    config: &BatchConfig,
    epoch: usize,
    mut consume: impl FnMut(Batch) -> Result<ControlFlow<()>, E>,
) -> Result<(), E> {
    if config.batch_size == 0 {
        return Err(DataError::Invalid("batch size must be at least 1".into()).into());
    }
    if let Some(&id) = order.iter().find(|&&id| id as usize >= data.len()) {
        return Err(DataError::SampleOutOfRange {
            id,
            len: data.len(),
        }
        .into());
    }
    let (tx, rx) = sync_channel::<Batch>(config.prefetch.max(1));
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("lortflow-batches".into())
            .spawn_scoped(scope, move || {
                for (index, chunk) in order.chunks(config.batch_size).enumerate() {
                    let batch = prepare(data, chunk, pipeline, config, epoch, index);
                    // A closed channel means the consumer stopped; so do we.
                    if tx.send(batch).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| DataError::WorkerPanicked(format!("cannot start: {e}")))?;
        let mut result = Ok(());
        for batch in rx.iter() {
            match consume(batch) {
                Ok(ControlFlow::Continue(())) => {}
                Ok(ControlFlow::Break(())) => break,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        // Dropping the receiver unblocks a worker waiting on a full channel.
        drop(rx);
        if let Err(payload) = worker.join() {
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

fn prepare(
    data: &LabeledImages,
    ids: &[u32],
    pipeline: &ImagePipeline,
    config: &BatchConfig,
    epoch: usize,
    index: usize,
) -> Batch {
    let [c, h, w] = pipeline.output_shape();
    let len = pipeline.output_len();
    let mut images = vec![0f32; ids.len() * len];
    let mut labels = Vec::with_capacity(ids.len());
    for (i, (&id, out)) in ids.iter().zip(images.chunks_exact_mut(len)).enumerate() {
        // Ids were range-checked by `for_each_batch`.
        let src = data
            .images()
            .image(id as usize)
            .expect("sample ids should be in range");
        if config.train {
            let position = (index * config.batch_size + i) as u64;
            let mut rng = Rng::stream(
                config.seed ^ AUGMENT_STREAM,
                ((epoch as u64) << 32) | position,
            );
            pipeline.apply_train(src, &mut rng, out);
        } else {
            pipeline.apply_eval(src, out);
        }
        labels.push(data.labels()[id as usize]);
    }
    Batch {
        images: BatchImages::Normalized(images),
        labels,
        shape: [ids.len(), c, h, w],
        index,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::PatternImagesConfig;
    use crate::input::{Normalization, SamplerKind, Transform};

    fn run(prefetch: usize, stop_after: Option<usize>) -> Vec<Batch> {
        let data = PatternImagesConfig {
            per_class: 7,
            ..Default::default()
        }
        .generate()
        .unwrap();
        let ids: Vec<u32> = (0..data.len() as u32).step_by(2).collect();
        let pipeline = ImagePipeline::new(
            vec![
                Transform::RandomCrop { padding: 3 },
                Transform::Hflip { p: 0.5 },
            ],
            Normalization::from_data(&data, &ids).unwrap(),
            data.images().shape(),
        )
        .unwrap();
        let order =
            SamplerKind::Instance.epoch_order(data.labels(), data.num_classes(), &ids, 5, 1);
        let config = BatchConfig {
            batch_size: 4,
            prefetch,
            seed: 5,
            train: true,
            output: BatchOutput::Normalized,
        };
        let mut out = Vec::new();
        for_each_batch::<DataError>(&data, &order, &pipeline, &config, 1, |b| {
            out.push(b);
            Ok(match stop_after {
                Some(n) if out.len() == n => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            })
        })
        .unwrap();
        out
    }

    #[test]
    fn batches_are_deterministic_whatever_the_prefetch() {
        let a = run(1, None);
        let b = run(8, None);
        assert_eq!(a, b);
        assert_eq!(a.iter().map(|b| b.labels.len()).sum::<usize>(), 35);
        assert_eq!(a.last().unwrap().shape[0], 3);
    }

    #[test]
    fn stopping_early_joins_the_worker() {
        assert_eq!(run(1, Some(2)).len(), 2);
    }
}
