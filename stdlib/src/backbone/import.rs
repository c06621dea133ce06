//! Importing first-stage models trained in PyTorch: state dicts in the torchvision layout (and
//! LDAM-DRW's, whose ResNet-32 calls its classifier `linear`), saved as `torch.save` files or
//! safetensors, plain or nested in a training checkpoint.
//!
//! The file is read by [`torch_file`](lortflow_data::torch_file) (every byte checked, any float dtype).
//! Our module's tensors are named the PyTorch way (`bn1.weight` for Burn's `gamma`,
//! `downsample.0` for our `downsample.conv`) and looked up under two dotted prefixes: the trunk's
//! (`module.`, `state_dict.feat_model.module.`, …) and the classifier's. Both are found in the file
//! unless the pipeline states them. Everything that does not fit is reported at once, in the file's
//! names, with a guess at the prefix when there is one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use burn::module::ParamId;
use burn::tensor::TensorData;
use burn::tensor::backend::Backend;
use burn_store::{ModuleSnapshot, TensorSnapshot};

use super::base::{Backbone, BackboneConfig};
use super::checkpoint::load_record_into;
use super::error::BackboneError;
use super::torch_names::{classifier_name, is_linear_weight, torch_name, transpose};
use lortflow_data::torch_file::{Dtype, FileKind, ReadError, WeightsFile};

/// The format of a weights file (`checkpoint format=…`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// A Burn record by its `.mpk` extension; anything else by its contents.
    Auto,
    /// A safetensors state dict.
    Safetensors,
    /// A `torch.save` file (zip archive or legacy pickle).
    Pytorch,
    /// A Burn record written by lortflow (`backbone.mpk`).
    Burn,
}

/// The stage-1 classifier of a checkpoint (`checkpoint classifier-kind=…`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassifierKind {
    /// From the file: a `weight` of `[K, D]` is a linear layer; `[D, K]` without a bias,
    /// LDAM-DRW's `NormedLinear`.
    Auto,
    /// `nn.Linear(D, K)` (its bias may be absent: zeros).
    Linear,
    /// LDAM-DRW's `NormedLinear(D, K)`: cosine logits, weight `[D, K]`, no bias.
    NormedLinear,
}

/// Where the network's tensors are in the file (`checkpoint trunk=… classifier=…`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointMapping {
    /// Dotted prefix of the trunk's tensors; found in the file when `None`.
    pub trunk: Option<String>,
    /// Dotted prefix of the classifier's `weight` and `bias`; found when `None`.
    pub classifier: Option<String>,
    /// `nn.Linear` or LDAM-DRW's `NormedLinear`; from the shapes when `Auto`.
    pub classifier_kind: ClassifierKind,
}

impl Default for CheckpointMapping {
    /// Everything found in the file.
    fn default() -> Self {
        Self {
            trunk: None,
            classifier: None,
            classifier_kind: ClassifierKind::Auto,
        }
    }
}

/// What an import found, for the log and the stage's summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportReport {
    /// "a PyTorch archive", "a legacy PyTorch pickle", "a safetensors file", "a lortflow record".
    pub file: &'static str,
    /// The trunk prefix used.
    pub trunk: String,
    /// The classifier prefix used.
    pub classifier: String,
    /// `linear` or `normed-linear`.
    pub classifier_kind: ClassifierKind,
    /// Dtypes converted to float32 (`float16`, …), if any.
    pub converted_from: Vec<&'static str>,
}

/// Loads the weights at `path` into a backbone of `config`.
pub fn import_backbone<B: Backend>(
    config: &BackboneConfig,
    path: &Path,
    format: CheckpointFormat,
    mapping: &CheckpointMapping,
    device: &B::Device,
) -> Result<(Backbone<B>, ImportReport), BackboneError> {
    let failed = |message: String| BackboneError::Checkpoint {
        path: path.to_path_buf(),
        message,
    };
    if !path.is_file() {
        return Err(failed(if path.exists() {
            "it is a directory, not a weights file".into()
        } else {
            "the file does not exist".into()
        }));
    }
    let is_record = path.extension().is_some_and(|e| e == "mpk");
    let model = config.init::<B>(device)?;
    if format == CheckpointFormat::Burn || (format == CheckpointFormat::Auto && is_record) {
        let model = load_record_into(model, &path.with_extension(""), device)?;
        let report = ImportReport {
            file: "a lortflow record",
            trunk: String::new(),
            classifier: "fc.".into(),
            classifier_kind: ClassifierKind::Linear,
            converted_from: Vec::new(),
        };
        return Ok((model, report));
    }
    let file = WeightsFile::open(path).map_err(|e| failed(e.to_string()))?;
    let contradicted = match (format, file.kind) {
        (CheckpointFormat::Safetensors, FileKind::Safetensors)
        | (CheckpointFormat::Pytorch, FileKind::TorchZip | FileKind::TorchLegacy)
        | (CheckpointFormat::Auto | CheckpointFormat::Burn, _) => None,
        (CheckpointFormat::Safetensors, _) => Some("safetensors"),
        (CheckpointFormat::Pytorch, _) => Some("pytorch"),
    };
    if let Some(said) = contradicted {
        return Err(failed(format!(
            "`format=\"{said}\"` but it is {}; remove `format` (it is read by its contents)",
            file.kind.describe()
        )));
    }
    // Import into the concrete network: an enum would put its variant name into every path.
    Ok(match model {
        Backbone::ConvFc(mut m) => {
            let report = import_into(&mut m, config, &file, path, mapping)?;
            (Backbone::ConvFc(m), report)
        }
        Backbone::SmallCnn(mut m) => {
            let report = import_into(&mut m, config, &file, path, mapping)?;
            (Backbone::SmallCnn(m), report)
        }
        Backbone::ResNet(mut m) => {
            let report = import_into(&mut m, config, &file, path, mapping)?;
            (Backbone::ResNet(m), report)
        }
    })
}

/// One tensor of our module, named the PyTorch way.
struct Wanted {
    /// Our path (`layer1.0.bn1.gamma`).
    burn: String,
    /// PyTorch's, relative to its prefix (`layer1.0.bn1.weight`; `weight` for the classifier).
    torch: String,
    /// In PyTorch's layout.
    shape: Vec<usize>,
    /// A linear layer's weight: `[out, in]` in PyTorch, `[in, out]` in Burn.
    transposed: bool,
    container_stack: Vec<String>,
    id: ParamId,
}

fn wanted<B: Backend, M: ModuleSnapshot<B>>(module: &M) -> (Vec<Wanted>, Vec<Wanted>) {
    let mut trunk = Vec::new();
    let mut classifier = Vec::new();
    for s in module.collect(None, None, false) {
        let burn = s.full_path();
        let transposed = is_linear_weight(&s);
        let mut shape: Vec<usize> = s.shape.iter().copied().collect();
        if transposed {
            shape.reverse();
        }
        let (torch, list) = match burn.strip_prefix("fc.") {
            Some(rest) => (rest.to_string(), &mut classifier),
            None => (torch_name(&burn), &mut trunk),
        };
        list.push(Wanted {
            burn,
            torch,
            shape,
            transposed,
            container_stack: s.container_stack.clone().unwrap_or_default(),
            id: s.tensor_id.unwrap_or_default(),
        });
    }
    (trunk, classifier)
}

/// Prefixes `p` under which the file holds `p + name` with the shape of our tensor `name`, with
/// their counts, most first (ties in file order). Shapes keep a block's `conv1` from passing for
/// the stem's.
fn prefix_counts<'a>(file: &'a WeightsFile, wanted: &[Wanted]) -> Vec<(&'a str, usize)> {
    let mut counts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (order, key) in file.keys().enumerate() {
        let shape = &file.get(key).expect("listed").shape;
        for w in wanted {
            if let Some(prefix) = key.strip_suffix(w.torch.as_str())
                && (prefix.is_empty() || prefix.ends_with('.'))
                && *shape == w.shape
            {
                counts.entry(prefix).or_insert((0, order)).0 += 1;
            }
        }
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by_key(|(_, (n, order))| (std::cmp::Reverse(*n), *order));
    counts.into_iter().map(|(p, (n, _))| (p, n)).collect()
}

fn quote_list<'a>(items: impl IntoIterator<Item = &'a str>, limit: usize) -> String {
    let items: Vec<&str> = items.into_iter().collect();
    let mut text = items
        .iter()
        .take(limit)
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > limit {
        text.push_str(&format!(" and {} more", items.len() - limit));
    }
    text
}

/// A prefix as users write it: dotted, `""` for none.
fn normalise_prefix(prefix: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('.') {
        prefix.to_string()
    } else {
        format!("{prefix}.")
    }
}

fn shape_text(shape: &[usize]) -> String {
    format!("{shape:?}")
}

fn import_into<B: Backend, M: ModuleSnapshot<B>>(
    module: &mut M,
    config: &BackboneConfig,
    file: &WeightsFile,
    path: &Path,
    mapping: &CheckpointMapping,
) -> Result<ImportReport, BackboneError> {
    let arch = config.arch.name();
    let mismatch = |details: Vec<String>| BackboneError::ImportMismatch {
        path: path.to_path_buf(),
        arch: format!("`{arch}` with {} classes", config.num_classes),
        details: details.join("\n"),
    };
    let first_keys = || {
        let keys: Vec<String> = file
            .keys()
            .take(6)
            .map(|k| format!("{k} {}", shape_text(&file.get(k).expect("listed").shape)))
            .collect();
        format!(
            "the file's first tensors (of {}): {}",
            file.len(),
            quote_list(keys.iter().map(String::as_str), 6)
        )
    };
    let (trunk_wanted, classifier_wanted) = wanted(module);
    let trunk_names: Vec<&str> = trunk_wanted.iter().map(|w| w.torch.as_str()).collect();
    let counts = prefix_counts(file, &trunk_wanted);

    // The trunk's prefix.
    let trunk = match &mapping.trunk {
        Some(p) => normalise_prefix(p),
        None => match counts.as_slice() {
            [] => {
                return Err(mismatch(vec![
                    format!(
                        "  none of {arch}'s tensors ({}, …) is in the file with its shape, under any prefix",
                        trunk_wanted.first().map_or("?".into(), |w| format!(
                            "`{}` {}",
                            w.torch,
                            shape_text(&w.shape)
                        ))
                    ),
                    format!("  {}", first_keys()),
                    "  is `arch` right? A file of another network cannot be imported".into(),
                ]));
            }
            [(best, n), ..] if 2 * n < trunk_names.len() => {
                // Not a near miss: another network, whose few shared names are noise.
                return Err(mismatch(vec![
                    format!(
                        "  the file does not hold {arch}: at most {n} of its {} tensors are there (under `{best}`)",
                        trunk_names.len()
                    ),
                    format!("  {}", first_keys()),
                    "  is `arch` right?".into(),
                ]));
            }
            [(best, n), rest @ ..] => {
                let tied: Vec<&str> = rest
                    .iter()
                    .filter(|(_, m)| m == n)
                    .map(|(p, _)| *p)
                    .collect();
                if !tied.is_empty() && *n == trunk_names.len() {
                    return Err(mismatch(vec![format!(
                        "  the file holds {arch} more than once: under {}; say which with `trunk=\"…\"`",
                        quote_list(std::iter::once(*best).chain(tied), 6)
                    )]));
                }
                best.to_string()
            }
        },
    };

    // Which tensors are there, with the right shape.
    let mut missing = Vec::new();
    let mut wrong_shape = Vec::new();
    for w in &trunk_wanted {
        let key = format!("{trunk}{}", w.torch);
        match file.get(&key) {
            None => missing.push(key),
            Some(t) if t.shape != w.shape => wrong_shape.push(format!(
                "  wrong shape: `{key}` is {} in the file, {} in {arch}",
                shape_text(&t.shape),
                shape_text(&w.shape)
            )),
            Some(_) => {}
        }
    }

    // The classifier: its prefix and kind.
    let (k, d) = (config.num_classes, config.feature_dim());
    let classifier = match &mapping.classifier {
        Some(p) => normalise_prefix(p),
        None => match find_classifier(file, &trunk, &trunk_wanted, k, d, mapping.classifier_kind) {
            Ok(prefix) => prefix,
            Err(lines) => {
                // A classifier where the network keeps it, of another size: report its shape.
                let usual = [classifier_name(config.arch), "fc", "linear"]
                    .map(|name| format!("{trunk}{name}."));
                match usual
                    .into_iter()
                    .find(|p| file.get(&format!("{p}weight")).is_some())
                {
                    Some(prefix) => prefix,
                    None => {
                        let mut details = lines;
                        details.extend(missing_summary(&missing, &wrong_shape));
                        return Err(mismatch(details));
                    }
                }
            }
        },
    };
    let weight_key = format!("{classifier}weight");
    let bias_key = format!("{classifier}bias");
    let weight = file.get(&weight_key);
    let bias = file.get(&bias_key);
    let kind = match (
        mapping.classifier_kind,
        weight.map(|w| w.shape.as_slice()),
        bias,
    ) {
        (ClassifierKind::Auto, Some([rows, cols]), None) if *rows == d && *cols == k && d != k => {
            ClassifierKind::NormedLinear
        }
        (ClassifierKind::Auto, Some([rows, _]), None) if *rows == d && d == k => {
            return Err(mismatch(vec![format!(
                "  `{weight_key}` is [{d}, {d}] without a bias: an `nn.Linear(bias=False)` or LDAM's \
                 `NormedLinear`; say which with `classifier-kind=\"linear\"` or `\"normed-linear\"`"
            )]));
        }
        (ClassifierKind::Auto, ..) => ClassifierKind::Linear,
        (kind, ..) => kind,
    };
    let weight_shape = match kind {
        ClassifierKind::NormedLinear => vec![d, k],
        _ => vec![k, d],
    };
    match weight {
        None => missing.push(weight_key.clone()),
        Some(w) if w.shape != weight_shape => wrong_shape.push(format!(
            "  wrong shape: `{weight_key}` is {} in the file; a {} classifier of {k} classes over {d} features is {}",
            shape_text(&w.shape),
            if kind == ClassifierKind::NormedLinear { "`NormedLinear`" } else { "linear" },
            shape_text(&weight_shape)
        )),
        Some(_) => {}
    }
    if let Some(b) = bias
        && kind != ClassifierKind::NormedLinear
        && b.shape != [k]
    {
        wrong_shape.push(format!(
            "  wrong shape: `{bias_key}` is {} in the file, [{k}] for {k} classes",
            shape_text(&b.shape)
        ));
    }

    // Tensors under the trunk's prefix that the network does not have.
    let known: BTreeSet<String> = trunk_wanted
        .iter()
        .map(|w| format!("{trunk}{}", w.torch))
        .chain([weight_key.clone(), bias_key.clone()])
        .collect();
    let unexpected: Vec<&str> = file
        .keys()
        .filter(|k| {
            k.starts_with(trunk.as_str())
                && !known.contains(*k)
                && !k.ends_with("num_batches_tracked")
        })
        .collect();

    if !missing.is_empty() || !wrong_shape.is_empty() || !unexpected.is_empty() {
        let mut details = missing_summary(&missing, &wrong_shape);
        let trunk_missing = trunk_wanted
            .iter()
            .filter(|w| file.get(&format!("{trunk}{}", w.torch)).is_none())
            .count();
        let found = trunk_wanted.len() - trunk_missing;
        match counts.first() {
            Some((best, n)) if *best != trunk && *n > found => {
                // The stated prefix is wrong; what lies under it is beside the point.
                details.push(format!(
                    "  the file's tensors fit better under `{best}` ({n} of {} are there); try `trunk=\"{best}\"`",
                    trunk_names.len()
                ));
            }
            _ => {
                if !unexpected.is_empty() {
                    details.push(format!(
                        "  not in {arch}: {}",
                        quote_list(unexpected.iter().copied(), 5)
                    ));
                }
                if found == 0 {
                    details.push(format!("  {}", first_keys()));
                }
                if !missing.is_empty() && !unexpected.is_empty() {
                    details.push("  is `arch` right?".into());
                }
            }
        }
        return Err(mismatch(details));
    }

    // Read, convert and apply.
    let read = |key: &str| -> Result<Vec<f32>, BackboneError> {
        file.read_f32(key).map_err(|e| BackboneError::Checkpoint {
            path: path.to_path_buf(),
            message: match e {
                ReadError::Truncated { .. } => e.to_string(),
                other => format!("cannot read `{key}`: {other}"),
            },
        })
    };
    let mut converted = BTreeSet::new();
    let mut snapshots = Vec::new();
    let mut push = |w: &Wanted, key: &str, values: Vec<f32>| {
        let mut shape = w.shape.clone();
        let values = if w.transposed {
            let t = transpose(&values, shape[0], shape[1]);
            shape.reverse();
            t
        } else {
            values
        };
        if let Some(info) = file.get(key)
            && info.dtype != Dtype::F32
        {
            converted.insert(info.dtype.name());
        }
        snapshots.push(TensorSnapshot::from_data(
            TensorData::new(values, shape),
            w.burn.split('.').map(str::to_string).collect(),
            w.container_stack.clone(),
            w.id,
        ));
    };
    for w in &trunk_wanted {
        let key = format!("{trunk}{}", w.torch);
        let values = read(&key)?;
        push(w, &key, values);
    }
    for w in &classifier_wanted {
        match (w.torch.as_str(), kind) {
            ("weight", ClassifierKind::NormedLinear) => {
                // `F.normalize(weight, dim=0)`: unit-norm class columns, already `[in, out]`.
                let mut values = read(&weight_key)?;
                for c in 0..k {
                    let norm = (0..d)
                        .map(|r| values[r * k + c].powi(2))
                        .sum::<f32>()
                        .sqrt();
                    for r in 0..d {
                        values[r * k + c] /= norm.max(1e-12);
                    }
                }
                let w = Wanted {
                    transposed: false,
                    shape: vec![d, k],
                    burn: w.burn.clone(),
                    torch: w.torch.clone(),
                    container_stack: w.container_stack.clone(),
                    id: w.id,
                };
                push(&w, &weight_key, values);
            }
            ("weight", _) => {
                let values = read(&weight_key)?;
                push(w, &weight_key, values);
            }
            (_, ClassifierKind::NormedLinear) => push(w, &bias_key, vec![0.0; k]),
            _ => {
                let values = if bias.is_some() {
                    read(&bias_key)?
                } else {
                    vec![0.0; k]
                };
                push(w, &bias_key, values);
            }
        }
    }
    let result = module.apply(snapshots, None, None, false);
    if !result.errors.is_empty() || !result.missing.is_empty() {
        // The checks above cover every tensor; this is a bug of ours, not the file's.
        return Err(BackboneError::InvalidConfig(format!(
            "importing `{}` left {} tensors unset and {} errors: {:?}",
            path.display(),
            result.missing.len(),
            result.errors.len(),
            result.errors
        )));
    }
    Ok(ImportReport {
        file: file.kind.describe(),
        trunk,
        classifier,
        classifier_kind: kind,
        converted_from: converted.into_iter().collect(),
    })
}

fn missing_summary(missing: &[String], wrong_shape: &[String]) -> Vec<String> {
    let mut lines = Vec::new();
    if !missing.is_empty() {
        lines.push(format!(
            "  missing in the file: {}",
            quote_list(missing.iter().map(String::as_str), 5)
        ));
    }
    lines.extend(wrong_shape.iter().take(5).cloned());
    if wrong_shape.len() > 5 {
        lines.push(format!(
            "  and {} more tensors of the wrong shape",
            wrong_shape.len() - 5
        ));
    }
    lines
}

/// The classifier's prefix: a `weight` of `[K, D]` (or `[D, K]`, a `NormedLinear`), preferring
/// one under the trunk's prefix, then one called `fc`, `linear`, `classifier` or `head`.
fn find_classifier(
    file: &WeightsFile,
    trunk: &str,
    trunk_wanted: &[Wanted],
    k: usize,
    d: usize,
    kind: ClassifierKind,
) -> Result<String, Vec<String>> {
    // A trunk layer of the same shape (conv-fc's `embed`, say) is not the classifier.
    let trunk_keys: BTreeSet<String> = trunk_wanted
        .iter()
        .map(|w| format!("{trunk}{}", w.torch))
        .collect();
    let fits = |shape: &[usize]| match kind {
        ClassifierKind::Linear => shape == [k, d],
        ClassifierKind::NormedLinear => shape == [d, k],
        ClassifierKind::Auto => shape == [k, d] || shape == [d, k],
    };
    let mut candidates: Vec<&str> = file
        .keys()
        .filter_map(|key| key.strip_suffix("weight").map(|p| (key, p)))
        .filter(|(key, p)| {
            (p.is_empty() || p.ends_with('.'))
                && !trunk_keys.contains(*key)
                && fits(&file.get(key).expect("listed").shape)
        })
        .map(|(_, p)| p)
        .collect();
    let named = |p: &str| {
        let last = p.trim_end_matches('.').rsplit('.').next().unwrap_or("");
        matches!(last, "fc" | "linear" | "classifier" | "head")
    };
    for narrow in [
        &(|p: &str| p.starts_with(trunk)) as &dyn Fn(&str) -> bool,
        &named,
    ] {
        if candidates.len() > 1 && candidates.iter().any(|p| narrow(p)) {
            candidates.retain(|p| narrow(p));
        }
    }
    match candidates.as_slice() {
        [one] => Ok(one.to_string()),
        [] => {
            let matrices: Vec<String> = file
                .keys()
                .filter(|key| file.get(key).is_some_and(|t| t.shape.len() == 2))
                .map(|key| {
                    format!(
                        "{key} {}",
                        shape_text(&file.get(key).expect("listed").shape)
                    )
                })
                .collect();
            Err(if matrices.is_empty() {
                vec![format!(
                    "  no classifier: {k} classes over {d} features need a `weight` of [{k}, {d}], and the file has no matrix"
                )]
            } else {
                vec![
                    format!(
                        "  no classifier: {k} classes over {d} features need a `weight` of [{k}, {d}] \
                         ([{d}, {k}] for LDAM's `NormedLinear`); the file's matrices: {}",
                        quote_list(matrices.iter().map(String::as_str), 5)
                    ),
                    "  does the dataset have the classes the checkpoint was trained on? Or point \
                     `classifier=\"…\"` at it"
                        .into(),
                ]
            })
        }
        many => Err(vec![format!(
            "  several tensors could be the classifier: {}; say which with `classifier=\"…\"`",
            quote_list(many.iter().copied(), 5)
        )]),
    }
}
