//! Errors of head re-training.
//!
//! Every variant names what a user can act on: the job, the dimensions that disagree, the epoch and
//! step where training diverged. A diverged or cancelled run returns no partial heads, so a caller
//! can never cache a half-trained result by mistake.

/// An error while re-training classifier heads.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum HeadError {
    /// A head starts from a given classifier (`init "backbone"` or `init "head"`) but none was
    /// passed.
    #[error("head `{job}` starts from {init}, but no initial classifier was given")]
    NoInitialClassifier {
        /// The job.
        job: String,
        /// `the backbone's classifier` or `head `x``.
        init: String,
    },

    /// Two inputs disagree on a dimension.
    #[error("shape mismatch: {what} has {actual} values, expected {expected}")]
    ShapeMismatch {
        /// What was checked, e.g. "train features (N×D = 10×64)".
        what: String,
        /// The number of values found.
        actual: usize,
        /// The number expected.
        expected: usize,
    },

    /// A label is not below the number of classes.
    #[error("{split} label {label} at sample {index} is out of range for {num_classes} classes")]
    LabelOutOfRange {
        /// `train` or `test`.
        split: &'static str,
        /// Position of the sample.
        index: usize,
        /// The label.
        label: u32,
        /// K.
        num_classes: usize,
    },

    /// A setting of a job cannot be used (a value out of range, a component the head cannot
    /// honour, a class-count-based component with an empty class).
    #[error("head `{job}`: {message}")]
    InvalidSpec {
        /// The job.
        job: String,
        /// What is wrong, as a full sentence fragment.
        message: String,
    },

    /// The loss became NaN or infinite.
    #[error(
        "head `{job}` diverged: loss is {loss} at epoch {epoch}, step {step} (last finite loss: {})",
        last_finite.map_or_else(|| "none".to_string(), |l| format!("{l:.6}"))
    )]
    NonFiniteLoss {
        /// The job whose loss diverged (the first one in its group).
        job: String,
        /// 0-based epoch.
        epoch: u32,
        /// 0-based step within the epoch.
        step: usize,
        /// The non-finite value.
        loss: f64,
        /// The last finite loss of that head, if any step had one.
        last_finite: Option<f64>,
    },

    /// The cancellation flag was raised.
    #[error("head training cancelled")]
    Cancelled,
}
