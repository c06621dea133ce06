//! torchvision's transforms on full decoded images, as the LTR repositories apply them to PIL
//! images: `RandomResizedCrop` (crop first, then one antialiased bilinear resampling of the crop),
//! `Resize(shorter side)` + `CenterCrop`, `RandomCrop(padding)`, `RandomHorizontalFlip`,
//! `ColorJitter` (PIL's `ImageEnhance` arithmetic in 8 bits, hue through PIL's 8-bit HSV), then
//! `ToTensor` + `Normalize`. The fixtures under `tests/fixtures/vision` were written by
//! torchvision and PIL (`make_fixtures.py`); `tests/vision.rs` compares boxes and pixels.
//!
//! Random draws come from [`Rng`] streams, not torch's generator: a crop is torchvision's crop for
//! the same uniform draws, and the distributions are the same.

use super::augment::{Normalization, Transform};
use super::error::DataError;
use crate::dataset::Rng;
use crate::images::RgbImage;
use crate::images::resize::{crop_rgb, resize_rgb, resize_rgb_into};

/// How each image becomes the model's square input.
#[derive(Clone, Debug, PartialEq)]
pub enum Geometry {
    /// `RandomResizedCrop(size, scale=(min_scale, 1), ratio=(3/4, 4/3))`.
    RandomResizedCrop {
        /// Output side.
        size: u32,
        /// Smallest area fraction.
        min_scale: f64,
    },
    /// `Resize(resize)` (shorter side) then `CenterCrop(crop)`.
    ResizeCenterCrop {
        /// Shorter side after resizing.
        resize: u32,
        /// Output side.
        crop: u32,
    },
}

/// The transforms of one view of a packed data set: a geometry, then the per-pixel transforms in
/// order, then normalisation.
#[derive(Clone, Debug)]
pub struct VisionPipeline {
    geometry: Geometry,
    after: Vec<Transform>,
    normalization: Normalization,
}

/// The source of a crop's random numbers: torchvision's draws, by name, so that a test can replay
/// the ones torch made.
pub trait CropDraws {
    /// `torch.empty(1).uniform_(lo, hi)`: the area fraction.
    fn area_fraction(&mut self, lo: f64, hi: f64) -> f64;
    /// `torch.exp(torch.empty(1).uniform_(log_lo, log_hi))`, in `f32` as torch computes it.
    fn aspect_ratio(&mut self, log_lo: f32, log_hi: f32) -> f64;
    /// `torch.randint(0, n, (1,))`.
    fn below(&mut self, n: u32) -> u32;
}

impl CropDraws for Rng {
    fn area_fraction(&mut self, lo: f64, hi: f64) -> f64 {
        f64::from((lo + (hi - lo) * self.next_f64()) as f32)
    }

    fn aspect_ratio(&mut self, log_lo: f32, log_hi: f32) -> f64 {
        f64::from((log_lo + (log_hi - log_lo) * self.next_f64() as f32).exp())
    }

    fn below(&mut self, n: u32) -> u32 {
        Rng::below(self, u64::from(n)) as u32
    }
}

/// A crop window in pixels: `top`, `left`, `height`, `width` (torchvision's `i, j, h, w`).
pub type CropBox = (u32, u32, u32, u32);

/// `RandomResizedCrop.get_params(img, scale, ratio)` for an image of `width`×`height`.
pub fn random_resized_crop_box(
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    draws: &mut impl CropDraws,
) -> CropBox {
    let area = f64::from(height) * f64::from(width);
    let (log_lo, log_hi) = ((ratio.0 as f32).ln(), (ratio.1 as f32).ln());
    for _ in 0..10 {
        let target_area = area * draws.area_fraction(scale.0, scale.1);
        let aspect_ratio = draws.aspect_ratio(log_lo, log_hi);
        // Python's `round` rounds half to even.
        let w = (target_area * aspect_ratio).sqrt().round_ties_even();
        let h = (target_area / aspect_ratio).sqrt().round_ties_even();
        if 0.0 < w && w <= f64::from(width) && 0.0 < h && h <= f64::from(height) {
            let (w, h) = (w as u32, h as u32);
            let top = draws.below(height - h + 1);
            let left = draws.below(width - w + 1);
            return (top, left, h, w);
        }
    }
    let in_ratio = f64::from(width) / f64::from(height);
    let (lo, hi) = (ratio.0.min(ratio.1), ratio.0.max(ratio.1));
    let (w, h) = if in_ratio < lo {
        (width, (f64::from(width) / lo).round_ties_even() as u32)
    } else if in_ratio > hi {
        ((f64::from(height) * hi).round_ties_even() as u32, height)
    } else {
        (width, height)
    };
    ((height - h) / 2, (width - w) / 2, h, w)
}

/// torchvision's `Resize(size)` for an int size: the shorter side becomes `size`, the longer
/// `int(size · long / short)`.
pub fn resized_size(width: u32, height: u32, size: u32) -> (u32, u32) {
    let (short, long) = (width.min(height), width.max(height));
    let long = (u64::from(size) * u64::from(long) / u64::from(short)) as u32;
    if width <= height {
        (size, long)
    } else {
        (long, size)
    }
}

/// `CenterCrop`'s offset: `int(round((len - crop) / 2))`, half to even.
pub fn centre_offset(len: u32, crop: u32) -> u32 {
    (f64::from(len.saturating_sub(crop)) / 2.0).round_ties_even() as u32
}

/// `F.resized_crop(img, top, left, h, w, [size, size], BILINEAR)` on a PIL image.
pub fn resized_crop(image: &RgbImage, (top, left, h, w): CropBox, size: u32) -> RgbImage {
    let window = crop_rgb(image, (left, top, w, h));
    resize_rgb(&window, (0.0, 0.0, f64::from(w), f64::from(h)), size, size)
}

/// `CenterCrop(crop)(Resize(resize)(img))` in one resampling pass: the crop's window of the
/// resized image, resampled straight from the source (PIL's `resize(box=...)`, which clips the
/// filter at the source image's borders, exactly as resizing the whole image would).
pub fn resize_centre_crop(image: &RgbImage, resize: u32, crop: u32, out: &mut [u8]) {
    let (rw, rh) = resized_size(image.width, image.height, resize);
    let (sx, sy) = (
        f64::from(image.width) / f64::from(rw),
        f64::from(image.height) / f64::from(rh),
    );
    if rw < crop || rh < crop {
        // torchvision pads a too-small image with zeros around the centre; with `resize >= crop`
        // (checked by the pipeline) this cannot happen, but a degenerate aspect could.
        let resized = resize_rgb(
            image,
            (0.0, 0.0, image.width.into(), image.height.into()),
            rw,
            rh,
        );
        out.fill(0);
        let (ox, oy) = ((crop - rw.min(crop)) / 2, (crop - rh.min(crop)) / 2);
        for y in 0..rh.min(crop) {
            let src = &resized.pixels[(y * rw) as usize * 3..][..rw.min(crop) as usize * 3];
            out[(((y + oy) * crop + ox) * 3) as usize..][..src.len()].copy_from_slice(src);
        }
        return;
    }
    let (x0, y0) = (centre_offset(rw, crop), centre_offset(rh, crop));
    let bounds = (
        f64::from(x0) * sx,
        f64::from(y0) * sy,
        f64::from(crop) * sx,
        f64::from(crop) * sy,
    );
    resize_rgb_into(image, bounds, crop, crop, out);
}

/// ITU-R 601-2 luma as PIL's `convert("L")`: `(R·19595 + G·38470 + B·7471 + 0x8000) >> 16`.
fn luma(p: &[u8]) -> u8 {
    ((u32::from(p[0]) * 19595 + u32::from(p[1]) * 38470 + u32::from(p[2]) * 7471 + 0x8000) >> 16)
        as u8
}

/// PIL's `Image.blend(degenerate, image, factor)` for one value: `f32` arithmetic, truncated, with
/// clipping when extrapolating.
fn blend(degenerate: u8, value: u8, factor: f32) -> u8 {
    let v = f32::from(degenerate) + factor * (f32::from(value) - f32::from(degenerate));
    v.clamp(0.0, 255.0) as u8
}

/// `ImageEnhance.Brightness(img).enhance(factor)`.
pub fn adjust_brightness(pixels: &mut [u8], factor: f32) {
    for v in pixels {
        *v = blend(0, *v, factor);
    }
}

/// `ImageEnhance.Contrast(img).enhance(factor)`: blended with the mean luma, rounded.
pub fn adjust_contrast(pixels: &mut [u8], factor: f32) {
    let count = (pixels.len() / 3).max(1);
    let sum: u64 = pixels.chunks_exact(3).map(|p| u64::from(luma(p))).sum();
    let mean = (sum as f64 / count as f64 + 0.5) as u8;
    for v in pixels {
        *v = blend(mean, *v, factor);
    }
}

/// `ImageEnhance.Color(img).enhance(factor)`: blended with the pixel's own luma.
pub fn adjust_saturation(pixels: &mut [u8], factor: f32) {
    for p in pixels.chunks_exact_mut(3) {
        let l = luma(p);
        for v in p {
            *v = blend(l, *v, factor);
        }
    }
}

/// torchvision's `adjust_hue` on a PIL image: to PIL's 8-bit HSV, `H += int(hue · 255)` modulo
/// 256, back to RGB.
pub fn adjust_hue(pixels: &mut [u8], hue: f32) {
    let shift = ((hue * 255.0) as i32) as u8;
    for p in pixels.chunks_exact_mut(3) {
        let [h, s, v] = rgb_to_hsv(p[0], p[1], p[2]);
        let [r, g, b] = hsv_to_rgb(h.wrapping_add(shift), s, v);
        p.copy_from_slice(&[r, g, b]);
    }
}

/// PIL's `rgb2hsv_row` (Convert.c), with its `float`/`double` steps.
fn rgb_to_hsv(r: u8, g: u8, b: u8) -> [u8; 3] {
    let (maxc, minc) = (r.max(g).max(b), r.min(g).min(b));
    if maxc == minc {
        return [0, 0, maxc];
    }
    let cr = f32::from(maxc - minc);
    let s = cr / f32::from(maxc);
    let rc = f32::from(maxc - r) / cr;
    let gc = f32::from(maxc - g) / cr;
    let bc = f32::from(maxc - b) / cr;
    let h: f32 = if r == maxc {
        bc - gc
    } else if g == maxc {
        (2.0 + f64::from(rc) - f64::from(bc)) as f32
    } else {
        (4.0 + f64::from(gc) - f64::from(rc)) as f32
    };
    let h = ((f64::from(h) / 6.0 + 1.0) % 1.0) as f32;
    let clip = |v: f64| (v as i32).clamp(0, 255) as u8;
    [clip(f64::from(h) * 255.0), clip(f64::from(s) * 255.0), maxc]
}

/// PIL's `hsv2rgb` (Convert.c).
fn hsv_to_rgb(h: u8, s: u8, v: u8) -> [u8; 3] {
    if s == 0 {
        return [v, v, v];
    }
    let i = (f64::from(f32::from(h)) * 6.0 / 255.0).floor() as i32;
    let f = (f64::from(f32::from(h)) * 6.0 / 255.0 - f64::from(i)) as f32;
    let fs = (f64::from(s) / 255.0) as f32;
    let vf = f64::from(f32::from(v));
    let clip = |x: f64| (x.round() as i32).clamp(0, 255) as u8;
    let p = clip(vf * (1.0 - f64::from(fs)));
    let q = clip(vf * (1.0 - f64::from(fs) * f64::from(f)));
    let t = clip(vf * (1.0 - f64::from(fs) * (1.0 - f64::from(f))));
    match i % 6 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// `RandomCrop(size, padding)` with the size of the image: pad with black, crop back at a random
/// offset in `[0, 2·padding]`.
fn random_crop(pixels: &mut [u8], side: u32, padding: u32, rng: &mut Rng) {
    if padding == 0 {
        return;
    }
    let top = rng.below(u64::from(2 * padding + 1)) as i64 - i64::from(padding);
    let left = rng.below(u64::from(2 * padding + 1)) as i64 - i64::from(padding);
    let src = pixels.to_vec();
    let n = i64::from(side);
    for y in 0..n {
        for x in 0..n {
            let (sy, sx) = (y + top, x + left);
            let at = ((y * n + x) * 3) as usize;
            if (0..n).contains(&sy) && (0..n).contains(&sx) {
                let from = ((sy * n + sx) * 3) as usize;
                pixels[at..at + 3].copy_from_slice(&src[from..from + 3]);
            } else {
                pixels[at..at + 3].fill(0);
            }
        }
    }
}

fn hflip(pixels: &mut [u8], side: u32) {
    for row in pixels.chunks_exact_mut(side as usize * 3) {
        let n = side as usize;
        for x in 0..n / 2 {
            for c in 0..3 {
                row.swap(x * 3 + c, (n - 1 - x) * 3 + c);
            }
        }
    }
}

fn color_jitter(pixels: &mut [u8], ranges: [f64; 4], rng: &mut Rng) {
    // torchvision leaves out an adjustment whose range is 0 (no draw either); the order is a
    // random permutation of the four.
    let mut order = [0usize, 1, 2, 3];
    rng.shuffle(&mut order);
    let factor = |range: f64, rng: &mut Rng| {
        let lo = (1.0 - range).max(0.0);
        (lo + (1.0 + range - lo) * rng.next_f64()) as f32
    };
    let b = (ranges[0] > 0.0).then(|| factor(ranges[0], rng));
    let c = (ranges[1] > 0.0).then(|| factor(ranges[1], rng));
    let s = (ranges[2] > 0.0).then(|| factor(ranges[2], rng));
    let h = (ranges[3] > 0.0).then(|| ((2.0 * rng.next_f64() - 1.0) * ranges[3]) as f32);
    for op in order {
        match (op, b, c, s, h) {
            (0, Some(b), ..) => adjust_brightness(pixels, b),
            (1, _, Some(c), ..) => adjust_contrast(pixels, c),
            (2, _, _, Some(s), _) => adjust_saturation(pixels, s),
            (3, .., Some(h)) => adjust_hue(pixels, h),
            _ => {}
        }
    }
}

impl VisionPipeline {
    /// The training view of an augmentation list: a leading `RandomResizedCrop` is the geometry
    /// (torchvision's ImageNet recipe); without one, images are first brought to `eval`'s size
    /// and the list applies to that.
    pub fn train(
        transforms: &[Transform],
        eval: Geometry,
        normalization: Normalization,
    ) -> Result<Self, DataError> {
        let (geometry, after) = match transforms.first() {
            Some(&Transform::RandomResizedCrop { size, min_scale }) => (
                Geometry::RandomResizedCrop {
                    size: u32::try_from(size).map_err(|_| invalid_size(size))?,
                    min_scale,
                },
                &transforms[1..],
            ),
            _ => (eval, transforms),
        };
        if let Some(t) = after
            .iter()
            .find(|t| matches!(t, Transform::RandomResizedCrop { .. }))
        {
            return Err(DataError::Invalid(format!(
                "{t:?} must come first among the augmentations of full-size images: it picks the region the others see"
            )));
        }
        Self::new(geometry, after.to_vec(), normalization)
    }

    /// The evaluation view: the geometry alone.
    pub fn eval(geometry: Geometry, normalization: Normalization) -> Result<Self, DataError> {
        Self::new(geometry, Vec::new(), normalization)
    }

    fn new(
        geometry: Geometry,
        after: Vec<Transform>,
        normalization: Normalization,
    ) -> Result<Self, DataError> {
        let normalization = normalization.for_channels("given", 3)?;
        match geometry {
            Geometry::RandomResizedCrop { size, min_scale } => {
                if size == 0 || !(min_scale > 0.0 && min_scale <= 1.0) {
                    return Err(DataError::Invalid(format!(
                        "random-resized-crop needs size ≥ 1 and min-scale in (0, 1], got {size} and {min_scale}"
                    )));
                }
            }
            Geometry::ResizeCenterCrop { resize, crop } => {
                if crop == 0 || resize < crop {
                    return Err(DataError::Invalid(format!(
                        "cannot centre-crop {crop}x{crop} pixels out of images whose shorter side is resized to {resize}: `resize` must be at least the crop"
                    )));
                }
            }
        }
        for t in &after {
            if let Transform::Hflip { p } = t
                && !(0.0..=1.0).contains(p)
            {
                return Err(DataError::Invalid(format!(
                    "hflip probability must be in [0, 1], got {p}"
                )));
            }
        }
        Ok(Self {
            geometry,
            after,
            normalization,
        })
    }

    /// The side of the produced square images.
    pub fn side(&self) -> u32 {
        match self.geometry {
            Geometry::RandomResizedCrop { size, .. } => size,
            Geometry::ResizeCenterCrop { crop, .. } => crop,
        }
    }

    /// `[3, side, side]`.
    pub fn output_shape(&self) -> [usize; 3] {
        let s = self.side() as usize;
        [3, s, s]
    }

    /// Values per produced image.
    pub fn output_len(&self) -> usize {
        self.output_shape().iter().product()
    }

    /// The normalisation.
    pub fn normalization(&self) -> &Normalization {
        &self.normalization
    }

    /// Transforms `image` into `out` (interleaved RGB, `side · side · 3` bytes), drawing from
    /// `rng` (an evaluation view draws nothing).
    pub fn apply_u8(&self, image: &RgbImage, rng: &mut Rng, out: &mut [u8]) {
        let side = self.side();
        match self.geometry {
            Geometry::RandomResizedCrop { size, min_scale } => {
                let bounds = random_resized_crop_box(
                    image.width,
                    image.height,
                    (min_scale, 1.0),
                    (3.0 / 4.0, 4.0 / 3.0),
                    rng,
                );
                let window = crop_rgb(image, (bounds.1, bounds.0, bounds.3, bounds.2));
                resize_rgb_into(
                    &window,
                    (0.0, 0.0, f64::from(bounds.3), f64::from(bounds.2)),
                    size,
                    size,
                    out,
                );
            }
            Geometry::ResizeCenterCrop { resize, crop } => {
                resize_centre_crop(image, resize, crop, out);
            }
        }
        for t in &self.after {
            match *t {
                Transform::RandomCrop { padding } => random_crop(out, side, padding as u32, rng),
                Transform::Hflip { p } => {
                    if rng.next_f64() < p {
                        hflip(out, side);
                    }
                }
                Transform::ColorJitter {
                    brightness,
                    contrast,
                    saturation,
                    hue,
                } => color_jitter(out, [brightness, contrast, saturation, hue], rng),
                Transform::RandomResizedCrop { .. } => unreachable!("checked by the constructor"),
            }
        }
    }

    /// `ToTensor` + `Normalize`: interleaved RGB bytes to normalised `C×H×W` floats.
    pub fn normalize_into(&self, rgb: &[u8], out: &mut [f32]) {
        let plane = rgb.len() / 3;
        for c in 0..3 {
            let (m, inv) = (self.normalization.mean[c], 1.0 / self.normalization.std[c]);
            let dst = &mut out[c * plane..(c + 1) * plane];
            for (d, p) in dst.iter_mut().zip(rgb.chunks_exact(3)) {
                *d = (f32::from(p[c]) * (1.0 / 255.0) - m) * inv;
            }
        }
    }
}

fn invalid_size(size: usize) -> DataError {
    DataError::Invalid(format!("random-resized-crop size {size} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<f64>, Vec<u32>);

    impl CropDraws for Fixed {
        fn area_fraction(&mut self, _: f64, _: f64) -> f64 {
            self.0.remove(0)
        }
        fn aspect_ratio(&mut self, _: f32, _: f32) -> f64 {
            self.0.remove(0)
        }
        fn below(&mut self, n: u32) -> u32 {
            let v = self.1.remove(0);
            assert!(v < n);
            v
        }
    }

    #[test]
    fn a_crop_that_never_fits_falls_back_to_the_centre() {
        // Ten tries that are all too wide, on a 100x20 image (ratio 5 > 4/3).
        let mut draws = Fixed([1.0, 4.0].repeat(10), vec![]);
        let b = random_resized_crop_box(100, 20, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut draws);
        // h = 20, w = round(20 · 4/3) = round(26.67) = 27, centred.
        assert_eq!(b, (0, 36, 20, 27));
        // A quarter of a 40x10 image at ratio 1: a 10x10 square, the full height.
        let mut draws = Fixed(vec![0.25, 1.0], vec![0, 5]);
        let b = random_resized_crop_box(40, 10, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut draws);
        assert_eq!(b, (0, 5, 10, 10));
    }

    #[test]
    fn sizes_and_offsets_follow_torchvision() {
        assert_eq!(resized_size(500, 375, 256), (341, 256));
        assert_eq!(resized_size(375, 500, 256), (256, 341));
        assert_eq!(centre_offset(341, 224), 58); // 58.5 → 58 (half to even)
        assert_eq!(centre_offset(10, 3), 4); // 3.5 → 4
    }

    #[test]
    fn hsv_round_trips_grey_and_primaries() {
        assert_eq!(rgb_to_hsv(10, 10, 10), [0, 0, 10]);
        assert_eq!(hsv_to_rgb(0, 255, 255), [255, 0, 0]);
        let [h, s, v] = rgb_to_hsv(0, 255, 0);
        assert_eq!((s, v), (255, 255));
        assert_eq!(hsv_to_rgb(h, s, v), [0, 255, 0]);
    }
}
