//! Frozen features: running a backbone in inference mode over a split ([`extract_features`]) and
//! streaming them into a `features.safetensors` file of `lortflow_data::features`.

mod error;
mod extract;

pub use error::ExtractError;
pub use extract::{Tta, extract_features, extract_features_on};

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::backbone::{Arch, BackboneConfig};
    use crate::backend::{CpuAutodiff, CpuBackend, CpuDevice};
    use lortflow_data::dataset::PatternImagesConfig;
    use lortflow_data::features::FeatureFile;
    use lortflow_data::input::{ImageInput, ImagePipeline, Normalization};

    #[test]
    fn extraction_writes_one_row_per_sample_and_tta_averages() {
        let device = CpuDevice::default();
        let data = PatternImagesConfig {
            per_class: 3,
            ..Default::default()
        }
        .generate()
        .unwrap();
        let config = BackboneConfig {
            arch: Arch::SmallCnn,
            num_classes: 10,
            in_channels: 1,
            input_size: 28,
        };
        let model = config.init::<CpuBackend>(&device).unwrap();
        let ids: Vec<u32> = (0..data.len() as u32).rev().collect();
        let pipeline = ImagePipeline::new(
            vec![],
            Normalization::from_data(&data, &ids).unwrap(),
            data.images().shape(),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cancel = AtomicBool::new(false);
        let run = |tta: Tta, batch: usize, name: &str| {
            let path = dir.path().join(name);
            extract_features(
                &model,
                ImageInput::Memory {
                    images: &data,
                    pipeline: &pipeline,
                },
                &ids,
                tta,
                batch,
                &path,
                &BTreeMap::new(),
                &cancel,
                &device,
            )
            .unwrap();
            FeatureFile::open(&path).unwrap()
        };
        let plain = run(Tta::None, 7, "a.safetensors");
        assert_eq!((plain.rows(), plain.dim()), (30, 128));
        let expected: Vec<u32> = ids.iter().map(|&i| data.labels()[i as usize]).collect();
        assert_eq!(plain.labels(), expected.as_slice());
        // Inference mode: batch size does not change the features.
        let other = run(Tta::None, 30, "b.safetensors");
        for (a, b) in plain.features().iter().zip(other.features()) {
            assert!((a - b).abs() < 1e-4);
        }
        // Split over three copies of the model (three CPU "devices"), batches of 7 as runs of
        // 3, 2 and 2 rows: the same rows in the same order.
        let copies = [model.clone(), model.clone(), model.clone()];
        let replicas: Vec<_> = copies.iter().map(|m| (m, &device)).collect();
        let split_path = dir.path().join("split.safetensors");
        extract_features_on(
            &replicas,
            ImageInput::Memory {
                images: &data,
                pipeline: &pipeline,
            },
            &ids,
            Tta::None,
            7,
            &split_path,
            &BTreeMap::new(),
            &cancel,
        )
        .unwrap();
        let split = FeatureFile::open(&split_path).unwrap();
        assert_eq!(split.labels(), plain.labels());
        for (a, b) in plain.features().iter().zip(split.features()) {
            assert!((a - b).abs() < 1e-4);
        }
        let tta = run(Tta::Hflip, 7, "c.safetensors");
        assert_eq!(tta.metadata().get("tta").map(String::as_str), Some("hflip"));
        assert_ne!(tta.features(), plain.features());
        // An autodiff model would run BatchNorm in training mode: refused.
        let ad = config.init::<CpuAutodiff>(&device).unwrap();
        let err = extract_features(
            &ad,
            ImageInput::Memory {
                images: &data,
                pipeline: &pipeline,
            },
            &ids,
            Tta::None,
            8,
            &dir.path().join("d"),
            &BTreeMap::new(),
            &cancel,
            &device,
        )
        .unwrap_err();
        assert!(matches!(err, ExtractError::AutodiffModel));
    }
}
