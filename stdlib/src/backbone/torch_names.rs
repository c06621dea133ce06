//! Our modules' tensors under PyTorch's names and layouts, which the import of PyTorch
//! checkpoints and the export of a backbone for PyTorch share.

use burn_store::TensorSnapshot;

use super::arch::Arch;

/// The name of the classifier in the reference code of `arch`: LDAM-DRW's ResNet-32 calls it
/// `linear`, torchvision (and our other networks) `fc`.
pub fn classifier_name(arch: Arch) -> &'static str {
    match arch {
        Arch::Resnet32 => "linear",
        _ => "fc",
    }
}

/// PyTorch's name of one of our tensors: BatchNorm's `weight`/`bias` are Burn's `gamma`/`beta`,
/// torchvision's `downsample` is an `nn.Sequential` (`0` the convolution, `1` the norm).
pub(crate) fn torch_name(burn: &str) -> String {
    let name = burn
        .replace(".downsample.conv.", ".downsample.0.")
        .replace(".downsample.bn.", ".downsample.1.");
    if let Some(stem) = name.strip_suffix(".gamma") {
        format!("{stem}.weight")
    } else if let Some(stem) = name.strip_suffix(".beta") {
        format!("{stem}.bias")
    } else {
        name
    }
}

/// Whether one of our tensors is a linear layer's weight, which PyTorch stores as `[out, in]`
/// and Burn as `[in, out]`.
pub(crate) fn is_linear_weight(s: &TensorSnapshot) -> bool {
    s.full_path().ends_with(".weight")
        && s.module_type().is_some_and(|t| t.ends_with(":Linear"))
        && s.shape.num_dims() == 2
}

/// The row-major `[cols, rows]` transpose of a row-major `[rows, cols]` matrix.
pub(crate) fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = values[r * cols + c];
        }
    }
    t
}
