//! Samplers: which sample ids one epoch visits, in order.
//!
//! An epoch always has as many draws as the subset has samples (as PyTorch samplers do), so the
//! number of optimiser steps does not depend on the sampler. Orders depend only on
//! `(seed, epoch)`.

use crate::dataset::Rng;

/// Stream of [`Rng::stream`] reserved for epoch orders (augmentation uses its own).
const ORDER_STREAM: u64 = 0x5A4D_504C_0000_0000;

/// How training samples are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplerKind {
    /// Every sample once per epoch, shuffled.
    Instance,
    /// cRT's class-aware sampler: classes visited round-robin in a reshuffled order, `per_class`
    /// consecutive draws from each (cycling through that class's own shuffled list), so each class
    /// is drawn equally often.
    ClassBalanced {
        /// Draws per class visit (cRT uses 4).
        per_class: usize,
    },
    /// Classes drawn with probability ∝ √n_c, then a sample uniformly within the class (with
    /// replacement).
    Sqrt,
}

impl SamplerKind {
    /// The sample ids (elements of `ids`) epoch `epoch` visits, in order; `labels` are the split's
    /// (one per image, each below `num_classes`).
    ///
    /// `ids` must be valid indices of `labels` (checked by the loader).
    pub fn epoch_order(
        &self,
        labels: &[u32],
        num_classes: usize,
        ids: &[u32],
        seed: u64,
        epoch: usize,
    ) -> Vec<u32> {
        let mut rng = Rng::stream(seed, ORDER_STREAM + epoch as u64);
        let n = ids.len();
        if n == 0 {
            return Vec::new();
        }
        match *self {
            SamplerKind::Instance => {
                let mut order = ids.to_vec();
                rng.shuffle(&mut order);
                order
            }
            SamplerKind::ClassBalanced { per_class } => {
                let mut by_class = by_class(labels, num_classes, ids);
                let mut classes: Vec<usize> = (0..by_class.len())
                    .filter(|&c| !by_class[c].is_empty())
                    .collect();
                for members in &mut by_class {
                    rng.shuffle(members);
                }
                let mut cursor = vec![0usize; by_class.len()];
                let mut order = Vec::with_capacity(n);
                let mut next_class = classes.len();
                while order.len() < n {
                    if next_class == classes.len() {
                        rng.shuffle(&mut classes);
                        next_class = 0;
                    }
                    let c = classes[next_class];
                    next_class += 1;
                    for _ in 0..per_class.max(1) {
                        if order.len() == n {
                            break;
                        }
                        let members = &mut by_class[c];
                        if cursor[c] == members.len() {
                            rng.shuffle(members);
                            cursor[c] = 0;
                        }
                        order.push(members[cursor[c]]);
                        cursor[c] += 1;
                    }
                }
                order
            }
            SamplerKind::Sqrt => {
                let by_class = by_class(labels, num_classes, ids);
                let weights: Vec<f64> = by_class.iter().map(|m| (m.len() as f64).sqrt()).collect();
                let total: f64 = weights.iter().sum();
                let mut cumulative = Vec::with_capacity(weights.len());
                let mut acc = 0.0;
                for w in &weights {
                    acc += w / total;
                    cumulative.push(acc);
                }
                (0..n)
                    .map(|_| {
                        let u = rng.next_f64();
                        // The last non-empty class absorbs rounding at the top of the range.
                        let c = cumulative.iter().position(|&p| u < p).unwrap_or_else(|| {
                            by_class.iter().rposition(|m| !m.is_empty()).unwrap_or(0)
                        });
                        let members = &by_class[c];
                        members[rng.below(members.len() as u64) as usize]
                    })
                    .collect()
            }
        }
    }
}

fn by_class(labels: &[u32], num_classes: usize, ids: &[u32]) -> Vec<Vec<u32>> {
    let mut by_class = vec![Vec::new(); num_classes];
    for &id in ids {
        if let Some(&label) = labels.get(id as usize) {
            by_class[label as usize].push(id);
        }
    }
    by_class
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{LabeledImages, LongTailConfig, PatternImagesConfig};

    fn long_tailed() -> (LabeledImages, Vec<u32>) {
        let data = PatternImagesConfig {
            per_class: 60,
            ..Default::default()
        }
        .generate()
        .unwrap();
        let index = LongTailConfig {
            imbalance_ratio: 20.0,
            ..Default::default()
        }
        .build(data.labels(), data.num_classes())
        .unwrap();
        (data, index.sample_ids)
    }

    fn class_histogram(data: &LabeledImages, order: &[u32]) -> Vec<usize> {
        let mut h = vec![0; data.num_classes()];
        for &id in order {
            h[data.labels()[id as usize] as usize] += 1;
        }
        h
    }

    #[test]
    fn instance_is_a_seeded_permutation() {
        let (data, ids) = long_tailed();
        let a = SamplerKind::Instance.epoch_order(data.labels(), data.num_classes(), &ids, 1, 0);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        let mut expected = ids.clone();
        expected.sort_unstable();
        assert_eq!(sorted, expected);
        assert_eq!(
            a,
            SamplerKind::Instance.epoch_order(data.labels(), data.num_classes(), &ids, 1, 0)
        );
        assert_ne!(
            a,
            SamplerKind::Instance.epoch_order(data.labels(), data.num_classes(), &ids, 1, 1)
        );
    }

    #[test]
    fn class_balanced_draws_classes_equally() {
        let (data, ids) = long_tailed();
        let order = SamplerKind::ClassBalanced { per_class: 1 }.epoch_order(
            data.labels(),
            data.num_classes(),
            &ids,
            2,
            0,
        );
        assert_eq!(order.len(), ids.len());
        let h = class_histogram(&data, &order);
        let (lo, hi) = (h.iter().min().unwrap(), h.iter().max().unwrap());
        assert!(hi - lo <= 1, "{h:?}");
    }

    #[test]
    fn sqrt_flattens_the_tail() {
        let (data, ids) = long_tailed();
        let order = SamplerKind::Sqrt.epoch_order(data.labels(), data.num_classes(), &ids, 3, 0);
        let h = class_histogram(&data, &order);
        let counts = data.select(&ids).unwrap().class_counts();
        // Head/tail ratio of the draws is about the square root of the data's ratio.
        let ratio_data = counts[0] as f64 / counts[9] as f64;
        let ratio_draws = h[0] as f64 / h[9].max(1) as f64;
        assert!(ratio_draws < ratio_data, "{h:?} vs {counts:?}");
    }
}
