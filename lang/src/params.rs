//! Parameter paths of a stage (`delta`, `train.lr`, `method`): resolution through the schema
//! and edits of a checked node. Sweeps and `--set` overrides both go through here, so they
//! accept the same names and report the same errors as lint.

use crate::ast::{Node, Value};
use crate::check::check_typed;
use crate::diagnostic::Code;
use crate::ir::ParamTarget;
use crate::schema::ParamSpec;
use crate::source::{Span, Spanned};
use crate::suggest::{or_list, suggest};

/// Why a parameter path or value was rejected: the parts of a diagnostic.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamError {
    /// The code.
    pub code: Code,
    /// The message.
    pub message: String,
    /// The label.
    pub label: String,
    /// The help.
    pub help: Option<String>,
}

impl ParamError {
    fn sweep(message: String, label: &str, help: Option<String>) -> Self {
        ParamError {
            code: Code::InvalidSweep,
            message,
            label: label.into(),
            help,
        }
    }
}

/// Resolves a parameter path against a stage node.
pub fn resolve(stage: &Node, path: &str) -> Result<(ParamTarget, &'static ParamSpec), ParamError> {
    let spec = stage.spec;
    let stage_name = stage
        .args
        .first()
        .and_then(|a| a.value.as_str())
        .unwrap_or("?");
    if let Some((child_name, prop)) = path.split_once('.') {
        let Some(child_spec) = spec.child(child_name) else {
            let names: Vec<&str> = spec.children.iter().map(|c| c.name).collect();
            return Err(ParamError::sweep(
                format!("`{}` has no node `{child_name}`", spec.name),
                "unknown node",
                Some(match suggest(child_name, names.iter().copied()) {
                    Some(s) => format!("did you mean `{s}.{prop}`?"),
                    None => format!("its nodes are {}", or_list(&names)),
                }),
            ));
        };
        let present = stage.child(child_name);
        if present.is_none() && child_spec.has_variants() {
            return Err(ParamError::sweep(
                format!("`{stage_name}` has no `{child_name}` node to vary"),
                "not in the base stage",
                Some(format!(
                    "add a `{child_name}` node to `{stage_name}` first, e.g. `{}`",
                    child_spec.example
                )),
            ));
        }
        let variant = present.and_then(|p| p.variant_name());
        return match child_spec.prop(variant, prop) {
            Some(p) => Ok((
                ParamTarget {
                    node: child_spec.name,
                    prop: Some(p.name),
                },
                p,
            )),
            None => {
                let names: Vec<&str> = child_spec.props_for(variant).map(|p| p.name).collect();
                Err(ParamError::sweep(
                    format!("`{child_name}` has no parameter `{prop}`"),
                    "unknown parameter",
                    Some(match suggest(prop, names.iter().copied()) {
                        Some(s) => format!("did you mean `{child_name}.{s}`?"),
                        None if names.is_empty() => format!("`{child_name}` has no parameters"),
                        None => format!("the parameters of `{child_name}` are {}", or_list(&names)),
                    }),
                ))
            }
        };
    }
    // A child node whose argument is the parameter (`method`, `arch`, `trials`).
    if let Some(child_spec) = spec.child(path) {
        if let Some(arg) = child_spec.args.first() {
            if !child_spec.repeatable {
                return Ok((
                    ParamTarget {
                        node: child_spec.name,
                        prop: None,
                    },
                    arg,
                ));
            }
        }
    }
    // A property name, searched in the nodes the stage has (or could add without a choice).
    let mut matches = Vec::new();
    let mut all_names = Vec::new();
    for child_spec in spec.children {
        let present = stage.child(child_spec.name);
        if present.is_none() && child_spec.has_variants() {
            continue;
        }
        let variant = present.and_then(|p| p.variant_name());
        for p in child_spec.props_for(variant) {
            all_names.push(p.name);
            if p.name == path {
                matches.push((
                    ParamTarget {
                        node: child_spec.name,
                        prop: Some(p.name),
                    },
                    p,
                ));
            }
        }
    }
    match matches.len() {
        1 => Ok(matches.remove(0)),
        0 => {
            let help = match suggest(path, all_names.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!(
                    "the parameters of `{stage_name}` are {}",
                    or_list(&dedup(all_names.clone()))
                ),
            };
            Err(ParamError::sweep(
                format!(
                    "`{path}` is not a parameter of {} `{stage_name}`",
                    spec.name
                ),
                "unknown parameter",
                Some(help),
            ))
        }
        _ => {
            let options: Vec<String> = matches.iter().map(|(t, _)| t.to_string()).collect();
            let options: Vec<&str> = options.iter().map(String::as_str).collect();
            Err(ParamError::sweep(
                format!("`{path}` is ambiguous in `{stage_name}`"),
                "ambiguous parameter",
                Some(format!("write {} instead", or_list(&options))),
            ))
        }
    }
}

fn dedup(mut names: Vec<&str>) -> Vec<&str> {
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(*n));
    names
}

/// Checks a value for a resolved parameter.
pub fn check(param: &ParamSpec, target: &ParamTarget, value: &Value) -> Result<Value, ParamError> {
    check_typed(value, param, &format!("`{target}`")).map_err(|(code, message, label, help)| {
        ParamError {
            code,
            message,
            label,
            help,
        }
    })
}

/// Sets a resolved parameter on a stage node, adding the child node if needed. The value must
/// have been checked with [`check`].
pub fn apply(
    stage: &mut Node,
    target: &ParamTarget,
    value: Spanned<Value>,
) -> Result<(), ParamError> {
    let spec = stage.spec;
    let child_spec = spec
        .child(target.node)
        .expect("resolved targets name existing nodes");
    if stage.child(target.node).is_none() {
        stage.children.push(Node {
            spec: child_spec,
            name_span: value.span,
            span: value.span,
            variant: None,
            args: Vec::new(),
            props: Vec::new(),
            children: Vec::new(),
        });
    }
    let child = stage
        .children
        .iter_mut()
        .find(|c| c.spec.name == target.node)
        .expect("the child was just ensured");
    match target.prop {
        Some(prop) => child.set_prop(prop, value),
        None => {
            if child_spec.has_variants() {
                let name = value.value.as_str().unwrap_or_default();
                let Some(v) = child_spec.variant(name) else {
                    let names: Vec<&str> = child_spec
                        .all_variants()
                        .into_iter()
                        .map(|v| v.name)
                        .collect();
                    return Err(ParamError::sweep(
                        format!("`{name}` is not a choice of `{}`", target.node),
                        "unknown choice",
                        Some(format!("the choices are {}", or_list(&names))),
                    ));
                };
                // Properties of the old variant do not carry over to the new one.
                child
                    .props
                    .retain(|p| v.props.iter().any(|vp| vp.name == p.name.value));
                child.variant = Some(Spanned::new(v.name.to_string(), value.span));
            }
            if child.args.is_empty() {
                child.args.push(value);
            } else {
                child.args[0] = value;
            }
        }
    }
    Ok(())
}

/// Parses a command-line value (`0.9`, `20`, `#true`, `cosine`, `"a b"`) into a value of the
/// parameter's type.
pub fn parse_cli_value(text: &str) -> Value {
    let t = text.trim();
    if let Ok(i) = t.parse::<i64>() {
        return Value::Int(i);
    }
    if let Ok(f) = t.parse::<f64>() {
        return Value::Float(f);
    }
    match t {
        "#true" | "true" => return Value::Bool(true),
        "#false" | "false" => return Value::Bool(false),
        _ => {}
    }
    let unquoted = t
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(t);
    Value::Str(unquoted.to_string())
}

/// A span for values that came from the command line.
pub fn cli_span() -> Span {
    Span::synthetic()
}

/// Renames a stage node (its first argument).
pub fn rename(stage: &mut Node, name: &str) {
    if let Some(first) = stage.args.first_mut() {
        first.value = Value::Str(name.to_string());
    }
}

/// Rewrites every stage reference of a stage node through `map` (references it returns `None`
/// for are kept): how the runtime points the copies of a stage at the copies of its inputs.
pub fn retarget(stage: &mut Node, map: &dyn Fn(&str) -> Option<String>) {
    for child in &mut stage.children {
        let spec = child.spec;
        for (i, arg) in child.args.iter_mut().enumerate() {
            let arg_spec = spec.args.get(i).or(spec.args.last());
            if arg_spec.is_some_and(|s| matches!(s.ty, crate::schema::ValueType::StageRef(_))) {
                if let Some(new) = arg.value.as_str().and_then(map) {
                    arg.value = Value::Str(new);
                }
            }
        }
        for prop in &mut child.props {
            let is_ref = spec
                .prop(
                    child.variant.as_ref().map(|v| v.value.as_str()),
                    &prop.name.value,
                )
                .is_some_and(|s| matches!(s.ty, crate::schema::ValueType::StageRef(_)));
            if is_ref {
                if let Some(new) = prop.value.value.as_str().and_then(map) {
                    prop.value.value = Value::Str(new);
                }
            }
        }
    }
}
