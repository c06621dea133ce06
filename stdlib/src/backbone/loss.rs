//! First-stage losses: `ce`, `ce-drw`, `ldam-drw` and `balanced-softmax` (the rows of the paper's
//! Tab. 3), with the constants of their reference code (ltr-reference §3.4–3.5).

use burn::nn::Linear;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// LDAM's largest margin (`max_m`, LDAM-DRW `cifar_train.py`).
pub const LDAM_MAX_M: f64 = 0.5;
/// LDAM's logit scale `s`.
pub const LDAM_SCALE: f64 = 30.0;
/// DRW's class-balanced β after the switch.
pub const DRW_BETA: f64 = 0.9999;
/// DRW switches on at this fraction of the epochs (160 of 200 in the reference).
pub const DRW_START_FRACTION: f64 = 0.8;

/// A first-stage loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stage1Loss {
    /// Softmax cross-entropy.
    Ce,
    /// Cross-entropy re-weighted from epoch `drw_epoch` on with class-balanced weights (β).
    CeDrw {
        /// First 0-based epoch with the weights.
        drw_epoch: usize,
        /// β of the effective number.
        beta: f64,
    },
    /// LDAM on cosine logits (the reference's `NormedLinear`: normalised features and normalised
    /// `fc` weight columns, no bias), margins `max_m·(n_min/n_j)^{1/4}`, scale `s`, with DRW.
    LdamDrw {
        /// First 0-based epoch with DRW weights.
        drw_epoch: usize,
        /// β of the effective number.
        beta: f64,
        /// Largest margin.
        max_m: f64,
        /// Logit scale.
        scale: f64,
    },
    /// Cross-entropy on `z + log n_y` (Ren et al.).
    BalancedSoftmax,
}

impl Stage1Loss {
    /// Cross-entropy with DRW switching on at 80% of `epochs`, β of the reference code.
    pub fn ce_drw(epochs: usize) -> Self {
        Stage1Loss::CeDrw {
            drw_epoch: drw_epoch(epochs),
            beta: DRW_BETA,
        }
    }

    /// LDAM-DRW with the reference code's margin, scale and β, DRW from 80% of `epochs`.
    pub fn ldam_drw(epochs: usize) -> Self {
        Stage1Loss::LdamDrw {
            drw_epoch: drw_epoch(epochs),
            beta: DRW_BETA,
            max_m: LDAM_MAX_M,
            scale: LDAM_SCALE,
        }
    }
}

/// The first 0-based epoch of DRW's weights: 80% of `epochs`, rounded down (160 of 200).
fn drw_epoch(epochs: usize) -> usize {
    (epochs as f64 * DRW_START_FRACTION).floor() as usize
}

/// Class-balanced weights `(1-β)/(1-β^{n_j})`, normalised to sum to K (LDAM-DRW's
/// `per_cls_weights`). Empty classes count as one sample so that their weight stays finite.
pub fn drw_weights(class_counts: &[usize], beta: f64) -> Vec<f32> {
    let raw: Vec<f64> = class_counts
        .iter()
        .map(|&n| (1.0 - beta) / (1.0 - beta.powi(n.max(1) as i32)))
        .collect();
    let sum: f64 = raw.iter().sum();
    raw.iter()
        .map(|w| (w / sum * class_counts.len() as f64) as f32)
        .collect()
}

/// LDAM margins `max_m·(n_min/n_j)^{1/4}` (the rarest class gets `max_m`).
pub fn ldam_margins(class_counts: &[usize], max_m: f64) -> Vec<f32> {
    let inv: Vec<f64> = class_counts
        .iter()
        .map(|&n| (n.max(1) as f64).powf(-0.25))
        .collect();
    let max = inv.iter().cloned().fold(0.0, f64::max);
    inv.iter().map(|v| (max_m * v / max) as f32).collect()
}

/// A loss bound to the class counts of the training subset, with its per-class tensors built once.
pub(crate) struct BoundLoss<B: Backend> {
    loss: Stage1Loss,
    log_counts: Tensor<B, 2>,
    margins: Tensor<B, 1>,
    weights: Tensor<B, 1>,
    num_classes: usize,
}

impl<B: Backend> BoundLoss<B> {
    pub(crate) fn new(loss: Stage1Loss, class_counts: &[usize], device: &B::Device) -> Self {
        let k = class_counts.len();
        let vec1 = |v: Vec<f32>| Tensor::<B, 1>::from_data(TensorData::new(v, [k]), device);
        let log_counts: Vec<f32> = class_counts
            .iter()
            .map(|&n| (n.max(1) as f32).ln())
            .collect();
        let (beta, max_m) = match loss {
            Stage1Loss::CeDrw { beta, .. } => (beta, 0.0),
            Stage1Loss::LdamDrw { beta, max_m, .. } => (beta, max_m),
            _ => (0.0, 0.0),
        };
        Self {
            loss,
            log_counts: vec1(log_counts).reshape([1, k]),
            margins: vec1(ldam_margins(class_counts, max_m)),
            weights: vec1(drw_weights(class_counts, beta)),
            num_classes: k,
        }
    }

    /// The loss of a batch and the logits used for the accuracy (the inference-time logits).
    ///
    /// # Shapes
    /// - features `[N, D]`, targets `[N]` → loss `[1]`, logits `[N, K]`
    pub(crate) fn forward(
        &self,
        features: Tensor<B, 2>,
        fc: &Linear<B>,
        targets: Tensor<B, 1, Int>,
        epoch: usize,
    ) -> (Tensor<B, 1>, Tensor<B, 2>) {
        let [n, _] = features.dims();
        let (train_logits, logits, drw_epoch) = match self.loss {
            Stage1Loss::Ce => {
                let z = fc.forward(features);
                (z.clone(), z, None)
            }
            Stage1Loss::CeDrw { drw_epoch, .. } => {
                let z = fc.forward(features);
                (z.clone(), z, Some(drw_epoch))
            }
            Stage1Loss::BalancedSoftmax => {
                let z = fc.forward(features);
                (z.clone() + self.log_counts.clone(), z, None)
            }
            Stage1Loss::LdamDrw {
                drw_epoch, scale, ..
            } => {
                // Cosine logits: unit-norm rows of the features times unit-norm columns of W [D, K].
                let f = l2_normalize(features, 1);
                let w = l2_normalize(fc.weight.val(), 0);
                let cos = f.matmul(w); // [N, K]
                let margin = self
                    .margins
                    .clone()
                    .select(0, targets.clone())
                    .reshape([n, 1]);
                let one_hot = targets.clone().one_hot::<2>(self.num_classes).float();
                let z = (cos.clone() - one_hot * margin).mul_scalar(scale);
                (z, cos, Some(drw_epoch))
            }
        };
        let log_p = log_softmax(train_logits, 1);
        let picked = log_p
            .gather(1, targets.clone().reshape([n, 1]))
            .reshape([n]); // [N]
        let loss = match drw_epoch {
            Some(start) if epoch >= start => {
                // PyTorch's weighted `cross_entropy`: divide by the sum of the batch's weights.
                let w = self.weights.clone().select(0, targets);
                (picked * w.clone()).sum().neg() / w.sum()
            }
            _ => picked.mean().neg(),
        };
        (loss, logits)
    }
}

fn l2_normalize<B: Backend>(x: Tensor<B, 2>, dim: usize) -> Tensor<B, 2> {
    let norm = x
        .clone()
        .powf_scalar(2.0)
        .sum_dim(dim)
        .sqrt()
        .clamp_min(1e-12);
    x / norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{CpuBackend, CpuDevice};
    use burn::nn::LinearConfig;

    #[test]
    fn drw_weights_sum_to_k_and_favour_the_tail() {
        let w = drw_weights(&[500, 50, 5], 0.9999);
        assert!((w.iter().sum::<f32>() - 3.0).abs() < 1e-4);
        assert!(w[0] < w[1] && w[1] < w[2]);
        assert_eq!(drw_weights(&[500, 5], 0.0), [1.0, 1.0]);
    }

    #[test]
    fn ldam_margins_peak_at_the_rarest_class() {
        let m = ldam_margins(&[625, 1], 0.5);
        assert!((m[1] - 0.5).abs() < 1e-6);
        assert!((m[0] - 0.1).abs() < 1e-6);
    }

    #[test]
    fn losses_agree_with_hand_computed_values() {
        let device = CpuDevice::default();
        let mut fc = LinearConfig::new(2, 2).init::<CpuBackend>(&device);
        fc.weight = fc
            .weight
            .map(|_| Tensor::from_floats([[1.0, 0.0], [0.0, 1.0]], &device));
        fc.bias = fc.bias.map(|b| b.map(|_| Tensor::zeros([2], &device)));
        let features = Tensor::<CpuBackend, 2>::from_floats([[2.0, 0.0]], &device);
        let targets = Tensor::<CpuBackend, 1, Int>::from_ints([0], &device);
        let value = |loss: Stage1Loss, counts: &[usize]| -> f32 {
            let bound = BoundLoss::<CpuBackend>::new(loss, counts, &device);
            let (l, _) = bound.forward(features.clone(), &fc, targets.clone(), 10);
            l.into_scalar()
        };
        // CE on logits (2, 0): log(1 + e^-2).
        let ce = (1.0f32 + (-2.0f32).exp()).ln();
        assert!((value(Stage1Loss::Ce, &[1, 1]) - ce).abs() < 1e-5);
        // Balanced softmax with counts (1, 7): logits (2, ln 7).
        let bs = value(Stage1Loss::BalancedSoftmax, &[1, 7]);
        let expected = (1.0f32 + (7.0f32.ln() - 2.0).exp()).ln();
        assert!((bs - expected).abs() < 1e-5, "{bs} vs {expected}");
        // A single-sample weighted CE equals the plain CE (weights cancel).
        let drw = value(
            Stage1Loss::CeDrw {
                drw_epoch: 0,
                beta: 0.9999,
            },
            &[100, 1],
        );
        assert!((drw - ce).abs() < 1e-5);
        // LDAM: cos = (1, 0), margin on class 0 = 0.5·(1/1)^{1/4} for equal counts.
        let ldam = value(
            Stage1Loss::LdamDrw {
                drw_epoch: 100,
                beta: 0.9999,
                max_m: 0.5,
                scale: 30.0,
            },
            &[1, 1],
        );
        let expected = (1.0f32 + (-30.0f32 * 0.5).exp()).ln();
        assert!((ldam - expected).abs() < 1e-5, "{ldam} vs {expected}");
    }
}
