//! Head re-training methods: the components of the paper's unified form (Eq. 1) and the named
//! presets of Tab. 1, each with the reference code's defaults (`docs/ltr-reference.md`).
//!
//! A preset is data: the component nodes it stands for and its training defaults. Lowering
//! turns a preset into the same component nodes a user could write by hand, so presets and the
//! component form cannot drift apart.

use super::{
    Lit::{self, Bool, Float, Int, Str},
    NodeSpec, ParamSpec as P, Range, ValueType as T, VariantSpec as V,
};
use crate::vocab::{
    ConstraintKind, InferenceKind, LogitAdjustForm, LogitsKind, MarginKind, SamplerKind,
    TargetsKind, WeightingKind,
};

const DELTA: P = P::new(
    "delta",
    T::Float,
    "Smoothing value δ: the target is 1-δ+δ/K on the label and δ/K elsewhere. LORT uses δ close to 1.",
)
.default(Float(0.98))
.range(Range::UNIT_HALF_OPEN);
const COSINE_SCALE: P = P::new(
    "scale",
    T::Float,
    "Scale s of the cosine logits (absent from the paper; OLTR uses 16).",
)
.default(Float(16.0))
.range(Range::POSITIVE);
const LDAM_SCALE: P = P::new(
    "scale",
    T::Float,
    "Scale s of the cosine logits (LDAM code: 30).",
)
.default(Float(30.0))
.range(Range::POSITIVE);
const COSINE_INIT_NORM: P = P::new(
    "init-norm",
    T::Float,
    "Norm to which each initial class vector W_i is scaled (directions kept). The logits do not depend on it, the steps do: a step turns W_i by about lr·s/‖W_i‖², so a small start takes large, uneven first steps. Unset, the initial weights are kept: `nn.Linear`'s ±1/√D for `init \"random\"` (OLTR's `CosNorm_Classifier`, ‖W_i‖ ≈ 0.58).",
)
.range(Range::POSITIVE);
const LDAM_INIT_NORM: P = P::new(
    "init-norm",
    T::Float,
    "Norm of the initial class vectors of the cosine logits (LDAM code: `NormedLinear` starts from unit vectors).",
)
.default(Float(1.0))
.range(Range::POSITIVE);
const MAX_M: P = P::new(
    "max-m",
    T::Float,
    "Margin of the rarest class; others get max-m·(n_min/n_i)^(1/4).",
)
.default(Float(0.5))
.range(Range::POSITIVE);
const BETA: P = P::new("beta", T::Float, "β of the effective number (1-β^n)/(1-β).")
    .default(Float(0.9999))
    .range(Range::UNIT_HALF_OPEN);
const GAMMA: P = P::new(
    "gamma",
    T::Float,
    "Focusing parameter γ of (1-s_y)^γ (LDAM code: 1).",
)
.default(Float(1.0))
.range(Range::NON_NEGATIVE);
const TAU_NORM: P = P::new(
    "tau",
    T::Float,
    "Exponent τ of W_i/‖W_i‖^τ (0 = identity, 1 = unit rows).",
)
.default(Float(1.0))
.range(Range::closed(0.0, 4.0));
const TAU_NORM_BIAS: P = P::new(
    "bias",
    T::Bool,
    "Keep the bias (LTWB) instead of dropping it (Kang et al.).",
)
.default(Bool(false));
const TAU_LA: P = P::new("tau", T::Float, "Strength τ of the τ·log π adjustment.")
    .default(Float(1.0))
    .range(Range::NON_NEGATIVE);
const PER_CLASS: P = P::new(
    "per-class",
    T::Int,
    "Consecutive samples drawn per visited class (cRT: 4).",
)
.default(Int(4))
.range(Range::AT_LEAST_ONE);
const CB_LOSS: P = P::new(
    "loss",
    T::Enum(crate::vocab::BaseLoss::NAMES),
    "Base loss: BCE on the softmax (LTWB's port, the paper's CB-BCE), weighted softmax CE, or focal.",
)
.default(Str("bce"));
const FROM_EPOCH: P = P::new(
    "from-epoch",
    T::Int,
    "0-based epoch from which the weights apply (DRW); before it all weights are 1.",
)
.default(Int(0))
.range(Range::NON_NEGATIVE)
.unit("epochs");
const DRW_EPOCH: P = P::new(
    "drw-epoch",
    T::Int,
    "0-based epoch at which re-weighting starts; default 80% of the epochs, as the reference's 160 of 200.",
)
.range(Range::NON_NEGATIVE)
.unit("epochs");
const THRESH: P = P::new(
    "thresh",
    T::Float,
    "Relative radius: r = min‖W_i‖ + thresh·(max‖W_i‖ − min‖W_i‖) of the initial classifier (LTWB: 0.1).",
)
.default(Float(0.1))
.range(Range::UNIT);
const RADIUS: P = P::new(
    "radius",
    T::Float,
    "Absolute radius r of ‖W_i‖ ≤ r; replaces `thresh`.",
)
.range(Range::POSITIVE);
const EVERY: P = P::new(
    "every",
    T::Enum(crate::vocab::ConstraintEvery::NAMES),
    "Project after every step (the paper) or every epoch (the released code).",
)
.default(Str("step"));
const LA_FORM: P = P::new(
    "form",
    T::Enum(LogitAdjustForm::NAMES),
    "Subtract τ·log π at inference (post-hoc) or add it to the logits during training (loss).",
)
.default(Str(LogitAdjustForm::PostHoc.name()));
const NORMALIZED: P = P::new(
    "normalized",
    T::Bool,
    "Cosine logits scaled by `scale` as in the LDAM code (#true), or the paper's plain linear logits (#false).",
)
.default(Bool(true));

/// The `method` node: a named preset.
pub(crate) const METHOD: NodeSpec = NodeSpec::new(
    "method",
    "The re-training method, a preset of components (default `ce`). Its properties are the \
     method's own parameters; see the presets table.",
)
.args(&[P::new("method", T::String, "Method name.").required()])
.variants(&[
    V {
        name: "ce",
        doc: "Vanilla FC: linear head, softmax cross-entropy.",
        props: &[],
    },
    V {
        name: "cosine",
        doc: "Vanilla cosine classifier with a scale.",
        props: &[COSINE_SCALE, COSINE_INIT_NORM],
    },
    V {
        name: "lws",
        doc: "Learnable weight scaling on the frozen initial classifier (Kang et al.).",
        props: &[],
    },
    V {
        name: "ldam",
        doc: "Label-distribution-aware margins (Cao et al.).",
        props: &[MAX_M, LDAM_SCALE, LDAM_INIT_NORM, NORMALIZED],
    },
    V {
        name: "ldam-drw",
        doc: "LDAM with deferred class-balanced re-weighting.",
        props: &[
            MAX_M,
            LDAM_SCALE,
            LDAM_INIT_NORM,
            NORMALIZED,
            BETA,
            DRW_EPOCH,
        ],
    },
    V {
        name: "balanced-softmax",
        doc: "Softmax on z + log n during training (Ren et al.).",
        props: &[],
    },
    V {
        name: "resample",
        doc: "cRT: re-initialised head, class-balanced sampling (Kang et al.).",
        props: &[PER_CLASS],
    },
    V {
        name: "focal",
        doc: "Softmax focal loss (Lin et al.).",
        props: &[GAMMA],
    },
    V {
        name: "class-balanced",
        doc: "Class-balanced weights by effective number (Cui et al.).",
        props: &[BETA, CB_LOSS],
    },
    V {
        name: "maxnorm",
        doc: "Per-class weight-norm constraint by projected gradient (Alshammari et al.).",
        props: &[THRESH, RADIUS, EVERY],
    },
    V {
        name: "tau-norm",
        doc: "τ-normalised classifier at inference (Kang et al.).",
        props: &[TAU_NORM, TAU_NORM_BIAS],
    },
    V {
        name: "logit-adjust",
        doc: "Logit adjustment by τ·log π (Menon et al.).",
        props: &[TAU_LA, LA_FORM],
    },
    V {
        name: "lort",
        doc: "LORT: large label smoothing on a fine-tuned classifier (the paper).",
        props: &[DELTA],
    },
])
.methods()
.example("method \"lort\" delta=0.98");

/// `logits`: how the head turns features into logits.
pub(crate) const COMPONENT_LOGITS: NodeSpec =
    NodeSpec::new(LOGITS, "Component: the logit function g.")
        .args(&[P::new("kind", T::String, "Logit function.").required()])
        .variants(&[
            V {
                name: LogitsKind::Linear.name(),
                doc: "z = W f + b.",
                props: &[],
            },
            V {
                name: LogitsKind::Cosine.name(),
                doc: "z = s · (W_i/‖W_i‖)ᵀ(f/‖f‖).",
                props: &[COSINE_SCALE, COSINE_INIT_NORM],
            },
            V {
                name: LogitsKind::Lws.name(),
                doc: "z = c ⊙ (W f + b) with W, b frozen and c learned (init 1).",
                props: &[],
            },
        ])
        .example("logits \"cosine\" scale=16");

/// `targets`: the training target distribution.
pub(crate) const COMPONENT_TARGETS: NodeSpec =
    NodeSpec::new(TARGETS, "Component: the target distribution.")
        .args(&[P::new("kind", T::String, "Target kind.").required()])
        .variants(&[
            V {
                name: TargetsKind::OneHot.name(),
                doc: "The label only.",
                props: &[],
            },
            V {
                name: TargetsKind::Smoothed.name(),
                doc: "1-δ+δ/K on the label, δ/K elsewhere (LORT).",
                props: &[DELTA],
            },
        ])
        .example("targets \"smoothed\" delta=0.98");

/// `loss`: a per-sample loss on the logits from a plugin, in place of `targets` and `margin`.
pub(crate) const COMPONENT_LOSS: NodeSpec = NodeSpec::new(
    "loss",
    "Component: a per-sample loss on the logits, added by a plugin (a Rust crate that registers \
     it; see `examples/custom_head_method.rs`). It replaces the softmax cross-entropy built from \
     `targets` and `margin`; the other components (weighting, sampler, constraint, inference) \
     apply as usual. Linear logits only. This build's plugins are listed below; the stock \
     `lortflow` binary has none.",
)
.args(&[P::new("kind", T::String, "The plugin loss.").required()])
.extensible()
.example("loss \"label-aware-smoothing\" delta-min=0.0 delta-max=0.4");

/// `margin`: a per-class offset of the logits during training.
pub(crate) const COMPONENT_MARGIN: NodeSpec = NodeSpec::new(
    MARGIN,
    "Component: a margin or prior added to the logits during training.",
)
.args(&[P::new("kind", T::String, "Margin kind.").required()])
.variants(&[
    V {
        name: MarginKind::None.name(),
        doc: "No margin.",
        props: &[],
    },
    V {
        name: MarginKind::Ldam.name(),
        doc: "Subtract C/n_y^(1/4) from the true-class logit.",
        props: &[MAX_M],
    },
    V {
        name: MarginKind::BalancedSoftmax.name(),
        doc: "Add log n_i to every logit.",
        props: &[],
    },
    V {
        name: MarginKind::LogitAdjust.name(),
        doc: "Add τ·log π_i to every logit (the loss form).",
        props: &[TAU_LA],
    },
])
.example("margin \"balanced-softmax\"");

/// `weighting`: per-sample loss weights r_w.
pub(crate) const COMPONENT_WEIGHTING: NodeSpec =
    NodeSpec::new(WEIGHTING, "Component: the per-sample loss weight r_w(y).")
        .args(&[P::new("kind", T::String, "Weighting kind.").required()])
        .variants(&[
            V {
                name: WeightingKind::None.name(),
                doc: "All samples weigh 1.",
                props: &[],
            },
            V {
                name: WeightingKind::ClassBalanced.name(),
                doc: "(1-β)/(1-β^n_y), normalised to sum to K.",
                props: &[BETA, CB_LOSS, GAMMA, FROM_EPOCH],
            },
            V {
                name: WeightingKind::Focal.name(),
                doc: "(1-s_y)^γ.",
                props: &[GAMMA],
            },
        ])
        .example("weighting \"class-balanced\" beta=0.9999 loss=\"softmax\"");

/// `sampler`: how training samples are drawn.
pub(crate) const COMPONENT_SAMPLER: NodeSpec =
    NodeSpec::new(SAMPLER, "Component: the sampler r_s.")
        .args(&[P::new("kind", T::String, "Sampler.").required()])
        .variants(&[
            V {
                name: SamplerKind::Instance.name(),
                doc: "Every sample once per epoch, shuffled.",
                props: &[],
            },
            V {
                name: SamplerKind::ClassBalanced.name(),
                doc: "Round-robin over shuffled classes (cRT's class-aware sampler).",
                props: &[PER_CLASS],
            },
            V {
                name: SamplerKind::Sqrt.name(),
                doc: "Sample class i with probability ∝ √n_i.",
                props: &[],
            },
        ])
        .example("sampler \"class-balanced\" per-class=4");

/// `constraint`: a projection applied to the weights.
pub(crate) const COMPONENT_CONSTRAINT: NodeSpec = NodeSpec::new(
    CONSTRAINT,
    "Component: a constraint on the classifier weights.",
)
.args(&[P::new("kind", T::String, "Constraint.").required()])
.variants(&[
    V {
        name: ConstraintKind::None.name(),
        doc: "Unconstrained.",
        props: &[],
    },
    V {
        name: ConstraintKind::Maxnorm.name(),
        doc: "‖W_i‖ ≤ r by projection; the bias is free.",
        props: &[THRESH, RADIUS, EVERY],
    },
])
.example("constraint \"maxnorm\" thresh=0.1");

/// `inference`: a map applied to the logits at test time.
pub(crate) const COMPONENT_INFERENCE: NodeSpec =
    NodeSpec::new(INFERENCE, "Component: the inference-time logit map h.")
        .args(&[P::new("kind", T::String, "Map.").required()])
        .variants(&[
            V {
                name: InferenceKind::None.name(),
                doc: "Raw logits.",
                props: &[],
            },
            V {
                name: InferenceKind::TauNorm.name(),
                doc: "(W_i/‖W_i‖^τ)ᵀ f (+ b with `bias=#true`).",
                props: &[TAU_NORM, TAU_NORM_BIAS],
            },
            V {
                name: InferenceKind::LogitAdjust.name(),
                doc: "z_i − τ·log π_i.",
                props: &[TAU_LA],
            },
        ])
        .example("inference \"tau-norm\" tau=1.0");

/// The component nodes of a head, in the order of the unified form.
pub const COMPONENTS: &[&str] = &[
    LOGITS, TARGETS, MARGIN, WEIGHTING, SAMPLER, CONSTRAINT, INFERENCE,
];

// The component node names, for the preset table.
const LOGITS: &str = "logits";
const TARGETS: &str = "targets";
const MARGIN: &str = "margin";
const WEIGHTING: &str = "weighting";
const SAMPLER: &str = "sampler";
const CONSTRAINT: &str = "constraint";
const INFERENCE: &str = "inference";

/// The method a head without a `method` node gets.
pub const DEFAULT_METHOD: &str = "ce";

/// A value a preset puts into a component property.
#[derive(Debug, Clone, Copy)]
pub enum PresetValue {
    /// The method's own property of this name (its written value or default).
    Method(&'static str),
    /// A fixed value.
    Lit(Lit),
    /// The method's own property `prop` when written, else `num/den` of the head's training
    /// epochs, rounded down (DRW starts at 80% of the epochs: LDAM-DRW's 160 of 200).
    EpochFraction {
        /// The method's property.
        prop: &'static str,
        /// Numerator of the fraction.
        num: i64,
        /// Denominator of the fraction.
        den: i64,
    },
}

/// A condition on a method's property (its written value or default).
#[derive(Debug, Clone, Copy)]
pub struct When {
    /// The method's property.
    pub prop: &'static str,
    /// The value it must have.
    pub is: Lit,
}

/// One component node a preset stands for.
#[derive(Debug, Clone, Copy)]
pub struct ComponentSetting {
    /// The component node (`targets`).
    pub node: &'static str,
    /// Its variant (`smoothed`).
    pub variant: &'static str,
    /// Its properties.
    pub props: &'static [(&'static str, PresetValue)],
    /// Only when the method's property has this value (`form="loss"`); a preset may then list
    /// several settings of one node, each under its own condition.
    pub when: Option<When>,
}

impl ComponentSetting {
    /// Applies only when the method's property `prop` is `is`.
    const fn when(mut self, prop: &'static str, is: Lit) -> ComponentSetting {
        self.when = Some(When { prop, is });
        self
    }
}

/// Training defaults of a preset.
#[derive(Debug, Clone, Copy)]
pub struct TrainDefaults {
    /// Epochs.
    pub epochs: i64,
    /// Batch size.
    pub batch_size: i64,
    /// Initial learning rate.
    pub lr: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Initialisation (`random` or `backbone`).
    pub init: crate::vocab::InitFrom,
}

/// Kang et al.'s classifier re-training (cRT, `config/ImageNet_LT/cls_crt.yaml`): a re-initialised
/// head, SGD lr 0.2 (momentum 0.9, cosine to 0), batch 512, 10 epochs, weight decay 5e-4. The
/// methods that publish no re-training recipe of their own use it, so that they differ from `ce`
/// by their loss only.
const DECOUPLED: TrainDefaults = TrainDefaults {
    epochs: 10,
    batch_size: 512,
    lr: 0.2,
    weight_decay: 5e-4,
    init: crate::vocab::InitFrom::Random,
};

/// The stage-1 classifier used as it is, through an inference map only (no training).
const MAP_ONLY: TrainDefaults = TrainDefaults {
    epochs: 0,
    batch_size: 512,
    lr: 0.2,
    weight_decay: 5e-4,
    init: crate::vocab::InitFrom::Backbone,
};

/// LTWB's second stage (`demo2_second-stage-training.py`): fine-tune the stage-1 fc, SGD lr 0.01
/// (momentum 0.9, cosine to 0), batch 64, 10 epochs.
const LTWB_STAGE2: TrainDefaults = TrainDefaults {
    epochs: 10,
    batch_size: 64,
    lr: 0.01,
    weight_decay: 0.1,
    init: crate::vocab::InitFrom::Backbone,
};

/// A named method: the components it stands for and its training defaults.
#[derive(Debug, Clone, Copy)]
pub struct HeadPreset {
    /// The method name.
    pub name: &'static str,
    /// The component nodes it sets; the others keep their neutral default.
    pub components: &'static [ComponentSetting],
    /// Training defaults.
    pub train: TrainDefaults,
    /// Where the defaults come from.
    pub reference: &'static str,
    /// Other training defaults when a method property has a given value: `(property, value,
    /// defaults, reference)` (post-hoc logit adjustment maps a trained classifier, its loss form
    /// trains one).
    pub train_when: Option<(&'static str, &'static str, TrainDefaults, &'static str)>,
}

use PresetValue::{Lit as L, Method as M};

/// LDAM's logits: the reference code's scaled cosine (`NormedLinear`, unit initial class
/// vectors), or with `normalized=#false` the paper's plain linear logits.
const LDAM_COSINE: ComponentSetting = c(
    LOGITS,
    LogitsKind::Cosine.name(),
    &[("scale", M("scale")), ("init-norm", M("init-norm"))],
)
.when("normalized", Bool(true));
const LDAM_LINEAR: ComponentSetting =
    c(LOGITS, LogitsKind::Linear.name(), &[]).when("normalized", Bool(false));

const fn c(
    node: &'static str,
    variant: &'static str,
    props: &'static [(&'static str, PresetValue)],
) -> ComponentSetting {
    ComponentSetting {
        node,
        variant,
        props,
        when: None,
    }
}

/// Every preset of the `method` node, each with the recipe of its reference (file named).
pub const HEAD_PRESETS: &[HeadPreset] = &[
    HeadPreset {
        name: DEFAULT_METHOD,
        components: &[],
        train: DECOUPLED,
        reference: "Kang et al. `cls_crt.yaml` optimiser with instance sampling (Vanilla FC of Tab. 1)",
        train_when: None,
    },
    HeadPreset {
        name: "cosine",
        components: &[c(
            LOGITS,
            LogitsKind::Cosine.name(),
            &[("scale", M("scale")), ("init-norm", M("init-norm"))],
        )],
        train: DECOUPLED,
        reference: "no re-training recipe published: `cls_crt.yaml` optimiser; scale and initialisation as OLTR's `CosNormClassifier.py`",
        train_when: None,
    },
    HeadPreset {
        name: "lws",
        components: &[
            c(LOGITS, LogitsKind::Lws.name(), &[]),
            c(
                SAMPLER,
                SamplerKind::ClassBalanced.name(),
                &[("per-class", L(Int(4)))],
            ),
        ],
        train: TrainDefaults {
            epochs: 5,
            batch_size: 512,
            lr: 0.2,
            weight_decay: 5e-4,
            init: crate::vocab::InitFrom::Backbone,
        },
        reference: "classifier-balancing `cls_lws.yaml`",
        train_when: None,
    },
    HeadPreset {
        name: "ldam",
        components: &[
            LDAM_COSINE,
            LDAM_LINEAR,
            c(MARGIN, MarginKind::Ldam.name(), &[("max-m", M("max-m"))]),
        ],
        train: DECOUPLED,
        reference: "LDAM-DRW `losses.py` (max_m 0.5, s 30) on `models/resnet_cifar.py` `NormedLinear` (unit initial class vectors); no re-training recipe published: `cls_crt.yaml` optimiser",
        train_when: None,
    },
    HeadPreset {
        name: "ldam-drw",
        components: &[
            LDAM_COSINE,
            LDAM_LINEAR,
            c(MARGIN, MarginKind::Ldam.name(), &[("max-m", M("max-m"))]),
            c(
                WEIGHTING,
                WeightingKind::ClassBalanced.name(),
                &[
                    ("beta", M("beta")),
                    ("loss", L(Str("softmax"))),
                    (
                        "from-epoch",
                        PresetValue::EpochFraction {
                            prop: "drw-epoch",
                            num: 4,
                            den: 5,
                        },
                    ),
                ],
            ),
        ],
        train: DECOUPLED,
        reference: "LDAM-DRW `cifar_train.py` (β 0.9999 from 80% of the epochs) on `NormedLinear` (unit initial class vectors); no re-training recipe published: `cls_crt.yaml` optimiser",
        train_when: None,
    },
    HeadPreset {
        name: "balanced-softmax",
        components: &[c(MARGIN, MarginKind::BalancedSoftmax.name(), &[])],
        train: TrainDefaults {
            epochs: 108,
            batch_size: 512,
            lr: 0.1,
            weight_decay: 5e-4,
            init: crate::vocab::InitFrom::Random,
        },
        reference: "BALMS `decouple_balanced_softmax_imba200.yaml`: re-initialised head, 2000 iterations of 512 (= 108 epochs of its 9,502 images)",
        train_when: None,
    },
    HeadPreset {
        name: "resample",
        components: &[c(
            SAMPLER,
            SamplerKind::ClassBalanced.name(),
            &[("per-class", M("per-class"))],
        )],
        train: DECOUPLED,
        reference: "classifier-balancing `cls_crt.yaml` (cRT)",
        train_when: None,
    },
    HeadPreset {
        name: "focal",
        components: &[c(
            WEIGHTING,
            WeightingKind::Focal.name(),
            &[("gamma", M("gamma"))],
        )],
        train: DECOUPLED,
        reference: "LDAM-DRW `losses.py` (γ 1); no re-training recipe published: `cls_crt.yaml` optimiser",
        train_when: None,
    },
    HeadPreset {
        name: "class-balanced",
        components: &[c(
            WEIGHTING,
            WeightingKind::ClassBalanced.name(),
            &[("beta", M("beta")), ("loss", M("loss"))],
        )],
        train: TrainDefaults {
            weight_decay: 0.0,
            ..LTWB_STAGE2
        },
        reference: "LTWB `demo2_second-stage-training.py` with `class_balanced_loss.py` (β 0.9999), without the weight decay and MaxNorm of its weight balancing (`maxnorm`)",
        train_when: None,
    },
    HeadPreset {
        name: "maxnorm",
        components: &[
            c(
                CONSTRAINT,
                ConstraintKind::Maxnorm.name(),
                &[
                    ("thresh", M("thresh")),
                    ("radius", M("radius")),
                    ("every", M("every")),
                ],
            ),
            c(
                WEIGHTING,
                WeightingKind::ClassBalanced.name(),
                &[("beta", L(Float(0.9999))), ("loss", L(Str("bce")))],
            ),
        ],
        train: LTWB_STAGE2,
        reference: "LTWB `demo2_second-stage-training.py` (`MaxNorm_WD`): its CB-BCE loss, MaxNorm thresh 0.1, weight decay 0.1",
        train_when: None,
    },
    HeadPreset {
        name: "tau-norm",
        components: &[c(
            INFERENCE,
            InferenceKind::TauNorm.name(),
            &[("tau", M("tau")), ("bias", M("bias"))],
        )],
        train: MAP_ONLY,
        reference: "classifier-balancing `tau_norm.py`: the stage-1 classifier τ-normalised, bias dropped",
        train_when: None,
    },
    HeadPreset {
        name: "logit-adjust",
        components: &[
            c(
                INFERENCE,
                InferenceKind::LogitAdjust.name(),
                &[("tau", M("tau"))],
            )
            .when("form", Str(LogitAdjustForm::PostHoc.name())),
            c(MARGIN, MarginKind::LogitAdjust.name(), &[("tau", M("tau"))])
                .when("form", Str(LogitAdjustForm::Loss.name())),
        ],
        train: MAP_ONLY,
        reference: "Menon et al. `logit_adjustment` (τ 1): post-hoc on the stage-1 classifier",
        train_when: Some((
            "form",
            LogitAdjustForm::Loss.name(),
            DECOUPLED,
            "Menon et al.'s loss form; no re-training recipe published: `cls_crt.yaml` optimiser",
        )),
    },
    HeadPreset {
        name: "lort",
        components: &[c(
            TARGETS,
            TargetsKind::Smoothed.name(),
            &[("delta", M("delta"))],
        )],
        train: TrainDefaults {
            epochs: 20,
            batch_size: 64,
            lr: 5e-4,
            weight_decay: 0.0,
            init: crate::vocab::InitFrom::Backbone,
        },
        reference: "official LOS code `main_stage2.py`: fine-tune the stage-1 fc, lr 5e-4, wd 0",
        train_when: None,
    },
];

impl HeadPreset {
    /// The training defaults for the method's written properties (`value_of(prop)`).
    pub fn train_for(&self, value_of: impl Fn(&str) -> Option<String>) -> TrainDefaults {
        match self.train_when {
            Some((prop, value, train, _)) if value_of(prop).as_deref() == Some(value) => train,
            _ => self.train,
        }
    }
}

/// The preset called `name`.
pub fn preset(name: &str) -> Option<&'static HeadPreset> {
    HEAD_PRESETS.iter().find(|p| p.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `method` node's variants and the preset table name the same methods, in the same
    /// order: a method the checker accepts always has its recipe, and every recipe is reachable.
    #[test]
    fn every_method_has_a_preset_and_every_preset_a_method() {
        let methods: Vec<&str> = METHOD.variants.iter().map(|v| v.name).collect();
        let presets: Vec<&str> = HEAD_PRESETS.iter().map(|p| p.name).collect();
        assert_eq!(methods, presets);
        assert!(preset(DEFAULT_METHOD).is_some());
    }
}
