//! Seeded, class-conditional synthetic data: Gaussian clusters of feature vectors, and small images
//! of class-specific patterns plus noise.
//!
//! They exist so that tests and examples can exercise the whole pipeline in milliseconds, without
//! files. Both generators are balanced (`per_class` samples per class) and emit the classes
//! interleaved (`label = i mod K`), like the shuffled real files; long-tailed subsets come from
//! [`LongTailConfig`](super::LongTailConfig), exactly as for real data. All randomness comes from
//! [`Rng`], whose output is bitwise identical across platforms, so a seed fully determines the data.

use serde::{Deserialize, Serialize};

use super::base::{ImageTensorU8, LabeledFeatures, LabeledImages};
use super::error::DatasetError;
use super::rng::Rng;

// Sub-stream ids: class `k` draws its centre or template from stream `k`, the samples come from
// this stream, so adding a class does not change the others' centres.
const SAMPLE_STREAM: u64 = u64::MAX;

/// Gaussian clusters in `dim` dimensions, one per class.
///
/// Class centres are random directions scaled to length `separation` (so two centres are about
/// `separation·√2` apart in high dimensions); each sample is its centre plus independent
/// `N(0, noise²)` noise per coordinate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GaussianClustersConfig {
    /// Number of classes `K`.
    pub num_classes: usize,
    /// Feature dimension `D`.
    pub dim: usize,
    /// Samples per class.
    pub per_class: usize,
    /// Distance of each class centre from the origin.
    pub separation: f64,
    /// Standard deviation of the per-coordinate noise.
    pub noise: f64,
    /// Seed of all draws.
    pub seed: u64,
}

impl Default for GaussianClustersConfig {
    fn default() -> Self {
        Self {
            num_classes: 10,
            dim: 64,
            per_class: 100,
            separation: 4.0,
            noise: 1.0,
            seed: 0,
        }
    }
}

impl GaussianClustersConfig {
    /// Generates the data set; fails on an invalid setting.
    pub fn generate(&self) -> Result<LabeledFeatures, DatasetError> {
        let total = check_counts(self.num_classes, self.per_class)?;
        if self.dim == 0 {
            return invalid("`dim` must be at least 1".into());
        }
        check_non_negative("separation", self.separation)?;
        check_non_negative("noise", self.noise)?;
        let size = total
            .checked_mul(self.dim)
            .ok_or(DatasetError::ShapeOverflow {
                shape: [total, self.dim, 1, 1],
            })?;

        let centres: Vec<Vec<f64>> = (0..self.num_classes)
            .map(|k| {
                let mut rng = Rng::stream(self.seed, k as u64);
                let direction: Vec<f64> = (0..self.dim).map(|_| rng.normal()).collect();
                let norm = direction.iter().map(|v| v * v).sum::<f64>().sqrt();
                // A zero vector has probability zero, but must not divide by zero if it happens.
                let scale = if norm > 0.0 {
                    self.separation / norm
                } else {
                    0.0
                };
                direction.into_iter().map(|v| v * scale).collect()
            })
            .collect();

        let mut rng = Rng::stream(self.seed, SAMPLE_STREAM);
        let mut features = Vec::with_capacity(size);
        let mut labels = Vec::with_capacity(total);
        for i in 0..total {
            let label = i % self.num_classes;
            features.extend(
                centres[label]
                    .iter()
                    .map(|&c| (c + self.noise * rng.normal()) as f32),
            );
            labels.push(label as u32);
        }
        LabeledFeatures::new(self.dim, features, labels, self.num_classes)
    }
}

/// Small `C×H×W` images: each class has a template of `grid×grid` blocks of random intensity per
/// channel (nearest-neighbour upsampled to `H×W`), and each sample is its template plus
/// `N(0, noise²)` pixel noise, rounded and clamped to `0..=255`.
///
/// Blocks rather than smooth patterns because they need only integer arithmetic (no `sin`), which
/// keeps the images bitwise reproducible, and because they stay distinguishable for any `K`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PatternImagesConfig {
    /// Number of classes `K`.
    pub num_classes: usize,
    /// Channels `C`.
    pub channels: usize,
    /// Height `H`.
    pub height: usize,
    /// Width `W`.
    pub width: usize,
    /// Blocks per side of a class template; at most `min(H, W)`.
    pub grid: usize,
    /// Samples per class.
    pub per_class: usize,
    /// Standard deviation of the pixel noise, in intensity units (0–255).
    pub noise: f64,
    /// Seed of all draws.
    pub seed: u64,
}

impl Default for PatternImagesConfig {
    fn default() -> Self {
        Self {
            num_classes: 10,
            channels: 1,
            height: 28,
            width: 28,
            grid: 4,
            per_class: 100,
            noise: 32.0,
            seed: 0,
        }
    }
}

impl PatternImagesConfig {
    /// Generates the images; fails on an invalid setting.
    pub fn generate(&self) -> Result<LabeledImages, DatasetError> {
        let total = check_counts(self.num_classes, self.per_class)?;
        if self.channels == 0 || self.height == 0 || self.width == 0 {
            return Err(DatasetError::EmptyImageShape {
                channels: self.channels,
                height: self.height,
                width: self.width,
            });
        }
        if self.grid == 0 || self.grid > self.height.min(self.width) {
            return invalid(format!(
                "`grid` must be between 1 and min(height, width) = {}, got {}",
                self.height.min(self.width),
                self.grid
            ));
        }
        check_non_negative("noise", self.noise)?;
        let shape = [total, self.channels, self.height, self.width];
        let image_len = self.channels * self.height * self.width;
        let size = total
            .checked_mul(image_len)
            .ok_or(DatasetError::ShapeOverflow { shape })?;

        let templates: Vec<Vec<u8>> = (0..self.num_classes)
            .map(|k| self.template(&mut Rng::stream(self.seed, k as u64)))
            .collect();

        let mut rng = Rng::stream(self.seed, SAMPLE_STREAM);
        let mut pixels = Vec::with_capacity(size);
        let mut labels = Vec::with_capacity(total);
        for i in 0..total {
            let label = i % self.num_classes;
            pixels.extend(templates[label].iter().map(|&v| {
                let noisy = f64::from(v) + self.noise * rng.normal();
                noisy.round().clamp(0.0, 255.0) as u8
            }));
            labels.push(label as u32);
        }
        let images = ImageTensorU8::new(total, self.channels, self.height, self.width, pixels)?;
        LabeledImages::new(images, labels, self.num_classes)
    }

    /// The noiseless `C×H×W` image of one class.
    fn template(&self, rng: &mut Rng) -> Vec<u8> {
        let cells: Vec<u8> = (0..self.channels * self.grid * self.grid)
            .map(|_| rng.below(256) as u8)
            .collect();
        let mut image = Vec::with_capacity(self.channels * self.height * self.width);
        for c in 0..self.channels {
            for y in 0..self.height {
                let gy = y * self.grid / self.height;
                for x in 0..self.width {
                    let gx = x * self.grid / self.width;
                    image.push(cells[(c * self.grid + gy) * self.grid + gx]);
                }
            }
        }
        image
    }
}

fn check_counts(num_classes: usize, per_class: usize) -> Result<usize, DatasetError> {
    if num_classes == 0 || per_class == 0 {
        return invalid(format!(
            "`num_classes` and `per_class` must be at least 1, got {num_classes} and {per_class}"
        ));
    }
    match num_classes.checked_mul(per_class) {
        // Sample ids are `u32` throughout the data layer.
        Some(total) if u32::try_from(total).is_ok() => Ok(total),
        _ => Err(DatasetError::TooManySamples {
            len: num_classes.saturating_mul(per_class),
        }),
    }
}

fn check_non_negative(name: &str, value: f64) -> Result<(), DatasetError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        invalid(format!(
            "`{name}` must be a finite number >= 0, got {value}"
        ))
    }
}

fn invalid<T>(message: String) -> Result<T, DatasetError> {
    Err(DatasetError::InvalidConfig { message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_are_deterministic_and_seed_dependent() {
        let config = GaussianClustersConfig {
            num_classes: 3,
            dim: 5,
            per_class: 4,
            ..Default::default()
        };
        let a = config.generate().unwrap();
        assert_eq!(a, config.generate().unwrap());
        assert_eq!(a.len(), 12);
        assert_eq!(a.class_counts(), vec![4, 4, 4]);
        assert_eq!(&a.labels()[..4], &[0, 1, 2, 0]);
        let other = GaussianClustersConfig { seed: 1, ..config }
            .generate()
            .unwrap();
        assert_ne!(a.features(), other.features());
    }

    #[test]
    fn clusters_are_pinned() {
        // Golden values: a change here changes every cached synthetic run.
        let data = GaussianClustersConfig {
            num_classes: 2,
            dim: 2,
            per_class: 1,
            ..Default::default()
        }
        .generate()
        .unwrap();
        let bits: Vec<u32> = data.features().iter().map(|v| v.to_bits()).collect();
        assert_eq!(bits, GOLDEN_CLUSTERS);
    }

    const GOLDEN_CLUSTERS: [u32; 4] = [1_072_297_312, 3_233_223_123, 3_205_806_227, 1_086_875_280];

    #[test]
    fn clusters_are_separable_when_noise_is_small() {
        let data = GaussianClustersConfig {
            num_classes: 4,
            dim: 16,
            per_class: 50,
            separation: 10.0,
            noise: 0.5,
            seed: 9,
        }
        .generate()
        .unwrap();
        // Nearest class mean classifies every sample correctly.
        let mut means = vec![vec![0.0f64; 16]; 4];
        for i in 0..data.len() {
            let k = data.labels()[i] as usize;
            for (m, &v) in means[k].iter_mut().zip(data.row(i).unwrap()) {
                *m += f64::from(v) / 50.0;
            }
        }
        for i in 0..data.len() {
            let row = data.row(i).unwrap();
            let nearest = (0..4)
                .min_by(|&a, &b| {
                    let d = |k: usize| -> f64 {
                        row.iter()
                            .zip(&means[k])
                            .map(|(&x, m)| (f64::from(x) - m).powi(2))
                            .sum()
                    };
                    d(a).total_cmp(&d(b))
                })
                .unwrap();
            assert_eq!(nearest as u32, data.labels()[i]);
        }
    }

    #[test]
    fn pattern_images_have_the_requested_shape_and_are_deterministic() {
        let config = PatternImagesConfig {
            num_classes: 5,
            channels: 3,
            height: 8,
            width: 6,
            grid: 2,
            per_class: 3,
            noise: 10.0,
            seed: 4,
        };
        let a = config.generate().unwrap();
        assert_eq!(a.images().shape(), [15, 3, 8, 6]);
        assert_eq!(a.class_counts(), vec![3; 5]);
        assert_eq!(a, config.generate().unwrap());
        // Without noise, two samples of a class are identical and differ from other classes.
        let clean = PatternImagesConfig {
            noise: 0.0,
            ..config
        }
        .generate()
        .unwrap();
        let img = |i| clean.images().image(i).unwrap();
        assert_eq!(img(0), img(5));
        assert_ne!(img(0), img(1));
        // Blocks: the top-left 4×3 pixels of channel 0 share one value.
        assert!(img(0)[..3].iter().all(|&v| v == img(0)[0]));
        assert_eq!(img(0)[6], img(0)[0]);
    }

    #[test]
    fn invalid_settings_are_rejected() {
        let bad = |config: PatternImagesConfig| config.generate().unwrap_err().to_string();
        assert!(
            bad(PatternImagesConfig {
                grid: 29,
                ..Default::default()
            })
            .contains("`grid` must be between 1 and min(height, width) = 28, got 29")
        );
        assert!(
            bad(PatternImagesConfig {
                noise: f64::NAN,
                ..Default::default()
            })
            .contains("`noise` must be a finite number >= 0")
        );
        assert!(
            bad(PatternImagesConfig {
                per_class: 0,
                ..Default::default()
            })
            .contains("must be at least 1")
        );
        let err = GaussianClustersConfig {
            dim: 0,
            ..Default::default()
        }
        .generate();
        assert!(err.is_err());
    }
}
