//! Inference-time weight maps: τ-normalisation and row normalisation, on host buffers.
//!
//! They run once per trained head, on `K×D` weights, so plain Rust is both simpler and faster than
//! a device round trip.

/// Smallest norm divided by, as `torch.nn.functional.normalize` (eps 1e-12): a zero row stays zero
/// instead of becoming NaN.
pub(crate) const NORM_EPS: f32 = 1e-12;

/// `W_i / ‖W_i‖^τ` for every row (Kang et al.'s τ-normalisation). `τ = 0` returns the rows
/// unchanged (bit for bit: `x^0 = 1`); `τ = 1` makes them unit length.
pub fn tau_normalized(weight: &[f32], dim: usize, tau: f32) -> Vec<f32> {
    let mut out = weight.to_vec();
    if tau == 0.0 {
        return out;
    }
    for row in out.chunks_mut(dim.max(1)) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(NORM_EPS);
        let factor = norm.powf(tau).recip();
        row.iter_mut().for_each(|v| *v *= factor);
    }
    out
}

/// Scales every row of `values` (`rows×dim`) to unit L2 norm (rows of norm below 1e-12 are divided
/// by 1e-12, as `F.normalize` does).
pub fn normalize_rows_in_place(values: &mut [f32], dim: usize) {
    for row in values.chunks_mut(dim.max(1)) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(NORM_EPS);
        row.iter_mut().for_each(|v| *v /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tau_zero_is_the_identity_and_tau_one_gives_unit_rows() {
        let w = vec![3.0, 4.0, 0.0, 0.5];
        assert_eq!(tau_normalized(&w, 2, 0.0), w);
        let unit = tau_normalized(&w, 2, 1.0);
        assert!((unit[0] - 0.6).abs() < 1e-7 && (unit[1] - 0.8).abs() < 1e-7);
        assert!((unit[3] - 1.0).abs() < 1e-7);
        // τ = 2 divides by the squared norm.
        let two = tau_normalized(&w, 2, 2.0);
        assert!((two[0] - 3.0 / 25.0).abs() < 1e-7);
    }

    #[test]
    fn zero_rows_stay_zero() {
        let mut w = vec![0.0, 0.0];
        normalize_rows_in_place(&mut w, 2);
        assert_eq!(w, [0.0, 0.0]);
        assert_eq!(tau_normalized(&[0.0, 0.0], 2, 1.0), [0.0, 0.0]);
    }
}
