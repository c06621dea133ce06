//! Epoch selection: the held-out validation split of `select "best-val"` and the balanced
//! accuracy that picks the kept epoch.
//!
//! The split is class-stratified so that the selection metric sees the tail: every class keeps
//! `round(fraction · n_i)` of its samples aside, but at least one sample for training (a class
//! with a single sample is never held out, so priors, margins and weights stay defined). Which
//! samples are held out depends only on the labels, `fraction` and the validation seed — not on
//! the trial's seed — so all trials of a job, and all jobs with the same `validation` node,
//! share one split and can train together.

use super::plan::VALIDATION_STREAM;
use lortflow_data::dataset::Rng;

/// A train split divided into the samples a head trains on and the held-out ones.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Split {
    /// Ids (rows of the train features) the heads train on, ascending.
    pub train_ids: Vec<u32>,
    /// Their labels.
    pub train_labels: Vec<u32>,
    /// Held-out ids, ascending.
    pub val_ids: Vec<u32>,
    /// Their labels.
    pub val_labels: Vec<u32>,
    /// Training samples per class after the hold-out (what priors, margins and weights use).
    pub counts: Vec<usize>,
}

/// Holds out `round(fraction · n_i)` samples of every class `i` (at most `n_i − 1`), chosen by a
/// seeded shuffle of the class's ids.
pub(crate) fn stratified_split(
    labels: &[u32],
    num_classes: usize,
    fraction: f64,
    seed: u64,
) -> Split {
    let mut by_class: Vec<Vec<u32>> = vec![Vec::new(); num_classes];
    for (i, &label) in labels.iter().enumerate() {
        by_class[label as usize].push(i as u32);
    }
    let mut rng = Rng::stream(seed, VALIDATION_STREAM);
    let mut held = vec![false; labels.len()];
    for ids in &mut by_class {
        let n = ids.len();
        let take = ((fraction * n as f64).round() as usize).min(n.saturating_sub(1));
        rng.shuffle(ids);
        ids[..take].iter().for_each(|&i| held[i as usize] = true);
    }
    let mut split = Split {
        train_ids: Vec::new(),
        train_labels: Vec::new(),
        val_ids: Vec::new(),
        val_labels: Vec::new(),
        counts: vec![0; num_classes],
    };
    for (i, &label) in labels.iter().enumerate() {
        if held[i] {
            split.val_ids.push(i as u32);
            split.val_labels.push(label);
        } else {
            split.train_ids.push(i as u32);
            split.train_labels.push(label);
            split.counts[label as usize] += 1;
        }
    }
    split
}

/// Mean per-class accuracy of `predictions` over the classes present in `labels` (the LTR
/// metric, equal to top-1 on a balanced set); 0 without samples.
pub(crate) fn balanced_accuracy(predictions: &[u32], labels: &[u32], num_classes: usize) -> f64 {
    let mut total = vec![0usize; num_classes];
    let mut correct = vec![0usize; num_classes];
    for (&p, &y) in predictions.iter().zip(labels) {
        total[y as usize] += 1;
        correct[y as usize] += usize::from(p == y);
    }
    let present = total.iter().filter(|&&n| n > 0).count();
    if present == 0 {
        return 0.0;
    }
    total
        .iter()
        .zip(&correct)
        .filter(|(n, _)| **n > 0)
        .map(|(&n, &c)| c as f64 / n as f64)
        .sum::<f64>()
        / present as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_is_stratified_seeded_and_disjoint() {
        // Classes of 100, 20, 5, 1 samples, interleaved.
        let counts = [100usize, 20, 5, 1];
        let mut labels = Vec::new();
        for round in 0..100 {
            for (c, &n) in counts.iter().enumerate() {
                if round < n {
                    labels.push(c as u32);
                }
            }
        }
        let split = stratified_split(&labels, 4, 0.1, 3);
        // round(0.1·n): 10, 2, 1 (0.5 rounds up), and the single sample stays in training.
        assert_eq!(split.counts, [90, 18, 4, 1]);
        let mut held = [0usize; 4];
        split.val_labels.iter().for_each(|&y| held[y as usize] += 1);
        assert_eq!(held, [10, 2, 1, 0]);
        // Disjoint, complete, labels consistent.
        let mut all: Vec<u32> = split
            .train_ids
            .iter()
            .chain(&split.val_ids)
            .copied()
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..labels.len() as u32).collect::<Vec<_>>());
        for (ids, ys) in [
            (&split.train_ids, &split.train_labels),
            (&split.val_ids, &split.val_labels),
        ] {
            assert!(ids.iter().zip(ys).all(|(&i, &y)| labels[i as usize] == y));
        }
        // Seeded: the same seed gives the same split, another seed another one.
        assert_eq!(split, stratified_split(&labels, 4, 0.1, 3));
        assert_ne!(split.val_ids, stratified_split(&labels, 4, 0.1, 4).val_ids);
    }

    #[test]
    fn balanced_accuracy_averages_over_present_classes() {
        // Class 0: 3 of 4 right; class 1: 0 of 1; class 2 absent.
        let labels = [0, 0, 0, 0, 1];
        let predictions = [0, 0, 0, 1, 0];
        assert!((balanced_accuracy(&predictions, &labels, 3) - 0.375).abs() < 1e-12);
        assert_eq!(balanced_accuracy(&[], &[], 3), 0.0);
    }
}
