//! Errors of feature files.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// What can go wrong reading or writing a feature file.
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
