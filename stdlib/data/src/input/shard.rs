//! Data-parallel sharding, as PyTorch's `DistributedSampler` does it.
//!
//! An epoch's order (of any sampler, class-balanced ones included) is padded to a multiple of the
//! number of replicas by repeating its first samples ([`pad_for_replicas`]), and replica `r` of
//! `W` visits positions `r, r + W, r + 2W, …` of it ([`replica_order`]). With a per-replica batch
//! of `B / W`, step `k` of every replica together covers exactly positions `kB..(k+1)B`, the batch
//! one replica would see with the global batch `B`. So one loader can prepare the global batch and
//! hand row `i` to replica `i mod W` ([`Batch::split_among`]): the same assignment, with the
//! augmentation draws of the one-replica run.
//!
//! Padding repeats at most `W - 1` samples per epoch (PyTorch's `drop_last=False`); the last
//! global batch then splits evenly too, so averaging the replicas' gradients is the gradient of
//! the global batch's mean loss.

use super::loader::{Batch, BatchImages};

/// Pads `order` to a multiple of `replicas` by repeating its first samples (from the start again
/// when it is shorter than the padding), like `DistributedSampler(drop_last=False)`. One replica,
/// or an order that already divides, is left as it is.
pub fn pad_for_replicas(order: &mut Vec<u32>, replicas: usize) {
    let len = order.len();
    if replicas <= 1 || len == 0 {
        return;
    }
    let padded = len.div_ceil(replicas) * replicas;
    for i in 0..padded - len {
        order.push(order[i % len]);
    }
}

/// The positions replica `rank` of `replicas` visits in a padded epoch order: `rank`,
/// `rank + replicas`, … (`DistributedSampler`'s `indices[rank::num_replicas]`).
pub fn replica_order(padded: &[u32], rank: usize, replicas: usize) -> Vec<u32> {
    assert!(rank < replicas, "replica {rank} of {replicas}");
    padded
        .iter()
        .skip(rank)
        .step_by(replicas)
        .copied()
        .collect()
}

impl Batch {
    /// Splits a global batch among `replicas`: row `i` goes to replica `i mod replicas`, in order
    /// (see the module's documentation). Every part keeps the batch's index. The rows must divide
    /// evenly: a batch of a [padded](pad_for_replicas) order whose size is a multiple of
    /// `replicas` always does.
    ///
    /// # Panics
    /// When the rows do not divide evenly.
    pub fn split_among(self, replicas: usize) -> Vec<Batch> {
        let [n, c, h, w] = self.shape;
        assert!(
            replicas >= 1 && n % replicas == 0,
            "a batch of {n} rows does not split among {replicas} replicas"
        );
        if replicas == 1 {
            return vec![self];
        }
        let row = c * h * w;
        let rows_of = |rank: usize| (rank..n).step_by(replicas);
        (0..replicas)
            .map(|rank| Batch {
                images: match &self.images {
                    BatchImages::Normalized(values) => {
                        BatchImages::Normalized(gather_rows(values, row, rows_of(rank)))
                    }
                    BatchImages::Bytes {
                        pixels,
                        normalization,
                    } => BatchImages::Bytes {
                        pixels: gather_rows(pixels, row, rows_of(rank)),
                        normalization: normalization.clone(),
                    },
                },
                labels: rows_of(rank).map(|i| self.labels[i]).collect(),
                shape: [n / replicas, c, h, w],
                index: self.index,
            })
            .collect()
    }
}

impl Batch {
    /// Splits a batch into `parts` runs of consecutive rows, as equal as they can be (the first
    /// `n mod parts` one row longer), for work whose output keeps the batch's order (feature
    /// extraction over several devices). Empty runs are left out.
    pub fn split_rows(self, parts: usize) -> Vec<Batch> {
        let [n, c, h, w] = self.shape;
        let parts = parts.clamp(1, n.max(1));
        if parts == 1 {
            return vec![self];
        }
        let row = c * h * w;
        let mut out = Vec::with_capacity(parts);
        let mut start = 0;
        for part in 0..parts {
            let len = n / parts + usize::from(part < n % parts);
            let rows = start..start + len;
            out.push(Batch {
                images: match &self.images {
                    BatchImages::Normalized(values) => {
                        BatchImages::Normalized(values[rows.start * row..rows.end * row].to_vec())
                    }
                    BatchImages::Bytes {
                        pixels,
                        normalization,
                    } => BatchImages::Bytes {
                        pixels: pixels[rows.start * row..rows.end * row].to_vec(),
                        normalization: normalization.clone(),
                    },
                },
                labels: self.labels[rows.clone()].to_vec(),
                shape: [len, c, h, w],
                index: self.index,
            });
            start = rows.end;
        }
        out
    }
}

/// The rows `rows` (each `row` values long) of `values`, in order.
fn gather_rows<T: Copy>(values: &[T], row: usize, rows: impl Iterator<Item = usize>) -> Vec<T> {
    rows.flat_map(|i| values[i * row..(i + 1) * row].iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::Normalization;

    #[test]
    fn padding_repeats_the_first_samples_like_distributed_sampler() {
        let mut order = vec![5, 3, 8, 1, 9];
        pad_for_replicas(&mut order, 4);
        assert_eq!(order, [5, 3, 8, 1, 9, 5, 3, 8]);
        // Shorter than the padding: cycles.
        let mut short = vec![7];
        pad_for_replicas(&mut short, 3);
        assert_eq!(short, [7, 7, 7]);
        let mut even = vec![1, 2, 3, 4];
        pad_for_replicas(&mut even, 2);
        assert_eq!(even, [1, 2, 3, 4]);
        let mut one = vec![1, 2, 3];
        pad_for_replicas(&mut one, 1);
        assert_eq!(one, [1, 2, 3]);
    }

    #[test]
    fn replicas_interleave_and_cover_the_padded_order_once() {
        let mut order: Vec<u32> = (0..11).rev().collect();
        pad_for_replicas(&mut order, 3);
        let shards: Vec<Vec<u32>> = (0..3).map(|r| replica_order(&order, r, 3)).collect();
        assert_eq!(shards[0], [10, 7, 4, 1]);
        assert_eq!(shards[1], [9, 6, 3, 0]);
        assert_eq!(shards[2], [8, 5, 2, 10]);
        let mut all: Vec<u32> = shards.concat();
        all.sort_unstable();
        let mut expected = order.clone();
        expected.sort_unstable();
        assert_eq!(all, expected);
    }

    fn batch(n: usize, bytes: bool) -> Batch {
        let row = 6; // 2 channels of 1 x 3
        let values: Vec<f32> = (0..n * row).map(|v| v as f32).collect();
        Batch {
            images: if bytes {
                BatchImages::Bytes {
                    pixels: values.iter().map(|&v| v as u8).collect(),
                    normalization: Normalization {
                        mean: vec![0.5, 0.5],
                        std: vec![0.25, 0.25],
                    },
                }
            } else {
                BatchImages::Normalized(values)
            },
            labels: (0..n as u32).map(|l| 100 + l).collect(),
            shape: [n, 2, 1, 3],
            index: 4,
        }
    }

    /// Replica `r`'s part of global batch `k` is its own shard's batch `k`: what
    /// `DistributedSampler` with the per-replica batch would give it.
    #[test]
    fn a_split_global_batch_is_each_replicas_own_batch() {
        let mut order: Vec<u32> = (0..23).map(|v| (v * 7) % 23).collect();
        let (replicas, global) = (4, 8);
        pad_for_replicas(&mut order, replicas);
        let shards: Vec<Vec<u32>> = (0..replicas)
            .map(|r| replica_order(&order, r, replicas))
            .collect();
        for (k, chunk) in order.chunks(global).enumerate() {
            let per = chunk.len() / replicas;
            for (r, shard) in shards.iter().enumerate() {
                let own = &shard[k * (global / replicas)..][..per];
                let from_split: Vec<u32> =
                    chunk.iter().skip(r).step_by(replicas).copied().collect();
                assert_eq!(own, from_split.as_slice(), "batch {k}, replica {r}");
            }
        }
    }

    #[test]
    fn split_moves_whole_rows_and_their_labels() {
        for bytes in [false, true] {
            let parts = batch(6, bytes).split_among(3);
            assert_eq!(parts.len(), 3);
            for (r, part) in parts.iter().enumerate() {
                assert_eq!(part.shape, [2, 2, 1, 3]);
                assert_eq!(part.index, 4);
                assert_eq!(part.labels, [100 + r as u32, 103 + r as u32]);
                let first = |p: &Batch| match &p.images {
                    BatchImages::Normalized(v) => (v[0], v[6]),
                    BatchImages::Bytes { pixels, .. } => {
                        (f32::from(pixels[0]), f32::from(pixels[6]))
                    }
                };
                assert_eq!(first(part), ((6 * r) as f32, (6 * (r + 3)) as f32));
            }
        }
        assert_eq!(batch(5, false).split_among(1), vec![batch(5, false)]);
    }

    #[test]
    fn row_runs_keep_the_order_and_cover_every_row() {
        for bytes in [false, true] {
            let parts = batch(7, bytes).split_rows(3);
            let sizes: Vec<usize> = parts.iter().map(|p| p.shape[0]).collect();
            assert_eq!(sizes, [3, 2, 2]);
            let labels: Vec<u32> = parts.iter().flat_map(|p| p.labels.clone()).collect();
            assert_eq!(labels, (100..107).collect::<Vec<u32>>());
            let first_value = |p: &Batch| match &p.images {
                BatchImages::Normalized(v) => v[0],
                BatchImages::Bytes { pixels, .. } => f32::from(pixels[0]),
            };
            assert_eq!(first_value(&parts[1]), 18.0);
            assert_eq!(first_value(&parts[2]), 30.0);
        }
        // More parts than rows: one row each.
        assert_eq!(batch(2, false).split_rows(4).len(), 2);
    }

    #[test]
    #[should_panic(expected = "does not split")]
    fn an_uneven_split_is_refused() {
        batch(5, false).split_among(2);
    }
}
