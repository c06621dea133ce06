//! The images a stage trains or extracts from, whichever way they are stored: decoded in memory
//! (MNIST, CIFAR, synthetic; small) or packed and streamed through decode workers (image files of
//! any number). Both give the same [`Batch`]es, so the trainers do not know the difference.

use std::ops::ControlFlow;

use super::augment::ImagePipeline;
use super::error::DataError;
use super::loader::{Batch, BatchConfig, BatchImages, BatchOutput, for_each_batch};
use super::stream::{StreamConfig, stream_batches};
use super::vision::VisionPipeline;
use crate::dataset::LabeledImages;
use crate::images::PackedImages;

/// One view of a split's images.
#[derive(Clone, Copy, Debug)]
pub enum ImageInput<'a> {
    /// Decoded images in memory, with a pipeline whose training or evaluation view is picked by
    /// [`BatchConfig::train`].
    Memory {
        /// The split.
        images: &'a LabeledImages,
        /// Its transforms.
        pipeline: &'a ImagePipeline,
    },
    /// A packed split, streamed through `pipeline` (a training or an evaluation view).
    Packed {
        /// The split.
        pack: &'a PackedImages,
        /// The view.
        pipeline: &'a VisionPipeline,
        /// Decode threads.
        workers: usize,
    },
}

impl ImageInput<'_> {
    /// One label per image of the split.
    pub fn labels(&self) -> &[u32] {
        match self {
            Self::Memory { images, .. } => images.labels(),
            Self::Packed { pack, .. } => pack.labels(),
        }
    }

    /// Number of classes of the dataset.
    pub fn num_classes(&self) -> usize {
        match self {
            Self::Memory { images, .. } => images.num_classes(),
            Self::Packed { pack, .. } => pack.num_classes(),
        }
    }

    /// Number of images of the split.
    pub fn len(&self) -> usize {
        self.labels().len()
    }

    /// Whether the split is empty.
    pub fn is_empty(&self) -> bool {
        self.labels().is_empty()
    }

    /// `[C, H, W]` of the produced images.
    pub fn output_shape(&self) -> [usize; 3] {
        match self {
            Self::Memory { pipeline, .. } => pipeline.output_shape(),
            Self::Packed { pipeline, .. } => pipeline.output_shape(),
        }
    }

    /// Prepares the images `order` in batches and calls `consume` on each, in order (see
    /// [`for_each_batch`] and [`stream_batches`]: draws depend only on the seed, the epoch and the
    /// position, never on threads). Packed splits give their images in the form
    /// `config.output` asks for; in-memory splits always give normalised values.
    pub fn for_each_batch<E: From<DataError>>(
        &self,
        order: &[u32],
        config: &BatchConfig,
        epoch: usize,
        mut consume: impl FnMut(Batch) -> Result<ControlFlow<()>, E>,
    ) -> Result<(), E> {
        match *self {
            Self::Memory { images, pipeline } => {
                for_each_batch(images, order, pipeline, config, epoch, consume)
            }
            Self::Packed {
                pack,
                pipeline,
                workers,
            } => {
                let stream = StreamConfig {
                    batch_size: config.batch_size,
                    workers,
                    // Two batches ahead keep the workers busy; more would only hold memory
                    // (a batch of 128 at 224 is 77 MB of f32).
                    prefetch: config.prefetch.min(2),
                    seed: config.seed,
                    output: config.output,
                };
                stream_batches(pack, order, pipeline, &stream, epoch, |batch| {
                    // Handed over without a copy; the stream allocates a new buffer.
                    let images = match config.output {
                        BatchOutput::Normalized => {
                            BatchImages::Normalized(std::mem::take(&mut batch.values))
                        }
                        BatchOutput::Bytes => BatchImages::Bytes {
                            pixels: std::mem::take(&mut batch.pixels),
                            normalization: pipeline.normalization().clone(),
                        },
                    };
                    consume(Batch {
                        images,
                        labels: batch.labels.clone(),
                        shape: batch.shape,
                        index: batch.index,
                    })
                })
            }
        }
    }
}
