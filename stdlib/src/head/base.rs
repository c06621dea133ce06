//! The inputs and outputs of head re-training: borrowed features, classifiers, jobs and trained
//! heads.
//!
//! Features are borrowed (`&[f32]`), never copied into a job: a cached feature matrix may be large
//! and memory-mapped, and a sweep of many heads reads the same one. A trained classifier carries
//! everything its inference map needs (logit function, LWS scales, log priors), so test logits can
//! be recomputed from it alone.

use super::config::{HeadConfig, Inference, Logits};
use super::error::HeadError;
use super::inference::{normalize_rows_in_place, tau_normalized};

/// A cached feature set, borrowed as row-major slices.
#[derive(Clone, Copy)]
pub struct FeatureView<'a> {
    /// Feature dimension `D`.
    pub dim: usize,
    /// Train features, `N×D` row-major.
    pub train: &'a [f32],
    /// Train labels, `N`.
    pub train_labels: &'a [u32],
    /// Test features, `N_test×D` row-major.
    pub test: &'a [f32],
    /// Test labels, `N_test`.
    pub test_labels: &'a [u32],
    /// `K`.
    pub num_classes: usize,
    /// Training images per class, `K` (of the long-tailed train split; drives priors, margins,
    /// weights and samplers).
    pub class_counts: &'a [usize],
    /// Called with rows of a split the trainer is done with for now, so that memory-mapped
    /// features can give their pages back (`None`: nothing to release).
    pub release: Option<&'a (dyn Fn(FeatureSplit, std::ops::Range<usize>) + Sync)>,
}

impl std::fmt::Debug for FeatureView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureView")
            .field("dim", &self.dim)
            .field("num_train", &self.num_train())
            .field("num_test", &self.num_test())
            .field("num_classes", &self.num_classes)
            .field("release", &self.release.is_some())
            .finish_non_exhaustive()
    }
}

/// Which split of a [`FeatureView`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureSplit {
    /// The train split.
    Train,
    /// The test split.
    Test,
}

impl FeatureView<'_> {
    /// Releases rows `rows` of `split` through [`Self::release`], if set.
    pub(crate) fn release(&self, split: FeatureSplit, rows: std::ops::Range<usize>) {
        if let Some(release) = self.release {
            release(split, rows);
        }
    }

    /// Train sample `i`'s features.
    pub(crate) fn train_row(&self, i: usize) -> &[f32] {
        &self.train[i * self.dim..(i + 1) * self.dim]
    }

    /// Number of training samples.
    pub fn num_train(&self) -> usize {
        self.train_labels.len()
    }

    /// Number of test samples.
    pub fn num_test(&self) -> usize {
        self.test_labels.len()
    }

    /// Checks that every slice has the length its dimensions imply, that labels are in range and
    /// that the class counts match the train labels.
    pub fn validate(&self) -> Result<(), HeadError> {
        let (n, nt, d, k) = (
            self.num_train(),
            self.num_test(),
            self.dim,
            self.num_classes,
        );
        let check = |what: String, actual: usize, expected: usize| {
            if actual == expected {
                Ok(())
            } else {
                Err(HeadError::ShapeMismatch {
                    what,
                    actual,
                    expected,
                })
            }
        };
        if d == 0 || k == 0 {
            return Err(HeadError::ShapeMismatch {
                what: "feature dimension and number of classes (must be at least 1)".into(),
                actual: d.min(k),
                expected: 1,
            });
        }
        check(
            format!("train features (N×D = {n}×{d})"),
            self.train.len(),
            n * d,
        )?;
        check(
            format!("test features (N_test×D = {nt}×{d})"),
            self.test.len(),
            nt * d,
        )?;
        check(
            format!("class counts (K = {k})"),
            self.class_counts.len(),
            k,
        )?;
        for (split, labels) in [("train", self.train_labels), ("test", self.test_labels)] {
            if let Some((index, &label)) =
                labels.iter().enumerate().find(|(_, l)| **l as usize >= k)
            {
                return Err(HeadError::LabelOutOfRange {
                    split,
                    index,
                    label,
                    num_classes: k,
                });
            }
        }
        let mut counts = vec![0usize; k];
        for &label in self.train_labels {
            counts[label as usize] += 1;
        }
        if let Some(class) = (0..k).find(|&c| counts[c] != self.class_counts[c]) {
            return Err(HeadError::ShapeMismatch {
                what: format!("train labels of class {class} (vs. `class_counts`)"),
                actual: counts[class],
                expected: self.class_counts[class],
            });
        }
        if n == 0 {
            return Err(HeadError::ShapeMismatch {
                what: "train samples".into(),
                actual: 0,
                expected: 1,
            });
        }
        Ok(())
    }
}

/// A linear classifier `z = W f + b`: the backbone's fc, or another head's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Classifier {
    /// `K×D` row-major.
    pub weight: Vec<f32>,
    /// `K`.
    pub bias: Vec<f32>,
}

impl Classifier {
    /// Checks the shapes against `K` and `D`.
    pub fn check(&self, num_classes: usize, dim: usize) -> Result<(), HeadError> {
        if self.weight.len() != num_classes * dim {
            return Err(HeadError::ShapeMismatch {
                what: format!("initial classifier weight (K×D = {num_classes}×{dim})"),
                actual: self.weight.len(),
                expected: num_classes * dim,
            });
        }
        if self.bias.len() != num_classes {
            return Err(HeadError::ShapeMismatch {
                what: format!("initial classifier bias (K = {num_classes})"),
                actual: self.bias.len(),
                expected: num_classes,
            });
        }
        Ok(())
    }

    /// The L2 norm of each weight row.
    pub fn row_norms(&self) -> Vec<f32> {
        let dim = self.weight.len() / self.bias.len().max(1);
        row_norms(&self.weight, dim)
    }
}

/// One head to train: its name, what it is and the seed of its first trial.
#[derive(Debug, Clone)]
pub struct HeadJob {
    /// The head's name (used in errors and progress).
    pub name: String,
    /// The components and training settings.
    pub config: HeadConfig,
    /// Seed of trial 0; trial `t` uses `seed + t`.
    pub seed: u64,
}

/// A trained classifier with everything its logit function and inference map need.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainedClassifier {
    /// `K`.
    pub num_classes: usize,
    /// `D`.
    pub dim: usize,
    /// The logit function it was trained with.
    pub logits: Logits,
    /// `K×D` row-major (for LWS: the frozen initial weights, before the scales).
    pub weight: Vec<f32>,
    /// `K` (zeros for cosine heads, which have no bias).
    pub bias: Vec<f32>,
    /// The learned per-class scales `c` of an LWS head.
    pub lws_scale: Option<Vec<f32>>,
    /// `log(π_j + 1e-12)` with `π` the training class frequencies (post-hoc logit adjustment).
    pub log_prior: Vec<f32>,
}

impl TrainedClassifier {
    /// The weights and bias of the equivalent linear map, `c ⊙ (W f + b)` folded into `W`, `b` for
    /// LWS. For cosine heads this is the raw `W` (the logit function normalises it).
    pub fn effective(&self) -> Classifier {
        match &self.lws_scale {
            Some(scale) => {
                let mut weight = self.weight.clone();
                for (row, &c) in weight.chunks_mut(self.dim).zip(scale) {
                    row.iter_mut().for_each(|w| *w *= c);
                }
                let bias = self.bias.iter().zip(scale).map(|(b, c)| b * c).collect();
                Classifier { weight, bias }
            }
            None => Classifier {
                weight: self.weight.clone(),
                bias: self.bias.clone(),
            },
        }
    }

    /// The classifier after the inference map's weight part (τ-normalisation); the logit
    /// adjustment part is an offset applied by [`Self::predict`].
    pub fn for_inference(&self, inference: &Inference) -> Classifier {
        let effective = self.effective();
        match inference {
            Inference::TauNorm { tau, bias } => Classifier {
                weight: tau_normalized(&effective.weight, self.dim, *tau as f32),
                bias: if *bias {
                    effective.bias
                } else {
                    vec![0.0; self.num_classes]
                },
            },
            Inference::None | Inference::LogitAdjust { .. } => effective,
        }
    }

    /// Per-class offset added to the logits by the inference map (`−τ log π` or zeros).
    pub fn inference_offset(&self, inference: &Inference) -> Vec<f32> {
        match inference {
            Inference::LogitAdjust { tau } => {
                self.log_prior.iter().map(|&p| -(*tau as f32) * p).collect()
            }
            _ => vec![0.0; self.num_classes],
        }
    }

    /// Logits of `features` (`N×D`) after the inference map, `N×K`, computed on the host.
    ///
    /// The training code computes test logits on the device; this is the reference for users and
    /// tests, and for applying a cached head to new features without a backend.
    pub fn predict(&self, inference: &Inference, features: &[f32]) -> Vec<f32> {
        let classifier = self.for_inference(inference);
        let offset = self.inference_offset(inference);
        let (k, d) = (self.num_classes, self.dim);
        let (mut weight, mut feats, scale) = (classifier.weight, features.to_vec(), 1.0f32);
        let scale = match self.logits {
            Logits::Cosine { scale: s, .. } => {
                normalize_rows_in_place(&mut weight, d);
                normalize_rows_in_place(&mut feats, d);
                s as f32
            }
            _ => scale,
        };
        let mut out = Vec::with_capacity(feats.len() / d * k);
        for row in feats.chunks(d) {
            for j in 0..k {
                let w = &weight[j * d..(j + 1) * d];
                let dot: f32 = w.iter().zip(row).map(|(a, b)| a * b).sum();
                out.push(scale * dot + classifier.bias[j] + offset[j]);
            }
        }
        out
    }

    /// The L2 norm of each row of the effective weights (the companion metric of LTWB).
    pub fn weight_norms(&self) -> Vec<f32> {
        row_norms(&self.effective().weight, self.dim)
    }
}

/// Mean loss and training accuracy of one epoch, and the selection metric when the head selects
/// its epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochStats {
    /// 0-based epoch.
    pub epoch: u32,
    /// Learning rate used during the epoch.
    pub lr: f64,
    /// Mean of the per-step losses.
    pub loss: f64,
    /// Accuracy of the training batches as drawn (argmax of the raw logits, before margins and
    /// priors), as the reference scripts log it.
    pub train_accuracy: f64,
    /// Balanced (mean per-class) accuracy on the held-out validation split after the epoch, with
    /// the inference map applied; `select "best-val"` only.
    pub val_accuracy: Option<f64>,
    /// Balanced accuracy on the test split after the epoch, with the inference map applied;
    /// `select "best-test"` only.
    pub test_accuracy: Option<f64>,
}

/// One trained trial of one job.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainedHead {
    /// The job's name.
    pub name: String,
    /// 0-based trial.
    pub trial: u32,
    /// The seed of this trial.
    pub seed: u64,
    /// The classifier.
    pub classifier: TrainedClassifier,
    /// The inference map applied to produce `test_logits`.
    pub inference: Inference,
    /// Per-epoch statistics (empty with `epochs = 0`).
    pub history: Vec<EpochStats>,
    /// The 0-based epoch whose weights the classifier holds: the last one for `select "last"`,
    /// the earliest best one for `best-val` / `best-test`; `None` with `epochs = 0`.
    pub selected_epoch: Option<u32>,
    /// Test logits after the inference map, `N_test×K` row-major: the logits used for prediction.
    pub test_logits: Vec<f32>,
}

/// The trials of one job, in trial order.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadResult {
    /// The job's name.
    pub name: String,
    /// One entry per trial.
    pub trials: Vec<TrainedHead>,
}

/// A progress report, sent after each epoch of each group of heads trained together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadProgress {
    /// 0-based index of the group.
    pub group: usize,
    /// Number of groups in this call.
    pub groups: usize,
    /// Heads (job trials) trained together in the group.
    pub heads: usize,
    /// Epochs completed (1-based after the first epoch).
    pub epoch: u32,
    /// Total epochs of the group.
    pub epochs: u32,
    /// Mean epoch loss over the group's heads.
    pub loss: f64,
}

pub(crate) fn row_norms(weight: &[f32], dim: usize) -> Vec<f32> {
    weight
        .chunks(dim.max(1))
        .map(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt())
        .collect()
}
