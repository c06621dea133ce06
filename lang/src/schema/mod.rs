//! The schema of the pipeline language: every node, its arguments, properties and children,
//! with types, units, defaults and valid ranges.
//!
//! This is the single source of truth of the language. The checker validates documents
//! against it, lowering reads its defaults, `--set` and sweeps resolve parameter paths through
//! it, and `docs/language.md` is generated from it.

mod language;
mod methods;

use std::fmt;

pub use language::{LANGUAGE_VERSION, TOP_LEVEL, top_level};
pub use methods::{
    COMPONENTS, ComponentSetting, DEFAULT_METHOD, HEAD_PRESETS, HeadPreset, PresetValue,
    TrainDefaults, When, preset,
};

/// A literal default value of a parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lit {
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Str(&'static str),
}

impl fmt::Display for Lit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lit::Int(v) => write!(f, "{v}"),
            Lit::Float(v) => write!(f, "{}", format_float(*v)),
            Lit::Bool(v) => write!(f, "#{v}"),
            Lit::Str(v) => write!(f, "\"{v}\""),
        }
    }
}

/// Formats a float the way a user would write it (`0.98`, `5e-4`, `1.0`).
pub fn format_float(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e6) {
        format!("{v:e}")
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// The type of an argument or property value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueType {
    /// A whole number (`200`).
    Int,
    /// A number; integers are accepted (`0.98`, `5e-4`, `1`).
    Float,
    /// `#true` or `#false`.
    Bool,
    /// Free text.
    String,
    /// A file or directory path, relative to the file that names it.
    Path,
    /// One of a fixed set of names.
    Enum(&'static [&'static str]),
    /// The name of a stage of one of the given kinds.
    StageRef(&'static [StageKind]),
    /// A stage name or a glob over stage names (`"*"`, `"lort-*"`).
    StagePattern,
    /// Any value; checked later against another parameter (sweep values).
    Any,
}

impl ValueType {
    /// A short description for messages and docs ("number", "one of `a`, `b`").
    pub fn describe(&self) -> String {
        match self {
            ValueType::Int => "integer".into(),
            ValueType::Float => "number".into(),
            ValueType::Bool => "boolean (`#true` or `#false`)".into(),
            ValueType::String => "string".into(),
            ValueType::Path => "path string".into(),
            ValueType::Enum(choices) => format!(
                "one of {}",
                choices
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            ValueType::StageRef(kinds) => format!(
                "name of a {} stage",
                kinds
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
            ValueType::StagePattern => "stage name or glob pattern".into(),
            ValueType::Any => "value".into(),
        }
    }

    /// Whether values of this type are written as KDL strings.
    pub fn is_stringly(&self) -> bool {
        matches!(
            self,
            ValueType::String
                | ValueType::Path
                | ValueType::Enum(_)
                | ValueType::StageRef(_)
                | ValueType::StagePattern
        )
    }
}

/// One end of a numeric range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    /// No limit on this side.
    Unbounded,
    /// The limit itself is allowed.
    Inclusive(f64),
    /// The limit itself is not allowed.
    Exclusive(f64),
}

/// The valid range of a numeric parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    /// Lower end.
    pub min: Bound,
    /// Upper end.
    pub max: Bound,
}

impl Range {
    /// Any number.
    pub const ANY: Range = Range {
        min: Bound::Unbounded,
        max: Bound::Unbounded,
    };
    /// `[0, ∞)`.
    pub const NON_NEGATIVE: Range = Range {
        min: Bound::Inclusive(0.0),
        max: Bound::Unbounded,
    };
    /// `(0, ∞)`.
    pub const POSITIVE: Range = Range {
        min: Bound::Exclusive(0.0),
        max: Bound::Unbounded,
    };
    /// `[1, ∞)`.
    pub const AT_LEAST_ONE: Range = Range {
        min: Bound::Inclusive(1.0),
        max: Bound::Unbounded,
    };
    /// `[0, 1)`.
    pub const UNIT_HALF_OPEN: Range = Range {
        min: Bound::Inclusive(0.0),
        max: Bound::Exclusive(1.0),
    };
    /// `[0, 1]`.
    pub const UNIT: Range = Range {
        min: Bound::Inclusive(0.0),
        max: Bound::Inclusive(1.0),
    };

    /// `[min, max]`.
    pub const fn closed(min: f64, max: f64) -> Range {
        Range {
            min: Bound::Inclusive(min),
            max: Bound::Inclusive(max),
        }
    }

    /// Whether `v` lies in the range.
    pub fn contains(&self, v: f64) -> bool {
        let above = match self.min {
            Bound::Unbounded => true,
            Bound::Inclusive(m) => v >= m,
            Bound::Exclusive(m) => v > m,
        };
        let below = match self.max {
            Bound::Unbounded => true,
            Bound::Inclusive(m) => v <= m,
            Bound::Exclusive(m) => v < m,
        };
        above && below && !v.is_nan()
    }

    /// Whether the range restricts anything.
    pub fn is_any(&self) -> bool {
        *self == Range::ANY
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.min {
            Bound::Unbounded => write!(f, "(-∞")?,
            Bound::Inclusive(m) => write!(f, "[{}", trim_float(m))?,
            Bound::Exclusive(m) => write!(f, "({}", trim_float(m))?,
        }
        write!(f, ", ")?;
        match self.max {
            Bound::Unbounded => write!(f, "∞)"),
            Bound::Inclusive(m) => write!(f, "{}]", trim_float(m)),
            Bound::Exclusive(m) => write!(f, "{})", trim_float(m)),
        }
    }
}

fn trim_float(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// An argument or a property of a node.
#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    /// The property name, or the argument's name in docs and messages.
    pub name: &'static str,
    /// The value type.
    pub ty: ValueType,
    /// Default when omitted; `None` means "required" when `required` is set, "unset" otherwise.
    pub default: Option<Lit>,
    /// Valid range of numeric values.
    pub range: Range,
    /// Unit shown in docs ("epochs", "images").
    pub unit: Option<&'static str>,
    /// One-line description.
    pub doc: &'static str,
    /// Whether the value must be given.
    pub required: bool,
    /// For the last argument: whether it takes any number of values.
    pub variadic: bool,
}

impl ParamSpec {
    /// An optional parameter without default.
    pub const fn new(name: &'static str, ty: ValueType, doc: &'static str) -> Self {
        ParamSpec {
            name,
            ty,
            default: None,
            range: Range::ANY,
            unit: None,
            doc,
            required: false,
            variadic: false,
        }
    }
    /// Sets the default.
    pub const fn default(mut self, lit: Lit) -> Self {
        self.default = Some(lit);
        self
    }
    /// Sets the valid range.
    pub const fn range(mut self, range: Range) -> Self {
        self.range = range;
        self
    }
    /// Sets the unit.
    pub const fn unit(mut self, unit: &'static str) -> Self {
        self.unit = Some(unit);
        self
    }
    /// Makes the parameter required.
    pub const fn required(mut self) -> Self {
        self.required = true;
        self
    }
    /// Makes the (last) argument take any number of values.
    pub const fn variadic(mut self) -> Self {
        self.variadic = true;
        self
    }
}

/// One choice of a node whose first argument selects a variant (`method "lort"`,
/// `source "cifar100"`), with the properties that belong to that choice.
#[derive(Debug, Clone, Copy)]
pub struct VariantSpec {
    /// The name written as the first argument.
    pub name: &'static str,
    /// One-line description.
    pub doc: &'static str,
    /// Properties valid only for this variant.
    pub props: &'static [ParamSpec],
}

/// The kinds of stages a pipeline declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StageKind {
    /// Loads a dataset and makes its train split long-tailed.
    Dataset,
    /// Trains or loads a feature extractor.
    Backbone,
    /// Caches frozen features of a backbone.
    Features,
    /// Re-trains a classifier head on cached features.
    Head,
    /// Evaluates heads.
    Evaluate,
    /// Expands a stage into variants over parameter values.
    Sweep,
}

impl StageKind {
    /// All stage kinds, in pipeline order.
    pub const ALL: [StageKind; 6] = [
        StageKind::Dataset,
        StageKind::Backbone,
        StageKind::Features,
        StageKind::Head,
        StageKind::Sweep,
        StageKind::Evaluate,
    ];

    /// The node name that declares a stage of this kind.
    pub fn as_str(&self) -> &'static str {
        match self {
            StageKind::Dataset => "dataset",
            StageKind::Backbone => "backbone",
            StageKind::Features => "features",
            StageKind::Head => "head",
            StageKind::Evaluate => "evaluate",
            StageKind::Sweep => "sweep",
        }
    }

    /// Whether the stage's numbers depend on the compute backend (it trains or runs a network),
    /// so that the backend is one of its parameters.
    pub fn depends_on_backend(&self) -> bool {
        matches!(
            self,
            StageKind::Backbone | StageKind::Features | StageKind::Head
        )
    }

    /// Whether the stage's output shows its own name and the names of the stages it reads (an
    /// evaluation's table is labelled with head names), so that those names are among its
    /// parameters.
    pub fn shows_input_names(&self) -> bool {
        matches!(self, StageKind::Evaluate)
    }

    /// Parses a node name.
    pub fn from_name(name: &str) -> Option<StageKind> {
        StageKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for StageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an unknown variant name is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VariantNoun {
    /// A head re-training method (`lortflow::unknown-method`).
    Method,
    /// Any other choice (`lortflow::unknown-value`).
    Choice,
}

/// A node of the language: its arguments, properties, variants and children.
#[derive(Debug, Clone, Copy)]
pub struct NodeSpec {
    /// The node name.
    pub name: &'static str,
    /// What the node does (one paragraph, markdown).
    pub doc: &'static str,
    /// Positional arguments. With variants, the first one selects the variant.
    pub args: &'static [ParamSpec],
    /// Properties valid for every variant.
    pub props: &'static [ParamSpec],
    /// Choices selected by the first argument; empty when the node has none.
    pub variants: &'static [VariantSpec],
    /// How an unknown variant is reported.
    pub variant_noun: VariantNoun,
    /// Child nodes.
    pub children: &'static [NodeSpec],
    /// Whether the node must appear in its parent.
    pub required: bool,
    /// Whether the node may appear more than once in its parent.
    pub repeatable: bool,
    /// Sibling nodes that cannot be given together with this one.
    pub conflicts: &'static [&'static str],
    /// Groups of children of which exactly one must be given.
    pub one_of: &'static [&'static [&'static str]],
    /// The stage kind this node declares, for top-level stage nodes.
    pub stage: Option<StageKind>,
    /// Whether plugins may add variants at run time (see [`register_variant`]).
    pub extensible: bool,
    /// An example, shown in docs and help.
    pub example: &'static str,
}

impl NodeSpec {
    /// A node with nothing declared yet.
    pub const fn new(name: &'static str, doc: &'static str) -> Self {
        NodeSpec {
            name,
            doc,
            args: &[],
            props: &[],
            variants: &[],
            variant_noun: VariantNoun::Choice,
            children: &[],
            required: false,
            repeatable: false,
            conflicts: &[],
            one_of: &[],
            stage: None,
            extensible: false,
            example: "",
        }
    }
    /// Sets the arguments.
    pub const fn args(mut self, args: &'static [ParamSpec]) -> Self {
        self.args = args;
        self
    }
    /// Sets the properties shared by all variants.
    pub const fn props(mut self, props: &'static [ParamSpec]) -> Self {
        self.props = props;
        self
    }
    /// Sets the variants selected by the first argument.
    pub const fn variants(mut self, variants: &'static [VariantSpec]) -> Self {
        self.variants = variants;
        self
    }
    /// Reports unknown variants as unknown methods.
    pub const fn methods(mut self) -> Self {
        self.variant_noun = VariantNoun::Method;
        self
    }
    /// Sets the children.
    pub const fn children(mut self, children: &'static [NodeSpec]) -> Self {
        self.children = children;
        self
    }
    /// Makes the node required.
    pub const fn required(mut self) -> Self {
        self.required = true;
        self
    }
    /// Allows the node more than once.
    pub const fn repeatable(mut self) -> Self {
        self.repeatable = true;
        self
    }
    /// Sets the conflicting siblings.
    pub const fn conflicts(mut self, conflicts: &'static [&'static str]) -> Self {
        self.conflicts = conflicts;
        self
    }
    /// Sets groups of children of which exactly one is required.
    pub const fn one_of(mut self, one_of: &'static [&'static [&'static str]]) -> Self {
        self.one_of = one_of;
        self
    }
    /// Marks the node as declaring a stage.
    pub const fn stage(mut self, kind: StageKind) -> Self {
        self.stage = Some(kind);
        self
    }
    /// Lets plugins add variants (see [`register_variant`]).
    pub const fn extensible(mut self) -> Self {
        self.extensible = true;
        self
    }
    /// Sets the example.
    pub const fn example(mut self, example: &'static str) -> Self {
        self.example = example;
        self
    }

    /// The child spec called `name`.
    pub fn child(&self, name: &str) -> Option<&'static NodeSpec> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The variant called `name`: a built-in one, or one a plugin registered.
    pub fn variant(&self, name: &str) -> Option<&'static VariantSpec> {
        self.variants
            .iter()
            .find(|v| v.name == name)
            .or_else(|| self.plugin(name).map(|p| p.variant))
    }

    /// Every variant: the built-in ones, then those registered by plugins.
    pub fn all_variants(&self) -> Vec<&'static VariantSpec> {
        let mut all: Vec<&'static VariantSpec> = self.variants.iter().collect();
        if self.extensible {
            all.extend(
                plugins()
                    .iter()
                    .filter(|p| p.node == self.name)
                    .map(|p| p.variant),
            );
        }
        all
    }

    /// Whether the first argument selects a variant.
    pub fn has_variants(&self) -> bool {
        self.extensible || !self.variants.is_empty()
    }

    /// The plugin that registered variant `name` of this node.
    pub fn plugin(&self, name: &str) -> Option<PluginVariant> {
        if !self.extensible {
            return None;
        }
        plugins()
            .iter()
            .find(|p| p.node == self.name && p.variant.name == name)
            .copied()
    }

    /// The properties valid for the given variant (shared ones first).
    pub fn props_for(&self, variant: Option<&str>) -> impl Iterator<Item = &'static ParamSpec> {
        let variant_props: &'static [ParamSpec] = variant
            .and_then(|v| self.variant(v))
            .map(|v| v.props)
            .unwrap_or(&[]);
        self.props.iter().chain(variant_props.iter())
    }

    /// The property `name` for the given variant.
    pub fn prop(&self, variant: Option<&str>, name: &str) -> Option<&'static ParamSpec> {
        self.props_for(variant).find(|p| p.name == name)
    }
}

/// The spec of a stage kind's node.
pub fn stage_spec(kind: StageKind) -> &'static NodeSpec {
    top_level(kind.as_str()).expect("every stage kind should have a top-level spec")
}

/// A variant that a plugin adds to an extensible node (`loss` of a head): its schema, which the
/// checker, lowering, `--set` and the docs read like a built-in variant's, and the version of its
/// implementation, which is part of the cache key of every stage that uses it.
#[derive(Debug, Clone, Copy)]
pub struct PluginVariant {
    /// The extensible node (`"loss"`).
    pub node: &'static str,
    /// Name, description and properties; properties are numbers (`Int` or `Float`) and need a
    /// default.
    pub variant: &'static VariantSpec,
    /// Bump it when the implementation's results change, so that cached results are recomputed.
    pub version: &'static str,
}

/// Why a plugin variant was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// No node of that name accepts plugin variants.
    #[error("no node `{node}` accepts plugin variants (extensible nodes: {extensible})")]
    NotExtensible {
        /// The node named.
        node: String,
        /// The extensible nodes.
        extensible: String,
    },
    /// The name is already taken.
    #[error("`{node}` already has a variant `{name}`")]
    Taken {
        /// The node.
        node: String,
        /// The variant name.
        name: String,
    },
    /// A property is not a number with a default, or has a reserved name.
    #[error(
        "property `{prop}` of `{node} \"{name}\"` must be an `Int` or `Float` with a default, \
         not named `name`, `version` or `kind`"
    )]
    BadProperty {
        /// The node.
        node: String,
        /// The variant name.
        name: String,
        /// The property.
        prop: String,
    },
}

static PLUGINS: std::sync::RwLock<Vec<PluginVariant>> = std::sync::RwLock::new(Vec::new());

fn plugins() -> std::sync::RwLockReadGuard<'static, Vec<PluginVariant>> {
    PLUGINS.read().unwrap_or_else(|e| e.into_inner())
}

/// The names of the nodes that accept plugin variants.
pub fn extensible_nodes() -> Vec<&'static str> {
    fn walk(nodes: &'static [NodeSpec], out: &mut Vec<&'static str>) {
        for node in nodes {
            if node.extensible && !out.contains(&node.name) {
                out.push(node.name);
            }
            walk(node.children, out);
        }
    }
    let mut out = Vec::new();
    walk(TOP_LEVEL, &mut out);
    out
}

/// Adds a plugin's variant to the language, for the rest of the process. Registering the same
/// variant (same name and version) again is a no-op.
pub fn register_variant(plugin: PluginVariant) -> Result<(), RegisterError> {
    let name = plugin.variant.name;
    let extensible = extensible_nodes();
    if !extensible.contains(&plugin.node) {
        return Err(RegisterError::NotExtensible {
            node: plugin.node.into(),
            extensible: extensible.join(", "),
        });
    }
    for prop in plugin.variant.props {
        let reserved = matches!(prop.name, "name" | "version" | "kind");
        if reserved
            || !matches!(prop.ty, ValueType::Int | ValueType::Float)
            || prop.default.is_none()
        {
            return Err(RegisterError::BadProperty {
                node: plugin.node.into(),
                name: name.into(),
                prop: prop.name.into(),
            });
        }
    }
    let mut all = PLUGINS.write().unwrap_or_else(|e| e.into_inner());
    if let Some(existing) = all
        .iter()
        .find(|p| p.node == plugin.node && p.variant.name == name)
    {
        return if existing.version == plugin.version {
            Ok(())
        } else {
            Err(RegisterError::Taken {
                node: plugin.node.into(),
                name: name.into(),
            })
        };
    }
    all.push(plugin);
    Ok(())
}
