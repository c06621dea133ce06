//! Backbones on Burn: the architectures, first-stage training, checkpoints and the import of
//! torchvision-layout state dicts.

mod base;
mod error;
pub mod resnet;
pub mod small_cnn;

pub use base::{Backbone, BackboneConfig, CIFAR_STEM_MAX_SIDE, arch_name};
pub use error::BackboneError;
