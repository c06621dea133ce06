//! Errors of feature extraction.

use lortflow_data::features::FeaturesError;
use lortflow_data::input::DataError;
use thiserror::Error;

/// What can go wrong while extracting features.
#[derive(Debug, Error)]
pub enum ExtractError {
    /// The model would run with autodiff (BatchNorm in training mode).
    #[error(
        "feature extraction needs an inference model; pass `model.valid()`, not the autodiff model"
    )]
    AutodiffModel,
    /// The cancellation flag was set.
    #[error("feature extraction cancelled after {rows} of {total} rows")]
    Cancelled {
        /// Rows done.
        rows: usize,
        /// Rows in all.
        total: usize,
    },
    /// No model was given.
    #[error("feature extraction needs at least one device")]
    NoDevice,
    /// The replica on another device failed.
    #[error("feature extraction on device replica {rank} failed: {message}")]
    Replica {
        /// The replica (0 is the calling thread's).
        rank: usize,
        /// Its panic's message.
        message: String,
    },
    /// The backend handed back features that are not `f32` rows.
    #[error("cannot read features back from the device: {0}")]
    Readback(String),
    /// Writing the features file.
    #[error(transparent)]
    File(#[from] FeaturesError),
    /// The data pipeline failed.
    #[error(transparent)]
    Data(#[from] DataError),
}
