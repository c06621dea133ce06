//! The named image datasets, so that a pipeline can say `fashion-mnist` and a root directory and
//! get [`LabeledImages`] without knowing the file formats.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::base::{LabeledImages, Split};
use super::cifar::{CifarVariant, load_cifar};
use super::error::DatasetError;
use super::mnist::{MNIST_NUM_CLASSES, load_mnist_like};

/// A dataset that lives in files under a root directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageDataset {
    /// MNIST digits (IDX files).
    Mnist,
    /// Fashion-MNIST (IDX files); vendored under `data/fashion-mnist`.
    FashionMnist,
    /// CIFAR-10, binary version.
    Cifar10,
    /// CIFAR-100, binary version, fine labels.
    Cifar100,
}

impl ImageDataset {
    /// Number of classes.
    pub fn num_classes(self) -> usize {
        match self {
            ImageDataset::Mnist | ImageDataset::FashionMnist => MNIST_NUM_CLASSES,
            ImageDataset::Cifar10 => CifarVariant::Cifar10.num_classes(),
            ImageDataset::Cifar100 => CifarVariant::Cifar100.num_classes(),
        }
    }

    /// Loads `split` from the files under `root`.
    pub fn load(self, root: &Path, split: Split) -> Result<LabeledImages, DatasetError> {
        match self {
            ImageDataset::Mnist | ImageDataset::FashionMnist => load_mnist_like(root, split),
            ImageDataset::Cifar10 => load_cifar(root, CifarVariant::Cifar10, split),
            ImageDataset::Cifar100 => load_cifar(root, CifarVariant::Cifar100, split),
        }
    }
}

impl fmt::Display for ImageDataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImageDataset::Mnist => "mnist",
            ImageDataset::FashionMnist => "fashion-mnist",
            ImageDataset::Cifar10 => "cifar10",
            ImageDataset::Cifar100 => "cifar100",
        })
    }
}
