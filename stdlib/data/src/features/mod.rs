//! Feature files: `features.safetensors` as the features stage writes it ([`FeatureWriter`],
//! memory-mapped by [`FeatureFile`]), and `.npy` for users who bring features from Python
//! ([`npy`]).
//!
//! Feature matrices are `f32`, row-major `[N, D]`; labels are class indices. Readers hand out
//! `&[f32]` borrowed from a read-only memory mapping, so a sweep of many heads shares one copy of
//! the features in the page cache.

mod error;
mod file;
pub mod npy;

pub use error::FeaturesError;
pub use file::{FEATURES_TENSOR, FeatureFile, FeatureWriter, LABELS_TENSOR, write_features};
pub use npy::{LabelDtype, NpyF32, NpyFile, write_npy_f32, write_npy_f32_vector, write_npy_labels};

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

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
}
