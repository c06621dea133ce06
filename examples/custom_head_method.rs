//! A new head method without touching lortflow: a plugin loss, and a `lortflow` of your own that
//! has it.
//!
//! The method is **label-aware smoothing** (LAS, from MiSLAS: Zhong et al., "Improving
//! Calibration for Long-Tailed Recognition", CVPR 2021): LORT's smoothed targets, with a δ per
//! class that falls linearly with the class's size, from `delta-max` for the most frequent class
//! to `delta-min` for the rarest:
//!
//! ```text
//! δ_y = δ_min + (δ_max − δ_min)·(n_y − n_min)/(n_max − n_min),   ỹ = (1 − δ_y)·e_y + δ_y/K
//! ℓ(z, y) = −Σ_k ỹ_k log softmax(z)_k,                          ∂ℓ/∂z = softmax(z) − ỹ
//! ```
//!
//! (The defaults below, 0.4 and 0.1, are for illustration; set them for your data.)
//!
//! This file is all it takes: the loss for one sample, its properties as a language variant,
//! and a `main` that registers it and runs the ordinary CLI. Everything else — `lint` with typed,
//! range-checked properties and suggestions, `--set`, sweeps, caching (the plugin's version is
//! part of the cache key), `watch`, `docs`, class weights, samplers, trials, evaluation — comes
//! with the CLI.
//!
//! ```text
//! cargo run --release --example custom_head_method -- run examples/custom-head-method/pipeline.kdl
//! cargo run --release --example custom_head_method -- docs | grep -A8 label-aware
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;

use lortflow_lang::schema::{Lit, ParamSpec, Range, ValueType, VariantSpec};
use lortflow_stdlib::head::SampleLoss;
use lortflow_stdlib::stages::{LossPlugin, register_loss};

/// The language side: `loss "label-aware-smoothing" delta-max=0.4 delta-min=0.1`.
const VARIANT: VariantSpec = VariantSpec {
    name: "label-aware-smoothing",
    doc: "Smoothed targets with a per-class δ, linear in the class size from `delta-max` (most \
          frequent class) to `delta-min` (rarest); MiSLAS's label-aware smoothing.",
    props: &[
        ParamSpec::new(
            "delta-max",
            ValueType::Float,
            "δ of the most frequent class.",
        )
        .default(Lit::Float(0.4))
        .range(Range::UNIT_HALF_OPEN),
        ParamSpec::new("delta-min", ValueType::Float, "δ of the rarest class.")
            .default(Lit::Float(0.1))
            .range(Range::UNIT_HALF_OPEN),
    ],
};

struct LabelAwareSmoothing;

impl LossPlugin for LabelAwareSmoothing {
    fn variant(&self) -> &'static VariantSpec {
        &VARIANT
    }

    fn version(&self) -> &'static str {
        "1"
    }

    fn build(
        &self,
        params: &BTreeMap<String, f64>,
        class_counts: &[usize],
    ) -> Result<Arc<dyn SampleLoss>, String> {
        // The linter fills in every property; a missing one is a bug worth a clear message.
        let param = |name: &str| {
            params
                .get(name)
                .copied()
                .ok_or(format!("no `{name}` given"))
        };
        let (high, low) = (param("delta-max")?, param("delta-min")?);
        Ok(Arc::new(Smoothing {
            delta: per_class_delta(class_counts, low, high)?,
        }))
    }
}

/// δ per class, linear in the class size between `low` (rarest) and `high` (most frequent).
fn per_class_delta(counts: &[usize], low: f64, high: f64) -> Result<Vec<f32>, String> {
    if counts.is_empty() {
        return Err("there are no classes".into());
    }
    let min = *counts.iter().min().expect("non-empty") as f64;
    let max = *counts.iter().max().expect("non-empty") as f64;
    Ok(counts
        .iter()
        .map(|&n| {
            // A balanced set has no head and tail: every class gets the midpoint.
            let t = if max > min {
                (n as f64 - min) / (max - min)
            } else {
                0.5
            };
            (low + (high - low) * t) as f32
        })
        .collect())
}

/// The loss of one head: cross-entropy against the label's smoothed target.
struct Smoothing {
    delta: Vec<f32>,
}

impl SampleLoss for Smoothing {
    fn loss_and_grad(&self, logits: &[f32], label: usize, grad: &mut [f32]) -> f32 {
        let k = logits.len() as f32;
        let delta = self.delta[label];
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for (g, &z) in grad.iter_mut().zip(logits) {
            *g = (z - max).exp();
            sum += *g;
        }
        let log_sum = sum.ln();
        let mut loss = 0.0;
        for (i, (g, &z)) in grad.iter_mut().zip(logits).enumerate() {
            let target = delta / k + if i == label { 1.0 - delta } else { 0.0 };
            // −ỹ_i · log softmax_i, with log softmax_i = z_i − max − ln Σ.
            loss -= target * (z - max - log_sum);
            *g = *g / sum - target;
        }
        loss
    }
}

fn main() -> ExitCode {
    if let Err(err) = register_loss(&LabelAwareSmoothing) {
        eprintln!("error: cannot register the loss: {err}");
        return ExitCode::from(2);
    }
    lortflow::run_cli()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lortflow_stdlib::head::check_gradient;

    #[test]
    fn delta_falls_from_the_head_to_the_tail() {
        let delta = per_class_delta(&[500, 100, 50, 5], 0.1, 0.4).unwrap();
        assert!((delta[0] - 0.4).abs() < 1e-6 && (delta[3] - 0.1).abs() < 1e-6);
        assert!(delta.windows(2).all(|w| w[0] > w[1]), "{delta:?}");
        assert_eq!(per_class_delta(&[7, 7], 0.1, 0.3).unwrap(), vec![0.2, 0.2]);
        assert!(per_class_delta(&[], 0.1, 0.3).is_err());
    }

    #[test]
    fn the_gradient_matches_finite_differences_and_delta_zero_is_cross_entropy() {
        let loss = Smoothing {
            delta: vec![0.4, 0.0, 0.25],
        };
        let logits = [1.5f32, -0.5, 0.25];
        for label in 0..3 {
            let error = check_gradient(&loss, &logits, label, 1e-2);
            assert!(error < 1e-3, "label {label}: {error}");
        }
        // δ = 0 (class 1): −log softmax.
        let mut grad = [0.0f32; 3];
        let value = loss.loss_and_grad(&logits, 1, &mut grad);
        let softmax: f32 = (-0.5f32).exp() / logits.iter().map(|z| z.exp()).sum::<f32>();
        assert!((value + softmax.ln()).abs() < 1e-6);
    }
}
