//! A `backbone` stage's IR: its architecture, training recipe, sampler, augmentation,
//! normalisation and the checkpoint it may load.

use lortflow_data::dataset::LabeledImages;
use lortflow_data::input::{DataError, Normalization, SamplerKind, Transform};
use lortflow_lang::ir::{
    self, Augment, BackboneSampler, BackboneTrain, FirstStageLoss, Normalize, Schedule,
};

use crate::backbone::{
    Arch, BackboneError, BackboneSchedule, CheckpointFormat, ClassifierKind, DEFAULT_PREFETCH,
    Stage1Loss, TrainConfig,
};

/// The architecture.
pub(crate) fn arch(arch: ir::Arch) -> Arch {
    match arch {
        ir::Arch::ConvFc => Arch::ConvFc,
        ir::Arch::SmallCnn => Arch::SmallCnn,
        ir::Arch::Resnet32 => Arch::Resnet32,
        ir::Arch::Resnet34 => Arch::Resnet34,
        ir::Arch::Resnet50 => Arch::Resnet50,
        ir::Arch::Resnext50 => Arch::Resnext50,
    }
}

/// A checkpoint's file format.
pub(crate) fn checkpoint_format(format: ir::CheckpointFormat) -> CheckpointFormat {
    match format {
        ir::CheckpointFormat::Auto => CheckpointFormat::Auto,
        ir::CheckpointFormat::Safetensors => CheckpointFormat::Safetensors,
        ir::CheckpointFormat::Pytorch => CheckpointFormat::Pytorch,
        ir::CheckpointFormat::Burn => CheckpointFormat::Burn,
    }
}

/// A checkpoint's classifier kind.
pub(crate) fn classifier_kind(kind: ir::ClassifierKind) -> ClassifierKind {
    match kind {
        ir::ClassifierKind::Auto => ClassifierKind::Auto,
        ir::ClassifierKind::Linear => ClassifierKind::Linear,
        ir::ClassifierKind::NormedLinear => ClassifierKind::NormedLinear,
    }
}

/// The pipeline's name of the classifier kind an import found, for the stage's summary.
pub(crate) fn classifier_kind_name(kind: ClassifierKind) -> &'static str {
    match kind {
        ClassifierKind::Auto => ir::ClassifierKind::Auto,
        ClassifierKind::Linear => ir::ClassifierKind::Linear,
        ClassifierKind::NormedLinear => ir::ClassifierKind::NormedLinear,
    }
    .name()
}

/// The `train` node as a validated [`TrainConfig`] (range-checked by the linter already, checked
/// again by [`TrainConfig::validate`] because the library may be called directly).
pub(crate) fn train_config(train: &BackboneTrain) -> Result<TrainConfig, BackboneError> {
    let epochs = train.epochs as usize;
    let config = TrainConfig {
        epochs,
        batch_size: train.batch_size as usize,
        lr: train.lr,
        momentum: train.momentum,
        weight_decay: train.weight_decay,
        schedule: schedule(train.schedule),
        warmup_epochs: train.warmup_epochs as usize,
        loss: stage1_loss(train.loss, epochs),
        sampler: sampler(train.sampler),
        seed: train.seed,
        prefetch: DEFAULT_PREFETCH,
    };
    config.validate()?;
    Ok(config)
}

/// The first-stage loss with its reference code's constants, DRW switching on at 80% of `epochs`.
pub(crate) fn stage1_loss(loss: FirstStageLoss, epochs: usize) -> Stage1Loss {
    match loss {
        FirstStageLoss::Ce => Stage1Loss::Ce,
        FirstStageLoss::CeDrw => Stage1Loss::ce_drw(epochs),
        FirstStageLoss::LdamDrw => Stage1Loss::ldam_drw(epochs),
        FirstStageLoss::BalancedSoftmax => Stage1Loss::BalancedSoftmax,
    }
}

/// The per-epoch learning-rate schedule.
pub(crate) fn schedule(schedule: Schedule) -> BackboneSchedule {
    match schedule {
        Schedule::Cosine => BackboneSchedule::Cosine,
        Schedule::Step => BackboneSchedule::Step,
        Schedule::Constant => BackboneSchedule::Constant,
    }
}

/// The sampler; `class-balanced` draws 4 per class visit, as cRT.
pub(crate) fn sampler(sampler: BackboneSampler) -> SamplerKind {
    match sampler {
        BackboneSampler::Instance => SamplerKind::Instance,
        BackboneSampler::ClassBalanced => SamplerKind::ClassBalanced { per_class: 4 },
        BackboneSampler::Sqrt => SamplerKind::Sqrt,
    }
}

/// The `augment` nodes, in order.
pub(crate) fn transforms(augment: &[Augment]) -> Vec<Transform> {
    augment
        .iter()
        .map(|augment| match *augment {
            Augment::RandomCrop { padding } => Transform::RandomCrop {
                padding: padding as usize,
            },
            Augment::RandomResizedCrop { size, min_scale } => Transform::RandomResizedCrop {
                size: size as usize,
                min_scale,
            },
            Augment::Hflip { p } => Transform::Hflip { p },
            Augment::ColorJitter {
                brightness,
                contrast,
                saturation,
                hue,
            } => Transform::ColorJitter {
                brightness,
                contrast,
                saturation,
                hue,
            },
        })
        .collect()
}

/// The statistics `normalize` names: computed on the images `ids` of `data` (`dataset`), a
/// published set, or none.
pub(crate) fn normalization(
    preset: Normalize,
    data: &LabeledImages,
    ids: &[u32],
) -> Result<Normalization, DataError> {
    match preset {
        Normalize::Dataset => Normalization::from_data(data, ids),
        _ => published_normalization(preset, data.images().channels()),
    }
}

/// The statistics of a preset that does not read the data (`dataset` is computed by the caller).
pub(crate) fn published_normalization(
    preset: Normalize,
    channels: usize,
) -> Result<Normalization, DataError> {
    match preset {
        Normalize::Cifar => Normalization::cifar().for_channels(preset.name(), channels),
        Normalize::Imagenet => Normalization::imagenet().for_channels(preset.name(), channels),
        Normalize::Inat => Normalization::inat().for_channels(preset.name(), channels),
        Normalize::None | Normalize::Dataset => Ok(Normalization::none(channels)),
    }
}

#[cfg(test)]
mod tests {
    use lortflow_data::dataset::PatternImagesConfig;

    use super::*;

    /// `backbone.json` names an architecture as the language does.
    #[test]
    fn every_architecture_has_the_languages_name() {
        for name in ir::Arch::NAMES {
            let ir = ir::Arch::from_name(name).unwrap();
            assert_eq!(arch(ir).name(), *name);
            assert_eq!(Arch::from_name(name), Some(arch(ir)));
        }
        assert_eq!(Arch::ALL.len(), ir::Arch::NAMES.len());
    }

    #[test]
    fn published_statistics_need_three_channels_and_dataset_statistics_are_computed() {
        let data = PatternImagesConfig {
            per_class: 2,
            ..Default::default()
        }
        .generate()
        .unwrap();
        let ids: Vec<u32> = (0..data.len() as u32).collect();
        let stats = normalization(Normalize::Dataset, &data, &ids).unwrap();
        assert_eq!(stats, Normalization::from_data(&data, &ids).unwrap());
        assert!(matches!(
            normalization(Normalize::Cifar, &data, &ids),
            Err(DataError::ChannelMismatch { .. })
        ));
        assert_eq!(
            normalization(Normalize::None, &data, &ids).unwrap(),
            Normalization::none(1)
        );
    }

    #[test]
    fn drw_switches_on_at_four_fifths_of_the_epochs() {
        assert_eq!(
            stage1_loss(FirstStageLoss::CeDrw, 200),
            Stage1Loss::CeDrw {
                drw_epoch: 160,
                beta: crate::backbone::loss::DRW_BETA
            }
        );
    }
}
