//! The typed pipeline IR: what the runtime plans and the stages execute.
//!
//! Every value keeps its span. The serde form of a stage spec (spans left out) is its canonical
//! parameter set, which feeds the cache key and `lortflow status`'s parameter diffs.

use std::path::PathBuf;

use serde::Serialize;

use crate::ast::Node;
use crate::schema::StageKind;
use crate::source::{SourceMap, Span, Spanned};

// The names of every choice live below the schema, which lists them; the IR holds them.
pub use crate::vocab::*;

/// A checked pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The root file and its includes.
    pub sources: SourceMap,
    /// Pipeline-wide defaults.
    pub defaults: Defaults,
    /// Every stage, sweeps included, in declaration order (includes in place).
    pub stages: Vec<Stage>,
}

impl Pipeline {
    /// The stage called `name`.
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name.value == name)
    }

    /// The stages of one kind.
    pub fn stages_of(&self, kind: StageKind) -> impl Iterator<Item = &Stage> {
        self.stages.iter().filter(move |s| s.kind == kind)
    }

    /// Each stage's index in [`Pipeline::stages`], by name.
    pub fn index_by_name(&self) -> std::collections::HashMap<&str, usize> {
        self.stages
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.value.as_str(), i))
            .collect()
    }

    /// Stage indices in an order where every stage comes after what it [reads](Self::reads)
    /// (declaration order among independent stages: stable and readable). `None` when there is
    /// a cycle. The order of plans, `lortflow graph` and `status`.
    pub fn topological_order(&self) -> Option<Vec<usize>> {
        let index = self.index_by_name();
        let n = self.stages.len();
        let mut readers: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut indegree = vec![0usize; n];
        for (i, stage) in self.stages.iter().enumerate() {
            for (_, name) in self.reads(stage) {
                if let Some(&j) = index.get(name) {
                    readers[j].push(i);
                    indegree[i] += 1;
                }
            }
        }
        let mut order = Vec::with_capacity(n);
        let mut done = vec![false; n];
        while order.len() < n {
            let next = (0..n).find(|&i| !done[i] && indegree[i] == 0)?;
            done[next] = true;
            order.push(next);
            for &reader in &readers[next] {
                indegree[reader] -= 1;
            }
        }
        Some(order)
    }

    /// The names of the declared stages `stage` reads, with their roles: its references
    /// ([`Stage::inputs`]) and, for an evaluation, the heads and sweeps its patterns select
    /// (role `heads`). Names that resolve to no stage are included; lint reports them.
    pub fn reads<'p>(&'p self, stage: &'p Stage) -> Vec<(&'static str, &'p str)> {
        let mut reads: Vec<(&'static str, &'p str)> = stage
            .inputs()
            .into_iter()
            .map(|r| (r.role, r.name.value.as_str()))
            .collect();
        if let StageSpec::Evaluate(eval) = &stage.spec {
            reads.extend(
                evaluated_stages(self, eval)
                    .into_iter()
                    .map(|s| ("heads", s.name.value.as_str())),
            );
        }
        reads
    }
}

/// `defaults { ... }`.
#[derive(Debug, Clone, Serialize)]
pub struct Defaults {
    /// Backend of training stages.
    pub backend: Spanned<Backend>,
    /// Base seed.
    pub seed: Spanned<u64>,
    /// Devices a training backbone splits its batches over (`--devices` overrides it).
    pub devices: Spanned<usize>,
    /// `head { … }`: the re-training budget every head takes before its preset's defaults (its
    /// settings reach the heads' IR, which is what keys are made of).
    #[serde(skip)]
    pub head: Option<crate::ast::Node>,
}

/// One declared stage.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Its unique name.
    pub name: Spanned<String>,
    /// Its kind.
    pub kind: StageKind,
    /// The checked syntax it was lowered from; `--set` and sweeps edit this and lower again.
    pub node: Node,
    /// The typed parameters.
    pub spec: StageSpec,
}

impl Stage {
    /// The stages this one reads, with the role of each reference.
    pub fn inputs(&self) -> Vec<StageRef<'_>> {
        fn mk<'a>(role: &'static str, name: &'a Spanned<String>) -> StageRef<'a> {
            StageRef { role, name }
        }
        match &self.spec {
            StageSpec::Dataset(_) => vec![],
            StageSpec::Backbone(b) => vec![mk("data", &b.data)],
            StageSpec::Features(f) => vec![mk("backbone", &f.backbone)],
            StageSpec::Head(h) => {
                let mut refs = vec![mk("features", &h.features)];
                if let Init::Head(from) = &h.init.value {
                    refs.push(mk("init", from));
                }
                refs
            }
            StageSpec::Sweep(s) => vec![mk("base", &s.base)],
            StageSpec::Evaluate(_) => vec![],
        }
    }

    /// Whether the stage trains data-parallel when the run has several devices (`defaults
    /// devices`, `--devices`): a backbone that trains. Its results then depend on the device
    /// count (BatchNorm statistics are per replica), so the count is in its key.
    pub fn is_data_parallel(&self) -> bool {
        matches!(&self.spec, StageSpec::Backbone(b) if matches!(b.weights, Weights::Train(_)))
    }

    /// The files and directories outside the store this stage reads (a dataset's files, a
    /// checkpoint); their digests enter its cache key.
    pub fn external_files(&self) -> Vec<&PathValue> {
        match &self.spec {
            StageSpec::Dataset(d) => d.source.value.paths(),
            StageSpec::Backbone(b) => match &b.weights {
                Weights::Checkpoint { path, .. } => vec![path],
                Weights::Train(_) => vec![],
            },
            _ => vec![],
        }
    }

    /// Whether the stage downloads its files when they are missing (an official dataset with
    /// `download=#true`): it is then keyed by its parameters, not by the files' content.
    pub fn downloads(&self) -> bool {
        matches!(&self.spec, StageSpec::Dataset(d) if d.source.value.downloadable())
    }

    /// The canonical parameters: the spec's serde form, spans left out.
    pub fn canonical_params(&self) -> serde_json::Value {
        serde_json::to_value(&self.spec).expect("stage specs should always serialize")
    }

    /// The canonical parameters without the names of the stages this one reads (the fields
    /// behind [`Stage::inputs`], and an evaluation's head patterns): a cache key takes its
    /// inputs by their keys, so that renaming a stage changes nothing below it. `init "head"`
    /// stays as the string `"head"`.
    pub fn params_without_references(&self) -> serde_json::Value {
        let mut params = self.canonical_params();
        if let serde_json::Value::Object(map) = &mut params {
            for reference in ["data", "backbone", "features", "base", "heads"] {
                map.remove(reference);
            }
            if let Some(serde_json::Value::Object(init)) = map.get("init")
                && init.contains_key("head")
            {
                map.insert("init".into(), serde_json::Value::String("head".into()));
            }
        }
        params
    }
}

impl StageSpec {
    /// What to do when a file this stage reads does not exist, if there is something to say.
    pub fn missing_file_hint(&self) -> Option<&'static str> {
        match self {
            StageSpec::Dataset(d) => match &d.source.value {
                Source::Cifar10 { .. }
                | Source::Cifar100 { .. }
                | Source::FashionMnist { .. }
                | Source::Mnist { .. } => {
                    Some("put the official files there, or add `download=#true` to `source`")
                }
                Source::ImageList { .. } => {
                    Some("see the list-file format in docs/language.md (`source \"image-list\"`)")
                }
                Source::Inat2018 { .. } => {
                    Some("the iNaturalist 2018 JSON files and images go there")
                }
                Source::ImageFolder { .. } => {
                    Some("each split is a folder with one subfolder of images per class")
                }
                Source::Features { .. } | Source::Synthetic { .. } => None,
            },
            StageSpec::Backbone(_) => Some("point `checkpoint` at an existing weights file"),
            _ => None,
        }
    }
}

/// A reference from one stage to another.
#[derive(Debug, Clone, Copy)]
pub struct StageRef<'a> {
    /// The node that makes the reference (`features`, `init`, ...).
    pub role: &'static str,
    /// The referenced name.
    pub name: &'a Spanned<String>,
}

/// The typed parameters of a stage.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum StageSpec {
    /// `dataset`.
    Dataset(DatasetSpec),
    /// `backbone`.
    Backbone(BackboneSpec),
    /// `features`.
    Features(FeaturesSpec),
    /// `head`.
    Head(Box<HeadSpec>),
    /// `sweep`.
    Sweep(SweepSpec),
    /// `evaluate`.
    Evaluate(EvaluateSpec),
}

/// A path as written, and resolved against the directory of the file that wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct PathValue {
    /// As written.
    pub written: String,
    /// Resolved.
    pub resolved: PathBuf,
    /// Where it was written.
    pub span: Span,
}

impl Serialize for PathValue {
    /// Paths enter the canonical form as written: the content of the files they name enters the
    /// cache key through file digests, so moving a whole project keeps its cache.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.written.serialize(s)
    }
}

// ---------------------------------------------------------------------------------------------
// dataset

/// `dataset`.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetSpec {
    /// Where the data comes from.
    pub source: Spanned<Source>,
    /// How the train split is made long-tailed.
    pub long_tail: LongTail,
    /// Many / medium / few thresholds.
    pub groups: Groups,
}

/// `source`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "format", rename_all = "kebab-case")]
pub enum Source {
    /// Fashion-MNIST IDX files.
    FashionMnist {
        /// Directory.
        root: PathValue,
        /// Download when missing.
        download: bool,
    },
    /// MNIST IDX files.
    Mnist {
        /// Directory.
        root: PathValue,
        /// Download when missing.
        download: bool,
    },
    /// CIFAR-10 binary.
    Cifar10 {
        /// Directory.
        root: PathValue,
        /// Download when missing.
        download: bool,
    },
    /// CIFAR-100 binary.
    Cifar100 {
        /// Directory.
        root: PathValue,
        /// Download when missing.
        download: bool,
    },
    /// Root plus list files.
    ImageList {
        /// Image root.
        root: PathValue,
        /// Train list.
        train: PathValue,
        /// Test list.
        test: PathValue,
        /// Crop side.
        image_size: u32,
        /// Resize side.
        resize: u32,
        /// Longer side above which images are shrunk when packed.
        max_side: Option<u32>,
        /// Leave out (and list) files that do not decode.
        skip_bad_images: bool,
    },
    /// iNaturalist 2018 JSON.
    Inat2018 {
        /// Image root.
        root: PathValue,
        /// Train JSON.
        train: PathValue,
        /// Test JSON.
        test: PathValue,
        /// Crop side.
        image_size: u32,
        /// Longer side above which images are shrunk when packed.
        max_side: Option<u32>,
        /// Leave out (and list) files that do not decode.
        skip_bad_images: bool,
    },
    /// One folder per split, one subfolder per class (torchvision's `ImageFolder`).
    ImageFolder {
        /// Train folder.
        train: PathValue,
        /// Test folder.
        test: PathValue,
        /// Crop side.
        image_size: u32,
        /// Resize side.
        resize: u32,
        /// Longer side above which images are shrunk when packed.
        max_side: Option<u32>,
        /// Leave out (and list) files that do not decode.
        skip_bad_images: bool,
    },
    /// Precomputed features.
    Features {
        /// Train matrix.
        train: PathValue,
        /// Test matrix.
        test: PathValue,
        /// Train labels.
        train_labels: Option<PathValue>,
        /// Test labels.
        test_labels: Option<PathValue>,
    },
    /// Generated data.
    Synthetic {
        /// Images or vectors.
        kind: SyntheticKind,
        /// K.
        classes: u32,
        /// Train samples per class.
        per_class: u32,
        /// Test samples per class.
        test_per_class: u32,
        /// Image side.
        size: u32,
        /// Image channels.
        channels: u32,
        /// Vector dimension.
        dim: u32,
        /// Noise level.
        noise: f64,
        /// Seed.
        seed: u64,
    },
}

impl Source {
    /// The external files and directories this source reads.
    pub fn paths(&self) -> Vec<&PathValue> {
        match self {
            Source::FashionMnist { root, .. }
            | Source::Mnist { root, .. }
            | Source::Cifar10 { root, .. }
            | Source::Cifar100 { root, .. } => vec![root],
            Source::ImageList {
                root, train, test, ..
            }
            | Source::Inat2018 {
                root, train, test, ..
            } => {
                vec![root, train, test]
            }
            Source::ImageFolder { train, test, .. } => vec![train, test],
            Source::Features {
                train,
                test,
                train_labels,
                test_labels,
            } => [
                Some(train),
                Some(test),
                train_labels.as_ref(),
                test_labels.as_ref(),
            ]
            .into_iter()
            .flatten()
            .collect(),
            Source::Synthetic { .. } => vec![],
        }
    }

    /// Whether the source fetches its official files when they are missing (`download=#true`).
    /// Such a source is identified by its parameters, not by the content of its files: they are
    /// the official ones, checked against their published checksums when downloaded.
    pub fn downloadable(&self) -> bool {
        match self {
            Source::FashionMnist { download, .. }
            | Source::Mnist { download, .. }
            | Source::Cifar10 { download, .. }
            | Source::Cifar100 { download, .. } => *download,
            _ => false,
        }
    }

    /// Whether the source holds features rather than images.
    pub fn is_features(&self) -> bool {
        matches!(self, Source::Features { .. })
            || matches!(
                self,
                Source::Synthetic {
                    kind: SyntheticKind::Vectors,
                    ..
                }
            )
    }
}

/// `long-tail`.
#[derive(Debug, Clone, Serialize)]
pub struct LongTail {
    /// The profile.
    pub profile: TailProfile,
    /// n_max / n_min.
    pub imbalance_ratio: f64,
    /// n_max, if given.
    pub max_per_class: Option<u64>,
    /// Which samples are kept.
    pub select: TailSelect,
    /// Shuffle seed.
    pub seed: u64,
}

/// `groups`.
#[derive(Debug, Clone, Serialize)]
pub struct Groups {
    /// Many: more than this many training images.
    pub many: f64,
    /// Few: fewer than this many.
    pub few: f64,
    /// Strict (> and <) or inclusive (>= and <=).
    pub rule: GroupRule,
    /// Thresholds are fractions of n_max.
    pub relative: bool,
}

// ---------------------------------------------------------------------------------------------
// backbone

/// `backbone`.
#[derive(Debug, Clone, Serialize)]
pub struct BackboneSpec {
    /// The dataset.
    pub data: Spanned<String>,
    /// The architecture.
    pub arch: Spanned<Arch>,
    /// Trained or loaded.
    pub weights: Weights,
    /// Augmentations in order.
    pub augment: Vec<Augment>,
    /// Input normalisation.
    pub normalize: Normalize,
}

/// Where backbone weights come from.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Weights {
    /// First-stage training.
    Train(BackboneTrain),
    /// A weights file.
    Checkpoint {
        /// The file.
        path: PathValue,
        /// Its format.
        format: CheckpointFormat,
        /// The dotted key prefix of the trunk's tensors (`module.`, `state_dict.feat_model.`);
        /// found in the file when not written. Left out of the key when unset, so that
        /// pipelines written before it keep theirs.
        #[serde(skip_serializing_if = "Option::is_none")]
        trunk: Option<String>,
        /// The prefix of the classifier's `weight` (and `bias`); found when not written.
        #[serde(skip_serializing_if = "Option::is_none")]
        classifier: Option<String>,
        /// What the classifier is.
        #[serde(skip_serializing_if = "ClassifierKind::is_auto")]
        classifier_kind: ClassifierKind,
    },
}

/// `train` of a backbone.
#[derive(Debug, Clone, Serialize)]
pub struct BackboneTrain {
    /// Epochs.
    pub epochs: u32,
    /// Batch size.
    pub batch_size: u32,
    /// Initial learning rate.
    pub lr: f64,
    /// Momentum.
    pub momentum: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Schedule.
    pub schedule: Schedule,
    /// Warm-up epochs.
    pub warmup_epochs: u32,
    /// First-stage loss.
    pub loss: FirstStageLoss,
    /// Sampler.
    pub sampler: BackboneSampler,
    /// Seed.
    pub seed: u64,
}

/// `augment`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Augment {
    /// Pad and crop.
    RandomCrop {
        /// Padding.
        padding: u32,
    },
    /// Random area and aspect crop.
    RandomResizedCrop {
        /// Output side.
        size: u32,
        /// Smallest area fraction.
        min_scale: f64,
    },
    /// Horizontal flip.
    Hflip {
        /// Probability.
        p: f64,
    },
    /// Colour jitter.
    ColorJitter {
        /// Brightness.
        brightness: f64,
        /// Contrast.
        contrast: f64,
        /// Saturation.
        saturation: f64,
        /// Hue.
        hue: f64,
    },
}

// ---------------------------------------------------------------------------------------------
// features

/// `features`.
#[derive(Debug, Clone, Serialize)]
pub struct FeaturesSpec {
    /// The backbone.
    pub backbone: Spanned<String>,
    /// Test-time augmentation.
    pub tta: Tta,
    /// Inference batch size.
    pub batch_size: u32,
}

// ---------------------------------------------------------------------------------------------
// head

/// `head`: the resolved components of the unified form.
#[derive(Debug, Clone, Serialize)]
pub struct HeadSpec {
    /// The features (a features stage or a features dataset).
    pub features: Spanned<String>,
    /// The preset the components started from.
    pub method: Spanned<String>,
    /// Logit function g.
    pub logits: Spanned<Logits>,
    /// Targets.
    pub targets: Spanned<Targets>,
    /// Margin / prior during training.
    pub margin: Spanned<Margin>,
    /// A plugin's per-sample loss, in place of the cross-entropy of `targets` and `margin`.
    /// (Left out of the serialised form when absent, so that heads without one keep the cache
    /// keys they had before plugins existed.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<Spanned<PluginLoss>>,
    /// Per-sample weighting r_w.
    pub weighting: Spanned<Weighting>,
    /// Sampler r_s.
    pub sampler: Spanned<Sampler>,
    /// Weight constraint.
    pub constraint: Spanned<Constraint>,
    /// Inference map h.
    pub inference: Spanned<Inference>,
    /// Optimisation.
    pub train: HeadTrain,
    /// Initialisation.
    pub init: Spanned<Init>,
    /// Number of trials.
    pub trials: u32,
    /// Epoch selection.
    pub select: Spanned<EpochSelect>,
    /// Validation split for `best-val`.
    pub validation: Option<Validation>,
}

/// A loss that a plugin registered (`loss "name" ...`): see
/// [`schema::register_variant`](crate::schema::register_variant).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginLoss {
    /// The registered name.
    pub name: String,
    /// The plugin's implementation version: part of the cache key.
    pub version: String,
    /// Every property of the variant, defaults filled in (serialised beside `name`, so that a
    /// changed property reads `loss.delta-max` in `status`).
    #[serde(flatten)]
    pub params: std::collections::BTreeMap<String, f64>,
}

/// Logit functions.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Logits {
    /// W f + b.
    Linear,
    /// s · cos.
    Cosine {
        /// Scale.
        scale: f64,
        /// Norm of the initial class vectors; `None` keeps the initial weights as they are (and
        /// out of the key, as before the setting existed).
        #[serde(skip_serializing_if = "Option::is_none")]
        init_norm: Option<f64>,
    },
    /// c ⊙ (W f + b).
    Lws,
}

/// Targets.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Targets {
    /// One-hot.
    OneHot,
    /// Smoothed by δ.
    Smoothed {
        /// δ.
        delta: f64,
    },
}

/// Margins and priors.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Margin {
    /// None.
    None,
    /// LDAM.
    Ldam {
        /// Margin of the rarest class.
        max_m: f64,
    },
    /// + log n.
    BalancedSoftmax,
    /// + τ log π.
    LogitAdjust {
        /// τ.
        tau: f64,
    },
}

/// Per-sample weights.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Weighting {
    /// None.
    None,
    /// Effective-number weights.
    ClassBalanced {
        /// β.
        beta: f64,
        /// The base loss the weights scale.
        loss: BaseLoss,
        /// γ of the focal base loss.
        gamma: f64,
        /// DRW start epoch.
        from_epoch: u32,
    },
    /// Focal.
    Focal {
        /// γ.
        gamma: f64,
    },
}

/// Samplers.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Sampler {
    /// Instance-balanced.
    Instance,
    /// Class-aware round robin.
    ClassBalanced {
        /// Samples per visit.
        per_class: u32,
    },
    /// ∝ √n.
    Sqrt,
}

/// Weight constraints.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Constraint {
    /// None.
    None,
    /// ‖W_i‖ ≤ r.
    Maxnorm {
        /// Relative threshold (used when `radius` is unset).
        thresh: f64,
        /// Absolute radius.
        radius: Option<f64>,
        /// When the constraint is applied.
        every: ConstraintEvery,
    },
}

/// Inference maps.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Inference {
    /// None.
    None,
    /// τ-normalisation.
    TauNorm {
        /// τ.
        tau: f64,
        /// Keep the bias.
        bias: bool,
    },
    /// − τ log π.
    LogitAdjust {
        /// τ.
        tau: f64,
    },
}

/// Head optimisation.
#[derive(Debug, Clone, Serialize)]
pub struct HeadTrain {
    /// Epochs.
    pub epochs: u32,
    /// Batch size.
    pub batch_size: u32,
    /// Initial learning rate.
    pub lr: f64,
    /// Momentum.
    pub momentum: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Schedule.
    pub schedule: Schedule,
    /// Seed of trial 0.
    pub seed: u64,
}

/// Head initialisation.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Init {
    /// Re-initialised.
    Random,
    /// The backbone's classifier.
    Backbone,
    /// Another head's result.
    Head(Spanned<String>),
}

/// `validation`.
#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    /// Fraction held out.
    pub fraction: f64,
    /// Split seed.
    pub seed: u64,
}

// ---------------------------------------------------------------------------------------------
// sweep and evaluate

/// `sweep`.
#[derive(Debug, Clone, Serialize)]
pub struct SweepSpec {
    /// The varied stage.
    pub base: Spanned<String>,
    /// Parameters and values; several make a grid.
    pub vary: Vec<Vary>,
    /// Trials per member.
    pub trials: Option<u32>,
}

/// `vary`.
#[derive(Debug, Clone, Serialize)]
pub struct Vary {
    /// The parameter as written.
    pub param: Spanned<String>,
    /// The resolved node and property (`None`: the node's first argument).
    pub target: Option<ParamTarget>,
    /// The values.
    pub values: Vec<Spanned<crate::ast::Value>>,
}

impl Serialize for crate::ast::Value {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

/// A resolved parameter of a stage: a child node and one of its properties.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParamTarget {
    /// The child node (`train`, `method`, `long-tail`).
    pub node: &'static str,
    /// The property, or `None` for the node's first argument.
    pub prop: Option<&'static str>,
}

impl std::fmt::Display for ParamTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.prop {
            Some(p) => write!(f, "{}.{p}", self.node),
            None => f.write_str(self.node),
        }
    }
}

/// `evaluate`.
#[derive(Debug, Clone, Serialize)]
pub struct EvaluateSpec {
    /// Head names, sweep names or globs.
    pub heads: Vec<Spanned<String>>,
    /// Metrics.
    pub metrics: Vec<Metric>,
    /// RSD sample set.
    pub rsd_over: RsdOver,
    /// Whether to write plots.
    pub plots: bool,
    /// Whether the table starts with the backbone classifier's row (`stage-1`).
    pub stage1: bool,
}

/// Whether `pattern` (with `*` and `?`) matches `name`.
///
/// Iterative, with one backtrack point (the last `*`): linear in practice and never worse than
/// `pattern × name`, whatever the input (a recursive matcher is exponential in the number of
/// `*`s and recurses once per character).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    // After the last `*` seen: the pattern position past it, and where in `name` it resumes.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi + 1, ni));
                pi += 1;
            }
            Some(&c) if c == '?' || c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                // Let the last `*` swallow one more character and retry.
                Some((after, resume)) => {
                    pi = after;
                    ni = resume + 1;
                    star = Some((after, resume + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The heads and head sweeps an `evaluate` stage selects, in declaration order.
pub fn evaluated_stages<'p>(pipeline: &'p Pipeline, eval: &EvaluateSpec) -> Vec<&'p Stage> {
    evaluable(pipeline)
        .into_iter()
        .filter(|c| {
            eval.heads
                .iter()
                .any(|p| glob_match(&p.value, &c.name.value))
        })
        .collect()
}

/// The heads and head sweeps an evaluate pattern can select.
pub(crate) fn evaluable(pipeline: &Pipeline) -> Vec<&Stage> {
    pipeline
        .stages
        .iter()
        .filter(|s| match &s.spec {
            StageSpec::Head(_) => true,
            StageSpec::Sweep(sw) => pipeline
                .stage(&sw.base.value)
                .is_some_and(|b| b.kind == StageKind::Head),
            _ => false,
        })
        .collect()
}
