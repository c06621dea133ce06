//! Writing a backbone as a PyTorch state dict (safetensors): the names and layouts that
//! torchvision's ResNets and LDAM-DRW's ResNet-32 load with `load_state_dict(strict=True)`.
//! [`import_backbone`](super::import_backbone) reads the file back to the same weights, bit for
//! bit.

use std::path::Path;

use burn::tensor::backend::Backend;
use burn_store::ModuleSnapshot;
use safetensors::tensor::{Dtype, TensorView};

use super::base::{Backbone, BackboneConfig};
use super::error::BackboneError;
use super::torch_names::{classifier_name, is_linear_weight, torch_name, transpose};

/// The backbone's tensors in PyTorch's names and layouts, in module order: `(name, shape,
/// float32 values)`; BatchNorm layers also get PyTorch's `num_batches_tracked` (as int64 0),
/// which `load_state_dict(strict=True)` expects.
pub fn torch_state_dict<B: Backend>(
    model: &Backbone<B>,
    config: &BackboneConfig,
) -> Result<Vec<(String, Vec<usize>, TorchValues)>, BackboneError> {
    let snapshots = match model {
        Backbone::ConvFc(m) => m.collect(None, None, false),
        Backbone::SmallCnn(m) => m.collect(None, None, false),
        Backbone::ResNet(m) => m.collect(None, None, false),
    };
    let classifier = classifier_name(config.arch);
    let mut out = Vec::new();
    for s in snapshots {
        let burn = s.full_path();
        let data = s.to_data().map_err(|e| {
            BackboneError::InvalidConfig(format!("cannot read tensor `{burn}`: {e:?}"))
        })?;
        let mut values: Vec<f32> = data
            .convert::<f32>()
            .to_vec()
            .map_err(|e| BackboneError::InvalidConfig(format!("tensor `{burn}`: {e:?}")))?;
        let mut shape: Vec<usize> = s.shape.iter().copied().collect();
        if is_linear_weight(&s) {
            // Burn's `[in, out]` is PyTorch's `[out, in]` transposed.
            values = transpose(&values, shape[0], shape[1]);
            shape.reverse();
        }
        let name = match burn.strip_prefix("fc.") {
            Some(rest) => format!("{classifier}.{rest}"),
            None => torch_name(&burn),
        };
        let batch_norm = name.ends_with(".running_var").then(|| {
            format!(
                "{}.num_batches_tracked",
                name.trim_end_matches(".running_var")
            )
        });
        out.push((name, shape, TorchValues::F32(values)));
        if let Some(tracked) = batch_norm {
            out.push((tracked, Vec::new(), TorchValues::I64(vec![0])));
        }
    }
    Ok(out)
}

/// The values of one exported tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum TorchValues {
    /// Weights and statistics.
    F32(Vec<f32>),
    /// `num_batches_tracked`.
    I64(Vec<i64>),
}

impl TorchValues {
    fn bytes(&self) -> Vec<u8> {
        match self {
            TorchValues::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TorchValues::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// Writes [`torch_state_dict`] to `path` as safetensors, with the architecture in its metadata.
pub fn export_torch<B: Backend>(
    model: &Backbone<B>,
    config: &BackboneConfig,
    path: &Path,
) -> Result<(), BackboneError> {
    let tensors = torch_state_dict(model, config)?;
    let bytes: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, shape, values)| {
            let dtype = match values {
                TorchValues::F32(_) => Dtype::F32,
                TorchValues::I64(_) => Dtype::I64,
            };
            (name, shape, dtype, values.bytes())
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, dtype, data)| {
            TensorView::new(*dtype, shape.clone(), data)
                .map(|view| (name.clone(), view))
                .map_err(|e| BackboneError::InvalidConfig(format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = std::collections::HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("lortflow_arch".to_string(), config.arch.name().to_string()),
        ("num_classes".to_string(), config.num_classes.to_string()),
    ]);
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(views, Some(metadata), &tmp).map_err(|e| BackboneError::Io {
        action: "write",
        path: tmp.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    std::fs::rename(&tmp, path).map_err(|source| BackboneError::Io {
        action: "rename into",
        path: path.to_path_buf(),
        source,
    })
}
