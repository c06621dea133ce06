//! The feature matrices of a head-training call on the device, uploaded once and shared by
//! its groups and by prediction.

use std::cell::OnceCell;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::base::FeatureView;
use super::inference::NORM_EPS;

/// The feature matrices on the device, each uploaded on first use and then shared by all groups
/// of the call: the train matrix as is (autodiff path), with a constant-1 column (analytic path,
/// which folds the bias into the matmul), row-normalised (cosine heads), and the test matrix.
pub(crate) struct DeviceData<'f, B: Backend> {
    device: B::Device,
    features: FeatureView<'f>,
    train: OnceCell<Tensor<B, 2>>,
    train_augmented: OnceCell<Tensor<B, 2>>,
    train_normalized: OnceCell<Tensor<B, 2>>,
    test: OnceCell<Tensor<B, 2>>,
    test_normalized: OnceCell<Tensor<B, 2>>,
}

impl<'f, B: Backend> DeviceData<'f, B> {
    pub(crate) fn new(device: &B::Device, features: &FeatureView<'f>) -> Self {
        Self {
            device: device.clone(),
            features: *features,
            train: OnceCell::new(),
            train_augmented: OnceCell::new(),
            train_normalized: OnceCell::new(),
            test: OnceCell::new(),
            test_normalized: OnceCell::new(),
        }
    }

    fn upload(&self, values: &[f32], rows: usize, cols: usize) -> Tensor<B, 2> {
        Tensor::from_data(TensorData::new(values.to_vec(), [rows, cols]), &self.device)
    }

    pub(crate) fn train(&self, normalized: bool) -> Tensor<B, 2> {
        let f = &self.features;
        self.split(
            &self.train,
            &self.train_normalized,
            f.train,
            f.num_train(),
            normalized,
        )
    }

    /// A split uploaded once (and row-normalised once, for cosine heads), on first use.
    fn split(
        &self,
        plain: &OnceCell<Tensor<B, 2>>,
        normalized_cell: &OnceCell<Tensor<B, 2>>,
        values: &[f32],
        rows: usize,
        normalized: bool,
    ) -> Tensor<B, 2> {
        let plain = || {
            plain
                .get_or_init(|| self.upload(values, rows, self.features.dim))
                .clone()
        };
        if normalized {
            normalized_cell
                .get_or_init(|| normalize_rows(plain()))
                .clone()
        } else {
            plain()
        }
    }

    /// `[N, D+1]`: every row followed by a 1.
    pub(crate) fn train_augmented(&self) -> Tensor<B, 2> {
        self.train_augmented
            .get_or_init(|| {
                let f = &self.features;
                let values: Vec<f32> = f
                    .train
                    .chunks(f.dim)
                    .flat_map(|row| row.iter().copied().chain([1.0]))
                    .collect();
                Tensor::from_data(
                    TensorData::new(values, [f.num_train(), f.dim + 1]),
                    &self.device,
                )
            })
            .clone()
    }

    pub(crate) fn test(&self, normalized: bool) -> Tensor<B, 2> {
        let f = &self.features;
        self.split(
            &self.test,
            &self.test_normalized,
            f.test,
            f.num_test(),
            normalized,
        )
    }

    /// Rows `ids` of the train features, `[ids.len(), D]` (normalised for cosine heads).
    pub(crate) fn train_rows(&self, ids: &[u32], normalized: bool) -> Tensor<B, 2> {
        let f = &self.features;
        let d = f.dim;
        let values: Vec<f32> = ids
            .iter()
            .flat_map(|&i| {
                f.train[i as usize * d..(i as usize + 1) * d]
                    .iter()
                    .copied()
            })
            .collect();
        let rows = self.upload(&values, ids.len(), d);
        if normalized {
            normalize_rows(rows)
        } else {
            rows
        }
    }
}

/// Rows scaled to unit norm (`F.normalize(x, dim=-1)`), for any rank.
fn normalize_rows<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let norm = x.clone().square().sum_dim(D - 1).sqrt().clamp_min(NORM_EPS);
    x / norm
}
