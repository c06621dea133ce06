//! Backbones on Burn: the architectures ([`BackboneConfig::init`]), first-stage training
//! ([`train_backbone`]), Burn checkpoints ([`save_backbone`], [`load_backbone`]) and the import
//! of torchvision-layout state dicts ([`import_backbone`]).
//!
//! Every backbone exposes `forward_features(x) -> [N, D]` (D = [`Arch::feature_dim`]: the
//! global average pooled map, or `conv-fc`'s feature layer) and keeps its stage-1 classifier `fc`, so heads can start from it.

mod arch;
mod base;
mod checkpoint;
pub mod conv_fc;
mod error;
mod export;
mod fast_bn;
mod import;
mod init;
pub mod loss;
mod parallel;
pub mod resnet;
pub mod schedule;
pub mod small_cnn;
mod torch_names;
mod train;

pub use arch::Arch;
pub use base::{Backbone, BackboneConfig, CIFAR_STEM_MAX_SIDE};
pub use checkpoint::{
    BACKBONE_CONFIG, BACKBONE_RECORD, EpochStats, load_backbone, load_backbone_config,
    save_backbone,
};
pub use error::BackboneError;
pub use export::{TorchValues, export_torch, torch_state_dict};
pub use import::{
    CheckpointFormat, CheckpointMapping, ClassifierKind, ImportReport, import_backbone,
};
pub use loss::Stage1Loss;
pub use parallel::ReplicaDevices;
pub use schedule::BackboneSchedule;
pub use torch_names::classifier_name;
pub use train::{
    DEFAULT_PREFETCH, TrainConfig, TrainData, TrainProgress, evaluate_accuracy, inference_model,
    train_backbone, training_history,
};

#[cfg(test)]
mod tests;
