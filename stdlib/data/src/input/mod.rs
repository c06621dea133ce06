//! The training data pipeline: which samples an epoch visits and in what order ([`sampler`]), how
//! each image becomes a normalised `f32` tensor ([`augment`]), and the batches prepared on a
//! worker thread ahead of the model ([`loader`]).
//!
//! Everything is deterministic given a seed, independently of thread timing: the order of an epoch
//! depends only on `(seed, epoch)`, and the random draws of an augmentation only on
//! `(seed, epoch, position in the epoch)`. So a run resumed at epoch `e` sees exactly the batches an
//! uninterrupted run would have seen.
//!
//! ```
//! use lortflow_data::input::{
//!     BatchConfig, BatchOutput, ImagePipeline, Normalization, SamplerKind, Transform, for_each_batch,
//! };
//! use lortflow_data::dataset::PatternImagesConfig;
//!
//! let data = PatternImagesConfig { per_class: 8, ..Default::default() }.generate()?;
//! let ids: Vec<u32> = (0..data.len() as u32).collect();
//! let pipeline = ImagePipeline::new(
//!     vec![Transform::RandomCrop { padding: 2 }, Transform::Hflip { p: 0.5 }],
//!     Normalization::from_data(&data, &ids)?,
//!     data.images().shape(),
//! )?;
//! let order = SamplerKind::Instance.epoch_order(data.labels(), data.num_classes(), &ids, 7, 0);
//! let config = BatchConfig {
//!     batch_size: 32,
//!     prefetch: 2,
//!     seed: 7,
//!     train: true,
//!     output: BatchOutput::Normalized,
//! };
//! let mut seen = 0;
//! for_each_batch(&data, &order, &pipeline, &config, 0, |batch| {
//!     seen += batch.labels.len();
//!     Ok::<_, lortflow_data::input::DataError>(std::ops::ControlFlow::Continue(()))
//! })?;
//! assert_eq!(seen, data.len());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod augment;
mod error;
pub mod loader;
pub mod sampler;
pub mod shard;
pub mod source;
pub mod stream;
pub mod vision;

pub use augment::{ImagePipeline, Normalization, Transform};
pub use error::DataError;
pub use loader::{Batch, BatchConfig, BatchImages, BatchOutput, for_each_batch};
pub use sampler::SamplerKind;
pub use shard::{pad_for_replicas, replica_order};
pub use source::ImageInput;
pub use stream::{PixelBatch, StreamConfig, stream_batches};
pub use vision::{Geometry, VisionPipeline};
