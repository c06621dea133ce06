//! The data layer: readers for IDX (MNIST, Fashion-MNIST) and CIFAR binary files, the listings of
//! image lists (ImageNet-LT format), iNaturalist annotation files and class folders, downloads of the
//! datasets with official URLs, seeded synthetic data, long-tailed subsets and many/medium/few
//! groups.
//!
//! Everything here is plain Rust on `u8`/`f32` buffers, with no tensor library, so that it can be
//! tested in milliseconds and reused by any backend. Sources produce [`LabeledImages`] or
//! [`LabeledFeatures`]; [`LongTailConfig::build`] turns a split's labels into a [`LongTailIndex`]
//! of kept sample ids; [`GroupConfig::assign`] turns its class counts into [`ClassGroups`].
//!
//! ```
//! use lortflow_data::dataset::{GroupConfig, LongTailConfig, PatternImagesConfig};
//!
//! let train = PatternImagesConfig { per_class: 50, ..Default::default() }.generate()?;
//! let config = LongTailConfig { imbalance_ratio: 10.0, ..Default::default() };
//! let index = config.build(train.labels(), train.num_classes())?;
//! assert_eq!(index.class_counts, [50, 38, 29, 23, 17, 13, 10, 8, 6, 5]);
//! let subset = train.select(&index.sample_ids)?;
//! assert_eq!(subset.images().shape(), [199, 1, 28, 28]);
//! let groups = GroupConfig::default().assign(&index.class_counts)?;
//! assert_eq!(groups.sizes(), [0, 4, 6]); // many > 100, few < 20
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod base;
mod cifar;
pub(crate) mod download;
mod error;
mod groups;
mod idx;
mod image_folder;
mod image_list;
mod inat;
mod long_tail;
mod mnist;
pub mod rng;
mod source;
mod synthetic;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;

pub use base::class_counts;
pub use base::{ImageTensorU8, LabeledFeatures, LabeledImages, Split};
pub use cifar::{CIFAR_IMAGE_BYTES, CifarVariant, load_cifar, read_cifar_files};
pub use download::{
    DownloadProgress, DownloadSpec, ProgressFn, RemoteFile, dataset_present, download_file,
    ensure_downloaded, md5_of,
};
pub use error::{DatasetError, LongTailError, ManualDownload};
pub use groups::{Boundary, ClassGroups, Group, GroupConfig, GroupMeans, Thresholds};
pub use idx::{IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, read_idx_images, read_idx_labels};
pub use image_folder::ImageFolderSource;
pub use image_list::{
    FileOrigin, ImageListSource, ImageSplits, ListEntry, SplitFiles, read_image_list,
};
pub use inat::{Inat2018Source, InatImage, read_inat_json};
pub use long_tail::{
    ClassOrder, ImbalanceProfile, LongTailConfig, LongTailIndex, SampleSelection, profile_counts,
};
pub use mnist::{FASHION_MNIST_CLASSES, MNIST_NUM_CLASSES, load_mnist_like};
pub use rng::Rng;
pub use source::ImageDataset;
pub use synthetic::{GaussianClustersConfig, PatternImagesConfig};
