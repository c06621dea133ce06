//! Training samplers r_s: the order in which sample ids are drawn in each epoch.
//!
//! - instance: a fresh permutation of all `N` samples per epoch (PyTorch's `RandomSampler`);
//! - class-balanced: classifier-balancing's `ClassAwareSampler` — a cycling iterator over the
//!   class ids and one per class over its samples, each reshuffled whenever it wraps around; each
//!   visit to a class emits `per_class` consecutive ids from that class's iterator. An epoch is
//!   `max_i n_i × K` draws (`K` counting classes that have samples), and the iterators carry over
//!   from one epoch to the next, as in the reference;
//! - sqrt: `N` draws per epoch, each picking class `i` with probability `∝ √n_i`, then the next id
//!   of that class's cycling, reshuffled iterator.
//!
//! Batches are consecutive runs of `batch_size` ids of an epoch's order; the last batch may be
//! smaller (`drop_last = False`). All randomness comes from our portable [`Rng`].

use lortflow_data::dataset::Rng;

use super::config::Sampler;

/// A cycling iterator over a list that is reshuffled every time it starts over
/// (`RandomCycleIter` of classifier-balancing).
#[derive(Debug, Clone)]
struct CycleIter {
    items: Vec<u32>,
    next: usize,
}

impl CycleIter {
    fn new(items: Vec<u32>) -> Self {
        // Start "at the end", so the first draw shuffles, as the reference does.
        let next = items.len();
        Self { items, next }
    }

    fn draw(&mut self, rng: &mut Rng) -> u32 {
        if self.next >= self.items.len() {
            rng.shuffle(&mut self.items);
            self.next = 0;
        }
        self.next += 1;
        self.items[self.next - 1]
    }
}

/// A seeded sampler over a labelled training set.
#[derive(Debug, Clone)]
pub struct EpochSampler {
    kind: Kind,
    rng: Rng,
    num_samples: usize,
}

#[derive(Debug, Clone)]
enum Kind {
    Instance,
    ClassAware {
        classes: CycleIter,
        per_class_iters: Vec<CycleIter>,
        per_class: usize,
        epoch_len: usize,
    },
    Sqrt {
        cumulative: Vec<f64>,
        per_class_iters: Vec<CycleIter>,
        classes: Vec<u32>,
    },
}

impl EpochSampler {
    /// A sampler of `kind` over `labels` with `num_classes` classes, seeded by `rng`.
    pub fn new(kind: &Sampler, labels: &[u32], num_classes: usize, rng: Rng) -> Self {
        let mut by_class: Vec<Vec<u32>> = vec![Vec::new(); num_classes];
        for (i, &label) in labels.iter().enumerate() {
            by_class[label as usize].push(i as u32);
        }
        let present: Vec<u32> = (0..num_classes as u32)
            .filter(|&c| !by_class[c as usize].is_empty())
            .collect();
        let kind = match kind {
            Sampler::Instance => Kind::Instance,
            Sampler::ClassBalanced { per_class } => {
                let n_max = by_class.iter().map(Vec::len).max().unwrap_or(0);
                Kind::ClassAware {
                    epoch_len: n_max * present.len(),
                    classes: CycleIter::new(present),
                    per_class_iters: by_class.into_iter().map(CycleIter::new).collect(),
                    per_class: (*per_class as usize).max(1),
                }
            }
            Sampler::Sqrt => {
                let mut total = 0.0;
                let cumulative = present
                    .iter()
                    .map(|&c| {
                        total += (by_class[c as usize].len() as f64).sqrt();
                        total
                    })
                    .collect();
                Kind::Sqrt {
                    cumulative,
                    per_class_iters: by_class.into_iter().map(CycleIter::new).collect(),
                    classes: present,
                }
            }
        };
        Self {
            kind,
            rng,
            num_samples: labels.len(),
        }
    }

    /// Number of draws per epoch.
    pub fn epoch_len(&self) -> usize {
        match &self.kind {
            Kind::ClassAware { epoch_len, .. } => *epoch_len,
            Kind::Instance | Kind::Sqrt { .. } => self.num_samples,
        }
    }

    /// The sample ids of the next epoch, in draw order.
    pub fn next_epoch(&mut self) -> Vec<u32> {
        let rng = &mut self.rng;
        match &mut self.kind {
            Kind::Instance => {
                let mut order: Vec<u32> = (0..self.num_samples as u32).collect();
                rng.shuffle(&mut order);
                order
            }
            Kind::ClassAware {
                classes,
                per_class_iters,
                per_class,
                epoch_len,
            } => {
                let mut order = Vec::with_capacity(*epoch_len);
                while order.len() < *epoch_len {
                    let class = classes.draw(rng) as usize;
                    for _ in 0..(*per_class).min(*epoch_len - order.len()) {
                        order.push(per_class_iters[class].draw(rng));
                    }
                }
                order
            }
            Kind::Sqrt {
                cumulative,
                per_class_iters,
                classes,
            } => {
                let total = cumulative.last().copied().unwrap_or(0.0);
                (0..self.num_samples)
                    .map(|_| {
                        let u = rng.next_f64() * total;
                        let slot = cumulative
                            .partition_point(|&c| c <= u)
                            .min(classes.len() - 1);
                        per_class_iters[classes[slot] as usize].draw(rng)
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(counts: &[usize]) -> Vec<u32> {
        counts
            .iter()
            .enumerate()
            .flat_map(|(c, &n)| std::iter::repeat_n(c as u32, n))
            .collect()
    }

    #[test]
    fn instance_sampler_permutes_every_epoch() {
        let y = labels(&[5, 3]);
        let mut s = EpochSampler::new(&Sampler::Instance, &y, 2, Rng::seed_from_u64(0));
        let a = s.next_epoch();
        let b = s.next_epoch();
        assert_ne!(a, b);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn class_aware_sampler_balances_classes_in_runs_of_per_class() {
        let y = labels(&[100, 10, 2]);
        let mut s = EpochSampler::new(
            &Sampler::ClassBalanced { per_class: 4 },
            &y,
            3,
            Rng::seed_from_u64(1),
        );
        assert_eq!(s.epoch_len(), 300);
        let order = s.next_epoch();
        assert_eq!(order.len(), 300);
        // Runs of 4 consecutive ids share a class.
        for run in order.chunks(4) {
            assert!(run.iter().all(|&i| y[i as usize] == y[run[0] as usize]));
        }
        let mut per_class = [0usize; 3];
        order
            .iter()
            .for_each(|&i| per_class[y[i as usize] as usize] += 1);
        // A reshuffled round robin: every class gets the same share, up to one visit.
        assert!(
            per_class.iter().all(|&n| (96..=104).contains(&n)),
            "{per_class:?}"
        );
        // A class's iterator emits each of its samples once per cycle.
        let tail: Vec<u32> = order
            .iter()
            .copied()
            .filter(|&i| y[i as usize] == 2)
            .take(2)
            .collect();
        assert_ne!(tail[0], tail[1]);
    }

    #[test]
    fn sqrt_sampler_follows_square_root_frequencies() {
        let y = labels(&[400, 100]);
        let mut s = EpochSampler::new(&Sampler::Sqrt, &y, 2, Rng::seed_from_u64(2));
        let mut head = 0;
        for _ in 0..20 {
            head += s
                .next_epoch()
                .iter()
                .filter(|&&i| y[i as usize] == 0)
                .count();
        }
        // √400 : √100 = 2 : 1.
        let share = head as f64 / (20.0 * 500.0);
        assert!((share - 2.0 / 3.0).abs() < 0.02, "{share}");
    }
}
