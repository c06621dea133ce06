//! Classifier re-training on cached features: every method of the paper's unified form (Eq. 1),
//! composed from the components of [`HeadSpec`](lortflow_lang::ir::HeadSpec), on any autodiff
//! backend.
//!
//! [`train_heads`] takes a borrowed [`FeatureView`], an optional initial [`Classifier`] and one or
//! many [`HeadJob`]s, and returns a [`TrainedHead`] per job and trial. Jobs that can share a batch
//! stream (a δ, lr, weight-decay or seed sweep) train together as one batched computation; see
//! [`plan`] for the grouping rule and [`loss`] for the exact formulas and reductions.
//!
//! ```
//! use std::sync::atomic::AtomicBool;
//! use burn::backend::{Autodiff, Flex};
//! use lortflow_stdlib::head::{FeatureView, HeadJob, train_heads};
//! # use lortflow_stdlib::head::test_spec;
//!
//! let train = [1.0, 0.0, 0.0, 1.0, 0.9, 0.1, 0.1, 0.9];
//! let labels = [0, 1, 0, 1];
//! let view = FeatureView {
//!     dim: 2, train: &train, train_labels: &labels, test: &train, test_labels: &labels,
//!     num_classes: 2, class_counts: &[2, 2], release: None,
//! };
//! let job = HeadJob { name: "ce".into(), spec: test_spec(), seed: 0 };
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
mod error;
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
mod tests;

pub use base::{
    Classifier, EpochStats, FeatureSplit, FeatureView, HeadJob, HeadProgress, HeadResult,
    TrainedClassifier, TrainedHead,
};
pub use error::HeadError;
pub use plugin::{LossPlugin, SampleLoss, check_gradient, register_loss};
pub use train::train_heads;

/// A plain CE head spec (linear, one-hot, instance sampler, random init, 20 epochs, batch 128,
/// lr 0.01, momentum 0.9, wd 5e-4, cosine schedule), for examples and benchmarks that do not go
/// through the language. Edit its fields for other methods.
pub fn test_spec() -> lortflow_lang::ir::HeadSpec {
    use lortflow_lang::ir::*;
    use lortflow_lang::source::{Span, Spanned};
    fn s<T>(value: T) -> Spanned<T> {
        Spanned::new(value, Span::synthetic())
    }
    HeadSpec {
        features: s("features".to_string()),
        method: s("ce".to_string()),
        logits: s(Logits::Linear),
        targets: s(Targets::OneHot),
        margin: s(Margin::None),
        loss: None,
        weighting: s(Weighting::None),
        sampler: s(Sampler::Instance),
        constraint: s(Constraint::None),
        inference: s(Inference::None),
        train: HeadTrain {
            epochs: 20,
            batch_size: 128,
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 5e-4,
            schedule: lortflow_lang::ir::Schedule::Cosine,
            seed: 0,
        },
        init: s(Init::Random),
        trials: 1,
        select: s(lortflow_lang::ir::EpochSelect::Last),
        validation: None,
    }
}
