//! How prepared batches become device tensors.
//!
//! On the CPU backend the decode workers normalise each image as they write it, so that this work
//! scales with them and the model gets `f32` values ready to use. On a GPU the batches travel as
//! `u8` pixels, a quarter of the bytes over PCIe, and are normalised on the device, where it costs
//! nothing: the same choice DALI and FFCV make. A device that stores `u8` tensors (CUDA) receives
//! them as they are; one that does not (wgpu's WGSL shaders have no 8-bit type) receives the same
//! bytes as 32-bit words, four pixels to a word, unpacked there with shifts and masks.

use std::any::TypeId;

use burn::tensor::backend::{Backend, DTypeUsage};
use burn::tensor::{DType, ElementConversion, Int, Tensor, TensorData};
use lortflow_data::input::{BatchImages, BatchOutput, Normalization};

/// The form in which batches for `device` should be prepared (see [`output_on`]).
pub fn batch_output<B: Backend>(_device: &B::Device) -> BatchOutput {
    output_on(TypeId::of::<B::Device>() == TypeId::of::<crate::backend::CpuDevice>())
}

/// Normalised `f32` for the CPU backend, `u8` pixels for any other.
pub fn output_on(cpu: bool) -> BatchOutput {
    if cpu {
        BatchOutput::Normalized
    } else {
        BatchOutput::Bytes
    }
}

/// The `[N, C, H, W]` float tensor of a batch's images on `device`, normalised.
pub fn images_tensor<B: Backend>(
    images: BatchImages,
    shape: [usize; 4],
    device: &B::Device,
) -> Tensor<B, 4> {
    match images {
        BatchImages::Normalized(values) => Tensor::from_data(
            TensorData::new(values, shape).convert::<B::FloatElem>(),
            device,
        ),
        BatchImages::Bytes {
            pixels,
            normalization,
        } => {
            let native = B::dtype_usage(device, DType::U8).contains(DTypeUsage::Storage);
            normalize_on_device(
                pixels_tensor::<B>(pixels, shape, device, native),
                &normalization,
            )
        }
    }
}

/// A prepared batch as device tensors: images `[N, C, H, W]` and labels `[N]`.
pub fn batch_tensors<B: Backend>(
    batch: lortflow_data::input::Batch,
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
    let n = batch.shape[0];
    let x = crate::input::images_tensor::<B>(batch.images, batch.shape, device);
    let labels: Vec<i64> = batch.labels.iter().map(|&l| i64::from(l)).collect();
    let y = Tensor::<B, 1, Int>::from_data(
        TensorData::new(labels, [n]).convert::<B::IntElem>(),
        device,
    );
    (x, y)
}

/// `(p / 255 - mean[c]) / std[c]`, in the order and with the constants the host uses
/// (`lortflow_data`'s `normalize_planes`), so that both give the same values.
fn normalize_on_device<B: Backend>(pixels: Tensor<B, 4>, norm: &Normalization) -> Tensor<B, 4> {
    let device = pixels.device();
    let channels = norm.mean.len();
    let mean =
        Tensor::<B, 1>::from_floats(norm.mean.as_slice(), &device).reshape([1, channels, 1, 1]);
    let inv_std: Vec<f32> = norm.std.iter().map(|s| 1.0 / s).collect();
    let inv_std =
        Tensor::<B, 1>::from_floats(inv_std.as_slice(), &device).reshape([1, channels, 1, 1]);
    (pixels.mul_scalar(1.0 / 255.0) - mean) * inv_std
}

/// The pixels as a float tensor of values 0-255 on `device`, uploaded as `u8` where the device
/// stores that type (`native`), else as 32-bit words of four pixels each.
fn pixels_tensor<B: Backend>(
    mut pixels: Vec<u8>,
    shape: [usize; 4],
    device: &B::Device,
    native: bool,
) -> Tensor<B, 4> {
    let len = pixels.len();
    if native {
        return Tensor::<B, 4, Int>::from_data(TensorData::new(pixels, shape), (device, DType::U8))
            .float();
    }
    pixels.resize(len.div_ceil(4) * 4, 0);
    let words = pixels.len() / 4;
    // Little-endian words: byte k of a word is pixel 4w + k (every GPU is little-endian).
    let packed = Tensor::<B, 1, Int>::from_data(
        TensorData::from_bytes_vec(pixels, [words], DType::I32),
        (device, DType::I32),
    );
    let bytes: Vec<Tensor<B, 1, Int>> = (0..4)
        .map(|k| {
            packed
                .clone()
                .bitwise_right_shift_scalar((8 * k).elem())
                .bitwise_and_scalar(0xFF.elem())
        })
        .collect();
    Tensor::stack::<2>(bytes, 1)
        .reshape([words * 4])
        .slice(0..len)
        .reshape(shape)
        .float()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{CpuAutodiff, CpuBackend, CpuDevice};

    fn normalization() -> Normalization {
        Normalization {
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
        }
    }

    /// Odd sizes, so that the words of the packed upload do not divide the pixels evenly.
    fn pixels(shape: [usize; 4]) -> Vec<u8> {
        let n: usize = shape.iter().product();
        (0..n).map(|i| (i * 37 + i / 7) as u8).collect()
    }

    #[test]
    fn both_uploads_give_the_pixels_in_place() {
        let shape = [2, 3, 5, 7];
        let px = pixels(shape);
        let device = CpuDevice::default();
        let expected: Vec<f32> = px.iter().map(|&p| f32::from(p)).collect();
        for native in [true, false] {
            let got: Vec<f32> = pixels_tensor::<CpuBackend>(px.clone(), shape, &device, native)
                .into_data()
                .into_vec()
                .unwrap();
            assert_eq!(got, expected, "native u8: {native}");
        }
    }

    #[test]
    fn device_normalisation_equals_the_workers() {
        let shape = [3, 3, 4, 5];
        let px = pixels(shape);
        let norm = normalization();
        let host = BatchImages::Bytes {
            pixels: px.clone(),
            normalization: norm.clone(),
        }
        .into_normalized(shape[2] * shape[3]);
        let device = CpuDevice::default();
        for native in [true, false] {
            let got: Vec<f32> = normalize_on_device(
                pixels_tensor::<CpuBackend>(px.clone(), shape, &device, native),
                &norm,
            )
            .into_data()
            .into_vec()
            .unwrap();
            assert_eq!(got, host, "native u8: {native}");
        }
        // Through the public entry point, on the training backend.
        let got: Vec<f32> = images_tensor::<CpuAutodiff>(
            BatchImages::Bytes {
                pixels: px,
                normalization: norm,
            },
            shape,
            &device,
        )
        .into_data()
        .into_vec()
        .unwrap();
        assert_eq!(got, host);
    }

    #[test]
    fn the_cpu_backend_gets_normalised_batches() {
        assert_eq!(
            batch_output::<CpuAutodiff>(&CpuDevice::default()),
            BatchOutput::Normalized
        );
    }

    /// The device path as it runs on a GPU: lavapipe's WGSL has no `u8`, so this is the packed
    /// upload; the result must equal the workers' normalisation.
    #[cfg(feature = "wgpu")]
    #[test]
    fn wgpu_normalises_u8_batches_as_the_workers_do() {
        use crate::backend::{WgpuAutodiff, test_wgpu_device};
        let Some(device) = test_wgpu_device() else {
            return;
        };
        assert_eq!(batch_output::<WgpuAutodiff>(&device), BatchOutput::Bytes);
        let shape = [2, 3, 6, 5];
        let px = pixels(shape);
        let host = BatchImages::Bytes {
            pixels: px.clone(),
            normalization: normalization(),
        }
        .into_normalized(shape[2] * shape[3]);
        let got: Vec<f32> = images_tensor::<WgpuAutodiff>(
            BatchImages::Bytes {
                pixels: px,
                normalization: normalization(),
            },
            shape,
            &device,
        )
        .into_data()
        .convert::<f32>()
        .into_vec()
        .unwrap();
        // The same operations in the same order; a GPU may still round a division differently.
        for (g, h) in got.iter().zip(&host) {
            assert!((g - h).abs() <= 1e-5, "{g} vs {h}");
        }
    }
}
