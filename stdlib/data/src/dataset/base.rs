//! In-memory types shared by every data source: an `N×C×H×W` tensor of `u8` pixels, the same with
//! labels, and labelled feature vectors.
//!
//! Every reader (IDX, CIFAR binary, synthetic) produces these types, so that the long-tail
//! construction and the stages downstream never need to know where the data came from. The fields
//! are private so that the shape invariant (`pixels.len() == n·c·h·w`, one label per image, every
//! label below `num_classes`) is checked once, at construction, and can be relied on afterwards.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::error::DatasetError;

/// Which split of a dataset to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    /// The training split; long-tailed subsets are drawn from it.
    Train,
    /// The (balanced) test split; it is never subsampled.
    Test,
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Test => "test",
        })
    }
}

/// A batch of `u8` images in `N×C×H×W` layout: each image is stored channel-major (all of
/// channel 0 row by row, then channel 1, …), the layout of both CIFAR records and Burn tensors.
#[derive(Clone, PartialEq, Eq)]
pub struct ImageTensorU8 {
    len: usize,
    channels: usize,
    height: usize,
    width: usize,
    pixels: Vec<u8>,
}

impl ImageTensorU8 {
    /// Wraps `pixels` as `len` images of shape `channels×height×width`.
    ///
    /// Fails when a dimension of an image is zero, when the shape overflows `usize`, or when
    /// `pixels` does not hold exactly `len·channels·height·width` bytes.
    pub fn new(
        len: usize,
        channels: usize,
        height: usize,
        width: usize,
        pixels: Vec<u8>,
    ) -> Result<Self, DatasetError> {
        if channels == 0 || height == 0 || width == 0 {
            return Err(DatasetError::EmptyImageShape {
                channels,
                height,
                width,
            });
        }
        let expected = [len, channels, height, width]
            .into_iter()
            .try_fold(1usize, usize::checked_mul)
            .ok_or(DatasetError::ShapeOverflow {
                shape: [len, channels, height, width],
            })?;
        if pixels.len() != expected {
            return Err(DatasetError::PixelCount {
                shape: [len, channels, height, width],
                expected,
                actual: pixels.len(),
            });
        }
        Ok(Self {
            len,
            channels,
            height,
            width,
            pixels,
        })
    }

    /// Number of images (`N`).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the batch holds no image.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Channels per image (`C`): 1 for (Fashion-)MNIST, 3 for CIFAR.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Image height in pixels (`H`).
    pub fn height(&self) -> usize {
        self.height
    }

    /// Image width in pixels (`W`).
    pub fn width(&self) -> usize {
        self.width
    }

    /// `[N, C, H, W]`.
    pub fn shape(&self) -> [usize; 4] {
        [self.len, self.channels, self.height, self.width]
    }

    /// Bytes per image (`C·H·W`).
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// All pixels, image after image.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// The pixels of image `index` in `C×H×W` order, or `None` when out of range.
    pub fn image(&self, index: usize) -> Option<&[u8]> {
        let n = self.image_len();
        self.pixels
            .get(index.checked_mul(n)?..index.checked_add(1)?.checked_mul(n)?)
    }

    /// Consumes the batch and returns its pixel buffer.
    pub fn into_pixels(self) -> Vec<u8> {
        self.pixels
    }
}

// A derived `Debug` would print every pixel; the shape is what one wants to see in a log.
impl fmt::Debug for ImageTensorU8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageTensorU8")
            .field("shape", &self.shape())
            .finish_non_exhaustive()
    }
}

/// Images with one class label each, the common output of all image sources.
#[derive(Clone, PartialEq, Eq)]
pub struct LabeledImages {
    images: ImageTensorU8,
    labels: Vec<u32>,
    num_classes: usize,
}

impl LabeledImages {
    /// Pairs `images` with `labels`.
    ///
    /// Fails when the counts differ or when a label is not below `num_classes`.
    pub fn new(
        images: ImageTensorU8,
        labels: Vec<u32>,
        num_classes: usize,
    ) -> Result<Self, DatasetError> {
        if images.len() != labels.len() {
            return Err(DatasetError::LabelCount {
                images: images.len(),
                labels: labels.len(),
            });
        }
        check_labels(&labels, num_classes)?;
        Ok(Self {
            images,
            labels,
            num_classes,
        })
    }

    /// The images.
    pub fn images(&self) -> &ImageTensorU8 {
        &self.images
    }

    /// One label per image, each below [`num_classes`](Self::num_classes).
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// Number of classes of the dataset (not only of the classes present).
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there is no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Images per class, indexed by label.
    pub fn class_counts(&self) -> Vec<usize> {
        class_counts(&self.labels, self.num_classes)
    }

    /// Copies the images named by `sample_ids` (e.g. a
    /// [`LongTailIndex`](super::LongTailIndex)'s) into a new batch, in that order.
    ///
    /// Fails on an id that is out of range, naming its position in `sample_ids`.
    pub fn select(&self, sample_ids: &[u32]) -> Result<Self, DatasetError> {
        let n = self.images.image_len();
        let mut pixels = Vec::with_capacity(sample_ids.len().saturating_mul(n));
        let mut labels = Vec::with_capacity(sample_ids.len());
        for (position, &id) in sample_ids.iter().enumerate() {
            let image = self
                .images
                .image(id as usize)
                .ok_or(DatasetError::SampleIdOutOfRange {
                    position,
                    id,
                    len: self.len(),
                })?;
            pixels.extend_from_slice(image);
            labels.push(self.labels[id as usize]);
        }
        let images = ImageTensorU8::new(
            sample_ids.len(),
            self.images.channels,
            self.images.height,
            self.images.width,
            pixels,
        )?;
        Ok(Self {
            images,
            labels,
            num_classes: self.num_classes,
        })
    }

    /// Splits into the image batch and the labels.
    pub fn into_parts(self) -> (ImageTensorU8, Vec<u32>) {
        (self.images, self.labels)
    }
}

impl fmt::Debug for LabeledImages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LabeledImages")
            .field("shape", &self.images.shape())
            .field("num_classes", &self.num_classes)
            .finish_non_exhaustive()
    }
}

/// Feature vectors (row-major `N×D`, `f32`) with one class label each.
#[derive(Clone, PartialEq)]
pub struct LabeledFeatures {
    dim: usize,
    features: Vec<f32>,
    labels: Vec<u32>,
    num_classes: usize,
}

impl LabeledFeatures {
    /// Pairs `features` (`labels.len()` rows of `dim` values) with `labels`.
    ///
    /// Fails when `dim` is zero, when `features` is not `labels.len()·dim` long, or when a label is
    /// not below `num_classes`.
    pub fn new(
        dim: usize,
        features: Vec<f32>,
        labels: Vec<u32>,
        num_classes: usize,
    ) -> Result<Self, DatasetError> {
        if dim == 0 {
            return Err(DatasetError::InvalidConfig {
                message: "feature dimension must be at least 1".into(),
            });
        }
        let expected = labels
            .len()
            .checked_mul(dim)
            .ok_or(DatasetError::ShapeOverflow {
                shape: [labels.len(), dim, 1, 1],
            })?;
        if features.len() != expected {
            return Err(DatasetError::FeatureCount {
                rows: labels.len(),
                dim,
                actual: features.len(),
            });
        }
        check_labels(&labels, num_classes)?;
        Ok(Self {
            dim,
            features,
            labels,
            num_classes,
        })
    }

    /// Feature dimension (`D`).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// All features, row after row.
    pub fn features(&self) -> &[f32] {
        &self.features
    }

    /// The feature vector of sample `index`, or `None` when out of range.
    pub fn row(&self, index: usize) -> Option<&[f32]> {
        let d = self.dim;
        self.features
            .get(index.checked_mul(d)?..index.checked_add(1)?.checked_mul(d)?)
    }

    /// One label per row.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there is no row.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Rows per class, indexed by label.
    pub fn class_counts(&self) -> Vec<usize> {
        class_counts(&self.labels, self.num_classes)
    }
}

impl fmt::Debug for LabeledFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LabeledFeatures")
            .field("len", &self.len())
            .field("dim", &self.dim)
            .field("num_classes", &self.num_classes)
            .finish_non_exhaustive()
    }
}

fn check_labels(labels: &[u32], num_classes: usize) -> Result<(), DatasetError> {
    match labels
        .iter()
        .position(|&label| label as usize >= num_classes)
    {
        Some(index) => Err(DatasetError::InvalidLabel {
            index,
            label: labels[index],
            num_classes,
        }),
        None => Ok(()),
    }
}

/// Counts per class; the caller has checked that every label is below `num_classes`.
pub fn class_counts(labels: &[u32], num_classes: usize) -> Vec<usize> {
    let mut counts = vec![0; num_classes];
    for &label in labels {
        counts[label as usize] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> LabeledImages {
        let pixels = (0..3 * 2 * 2 * 2).map(|v| v as u8).collect();
        let images = ImageTensorU8::new(3, 2, 2, 2, pixels).unwrap();
        LabeledImages::new(images, vec![1, 0, 1], 2).unwrap()
    }

    #[test]
    fn image_slices_are_chw_per_image() {
        let data = tiny();
        assert_eq!(
            data.images().image(1).unwrap(),
            &[8, 9, 10, 11, 12, 13, 14, 15]
        );
        assert_eq!(data.images().image(3), None);
        assert_eq!(data.class_counts(), vec![1, 2]);
    }

    #[test]
    fn select_copies_in_the_given_order() {
        let picked = tiny().select(&[2, 0]).unwrap();
        assert_eq!(picked.labels(), &[1, 1]);
        assert_eq!(picked.images().image(1).unwrap()[0], 0);
        assert_eq!(picked.images().shape(), [2, 2, 2, 2]);
    }

    #[test]
    fn select_rejects_an_out_of_range_id() {
        let err = tiny().select(&[0, 7]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "sample id 7 at position 1 is out of range for 3 samples"
        );
    }

    #[test]
    fn constructors_check_shapes_and_labels() {
        let err = ImageTensorU8::new(2, 1, 2, 2, vec![0; 7]).unwrap_err();
        assert!(err.to_string().contains("expected 8 bytes, got 7"), "{err}");
        let images = ImageTensorU8::new(2, 1, 2, 2, vec![0; 8]).unwrap();
        let err = LabeledImages::new(images.clone(), vec![0], 2).unwrap_err();
        assert!(matches!(
            err,
            DatasetError::LabelCount {
                images: 2,
                labels: 1
            }
        ));
        let err = LabeledImages::new(images, vec![0, 2], 2).unwrap_err();
        assert!(matches!(
            err,
            DatasetError::InvalidLabel {
                index: 1,
                label: 2,
                ..
            }
        ));
        assert!(ImageTensorU8::new(0, 1, 0, 2, vec![]).is_err());
        assert!(ImageTensorU8::new(usize::MAX, 2, 2, 2, vec![]).is_err());
    }
}
