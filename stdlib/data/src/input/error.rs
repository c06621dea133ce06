//! Errors of the training data pipeline.

use thiserror::Error;

use crate::dataset::DatasetError;

/// What can go wrong while preparing training batches.
#[derive(Debug, Error)]
pub enum DataError {
    /// No sample to train on.
    #[error("the training subset is empty")]
    EmptySubset,
    /// A sample id beyond the dataset.
    #[error("sample id {id} is out of range for a split of {len} images")]
    SampleOutOfRange {
        /// The id.
        id: u32,
        /// The split's size.
        len: usize,
    },
    /// Normalisation statistics for a different number of channels.
    #[error("normalisation `{name}` has {stats} channels but the images have {images}")]
    ChannelMismatch {
        /// The preset.
        name: String,
        /// Its channels.
        stats: usize,
        /// The images' channels.
        images: usize,
    },
    /// An unknown preset, sampler or a bad parameter.
    #[error("{0}")]
    Invalid(String),
    /// The batch worker died.
    #[error("the batch preparation thread panicked: {0}")]
    WorkerPanicked(String),
    /// An image of a pack that no longer decodes (the pack was checked when written).
    #[error("image {index} of `{pack}` (row {row} of its source) cannot be decoded: {problem}")]
    PackedImage {
        /// The pack file.
        pack: std::path::PathBuf,
        /// Its index in the pack.
        index: usize,
        /// Where the source named it.
        row: u32,
        /// The decoder's words.
        problem: String,
    },
    /// The decode thread pool could not start.
    #[error("cannot start {workers} decode threads: {message}")]
    Pool {
        /// Threads asked for.
        workers: usize,
        /// The cause.
        message: String,
    },
    /// The dataset layer failed.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
}
