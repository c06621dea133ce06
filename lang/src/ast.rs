//! The schema-checked syntax tree: KDL nodes whose names, arguments and properties have been
//! validated against the schema, with every value typed and spanned. Lowering turns it into
//! the IR; `--set` and sweeps edit it and lower again.

use std::fmt;

use crate::schema::{Lit, NodeSpec, ParamSpec, format_float};
use crate::source::{Span, Spanned};

/// A typed value written in a pipeline.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// An integer.
    Int(i64),
    /// A number.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A string (also names, paths, references).
    Str(String),
}

impl Value {
    /// The number, for ints and floats.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(v) => Some(*v as f64),
            Value::Float(v) => Some(*v),
            _ => None,
        }
    }

    /// The integer.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// The boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(v) => Some(*v),
            _ => None,
        }
    }

    /// The string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(v) => Some(v),
            _ => None,
        }
    }

    /// The value of a schema literal.
    pub fn from_lit(lit: Lit) -> Value {
        match lit {
            Lit::Int(v) => Value::Int(v),
            Lit::Float(v) => Value::Float(v),
            Lit::Bool(v) => Value::Bool(v),
            Lit::Str(v) => Value::Str(v.to_string()),
        }
    }

    /// The value as JSON, for canonical parameters.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Int(v) => serde_json::Value::from(*v),
            Value::Float(v) => serde_json::Number::from_f64(*v)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Bool(v) => serde_json::Value::Bool(*v),
            Value::Str(v) => serde_json::Value::String(v.clone()),
        }
    }
}

impl fmt::Display for Value {
    /// Formats the value as it would be written in KDL.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) => f.write_str(&format_float(*v)),
            Value::Bool(v) => write!(f, "#{v}"),
            Value::Str(v) => write!(f, "{v:?}"),
        }
    }
}

/// A checked property: `name=value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Prop {
    /// The name as written.
    pub name: Spanned<String>,
    /// The typed value.
    pub value: Spanned<Value>,
}

/// A node that passed the schema check (possibly with errors reported on parts of it; those
/// parts are left out).
#[derive(Debug, Clone)]
pub struct Node {
    /// The node's schema.
    pub spec: &'static NodeSpec,
    /// The span of the node name.
    pub name_span: Span,
    /// The span of the whole node.
    pub span: Span,
    /// The chosen variant, for nodes with variants (also `args[0]`).
    pub variant: Option<Spanned<String>>,
    /// Positional arguments, typed.
    pub args: Vec<Spanned<Value>>,
    /// Properties, typed, in written order.
    pub props: Vec<Prop>,
    /// Checked children.
    pub children: Vec<Node>,
}

impl Node {
    /// The node name.
    pub fn name(&self) -> &'static str {
        self.spec.name
    }

    /// The written property `name`.
    pub fn prop(&self, name: &str) -> Option<&Prop> {
        self.props.iter().find(|p| p.name.value == name)
    }

    /// The first child called `name`.
    pub fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.spec.name == name)
    }

    /// All children called `name`.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.spec.name == name)
    }

    /// The variant name, if any.
    pub fn variant_name(&self) -> Option<&str> {
        self.variant.as_ref().map(|v| v.value.as_str())
    }

    /// The spec of property `name` for this node's variant.
    pub fn prop_spec(&self, name: &str) -> Option<&'static ParamSpec> {
        self.spec.prop(self.variant_name(), name)
    }

    /// The property's value, or its schema default.
    pub fn prop_or_default(&self, name: &str) -> Option<Value> {
        self.prop(name).map(|p| p.value.value.clone()).or_else(|| {
            self.prop_spec(name)
                .and_then(|s| s.default)
                .map(Value::from_lit)
        })
    }

    /// The span of the property's value, or of the node name when it was not written.
    pub fn prop_span(&self, name: &str) -> Span {
        self.prop(name).map_or(self.name_span, |p| p.value.span)
    }

    /// Argument `index`, or its schema default.
    pub fn arg_or_default(&self, index: usize) -> Option<Value> {
        self.args.get(index).map(|a| a.value.clone()).or_else(|| {
            self.spec
                .args
                .get(index)
                .and_then(|s| s.default)
                .map(Value::from_lit)
        })
    }

    /// Sets (or adds) a property.
    pub fn set_prop(&mut self, name: &str, value: Spanned<Value>) {
        match self.props.iter_mut().find(|p| p.name.value == name) {
            Some(p) => p.value = value,
            None => self.props.push(Prop {
                name: Spanned::new(name.to_string(), value.span),
                value,
            }),
        }
    }
}
