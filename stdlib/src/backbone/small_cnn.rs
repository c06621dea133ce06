//! A small CNN for 28x28 grey images (Fashion-MNIST-LT), fast enough to train on a CPU.
//!
//! conv3x3(32)-BN-ReLU-maxpool2, conv3x3(64)-BN-ReLU-maxpool2, conv3x3(128)-BN-ReLU, global
//! average pool → 128 features, then `fc`. BatchNorm makes it train with the same learning rates
//! as the ResNets, and global pooling lets it take any input size.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::fast_bn::conv_bn_relu;
use crate::kernels::{global_avg_pool, max_pool2d};

/// Feature dimension of [`SmallCnn`].
pub const SMALL_CNN_FEATURE_DIM: usize = 128;

/// The small CNN.
#[derive(Module, Debug)]
pub struct SmallCnn<B: Backend> {
    /// 3x3 convolution, 32 channels.
    pub conv1: Conv2d<B>,
    /// Its BatchNorm.
    pub bn1: BatchNorm<B>,
    /// 3x3 convolution, 64 channels.
    pub conv2: Conv2d<B>,
    /// Its BatchNorm.
    pub bn2: BatchNorm<B>,
    /// 3x3 convolution, 128 channels.
    pub conv3: Conv2d<B>,
    /// Its BatchNorm.
    pub bn3: BatchNorm<B>,
    /// 2x2 max-pool after the first two blocks.
    pub pool: MaxPool2d,
    /// Classifier.
    pub fc: Linear<B>,
}

/// Builds a [`SmallCnn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmallCnnConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Classes.
    pub num_classes: usize,
}

impl SmallCnnConfig {
    /// Initialises the network (Kaiming normal fan-out on convolutions, as the ResNets).
    pub fn init<B: Backend>(&self, device: &B::Device) -> SmallCnn<B> {
        let conv = |c_in: usize, c_out: usize| {
            Conv2dConfig::new([c_in, c_out], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                // BatchNorm follows, so a bias would be redundant.
                .with_bias(false)
                .with_initializer(Initializer::KaimingNormal {
                    gain: 2f64.sqrt(),
                    fan_out_only: true,
                })
                .init(device)
        };
        let bn = |c: usize| BatchNormConfig::new(c).init(device);
        SmallCnn {
            conv1: conv(self.in_channels, 32),
            bn1: bn(32),
            conv2: conv(32, 64),
            bn2: bn(64),
            conv3: conv(64, SMALL_CNN_FEATURE_DIM),
            bn3: bn(SMALL_CNN_FEATURE_DIM),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            fc: LinearConfig::new(SMALL_CNN_FEATURE_DIM, self.num_classes).init(device),
        }
    }
}

impl<B: Backend> SmallCnn<B> {
    /// Pooled features.
    ///
    /// # Shapes
    /// - input `[N, C, 28, 28]` (any size ≥ 4) → output `[N, 128]`
    pub fn forward_features(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let x = max_pool2d(&self.pool, conv_bn_relu(&self.conv1, &self.bn1, x)); // [N, 32, 14, 14]
        let x = max_pool2d(&self.pool, conv_bn_relu(&self.conv2, &self.bn2, x)); // [N, 64, 7, 7]
        let x = conv_bn_relu(&self.conv3, &self.bn3, x); // [N, 128, 7, 7]
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
