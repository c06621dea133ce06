//! Learning-rate schedules of first-stage training, stepped once per epoch as the reference code
//! does (`CosineAnnealingLR(T_max=epochs)` in LTWB/LORT; LDAM-DRW's manual warm-up and steps).
//! A head's schedules are others ([`HeadSchedule`](crate::head::HeadSchedule)): its step decay
//! is OLTR's.

/// A first-stage learning-rate schedule. Its variant names are part of the checkpoint
/// fingerprint ([`TrainConfig`](super::TrainConfig)'s `Debug`): renaming one would refuse to resume
/// interrupted runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackboneSchedule {
    /// `lr·½(1+cos(π·t/T))` over the epochs after warm-up: the last epoch runs at a learning rate
    /// close to zero, and the curve would reach zero at epoch `T`.
    Cosine,
    /// LDAM-DRW's steps: ×0.01 from 80% of the epochs, ×0.0001 from 90% (160/180 of 200).
    Step,
    /// The initial rate throughout (after warm-up).
    Constant,
}

impl BackboneSchedule {
    /// The learning rate of 0-based `epoch` out of `epochs`, with a linear warm-up of
    /// `warmup` epochs (`lr·(e+1)/warmup`, as LDAM-DRW) before the schedule starts.
    pub fn lr_at(&self, base: f64, epoch: usize, epochs: usize, warmup: usize) -> f64 {
        if epoch < warmup {
            return base * (epoch + 1) as f64 / warmup as f64;
        }
        match self {
            BackboneSchedule::Constant => base,
            BackboneSchedule::Cosine => {
                let span = epochs.saturating_sub(warmup).max(1) as f64;
                let t = (epoch - warmup) as f64;
                base * 0.5 * (1.0 + (std::f64::consts::PI * t / span).cos())
            }
            BackboneSchedule::Step => {
                let e = epoch as f64;
                if e >= 0.9 * epochs as f64 {
                    base * 1e-4
                } else if e >= 0.8 * epochs as f64 {
                    base * 1e-2
                } else {
                    base
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_starts_at_lr_and_decays_to_near_zero() {
        let s = BackboneSchedule::Cosine;
        assert_eq!(s.lr_at(0.1, 0, 200, 0), 0.1);
        assert!((s.lr_at(0.1, 100, 200, 0) - 0.05).abs() < 1e-12);
        assert!(s.lr_at(0.1, 199, 200, 0) < 1e-5);
    }

    #[test]
    fn warmup_then_steps() {
        let s = BackboneSchedule::Step;
        assert!((s.lr_at(0.1, 0, 200, 5) - 0.02).abs() < 1e-12);
        assert_eq!(s.lr_at(0.1, 5, 200, 5), 0.1);
        assert!((s.lr_at(0.1, 160, 200, 5) - 1e-3).abs() < 1e-12);
        assert!((s.lr_at(0.1, 180, 200, 5) - 1e-5).abs() < 1e-12);
    }
}
