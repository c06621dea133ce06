//! Antialiased bilinear resampling of 8-bit RGB images, as PIL's `Image.resize(size,
//! Image.BILINEAR, box=...)` does it (the filter widens with the shrink factor; its support is
//! clipped at the source image's borders), on `fast_image_resize`'s SIMD convolution.

use std::cell::RefCell;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use super::decode::RgbImage;

thread_local! {
    // A resizer keeps its scratch buffers between calls; one per worker thread.
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
}

/// Resamples the box `(left, top, width, height)` of `src` (in source pixels, fractional allowed)
/// to `out_w`×`out_h`. The box must lie inside the image and the output be non-empty.
pub fn resize_rgb(
    src: &RgbImage,
    bounds: (f64, f64, f64, f64),
    out_w: u32,
    out_h: u32,
) -> RgbImage {
    let mut pixels = vec![0u8; out_w as usize * out_h as usize * 3];
    resize_rgb_into(src, bounds, out_w, out_h, &mut pixels);
    RgbImage {
        width: out_w,
        height: out_h,
        pixels,
    }
}

/// [`resize_rgb`] into `out` (`out_h · out_w · 3` bytes).
pub fn resize_rgb_into(
    src: &RgbImage,
    (left, top, width, height): (f64, f64, f64, f64),
    out_w: u32,
    out_h: u32,
    out: &mut [u8],
) {
    let whole = left == 0.0
        && top == 0.0
        && width == f64::from(src.width)
        && height == f64::from(src.height);
    if whole && (out_w, out_h) == (src.width, src.height) {
        out.copy_from_slice(&src.pixels);
        return;
    }
    let source = ImageRef::new(src.width, src.height, &src.pixels, PixelType::U8x3)
        .expect("an RgbImage holds width·height·3 bytes");
    let mut target = Image::from_slice_u8(out_w, out_h, out, PixelType::U8x3)
        .expect("the output holds out_w·out_h·3 bytes");
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(left, top, width, height);
    RESIZER.with_borrow_mut(|resizer| {
        resizer
            .resize(&source, &mut target, &options)
            .expect("same pixel types and a box inside the image")
    });
}

/// The integer window `(left, top, width, height)` of `src` as an image of its own: what PIL's
/// `crop` gives, so that a resize after it clips its filter at the window's borders.
pub fn crop_rgb(src: &RgbImage, (left, top, width, height): (u32, u32, u32, u32)) -> RgbImage {
    let row = width as usize * 3;
    let mut pixels = Vec::with_capacity(row * height as usize);
    for y in top..top + height {
        let start = (y as usize * src.width as usize + left as usize) * 3;
        pixels.extend_from_slice(&src.pixels[start..start + row]);
    }
    RgbImage {
        width,
        height,
        pixels,
    }
}
