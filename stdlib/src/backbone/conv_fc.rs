//! `conv-fc`: the plain network of PyTorch's and Keras' MNIST examples, for small grey images.
//!
//! conv3x3(32)-ReLU-maxpool2, conv3x3(64)-ReLU-maxpool2, the map flattened (64·7·7 = 3136 values
//! for 28x28 inputs), fc(128)-ReLU → 128 features, then `fc`. No BatchNorm: with a flattened
//! map the feature layer sees *where* a pattern is, which global average pooling (`small-cnn`)
//! throws away; on Fashion-MNIST-LT this is worth ~12 points of stage-1 accuracy under the same
//! recipe (`docs/reproducing-the-paper.md`, §5). The feature layer's input size follows the
//! image size (`64·⌊s/4⌋²`), so the network is built for one input size.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;

use crate::kernels::{Then, conv2d_forward_then, max_pool2d};

/// Feature dimension of [`ConvFc`].
pub const CONV_FC_FEATURE_DIM: usize = 128;

/// Channels of the second convolution, whose pooled map is flattened.
const MAP_CHANNELS: usize = 64;

/// The conv-fc network.
#[derive(Module, Debug)]
pub struct ConvFc<B: Backend> {
    /// 3x3 convolution, 32 channels, with bias.
    pub conv1: Conv2d<B>,
    /// 3x3 convolution, 64 channels, with bias.
    pub conv2: Conv2d<B>,
    /// 2x2 max-pool after each convolution.
    pub pool: MaxPool2d,
    /// The feature layer: flattened map → 128.
    pub embed: Linear<B>,
    /// Classifier.
    pub fc: Linear<B>,
}

/// Builds a [`ConvFc`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvFcConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Input side (square images).
    pub input_size: usize,
    /// Classes.
    pub num_classes: usize,
}

impl ConvFcConfig {
    /// The length of the flattened map for this input size.
    pub fn map_len(&self) -> usize {
        let side = self.input_size / 4;
        MAP_CHANNELS * side * side
    }

    /// Initialises the network (the weights are redrawn by the seeded initialisation).
    pub fn init<B: Backend>(&self, device: &B::Device) -> ConvFc<B> {
        let conv = |c_in: usize, c_out: usize| {
            Conv2dConfig::new([c_in, c_out], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        ConvFc {
            conv1: conv(self.in_channels, 32),
            conv2: conv(32, MAP_CHANNELS),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            embed: LinearConfig::new(self.map_len(), CONV_FC_FEATURE_DIM).init(device),
            fc: LinearConfig::new(CONV_FC_FEATURE_DIM, self.num_classes).init(device),
        }
    }
}

impl<B: Backend> ConvFc<B> {
    /// Features: the feature layer's output after ReLU.
    ///
    /// # Shapes
    /// - input `[N, C, s, s]` (the size it was built for) → output `[N, 128]`
    pub fn forward_features(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let x = max_pool2d(&self.pool, conv2d_forward_then(&self.conv1, x, Then::Relu));
        let x = max_pool2d(&self.pool, conv2d_forward_then(&self.conv2, x, Then::Relu));
        relu(self.embed.forward(x.flatten(1, 3)))
    }

    /// Class logits.
    ///
    /// # Shapes
    /// - input `[N, C, s, s]` → output `[N, K]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.fc.forward(self.forward_features(x))
    }
}
