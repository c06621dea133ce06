//! Evaluation metrics from test logits: top-1 and per-class accuracy, many/medium/few group
//! accuracies, the paper's Logits Magnitude and Regularized Standard Deviation, weight norms, the
//! confusion matrix and trial summaries.
//!
//! Plain Rust on `N×K` row-major `f32` logits, accumulated in `f64`. Conventions:
//!
//! - **argmax ties**: the lowest class index wins (as `torch.argmax` on CPU and `np.argmax`), so a
//!   constant row predicts class 0;
//! - **group accuracy** is the mean of the per-class accuracies of the group's classes (groups from
//!   *training* counts, [`GroupConfig`]); an empty group is `None`, never 0; a class without test
//!   samples has no accuracy and is left out of every mean;
//! - **Logits Magnitude** (paper Def. 1) `L_i = mean{Z[n,i] : y_n = i} − mean{Z[n,i] : y_n ≠ i}`,
//!   the negative mean pooled over all negative samples (ltr-reference §2, reading 2);
//! - **RSD** (Def. 2) `r_i = σ_i / L_i` with the population standard deviation of column `i` over
//!   the positive samples by default ([`RsdOver`]); NaN when `L_i ≤ 0` or undefined;
//! - **trial summaries** report the best, the mean and the *population* standard deviation
//!   (`ddof = 0`) by default, or the sample one (`ddof = 1`, NaN for one trial) on request.

use serde::{Deserialize, Serialize};

use lortflow_data::dataset::{ClassGroups, GroupConfig, GroupMeans, LongTailError};

/// An error in the inputs of a metric.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum MetricError {
    /// The logits, labels or classes disagree in size.
    #[error("shape mismatch: {what} has {actual} values, expected {expected}")]
    ShapeMismatch {
        /// What was checked.
        what: String,
        /// Found.
        actual: usize,
        /// Expected.
        expected: usize,
    },
    /// A label is not below the number of classes.
    #[error("label {label} at sample {index} is out of range for {num_classes} classes")]
    LabelOutOfRange {
        /// The sample.
        index: usize,
        /// The label.
        label: u32,
        /// K.
        num_classes: usize,
    },
    /// The group thresholds are invalid.
    #[error(transparent)]
    Groups(#[from] LongTailError),
}

/// Test logits with their labels, checked once.
#[derive(Debug, Clone, Copy)]
pub struct Logits<'a> {
    values: &'a [f32],
    labels: &'a [u32],
    num_classes: usize,
}

impl<'a> Logits<'a> {
    /// `values` is `N×K` row-major, `labels` has `N` entries below `K`.
    pub fn new(
        values: &'a [f32],
        labels: &'a [u32],
        num_classes: usize,
    ) -> Result<Self, MetricError> {
        let expected = labels.len() * num_classes;
        if values.len() != expected || num_classes == 0 {
            return Err(MetricError::ShapeMismatch {
                what: format!("logits (N×K = {}×{num_classes})", labels.len()),
                actual: values.len(),
                expected,
            });
        }
        if let Some((index, &label)) = labels
            .iter()
            .enumerate()
            .find(|(_, l)| **l as usize >= num_classes)
        {
            return Err(MetricError::LabelOutOfRange {
                index,
                label,
                num_classes,
            });
        }
        Ok(Self {
            values,
            labels,
            num_classes,
        })
    }

    /// N.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// K.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn row(&self, n: usize) -> &[f32] {
        &self.values[n * self.num_classes..(n + 1) * self.num_classes]
    }

    /// The predicted class of every sample (ties: lowest index).
    pub fn predictions(&self) -> Vec<u32> {
        (0..self.len()).map(|n| argmax(self.row(n))).collect()
    }

    /// Top-1 accuracy over all samples (NaN without samples).
    pub fn top1(&self) -> f64 {
        let correct = self
            .predictions()
            .iter()
            .zip(self.labels)
            .filter(|(p, y)| p == y)
            .count();
        correct as f64 / self.len() as f64
    }

    /// Accuracy of each class over its test samples; `None` for a class without test samples.
    pub fn per_class_accuracy(&self) -> Vec<Option<f64>> {
        let mut hits = vec![0usize; self.num_classes];
        let mut totals = vec![0usize; self.num_classes];
        for (p, &y) in self.predictions().iter().zip(self.labels) {
            totals[y as usize] += 1;
            hits[y as usize] += usize::from(*p == y);
        }
        hits.iter()
            .zip(&totals)
            .map(|(&h, &t)| (t > 0).then(|| h as f64 / t as f64))
            .collect()
    }

    /// `confusion[true][predicted]` counts, `K×K` row-major.
    pub fn confusion(&self) -> Vec<u64> {
        let k = self.num_classes;
        let mut matrix = vec![0u64; k * k];
        for (p, &y) in self.predictions().iter().zip(self.labels) {
            matrix[y as usize * k + *p as usize] += 1;
        }
        matrix
    }

    /// Logits Magnitude `L_i` of every class; NaN where class `i` has no positive or no negative
    /// sample.
    pub fn logits_magnitude(&self) -> Vec<f64> {
        self.moments()
            .into_iter()
            .map(|m| m.positive_mean - m.negative_mean)
            .collect()
    }

    /// Regularized Standard Deviation `r_i = σ_i / L_i`, σ over the samples chosen by `over`; NaN
    /// where `L_i ≤ 0` or either is undefined.
    pub fn rsd(&self, over: RsdOver) -> Vec<f64> {
        self.moments()
            .into_iter()
            .map(|m| {
                let magnitude = m.positive_mean - m.negative_mean;
                let sigma = match over {
                    RsdOver::Positive => m.positive_std,
                    RsdOver::Negative => m.negative_std,
                    RsdOver::All => m.all_std,
                };
                if magnitude > 0.0 {
                    sigma / magnitude
                } else {
                    f64::NAN
                }
            })
            .collect()
    }

    /// Per-class means and population standard deviations of column `i`, two passes for accuracy.
    fn moments(&self) -> Vec<ColumnMoments> {
        let k = self.num_classes;
        let mut pos = vec![(0usize, 0.0f64); k];
        let mut all = vec![0.0f64; k];
        for n in 0..self.len() {
            let y = self.labels[n] as usize;
            let row = self.row(n);
            pos[y].0 += 1;
            pos[y].1 += f64::from(row[y]);
            for (a, &v) in all.iter_mut().zip(row) {
                *a += f64::from(v);
            }
        }
        let n = self.len();
        let means: Vec<(f64, f64, f64)> = (0..k)
            .map(|i| {
                let (np, sp) = pos[i];
                let nn = n - np;
                (sp / np as f64, (all[i] - sp) / nn as f64, all[i] / n as f64)
            })
            .collect();
        let mut sq = vec![(0.0f64, 0.0f64, 0.0f64); k];
        for s in 0..n {
            let y = self.labels[s] as usize;
            for (i, &v) in self.row(s).iter().enumerate() {
                let v = f64::from(v);
                let (mp, mn, ma) = means[i];
                if i == y {
                    sq[i].0 += (v - mp).powi(2);
                } else {
                    sq[i].1 += (v - mn).powi(2);
                }
                sq[i].2 += (v - ma).powi(2);
            }
        }
        (0..k)
            .map(|i| {
                let np = pos[i].0;
                let nn = n - np;
                ColumnMoments {
                    positive_mean: means[i].0,
                    negative_mean: means[i].1,
                    positive_std: (sq[i].0 / np as f64).sqrt(),
                    negative_std: (sq[i].1 / nn as f64).sqrt(),
                    all_std: (sq[i].2 / n as f64).sqrt(),
                }
            })
            .collect()
    }

    /// Everything at once, with groups from the training counts.
    pub fn evaluate(
        &self,
        train_counts: &[usize],
        groups: &GroupConfig,
    ) -> Result<Evaluation, MetricError> {
        if train_counts.len() != self.num_classes {
            return Err(MetricError::ShapeMismatch {
                what: format!("train class counts (K = {})", self.num_classes),
                actual: train_counts.len(),
                expected: self.num_classes,
            });
        }
        let class_groups = groups.assign(train_counts)?;
        let per_class = self.per_class_accuracy();
        Ok(Evaluation {
            top1: self.top1(),
            groups: group_accuracy(&class_groups, &per_class),
            per_class,
            logits_magnitude: self.logits_magnitude(),
            rsd: self.rsd(RsdOver::Positive),
        })
    }
}

struct ColumnMoments {
    positive_mean: f64,
    negative_mean: f64,
    positive_std: f64,
    negative_std: f64,
    all_std: f64,
}

/// Which samples σ of the RSD is taken over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RsdOver {
    /// The positive samples of the class (the recommended reading, ltr-reference §2).
    #[default]
    Positive,
    /// The negative samples.
    Negative,
    /// All samples.
    All,
}

/// The main metrics of one head.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    /// Top-1 accuracy.
    pub top1: f64,
    /// Many / medium / few accuracy (mean of per-class accuracies).
    pub groups: GroupMeans,
    /// Per-class accuracy.
    pub per_class: Vec<Option<f64>>,
    /// Logits Magnitude per class.
    pub logits_magnitude: Vec<f64>,
    /// RSD (over positives) per class.
    pub rsd: Vec<f64>,
}

/// Many/medium/few means of the per-class accuracies; classes without test samples are skipped, a
/// group left empty is `None`.
pub fn group_accuracy(groups: &ClassGroups, per_class: &[Option<f64>]) -> GroupMeans {
    use lortflow_data::dataset::Group;
    let mean = |group: Group| {
        let values: Vec<f64> = groups
            .groups
            .iter()
            .zip(per_class)
            .filter(|(g, _)| **g == group)
            .filter_map(|(_, a)| *a)
            .collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    GroupMeans {
        many: mean(Group::Many),
        medium: mean(Group::Medium),
        few: mean(Group::Few),
    }
}

/// The index of the largest value; the lowest index among equals. NaN never wins over a number.
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate().skip(1) {
        // Strictly greater: a tie keeps the earlier index.
        if v > row[best] || (row[best].is_nan() && !v.is_nan()) {
            best = i;
        }
    }
    best as u32
}

/// The L2 norm of each row of a `K×D` weight matrix.
pub fn weight_norms(weight: &[f32], dim: usize) -> Vec<f64> {
    weight
        .chunks(dim.max(1))
        .map(|r| r.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt())
        .collect()
}

/// Standard deviation convention of [`TrialSummary`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StdKind {
    /// Divide by n (numpy's default).
    #[default]
    Population,
    /// Divide by n − 1 (torch's default).
    Sample,
}

/// Best and mean ± std of one metric over trials.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TrialSummary {
    /// Number of trials.
    pub trials: usize,
    /// The largest value (the paper's "best of five").
    pub best: f64,
    /// Index of the best trial (the first among equals).
    pub best_trial: usize,
    /// The mean.
    pub mean: f64,
    /// The standard deviation.
    pub std: f64,
}

impl TrialSummary {
    /// Summarises `values` (one per trial); `None` without trials.
    pub fn new(values: &[f64], std: StdKind) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let ss: f64 = values.iter().map(|v| (v - mean).powi(2)).sum();
        let std = match std {
            StdKind::Population => (ss / n).sqrt(),
            StdKind::Sample if values.len() > 1 => (ss / (n - 1.0)).sqrt(),
            StdKind::Sample => f64::NAN,
        };
        let mut best_trial = 0;
        for (i, &v) in values.iter().enumerate() {
            if v > values[best_trial] {
                best_trial = i;
            }
        }
        Some(Self {
            trials: values.len(),
            best: values[best_trial],
            best_trial,
            mean,
            std,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn top1_per_class_groups_and_confusion() {
        // 3 classes, 6 samples; class 2 gets everything right, class 0 half, class 1 none.
        let z = [
            2.0, 1.0, 0.0, // y0 → 0 ✓
            0.0, 1.0, 3.0, // y0 → 2 ✗
            1.0, 0.0, 0.0, // y1 → 0 ✗
            5.0, 5.0, 0.0, // y1 → tie 0/1 → 0 ✗ (lowest index wins)
            0.0, 0.0, 1.0, // y2 ✓
            0.0, 0.0, 0.0, // y2 → all tied → 0 ✗
        ];
        let y = [0, 0, 1, 1, 2, 2];
        let logits = Logits::new(&z, &y, 3).unwrap();
        assert_eq!(logits.predictions(), [0, 2, 0, 0, 2, 0]);
        assert!(close(logits.top1(), 2.0 / 6.0));
        assert_eq!(
            logits.per_class_accuracy(),
            [Some(0.5), Some(0.0), Some(0.5)]
        );
        assert_eq!(logits.confusion(), [1, 0, 1, 2, 0, 0, 1, 0, 1]);
        // Train counts 500 / 50 / 60: many {0}, medium {1, 2}, few empty → None, not 0.
        let eval = logits
            .evaluate(&[500, 50, 60], &GroupConfig::default())
            .unwrap();
        assert_eq!(eval.groups.many, Some(0.5));
        assert!(close(eval.groups.medium.unwrap(), 0.25));
        assert_eq!(eval.groups.few, None);
    }

    #[test]
    fn logits_magnitude_and_rsd_by_hand() {
        // Column 0: positives (y = 0) 3 and 5 → mean 4, σ 1; negatives 1, 1, 2, 0 → mean 1.
        let z = [3.0, 0.0, 5.0, 0.0, 1.0, 2.0, 1.0, 4.0, 2.0, 0.0, 0.0, 0.0];
        let y = [0, 0, 1, 1, 1, 1];
        let logits = Logits::new(&z, &y, 2).unwrap();
        let l = logits.logits_magnitude();
        assert!(close(l[0], 3.0));
        let r = logits.rsd(RsdOver::Positive);
        assert!(close(r[0], 1.0 / 3.0));
        // Column 1: positives 2, 4, 0, 0 → mean 1.5; negatives 0, 0 → 0; σ_pos = √(2.75).
        assert!(close(l[1], 1.5));
        assert!(close(r[1], 2.75f64.sqrt() / 1.5));
        // Negative-sample σ of column 0: values 1, 1, 2, 0 → σ = √0.5.
        assert!(close(logits.rsd(RsdOver::Negative)[0], 0.5f64.sqrt() / 3.0));
        // L ≤ 0 → NaN.
        let z = [0.0, 1.0, 1.0, 0.0];
        let bad = Logits::new(&z, &[0, 1], 2).unwrap();
        assert!(bad.rsd(RsdOver::Positive).iter().all(|r| r.is_nan()));
    }

    #[test]
    fn magnitude_and_rsd_invariances() {
        let z: Vec<f32> = (0..40)
            .map(|i| ((i * 37 % 11) as f32) * 0.3 + if i % 4 == i / 10 { 2.0 } else { 0.0 })
            .collect();
        let y = [0, 1, 2, 3, 0, 1, 2, 3, 0, 1];
        let base = Logits::new(&z, &y, 4).unwrap();
        let (l0, r0) = (base.logits_magnitude(), base.rsd(RsdOver::Positive));
        // Adding a constant to column 2 (a bias shift) leaves L and r unchanged.
        let shifted: Vec<f32> = z
            .iter()
            .enumerate()
            .map(|(i, v)| if i % 4 == 2 { v + 7.5 } else { *v })
            .collect();
        let s = Logits::new(&shifted, &y, 4).unwrap();
        for (a, b) in l0.iter().zip(s.logits_magnitude()) {
            assert!((a - b).abs() < 1e-5);
        }
        // Scaling all logits scales L and leaves r unchanged.
        let scaled: Vec<f32> = z.iter().map(|v| v * 3.0).collect();
        let s = Logits::new(&scaled, &y, 4).unwrap();
        for (a, b) in r0.iter().zip(s.rsd(RsdOver::Positive)) {
            assert!(
                (a - b).abs() < 1e-6 || (a.is_nan() && b.is_nan()),
                "{a} vs {b}"
            );
        }
    }

    #[test]
    fn shapes_labels_norms_and_trials() {
        assert!(Logits::new(&[0.0; 5], &[0, 1], 3).is_err());
        assert!(matches!(
            Logits::new(&[0.0; 4], &[0, 2], 2),
            Err(MetricError::LabelOutOfRange { index: 1, .. })
        ));
        assert_eq!(weight_norms(&[3.0, 4.0, 0.0, 0.0], 2), [5.0, 0.0]);
        assert_eq!(argmax(&[f32::NAN, 1.0, 1.0]), 1);
        let t = TrialSummary::new(&[0.5, 0.7, 0.6, 0.7], StdKind::Population).unwrap();
        assert_eq!((t.best, t.best_trial), (0.7, 1));
        assert!(close(t.mean, 0.625));
        assert!(close(t.std, (0.0275f64 / 4.0).sqrt()));
        let s = TrialSummary::new(&[0.5, 0.7, 0.6, 0.7], StdKind::Sample).unwrap();
        assert!(close(s.std, (0.0275f64 / 3.0).sqrt()));
        assert!(
            TrialSummary::new(&[0.4], StdKind::Sample)
                .unwrap()
                .std
                .is_nan()
        );
        assert!(TrialSummary::new(&[], StdKind::Population).is_none());
    }
}
