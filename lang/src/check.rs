//! The schema checker: walks a KDL document and validates every node against the schema,
//! reporting all problems at once and keeping what is valid.

use kdl::{KdlDocument, KdlEntry, KdlNode, KdlValue};

use crate::ast::{Node, Prop, Value};
use crate::diagnostic::{Code, Diagnostic};
use crate::schema::{NodeSpec, ParamSpec, TOP_LEVEL, ValueType, VariantNoun};
use crate::source::{FileId, Span, Spanned};
use crate::suggest::{or_list, suggest};

/// Checks documents of one file against the schema.
pub(crate) struct Checker<'d> {
    file: FileId,
    diags: &'d mut Vec<Diagnostic>,
}

impl<'d> Checker<'d> {
    pub(crate) fn new(file: FileId, diags: &'d mut Vec<Diagnostic>) -> Self {
        Checker { file, diags }
    }

    fn span(&self, span: miette::SourceSpan) -> Span {
        Span::from_kdl(self.file, span)
    }

    /// Checks the top-level nodes of a file.
    pub(crate) fn check_document(&mut self, doc: &KdlDocument) -> Vec<Node> {
        let mut nodes = Vec::new();
        for kdl in doc.nodes() {
            let name = kdl.name().value();
            match TOP_LEVEL.iter().find(|s| s.name == name) {
                Some(spec) => nodes.push(self.check_node(kdl, spec)),
                None => self.unknown_node(kdl, TOP_LEVEL, None),
            }
        }
        nodes
    }

    fn unknown_node(&mut self, kdl: &KdlNode, siblings: &[NodeSpec], parent: Option<&NodeSpec>) {
        let name = kdl.name().value();
        let span = self.span(kdl.name().span());
        let place = parent.map_or("at the top level".to_string(), |p| {
            format!("in `{}`", p.name)
        });
        let mut diag = Diagnostic::new(
            Code::UnknownNode,
            format!("unknown node `{name}` {place}"),
            span,
            "unknown node",
        );
        if let Some(s) = suggest(name, siblings.iter().map(|s| s.name)) {
            diag = diag.with_help(format!("did you mean `{s}`?"));
        } else if let Some(owner) = owner_of(name) {
            diag = diag.with_help(format!("`{name}` belongs inside a `{owner}` node"));
        } else {
            let names: Vec<&str> = siblings.iter().map(|s| s.name).collect();
            diag = diag.with_help(format!("the nodes allowed {place} are {}", or_list(&names)));
        }
        self.diags.push(diag);
    }

    /// Checks one node and its children against `spec`.
    pub(crate) fn check_node(&mut self, kdl: &KdlNode, spec: &'static NodeSpec) -> Node {
        let name_span = self.span(kdl.name().span());
        let mut node = Node {
            spec,
            name_span,
            span: self.span(kdl.span()),
            variant: None,
            args: Vec::new(),
            props: Vec::new(),
            children: Vec::new(),
        };
        let (args, props): (Vec<&KdlEntry>, Vec<&KdlEntry>) =
            kdl.entries().iter().partition(|e| e.name().is_none());

        // The first argument of a node with variants picks the variant; the properties that are
        // valid depend on it, so it is resolved first.
        let mut variant_known = !spec.has_variants();
        if spec.has_variants() {
            if let Some(first) = args.first() {
                let span = self.span(first.span());
                match first.value() {
                    KdlValue::String(name) => match spec.variant(name) {
                        Some(v) => {
                            node.variant = Some(Spanned::new(v.name.to_string(), span));
                            variant_known = true;
                        }
                        None => self.unknown_variant(spec, name, span),
                    },
                    other => self.diags.push(
                        Diagnostic::new(
                            Code::WrongType,
                            format!(
                                "the first argument of `{}` must be a name, found {}",
                                spec.name,
                                describe_kdl(other)
                            ),
                            span,
                            "expected a string",
                        )
                        .with_help({
                            let names: Vec<&str> =
                                spec.all_variants().into_iter().map(|v| v.name).collect();
                            if names.is_empty() {
                                "write the name of a variant that a plugin registers".to_string()
                            } else {
                                format!("write one of {}", or_list(&names))
                            }
                        }),
                    ),
                }
            }
        }

        self.check_args(&mut node, &args);
        self.check_props(&mut node, &props, variant_known);
        self.check_children(&mut node, kdl);
        node
    }

    fn unknown_variant(&mut self, spec: &NodeSpec, name: &str, span: Span) {
        let names: Vec<&str> = spec.all_variants().into_iter().map(|v| v.name).collect();
        let arg = spec.args.first().map_or("choice", |a| a.name);
        let (code, message, label) = match spec.variant_noun {
            VariantNoun::Method => (
                Code::UnknownMethod,
                format!("unknown method `{name}`"),
                "not a known method".to_string(),
            ),
            VariantNoun::Choice => (
                Code::UnknownValue,
                format!("unknown {arg} `{name}` for `{}`", spec.name),
                format!("not a known {arg}"),
            ),
        };
        let help = match suggest(name, names.iter().copied()) {
            Some(s) => format!("did you mean `{s}`? The choices are {}", or_list(&names)),
            None if names.is_empty() => format!(
                "`{}` names a variant that a plugin adds, and this lortflow has none; build the \
                 binary that registers it (see `examples/custom_head_method.rs`), or remove the node",
                spec.name
            ),
            None => format!("the choices are {}", or_list(&names)),
        };
        self.diags
            .push(Diagnostic::new(code, message, span, label).with_help(help));
    }

    fn check_args(&mut self, node: &mut Node, args: &[&KdlEntry]) {
        let spec = node.spec;
        for (i, entry) in args.iter().enumerate() {
            let span = self.span(entry.span());
            let param = match spec.args.get(i) {
                Some(p) => p,
                None => match spec.args.last() {
                    Some(last) if last.variadic => last,
                    _ => {
                        let expected = spec.args.len();
                        let mut diag = Diagnostic::new(
                            Code::UnexpectedArgument,
                            format!(
                                "`{}` takes {} argument{}, found {}",
                                spec.name,
                                expected,
                                if expected == 1 { "" } else { "s" },
                                args.len()
                            ),
                            span,
                            "unexpected argument",
                        );
                        let props: Vec<&str> = spec
                            .props_for(node.variant_name())
                            .map(|p| p.name)
                            .collect();
                        diag = diag.with_help(if props.is_empty() {
                            "remove the extra argument".to_string()
                        } else {
                            format!("remove it, or name it as a property: {}", or_list(&props))
                        });
                        self.diags.push(diag);
                        continue;
                    }
                },
            };
            if i == 0 && spec.has_variants() {
                // Already checked as the variant name.
                if let KdlValue::String(s) = entry.value() {
                    node.args.push(Spanned::new(Value::Str(s.clone()), span));
                }
                continue;
            }
            let what = if param.name == spec.name {
                format!("`{}`", spec.name)
            } else {
                format!("`{}` {}", spec.name, param.name)
            };
            if let Some(value) = self.check_value(entry.value(), param, span, &what) {
                node.args.push(Spanned::new(value, span));
            }
        }
        let given = args.len();
        for (i, param) in spec.args.iter().enumerate() {
            if param.required && i >= given {
                let example = if spec.example.is_empty() {
                    String::new()
                } else {
                    format!(", e.g. `{}`", spec.example)
                };
                self.diags.push(
                    Diagnostic::new(
                        Code::MissingRequired,
                        format!("`{}` needs its `{}` argument", spec.name, param.name),
                        node.name_span,
                        format!("missing `{}`", param.name),
                    )
                    .with_help(format!(
                        "add the {} after `{}`{example}",
                        param.ty.describe(),
                        spec.name
                    )),
                );
                break;
            }
        }
    }

    fn check_props(&mut self, node: &mut Node, props: &[&KdlEntry], variant_known: bool) {
        let spec = node.spec;
        let variant = node.variant_name().map(str::to_string);
        for entry in props {
            let Some(ident) = entry.name() else { continue };
            let name = ident.value();
            let name_span = self.span(ident.span());
            if let Some(first) = node.props.iter().find(|p| p.name.value == name) {
                let first_span = first.name.span;
                self.diags.push(
                    Diagnostic::new(
                        Code::DuplicateProperty,
                        format!("property `{name}` is given twice on `{}`", spec.name),
                        name_span,
                        "given again here",
                    )
                    .with_label(first_span, "first given here")
                    .with_help("remove one of them; a property may be given once"),
                );
                continue;
            }
            let Some(param) = spec.prop(variant.as_deref(), name) else {
                if variant_known {
                    self.unknown_prop(node, name, name_span);
                }
                continue;
            };
            let what = format!("`{name}`");
            let value_span = self.value_span(entry);
            if let Some(value) = self.check_value(entry.value(), param, value_span, &what) {
                node.props.push(Prop {
                    name: Spanned::new(name.to_string(), name_span),
                    value: Spanned::new(value, value_span),
                });
            }
        }
        if variant_known {
            for param in spec.props_for(variant.as_deref()) {
                if param.required && node.prop(param.name).is_none() {
                    let of = variant
                        .as_ref()
                        .map_or(String::new(), |v| format!(" \"{v}\""));
                    self.diags.push(
                        Diagnostic::new(
                            Code::MissingRequired,
                            format!("`{}{of}` needs the property `{}`", spec.name, param.name),
                            node.name_span,
                            format!("missing `{}`", param.name),
                        )
                        .with_help(format!(
                            "add `{}=...` ({}): {}",
                            param.name,
                            param.ty.describe(),
                            param.doc
                        )),
                    );
                }
            }
        }
    }

    /// The span of an entry's value alone (after `name=`).
    fn value_span(&self, entry: &KdlEntry) -> Span {
        let span = self.span(entry.span());
        match entry.name() {
            Some(ident) => {
                let name_end = ident.span().offset() + ident.span().len();
                let entry_end = span.offset + span.len;
                // Skip the `=` (and any whitespace) after the name.
                let value_start = (name_end + 1).min(entry_end);
                Span::new(self.file, value_start, entry_end - value_start)
            }
            None => span,
        }
    }

    fn unknown_prop(&mut self, node: &Node, name: &str, span: Span) {
        let spec = node.spec;
        let valid: Vec<&str> = spec
            .props_for(node.variant_name())
            .map(|p| p.name)
            .collect();
        // A property of another variant: say where it belongs.
        let owners: Vec<&str> = spec
            .all_variants()
            .into_iter()
            .filter(|v| v.props.iter().any(|p| p.name == name))
            .map(|v| v.name)
            .collect();
        if let (false, Some(variant)) = (owners.is_empty(), node.variant_name()) {
            let noun = match spec.variant_noun {
                VariantNoun::Method => "method",
                VariantNoun::Choice => "choice",
            };
            let valid_help = if valid.is_empty() {
                format!("`{variant}` takes no properties")
            } else {
                format!("`{variant}` takes {}", or_list(&valid))
            };
            self.diags.push(
                Diagnostic::new(
                    Code::ParamNotForMethod,
                    format!("`{name}` is not a parameter of {noun} `{variant}`"),
                    span,
                    format!("not a parameter of `{variant}`"),
                )
                .with_label(
                    node.variant.as_ref().map_or(node.name_span, |v| v.span),
                    format!("{noun} chosen here"),
                )
                .with_help(format!(
                    "`{name}` belongs to {}; {valid_help}",
                    or_list(&owners)
                )),
            );
            return;
        }
        let help = match suggest(name, valid.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None if valid.is_empty() => format!("`{}` takes no properties", spec.name),
            None => format!("the properties of `{}` are {}", spec.name, or_list(&valid)),
        };
        self.diags.push(
            Diagnostic::new(
                Code::UnknownProperty,
                format!("unknown property `{name}` on `{}`", spec.name),
                span,
                "unknown property",
            )
            .with_help(help),
        );
    }

    fn check_children(&mut self, node: &mut Node, kdl: &KdlNode) {
        let spec = node.spec;
        let Some(children) = kdl.children() else {
            self.check_required_children(node);
            return;
        };
        if spec.children.is_empty() {
            self.diags.push(
                Diagnostic::new(
                    Code::UnexpectedChildren,
                    format!("`{}` has no child nodes", spec.name),
                    self.span(children.span()),
                    "unexpected block",
                )
                .with_help(format!(
                    "write its settings as properties on one line, e.g. `{}`",
                    spec.example
                )),
            );
            return;
        }
        for child in children.nodes() {
            let name = child.name().value();
            let Some(child_spec) = spec.child(name) else {
                self.unknown_node(child, spec.children, Some(spec));
                continue;
            };
            let checked = self.check_node(child, child_spec);
            if !child_spec.repeatable {
                if let Some(first) = node.children.iter().find(|c| c.spec.name == name) {
                    self.diags.push(
                        Diagnostic::new(
                            Code::DuplicateNode,
                            format!("`{name}` is given twice in `{}`", spec.name),
                            checked.name_span,
                            "given again here",
                        )
                        .with_label(first.name_span, "first given here")
                        .with_help(format!("keep one `{name}`; it may appear once")),
                    );
                    continue;
                }
            }
            node.children.push(checked);
        }
        // Conflicts, each pair reported once.
        for (i, a) in node.children.iter().enumerate() {
            for b in &node.children[i + 1..] {
                if a.spec.conflicts.contains(&b.spec.name) {
                    self.diags.push(
                        Diagnostic::new(
                            Code::ConflictingOptions,
                            format!(
                                "`{}` and `{}` cannot be used together in `{}`",
                                a.spec.name, b.spec.name, spec.name
                            ),
                            b.name_span,
                            format!("`{}` given here", b.spec.name),
                        )
                        .with_label(a.name_span, format!("`{}` given here", a.spec.name))
                        .with_help(format!(
                            "keep either `{}` or `{}`",
                            a.spec.name, b.spec.name
                        )),
                    );
                }
            }
        }
        self.check_required_children(node);
    }

    fn check_required_children(&mut self, node: &Node) {
        let spec = node.spec;
        let stage_name = node
            .args
            .first()
            .and_then(|a| a.value.as_str())
            .map(|n| format!(" `{n}`"))
            .unwrap_or_default();
        for child in spec.children {
            if child.required && node.child(child.name).is_none() {
                let example = if child.example.is_empty() {
                    String::new()
                } else {
                    format!(", e.g. `{}`", child.example)
                };
                self.diags.push(
                    Diagnostic::new(
                        Code::MissingRequired,
                        format!(
                            "{}{stage_name} needs {} `{}` node",
                            spec.name,
                            article(child.name),
                            child.name
                        ),
                        node.name_span,
                        format!("missing `{}`", child.name),
                    )
                    .with_help(format!("add `{}` inside the block{example}", child.name)),
                );
            }
        }
        for group in spec.one_of {
            if !group.iter().any(|g| node.child(g).is_some()) {
                self.diags.push(
                    Diagnostic::new(
                        Code::MissingRequired,
                        format!("{}{stage_name} needs {}", spec.name, or_list(group)),
                        node.name_span,
                        format!("missing {}", or_list(group)),
                    )
                    .with_help(format!("add one of {}", or_list(group))),
                );
            }
        }
    }

    /// Type- and range-checks one value; reports and returns `None` when it is invalid.
    pub(crate) fn check_value(
        &mut self,
        value: &KdlValue,
        param: &ParamSpec,
        span: Span,
        what: &str,
    ) -> Option<Value> {
        match check_value(value, param, what) {
            Ok(v) => Some(v),
            Err((code, message, label, help)) => {
                let mut d = Diagnostic::new(code, message, span, label);
                if let Some(h) = help {
                    d = d.with_help(h);
                }
                self.diags.push(d);
                None
            }
        }
    }
}

/// The parts of a value diagnostic: code, message, label, help.
pub(crate) type ValueError = (Code, String, String, Option<String>);

/// Checks an already typed value against another parameter (sweep values, `--set`).
pub(crate) fn check_typed(
    value: &Value,
    param: &ParamSpec,
    what: &str,
) -> Result<Value, ValueError> {
    let kdl = match value {
        Value::Int(i) => KdlValue::Integer(*i as i128),
        Value::Float(f) => KdlValue::Float(*f),
        Value::Bool(b) => KdlValue::Bool(*b),
        Value::Str(s) => KdlValue::String(s.clone()),
    };
    check_value(&kdl, param, what)
}

/// Checks a KDL value against a parameter: `Ok(typed value)` or the parts of a diagnostic.
pub(crate) fn check_value(
    value: &KdlValue,
    param: &ParamSpec,
    what: &str,
) -> Result<Value, ValueError> {
    let wrong = |expected: &str, help: Option<String>| -> ValueError {
        (
            Code::WrongType,
            format!("{what} must be {}, found {}", expected, describe_kdl(value)),
            format!("expected {expected}"),
            help,
        )
    };
    let typed = match (&param.ty, value) {
        (ValueType::Any, KdlValue::Integer(i)) => Value::Int(i64::try_from(*i).unwrap_or(i64::MAX)),
        (ValueType::Any, KdlValue::Float(f)) => Value::Float(*f),
        (ValueType::Any, KdlValue::Bool(b)) => Value::Bool(*b),
        (ValueType::Any, KdlValue::String(s)) => Value::Str(s.clone()),
        (ValueType::Int, KdlValue::Integer(i)) => match i64::try_from(*i) {
            Ok(v) => Value::Int(v),
            Err(_) => {
                return Err((
                    Code::OutOfRange,
                    format!("{what} is too large"),
                    "too large".into(),
                    None,
                ));
            }
        },
        (ValueType::Int, KdlValue::Float(f)) => {
            return Err(wrong(
                "an integer",
                (f.fract() == 0.0 && f.is_finite())
                    .then(|| format!("write `{}` without the decimal point", *f as i64)),
            ));
        }
        (ValueType::Float, KdlValue::Integer(i)) => Value::Float(*i as f64),
        (ValueType::Float, KdlValue::Float(f)) => {
            if !f.is_finite() {
                return Err((
                    Code::OutOfRange,
                    format!("{what} must be a finite number"),
                    "not finite".into(),
                    Some(format!("use a value in {}", param.range)),
                ));
            }
            Value::Float(*f)
        }
        (ValueType::Bool, KdlValue::Bool(b)) => Value::Bool(*b),
        (ValueType::Enum(choices), KdlValue::String(s)) => {
            if !choices.contains(&s.as_str()) {
                let help = match suggest(s, choices.iter().copied()) {
                    Some(c) => format!("did you mean `{c}`? The choices are {}", or_list(choices)),
                    None => format!("the choices are {}", or_list(choices)),
                };
                return Err((
                    Code::UnknownValue,
                    format!("{what} cannot be `{s}`"),
                    "unknown choice".into(),
                    Some(help),
                ));
            }
            Value::Str(s.clone())
        }
        (ty, KdlValue::String(s)) if ty.is_stringly() => Value::Str(s.clone()),
        (ty, KdlValue::String(s)) => {
            let unquoted = match ty {
                ValueType::Int | ValueType::Float => s
                    .trim()
                    .parse::<f64>()
                    .is_ok()
                    .then(|| format!("write the number without quotes: `{}`", s.trim())),
                ValueType::Bool => matches!(s.as_str(), "true" | "false")
                    .then(|| format!("write `#{s}` without quotes")),
                _ => None,
            };
            return Err(wrong(&type_article(ty), unquoted));
        }
        (ValueType::Bool, KdlValue::Integer(_) | KdlValue::Float(_)) => {
            return Err(wrong("a boolean", Some("write `#true` or `#false`".into())));
        }
        (ty, _) if ty.is_stringly() => {
            return Err(wrong(
                &type_article(ty),
                Some(format!("quote it: \"{}\"", kdl_literal(value))),
            ));
        }
        (ty, _) => return Err(wrong(&type_article(ty), None)),
    };
    if let Some(v) = typed.as_f64() {
        if !param.range.contains(v) {
            return Err((
                Code::OutOfRange,
                format!("{what} must be in {}, found `{typed}`", param.range),
                "out of range".into(),
                Some(format!(
                    "use a value in {}{}",
                    param.range,
                    param.unit.map(|u| format!(" ({u})")).unwrap_or_default()
                )),
            ));
        }
    }
    Ok(typed)
}

/// "a" or "an" before a name, by its first letter.
fn article(name: &str) -> &'static str {
    if name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

fn type_article(ty: &ValueType) -> String {
    match ty {
        ValueType::Int => "an integer".into(),
        ValueType::Float => "a number".into(),
        ValueType::Bool => "a boolean".into(),
        ValueType::Enum(_) => "a name (string)".into(),
        _ => "a string".into(),
    }
}

fn kdl_literal(value: &KdlValue) -> String {
    match value {
        KdlValue::String(s) => s.clone(),
        KdlValue::Integer(i) => i.to_string(),
        KdlValue::Float(f) => f.to_string(),
        KdlValue::Bool(b) => b.to_string(),
        KdlValue::Null => "null".into(),
    }
}

fn describe_kdl(value: &KdlValue) -> String {
    match value {
        KdlValue::String(s) => format!("the string \"{s}\""),
        KdlValue::Integer(i) => format!("the integer `{i}`"),
        KdlValue::Float(f) => format!("the number `{}`", crate::schema::format_float(*f)),
        KdlValue::Bool(b) => format!("`#{b}`"),
        KdlValue::Null => "`#null`".into(),
    }
}

/// The node (top-level or stage) whose children include `name`, for "belongs inside" hints.
fn owner_of(name: &str) -> Option<&'static str> {
    TOP_LEVEL
        .iter()
        .find(|t| t.children.iter().any(|c| c.name == name))
        .map(|t| t.name)
}
