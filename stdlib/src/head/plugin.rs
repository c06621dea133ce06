//! Per-sample losses on the host, the trainer's side of a plugin head loss: a [`SampleLoss`]
//! takes the logits `z` (`K` values, bias included) and the label, and gives the loss value and
//! `∂ℓ/∂z`. The trainer does the rest: the batch mean (or class-weighted mean), the weight
//! gradient `xᵀ·G`, SGD. [`check_gradient`] compares a loss's gradient with finite differences,
//! for its tests.
//!
//! The language side of a plugin (its `loss` variant, registered with the schema) is
//! `crate::stages::LossPlugin`; a head gets its loss through
//! [`PluginLoss`](super::config::PluginLoss).

use std::sync::Arc;

/// The per-sample loss of a plugin, built for one head.
pub trait SampleLoss: Send + Sync {
    /// The loss of one sample with logits `logits` (`K`) and label `label`; writes `∂ℓ/∂z` into
    /// `grad` (`K`, overwritten).
    fn loss_and_grad(&self, logits: &[f32], label: usize, grad: &mut [f32]) -> f32;
}

/// The largest difference between `loss`'s gradient at `logits` and central finite differences
/// (step `h`, computed in f64 from f32 evaluations), relative to `max(1, |g|)`. For plugin tests:
/// a correct gradient gives ~1e-3 or less with `h = 1e-2`.
pub fn check_gradient(loss: &dyn SampleLoss, logits: &[f32], label: usize, h: f32) -> f64 {
    let k = logits.len();
    let mut grad = vec![0.0f32; k];
    loss.loss_and_grad(logits, label, &mut grad);
    let mut scratch = vec![0.0f32; k];
    let mut shifted = logits.to_vec();
    let mut worst = 0.0f64;
    for i in 0..k {
        shifted[i] = logits[i] + h;
        let up = f64::from(loss.loss_and_grad(&shifted, label, &mut scratch));
        shifted[i] = logits[i] - h;
        let down = f64::from(loss.loss_and_grad(&shifted, label, &mut scratch));
        shifted[i] = logits[i];
        let numeric = (up - down) / (2.0 * f64::from(h));
        let analytic = f64::from(grad[i]);
        worst = worst.max((numeric - analytic).abs() / analytic.abs().max(1.0));
    }
    worst
}

/// A plugin loss resolved for one head, with its name for grouping and messages.
#[derive(Clone)]
pub(crate) struct ResolvedLoss {
    pub name: String,
    pub loss: Arc<dyn SampleLoss>,
}

impl std::fmt::Debug for ResolvedLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedLoss")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}
