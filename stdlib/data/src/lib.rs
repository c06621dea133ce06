//! lortflow's data layer, in plain Rust on `u8` / `f32` buffers and without a tensor library, so
//! that it builds and tests in seconds and any backend can use it:
//!
//! - [`dataset`]: the sources (IDX, CIFAR, image lists, iNaturalist, synthetic), their downloads,
//!   long-tailed subsets and many/medium/few class groups;
//! - [`images`]: JPEG/PNG decoding as PIL does it, and the packed split (encoded images in one
//!   memory-mapped file) written in bounded memory;
//! - [`input`]: the training input pipeline: samplers, augmentation and the batch loader;
//! - [`features`]: feature files (`features.safetensors`, memory-mapped, and `.npy`);
//! - [`torch_file`]: PyTorch's weight files (`torch.save` archives, legacy pickles,
//!   safetensors), every byte checked.
//!
//! Nothing here knows the pipeline language: the stage executors of `lortflow-stdlib` turn the
//! language's settings into the plain configurations these modules take.

pub mod dataset;
pub mod features;
pub mod images;
pub mod input;
pub mod torch_file;
