//! Encoded images at scale: decoding JPEG and PNG by content into RGB as PIL does ([`decode`]),
//! resampling as PIL's bilinear filter ([`resize`]), and the packed split — one memory-mapped file
//! of still-encoded images with an index ([`pack`]) — written on a pool of decode threads in
//! bounded memory ([`packer`]).
//!
//! A data set of any size costs the reader the index and the pages it touches, never the decoded
//! set: the training input streams from a pack through [`crate::input::stream`].

pub mod decode;
pub mod pack;
pub mod packer;
pub mod resize;

pub use decode::{DecodeError, ImageFormat, ImageHeader, MAX_PIXELS, RgbImage, decode_rgb, probe};
pub use pack::{PackError, PackRecord, PackWriter, PackedImages};
pub use packer::{
    BadImage, DEFAULT_QUALITY, PackEntry, PackInput, PackOptions, PackReport, PackSplitError,
    default_workers, entry_path, explicit_workers, pack_split, set_default_workers,
};
