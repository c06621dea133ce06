//! The declarations of every node of the language, version 1.

use super::methods::{
    COMPONENT_CONSTRAINT, COMPONENT_INFERENCE, COMPONENT_LOGITS, COMPONENT_LOSS, COMPONENT_MARGIN,
    COMPONENT_SAMPLER, COMPONENT_TARGETS, COMPONENT_WEIGHTING, METHOD,
};
use super::{
    Lit::{Bool, Float, Int, Str},
    NodeSpec, ParamSpec as P, Range, StageKind, ValueType as T, VariantSpec as V,
};

/// The language version this build understands (`lortflow 1`).
pub const LANGUAGE_VERSION: u32 = 1;

const NAME: P = P::new(
    "name",
    T::String,
    "The stage's name, unique in the pipeline.",
)
.required();

const DATASET_REF: &[StageKind] = &[StageKind::Dataset];
const BACKBONE_REF: &[StageKind] = &[StageKind::Backbone];
const FEATURES_REF: &[StageKind] = &[StageKind::Features, StageKind::Dataset];
const HEAD_REF: &[StageKind] = &[StageKind::Head];
const ANY_STAGE_REF: &[StageKind] = &[
    StageKind::Dataset,
    StageKind::Backbone,
    StageKind::Features,
    StageKind::Head,
];

// Every choice list is the IR enum's names (`crate::choice`), so the checker, the docs and the
// typed IR agree on each spelling.
use crate::vocab::{
    Arch, AugmentKind, BackboneSampler, Backend, CheckpointFormat, ClassifierKind, EpochSelect,
    FirstStageLoss, GroupRule, InitFrom, Metric, Normalize, RsdOver, Schedule, SourceFormat,
    SyntheticKind, TailProfile, TailSelect, Tta,
};

// ---------------------------------------------------------------------------------------------
// Top level: version, include, defaults.

const VERSION: NodeSpec = NodeSpec::new(
    "lortflow",
    "The language version of the file. Every pipeline starts with `lortflow 1`.",
)
.args(&[P::new("version", T::Int, "Language version.")
    .required()
    .range(Range::closed(1.0, 1.0))])
.required()
.example("lortflow 1");

const INCLUDE: NodeSpec = NodeSpec::new(
    "include",
    "Includes the stages and defaults of another `.kdl` file, resolved relative to this file. \
     Included files may include others; cycles are errors.",
)
.args(&[P::new("path", T::Path, "The file to include.").required()])
.repeatable()
.example("include \"common/datasets.kdl\"");

const DEFAULTS: NodeSpec = NodeSpec::new(
    "defaults",
    "Settings for the whole pipeline (`lortflow run --backend` overrides the backend).",
)
.children(&[
    NodeSpec::new(
        "backend",
        "The compute backend of training stages: `cpu` (Burn's `flex`, always built), `cuda` \
         (NVIDIA GPUs; a lortflow built with `--features cuda`) or `wgpu` (Vulkan: AMD, Intel and \
         NVIDIA GPUs, Metal on macOS, or Mesa's software Vulkan on a CPU; built with \
         `--features wgpu`). Numbers depend on the backend, so it is part of the keys of the stages \
         that train or run a network.",
    )
    .args(&[P::new("backend", T::Enum(Backend::NAMES), "Backend.")
    .default(Str("cpu"))
    .required()]),
    NodeSpec::new(
        "seed",
        "The base random seed; stages derive their own seeds from it.",
    )
    .args(&[P::new("seed", T::Int, "Seed.")
        .range(Range::NON_NEGATIVE)
        .default(Int(0))
        .required()]),
    NodeSpec::new(
        "devices",
        "Devices a training backbone splits each batch over, one model replica per device (data \
         parallelism, as PyTorch's DistributedDataParallel): CUDA devices `0..N` (from the \
         device `--backend cuda:K` names), or on the CPU, N replicas on threads. Every epoch's \
         order is padded to a multiple of N and sharded like `DistributedSampler`, the global \
         `batch-size` must divide by N, gradients are averaged every step and BatchNorm keeps \
         per-replica statistics, so results depend on N: above 1 it is part of the training \
         backbone's key. `lortflow run --devices N` overrides it.",
    )
    .args(&[P::new("devices", T::Int, "Devices.")
        .range(Range::AT_LEAST_ONE)
        .default(Int(1))
        .required()]),
    NodeSpec::new(
        "head",
        "One re-training budget for every head: the `train` settings, `init` and `trials` written \
         here replace the presets' defaults in every head (the paper's protocol, one \
         implementation for all methods). A head's own `train` property, `init` or `trials` still \
         wins, one setting at a time; what is not written here stays the preset's. Presets that \
         only map the stage-1 classifier (`tau-norm`, post-hoc `logit-adjust`: 0 epochs) are left \
         as they are unless the head gives its own `train epochs=`.",
    )
    .children(&[HEAD_TRAIN, BUDGET_INIT, TRIALS])
    .example("head {\n    train epochs=20 batch-size=64 lr=0.01 weight-decay=5e-4\n    init \"backbone\"\n    trials 3\n}"),
])
.example("defaults {\n    backend \"cpu\"\n    seed 0\n    head { trials 3 }\n}");

// ---------------------------------------------------------------------------------------------
// dataset

const SOURCE_ROOT_OPT: P = P::new("root", T::Path, "Directory holding the files.");
const DOWNLOAD: P = P::new(
    "download",
    T::Bool,
    "Fetch the official files into `root` when missing (checksums verified). The dataset is then the official one and is cached by its settings alone, the same before and after the download; files you change in `root` are not noticed (leave `download` off to cache by their content).",
)
.default(Bool(false));

// Settings of every source of image files: they are packed once into the dataset's artifact.
const IMAGE_SIZE: P = P::new(
    "image-size",
    T::Int,
    "Side of the square the backbone sees: the evaluation and extraction view crops the centre \
     `image-size` square (torchvision's `CenterCrop`); training uses the backbone's `augment` \
     (`random-resized-crop size=` first, or this view).",
)
.default(Int(224))
.range(Range::AT_LEAST_ONE)
.unit("pixels");
const RESIZE: P = P::new(
    "resize",
    T::Int,
    "Shorter side the evaluation and extraction view resizes to before the centre crop \
     (torchvision's `Resize`, antialiased bilinear).",
)
.default(Int(256))
.range(Range::AT_LEAST_ONE)
.unit("pixels");
const MAX_SIDE: P = P::new(
    "max-side",
    T::Int,
    "Images whose longer side exceeds this are shrunk to it (antialiased bilinear) and stored as \
     JPEG of quality 90 when the split is packed; smaller ones are stored as they are. Unset \
     (the default): every image is kept as it is. FFCV uses 512 for ImageNet; a cap speeds up \
     decoding and shrinks the pack, at the price of detail in small random crops.",
)
.range(Range::AT_LEAST_ONE)
.unit("pixels");
const SKIP_BAD_IMAGES: P = P::new(
    "skip-bad-images",
    T::Bool,
    "Leave out files that cannot be read or decoded (truncated, corrupt, empty, too large) \
     instead of failing on the first; every one is listed in the run's output and in the \
     dataset's artifact, and counted in its summary.",
)
.default(Bool(false));

const SOURCE: NodeSpec = NodeSpec::new(
    "source",
    "Where the images (or features) come from. The first argument is the format.",
)
.args(&[P::new("format", T::String, "The source format.").required()])
.variants(&[
    V {
        name: SourceFormat::FashionMnist.name(),
        doc: "Fashion-MNIST in IDX format (gzip or plain), 28x28 grey, 10 classes.",
        props: &[SOURCE_ROOT_OPT.default(Str("data/fashion-mnist")), DOWNLOAD],
    },
    V {
        name: SourceFormat::Mnist.name(),
        doc: "MNIST in IDX format (gzip or plain), 28x28 grey, 10 classes.",
        props: &[SOURCE_ROOT_OPT.default(Str("data/mnist")), DOWNLOAD],
    },
    V {
        name: SourceFormat::Cifar10.name(),
        doc: "CIFAR-10, binary version (`data_batch_1.bin` ... `test_batch.bin`).",
        props: &[SOURCE_ROOT_OPT.default(Str("data/cifar-10-batches-bin")), DOWNLOAD],
    },
    V {
        name: SourceFormat::Cifar100.name(),
        doc: "CIFAR-100, binary version (`train.bin`, `test.bin`; fine labels).",
        props: &[SOURCE_ROOT_OPT.default(Str("data/cifar-100-binary")), DOWNLOAD],
    },
    V {
        name: SourceFormat::ImageList.name(),
        doc: "A root folder plus list files of `relative/path label` lines (the ImageNet-LT format). \
              Each split is packed once into the dataset's artifact, still encoded; stages stream \
              from it, so memory does not grow with the number of images.",
        props: &[
            P::new("root", T::Path, "Image root the list paths are relative to.").required(),
            P::new("train", T::Path, "List file of the training split.").required(),
            P::new("test", T::Path, "List file of the test split.").required(),
            IMAGE_SIZE,
            RESIZE,
            MAX_SIDE,
            SKIP_BAD_IMAGES,
        ],
    },
    V {
        name: SourceFormat::Inat2018.name(),
        doc: "iNaturalist 2018: the official JSON annotations plus the image root.",
        props: &[
            P::new("root", T::Path, "Image root the `file_name`s are relative to.").required(),
            P::new("train", T::Path, "`train2018.json`.").required(),
            P::new("test", T::Path, "`val2018.json` (the LTR test set).").required(),
            IMAGE_SIZE,
            MAX_SIDE,
            SKIP_BAD_IMAGES,
        ],
    },
    V {
        name: SourceFormat::ImageFolder.name(),
        doc: "torchvision's `ImageFolder` layout: a folder per split, in it one folder per class \
              holding that class's images (JPEG or PNG, any depth). Classes are numbered in the \
              sorted order of the training split's folder names, as torchvision does; the test \
              split must use the same names.",
        props: &[
            P::new("train", T::Path, "Folder of the training split.").required(),
            P::new("test", T::Path, "Folder of the test split.").required(),
            IMAGE_SIZE,
            RESIZE,
            MAX_SIDE,
            SKIP_BAD_IMAGES,
        ],
    },
    V {
        name: SourceFormat::Features.name(),
        doc: "Precomputed features (`.npy` or `.safetensors`); heads can use this dataset directly.",
        props: &[
            P::new("train", T::Path, "Train feature matrix (N x D, f32).").required(),
            P::new("test", T::Path, "Test feature matrix (N x D, f32).").required(),
            P::new("train-labels", T::Path, "Train labels (`.npy`); not needed for `.safetensors` holding `labels`."),
            P::new("test-labels", T::Path, "Test labels (`.npy`); not needed for `.safetensors` holding `labels`."),
        ],
    },
    V {
        name: SourceFormat::Synthetic.name(),
        doc: "Seeded class-conditional data, for trying stages in seconds.",
        props: &[
            P::new("kind", T::Enum(SyntheticKind::NAMES), "Small images or feature vectors.")
                .default(Str("images")),
            P::new("classes", T::Int, "Number of classes K.").default(Int(10)).range(Range::closed(2.0, 100_000.0)),
            P::new("per-class", T::Int, "Training samples per class before the long tail.")
                .default(Int(100))
                .range(Range::AT_LEAST_ONE)
                .unit("samples"),
            P::new("test-per-class", T::Int, "Test samples per class.")
                .default(Int(20))
                .range(Range::AT_LEAST_ONE)
                .unit("samples"),
            P::new("size", T::Int, "Image side (images).").default(Int(16)).range(Range::closed(4.0, 512.0)).unit("pixels"),
            P::new("channels", T::Int, "Image channels (images).").default(Int(1)).range(Range::closed(1.0, 3.0)),
            P::new("dim", T::Int, "Vector dimension (vectors).").default(Int(64)).range(Range::AT_LEAST_ONE),
            P::new("noise", T::Float, "Noise standard deviation relative to the class signal.")
                .default(Float(1.0))
                .range(Range::NON_NEGATIVE),
            P::new("seed", T::Int, "Generator seed.").default(Int(0)).range(Range::NON_NEGATIVE),
        ],
    },
])
.required()
.example("source \"cifar100\" root=\"data/cifar-100-binary\"");

const LONG_TAIL: NodeSpec = NodeSpec::new(
    "long-tail",
    "How the training split is made long-tailed; the test split stays balanced. `exp`: \
     n_i = int(n_max * IR^(-i/(K-1))) as in the LDAM-DRW code; `step`: the first half of the \
     classes keep n_max, the rest n_max/IR; `none`: keep everything.",
)
.args(&[P::new("profile", T::Enum(TailProfile::NAMES), "The imbalance profile.").required()])
.props(&[
    P::new("imbalance-ratio", T::Float, "n_max / n_min.").default(Float(100.0)).range(Range::AT_LEAST_ONE),
    P::new("max-per-class", T::Int, "n_max, the head class's count. Defaults to the largest n_max every class can fill: the class size of a balanced split (as in the LDAM-DRW code), and on a split whose classes differ in size, the limit of the class that runs short first.")
        .range(Range::AT_LEAST_ONE)
        .unit("samples"),
    P::new(
        "select",
        T::Enum(TailSelect::NAMES),
        "Which samples of a class are kept: the first in file order (LTWB, LORT) or a seeded shuffle (LDAM-DRW).",
    )
    .default(Str("first")),
    P::new("seed", T::Int, "Seed of `select=\"shuffle\"`.").default(Int(0)).range(Range::NON_NEGATIVE),
])
.example("long-tail \"exp\" imbalance-ratio=100");

const GROUPS: NodeSpec = NodeSpec::new(
    "groups",
    "Many / medium / few class groups by training count: many has more than `many` images, \
     few fewer than `few` (`rule=\"inclusive\"` uses >= and <= as OLTR's code does). With \
     `relative=#true` both are fractions of the largest class.",
)
.props(&[
    P::new("many", T::Float, "Lower bound of the many group.")
        .default(Float(100.0))
        .range(Range::NON_NEGATIVE),
    P::new("few", T::Float, "Upper bound of the few group.")
        .default(Float(20.0))
        .range(Range::NON_NEGATIVE),
    P::new("rule", T::Enum(GroupRule::NAMES), "Boundary inclusivity.").default(Str("strict")),
    P::new(
        "relative",
        T::Bool,
        "Read `many` and `few` as fractions of n_max.",
    )
    .default(Bool(false)),
])
.example("groups many=100 few=20");

const DATASET: NodeSpec = NodeSpec::new(
    "dataset",
    "A dataset and how its training split is made long-tailed. Its artifact is an index (sample \
     ids, labels, class counts, groups), not a copy of the data.",
)
.args(&[NAME])
.children(&[SOURCE, LONG_TAIL, GROUPS])
.stage(StageKind::Dataset)
.example(
    "dataset \"cifar100-lt\" {\n    source \"cifar100\" root=\"data/cifar-100-binary\"\n    long-tail \"exp\" imbalance-ratio=100\n    groups many=100 few=20\n}",
);

// ---------------------------------------------------------------------------------------------
// backbone

const BACKBONE_TRAIN: NodeSpec = NodeSpec::new(
    "train",
    "First-stage training: the chosen loss with weight decay, SGD with momentum, the schedule \
     over all epochs. A checkpoint is kept after every epoch so an interrupted run resumes.",
)
.props(&[
    P::new("epochs", T::Int, "Training epochs.")
        .default(Int(200))
        .range(Range::AT_LEAST_ONE)
        .unit("epochs"),
    P::new("batch-size", T::Int, "Mini-batch size.")
        .default(Int(128))
        .range(Range::AT_LEAST_ONE)
        .unit("images"),
    P::new("lr", T::Float, "Initial learning rate.")
        .default(Float(0.1))
        .range(Range::POSITIVE),
    P::new("momentum", T::Float, "SGD momentum.")
        .default(Float(0.9))
        .range(Range::UNIT_HALF_OPEN),
    P::new(
        "weight-decay",
        T::Float,
        "L2 weight decay (LTWB: 5e-3 on CIFAR100-LT).",
    )
    .default(Float(5e-4))
    .range(Range::NON_NEGATIVE),
    P::new("schedule", T::Enum(Schedule::NAMES), "Learning-rate schedule: `cosine` to zero, `step` (x0.01 at 80% and x0.0001 at 90% of the epochs, the LDAM-DRW schedule) or `constant`.").default(Str("cosine")),
    P::new("warmup-epochs", T::Int, "Linear warm-up epochs.")
        .default(Int(0))
        .range(Range::NON_NEGATIVE)
        .unit("epochs"),
    P::new(
        "loss",
        T::Enum(FirstStageLoss::NAMES),
        "First-stage loss (the rows of the paper's Tab. 3).",
    )
    .default(Str("ce")),
    P::new("sampler", T::Enum(BackboneSampler::NAMES), "Training sampler.").default(Str("instance")),
    P::new("seed", T::Int, "Seed; defaults to the pipeline seed.").range(Range::NON_NEGATIVE),
])
.conflicts(&["checkpoint"])
.example(
    "train epochs=200 batch-size=64 lr=0.01 momentum=0.9 weight-decay=5e-3 schedule=\"cosine\"",
);

const CHECKPOINT: NodeSpec = NodeSpec::new(
    "checkpoint",
    "Load trained weights instead of training: safetensors or PyTorch `.pth` state dicts in the \
     torchvision layout, or a lortflow checkpoint.",
)
.args(&[P::new("path", T::Path, "The weights file.").required()])
.props(&[
    P::new("format", T::Enum(CheckpointFormat::NAMES), "File format: `auto` reads safetensors and PyTorch files by their contents, `burn` a lortflow record by its `.mpk` extension.").default(Str("auto")),
    P::new(
        "trunk",
        T::String,
        "Dotted key prefix of the network's tensors in the file, nested dicts included \
         (`module.`, `state_dict.feat_model.module.`, `\"\"` for none). Found in the file when \
         not written.",
    ),
    P::new(
        "classifier",
        T::String,
        "Dotted key prefix of the stage-1 classifier's `weight` and `bias` \
         (`state_dict.classifier.module.fc.`). Found in the file when not written.",
    ),
    P::new(
        "classifier-kind",
        T::Enum(ClassifierKind::NAMES),
        "`linear` (`nn.Linear`, `weight` [K, D]), `normed-linear` (LDAM-DRW's `NormedLinear`, \
         `weight` [D, K], no bias; imported as unit-norm class vectors) or `auto` (from the shapes).",
    )
    .default(Str("auto")),
])
.conflicts(&["train"])
.example("checkpoint \"weights/r34-ltwb.safetensors\"\ncheckpoint \"crt/final_model_checkpoint.pth\" trunk=\"state_dict.feat_model.module.\" classifier=\"state_dict.classifier.module.fc.\"");

const AUGMENT: NodeSpec = NodeSpec::new(
    "augment",
    "A training-time augmentation, applied in the order written.",
)
.args(&[P::new("kind", T::String, "The augmentation.").required()])
.variants(&[
    V {
        name: AugmentKind::RandomCrop.name(),
        doc: "Pad then crop back to the input size at a random offset.",
        props: &[P::new("padding", T::Int, "Zero padding on each side.")
            .default(Int(4))
            .range(Range::NON_NEGATIVE)
            .unit("pixels")],
    },
    V {
        name: AugmentKind::RandomResizedCrop.name(),
        doc: "Crop a random area and aspect ratio, resize to `size`.",
        props: &[
            P::new("size", T::Int, "Output side.")
                .default(Int(224))
                .range(Range::AT_LEAST_ONE)
                .unit("pixels"),
            P::new("min-scale", T::Float, "Smallest crop area fraction.")
                .default(Float(0.08))
                .range(Range::closed(0.01, 1.0)),
        ],
    },
    V {
        name: AugmentKind::Hflip.name(),
        doc: "Horizontal flip.",
        props: &[P::new("p", T::Float, "Flip probability.")
            .default(Float(0.5))
            .range(Range::UNIT)],
    },
    V {
        name: AugmentKind::ColorJitter.name(),
        doc: "Random brightness, contrast and saturation (ImageNet-LT recipe: 0.4 each).",
        props: &[
            P::new("brightness", T::Float, "Brightness factor range.")
                .default(Float(0.4))
                .range(Range::NON_NEGATIVE),
            P::new("contrast", T::Float, "Contrast factor range.")
                .default(Float(0.4))
                .range(Range::NON_NEGATIVE),
            P::new("saturation", T::Float, "Saturation factor range.")
                .default(Float(0.4))
                .range(Range::NON_NEGATIVE),
            P::new("hue", T::Float, "Hue shift range.")
                .default(Float(0.0))
                .range(Range::closed(0.0, 0.5)),
        ],
    },
])
.repeatable()
.example("augment \"random-crop\" padding=4");

const NORMALIZE: NodeSpec = NodeSpec::new(
    "normalize",
    "Per-channel input normalisation: statistics of the training split, a published preset, or none.",
)
.args(&[P::new("stats", T::Enum(Normalize::NAMES), "Which statistics.")
    .default(Str("dataset"))
    .required()])
.example("normalize \"cifar\"");

const BACKBONE: NodeSpec = NodeSpec::new(
    "backbone",
    "A feature extractor with its own classifier: trained on a dataset (`train`) or loaded \
     (`checkpoint`). The classifier is kept so heads can start from it.",
)
.args(&[NAME])
.children(&[
    NodeSpec::new("data", "The dataset the backbone trains on (and whose classes it predicts).")
        .args(&[P::new("dataset", T::StageRef(DATASET_REF), "A dataset stage.").required()])
        .required(),
    NodeSpec::new("arch", "The architecture.")
        .args(&[P::new("arch", T::Enum(Arch::NAMES), "Architecture name.").required()])
        .required(),
    BACKBONE_TRAIN,
    CHECKPOINT,
    AUGMENT,
    NORMALIZE,
])
.one_of(&[&["train", "checkpoint"]])
.stage(StageKind::Backbone)
.example(
    "backbone \"r32\" {\n    data \"cifar100-lt\"\n    arch \"resnet32\"\n    train epochs=200 batch-size=64 lr=0.01 weight-decay=5e-3\n    augment \"random-crop\" padding=4\n    augment \"hflip\"\n}",
);

// ---------------------------------------------------------------------------------------------
// features

const FEATURES: NodeSpec = NodeSpec::new(
    "features",
    "Frozen features of a backbone over the train and test splits (BatchNorm statistics frozen), \
     stored as f32 matrices that Python reads (safetensors).",
)
.args(&[NAME])
.children(&[
    NodeSpec::new("backbone", "The backbone to run.")
        .args(&[P::new("backbone", T::StageRef(BACKBONE_REF), "A backbone stage.").required()])
        .required(),
    NodeSpec::new(
        "tta",
        "Test-time augmentation: `hflip` averages the features of x and its mirror.",
    )
    .args(&[P::new("mode", T::Enum(Tta::NAMES), "TTA mode.")
        .default(Str("none"))
        .required()]),
    NodeSpec::new(
        "batch-size",
        "Images per inference batch; at most one batch is held in memory.",
    )
    .args(&[P::new("size", T::Int, "Batch size.")
        .default(Int(256))
        .range(Range::AT_LEAST_ONE)
        .unit("images")
        .required()]),
])
.stage(StageKind::Features)
.example("features \"r32-feats\" { backbone \"r32\"; tta \"hflip\" }");

// ---------------------------------------------------------------------------------------------
// head

const HEAD_TRAIN: NodeSpec = NodeSpec::new(
    "train",
    "Re-training on the cached features: SGD with momentum and the schedule. Defaults depend on \
     the method (see the presets table); `epochs=0` applies only the inference map.",
)
.props(&[
    P::new("epochs", T::Int, "Training epochs (default: the preset's).")
        .range(Range::NON_NEGATIVE)
        .unit("epochs"),
    P::new(
        "batch-size",
        T::Int,
        "Mini-batch size (default: the preset's).",
    )
    .range(Range::AT_LEAST_ONE)
    .unit("samples"),
    P::new(
        "lr",
        T::Float,
        "Initial learning rate (default: the preset's).",
    )
    .range(Range::POSITIVE),
    P::new("momentum", T::Float, "SGD momentum.")
        .default(Float(0.9))
        .range(Range::UNIT_HALF_OPEN),
    P::new(
        "weight-decay",
        T::Float,
        "L2 weight decay (default: the preset's).",
    )
    .range(Range::NON_NEGATIVE),
    P::new("schedule", T::Enum(Schedule::NAMES), "Learning-rate schedule, stepped per epoch: `cosine` to zero (PyTorch `CosineAnnealingLR`), `step` (x0.1 every ceil(epochs/3) epochs) or `constant`.").default(Str("cosine")),
    P::new(
        "seed",
        T::Int,
        "Seed of trial 0; trial i uses seed + i. Defaults to the pipeline seed.",
    )
    .range(Range::NON_NEGATIVE),
])
.example("train epochs=20 lr=0.01 weight-decay=5e-4");

const INIT: NodeSpec = NodeSpec::new(
    "init",
    "Where the head starts: re-initialised (`random`), the backbone's own classifier (`backbone`, \
     the official LORT recipe), or another head's result (`head from=\"name\"`).",
)
.args(&[P::new("from", T::Enum(InitFrom::NAMES), "Initialisation.").required()])
.props(&[P::new(
    "head",
    T::StageRef(HEAD_REF),
    "The head to start from (with `init \"head\"`).",
)])
.example("init \"backbone\"");

/// `init` in `defaults { head { … } }`: every head can start from the backbone or afresh, not
/// from one other head.
const BUDGET_INIT: NodeSpec = NodeSpec::new(
    "init",
    "Where every head starts: re-initialised (`random`) or the backbone's own classifier \
     (`backbone`).",
)
.args(&[P::new("from", T::Enum(&["random", "backbone"]), "Initialisation.").required()])
.example("init \"backbone\"");

const TRIALS: NodeSpec = NodeSpec::new(
    "trials",
    "Independent trials with seeds seed, seed+1, ...; reported as best and mean ± std.",
)
.args(&[P::new("count", T::Int, "Number of trials.")
    .default(Int(1))
    .range(Range::closed(1.0, 100.0))
    .required()]);

const HEAD: NodeSpec = NodeSpec::new(
    "head",
    "A classifier re-trained on frozen features. `method` picks a preset (default `ce`); the \
     component nodes override single parts of it, so methods compose (e.g. LORT targets with a \
     balanced-softmax prior).",
)
.args(&[NAME])
.children(&[
    NodeSpec::new("features", "The cached features (a `features` stage, or a dataset with `source \"features\"`).")
        .args(&[P::new("features", T::StageRef(FEATURES_REF), "A features stage.").required()])
        .required(),
    METHOD,
    COMPONENT_LOGITS,
    COMPONENT_TARGETS,
    COMPONENT_MARGIN,
    COMPONENT_LOSS,
    COMPONENT_WEIGHTING,
    COMPONENT_SAMPLER,
    COMPONENT_CONSTRAINT,
    COMPONENT_INFERENCE,
    HEAD_TRAIN,
    INIT,
    TRIALS,
    NodeSpec::new(
        "select",
        "Which epoch of each trial is kept: the last (default), the best on a validation split \
         held out from train, or the best on the test split (what the reference code does; it \
         inflates results, so lint warns).",
    )
    .args(&[P::new("rule", T::Enum(EpochSelect::NAMES), "Selection rule.").default(Str("last")).required()]),
    NodeSpec::new("validation", "Hold out a class-stratified fraction of the training features for `select \"best-val\"`.")
        .props(&[
            P::new("fraction", T::Float, "Fraction held out.").default(Float(0.1)).range(Range { min: super::Bound::Exclusive(0.0), max: super::Bound::Exclusive(0.5) }),
            P::new("seed", T::Int, "Split seed.").default(Int(0)).range(Range::NON_NEGATIVE),
        ]),
])
.stage(StageKind::Head)
.example(
    "head \"lort\" {\n    features \"r32-feats\"\n    method \"lort\" delta=0.98\n    train epochs=20 lr=5e-4 weight-decay=0\n}",
);

// ---------------------------------------------------------------------------------------------
// sweep

const SWEEP: NodeSpec = NodeSpec::new(
    "sweep",
    "Variants of a stage over parameter values, named `sweep[param=value]`. Several `vary` nodes \
     make a grid. Everything downstream of a swept dataset or backbone is expanded with it.",
)
.args(&[NAME])
.children(&[
    NodeSpec::new("base", "The stage to vary.")
        .args(&[P::new("stage", T::StageRef(ANY_STAGE_REF), "Any stage except evaluate and sweep.").required()])
        .required(),
    NodeSpec::new(
        "vary",
        "A parameter of the base stage and its values. The parameter is named by its property \
         (`delta`, `lr`) or, when that is ambiguous, by `node.property` (`train.lr`).",
    )
    .args(&[
        P::new("param", T::String, "Parameter path.").required(),
        P::new("values", T::Any, "The values (typed like the parameter).").required().variadic(),
    ])
    .required()
    .repeatable(),
    NodeSpec::new("trials", "Trials of every member (heads only), overriding the base's.")
        .args(&[P::new("count", T::Int, "Number of trials.").range(Range::closed(1.0, 100.0)).required()]),
])
.stage(StageKind::Sweep)
.example("sweep \"lort-delta\" {\n    base \"lort\"\n    vary \"delta\" 0.0 0.2 0.5 0.9 0.98 0.99\n    trials 5\n}");

// ---------------------------------------------------------------------------------------------
// evaluate

const EVALUATE: NodeSpec = NodeSpec::new(
    "evaluate",
    "Evaluates heads on the balanced test split: top-1 overall and per group, and the paper's \
     metrics. Prints the results table at the end of `lortflow run`.",
)
.args(&[NAME])
.children(&[
    NodeSpec::new("heads", "Heads to evaluate: names, sweep names (all members) or globs (`\"*\"`).")
        .args(&[P::new("heads", T::StagePattern, "Stage names or patterns.").required().variadic()])
        .required(),
    NodeSpec::new("metrics", "Metrics to compute; top-1 is always reported.")
        .args(&[P::new("metrics", T::Enum(Metric::NAMES), "Metric names.").required().variadic()]),
    NodeSpec::new(
        "rsd",
        "Which samples σ(z_i) of the Regularized Standard Deviation is taken over: the positives of \
         class i (default), all samples, or the negatives.",
    )
    .args(&[P::new("over", T::Enum(RsdOver::NAMES), "Sample set.").default(Str("positive")).required()]),
    NodeSpec::new("plots", "Write SVG and PNG plots into the artifact.")
        .args(&[P::new("enabled", T::Bool, "Whether to plot.").default(Bool(true)).required()]),
    NodeSpec::new(
        "stage-1",
        "Start the table with the backbone's own classifier on each features stage the heads read \
         (the \"stage-1\" row: before re-training, same features and test-time augmentation). \
         Features imported from a file have no classifier and get no row.",
    )
    .args(&[P::new("enabled", T::Bool, "Whether to add the row.").default(Bool(true)).required()]),
])
.stage(StageKind::Evaluate)
.example("evaluate \"table\" {\n    heads \"*\"\n    metrics \"top1\" \"logits-magnitude\" \"rsd\" \"weight-norm\"\n}");

/// Every node allowed at the top level of a pipeline file, in documentation order.
pub const TOP_LEVEL: &[NodeSpec] = &[
    VERSION, INCLUDE, DEFAULTS, DATASET, BACKBONE, FEATURES, HEAD, SWEEP, EVALUATE,
];

/// The top-level node called `name`.
pub fn top_level(name: &str) -> Option<&'static NodeSpec> {
    TOP_LEVEL.iter().find(|n| n.name == name)
}
