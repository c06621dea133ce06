//! Metrics derived from per-class values for reports: means by class group, the 1-norm
//! normalisation of the paper's Fig. 3 and the head-to-tail class order.
//!
//! Per-class inputs are `Option<f64>`: `None` marks an undefined value (a class without test
//! samples, an RSD whose magnitude is not positive), which every mean skips.

use serde::Serialize;

use lortflow_data::dataset::{Group, GroupMeans};

/// The mean of the defined values of each group's classes; a group without any is `None`.
pub fn group_means(values: &[Option<f64>], groups: &[Group]) -> GroupMeans {
    let mean = |group: Group| {
        let (sum, n) = values
            .iter()
            .zip(groups)
            .filter(|(_, g)| **g == group)
            .filter_map(|(v, _)| *v)
            .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
        (n > 0).then(|| sum / n as f64)
    };
    GroupMeans {
        many: mean(Group::Many),
        medium: mean(Group::Medium),
        few: mean(Group::Few),
    }
}

/// Per-class values divided by the mean absolute value over the classes: `L̂_i = L_i / mean_k
/// |L_k|` (= `K·L_i/‖L‖₁`), the paper's "1-norm" regularisation that makes methods comparable
/// (ltr-reference §2, reading 5).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Normalised {
    /// The normalised values (`None` where the value is undefined, or all of them when the
    /// normaliser is).
    pub values: Vec<Option<f64>>,
    /// `mean_k |L_k|` over the defined values; `None` when there are none or it is 0.
    pub normaliser: Option<f64>,
}

/// Normalises by the mean absolute value, see [`Normalised`].
pub fn normalise_mean_abs(values: &[Option<f64>]) -> Normalised {
    let defined: Vec<f64> = values.iter().filter_map(|v| *v).collect();
    let normaliser = (!defined.is_empty())
        .then(|| defined.iter().map(|v| v.abs()).sum::<f64>() / defined.len() as f64)
        .filter(|m| *m > 0.0 && m.is_finite());
    Normalised {
        values: values.iter().map(|v| Some((*v)? / normaliser?)).collect(),
        normaliser,
    }
}

/// NaN and infinities become `None` (JSON has no NaN).
pub fn defined(values: &[f64]) -> Vec<Option<f64>> {
    values.iter().map(|v| v.is_finite().then_some(*v)).collect()
}

/// Class indices from the most to the least frequent in training (ties: lower index first), the
/// order of the x axis of head-to-tail plots.
pub fn head_to_tail(class_counts: &[usize]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..class_counts.len()).collect();
    // A stable sort keeps equal counts in label order.
    order.sort_by(|a, b| class_counts[*b].cmp(&class_counts[*a]));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Group = Group::Many;
    const D: Group = Group::Medium;
    const F: Group = Group::Few;

    #[test]
    fn group_means_skip_undefined_and_leave_empty_groups_none() {
        let values = [Some(1.0), Some(3.0), None, Some(0.5), None];
        let groups = [M, M, D, D, D];
        let means = group_means(&values, &groups);
        assert_eq!(means.many, Some(2.0));
        assert_eq!(means.medium, Some(0.5));
        assert_eq!(means.few, None, "no few class: null, not 0");
        // A group whose values are all undefined is undefined too.
        let means = group_means(&[Some(1.0), None], &[M, F]);
        assert_eq!(means.few, None);
    }

    #[test]
    fn normalisation_by_the_mean_absolute_value() {
        // mean |L| over defined values = (2 + 1 + 3) / 3 = 2.
        let n = normalise_mean_abs(&[Some(2.0), Some(-1.0), None, Some(3.0)]);
        assert_eq!(n.normaliser, Some(2.0));
        assert_eq!(n.values, [Some(1.0), Some(-0.5), None, Some(1.5)]);
        // K·L_i / ‖L‖₁ form: the normalised absolute values average to 1.
        let mean_abs: f64 = n.values.iter().flatten().map(|v| v.abs()).sum::<f64>() / 3.0;
        assert!((mean_abs - 1.0).abs() < 1e-12);
        // Scale invariance: multiplying all magnitudes leaves L̂ unchanged.
        let scaled = normalise_mean_abs(&[Some(20.0), Some(-10.0), None, Some(30.0)]);
        assert_eq!(scaled.values, n.values);
        // Nothing to normalise by.
        let zero = normalise_mean_abs(&[Some(0.0), None]);
        assert_eq!((zero.normaliser, zero.values), (None, vec![None, None]));
    }

    #[test]
    fn undefined_values_and_class_order() {
        assert_eq!(
            defined(&[1.0, f64::NAN, f64::INFINITY]),
            [Some(1.0), None, None]
        );
        assert_eq!(head_to_tail(&[5, 50, 5, 500]), [3, 1, 0, 2]);
    }
}
