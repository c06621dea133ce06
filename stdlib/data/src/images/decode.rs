//! Encoded image bytes to RGB pixels, as PIL's `Image.open(f).convert("RGB")` gives them to
//! torchvision: the format is read from the content (a PNG named `.jpg` decodes as PNG), greyscale,
//! CMYK, 16-bit and palette images become 8-bit RGB, and a damaged file is an error, never an
//! image padded with grey.
//!
//! JPEG goes through `zune-jpeg` (SIMD, pure Rust; measured against `jpeg-decoder` and PIL's
//! libjpeg-turbo in PERFORMANCE.md). Its lenient mode fills the rest of a cut-short file with
//! grey and carries on, as browsers do; PIL refuses such a file ("image file is truncated"), and so
//! do we: every image is decoded in strict mode first, and only a file whose strict failure is not
//! about missing data is retried leniently (extra bytes between markers and similar quirks that
//! libjpeg also tolerates with a warning). PNG goes through the `image` crate.

use std::fmt;

use image::{DynamicImage, ImageDecoder};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;
use zune_jpeg::errors::DecodeErrors;

/// The most pixels an image may have: PIL's decompression-bomb limit (`2 *
/// Image.MAX_IMAGE_PIXELS`, above which `Image.open` raises `DecompressionBombError`). A header
/// claiming more is refused before anything is allocated for its pixels.
pub const MAX_PIXELS: u64 = 178_956_970;

/// The container of an encoded image, read from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    /// JPEG (`FF D8 FF`).
    Jpeg,
    /// PNG (`89 50 4E 47 0D 0A 1A 0A`).
    Png,
}

impl ImageFormat {
    /// The format of `bytes`, from their signature, or `None` when it is neither.
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Self::Jpeg)
        } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Self::Png)
        } else {
            None
        }
    }

    /// The byte stored for this format in a pack.
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Jpeg => 1,
            Self::Png => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Jpeg),
            2 => Some(Self::Png),
            _ => None,
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Jpeg => "JPEG",
            Self::Png => "PNG",
        })
    }
}

/// Why bytes are not a usable image; the caller adds which file it was.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Zero bytes.
    #[error("the file is empty (0 bytes)")]
    Empty,
    /// Neither a JPEG nor a PNG signature.
    #[error("it is neither a JPEG nor a PNG (its first bytes are {0})")]
    UnknownFormat(String),
    /// The data ends before the image does.
    #[error("the {format} data is truncated: the file ends before the image does")]
    Truncated {
        /// The container.
        format: ImageFormat,
        /// The decoder's words (for logs; the message says what matters).
        detail: String,
    },
    /// The header asks for more pixels than [`MAX_PIXELS`].
    #[error(
        "its header claims {width}x{height} pixels, more than the limit of {limit} pixels (PIL's decompression-bomb limit); a damaged header, or an image to shrink before use"
    )]
    TooLarge {
        /// Claimed width.
        width: u64,
        /// Claimed height.
        height: u64,
        /// [`MAX_PIXELS`].
        limit: u64,
    },
    /// A zero dimension.
    #[error("its header claims {width}x{height} pixels")]
    ZeroSize {
        /// Claimed width.
        width: u32,
        /// Claimed height.
        height: u32,
    },
    /// Anything else the decoder refused.
    #[error("cannot decode it as {format}: {detail}")]
    Corrupt {
        /// The container.
        format: ImageFormat,
        /// The decoder's words.
        detail: String,
    },
}

/// What the header says, read without decoding the pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    /// The container.
    pub format: ImageFormat,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// An 8-bit RGB image, rows of interleaved `R G B` (the layout decoders produce and resizers take).
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `height · width · 3` bytes.
    pub pixels: Vec<u8>,
}

impl fmt::Debug for RgbImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RgbImage({}x{})", self.width, self.height)
    }
}

/// Reads the format and the size, refusing what [`decode_rgb`] would refuse for its header.
pub fn probe(bytes: &[u8]) -> Result<ImageHeader, DecodeError> {
    let format = sniff(bytes)?;
    let (width, height) = match format {
        ImageFormat::Jpeg => {
            let mut decoder =
                JpegDecoder::new_with_options(ZCursor::new(bytes), jpeg_options(true));
            decoder.decode_headers().map_err(|e| jpeg_error(&e))?;
            let info = decoder.info().ok_or_else(|| DecodeError::Corrupt {
                format,
                detail: "no frame header".into(),
            })?;
            (u32::from(info.width), u32::from(info.height))
        }
        ImageFormat::Png => {
            let decoder = image::codecs::png::PngDecoder::new(std::io::Cursor::new(bytes))
                .map_err(|e| png_error(&e))?;
            decoder.dimensions()
        }
    };
    check_size(width, height)?;
    Ok(ImageHeader {
        format,
        width,
        height,
    })
}

/// Decodes `bytes` (JPEG or PNG, by content) into 8-bit RGB, converted as PIL's `convert("RGB")`.
///
/// A decoder that panics on hostile data is an error for that file, not the end of the process.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    let header = probe(bytes)?;
    let decode = || match header.format {
        ImageFormat::Jpeg => decode_jpeg(bytes),
        ImageFormat::Png => decode_png(bytes),
    };
    std::panic::catch_unwind(decode).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(DecodeError::Corrupt {
            format: header.format,
            detail: format!("the decoder failed on it ({})", one_line(&message)),
        })
    })
}

fn sniff(bytes: &[u8]) -> Result<ImageFormat, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    ImageFormat::sniff(bytes).ok_or_else(|| {
        let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        DecodeError::UnknownFormat(head.join(" "))
    })
}

fn check_size(width: u32, height: u32) -> Result<(), DecodeError> {
    if width == 0 || height == 0 {
        return Err(DecodeError::ZeroSize { width, height });
    }
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(DecodeError::TooLarge {
            width: width.into(),
            height: height.into(),
            limit: MAX_PIXELS,
        });
    }
    Ok(())
}

fn jpeg_options(strict: bool) -> DecoderOptions {
    DecoderOptions::new_fast()
        .set_strict_mode(strict)
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(usize::from(u16::MAX))
        .set_max_height(usize::from(u16::MAX))
}

/// Whether a decoder error means the data ran out (reading past the end of an in-memory buffer
/// is the only I/O error there is).
fn is_truncation(error: &DecodeErrors) -> bool {
    let text = error.to_string().to_ascii_lowercase();
    matches!(
        error,
        DecodeErrors::ExhaustedData | DecodeErrors::IoErrors(_)
    ) || [
        "premature end",
        "no more bytes",
        "exhausted",
        "not enough bytes",
        "bits left",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// Whether a strict-mode error is a quirk of the container that libjpeg (and so PIL) tolerates
/// with a warning: stray bytes between markers, a marker where none was expected. Only these are
/// decoded again leniently; anything else, a lenient decode would paper over.
fn is_tolerated_quirk(error: &DecodeErrors) -> bool {
    let text = error.to_string().to_ascii_lowercase();
    !is_truncation(error) && (text.contains("extra bytes") || text.contains("marker"))
}

/// A decoder's message on one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn jpeg_error(error: &DecodeErrors) -> DecodeError {
    let detail = one_line(&error.to_string());
    if is_truncation(error) {
        DecodeError::Truncated {
            format: ImageFormat::Jpeg,
            detail,
        }
    } else {
        DecodeError::Corrupt {
            format: ImageFormat::Jpeg,
            detail,
        }
    }
}

fn decode_jpeg(bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    let run = |strict: bool| {
        let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), jpeg_options(strict));
        let pixels = decoder.decode()?;
        let info = decoder
            .info()
            .ok_or(DecodeErrors::FormatStatic("no frame header"))?;
        Ok::<_, DecodeErrors>(RgbImage {
            width: u32::from(info.width),
            height: u32::from(info.height),
            pixels,
        })
    };
    match run(true) {
        Ok(image) => Ok(image),
        // A lenient decode that still fails reports the strict error, the more precise one.
        Err(strict) if is_tolerated_quirk(&strict) => run(false).map_err(|_| jpeg_error(&strict)),
        Err(strict) => Err(jpeg_error(&strict)),
    }
}

fn png_error(error: &image::ImageError) -> DecodeError {
    let detail = one_line(&error.to_string());
    let lower = detail.to_ascii_lowercase();
    if lower.contains("eof") || lower.contains("end of") || lower.contains("unexpected end") {
        DecodeError::Truncated {
            format: ImageFormat::Png,
            detail,
        }
    } else {
        DecodeError::Corrupt {
            format: ImageFormat::Png,
            detail,
        }
    }
}

fn decode_png(bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    // The pixel limit was checked on the header; the image crate's own 512 MiB allocation cap
    // would refuse a 16-bit image well inside it.
    let mut reader =
        image::ImageReader::with_format(std::io::Cursor::new(bytes), image::ImageFormat::Png);
    reader.no_limits();
    let decoded = reader.decode().map_err(|e| png_error(&e))?;
    Ok(pil_rgb(decoded))
}

/// `convert("RGB")` as PIL does it for the modes PNG files open in: alpha is dropped (not
/// composited), grey is copied to the three channels, and 16-bit samples keep their high byte
/// (PIL opens 16-bit RGB(A) PNGs as 8-bit `RGB`/`RGBA` by their most significant byte, and a
/// 16-bit grey `I;16` image converts to `RGB` by clamping each value at 255).
fn pil_rgb(image: DynamicImage) -> RgbImage {
    let (width, height) = (image.width(), image.height());
    let pixels = match image {
        DynamicImage::ImageRgb8(im) => im.into_raw(),
        DynamicImage::ImageRgba8(im) => im.pixels().flat_map(|p| [p[0], p[1], p[2]]).collect(),
        DynamicImage::ImageLuma8(im) => im.into_raw().into_iter().flat_map(|v| [v; 3]).collect(),
        DynamicImage::ImageLumaA8(im) => im.pixels().flat_map(|p| [p[0]; 3]).collect(),
        DynamicImage::ImageLuma16(im) => im
            .into_raw()
            .into_iter()
            .flat_map(|v| [v.min(255) as u8; 3])
            .collect(),
        DynamicImage::ImageLumaA16(im) => {
            im.pixels().flat_map(|p| [p[0].min(255) as u8; 3]).collect()
        }
        DynamicImage::ImageRgb16(im) => im.into_raw().into_iter().map(|v| (v >> 8) as u8).collect(),
        DynamicImage::ImageRgba16(im) => im
            .pixels()
            .flat_map(|p| [p[0], p[1], p[2]].map(|v| (v >> 8) as u8))
            .collect(),
        other => other.into_rgb8().into_raw(),
    };
    RgbImage {
        width,
        height,
        pixels,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn encode(image: &DynamicImage, format: image::ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn gradient(w: u32, h: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8])
        }))
    }

    #[test]
    fn formats_are_read_from_the_content() {
        let png = encode(&gradient(9, 7), image::ImageFormat::Png);
        let jpeg = encode(&gradient(33, 17), image::ImageFormat::Jpeg);
        assert_eq!(probe(&png).unwrap().format, ImageFormat::Png);
        let header = probe(&jpeg).unwrap();
        assert_eq!(
            (header.format, header.width, header.height),
            (ImageFormat::Jpeg, 33, 17)
        );
        let decoded = decode_rgb(&png).unwrap();
        assert_eq!(decoded.pixels, gradient(9, 7).into_rgb8().into_raw());
        assert_eq!(decode_rgb(&jpeg).unwrap().pixels.len(), 33 * 17 * 3);
        assert_eq!(decode_rgb(&[]).unwrap_err(), DecodeError::Empty);
        assert_eq!(
            decode_rgb(b"GIF89a....").unwrap_err().to_string(),
            "it is neither a JPEG nor a PNG (its first bytes are 47 49 46 38 39 61 2e 2e)"
        );
    }

    #[test]
    fn a_cut_short_jpeg_is_refused_not_padded() {
        let jpeg = encode(&gradient(200, 150), image::ImageFormat::Jpeg);
        for keep in [
            jpeg.len() / 4,
            jpeg.len() / 3,
            jpeg.len() / 2,
            jpeg.len() - 40,
        ] {
            let err = decode_rgb(&jpeg[..keep]).unwrap_err();
            assert!(
                matches!(err, DecodeError::Truncated { .. }),
                "{keep}: {err}"
            );
        }
        // A header alone is truncated too.
        assert!(decode_rgb(&jpeg[..300]).is_err());
        let png = encode(&gradient(200, 150), image::ImageFormat::Png);
        assert!(decode_rgb(&png[..png.len() / 2]).is_err());
    }

    #[test]
    fn a_huge_header_is_refused_before_decoding() {
        // A valid 16x16 JPEG whose frame header is patched to claim 60000x60000.
        let mut jpeg = encode(&gradient(16, 16), image::ImageFormat::Jpeg);
        let sof = jpeg
            .windows(2)
            .position(|w| w[0] == 0xFF && (w[1] == 0xC0 || w[1] == 0xC2))
            .unwrap();
        jpeg[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
        let err = decode_rgb(&jpeg).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::TooLarge {
                    width: 60000,
                    height: 60000,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn png_modes_convert_as_pil_does() {
        let grey = DynamicImage::ImageLuma8(image::GrayImage::from_fn(3, 2, |x, y| {
            image::Luma([(x * 40 + y) as u8])
        }));
        let rgb = decode_rgb(&encode(&grey, image::ImageFormat::Png)).unwrap();
        assert_eq!(&rgb.pixels[..6], &[0, 0, 0, 40, 40, 40]);
        let deep = DynamicImage::ImageLuma16(image::ImageBuffer::from_fn(2, 1, |x, _| {
            image::Luma([[100u16, 4000][x as usize]])
        }));
        let rgb = decode_rgb(&encode(&deep, image::ImageFormat::Png)).unwrap();
        assert_eq!(rgb.pixels, [100, 100, 100, 255, 255, 255]);
        let rgba = DynamicImage::ImageRgba8(image::RgbaImage::from_fn(1, 1, |_, _| {
            image::Rgba([10, 20, 30, 0])
        }));
        let rgb = decode_rgb(&encode(&rgba, image::ImageFormat::Png)).unwrap();
        assert_eq!(rgb.pixels, [10, 20, 30], "alpha dropped, not composited");
    }
}
