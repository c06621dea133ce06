//! Classifier re-training on cached features: every method of the paper's unified form (Eq. 1),
//! composed from the components of a [`HeadConfig`], on any autodiff backend.
//!
//! [`train_heads`] takes a borrowed [`FeatureView`], an optional initial [`Classifier`] and one or
//! many [`HeadJob`]s, and returns a [`TrainedHead`] per job and trial. Jobs that can share a batch
//! stream (a δ, lr, weight-decay or seed sweep) train together as one batched computation; see
//! [`plan`] for the grouping rule and [`loss`] for the exact formulas and reductions.
//!
//! ```
//! use std::sync::atomic::AtomicBool;
//! use burn::backend::{Autodiff, Flex};
//! use lortflow_stdlib::head::{FeatureView, HeadConfig, HeadJob, train_heads};
//!
//! let train = [1.0, 0.0, 0.0, 1.0, 0.9, 0.1, 0.1, 0.9];
//! let labels = [0, 1, 0, 1];
//! let view = FeatureView {
//!     dim: 2, train: &train, train_labels: &labels, test: &train, test_labels: &labels,
//!     num_classes: 2, class_counts: &[2, 2], release: None,
//! };
//! let job = HeadJob { name: "ce".into(), config: HeadConfig::default(), seed: 0 };
//! let results = train_heads::<Autodiff<Flex>>(
//!     &Default::default(), &view, None, &[job], &AtomicBool::new(false), &mut |_| {},
//! )?;
//! assert_eq!(results[0].trials[0].test_logits.len(), 4 * 2);
//! # Ok::<(), lortflow_stdlib::head::HeadError>(())
//! ```

mod analytic;
mod autodiff;
mod base;
pub mod components;
mod config;
mod device_data;
mod error;
mod heads;
mod host;
pub mod inference;
pub mod loss;
pub mod plan;
pub mod plugin;
mod predict;
pub mod sampler;
mod select;
mod step;
mod train;

#[cfg(test)]
pub(crate) mod tests;

pub use base::{
    Classifier, EpochStats, FeatureSplit, FeatureView, HeadJob, HeadProgress, HeadResult,
    TrainedClassifier, TrainedHead,
};
pub use config::{
    BaseLoss, BuildLoss, Constraint, HeadConfig, HeadSchedule, HeadTrain, Holdout, Inference, Init,
    Logits, Margin, PluginLoss, Sampler, Select, Targets, Weighting,
};
pub use error::HeadError;
pub use plugin::{SampleLoss, check_gradient};
pub use train::train_heads;
