//! Per-image transforms on `u8` images: random crop with zero padding, horizontal flip, colour
//! jitter, random-resized-crop with bilinear resize, then per-channel normalisation.
//!
//! Each follows its torchvision counterpart (`RandomCrop(padding=p)`, `RandomHorizontalFlip`,
//! `ColorJitter`, `RandomResizedCrop(scale=(s, 1), ratio=(3/4, 4/3))`, `Normalize`), applied to
//! pixels scaled to `[0, 1]` in the order the pipeline lists them, so that padding is black as in
//! torchvision (padding happens before normalisation). Images are `C×H×W`, channel-major.

use super::error::DataError;
use crate::dataset::{LabeledImages, Rng};

/// One training-time transform.
#[derive(Clone, Debug, PartialEq)]
pub enum Transform {
    /// Pad with zeros on every side, then crop back to the input size at a random offset.
    RandomCrop {
        /// Padding in pixels.
        padding: usize,
    },
    /// Crop a random area (fraction in `[min_scale, 1]`) and aspect ratio (in `[3/4, 4/3]`),
    /// resized bilinearly to `size`×`size`.
    RandomResizedCrop {
        /// Output side.
        size: usize,
        /// Smallest area fraction.
        min_scale: f64,
    },
    /// Mirror left-right with probability `p`.
    Hflip {
        /// Probability.
        p: f64,
    },
    /// Random brightness, contrast, saturation and hue, in a random order (torchvision).
    ColorJitter {
        /// Brightness factor drawn from `[max(0, 1-b), 1+b]`.
        brightness: f64,
        /// Contrast factor range, likewise.
        contrast: f64,
        /// Saturation factor range, likewise.
        saturation: f64,
        /// Hue shift drawn from `[-h, h]` (fraction of the colour wheel, ≤ 0.5).
        hue: f64,
    },
}

/// Per-channel mean and standard deviation of pixels in `[0, 1]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalization {
    /// Mean per channel.
    pub mean: Vec<f32>,
    /// Standard deviation per channel.
    pub std: Vec<f32>,
}

/// CIFAR statistics as in LTWB's `dataset_CIFAR100LT.py` (the std is the widely copied
/// 0.2023/0.1994/0.2010, not the true 0.247/0.243/0.261).
const CIFAR: ([f32; 3], [f32; 3]) = ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]);
/// torchvision's ImageNet statistics.
const IMAGENET: ([f32; 3], [f32; 3]) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
/// iNaturalist 2018 statistics of the Decoupling code.
const INAT: ([f32; 3], [f32; 3]) = ([0.466, 0.471, 0.380], [0.195, 0.194, 0.192]);

impl Normalization {
    /// The identity (`normalize "none"`).
    pub fn none(channels: usize) -> Self {
        Self {
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
        }
    }

    /// Statistics of the images `ids` of `data` (`normalize "dataset"`): population mean and
    /// standard deviation per channel, accumulated in `f64`.
    pub fn from_data(data: &LabeledImages, ids: &[u32]) -> Result<Self, DataError> {
        let images = data.images();
        let (c, hw) = (images.channels(), images.height() * images.width());
        if ids.is_empty() {
            return Err(DataError::EmptySubset);
        }
        let mut sum = vec![0f64; c];
        let mut sum_sq = vec![0f64; c];
        for &id in ids {
            let image = images
                .image(id as usize)
                .ok_or(DataError::SampleOutOfRange {
                    id,
                    len: images.len(),
                })?;
            for (ch, plane) in image.chunks_exact(hw).enumerate() {
                // Integer sums per plane are exact and much faster than f64 per pixel.
                let s: u64 = plane.iter().map(|&p| u64::from(p)).sum();
                let s2: u64 = plane.iter().map(|&p| u64::from(p) * u64::from(p)).sum();
                sum[ch] += s as f64;
                sum_sq[ch] += s2 as f64;
            }
        }
        let n = (ids.len() * hw) as f64;
        let mean: Vec<f32> = sum.iter().map(|s| (s / n / 255.0) as f32).collect();
        let std = sum
            .iter()
            .zip(&sum_sq)
            .map(|(s, s2)| {
                let m = s / n;
                let var = (s2 / n - m * m).max(0.0);
                // A constant channel would divide by zero; leave it unscaled instead.
                let sd = var.sqrt() / 255.0;
                if sd > 1e-8 { sd as f32 } else { 1.0 }
            })
            .collect();
        Ok(Self { mean, std })
    }

    /// CIFAR's statistics as LTWB uses them.
    pub fn cifar() -> Self {
        Self::fixed(CIFAR)
    }

    /// torchvision's ImageNet statistics.
    pub fn imagenet() -> Self {
        Self::fixed(IMAGENET)
    }

    /// iNaturalist 2018's statistics as the Decoupling code uses them.
    pub fn inat() -> Self {
        Self::fixed(INAT)
    }

    fn fixed((mean, std): ([f32; 3], [f32; 3])) -> Self {
        Self {
            mean: mean.to_vec(),
            std: std.to_vec(),
        }
    }

    /// These statistics for images of `channels` channels, or an error that names them
    /// (`name`, as the pipeline calls them) when the channel counts differ.
    pub fn for_channels(self, name: &str, channels: usize) -> Result<Self, DataError> {
        if self.mean.len() != channels {
            return Err(DataError::ChannelMismatch {
                name: name.to_string(),
                stats: self.mean.len(),
                images: channels,
            });
        }
        Ok(self)
    }
}

/// The transforms of one pipeline plus normalisation, for images of one input shape.
#[derive(Clone, Debug)]
pub struct ImagePipeline {
    transforms: Vec<Transform>,
    normalization: Normalization,
    input: [usize; 3],
    output: [usize; 3],
}

impl ImagePipeline {
    /// A pipeline for images of `shape` (`[N, C, H, W]`, N ignored).
    pub fn new(
        transforms: Vec<Transform>,
        normalization: Normalization,
        shape: [usize; 4],
    ) -> Result<Self, DataError> {
        let [_, c, h, w] = shape;
        if normalization.mean.len() != c || normalization.std.len() != c {
            return Err(DataError::ChannelMismatch {
                name: "given".into(),
                stats: normalization.mean.len(),
                images: c,
            });
        }
        if normalization
            .std
            .iter()
            .any(|s| !(s.is_finite() && *s > 0.0))
        {
            return Err(DataError::Invalid(format!(
                "normalisation standard deviations must be positive, got {:?}",
                normalization.std
            )));
        }
        let mut output = [c, h, w];
        for t in &transforms {
            match *t {
                Transform::RandomResizedCrop { size, min_scale } => {
                    if size == 0 || !(min_scale > 0.0 && min_scale <= 1.0) {
                        return Err(DataError::Invalid(format!(
                            "random-resized-crop needs size ≥ 1 and min-scale in (0, 1], got {size} and {min_scale}"
                        )));
                    }
                    output = [c, size, size];
                }
                Transform::Hflip { p } if !(0.0..=1.0).contains(&p) => {
                    return Err(DataError::Invalid(format!(
                        "hflip probability must be in [0, 1], got {p}"
                    )));
                }
                _ => {}
            }
        }
        Ok(Self {
            transforms,
            normalization,
            input: [c, h, w],
            output,
        })
    }

    /// `[C, H, W]` of the produced images.
    pub fn output_shape(&self) -> [usize; 3] {
        self.output
    }

    /// Floats per produced image.
    pub fn output_len(&self) -> usize {
        self.output.iter().product()
    }

    /// The normalisation in use.
    pub fn normalization(&self) -> &Normalization {
        &self.normalization
    }

    /// Applies every transform with draws from `rng`, then normalises into `out`.
    pub fn apply_train(&self, src: &[u8], rng: &mut Rng, out: &mut [f32]) {
        let mut img = Image::from_u8(src, self.input);
        for t in &self.transforms {
            img = match *t {
                Transform::RandomCrop { padding } => random_crop(&img, padding, rng),
                Transform::RandomResizedCrop { size, min_scale } => {
                    random_resized_crop(&img, size, min_scale, rng)
                }
                Transform::Hflip { p } => {
                    if rng.next_f64() < p {
                        hflip(&img)
                    } else {
                        img
                    }
                }
                Transform::ColorJitter {
                    brightness,
                    contrast,
                    saturation,
                    hue,
                } => color_jitter(img, [brightness, contrast, saturation, hue], rng),
            };
        }
        self.normalize_into(&img, out);
    }

    /// The evaluation view: the image resized to the output size when a random-resized-crop
    /// changes it (a plain resize; the ImageNet "resize 256, centre-crop 224" needs larger
    /// sources than our datasets have), then normalised into `out`.
    pub fn apply_eval(&self, src: &[u8], out: &mut [f32]) {
        let mut img = Image::from_u8(src, self.input);
        if self.output != self.input {
            img = resize_bilinear(&img, 0, 0, img.h, img.w, self.output[1], self.output[2]);
        }
        self.normalize_into(&img, out);
    }

    fn normalize_into(&self, img: &Image, out: &mut [f32]) {
        let hw = img.h * img.w;
        for (ch, (dst, src)) in out
            .chunks_exact_mut(hw)
            .zip(img.data.chunks_exact(hw))
            .enumerate()
        {
            let (m, inv) = (
                self.normalization.mean[ch],
                1.0 / self.normalization.std[ch],
            );
            for (d, s) in dst.iter_mut().zip(src) {
                *d = (s - m) * inv;
            }
        }
    }
}

/// A `C×H×W` image of `f32` in `[0, 1]`.
#[derive(Clone, Debug, PartialEq)]
struct Image {
    c: usize,
    h: usize,
    w: usize,
    data: Vec<f32>,
}

impl Image {
    fn from_u8(src: &[u8], [c, h, w]: [usize; 3]) -> Self {
        Self {
            c,
            h,
            w,
            data: src.iter().map(|&p| f32::from(p) * (1.0 / 255.0)).collect(),
        }
    }

    fn at(&self, ch: usize, y: usize, x: usize) -> f32 {
        self.data[(ch * self.h + y) * self.w + x]
    }
}

fn random_crop(img: &Image, padding: usize, rng: &mut Rng) -> Image {
    if padding == 0 {
        return img.clone();
    }
    // torchvision draws the top-left corner in [0, 2p] of the padded image.
    let top = rng.below(2 * padding as u64 + 1) as isize - padding as isize;
    let left = rng.below(2 * padding as u64 + 1) as isize - padding as isize;
    let mut out = vec![0f32; img.data.len()];
    for ch in 0..img.c {
        for y in 0..img.h {
            let sy = y as isize + top;
            if sy < 0 || sy >= img.h as isize {
                continue;
            }
            for x in 0..img.w {
                let sx = x as isize + left;
                if sx >= 0 && sx < img.w as isize {
                    out[(ch * img.h + y) * img.w + x] = img.at(ch, sy as usize, sx as usize);
                }
            }
        }
    }
    Image { data: out, ..*img }
}

fn hflip(img: &Image) -> Image {
    let mut data = img.data.clone();
    for row in data.chunks_exact_mut(img.w) {
        row.reverse();
    }
    Image { data, ..*img }
}

/// torchvision's `RandomResizedCrop.get_params`: ten tries at a random area and aspect ratio, then
/// a centre crop with the ratio clamped to `[3/4, 4/3]`.
fn random_resized_crop(img: &Image, size: usize, min_scale: f64, rng: &mut Rng) -> Image {
    let (h, w) = (img.h as f64, img.w as f64);
    let area = h * w;
    let (log_lo, log_hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * (min_scale + (1.0 - min_scale) * rng.next_f64());
        let ratio = (log_lo + (log_hi - log_lo) * rng.next_f64()).exp();
        let cw = (target * ratio).sqrt().round() as usize;
        let ch = (target / ratio).sqrt().round() as usize;
        if cw > 0 && ch > 0 && cw <= img.w && ch <= img.h {
            let top = rng.below((img.h - ch + 1) as u64) as usize;
            let left = rng.below((img.w - cw + 1) as u64) as usize;
            return resize_bilinear(img, top, left, ch, cw, size, size);
        }
    }
    let in_ratio = w / h;
    let (cw, ch) = if in_ratio < 3.0 / 4.0 {
        (img.w, (w / (3.0 / 4.0)).round() as usize)
    } else if in_ratio > 4.0 / 3.0 {
        ((h * 4.0 / 3.0).round() as usize, img.h)
    } else {
        (img.w, img.h)
    };
    let (ch, cw) = (ch.clamp(1, img.h), cw.clamp(1, img.w));
    resize_bilinear(img, (img.h - ch) / 2, (img.w - cw) / 2, ch, cw, size, size)
}

/// Bilinear resize of the crop `[top, top+ch) × [left, left+cw)` to `oh×ow`, with half-pixel
/// centres (PyTorch's `align_corners=False`, no antialiasing).
fn resize_bilinear(
    img: &Image,
    top: usize,
    left: usize,
    ch: usize,
    cw: usize,
    oh: usize,
    ow: usize,
) -> Image {
    let axis = |o: usize, n_out: usize, n_in: usize| {
        let scale = n_in as f64 / n_out as f64;
        let s = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (s.floor() as usize).min(n_in - 1);
        let i1 = (i0 + 1).min(n_in - 1);
        (i0, i1, (s - i0 as f64) as f32)
    };
    let xs: Vec<_> = (0..ow).map(|x| axis(x, ow, cw)).collect();
    let mut data = vec![0f32; img.c * oh * ow];
    for c in 0..img.c {
        for y in 0..oh {
            let (y0, y1, fy) = axis(y, oh, ch);
            for (x, &(x0, x1, fx)) in xs.iter().enumerate() {
                let p = |yy: usize, xx: usize| img.at(c, top + yy, left + xx);
                let a = p(y0, x0) + (p(y0, x1) - p(y0, x0)) * fx;
                let b = p(y1, x0) + (p(y1, x1) - p(y1, x0)) * fx;
                data[(c * oh + y) * ow + x] = a + (b - a) * fy;
            }
        }
    }
    Image {
        c: img.c,
        h: oh,
        w: ow,
        data,
    }
}

/// ITU-R 601 luma, as torchvision's `rgb_to_grayscale`.
fn gray(img: &Image) -> Vec<f32> {
    let hw = img.h * img.w;
    if img.c < 3 {
        return img.data[..hw].to_vec();
    }
    (0..hw)
        .map(|i| 0.299 * img.data[i] + 0.587 * img.data[hw + i] + 0.114 * img.data[2 * hw + i])
        .collect()
}

fn blend(img: &mut Image, other: impl Fn(usize) -> f32, factor: f32) {
    let hw = img.h * img.w;
    for (i, v) in img.data.iter_mut().enumerate() {
        *v = (factor * *v + (1.0 - factor) * other(i % hw)).clamp(0.0, 1.0);
    }
}

fn color_jitter(mut img: Image, ranges: [f64; 4], rng: &mut Rng) -> Image {
    let mut order = [0usize, 1, 2, 3];
    rng.shuffle(&mut order);
    let factor = |range: f64, rng: &mut Rng| {
        let lo = (1.0 - range).max(0.0);
        (lo + (1.0 + range - lo) * rng.next_f64()) as f32
    };
    // Draw every factor up front so that the number of draws does not depend on the image.
    let b = factor(ranges[0], rng);
    let c = factor(ranges[1], rng);
    let s = factor(ranges[2], rng);
    let h = ((2.0 * rng.next_f64() - 1.0) * ranges[3]) as f32;
    for op in order {
        match op {
            0 if ranges[0] > 0.0 => blend(&mut img, |_| 0.0, b),
            1 if ranges[1] > 0.0 => {
                let g = gray(&img);
                let mean = g.iter().sum::<f32>() / g.len() as f32;
                blend(&mut img, |_| mean, c);
            }
            2 if ranges[2] > 0.0 && img.c == 3 => {
                let g = gray(&img);
                blend(&mut img, |i| g[i], s);
            }
            3 if ranges[3] > 0.0 && img.c == 3 => shift_hue(&mut img, h),
            _ => {}
        }
    }
    img
}

/// Rotates the hue of every pixel by `shift` (a fraction of the colour wheel), via HSV.
fn shift_hue(img: &mut Image, shift: f32) {
    let hw = img.h * img.w;
    for i in 0..hw {
        let (r, g, b) = (img.data[i], img.data[hw + i], img.data[2 * hw + i]);
        let max = r.max(g).max(b);
        let min = r.min(g).min(b);
        let delta = max - min;
        if delta <= 0.0 {
            continue; // grey pixels have no hue
        }
        let hue = if max == r {
            ((g - b) / delta).rem_euclid(6.0)
        } else if max == g {
            (b - r) / delta + 2.0
        } else {
            (r - g) / delta + 4.0
        } / 6.0;
        let hue = (hue + shift).rem_euclid(1.0) * 6.0;
        let (v, s) = (max, delta / max);
        let sector = hue.floor();
        let f = hue - sector;
        let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
        let (r, g, b) = match sector as u32 % 6 {
            0 => (v, t, p),
            1 => (q, v, p),
            2 => (p, v, t),
            3 => (p, q, v),
            4 => (t, p, v),
            _ => (v, p, q),
        };
        img.data[i] = r;
        img.data[hw + i] = g;
        img.data[2 * hw + i] = b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(c: usize, h: usize, w: usize) -> Vec<u8> {
        (0..c * h * w).map(|i| (i % 251) as u8).collect()
    }

    fn pipeline(transforms: Vec<Transform>, shape: [usize; 3]) -> ImagePipeline {
        let [c, h, w] = shape;
        ImagePipeline::new(transforms, Normalization::none(c), [1, c, h, w]).unwrap()
    }

    #[test]
    fn no_transform_only_scales() {
        let p = pipeline(vec![], [1, 2, 2]);
        let mut out = [0f32; 4];
        p.apply_eval(&[0, 51, 102, 255], &mut out);
        for (a, b) in out.iter().zip([0.0, 0.2, 0.4, 1.0]) {
            assert!((a - b).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn random_crop_shifts_and_pads_with_zeros() {
        let img = Image::from_u8(&ramp(1, 4, 4), [1, 4, 4]);
        let mut rng = Rng::seed_from_u64(3);
        for _ in 0..20 {
            let out = random_crop(&img, 2, &mut rng);
            // Every output pixel is either zero padding or a source pixel.
            assert!(out.data.iter().all(|v| *v == 0.0 || img.data.contains(v)));
            assert_eq!(out.data.len(), 16);
        }
    }

    #[test]
    fn flip_twice_is_identity() {
        let img = Image::from_u8(&ramp(3, 3, 5), [3, 3, 5]);
        assert_eq!(hflip(&hflip(&img)), img);
        assert_eq!(hflip(&img).at(0, 0, 0), img.at(0, 0, 4));
    }

    #[test]
    fn bilinear_resize_of_a_constant_is_constant_and_identity_at_same_size() {
        let img = Image::from_u8(&ramp(2, 6, 6), [2, 6, 6]);
        assert_eq!(resize_bilinear(&img, 0, 0, 6, 6, 6, 6), img);
        let flat = Image::from_u8(&[77; 16], [1, 4, 4]);
        let up = resize_bilinear(&flat, 0, 0, 4, 4, 9, 7);
        assert!(up.data.iter().all(|v| (v - 77.0 / 255.0).abs() < 1e-6));
    }

    #[test]
    fn random_resized_crop_has_the_requested_size() {
        let p = pipeline(
            vec![Transform::RandomResizedCrop {
                size: 8,
                min_scale: 0.08,
            }],
            [3, 12, 10],
        );
        assert_eq!(p.output_shape(), [3, 8, 8]);
        let mut out = vec![0f32; p.output_len()];
        p.apply_train(&ramp(3, 12, 10), &mut Rng::seed_from_u64(1), &mut out);
        assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn color_jitter_stays_in_range_and_hue_round_trips() {
        let src = ramp(3, 4, 4);
        let p = pipeline(
            vec![Transform::ColorJitter {
                brightness: 0.4,
                contrast: 0.4,
                saturation: 0.4,
                hue: 0.1,
            }],
            [3, 4, 4],
        );
        let mut out = vec![0f32; 48];
        p.apply_train(&src, &mut Rng::seed_from_u64(9), &mut out);
        assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
        let mut img = Image::from_u8(&src, [3, 4, 4]);
        let orig = img.clone();
        shift_hue(&mut img, 0.25);
        shift_hue(&mut img, 0.75);
        for (a, b) in img.data.iter().zip(&orig.data) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn published_statistics_refuse_images_of_other_channel_counts() {
        let data = crate::dataset::PatternImagesConfig {
            per_class: 2,
            ..Default::default()
        }
        .generate()
        .unwrap();
        let ids: Vec<u32> = (0..data.len() as u32).collect();
        let stats = Normalization::from_data(&data, &ids).unwrap();
        assert_eq!(stats.mean.len(), data.images().channels());
        assert!(stats.std[0] > 0.0);
        let grey = data.images().channels();
        assert_eq!(grey, 1);
        let err = Normalization::cifar()
            .for_channels("cifar", grey)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "normalisation `cifar` has 3 channels but the images have 1"
        );
        assert_eq!(
            Normalization::imagenet()
                .for_channels("imagenet", 3)
                .unwrap()
                .mean,
            [0.485, 0.456, 0.406]
        );
    }
}
