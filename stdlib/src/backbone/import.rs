//! Importing torchvision-layout state dicts (safetensors or PyTorch `.pth`) into our modules.
//!
//! burn-store maps names and layouts (PyTorch's `[out, in]` linear weights are transposed;
//! BatchNorm's `weight`/`bias` become `gamma`/`beta`); the key remapping below covers the rest:
//! torchvision's `downsample.0`/`downsample.1` (an `nn.Sequential`) are our `downsample.conv`/
//! `downsample.bn`, LDAM's ResNet-32 calls its classifier `linear`, and `nn.DataParallel`
//! prefixes every key with `module.`. burn-store's own errors print a summary box and stop at the
//! first kind of problem, so we load leniently and then check the result ourselves, listing every
//! missing key, unexpected key and shape mismatch by name.

use std::path::Path;

use burn::tensor::backend::Backend;
use burn_store::{
    ApplyError, ApplyResult, ModuleSnapshot, PyTorchToBurnAdapter, PytorchStore, SafetensorsStore,
};

use super::base::{Backbone, BackboneConfig, arch_name};
use super::checkpoint::load_record_into;
use super::error::BackboneError;

/// The format of a weights file (`checkpoint format=…`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// By extension: `.safetensors`, `.pth`/`.pt`/`.bin`, `.mpk` (Burn).
    Auto,
    /// A safetensors state dict.
    Safetensors,
    /// A PyTorch pickle (`torch.save(model.state_dict())`, optionally nested under
    /// `state_dict` or `model`).
    Pytorch,
    /// A Burn record written by lortflow (`backbone.mpk`).
    Burn,
}

impl From<lortflow_lang::ir::CheckpointFormat> for CheckpointFormat {
    fn from(format: lortflow_lang::ir::CheckpointFormat) -> Self {
        use lortflow_lang::ir::CheckpointFormat as Ir;
        match format {
            Ir::Auto => CheckpointFormat::Auto,
            Ir::Safetensors => CheckpointFormat::Safetensors,
            Ir::Pytorch => CheckpointFormat::Pytorch,
            Ir::Burn => CheckpointFormat::Burn,
        }
    }
}

impl CheckpointFormat {
    fn resolve(self, path: &Path) -> Result<Self, BackboneError> {
        if self != CheckpointFormat::Auto {
            return Ok(self);
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => Ok(CheckpointFormat::Safetensors),
            Some("pth" | "pt" | "bin" | "tar") => Ok(CheckpointFormat::Pytorch),
            Some("mpk") => Ok(CheckpointFormat::Burn),
            _ => Err(BackboneError::Checkpoint {
                path: path.to_path_buf(),
                message: "cannot tell its format from the extension; set `format` to `safetensors`, `pytorch` or `burn`".into(),
            }),
        }
    }
}

/// Key renames from checkpoint names to our module paths.
const REMAP: &[(&str, &str)] = &[
    (r"^module\.", ""),
    (r"\.downsample\.0\.", ".downsample.conv."),
    (r"\.downsample\.1\.", ".downsample.bn."),
    (r"^linear\.", "fc."),
];

/// Keys a torchvision state dict has and our modules deliberately do not.
fn ignorable(key: &str) -> bool {
    key.ends_with("num_batches_tracked")
}

/// Loads the weights at `path` into a backbone of `config`.
pub fn import_backbone<B: Backend>(
    config: &BackboneConfig,
    path: &Path,
    format: CheckpointFormat,
    device: &B::Device,
) -> Result<Backbone<B>, BackboneError> {
    if !path.exists() {
        return Err(BackboneError::Io {
            action: "read",
            path: path.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    let format = format.resolve(path)?;
    let model = config.init::<B>(device)?;
    if format == CheckpointFormat::Burn {
        return load_record_into(model, &path.with_extension(""), device);
    }
    // Import into the concrete network: an enum would put its variant name into every path.
    Ok(match model {
        Backbone::ConvFc(mut m) => {
            check(config, path, load_into(&mut m, path, format)?)?;
            Backbone::ConvFc(m)
        }
        Backbone::SmallCnn(mut m) => {
            check(config, path, load_into(&mut m, path, format)?)?;
            Backbone::SmallCnn(m)
        }
        Backbone::ResNet(mut m) => {
            check(config, path, load_into(&mut m, path, format)?)?;
            Backbone::ResNet(m)
        }
    })
}

fn load_into<B: Backend, M: ModuleSnapshot<B>>(
    module: &mut M,
    path: &Path,
    format: CheckpointFormat,
) -> Result<ApplyResult, BackboneError> {
    let failed = |e: String| BackboneError::Checkpoint {
        path: path.to_path_buf(),
        message: e,
    };
    let remap = |mut store: SafetensorsStore| {
        for (from, to) in REMAP {
            store = store.with_key_remapping(*from, *to);
        }
        store
    };
    match format {
        CheckpointFormat::Safetensors => {
            let mut store = remap(
                SafetensorsStore::from_file(path)
                    .with_from_adapter(PyTorchToBurnAdapter)
                    .validate(false)
                    .allow_partial(true),
            );
            module
                .load_from(&mut store)
                .map_err(|e| failed(e.to_string()))
        }
        _ => {
            // Training scripts often save `{"state_dict": …}` or `{"model": …}`; try the plain
            // dict first, then those nestings, and keep the first that matched anything.
            let mut first: Option<ApplyResult> = None;
            for top in [None, Some("state_dict"), Some("model")] {
                let mut store = PytorchStore::from_file(path)
                    .validate(false)
                    .allow_partial(true);
                if let Some(key) = top {
                    store = store.with_top_level_key(key);
                }
                for (from, to) in REMAP {
                    store = store.with_key_remapping(*from, *to);
                }
                match module.load_from(&mut store) {
                    Ok(result) if !result.applied.is_empty() => return Ok(result),
                    Ok(result) => {
                        first.get_or_insert(result);
                    }
                    Err(e) if top.is_none() => return Err(failed(e.to_string())),
                    Err(_) => {}
                }
            }
            Ok(first.expect("the plain state dict was tried"))
        }
    }
}

/// Turns a lenient load into an error listing every missing key, unexpected key and mismatch.
fn check(config: &BackboneConfig, path: &Path, result: ApplyResult) -> Result<(), BackboneError> {
    let mut lines = Vec::new();
    for error in &result.errors {
        lines.push(match error {
            ApplyError::ShapeMismatch {
                path,
                expected,
                found,
            } => format!(
                "  shape mismatch: `{path}` is {:?} in the model but {:?} in the file",
                expected.as_slice(),
                found.as_slice()
            ),
            other => format!("  {other}"),
        });
    }
    for (key, _) in &result.missing {
        lines.push(format!("  missing in the file: `{key}`"));
    }
    // burn-store finds BatchNorm's `gamma`/`beta` under PyTorch's `weight`/`bias` but still lists
    // the PyTorch names as unused; they were used when their Burn twin was applied.
    let applied_twin = |key: &str| {
        let twin = key
            .strip_suffix(".weight")
            .map(|p| format!("{p}.gamma"))
            .or_else(|| key.strip_suffix(".bias").map(|p| format!("{p}.beta")));
        twin.is_some_and(|t| result.applied.contains(&t))
    };
    for key in result
        .unused
        .iter()
        .filter(|k| !ignorable(k) && !applied_twin(k))
    {
        lines.push(format!("  unexpected in the file: `{key}`"));
    }
    if lines.is_empty() {
        return Ok(());
    }
    Err(BackboneError::ImportMismatch {
        path: path.to_path_buf(),
        arch: arch_name(config.arch).to_string(),
        details: lines.join("\n"),
    })
}
