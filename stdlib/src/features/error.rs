//! Errors of feature extraction and feature files.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// What can go wrong with features.
#[derive(Debug, Error)]
pub enum FeaturesError {
    /// Reading or writing a file.
    #[error("cannot {action} `{}`: {source}", path.display())]
    Io {
        /// What we were doing.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file that is not what it should be.
    #[error("`{}` is not a valid feature file: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Sizes that do not fit.
    #[error("{0}")]
    Shape(String),
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
    /// The data pipeline failed.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
}

impl FeaturesError {
    /// A closure mapping an I/O error on `path` to [`FeaturesError::Io`].
    pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| FeaturesError::Io {
            action,
            path,
            source,
        }
    }
}
