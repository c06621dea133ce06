//! Typed reading of a node's settings through its schema: each value is the written one, else a
//! default that lowering supplies (a preset's recipe, the pipeline seed), else the schema's, and
//! is converted once to its type. A value that is none of these is an error diagnostic, never a
//! silent 0, "" or `false`.

use std::cell::RefCell;
use std::path::Path;

use crate::ast::{Node, Value};
use crate::choice::Choice;
use crate::diagnostic::{Code, Diagnostic};
use crate::ir::PathValue;
use crate::schema::{NodeSpec, ParamSpec};
use crate::source::{Span, Spanned};

/// Which setting of a node: a property by name, or a positional argument.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Key {
    /// `name=value`.
    Prop(&'static str),
    /// The argument at this index.
    Arg(usize),
}

pub(crate) use Key::Arg;

impl From<&'static str> for Key {
    fn from(name: &'static str) -> Key {
        Key::Prop(name)
    }
}

/// Integer settings: the checker guarantees the lower bound of their range; a count too large
/// for the type saturates rather than wrapping.
pub(crate) trait Int: Sized {
    /// The value of a checked integer.
    fn from_checked(v: i64) -> Self;
}

impl Int for u32 {
    fn from_checked(v: i64) -> u32 {
        v.clamp(0, u32::MAX as i64) as u32
    }
}

impl Int for u64 {
    fn from_checked(v: i64) -> u64 {
        v.max(0) as u64
    }
}

/// The settings of one node (or of an absent one, whose schema defaults apply), read through its
/// schema. Problems go to `problems`, with the stage's name.
pub(crate) struct Settings<'a> {
    /// The written nodes, first wins: a head's own `train`, then the pipeline's budget. Empty
    /// when the node is not written.
    written: Vec<&'a Node>,
    /// The node's schema.
    spec: &'static NodeSpec,
    /// The chosen variant, whose properties apply as well as the node's own.
    variant: Option<&'a str>,
    /// Defaults lowering supplies, taking precedence over the schema's.
    defaults: Vec<(&'static str, Value)>,
    /// Where a missing value is reported: the node's name, or its parent's when it is absent.
    at: Span,
    /// The directory relative paths are resolved against.
    dir: &'a Path,
    stage: &'a str,
    problems: &'a RefCell<Vec<Diagnostic>>,
}

impl<'a> Settings<'a> {
    /// The settings of a written node.
    pub(crate) fn of(
        node: &'a Node,
        dir: &'a Path,
        stage: &'a str,
        problems: &'a RefCell<Vec<Diagnostic>>,
    ) -> Settings<'a> {
        Settings {
            written: vec![node],
            spec: node.spec,
            variant: node.variant_name(),
            defaults: Vec::new(),
            at: node.name_span,
            dir,
            stage,
            problems,
        }
    }

    /// The settings of a node of schema `spec` that is not written (reported at `at`): only
    /// defaults apply.
    pub(crate) fn absent(
        spec: &'static NodeSpec,
        at: Span,
        dir: &'a Path,
        stage: &'a str,
        problems: &'a RefCell<Vec<Diagnostic>>,
    ) -> Settings<'a> {
        Settings {
            written: Vec::new(),
            spec,
            variant: None,
            defaults: Vec::new(),
            at,
            dir,
            stage,
            problems,
        }
    }

    /// Falls back on `node`'s written values after those of the nodes before it.
    pub(crate) fn or(mut self, node: Option<&'a Node>) -> Settings<'a> {
        self.written.extend(node);
        self
    }

    /// A default of lowering's own (a preset's recipe), used before the schema's.
    pub(crate) fn default(mut self, prop: &'static str, value: Value) -> Settings<'a> {
        self.defaults.push((prop, value));
        self
    }

    fn param(&self, key: Key) -> Option<&'static ParamSpec> {
        match key {
            Key::Prop(name) => self.spec.prop(self.variant, name),
            // Variadic arguments share the last argument's spec.
            Key::Arg(i) => self.spec.args.get(i).or_else(|| {
                self.spec
                    .args
                    .last()
                    .filter(|a| a.variadic && i >= self.spec.args.len())
            }),
        }
    }

    /// The written value of `key`, from the first node that has it.
    pub(crate) fn written(&self, key: impl Into<Key>) -> Option<&'a Spanned<Value>> {
        let key = key.into();
        self.written.iter().find_map(|n| match key {
            Key::Prop(name) => n.prop(name).map(|p| &p.value),
            Key::Arg(i) => n.args.get(i),
        })
    }

    /// Where `key` is written, else where a missing value is reported.
    pub(crate) fn span(&self, key: impl Into<Key>) -> Span {
        self.written(key).map_or(self.at, |v| v.span)
    }

    /// The written value, else lowering's default, else the schema's; `None` when there is none
    /// (a setting whose absence means something: `radius`, `max-per-class`).
    pub(crate) fn optional(&self, key: impl Into<Key>) -> Option<Spanned<Value>> {
        let key = key.into();
        if let Some(v) = self.written(key) {
            return Some(v.clone());
        }
        let default = match key {
            Key::Prop(name) => self
                .defaults
                .iter()
                .find(|(p, _)| *p == name)
                .map(|(_, v)| v.clone())
                .or_else(|| self.param(key)?.default.map(Value::from_lit)),
            // An argument's default stands for the absent node (`tta` unwritten is `tta "none"`);
            // a written node without it is missing a required argument, which the checker
            // reported.
            Key::Arg(_) if self.written.is_empty() => self.param(key)?.default.map(Value::from_lit),
            Key::Arg(_) => None,
        };
        default.map(|v| Spanned::new(v, self.at))
    }

    /// Like [`Settings::optional`], for a setting lowering needs: when there is no value, an
    /// error. The checker has already reported a required setting that is missing or invalid,
    /// so that one is not reported twice; any other is a setting the schema gives no default.
    pub(crate) fn required(&self, key: impl Into<Key>) -> Option<Spanned<Value>> {
        let key = key.into();
        if let Some(v) = self.optional(key) {
            return Some(v);
        }
        let param = self.param(key);
        let reported = if self.written.is_empty() {
            self.spec.required
        } else {
            param.is_some_and(|p| p.required)
        };
        if !reported {
            self.missing(key, param);
        }
        None
    }

    fn missing(&self, key: Key, param: Option<&ParamSpec>) {
        let node = self.spec.name;
        let (what, write) = match key {
            Key::Prop(name) => (format!("`{name}`"), format!("`{node} {name}=…`")),
            Key::Arg(i) => (format!("argument {}", i + 1), format!("`{node} …`")),
        };
        let ty = param.map_or_else(|| "a value".to_string(), |p| p.ty.describe());
        self.problems.borrow_mut().push(
            Diagnostic::new(
                Code::MissingRequired,
                format!(
                    "stage `{}`: `{node}` has no value for {what}, and the language gives it no default",
                    self.stage
                ),
                self.at,
                format!("{what} is needed here"),
            )
            .with_help(format!("write it: {write} ({ty})")),
        );
    }

    /// A value of the wrong type: the checker lets none through, so it is a bug between the
    /// schema and lowering, reported rather than read as 0.
    fn mistyped<T>(&self, key: Key, value: &Spanned<Value>, expected: &str) -> Option<T> {
        let what = match key {
            Key::Prop(name) => format!("`{name}`"),
            Key::Arg(i) => format!("argument {}", i + 1),
        };
        self.bug(
            format!(
                "`{}` {what} is {}, not {expected}",
                self.spec.name, value.value
            ),
            value.span,
        );
        None
    }

    /// Reports a disagreement between the schema and lowering.
    pub(crate) fn bug(&self, what: String, span: Span) {
        self.problems.borrow_mut().push(Diagnostic::new(
            Code::UnknownValue,
            format!(
                "stage `{}`: {what} (a bug in lortflow: the schema accepted what its IR does not \
                 have; please report it)",
                self.stage
            ),
            span,
            "here",
        ));
    }

    /// A whole number, of its range.
    pub(crate) fn int<T: Int>(&self, key: impl Into<Key>) -> Option<T> {
        let key = key.into();
        let v = self.required(key)?;
        match v.value.as_i64() {
            Some(i) => Some(T::from_checked(i)),
            None => self.mistyped(key, &v, "an integer"),
        }
    }

    /// A whole number, or `None` when it is neither written nor defaulted.
    pub(crate) fn opt_int<T: Int>(&self, key: impl Into<Key>) -> Option<T> {
        let key = key.into();
        let v = self.optional(key)?;
        match v.value.as_i64() {
            Some(i) => Some(T::from_checked(i)),
            None => self.mistyped(key, &v, "an integer"),
        }
    }

    /// A number (integers are numbers).
    pub(crate) fn float(&self, key: impl Into<Key>) -> Option<f64> {
        let key = key.into();
        let v = self.required(key)?;
        v.value
            .as_f64()
            .or_else(|| self.mistyped(key, &v, "a number"))
    }

    /// A number, or `None` when it is neither written nor defaulted.
    pub(crate) fn opt_float(&self, key: impl Into<Key>) -> Option<f64> {
        let key = key.into();
        let v = self.optional(key)?;
        v.value
            .as_f64()
            .or_else(|| self.mistyped(key, &v, "a number"))
    }

    /// `#true` or `#false`.
    pub(crate) fn flag(&self, key: impl Into<Key>) -> Option<bool> {
        let key = key.into();
        let v = self.required(key)?;
        v.value
            .as_bool()
            .or_else(|| self.mistyped(key, &v, "a boolean"))
    }

    /// Free text, or `None` when it is neither written nor defaulted.
    pub(crate) fn opt_text(&self, key: impl Into<Key>) -> Option<String> {
        let key = key.into();
        let v = self.optional(key)?;
        match v.value.as_str() {
            Some(s) => Some(s.to_string()),
            None => self.mistyped(key, &v, "a string"),
        }
    }

    /// A string with where it is written (a stage reference).
    pub(crate) fn name(&self, key: impl Into<Key>) -> Option<Spanned<String>> {
        let key = key.into();
        let v = self.required(key)?;
        match v.value.as_str() {
            Some(s) => Some(Spanned::new(s.to_string(), v.span)),
            None => self.mistyped(key, &v, "a string"),
        }
    }

    /// One of the names of `T`.
    pub(crate) fn choice<T: Choice>(&self, key: impl Into<Key>) -> Option<T> {
        self.spanned_choice(key).map(|c| c.value)
    }

    /// One of the names of `T`, with where it is written.
    pub(crate) fn spanned_choice<T: Choice>(&self, key: impl Into<Key>) -> Option<Spanned<T>> {
        let key = key.into();
        let v = self.name(key)?;
        match T::from_name(&v.value) {
            Some(c) => Some(Spanned::new(c, v.span)),
            None => {
                self.unknown_name(key, &v.value, v.span);
                None
            }
        }
    }

    /// The node's variant (`logits "cosine"`), as one of `T`.
    pub(crate) fn variant<T: Choice>(&self) -> Option<T> {
        let name = self.variant?;
        let parsed = T::from_name(name);
        if parsed.is_none() {
            self.unknown_name(Key::Arg(0), name, self.span(Key::Arg(0)));
        }
        parsed
    }

    fn unknown_name(&self, key: Key, name: &str, span: Span) {
        let what = match key {
            Key::Prop(p) => format!("`{p}`"),
            Key::Arg(_) => "its kind".to_string(),
        };
        self.bug(
            format!(
                "`{name}` is not a known value of `{}` {what}",
                self.spec.name
            ),
            span,
        );
    }

    /// A path, resolved against the directory of the file that names it.
    pub(crate) fn path(&self, key: impl Into<Key>) -> Option<PathValue> {
        let key = key.into();
        let v = self.name(key)?;
        Some(path_value(self.dir, v.value, v.span))
    }

    /// A path, or `None` when it is neither written nor defaulted.
    pub(crate) fn opt_path(&self, key: impl Into<Key>) -> Option<PathValue> {
        let key = key.into();
        let v = self.optional(key)?;
        match v.value.as_str() {
            Some(s) => Some(path_value(self.dir, s.to_string(), v.span)),
            None => self.mistyped(key, &v, "a path"),
        }
    }
}

/// A path as written and as resolved against `dir`.
fn path_value(dir: &Path, written: String, span: Span) -> PathValue {
    PathValue {
        resolved: dir.join(&written),
        written,
        span,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ast::Prop;
    use crate::diagnostic::Severity;
    use crate::schema::{Lit, ValueType};

    /// A node of a test-only schema: one setting of each kind lowering meets.
    const PROBE: NodeSpec = NodeSpec::new("probe", "A test node.")
        .args(&[
            ParamSpec::new("mode", ValueType::Int, "An argument with a default.")
                .default(Lit::Int(5))
                .required(),
        ])
        .props(&[
            ParamSpec::new("given", ValueType::Int, "Has a default.").default(Lit::Int(3)),
            ParamSpec::new("needed", ValueType::Int, "No default, not required."),
            ParamSpec::new(
                "checked",
                ValueType::Float,
                "Required: the checker says so.",
            )
            .required(),
        ]);

    fn node(args: &[i64], props: &[(&str, i64)]) -> Node {
        let at = Span::synthetic();
        Node {
            spec: &PROBE,
            name_span: at,
            span: at,
            variant: None,
            args: args
                .iter()
                .map(|&v| Spanned::new(Value::Int(v), at))
                .collect(),
            props: props
                .iter()
                .map(|&(name, v)| Prop {
                    name: Spanned::new(name.to_string(), at),
                    value: Spanned::new(Value::Int(v), at),
                })
                .collect(),
            children: Vec::new(),
        }
    }

    fn problems() -> RefCell<Vec<Diagnostic>> {
        RefCell::new(Vec::new())
    }

    #[test]
    fn a_setting_with_neither_value_nor_default_is_an_error_never_zero() {
        let problems = problems();
        let n = node(&[], &[]);
        let s = Settings::of(&n, Path::new(""), "st", &problems);
        assert_eq!(s.int::<u32>("needed"), None);
        assert_eq!(s.float("needed"), None);
        let problems = problems.into_inner();
        assert_eq!(problems.len(), 2, "{problems:?}");
        let d = &problems[0];
        assert_eq!(
            (d.code, d.severity),
            (Code::MissingRequired, Severity::Error)
        );
        assert!(d.message.contains("`needed`"), "{}", d.message);
        assert_eq!(
            d.help.as_deref(),
            Some("write it: `probe needed=…` (integer)")
        );
    }

    #[test]
    fn a_required_setting_the_checker_reported_is_not_reported_twice() {
        let problems = problems();
        let n = node(&[], &[]);
        let s = Settings::of(&n, Path::new(""), "st", &problems);
        assert_eq!(s.float("checked"), None);
        // A written node without its required argument: the checker's error, not a default.
        assert_eq!(s.int::<u32>(Arg(0)), None);
        assert!(problems.into_inner().is_empty());
    }

    #[test]
    fn written_then_lowering_default_then_schema_default() {
        let problems = problems();
        let (n, budget) = (node(&[], &[("given", 7)]), node(&[], &[("needed", 9)]));
        let s = Settings::of(&n, Path::new(""), "st", &problems)
            .or(Some(&budget))
            .default("needed", Value::Int(1))
            .default("given", Value::Int(2));
        assert_eq!(s.int::<u32>("given"), Some(7), "written");
        assert_eq!(
            s.int::<u32>("needed"),
            Some(9),
            "written in the fallback node"
        );
        let s =
            Settings::of(&budget, Path::new(""), "st", &problems).default("given", Value::Int(2));
        assert_eq!(s.int::<u64>("given"), Some(2), "lowering's default");
        let s = Settings::of(&budget, Path::new(""), "st", &problems);
        assert_eq!(s.int::<u64>("given"), Some(3), "the schema's default");
        assert_eq!(s.opt_int::<u32>("missing-on-purpose"), None);
        assert!(problems.into_inner().is_empty());
    }

    #[test]
    fn an_absent_node_takes_its_argument_default_and_counts_saturate() {
        let problems = problems();
        let s = Settings::absent(&PROBE, Span::synthetic(), Path::new(""), "st", &problems);
        assert_eq!(s.int::<u32>(Arg(0)), Some(5));
        let n = node(&[i64::MAX], &[]);
        let s = Settings::of(&n, Path::new(""), "st", &problems);
        assert_eq!(s.int::<u32>(Arg(0)), Some(u32::MAX));
        assert_eq!(s.int::<u64>(Arg(0)), Some(i64::MAX as u64));
        assert!(problems.into_inner().is_empty());
    }
}
