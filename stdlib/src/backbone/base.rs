//! The backbone module: one of the architectures of [`Arch`], with pooled features and the
//! classifier `fc` that heads may start from.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::arch::Arch;
use super::conv_fc::{ConvFc, ConvFcConfig};
use super::error::BackboneError;
use super::init::{InitScheme, seeded_init};
use super::resnet::{ResNet, ResNetConfig, ResNetKind, Stem};
use super::small_cnn::{SmallCnn, SmallCnnConfig};

/// Images up to this side use the CIFAR stem for ResNet-34 (3x3/1, no max-pool): the torchvision
/// stem would shrink a 32px image to 8px before the first block (ltr-reference §7).
pub const CIFAR_STEM_MAX_SIDE: usize = 64;

/// Everything needed to build a backbone before its weights are loaded. Saved next to every
/// checkpoint, because the module's shape is not part of a Burn record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackboneConfig {
    /// The architecture, by its name (`small-cnn`, `resnet32`, …).
    pub arch: Arch,
    /// Classes of the stage-1 classifier.
    pub num_classes: usize,
    /// Input channels (1 for grey images, 3 for colour).
    pub in_channels: usize,
    /// Side of the (square) input images the network is fed.
    pub input_size: usize,
}

impl BackboneConfig {
    /// The feature dimension ([`Arch::feature_dim`]).
    pub fn feature_dim(&self) -> usize {
        self.arch.feature_dim()
    }

    /// The ResNet stem this configuration uses (ResNet-32 always uses the CIFAR stem; ResNet-50 and
    /// ResNeXt-50 always torchvision's, as in their reference code).
    pub fn stem(&self) -> Stem {
        match self.arch {
            Arch::Resnet34 if self.input_size > CIFAR_STEM_MAX_SIDE => Stem::Imagenet,
            Arch::Resnet32 | Arch::Resnet34 | Arch::SmallCnn | Arch::ConvFc => Stem::Cifar,
            Arch::Resnet50 | Arch::Resnext50 => Stem::Imagenet,
        }
    }

    /// Checks the sizes: at least one class and channel, and an input big enough for the
    /// network's downsampling.
    pub fn validate(&self) -> Result<(), BackboneError> {
        let min_side = match self.stem() {
            Stem::Cifar => 4,
            Stem::Imagenet => 32,
        };
        if self.num_classes == 0 || self.in_channels == 0 || self.input_size < min_side {
            return Err(BackboneError::InvalidConfig(format!(
                "`{}` needs at least one class, one channel and inputs of at least {min_side}px; got {} classes, {} channels, {}px",
                self.arch.name(),
                self.num_classes,
                self.in_channels,
                self.input_size
            )));
        }
        Ok(())
    }

    /// Builds a backbone whose initial weights are a pure function of `seed` (drawn from our own
    /// RNG, not Burn's process-wide one; see `init.rs`), the same on every backend.
    pub fn init_seeded<B: Backend>(
        &self,
        seed: u64,
        device: &B::Device,
    ) -> Result<Backbone<B>, BackboneError> {
        let scheme = match self.arch {
            Arch::Resnet32 => InitScheme::CifarResnet,
            Arch::ConvFc => InitScheme::PytorchDefault,
            _ => InitScheme::Torchvision,
        };
        Ok(seeded_init(self.init(device)?, seed, scheme))
    }

    /// Builds a backbone initialised from Burn's RNG (use [`init_seeded`](Self::init_seeded) for
    /// repeatable weights; this is the cheaper choice when the weights are loaded right after).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Backbone<B>, BackboneError> {
        self.validate()?;
        let resnet = |kind| {
            Backbone::ResNet(
                ResNetConfig {
                    kind,
                    stem: self.stem(),
                    in_channels: self.in_channels,
                    num_classes: self.num_classes,
                }
                .init(device),
            )
        };
        Ok(match self.arch {
            Arch::ConvFc => Backbone::ConvFc(
                ConvFcConfig {
                    in_channels: self.in_channels,
                    input_size: self.input_size,
                    num_classes: self.num_classes,
                }
                .init(device),
            ),
            Arch::SmallCnn => Backbone::SmallCnn(
                SmallCnnConfig {
                    in_channels: self.in_channels,
                    num_classes: self.num_classes,
                }
                .init(device),
            ),
            Arch::Resnet32 => resnet(ResNetKind::Resnet32),
            Arch::Resnet34 => resnet(ResNetKind::Resnet34),
            Arch::Resnet50 => resnet(ResNetKind::Resnet50),
            Arch::Resnext50 => resnet(ResNetKind::Resnext50),
        })
    }
}

/// A backbone: pooled features `[N, D]` and the stage-1 classifier `fc`.
// There is one value per model, so the size difference of the variants costs nothing, and
// `derive(Module)` does not see through a `Box`.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Backbone<B: Backend> {
    /// [`ConvFc`].
    ConvFc(ConvFc<B>),
    /// [`SmallCnn`].
    SmallCnn(SmallCnn<B>),
    /// Any [`ResNet`].
    ResNet(ResNet<B>),
}

impl<B: Backend> Backbone<B> {
    /// Pooled features.
    ///
    /// # Shapes
    /// - input `[N, C, H, W]` → output `[N, D]`
    pub fn forward_features(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        match self {
            Backbone::ConvFc(m) => m.forward_features(x),
            Backbone::SmallCnn(m) => m.forward_features(x),
            Backbone::ResNet(m) => m.forward_features(x),
        }
    }

    /// Class logits of the stage-1 classifier.
    ///
    /// # Shapes
    /// - input `[N, C, H, W]` → output `[N, K]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.fc().forward(self.forward_features(x))
    }

    /// Trainable parameters, as PyTorch counts them: Burn's `num_params` also counts BatchNorm's
    /// running statistics (they are visited like parameters), which are buffers in PyTorch.
    pub fn num_trainable_params(&self) -> usize {
        use burn_store::ModuleSnapshot;
        self.collect(None, None, false)
            .iter()
            .filter(|s| {
                let path = s.full_path();
                !(path.ends_with(".running_mean") || path.ends_with(".running_var"))
            })
            .map(|s| s.shape.num_elements())
            .sum()
    }

    /// The classifier (`weight` is `[D, K]` in Burn's layout, the transpose of PyTorch's).
    pub fn fc(&self) -> &Linear<B> {
        match self {
            Backbone::ConvFc(m) => &m.fc,
            Backbone::SmallCnn(m) => &m.fc,
            Backbone::ResNet(m) => &m.fc,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{CpuBackend, CpuDevice};

    fn params(arch: Arch, num_classes: usize, in_channels: usize, input_size: usize) -> usize {
        BackboneConfig {
            arch,
            num_classes,
            in_channels,
            input_size,
        }
        .init::<CpuBackend>(&CpuDevice::default())
        .unwrap()
        .num_trainable_params()
    }

    // Reference counts: ltr-reference §7 (torchvision's published 21.8M/25.6M/25.0M).
    #[test]
    fn resnet32_parameter_count() {
        assert_eq!(params(Arch::Resnet32, 10, 3, 32), 464_154);
        assert_eq!(params(Arch::Resnet32, 100, 3, 32), 470_004);
    }

    #[test]
    fn resnet34_cifar_parameter_count() {
        assert_eq!(params(Arch::Resnet34, 100, 3, 32), 21_328_292);
    }

    #[test]
    fn conv_fc_parameter_count() {
        // PyTorch's count of the same layers (`bench/stage1_torch.py`).
        assert_eq!(params(Arch::ConvFc, 10, 1, 28), 421_642);
    }

    #[test]
    fn resnet50_parameter_count() {
        assert_eq!(params(Arch::Resnet50, 1000, 3, 224), 25_557_032);
    }

    #[test]
    fn resnext50_parameter_count() {
        assert_eq!(params(Arch::Resnext50, 1000, 3, 224), 25_028_904);
    }

    #[test]
    fn feature_shapes_match_the_schema() {
        let device = CpuDevice::default();
        for (arch, channels, side) in [
            (Arch::ConvFc, 1, 28),
            (Arch::ConvFc, 3, 32),
            (Arch::SmallCnn, 1, 28),
            (Arch::Resnet32, 3, 32),
            (Arch::Resnet34, 3, 32),
            (Arch::Resnet50, 3, 32),
        ] {
            let config = BackboneConfig {
                arch,
                num_classes: 7,
                in_channels: channels,
                input_size: side,
            };
            let model = config.init::<CpuBackend>(&device).unwrap();
            let x = Tensor::<CpuBackend, 4>::zeros([2, channels, side, side], &device);
            assert_eq!(
                model.forward_features(x.clone()).dims(),
                [2, arch.feature_dim()]
            );
            assert_eq!(model.forward(x).dims(), [2, 7]);
        }
    }

    #[test]
    fn seeded_init_is_a_function_of_the_seed_with_kaiming_scale() {
        let device = CpuDevice::default();
        let config = BackboneConfig {
            arch: Arch::Resnet32,
            num_classes: 10,
            in_channels: 3,
            input_size: 32,
        };
        let conv = |seed| -> Vec<f32> {
            match config.init_seeded::<CpuBackend>(seed, &device).unwrap() {
                Backbone::ResNet(m) => m.layer3[0].conv2.weight.val().into_data().to_vec().unwrap(),
                Backbone::SmallCnn(_) | Backbone::ConvFc(_) => unreachable!(),
            }
        };
        let (a, b) = (conv(1), conv(1));
        assert_eq!(a, b);
        assert_ne!(a, conv(2));
        // Kaiming normal, fan-in = 64·3·3: std = sqrt(2/576).
        let std = (a.iter().map(|v| v * v).sum::<f32>() / a.len() as f32).sqrt();
        assert!((std - (2.0f32 / 576.0).sqrt()).abs() < 0.005, "{std}");
    }

    /// `conv-fc` starts where the same network written in PyTorch does: every weight and bias
    /// `U(±1/√fan_in)`, biases included in the seeded draw (Burn's own init would make them
    /// depend on its process-wide RNG).
    #[test]
    fn conv_fc_seeded_init_has_pytorch_bounds_for_weights_and_biases() {
        let device = CpuDevice::default();
        let config = BackboneConfig {
            arch: Arch::ConvFc,
            num_classes: 10,
            in_channels: 1,
            input_size: 28,
        };
        let params = |seed| -> Vec<(Vec<f32>, f64)> {
            let Backbone::ConvFc(m) = config.init_seeded::<CpuBackend>(seed, &device).unwrap()
            else {
                unreachable!("a conv-fc config builds a ConvFc")
            };
            let read = |t: Tensor<CpuBackend, 1>| t.into_data().to_vec::<f32>().unwrap();
            let flat = |t: Tensor<CpuBackend, 4>| read(t.flatten(0, 3));
            vec![
                (flat(m.conv2.weight.val()), 1.0 / (32.0f64 * 9.0).sqrt()),
                (
                    read(m.conv2.bias.as_ref().unwrap().val()),
                    1.0 / (32.0f64 * 9.0).sqrt(),
                ),
                (read(m.conv1.bias.as_ref().unwrap().val()), 1.0 / 3.0),
                (
                    read(m.embed.bias.as_ref().unwrap().val()),
                    1.0 / 3136f64.sqrt(),
                ),
            ]
        };
        let a = params(5);
        assert_eq!(a, params(5));
        assert_ne!(a[1].0, params(6)[1].0, "biases are drawn from the seed");
        for (values, bound) in a {
            let max = values.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
            // Uniform on ±bound: the largest of ≥ 32 draws is close to the bound.
            assert!(
                max <= bound && max > 0.8 * bound,
                "max |v| {max}, bound {bound}"
            );
        }
    }

    #[test]
    fn config_round_trips_through_json() {
        let config = BackboneConfig {
            arch: Arch::Resnext50,
            num_classes: 1000,
            in_channels: 3,
            input_size: 224,
        };
        let json = serde_json::to_string(&config).unwrap();
        assert!(json.contains("resnext50-32x4d"), "{json}");
        assert_eq!(
            serde_json::from_str::<BackboneConfig>(&json).unwrap(),
            config
        );
    }
}
