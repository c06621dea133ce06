//! Errors of backbone construction, training, checkpoints and import.

use std::path::PathBuf;

use thiserror::Error;

use lortflow_data::input::DataError;

/// What can go wrong with a backbone.
#[derive(Debug, Error)]
pub enum BackboneError {
    /// Sizes that cannot build a network.
    #[error("invalid backbone configuration: {0}")]
    InvalidConfig(String),
    /// A training parameter that is out of range or unknown.
    #[error("invalid training configuration: {0}")]
    InvalidTraining(String),
    /// The data pipeline failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The loss became NaN or infinite.
    #[error(
        "training diverged at epoch {epoch}, step {step}: the loss is {loss}; the last finite loss was {last_finite}"
    )]
    NonFiniteLoss {
        /// 0-based epoch.
        epoch: usize,
        /// 0-based step within the epoch.
        step: usize,
        /// The non-finite value.
        loss: f32,
        /// The last finite loss (NaN when the first step diverged).
        last_finite: f32,
    },
    /// The cancellation flag was set; checkpoints of completed epochs are kept.
    #[error(
        "training cancelled at epoch {epoch}, step {step}; {completed_epochs} completed epochs are checkpointed"
    )]
    Cancelled {
        /// 0-based epoch.
        epoch: usize,
        /// 0-based step within the epoch.
        step: usize,
        /// Epochs whose checkpoint exists.
        completed_epochs: usize,
    },
    /// A data-parallel replica failed.
    #[error("data-parallel replica {rank} failed: {message}")]
    Replica {
        /// The replica (0 is the training loop's own).
        rank: usize,
        /// What happened.
        message: String,
    },
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
    /// A Burn record could not be saved or loaded.
    #[error("cannot {action} the Burn record `{}`: {message}", path.display())]
    Record {
        /// `save` or `load`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Burn's message.
        message: String,
    },
    /// A checkpoint's metadata is unreadable or does not fit.
    #[error("checkpoint `{}` is not usable: {message}", path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An imported state dict does not match the architecture.
    #[error("`{}` does not fit {arch}:\n{details}", path.display())]
    ImportMismatch {
        /// The file.
        path: PathBuf,
        /// The network it was imported into (`` `resnet32` with 10 classes ``).
        arch: String,
        /// One line per missing key, unexpected key and shape mismatch.
        details: String,
    },
}
