//! Per-class constants of the re-training components, exactly as the reference code computes them
//! (ltr-reference §3): LDAM margins, balanced-softmax and logit-adjustment priors, class-balanced
//! weights, the MaxNorm radius, and torch-like random initialisation.
//!
//! All of them are plain functions of the training class counts, computed once per head in `f64`
//! and handed to the device as `f32` tensors.

use lortflow_data::dataset::Rng;

/// LDAM margins `m_j = max_m · (n_min / n_j)^{1/4}`: the rarest class gets `max_m`.
///
/// Written as the reference does (`m = n^{-1/4}`, then `m · max_m / max(m)`), which is the same
/// number. Every count must be positive.
pub fn ldam_margins(counts: &[usize], max_m: f64) -> Vec<f64> {
    let raw: Vec<f64> = counts.iter().map(|&n| (n as f64).powf(-0.25)).collect();
    let largest = raw.iter().copied().fold(f64::MIN, f64::max);
    raw.iter().map(|m| m * max_m / largest).collect()
}

/// The balanced-softmax prior `log n_j`, added to the logits during training only.
pub fn balanced_softmax_prior(counts: &[usize]) -> Vec<f64> {
    counts.iter().map(|&n| (n as f64).ln()).collect()
}

/// `log(π_j + 1e-12)` with `π_j = n_j / N` (Menon et al. add 1e-12 so an empty class stays finite).
pub fn log_prior(counts: &[usize]) -> Vec<f64> {
    let total: usize = counts.iter().sum();
    counts
        .iter()
        .map(|&n| (n as f64 / total.max(1) as f64 + 1e-12).ln())
        .collect()
}

/// Class-balanced weights `w_j = (1−β)/(1−β^{n_j})`, normalised so that `Σ_j w_j = K` (Cui et al.;
/// LDAM-DRW's DRW weights). `β = 0` gives all ones.
pub fn class_balanced_weights(counts: &[usize], beta: f64) -> Vec<f64> {
    let raw: Vec<f64> = counts
        .iter()
        .map(|&n| (1.0 - beta) / (1.0 - beta.powf(n as f64)))
        .collect();
    let sum: f64 = raw.iter().sum();
    let k = counts.len() as f64;
    raw.iter().map(|w| w / sum * k).collect()
}

/// LTWB's relative MaxNorm radius from the initial classifier's row norms:
/// `r = min‖W_i‖ + thresh·(max‖W_i‖ − min‖W_i‖)`.
pub fn relative_radius(row_norms: &[f32], thresh: f64) -> f64 {
    let min = row_norms.iter().copied().fold(f32::INFINITY, f32::min) as f64;
    let max = row_norms.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    min + thresh * (max - min)
}

/// Projects every row of `weight` (`K×D`) with norm above `radius` onto the sphere of that radius;
/// rows inside the ball are untouched (LTWB's `PGD` with the bias left free).
pub fn maxnorm_project(weight: &mut [f32], dim: usize, radius: f32) {
    for row in weight.chunks_mut(dim.max(1)) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > radius {
            let factor = radius / norm;
            row.iter_mut().for_each(|v| *v *= factor);
        }
    }
}

/// A fresh `K×D` linear layer as `torch.nn.Linear` initialises it: Kaiming-uniform with `a = √5`,
/// which makes the weight and the bias uniform on `±1/√D`. Seeded with our portable generator, so
/// the numbers differ from torch's but are identical on every platform.
pub fn random_linear(num_classes: usize, dim: usize, rng: &mut Rng) -> (Vec<f32>, Vec<f32>) {
    let bound = 1.0 / (dim as f64).sqrt();
    let mut draw = || ((2.0 * rng.next_f64() - 1.0) * bound) as f32;
    let weight = (0..num_classes * dim).map(|_| draw()).collect();
    let bias = (0..num_classes).map(|_| draw()).collect();
    (weight, bias)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldam_margins_follow_the_quarter_power_and_cap_at_max_m() {
        let m = ldam_margins(&[625, 81, 16, 1], 0.5);
        // n^{-1/4}: 1/5, 1/3, 1/2, 1 → scaled so that the rarest class gets 0.5.
        for (got, want) in m.iter().zip([0.1, 0.5 / 3.0, 0.25, 0.5]) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
        // C/n^{1/4} with C chosen so that max = max_m.
        let m = ldam_margins(&[500, 100, 5], 0.3);
        let c = 0.3 * 5f64.powf(0.25);
        for (got, n) in m.iter().zip([500.0f64, 100.0, 5.0]) {
            assert!((got - c / n.powf(0.25)).abs() < 1e-12);
        }
    }

    #[test]
    fn class_balanced_weights_sum_to_k() {
        let counts = [500, 100, 20, 5];
        for beta in [0.0, 0.9, 0.999, 0.9999] {
            let w = class_balanced_weights(&counts, beta);
            assert!((w.iter().sum::<f64>() - 4.0).abs() < 1e-9, "β = {beta}");
            // Rarer classes weigh more (or the same for β = 0).
            assert!(w.windows(2).all(|p| p[0] <= p[1] + 1e-12));
        }
        assert_eq!(class_balanced_weights(&counts, 0.0), [1.0; 4]);
        // Hand computation for β = 0.5, counts 1 and 2: raw 1 and 2/3, normalised to sum 2.
        let w = class_balanced_weights(&[1, 2], 0.5);
        assert!((w[0] - 1.2).abs() < 1e-12 && (w[1] - 0.8).abs() < 1e-12);
    }

    #[test]
    fn priors() {
        let bs = balanced_softmax_prior(&[1, 10]);
        assert_eq!(bs[0], 0.0);
        assert!((bs[1] - 10f64.ln()).abs() < 1e-12);
        let lp = log_prior(&[1, 3]);
        assert!((lp[0] - (0.25f64 + 1e-12).ln()).abs() < 1e-12);
        assert!((lp[1] - (0.75f64 + 1e-12).ln()).abs() < 1e-12);
    }

    #[test]
    fn maxnorm_projects_only_rows_outside_the_ball() {
        let mut w = vec![3.0, 4.0, 0.3, 0.4, 0.0, 0.0];
        maxnorm_project(&mut w, 2, 1.0);
        assert!((w[0] - 0.6).abs() < 1e-7 && (w[1] - 0.8).abs() < 1e-7);
        assert_eq!(&w[2..], &[0.3, 0.4, 0.0, 0.0]);
        assert!((relative_radius(&[1.0, 3.0, 2.0], 0.1) - 1.2).abs() < 1e-7);
    }

    #[test]
    fn random_linear_is_seeded_and_bounded() {
        let (w, b) = random_linear(3, 16, &mut Rng::seed_from_u64(1));
        assert!(w.iter().chain(&b).all(|v| v.abs() <= 0.25));
        assert_eq!(
            (w.clone(), b.clone()),
            random_linear(3, 16, &mut Rng::seed_from_u64(1))
        );
        assert_ne!(w, random_linear(3, 16, &mut Rng::seed_from_u64(2)).0);
    }
}
