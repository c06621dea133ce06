//! Expansion: from a checked pipeline to the flat list of concrete stages the runtime executes.
//! Applies `--set` overrides, expands sweeps (and everything downstream of a swept dataset,
//! backbone or features stage), and orders the result so every stage comes after its inputs.
//! Every stage it makes gets the settings checks of a written one, so `lortflow lint --set` and
//! a sweep's members fail here, with spans, and not at run time.
//!
//! Names of expanded stages are stable and readable: a head sweep's members are
//! `sweep[param=value]`; copies of stages downstream of a swept input carry the same suffix
//! (`r34[imbalance-ratio=50]`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::ast::{Node, Value};
use crate::diagnostic::{Code, Diagnostic};
use crate::ir::{Defaults, ParamTarget, Pipeline, Stage, StageSpec, evaluated_stages};
use crate::lower::lower_stage;
use crate::params;
use crate::schema::StageKind;
use crate::source::{FileId, Span, Spanned};

/// A `--set stage.param=value` override.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// The declared stage.
    pub stage: String,
    /// The parameter path, as for `vary` (`delta`, `train.lr`).
    pub param: String,
    /// The value as typed.
    pub value: String,
}

impl Override {
    /// Parses `stage.param=value` (the parameter may itself contain dots: `lort.train.lr=0.1`).
    pub fn parse(text: &str) -> Result<Override, String> {
        let (lhs, value) = text
            .split_once('=')
            .ok_or_else(|| format!("`{text}` is not of the form STAGE.PARAM=VALUE"))?;
        let (stage, param) = lhs.split_once('.').ok_or_else(|| {
            format!("`{lhs}` does not name a stage and a parameter: write STAGE.PARAM=VALUE")
        })?;
        if stage.is_empty() || param.is_empty() {
            return Err(format!("`{text}` is not of the form STAGE.PARAM=VALUE"));
        }
        Ok(Override {
            stage: stage.to_string(),
            param: param.to_string(),
            value: value.to_string(),
        })
    }
}

/// Swept parameters and their values, as written: `[("imbalance-ratio", "100")]`.
type Suffix = Vec<(String, String)>;

/// A stage's inputs: (role, index into the plan).
type Inputs = Vec<(&'static str, usize)>;

/// A stage of the plan: a declared stage, a sweep member, or a copy made for a swept input.
#[derive(Debug, Clone)]
pub struct ConcreteStage {
    /// Unique, readable name.
    pub name: String,
    /// The declared stage (or sweep) it comes from.
    pub declared: String,
    /// Its lowered form, with references pointing at other concrete stages.
    pub stage: Stage,
    /// Inputs: (role, index into the plan).
    pub inputs: Vec<(&'static str, usize)>,
    /// Swept parameters that distinguish this copy: (parameter as written, value).
    pub suffix: Vec<(String, String)>,
}

impl ConcreteStage {
    /// The stage kind.
    pub fn kind(&self) -> StageKind {
        self.stage.kind
    }
}

/// Expands a checked pipeline into concrete stages in dependency order. Errors are reported
/// as diagnostics (bad overrides, sweep members that do not lower).
pub fn expand(
    pipeline: &Pipeline,
    overrides: &[Override],
) -> Result<Vec<ConcreteStage>, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let defaults = &pipeline.defaults;

    // Declared stages with overrides applied.
    let mut declared: Vec<Stage> = pipeline.stages.clone();
    for o in overrides {
        match apply_override(pipeline, &mut declared, o) {
            Ok(()) => {}
            Err(d) => diags.push(*d),
        }
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    let declared_pipeline = Pipeline {
        sources: pipeline.sources.clone(),
        defaults: defaults.clone(),
        stages: declared,
    };
    let by_name: HashMap<&str, &Stage> = declared_pipeline
        .stages
        .iter()
        .map(|s| (s.name.value.as_str(), s))
        .collect();

    let mut upstream_sweeps: HashMap<&str, Vec<&Stage>> = HashMap::new();
    let mut head_sweeps: HashMap<&str, Vec<&Stage>> = HashMap::new();
    for s in &declared_pipeline.stages {
        if let StageSpec::Sweep(sw) = &s.spec {
            let Some(base) = by_name.get(sw.base.value.as_str()) else {
                continue;
            };
            let map = if base.kind == StageKind::Head {
                &mut head_sweeps
            } else {
                &mut upstream_sweeps
            };
            map.entry(base.name.value.as_str()).or_default().push(s);
        }
    }

    let Some(order) = declared_pipeline.topological_order() else {
        // Lint reports cycles; a plan cannot exist without an order.
        return Err(vec![]);
    };

    let mut out: Vec<ConcreteStage> = Vec::new();
    let mut variants: HashMap<String, Vec<usize>> = HashMap::new();
    for &i in &order {
        let decl = &declared_pipeline.stages[i];
        if matches!(decl.kind, StageKind::Sweep | StageKind::Evaluate) {
            continue;
        }
        let dir = source_dir(pipeline, decl.name.span);
        // Every combination of the inputs' variants that agree on shared swept parameters.
        let mut combos: Vec<(Suffix, Inputs)> = vec![(vec![], vec![])];
        for r in decl.inputs() {
            let Some(options) = variants.get(&r.name.value) else {
                continue;
            };
            let mut next = Vec::new();
            for (suffix, inputs) in &combos {
                for &v in options {
                    if let Some(merged) = merge_suffix(suffix, &out[v].suffix) {
                        let mut inputs = inputs.clone();
                        inputs.push((r.role, v));
                        next.push((merged, inputs));
                    }
                }
            }
            combos = next;
        }
        for (suffix, inputs) in combos {
            let mut node = decl.node.clone();
            let rename: HashMap<String, String> = inputs
                .iter()
                .map(|&(_, v)| {
                    (
                        out[v].declared_input_name().to_string(),
                        out[v].name.clone(),
                    )
                })
                .collect();
            params::retarget(&mut node, &|name| rename.get(name).cloned());
            let grids: Vec<Vec<(String, ParamTarget, Value)>> =
                match upstream_sweeps.get(decl.name.value.as_str()) {
                    Some(sweeps) => sweeps.iter().flat_map(|s| grid(s)).collect(),
                    None => vec![vec![]],
                };
            for point in grids {
                let mut member = node.clone();
                let mut member_suffix = suffix.clone();
                for (param, target, value) in &point {
                    if let Err(e) = params::apply(
                        &mut member,
                        target,
                        Spanned::new(value.clone(), decl.name.span),
                    ) {
                        diags.push(Diagnostic::new(e.code, e.message, decl.name.span, e.label));
                    }
                    member_suffix.push((param.clone(), display_value(value)));
                }
                let name = suffixed(&decl.name.value, &member_suffix);
                if let Some(idx) = push(
                    &mut out,
                    &mut diags,
                    member,
                    &name,
                    &decl.name.value,
                    inputs.clone(),
                    member_suffix,
                    &dir,
                    defaults,
                ) {
                    variants
                        .entry(decl.name.value.clone())
                        .or_default()
                        .push(idx);
                }
            }
        }
        // Members of head sweeps, for every variant of the base head.
        if let Some(sweeps) = head_sweeps.get(decl.name.value.as_str()) {
            let base_variants = variants.get(&decl.name.value).cloned().unwrap_or_default();
            for sweep in sweeps {
                let StageSpec::Sweep(spec) = &sweep.spec else {
                    continue;
                };
                for &b in &base_variants {
                    for point in grid(sweep) {
                        let mut member = out[b].stage.node.clone();
                        let mut member_suffix = Vec::new();
                        for (param, target, value) in &point {
                            if let Err(e) = params::apply(
                                &mut member,
                                target,
                                Spanned::new(value.clone(), sweep.name.span),
                            ) {
                                diags.push(Diagnostic::new(
                                    e.code,
                                    e.message,
                                    sweep.name.span,
                                    e.label,
                                ));
                            }
                            member_suffix.push((param.clone(), display_value(value)));
                        }
                        if let Some(trials) = spec.trials {
                            let target = ParamTarget {
                                node: "trials",
                                prop: None,
                            };
                            let _ = params::apply(
                                &mut member,
                                &target,
                                Spanned::new(Value::Int(trials as i64), sweep.name.span),
                            );
                        }
                        member_suffix.extend(out[b].suffix.iter().cloned());
                        let name = suffixed(&sweep.name.value, &member_suffix);
                        let inputs = out[b].inputs.clone();
                        if let Some(idx) = push(
                            &mut out,
                            &mut diags,
                            member,
                            &name,
                            &sweep.name.value,
                            inputs,
                            member_suffix,
                            &dir,
                            defaults,
                        ) {
                            variants
                                .entry(sweep.name.value.clone())
                                .or_default()
                                .push(idx);
                        }
                    }
                }
            }
        }
    }
    // Evaluations read every concrete variant of the heads and sweeps they select.
    for &i in &order {
        let decl = &declared_pipeline.stages[i];
        let StageSpec::Evaluate(eval) = &decl.spec else {
            continue;
        };
        let mut inputs = Vec::new();
        for selected in evaluated_stages(&declared_pipeline, eval) {
            for &v in variants
                .get(&selected.name.value)
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                if !inputs.iter().any(|&(_, x)| x == v) {
                    inputs.push(("heads", v));
                }
            }
        }
        out.push(ConcreteStage {
            name: decl.name.value.clone(),
            declared: decl.name.value.clone(),
            stage: decl.clone(),
            inputs,
            suffix: vec![],
        });
    }
    // Sweep members and overridden stages get the same settings checks as written ones (a
    // written stage passed them already and adds nothing here).
    for stage in &out {
        for d in crate::analyze::check_stage_settings(&declared_pipeline, &stage.stage) {
            if !diags.contains(&d) {
                diags.push(d);
            }
        }
    }
    if diags.iter().any(Diagnostic::is_error) {
        return Err(diags);
    }
    Ok(out)
}

impl ConcreteStage {
    /// The name other declared stages use to refer to this stage's declaration.
    fn declared_input_name(&self) -> &str {
        &self.declared
    }
}

#[allow(clippy::too_many_arguments)]
fn push(
    out: &mut Vec<ConcreteStage>,
    diags: &mut Vec<Diagnostic>,
    mut node: Node,
    name: &str,
    declared: &str,
    inputs: Vec<(&'static str, usize)>,
    suffix: Vec<(String, String)>,
    dir: &Path,
    defaults: &Defaults,
) -> Option<usize> {
    params::rename(&mut node, name);
    let mut lower_diags = Vec::new();
    let stage = lower_stage(&node, dir, defaults, &mut lower_diags);
    diags.extend(lower_diags.into_iter().filter(Diagnostic::is_error));
    let stage = stage?;
    out.push(ConcreteStage {
        name: name.to_string(),
        declared: declared.to_string(),
        stage,
        inputs,
        suffix,
    });
    Some(out.len() - 1)
}

fn source_dir(pipeline: &Pipeline, span: Span) -> PathBuf {
    pipeline
        .sources
        .get(span.file)
        .map(|f| f.dir().to_path_buf())
        .unwrap_or_default()
}

/// The grid of a sweep: every combination of its `vary` values.
fn grid(sweep: &Stage) -> Vec<Vec<(String, ParamTarget, Value)>> {
    let StageSpec::Sweep(spec) = &sweep.spec else {
        return vec![];
    };
    let mut points: Vec<Vec<(String, ParamTarget, Value)>> = vec![vec![]];
    for vary in &spec.vary {
        let Some(target) = &vary.target else { continue };
        let mut next = Vec::new();
        for point in &points {
            for v in &vary.values {
                let mut p = point.clone();
                p.push((vary.param.value.clone(), target.clone(), v.value.clone()));
                next.push(p);
            }
        }
        points = next;
    }
    points
}

fn merge_suffix(a: &[(String, String)], b: &[(String, String)]) -> Option<Vec<(String, String)>> {
    let mut merged = a.to_vec();
    for (k, v) in b {
        match merged.iter().find(|(k2, _)| k2 == k) {
            Some((_, v2)) if v2 != v => return None,
            Some(_) => {}
            None => merged.push((k.clone(), v.clone())),
        }
    }
    Some(merged)
}

fn display_value(v: &Value) -> String {
    // The shortest form, so `vary "imbalance-ratio" 100` names `[imbalance-ratio=100]`.
    match v {
        Value::Str(s) => s.clone(),
        Value::Float(f) => f.to_string(),
        other => other.to_string(),
    }
}

fn suffixed(name: &str, suffix: &[(String, String)]) -> String {
    if suffix.is_empty() {
        return name.to_string();
    }
    let parts: Vec<String> = suffix.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{name}[{}]", parts.join(","))
}

fn apply_override(
    pipeline: &Pipeline,
    stages: &mut [Stage],
    o: &Override,
) -> Result<(), Box<Diagnostic>> {
    let cli = Span::synthetic();
    let root = FileId(0);
    let anchor = Span::new(root, 0, 0);
    let Some(stage) = stages.iter_mut().find(|s| s.name.value == o.stage) else {
        let names: Vec<&str> = pipeline
            .stages
            .iter()
            .map(|s| s.name.value.as_str())
            .collect();
        return Err(Box::new(
            Diagnostic::new(
                Code::UndefinedStage,
                format!(
                    "`--set {}.{}={}` names the stage `{}`, which is not defined",
                    o.stage, o.param, o.value, o.stage
                ),
                anchor,
                "in this pipeline",
            )
            .with_help(format!(
                "the stages are {}",
                names
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        ));
    };
    let located = |e: params::ParamError| {
        let mut d = Diagnostic::new(
            e.code,
            format!("`--set {}.{}={}`: {}", o.stage, o.param, o.value, e.message),
            stage.name.span,
            "the stage being overridden",
        );
        if let Some(h) = e.help {
            d = d.with_help(h);
        }
        Box::new(d)
    };
    let (target, spec) = params::resolve(&stage.node, &o.param).map_err(located)?;
    let value =
        params::check(spec, &target, &params::parse_cli_value(&o.value)).map_err(located)?;
    let mut node = stage.node.clone();
    params::apply(&mut node, &target, Spanned::new(value, cli)).map_err(located)?;
    let dir = source_dir(pipeline, stage.name.span);
    let mut diags = Vec::new();
    let lowered = lower_stage(&node, &dir, &pipeline.defaults, &mut diags);
    match lowered {
        Some(l) => {
            *stage = l;
            Ok(())
        }
        None => Err(Box::new(diags.into_iter().next().unwrap_or_else(|| {
            Diagnostic::new(
                Code::InvalidSweep,
                format!("`--set {}.{}` made the stage invalid", o.stage, o.param),
                anchor,
                "here",
            )
        }))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemoryLoader, check_text};

    fn plan(text: &str, overrides: &[&str]) -> Vec<ConcreteStage> {
        let checked = check_text(
            Path::new("p.kdl"),
            text.to_string(),
            &MemoryLoader::default(),
        );
        assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
        let overrides: Vec<Override> = overrides
            .iter()
            .map(|o| Override::parse(o).unwrap())
            .collect();
        expand(&checked.pipeline, &overrides).expect("plan")
    }

    fn names(stages: &[ConcreteStage]) -> Vec<&str> {
        stages.iter().map(|s| s.name.as_str()).collect()
    }

    const BASE: &str = r#"lortflow 1
        dataset "d" { source "synthetic"; long-tail "exp" imbalance-ratio=10 }
        backbone "b" { data "d"; arch "small-cnn"; train epochs=1 }
        features "f" { backbone "b" }
        head "ce" { features "f" }
        head "lort" { features "f"; method "lort" delta=0.98 }
    "#;

    #[test]
    fn head_sweeps_add_named_members() {
        let text = format!(
            "{BASE}\nsweep \"ld\" {{ base \"lort\"; vary \"delta\" 0.5 0.9 }}\nevaluate \"t\" {{ heads \"*\" }}"
        );
        let p = plan(&text, &[]);
        assert_eq!(
            names(&p),
            [
                "d",
                "b",
                "f",
                "ce",
                "lort",
                "ld[delta=0.5]",
                "ld[delta=0.9]",
                "t"
            ]
        );
        let member = &p[5];
        match &member.stage.spec {
            StageSpec::Head(h) => {
                assert_eq!(h.targets.value, crate::ir::Targets::Smoothed { delta: 0.5 })
            }
            _ => panic!(),
        }
        assert_eq!(
            p[7].inputs.len(),
            4,
            "evaluate reads both heads and both members"
        );
    }

    #[test]
    fn upstream_sweeps_copy_everything_downstream() {
        let text = format!(
            "{BASE}\nsweep \"ir\" {{ base \"d\"; vary \"imbalance-ratio\" 100 10 }}\nevaluate \"t\" {{ heads \"ce\" }}"
        );
        let p = plan(&text, &[]);
        assert_eq!(
            names(&p),
            [
                "d[imbalance-ratio=100]",
                "d[imbalance-ratio=10]",
                "b[imbalance-ratio=100]",
                "b[imbalance-ratio=10]",
                "f[imbalance-ratio=100]",
                "f[imbalance-ratio=10]",
                "ce[imbalance-ratio=100]",
                "ce[imbalance-ratio=10]",
                "lort[imbalance-ratio=100]",
                "lort[imbalance-ratio=10]",
                "t"
            ]
        );
        // Copies read the matching copy of their input.
        let b10 = &p[3];
        assert_eq!(p[b10.inputs[0].1].name, "d[imbalance-ratio=10]");
        assert_eq!(p[10].inputs.len(), 2);
    }

    #[test]
    fn overrides_are_typed_and_checked() {
        let p = plan(BASE, &["lort.delta=0.9", "ce.train.lr=0.5"]);
        match &p[4].stage.spec {
            StageSpec::Head(h) => {
                assert_eq!(h.targets.value, crate::ir::Targets::Smoothed { delta: 0.9 })
            }
            _ => panic!(),
        }
        match &p[3].stage.spec {
            StageSpec::Head(h) => assert_eq!(h.train.lr, 0.5),
            _ => panic!(),
        }
        let checked = check_text(
            Path::new("p.kdl"),
            BASE.to_string(),
            &MemoryLoader::default(),
        );
        let err = expand(
            &checked.pipeline,
            &[Override::parse("lort.delta=1.5").unwrap()],
        )
        .unwrap_err();
        assert_eq!(err[0].code, Code::OutOfRange);
        assert!(err[0].message.contains("[0, 1)"), "{}", err[0].message);
        let err = expand(
            &checked.pipeline,
            &[Override::parse("lrot.delta=0.5").unwrap()],
        )
        .unwrap_err();
        assert_eq!(err[0].code, Code::UndefinedStage);
        let err = expand(
            &checked.pipeline,
            &[Override::parse("lort.dleta=0.5").unwrap()],
        )
        .unwrap_err();
        assert!(
            err[0].help.as_deref().unwrap_or("").contains("delta"),
            "{:?}",
            err[0]
        );
    }
}
