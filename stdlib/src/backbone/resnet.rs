//! Residual networks in the torchvision layout: ResNet-32 (CIFAR, option-A shortcuts), ResNet-34
//! (CIFAR or ImageNet stem), ResNet-50 and ResNeXt-50 32x4d.
//!
//! Field names follow torchvision's `resnet.py` (`conv1`, `bn1`, `layer1.0.conv1`, …,
//! `downsample`, `fc`) so that checkpoints map onto the module by name; the only difference is that
//! torchvision's `downsample` is an `nn.Sequential` (`downsample.0`, `downsample.1`) and ours a
//! struct (`downsample.conv`, `downsample.bn`), which the importer remaps. One block type covers
//! basic and bottleneck blocks (a bottleneck has `conv3`/`bn3`), so the layer vectors need no enum
//! (an enum would add its variant name to every parameter path).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::fast_bn::{conv_bn, conv_bn_add_relu, conv_bn_relu};
use crate::kernels::{global_avg_pool, max_pool2d};

/// Which ResNet: decides the stem, the block type, the widths and the number of blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResNetKind {
    /// ResNet-32 of the LDAM-DRW code: 3x3 stem of 16, basic blocks 5/5/5 at 16/32/64,
    /// parameter-free "option A" shortcuts.
    Resnet32,
    /// ResNet-34: basic blocks 3/4/6/3 at 64/128/256/512.
    Resnet34,
    /// ResNet-50: bottlenecks 3/4/6/3 (expansion 4).
    Resnet50,
    /// ResNeXt-50 32x4d: ResNet-50 with grouped 3x3 convolutions (32 groups, width 4 per group).
    Resnext50,
}

/// The first convolution: 3x3 stride 1 without max-pool for small images, torchvision's 7x7
/// stride 2 plus 3x3 stride-2 max-pool otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stem {
    /// 3x3/1, no max-pool (CIFAR variants).
    Cifar,
    /// 7x7/2 + max-pool 3x3/2 (torchvision).
    Imagenet,
}

/// How a block's input reaches its output when shapes change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shortcut {
    /// `x` as is (same shape).
    Identity,
    /// 1x1 strided convolution + BatchNorm (`downsample`), torchvision's "option B".
    Projection,
    /// Subsample by the stride and zero-pad `pad` channels on each side (no parameters), the
    /// "option A" of He et al. used by the CIFAR ResNet-32.
    ZeroPad {
        /// The spatial stride.
        stride: usize,
        /// Channels added on each side.
        pad: usize,
    },
}

/// Convolution + BatchNorm on the shortcut path (torchvision's `downsample`).
#[derive(Module, Debug)]
pub struct Downsample<B: Backend> {
    /// 1x1 strided convolution.
    pub conv: Conv2d<B>,
    /// Its BatchNorm.
    pub bn: BatchNorm<B>,
}

/// A residual block: basic (`conv1`, `conv2`) or bottleneck (`conv1` 1x1, `conv2` 3x3, `conv3`
/// 1x1).
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// First convolution.
    pub conv1: Conv2d<B>,
    /// Its BatchNorm.
    pub bn1: BatchNorm<B>,
    /// Second convolution.
    pub conv2: Conv2d<B>,
    /// Its BatchNorm.
    pub bn2: BatchNorm<B>,
    /// Third convolution (bottleneck blocks only).
    pub conv3: Option<Conv2d<B>>,
    /// Its BatchNorm.
    pub bn3: Option<BatchNorm<B>>,
    /// Projection shortcut, when [`Shortcut::Projection`].
    pub downsample: Option<Downsample<B>>,
    /// The shortcut kind (not a parameter).
    pub shortcut: Shortcut,
}

impl<B: Backend> Block<B> {
    /// # Shapes
    /// - input `[N, C_in, H, W]` → output `[N, C_out, H/stride, W/stride]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let out = conv_bn_relu(&self.conv1, &self.bn1, x.clone());
        let identity = match (&self.shortcut, &self.downsample) {
            (Shortcut::Projection, Some(ds)) => conv_bn(&ds.conv, &ds.bn, x),
            (Shortcut::ZeroPad { stride, pad }, _) => zero_pad_shortcut(x, *stride, *pad),
            _ => x,
        };
        // The last convolution, its BatchNorm, the residual add and the ReLU: one pass in
        // inference.
        match (&self.conv3, &self.bn3) {
            (Some(conv3), Some(bn3)) => {
                let out = conv_bn_relu(&self.conv2, &self.bn2, out);
                conv_bn_add_relu(conv3, bn3, out, identity)
            }
            _ => conv_bn_add_relu(&self.conv2, &self.bn2, out, identity),
        }
    }
}

/// Option-A shortcut: `x[:, :, ::s, ::s]` padded with `pad` zero channels on both sides.
fn zero_pad_shortcut<B: Backend>(x: Tensor<B, 4>, stride: usize, pad: usize) -> Tensor<B, 4> {
    // A 1x1 max-pool with stride s is exactly the strided subsample, and every backend has it.
    let x = if stride > 1 {
        burn::tensor::module::max_pool2d(x, [1, 1], [stride, stride], [0, 0], [1, 1], false)
    } else {
        x
    };
    if pad == 0 {
        return x;
    }
    let [n, _, h, w] = x.dims();
    let zeros = Tensor::<B, 4>::zeros([n, pad, h, w], &x.device());
    Tensor::cat(vec![zeros.clone(), x, zeros], 1)
}

/// A ResNet/ResNeXt with a linear classifier.
#[derive(Module, Debug)]
pub struct ResNet<B: Backend> {
    /// Stem convolution.
    pub conv1: Conv2d<B>,
    /// Stem BatchNorm.
    pub bn1: BatchNorm<B>,
    /// Stage 1.
    pub layer1: Vec<Block<B>>,
    /// Stage 2.
    pub layer2: Vec<Block<B>>,
    /// Stage 3.
    pub layer3: Vec<Block<B>>,
    /// Stage 4 (empty for ResNet-32).
    pub layer4: Vec<Block<B>>,
    /// Classifier on the pooled features.
    pub fc: Linear<B>,
    /// Max-pool after the stem (torchvision stem only).
    pub maxpool: Option<MaxPool2d>,
    /// Feature dimension (not a parameter).
    pub feature_dim: usize,
}

/// Construction parameters of a [`ResNet`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResNetConfig {
    /// The architecture.
    pub kind: ResNetKind,
    /// The stem (ResNet-32 always uses [`Stem::Cifar`]).
    pub stem: Stem,
    /// Input channels.
    pub in_channels: usize,
    /// Classes of the classifier.
    pub num_classes: usize,
}

impl ResNetConfig {
    /// The feature dimension: 64, 512 or 2048.
    pub fn feature_dim(&self) -> usize {
        match self.kind {
            ResNetKind::Resnet32 => 64,
            ResNetKind::Resnet34 => 512,
            ResNetKind::Resnet50 | ResNetKind::Resnext50 => 2048,
        }
    }

    /// Builds the network with torchvision's initialisation (Kaiming normal, fan-out, on
    /// convolutions; BatchNorm 1/0; PyTorch's default for the classifier). ResNet-32 follows the
    /// LDAM code instead: Kaiming normal with fan-in on convolutions and the classifier.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ResNet<B> {
        let cifar_init = self.kind == ResNetKind::Resnet32;
        let conv_init = Initializer::KaimingNormal {
            gain: 2f64.sqrt(),
            fan_out_only: !cifar_init,
        };
        let conv = |c_in: usize, c_out: usize, k: usize, stride: usize, groups: usize| {
            Conv2dConfig::new([c_in, c_out], [k, k])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
                .with_groups(groups)
                .with_bias(false)
                .with_initializer(conv_init.clone())
                .init::<B>(device)
        };
        let bn = |c: usize| BatchNormConfig::new(c).init::<B>(device);

        let (stem_width, blocks, widths): (usize, &[usize], &[usize]) = match self.kind {
            ResNetKind::Resnet32 => (16, &[5, 5, 5], &[16, 32, 64]),
            _ => (64, &[3, 4, 6, 3], &[64, 128, 256, 512]),
        };
        let bottleneck = matches!(self.kind, ResNetKind::Resnet50 | ResNetKind::Resnext50);
        let (groups, width_per_group) = match self.kind {
            ResNetKind::Resnext50 => (32, 4),
            _ => (1, 64),
        };
        let expansion = if bottleneck { 4 } else { 1 };
        let stem = if self.kind == ResNetKind::Resnet32 {
            Stem::Cifar
        } else {
            self.stem
        };

        let (conv1, maxpool) = match stem {
            Stem::Cifar => (conv(self.in_channels, stem_width, 3, 1, 1), None),
            Stem::Imagenet => (
                conv(self.in_channels, stem_width, 7, 2, 1),
                Some(
                    MaxPool2dConfig::new([3, 3])
                        .with_strides([2, 2])
                        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                        .init(),
                ),
            ),
        };

        let mut in_planes = stem_width;
        let mut layers: Vec<Vec<Block<B>>> = Vec::new();
        for (stage, (&count, &planes)) in blocks.iter().zip(widths).enumerate() {
            let mut layer = Vec::with_capacity(count);
            for i in 0..count {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let out_planes = planes * expansion;
                let shortcut = if stride == 1 && in_planes == out_planes {
                    Shortcut::Identity
                } else if self.kind == ResNetKind::Resnet32 {
                    Shortcut::ZeroPad {
                        stride,
                        pad: (out_planes - in_planes) / 2,
                    }
                } else {
                    Shortcut::Projection
                };
                let downsample = (shortcut == Shortcut::Projection).then(|| Downsample {
                    conv: conv(in_planes, out_planes, 1, stride, 1),
                    bn: bn(out_planes),
                });
                let block = if bottleneck {
                    // torchvision: width = planes * (base_width / 64) * groups.
                    let width = planes * width_per_group / 64 * groups;
                    Block {
                        conv1: conv(in_planes, width, 1, 1, 1),
                        bn1: bn(width),
                        conv2: conv(width, width, 3, stride, groups),
                        bn2: bn(width),
                        conv3: Some(conv(width, out_planes, 1, 1, 1)),
                        bn3: Some(bn(out_planes)),
                        downsample,
                        shortcut,
                    }
                } else {
                    Block {
                        conv1: conv(in_planes, planes, 3, stride, 1),
                        bn1: bn(planes),
                        conv2: conv(planes, planes, 3, 1, 1),
                        bn2: bn(planes),
                        conv3: None,
                        bn3: None,
                        downsample,
                        shortcut,
                    }
                };
                layer.push(block);
                in_planes = out_planes;
            }
            layers.push(layer);
        }
        let mut layers = layers.into_iter();
        let mut next = || layers.next().unwrap_or_default();
        let (layer1, layer2, layer3, layer4) = (next(), next(), next(), next());

        let mut fc = LinearConfig::new(self.feature_dim(), self.num_classes);
        if cifar_init {
            fc = fc.with_initializer(Initializer::KaimingNormal {
                gain: 2f64.sqrt(),
                fan_out_only: false,
            });
        }
        ResNet {
            conv1,
            bn1: bn(stem_width),
            layer1,
            layer2,
            layer3,
            layer4,
            fc: fc.init(device),
            maxpool,
            feature_dim: self.feature_dim(),
        }
    }
}

impl<B: Backend> ResNet<B> {
    /// Pooled features.
    ///
    /// # Shapes
    /// - input `[N, C, H, W]` → output `[N, D]`
    pub fn forward_features(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut x = conv_bn_relu(&self.conv1, &self.bn1, x);
        if let Some(pool) = &self.maxpool {
            x = max_pool2d(pool, x);
        }
        for block in self
            .layer1
            .iter()
            .chain(&self.layer2)
            .chain(&self.layer3)
            .chain(&self.layer4)
        {
            x = block.forward(x);
        }
        // Global average pooling: AvgPool(4) on 32px CIFAR maps, AvgPool(7) on 224px images.
        global_avg_pool(x)
    }

    /// Class logits.
    ///
    /// # Shapes
    /// - input `[N, C, H, W]` → output `[N, K]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.fc.forward(self.forward_features(x))
    }
}
