//! Long-tailed subsets of a balanced training split, built as an index of kept sample ids.
//!
//! The per-class target counts follow LDAM-DRW's `imbalance_cifar.py` exactly, floating-point
//! quirks included, because published CIFAR-LT numbers (10,847 images for CIFAR-100-LT at IR 100)
//! come from that code:
//!
//! - `exp`: `n_i = int(n_max · (1/IR)^(i/(K−1)))` for rank `i = 0..K−1`, `f64` `powf`, truncated
//!   toward zero;
//! - `step`: the first `K/2` ranks get `n_max`, the rest `int(n_max · (1/IR))`. LDAM-DRW silently
//!   drops the last class when `K` is odd; we reject odd `K` instead;
//! - `none`: every class gets `n_max`.
//!
//! Rank 0 is the head. Ranks map to classes in label order unless a permutation or a seeded shuffle
//! is given. Which images a class keeps is the other choice that moves results (ltr-reference §4.1,
//! pitfall 4): `first` keeps the first `n_c` of the class in file order (LTWB, LORT), `shuffle`
//! shuffles each class's ids with a seed first (LDAM-DRW's `np.random.seed(0)` variant, with our
//! generator, so the same subset as LDAM-DRW is *not* reproduced bit for bit — only the protocol).
//!
//! The output is an index, not a copy of pixels: it is small enough to serialise into the cache
//! next to the stage's parameters, and the same source can be re-indexed cheaply.

use serde::{Deserialize, Serialize};

use super::base::class_counts;
use super::error::LongTailError;
use super::rng::Rng;

/// How target counts fall off from the head class to the tail class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImbalanceProfile {
    /// Exponential decay from `n_max` to `n_max / IR` (Cao et al., LDAM-DRW).
    #[default]
    Exp,
    /// Half the classes at `n_max`, half at `n_max / IR`.
    Step,
    /// Every class at `n_max` (no imbalance; `max_per_class` still applies).
    None,
}

/// Which class is the head, which the tail.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClassOrder {
    /// Label order: class 0 is the head, class `K−1` the tail (LDAM-DRW, LTWB, LORT).
    #[default]
    Labels,
    /// `order[rank]` is the class at that rank; must be a permutation of `0..K`.
    Permutation(Vec<u32>),
    /// A permutation drawn from a seed.
    Shuffle {
        /// Seed of the permutation.
        seed: u64,
    },
}

/// Which samples of a class are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SampleSelection {
    /// The first `n_c` samples of the class in file order (LTWB and LORT; deterministic).
    #[default]
    First,
    /// A seeded shuffle of each class's samples, then the first `n_c`; classes are shuffled in label
    /// order from one generator.
    Shuffle {
        /// Seed of the shuffle.
        seed: u64,
    },
}

/// Settings of a long-tailed subset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LongTailConfig {
    /// The decay profile.
    pub profile: ImbalanceProfile,
    /// Imbalance ratio `IR = n_max / n_min` (≥ 1); ignored by the `none` profile.
    pub imbalance_ratio: f64,
    /// Head count; defaults to the largest class count of the source.
    pub n_max: Option<usize>,
    /// An upper bound applied to every class after the profile.
    pub max_per_class: Option<usize>,
    /// Which class is at which rank.
    pub class_order: ClassOrder,
    /// Which samples are kept.
    pub selection: SampleSelection,
}

impl Default for LongTailConfig {
    fn default() -> Self {
        Self {
            profile: ImbalanceProfile::Exp,
            imbalance_ratio: 100.0,
            n_max: None,
            max_per_class: None,
            class_order: ClassOrder::Labels,
            selection: SampleSelection::First,
        }
    }
}

/// The kept samples of a long-tailed subset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LongTailIndex {
    /// Ids (positions in the source split) of the kept samples, ascending, so the subset is a
    /// subsequence of the source in file order.
    pub sample_ids: Vec<u32>,
    /// The label of each kept sample, parallel to `sample_ids`.
    pub labels: Vec<u32>,
    /// Kept samples per class, indexed by label.
    pub class_counts: Vec<usize>,
    /// Number of classes.
    pub num_classes: usize,
}

impl LongTailIndex {
    /// Number of kept samples.
    pub fn len(&self) -> usize {
        self.sample_ids.len()
    }

    /// Whether no sample is kept.
    pub fn is_empty(&self) -> bool {
        self.sample_ids.is_empty()
    }

    /// The realised imbalance ratio, largest over smallest class count (`None` without samples).
    pub fn imbalance_ratio(&self) -> Option<f64> {
        let max = *self.class_counts.iter().max()?;
        let min = *self.class_counts.iter().min()?;
        (min > 0).then(|| max as f64 / min as f64)
    }
}

/// Target counts by rank (rank 0 = head) for `num_classes` classes.
///
/// This is the formula alone, so that tables like ltr-reference §4.2 can be checked without data.
pub fn profile_counts(
    profile: ImbalanceProfile,
    n_max: usize,
    imbalance_ratio: f64,
    num_classes: usize,
) -> Result<Vec<usize>, LongTailError> {
    if num_classes == 0 {
        return Err(LongTailError::NoClasses);
    }
    if n_max == 0 {
        return Err(LongTailError::ZeroCount { name: "n_max" });
    }
    if profile == ImbalanceProfile::None {
        return Ok(vec![n_max; num_classes]);
    }
    if !(imbalance_ratio.is_finite() && imbalance_ratio >= 1.0) {
        return Err(LongTailError::InvalidImbalanceRatio {
            ratio: imbalance_ratio,
        });
    }
    // LDAM-DRW passes `imb_factor = 1/IR` and multiplies by it; dividing by IR instead would round
    // differently for some counts.
    let imb_factor = 1.0 / imbalance_ratio;
    let n_max_f = n_max as f64;
    let counts: Vec<usize> = match profile {
        // One class has no decay; LDAM-DRW would divide by zero here.
        ImbalanceProfile::Exp if num_classes == 1 => vec![n_max],
        ImbalanceProfile::Exp => {
            let last = num_classes as f64 - 1.0;
            (0..num_classes)
                .map(|i| (n_max_f * imb_factor.powf(i as f64 / last)) as usize)
                .collect()
        }
        ImbalanceProfile::Step => {
            if num_classes % 2 != 0 {
                return Err(LongTailError::StepNeedsEvenClasses { num_classes });
            }
            let tail = (n_max_f * imb_factor) as usize;
            (0..num_classes)
                .map(|i| if i < num_classes / 2 { n_max } else { tail })
                .collect()
        }
        ImbalanceProfile::None => unreachable!("handled above"),
    };
    if let Some(rank) = counts.iter().position(|&n| n == 0) {
        return Err(LongTailError::ImbalanceTooLarge {
            ratio: imbalance_ratio,
            class: rank as u32,
            n_max,
            max_ratio: largest_ratio(n_max),
        });
    }
    Ok(counts)
}

/// The largest IR for which the tail count `int(n_max · (1/IR))` is still at least 1.
///
/// Mathematically `n_max`, but `n · (1/n)` rounds to just below 1 for some `n` (49 is one), in
/// which case the answer is the next smaller `f64`. The exponent of the tail class is exactly 1, so
/// the same bound holds for `exp` and `step`.
fn largest_ratio(n_max: usize) -> f64 {
    let n = n_max as f64;
    let mut ratio = n;
    while n * (1.0 / ratio) < 1.0 {
        ratio = f64::from_bits(ratio.to_bits() - 1);
    }
    ratio
}

impl LongTailConfig {
    /// Target counts per class (indexed by label) for a source with `available[c]` samples of class
    /// `c`.
    pub fn target_counts(&self, available: &[usize]) -> Result<Vec<usize>, LongTailError> {
        let num_classes = available.len();
        if num_classes == 0 {
            return Err(LongTailError::NoClasses);
        }
        if self.max_per_class == Some(0) {
            return Err(LongTailError::ZeroCount {
                name: "max_per_class",
            });
        }
        let order = self.rank_to_class(num_classes)?;
        match self.n_max {
            None => {
                let n_max = self.largest_feasible_n_max(available, &order)?;
                self.targets_for(available, &order, n_max)
            }
            Some(n_max) => self
                .targets_for(available, &order, n_max)
                .map_err(|err| match err {
                    LongTailError::InsufficientSamples {
                        class,
                        required,
                        available: have,
                        n_max,
                        ..
                    } => LongTailError::InsufficientSamples {
                        class,
                        required,
                        available: have,
                        n_max,
                        fits: self.largest_feasible_n_max(available, &order).ok(),
                    },
                    other => other,
                }),
        }
    }

    /// The default head count: the largest `n_max` for which every class has enough samples for
    /// its target. On a balanced source that is the class size (LDAM-DRW's `img_max`); on a source
    /// whose classes differ in size (real MNIST: 5,421–6,742) it is limited by whichever class
    /// runs short first, not by the largest class, which the head rank may not have.
    fn largest_feasible_n_max(
        &self,
        available: &[usize],
        order: &[u32],
    ) -> Result<usize, LongTailError> {
        let largest = available.iter().copied().max().unwrap_or(0);
        if largest == 0 {
            return Err(LongTailError::NoSamples);
        }
        if let Some(class) = available.iter().position(|&n| n == 0) {
            return Err(LongTailError::NoSourceSamples {
                class: class as u32,
            });
        }
        let fits = |n: usize| {
            !matches!(
                self.targets_for(available, order, n),
                Err(LongTailError::InsufficientSamples { .. })
            )
        };
        // Targets grow with n_max, so the counts that fit are 1..=answer; n_max = 1 always fits
        // (every target is at most 1) unless a class is empty, which the profile then reports.
        let (mut fit, mut too_many) = (1usize, largest + 1);
        if !fits(largest) {
            while too_many - fit > 1 {
                let mid = fit + (too_many - fit) / 2;
                if fits(mid) {
                    fit = mid;
                } else {
                    too_many = mid;
                }
            }
        } else {
            fit = largest;
        }
        // The counts that fit may all be too small for the profile's tail to keep a sample
        // (class sizes `[1000, 1, 1000]` at IR 100): then no head count works, and the error
        // says which class stands in the way rather than blaming the ratio alone.
        if let Err(LongTailError::ImbalanceTooLarge { ratio, .. }) =
            self.targets_for(available, order, fit)
        {
            if let Err(LongTailError::InsufficientSamples {
                class, available, ..
            }) = self.targets_for(available, order, too_many.min(largest))
            {
                return Err(LongTailError::NoHeadCount {
                    ratio,
                    class,
                    available,
                    fits: fit,
                });
            }
        }
        Ok(fit)
    }

    /// Target counts per class for head count `n_max`.
    fn targets_for(
        &self,
        available: &[usize],
        order: &[u32],
        n_max: usize,
    ) -> Result<Vec<usize>, LongTailError> {
        let num_classes = available.len();
        let by_rank = profile_counts(self.profile, n_max, self.imbalance_ratio, num_classes)
            .map_err(|err| match err {
                // The profile speaks in ranks; the user thinks in classes.
                LongTailError::ImbalanceTooLarge {
                    ratio,
                    class,
                    n_max,
                    max_ratio,
                } => LongTailError::ImbalanceTooLarge {
                    ratio,
                    class: order[class as usize],
                    n_max,
                    max_ratio,
                },
                other => other,
            })?;
        let mut targets = vec![0; num_classes];
        for (rank, &class) in order.iter().enumerate() {
            let target = by_rank[rank].min(self.max_per_class.unwrap_or(usize::MAX));
            let class_available = available[class as usize];
            if class_available < target {
                return Err(LongTailError::InsufficientSamples {
                    class,
                    required: target,
                    available: class_available,
                    n_max,
                    fits: None,
                });
            }
            targets[class as usize] = target;
        }
        Ok(targets)
    }

    /// Builds the index of kept samples from the labels of the source split (in file order).
    pub fn build(
        &self,
        labels: &[u32],
        num_classes: usize,
    ) -> Result<LongTailIndex, LongTailError> {
        if num_classes == 0 {
            return Err(LongTailError::NoClasses);
        }
        if u32::try_from(labels.len()).is_err() {
            return Err(LongTailError::TooManySamples { len: labels.len() });
        }
        if let Some(index) = labels.iter().position(|&l| l as usize >= num_classes) {
            return Err(LongTailError::LabelOutOfRange {
                index,
                label: labels[index],
                num_classes,
            });
        }
        let available = class_counts(labels, num_classes);
        let targets = self.target_counts(&available)?;
        let sample_ids = match self.selection {
            SampleSelection::First => select_first(labels, &targets),
            SampleSelection::Shuffle { seed } => select_shuffled(labels, &targets, seed),
        };
        let kept_labels: Vec<u32> = sample_ids.iter().map(|&id| labels[id as usize]).collect();
        let counts = class_counts(&kept_labels, num_classes);
        // `target_counts` rules this out; the check guards the contract of the index itself.
        if let Some(class) = counts.iter().position(|&n| n == 0) {
            return Err(LongTailError::EmptyClass {
                class: class as u32,
            });
        }
        tracing::debug!(
            kept = sample_ids.len(),
            source = labels.len(),
            "built long-tail index"
        );
        Ok(LongTailIndex {
            sample_ids,
            labels: kept_labels,
            class_counts: counts,
            num_classes,
        })
    }

    /// `order[rank]` = class at that rank.
    fn rank_to_class(&self, num_classes: usize) -> Result<Vec<u32>, LongTailError> {
        let identity = || (0..num_classes as u32).collect::<Vec<_>>();
        match &self.class_order {
            ClassOrder::Labels => Ok(identity()),
            ClassOrder::Shuffle { seed } => {
                let mut order = identity();
                Rng::seed_from_u64(*seed).shuffle(&mut order);
                Ok(order)
            }
            ClassOrder::Permutation(order) => {
                let invalid = |problem: String| LongTailError::InvalidClassOrder {
                    num_classes,
                    problem,
                };
                if order.len() != num_classes {
                    return Err(invalid(format!("it has {} entries", order.len())));
                }
                let mut seen = vec![false; num_classes];
                for (rank, &class) in order.iter().enumerate() {
                    match seen.get_mut(class as usize) {
                        None => return Err(invalid(format!("entry {rank} is {class}"))),
                        Some(true) => {
                            return Err(invalid(format!("class {class} appears twice")));
                        }
                        Some(slot) => *slot = true,
                    }
                }
                Ok(order.clone())
            }
        }
    }
}

/// The first `targets[c]` samples of each class, in one pass; ids come out ascending.
fn select_first(labels: &[u32], targets: &[usize]) -> Vec<u32> {
    let mut remaining = targets.to_vec();
    let mut ids = Vec::with_capacity(targets.iter().sum());
    for (id, &label) in labels.iter().enumerate() {
        let left = &mut remaining[label as usize];
        if *left > 0 {
            *left -= 1;
            ids.push(id as u32);
        }
    }
    ids
}

/// A seeded shuffle of each class's ids (file order first, classes in label order), keeping the
/// first `targets[c]`; the kept ids are returned ascending.
fn select_shuffled(labels: &[u32], targets: &[usize], seed: u64) -> Vec<u32> {
    let mut per_class: Vec<Vec<u32>> = vec![Vec::new(); targets.len()];
    for (id, &label) in labels.iter().enumerate() {
        per_class[label as usize].push(id as u32);
    }
    let mut rng = Rng::seed_from_u64(seed);
    let mut ids = Vec::with_capacity(targets.iter().sum());
    for (class_ids, &target) in per_class.iter_mut().zip(targets) {
        rng.shuffle(class_ids);
        ids.extend_from_slice(&class_ids[..target]);
    }
    ids.sort_unstable();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp(n_max: usize, ir: f64, k: usize) -> Vec<usize> {
        profile_counts(ImbalanceProfile::Exp, n_max, ir, k).unwrap()
    }

    /// Balanced labels, classes interleaved like a shuffled file.
    fn balanced(num_classes: u32, per_class: u32) -> Vec<u32> {
        (0..num_classes * per_class)
            .map(|i| i % num_classes)
            .collect()
    }

    #[test]
    fn fashion_mnist_lt_matches_the_reference_table() {
        let table: [(f64, usize, [usize; 10]); 4] = [
            (
                10.0,
                24_516,
                [6000, 4645, 3596, 2784, 2156, 1669, 1292, 1000, 774, 600],
            ),
            (
                50.0,
                16_796,
                [6000, 3884, 2515, 1628, 1054, 682, 442, 286, 185, 120],
            ),
            (
                100.0,
                14_886,
                [6000, 3596, 2156, 1292, 774, 464, 278, 166, 100, 60],
            ),
            (
                200.0,
                13_444,
                [6000, 3330, 1848, 1025, 569, 316, 175, 97, 54, 30],
            ),
        ];
        for (ir, total, counts) in table {
            let got = exp(6000, ir, 10);
            assert_eq!(got, counts, "IR {ir}");
            assert_eq!(got.iter().sum::<usize>(), total, "IR {ir}");
        }
    }

    #[test]
    fn cifar_lt_totals_match_the_reference_table() {
        let c100 = exp(500, 100.0, 100);
        assert_eq!(&c100[..4], &[500, 477, 455, 434]);
        assert_eq!(&c100[95..], &[6, 5, 5, 5, 5]);
        for (ir, total) in [
            (100.0, 10_847),
            (50.0, 12_608),
            (10.0, 19_573),
            (200.0, 9_502),
        ] {
            assert_eq!(
                exp(500, ir, 100).iter().sum::<usize>(),
                total,
                "CIFAR-100 IR {ir}"
            );
        }
        assert_eq!(
            exp(5000, 100.0, 10),
            [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
        );
        for (ir, total) in [(100.0, 12_406), (50.0, 13_996), (10.0, 20_431)] {
            assert_eq!(
                exp(5000, ir, 10).iter().sum::<usize>(),
                total,
                "CIFAR-10 IR {ir}"
            );
        }
    }

    #[test]
    fn step_and_none_profiles() {
        let step = profile_counts(ImbalanceProfile::Step, 500, 100.0, 4).unwrap();
        assert_eq!(step, [500, 500, 5, 5]);
        let err = profile_counts(ImbalanceProfile::Step, 500, 10.0, 5).unwrap_err();
        assert!(matches!(
            err,
            LongTailError::StepNeedsEvenClasses { num_classes: 5 }
        ));
        let none = profile_counts(ImbalanceProfile::None, 7, f64::NAN, 3).unwrap();
        assert_eq!(none, [7, 7, 7]);
        assert_eq!(exp(9, 100.0, 1), [9]);
    }

    #[test]
    fn too_large_ratio_names_the_largest_possible() {
        let err = profile_counts(ImbalanceProfile::Exp, 500, 501.0, 100).unwrap_err();
        assert_eq!(
            err.to_string(),
            "imbalance ratio 501 leaves class 99 with 0 samples (n_max = 500); the largest possible imbalance ratio is 500"
        );
        assert_eq!(exp(500, 500.0, 100)[99], 1);
        // 49 · (1/49) < 1 in f64, so IR 49 already empties the tail; the bound says so.
        assert!(largest_ratio(49) < 49.0);
        assert_eq!(exp(49, largest_ratio(49), 3)[2], 1);
        assert!(profile_counts(ImbalanceProfile::Exp, 10, 0.5, 3).is_err());
    }

    #[test]
    fn cifar100_lt_index_from_full_labels() {
        let labels = balanced(100, 500);
        let index = LongTailConfig::default().build(&labels, 100).unwrap();
        assert_eq!(index.len(), 10_847);
        assert_eq!(index.class_counts, exp(500, 100.0, 100));
        assert_eq!(index.imbalance_ratio(), Some(100.0));
        // `first`: class 0 keeps all its samples, class 99 its first five in file order.
        let class_99: Vec<u32> = index
            .sample_ids
            .iter()
            .copied()
            .filter(|&id| labels[id as usize] == 99)
            .collect();
        assert_eq!(class_99, [99, 199, 299, 399, 499]);
        assert!(index.sample_ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn shuffle_selection_is_seeded_and_keeps_the_counts() {
        let labels = balanced(10, 100);
        let config = |seed| LongTailConfig {
            selection: SampleSelection::Shuffle { seed },
            imbalance_ratio: 10.0,
            ..Default::default()
        };
        let a = config(0).build(&labels, 10).unwrap();
        assert_eq!(a, config(0).build(&labels, 10).unwrap());
        assert_ne!(
            a.sample_ids,
            config(1).build(&labels, 10).unwrap().sample_ids
        );
        let first = LongTailConfig {
            imbalance_ratio: 10.0,
            ..Default::default()
        }
        .build(&labels, 10)
        .unwrap();
        assert_eq!(a.class_counts, first.class_counts);
        assert_ne!(a.sample_ids, first.sample_ids);
    }

    #[test]
    fn class_order_moves_the_head() {
        let labels = balanced(3, 10);
        let config = LongTailConfig {
            imbalance_ratio: 10.0,
            class_order: ClassOrder::Permutation(vec![2, 0, 1]),
            ..Default::default()
        };
        let index = config.build(&labels, 3).unwrap();
        assert_eq!(index.class_counts, [3, 1, 10]);
        let bad = LongTailConfig {
            class_order: ClassOrder::Permutation(vec![0, 0, 1]),
            ..config.clone()
        };
        assert_eq!(
            bad.build(&labels, 3).unwrap_err().to_string(),
            "class order is not a permutation of 0..3: class 0 appears twice"
        );
        let shuffled = LongTailConfig {
            class_order: ClassOrder::Shuffle { seed: 3 },
            ..config
        };
        let mut counts = shuffled.build(&labels, 3).unwrap().class_counts;
        counts.sort_unstable();
        assert_eq!(counts, [1, 3, 10]);
    }

    #[test]
    fn cap_and_n_max() {
        let labels = balanced(4, 50);
        let config = LongTailConfig {
            profile: ImbalanceProfile::None,
            max_per_class: Some(20),
            ..Default::default()
        };
        assert_eq!(config.build(&labels, 4).unwrap().class_counts, [20; 4]);
        let config = LongTailConfig {
            n_max: Some(40),
            imbalance_ratio: 4.0,
            max_per_class: Some(30),
            ..Default::default()
        };
        assert_eq!(
            config.build(&labels, 4).unwrap().class_counts,
            [30, 25, 15, 10]
        );
        let zero_cap = LongTailConfig {
            max_per_class: Some(0),
            ..Default::default()
        };
        assert_eq!(
            zero_cap.build(&labels, 4).unwrap_err().to_string(),
            "`max_per_class` must be at least 1"
        );
    }

    #[test]
    fn insufficient_and_missing_classes() {
        let labels: Vec<u32> = balanced(3, 10)
            .into_iter()
            .enumerate()
            .filter(|&(i, l)| l != 1 || i < 6)
            .map(|(_, l)| l)
            .collect();
        let config = LongTailConfig {
            imbalance_ratio: 2.0,
            ..Default::default()
        };
        // The largest class would ask class 1 for 7; the default head count is the largest
        // every class can fill.
        assert_eq!(config.build(&labels, 3).unwrap().class_counts, [4, 2, 2]);
        let explicit = LongTailConfig {
            n_max: Some(10),
            ..config.clone()
        };
        assert_eq!(
            explicit.build(&labels, 3).unwrap_err().to_string(),
            "class 1 needs 7 samples at n_max = 10 but only 2 are available; every class can \
             fill n_max = 4 (`max-per-class`), the default when it is not set"
        );
        let err = LongTailConfig::default().build(&[0, 0, 1], 2).unwrap_err();
        assert!(
            matches!(err, LongTailError::ImbalanceTooLarge { class: 1, .. }),
            "{err}"
        );
        let err = LongTailConfig::default().build(&[0, 0, 1], 3).unwrap_err();
        assert_eq!(err, LongTailError::NoSourceSamples { class: 2 });
        let err = LongTailConfig::default().build(&[0, 5], 3).unwrap_err();
        assert!(matches!(
            err,
            LongTailError::LabelOutOfRange {
                index: 1,
                label: 5,
                ..
            }
        ));
        let err = LongTailConfig::default().build(&[], 3).unwrap_err();
        assert_eq!(err, LongTailError::NoSamples);
    }

    #[test]
    fn no_head_count_names_the_class_in_the_way() {
        let labels: Vec<u32> = [1000usize, 1, 1000]
            .iter()
            .enumerate()
            .flat_map(|(c, &n)| std::iter::repeat_n(c as u32, n))
            .collect();
        let err = LongTailConfig::default().build(&labels, 3).unwrap_err();
        assert!(
            matches!(
                err,
                LongTailError::NoHeadCount {
                    class: 1,
                    available: 1,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn default_head_count_works_on_classes_of_different_sizes() {
        // Real MNIST's training class sizes: class 0 is not the largest.
        let sizes = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949];
        let labels: Vec<u32> = sizes
            .iter()
            .enumerate()
            .flat_map(|(c, &n)| std::iter::repeat_n(c as u32, n))
            .collect();
        // The head count each profile can fill: exp asks the most of class 0; step gives the
        // first five classes the head count (class 4 has the fewest of them); none gives it
        // to every class (class 5 is the smallest).
        for (profile, n_max) in [
            (ImbalanceProfile::Exp, 5923),
            (ImbalanceProfile::Step, 5842),
            (ImbalanceProfile::None, 5421),
        ] {
            let config = LongTailConfig {
                profile,
                imbalance_ratio: 100.0,
                ..Default::default()
            };
            let index = config.build(&labels, 10).unwrap();
            assert_eq!(index.class_counts[0], n_max, "{profile:?}");
            assert!(
                index.class_counts.iter().zip(sizes).all(|(&k, n)| k <= n),
                "{profile:?}"
            );
            // One more would ask some class for more than it has.
            let over = LongTailConfig {
                n_max: Some(n_max + 1),
                ..config.clone()
            };
            assert!(over.build(&labels, 10).is_err(), "{profile:?}");
        }
        // Where the head class is the largest, the default is the largest class, as before.
        let mut sorted = sizes;
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        let labels: Vec<u32> = sorted
            .iter()
            .enumerate()
            .flat_map(|(c, &n)| std::iter::repeat_n(c as u32, n))
            .collect();
        let index = LongTailConfig::default().build(&labels, 10).unwrap();
        assert_eq!(index.class_counts, exp(6742, 100.0, 10));
    }

    #[test]
    fn index_round_trips_through_json() {
        let index = LongTailConfig {
            imbalance_ratio: 2.0,
            ..Default::default()
        }
        .build(&balanced(2, 4), 2)
        .unwrap();
        let json = serde_json::to_string(&index).unwrap();
        assert_eq!(
            json,
            r#"{"sample_ids":[0,1,2,3,4,6],"labels":[0,1,0,1,0,0],"class_counts":[4,2],"num_classes":2}"#
        );
        assert_eq!(serde_json::from_str::<LongTailIndex>(&json).unwrap(), index);
        let config: LongTailConfig =
            serde_json::from_str(r#"{"profile":"step","selection":{"shuffle":{"seed":0}}}"#)
                .unwrap();
        assert_eq!(config.profile, ImbalanceProfile::Step);
    }
}
