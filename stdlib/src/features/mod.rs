//! Frozen features: running a backbone in inference mode over a split ([`extract_features`]),
//! the `features.safetensors` files it writes ([`FeatureWriter`], memory-mapped by
//! [`FeatureFile`]), and `.npy` for users who bring features from Python ([`npy`]).
//!
//! Feature matrices are `f32`, row-major `[N, D]`; labels are class indices. Readers hand out
//! `&[f32]` borrowed from a read-only memory mapping, so a sweep of many heads shares one copy of
//! the features in the page cache.

mod error;
mod extract;
mod file;
pub mod npy;

pub use error::FeaturesError;
pub use extract::{Tta, extract_features};
pub use file::{FEATURES_TENSOR, FeatureFile, FeatureWriter, LABELS_TENSOR, write_features};
pub use npy::{LabelDtype, NpyF32, NpyFile, write_npy_f32, write_npy_f32_vector, write_npy_labels};

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicBool;

    use lortflow_lang::ir::Arch;

    use super::*;
    use crate::backbone::BackboneConfig;
    use crate::backend::{CpuAutodiff, CpuBackend, CpuDevice};
    use crate::data::{ImagePipeline, Normalization};
    use crate::dataset::PatternImagesConfig;

    #[test]
    fn features_file_round_trip_is_readable_by_the_reference_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("features.safetensors");
        let features: Vec<f32> = (0..15).map(|i| i as f32 / 3.0).collect();
        write_features(&path, &features, 5, &[2, 0, 1]).unwrap();
        let file = FeatureFile::open(&path).unwrap();
        assert_eq!((file.rows(), file.dim()), (3, 5));
        assert_eq!(file.features(), features.as_slice());
        assert_eq!(file.labels(), [2, 0, 1]);
        assert_eq!(file.row(1).unwrap(), &features[5..10]);
        // The reference implementation reads what we wrote.
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor(FEATURES_TENSOR).unwrap().shape(), [3, 5]);
        assert_eq!(
            st.tensor(LABELS_TENSOR).unwrap().dtype(),
            safetensors::Dtype::I64
        );
    }

    #[test]
    fn a_short_or_corrupt_features_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.safetensors");
        let mut writer = FeatureWriter::create(&path, 2, vec![0, 1], &BTreeMap::new()).unwrap();
        writer.write_rows(&[1.0, 2.0]).unwrap();
        assert!(writer.finish().is_err());
        std::fs::write(&path, b"garbage").unwrap();
        assert!(FeatureFile::open(&path).is_err());
    }

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
                &data,
                &ids,
                &pipeline,
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
        let tta = run(Tta::Hflip, 7, "c.safetensors");
        assert_eq!(tta.metadata().get("tta").map(String::as_str), Some("hflip"));
        assert_ne!(tta.features(), plain.features());
        // An autodiff model would run BatchNorm in training mode: refused.
        let ad = config.init::<CpuAutodiff>(&device).unwrap();
        let err = extract_features(
            &ad,
            &data,
            &ids,
            &pipeline,
            Tta::None,
            8,
            &dir.path().join("d"),
            &BTreeMap::new(),
            &cancel,
            &device,
        )
        .unwrap_err();
        assert!(matches!(err, FeaturesError::AutodiffModel));
    }
}
