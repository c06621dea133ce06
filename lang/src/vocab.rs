//! The language's vocabulary: every choice-valued setting and component variant as a
//! [`choice!`] enum, its names spelled once. The schema lists `Enum::NAMES`, lowering matches on
//! the enums and the IR holds them (re-exported from [`crate::ir`]); this module sits below all
//! three so that none of them imports another in a circle.

use crate::choice::choice;

choice! {
    /// The compute backend.
    pub enum Backend {
        /// Burn's `flex` CPU backend.
        Cpu = "cpu",
        /// Burn's CUDA backend (cargo feature `cuda`).
        Cuda = "cuda",
        /// Burn's wgpu backend: Vulkan (Metal on macOS), cargo feature `wgpu`.
        Wgpu = "wgpu",
    }
}

impl Backend {
    /// Whether tensor work runs on an accelerator (a GPU, or a software one such as lavapipe)
    /// rather than in host memory: such a device holds one training stage at a time.
    pub fn uses_device(self) -> bool {
        self != Backend::Cpu
    }
}

choice! {
    /// What a synthetic source generates.
    pub enum SyntheticKind {
        /// Small images of class patterns.
        Images = "images",
        /// Feature vectors (Gaussian clusters).
        Vectors = "vectors",
    }
}

choice! {
    /// How the train split is made long-tailed.
    pub enum TailProfile {
        /// n_c = n_max · IR^(-c/(K-1)).
        Exp = "exp",
        /// Half the classes keep n_max, the rest n_max/IR.
        Step = "step",
        /// Keep everything.
        None = "none",
    }
}

choice! {
    /// Which samples of a class a long tail keeps.
    pub enum TailSelect {
        /// The first n_c in file order.
        First = "first",
        /// n_c drawn at random (seeded).
        Shuffle = "shuffle",
    }
}

choice! {
    /// How group thresholds compare.
    pub enum GroupRule {
        /// Many: n > many; few: n < few.
        Strict = "strict",
        /// Many: n >= many; few: n <= few (the OLTR convention).
        Inclusive = "inclusive",
    }
}

choice! {
    /// Backbone architectures.
    pub enum Arch {
        /// Two conv-ReLU-pool blocks and a fully connected 128-d feature layer over the
        /// flattened map, for small grey images (the default of the Fashion-MNIST pipelines).
        ConvFc = "conv-fc",
        /// A small CNN with BatchNorm and global average pooling, for 28x28 inputs.
        SmallCnn = "small-cnn",
        /// ResNet-32, the CIFAR-LT standard of the LDAM-DRW code.
        Resnet32 = "resnet32",
        /// ResNet-34 (torchvision layout; CIFAR stem for 32x32 inputs).
        Resnet34 = "resnet34",
        /// ResNet-50 (torchvision layout).
        Resnet50 = "resnet50",
        /// ResNeXt-50 32x4d (torchvision layout).
        Resnext50 = "resnext50-32x4d",
    }
}

impl Arch {
    /// The dimension of the features it produces.
    pub fn feature_dim(&self) -> usize {
        match self {
            Arch::ConvFc | Arch::SmallCnn => 128,
            Arch::Resnet32 => 64,
            Arch::Resnet34 => 512,
            Arch::Resnet50 | Arch::Resnext50 => 2048,
        }
    }
}

choice! {
    /// Which per-channel statistics normalise the backbone's inputs.
    pub enum Normalize {
        /// Computed on the long-tailed train split.
        Dataset = "dataset",
        /// CIFAR's published statistics.
        Cifar = "cifar",
        /// ImageNet's.
        Imagenet = "imagenet",
        /// iNaturalist's.
        Inat = "inat",
        /// None: pixels in [0, 1].
        None = "none",
    }
}

choice! {
    /// The file format of a backbone checkpoint.
    pub enum CheckpointFormat {
        /// From the file's contents.
        Auto = "auto",
        /// safetensors.
        Safetensors = "safetensors",
        /// A PyTorch `state_dict`.
        Pytorch = "pytorch",
        /// Burn's own record.
        Burn = "burn",
    }
}

choice! {
    /// The stage-1 classifier of a checkpoint.
    pub enum ClassifierKind {
        /// From the file: a `weight` of `[K, D]` is a linear layer; `[D, K]` without a bias,
        /// LDAM-DRW's `NormedLinear`.
        Auto = "auto",
        /// `nn.Linear(D, K)` (its bias may be absent: zeros).
        Linear = "linear",
        /// LDAM-DRW's `NormedLinear(D, K)`: cosine logits, weight `[D, K]`, no bias.
        NormedLinear = "normed-linear",
    }
}

impl ClassifierKind {
    /// Whether it is left to the file.
    pub fn is_auto(&self) -> bool {
        *self == ClassifierKind::Auto
    }
}

choice! {
    /// Learning-rate schedules.
    pub enum Schedule {
        /// Cosine annealing to zero.
        Cosine = "cosine",
        /// Step decay (the stage's own steps).
        Step = "step",
        /// Constant.
        Constant = "constant",
    }
}

choice! {
    /// First-stage (backbone) losses.
    pub enum FirstStageLoss {
        /// Cross-entropy.
        Ce = "ce",
        /// Cross-entropy with deferred re-weighting.
        CeDrw = "ce-drw",
        /// LDAM with deferred re-weighting.
        LdamDrw = "ldam-drw",
        /// Balanced softmax.
        BalancedSoftmax = "balanced-softmax",
    }
}

choice! {
    /// First-stage samplers.
    pub enum BackboneSampler {
        /// Every sample once per epoch.
        Instance = "instance",
        /// Classes equally often.
        ClassBalanced = "class-balanced",
        /// Classes ∝ √n.
        Sqrt = "sqrt",
    }
}

choice! {
    /// Test-time augmentation of feature extraction.
    pub enum Tta {
        /// The image as it is.
        None = "none",
        /// The mean of the image's and its mirror image's features.
        Hflip = "hflip",
    }
}

choice! {
    /// Which epoch's head a trial keeps.
    pub enum EpochSelect {
        /// The last epoch's.
        Last = "last",
        /// The best on the validation split.
        BestVal = "best-val",
        /// The best on the test split (an oracle, for analysis only).
        BestTest = "best-test",
    }
}

choice! {
    /// The base loss of class-balanced weighting.
    pub enum BaseLoss {
        /// Binary cross-entropy per class.
        Bce = "bce",
        /// Softmax cross-entropy.
        Softmax = "softmax",
        /// Focal loss.
        Focal = "focal",
    }
}

choice! {
    /// When a weight constraint is applied.
    pub enum ConstraintEvery {
        /// After every optimiser step.
        Step = "step",
        /// After every epoch.
        Epoch = "epoch",
    }
}

choice! {
    /// Where a head starts (the argument of `init`).
    pub enum InitFrom {
        /// Re-initialised.
        Random = "random",
        /// The backbone's classifier.
        Backbone = "backbone",
        /// Another head's result.
        Head = "head",
    }
}

choice! {
    /// Evaluation metrics.
    pub enum Metric {
        /// Top-1 accuracy, overall and by group.
        Top1 = "top1",
        /// Logits Magnitude by group.
        LogitsMagnitude = "logits-magnitude",
        /// Regularized Standard Deviation of the logits.
        Rsd = "rsd",
        /// Per-class classifier weight norms.
        WeightNorm = "weight-norm",
        /// The confusion matrix.
        Confusion = "confusion",
        /// Per-class accuracy.
        PerClass = "per-class",
    }
}

choice! {
    /// The samples RSD is computed over.
    pub enum RsdOver {
        /// Each class's own samples (the paper's definition).
        Positive = "positive",
        /// Every sample.
        All = "all",
        /// Every other class's samples.
        Negative = "negative",
    }
}

// Tags of the IR's data-carrying enums: the variant names that the schema lists and lowering
// matches on. The IR's serde tags are the same names (checked in `ir`'s tests).

choice! {
    /// The format of a `source`: the variants of [`crate::ir::Source`].
    pub enum SourceFormat {
        /// Fashion-MNIST IDX files.
        FashionMnist = "fashion-mnist",
        /// MNIST IDX files.
        Mnist = "mnist",
        /// CIFAR-10 binary.
        Cifar10 = "cifar10",
        /// CIFAR-100 binary.
        Cifar100 = "cifar100",
        /// Root plus list files.
        ImageList = "image-list",
        /// iNaturalist 2018 JSON.
        Inat2018 = "inat2018",
        /// torchvision's ImageFolder layout.
        ImageFolder = "image-folder",
        /// Precomputed features.
        Features = "features",
        /// Generated data.
        Synthetic = "synthetic",
    }
}

choice! {
    /// An `augment` transform: the variants of [`crate::ir::Augment`].
    pub enum AugmentKind {
        /// Pad and crop.
        RandomCrop = "random-crop",
        /// Random area and aspect crop.
        RandomResizedCrop = "random-resized-crop",
        /// Horizontal flip.
        Hflip = "hflip",
        /// Colour jitter.
        ColorJitter = "color-jitter",
    }
}

choice! {
    /// A `logits` component: the variants of [`crate::ir::Logits`].
    pub enum LogitsKind {
        /// W f + b.
        Linear = "linear",
        /// s · cos.
        Cosine = "cosine",
        /// c ⊙ (W f + b).
        Lws = "lws",
    }
}

choice! {
    /// A `targets` component: the variants of [`crate::ir::Targets`].
    pub enum TargetsKind {
        /// One-hot.
        OneHot = "one-hot",
        /// Smoothed by δ.
        Smoothed = "smoothed",
    }
}

choice! {
    /// A `margin` component: the variants of [`crate::ir::Margin`].
    pub enum MarginKind {
        /// None.
        None = "none",
        /// LDAM.
        Ldam = "ldam",
        /// + log n.
        BalancedSoftmax = "balanced-softmax",
        /// + τ log π.
        LogitAdjust = "logit-adjust",
    }
}

choice! {
    /// A `weighting` component: the variants of [`crate::ir::Weighting`].
    pub enum WeightingKind {
        /// None.
        None = "none",
        /// Effective-number weights.
        ClassBalanced = "class-balanced",
        /// Focal.
        Focal = "focal",
    }
}

choice! {
    /// A `sampler` component: the variants of [`crate::ir::Sampler`].
    pub enum SamplerKind {
        /// Instance-balanced.
        Instance = "instance",
        /// Class-aware round robin.
        ClassBalanced = "class-balanced",
        /// ∝ √n.
        Sqrt = "sqrt",
    }
}

choice! {
    /// A `constraint` component: the variants of [`crate::ir::Constraint`].
    pub enum ConstraintKind {
        /// None.
        None = "none",
        /// ‖W_i‖ ≤ r.
        Maxnorm = "maxnorm",
    }
}

choice! {
    /// An `inference` component: the variants of [`crate::ir::Inference`].
    pub enum InferenceKind {
        /// None.
        None = "none",
        /// τ-normalisation.
        TauNorm = "tau-norm",
        /// − τ log π.
        LogitAdjust = "logit-adjust",
    }
}

choice! {
    /// Where `method "logit-adjust"` applies τ·log π.
    pub enum LogitAdjustForm {
        /// Subtracted at inference from a trained classifier's logits.
        PostHoc = "post-hoc",
        /// Added to the logits during training.
        Loss = "loss",
    }
}
