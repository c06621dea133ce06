//! The language reference (`docs/language.md`), generated from the schema so it cannot drift.

use std::fmt::Write;

use crate::diagnostic::Code;
use crate::schema::{
    HEAD_PRESETS, NodeSpec, ParamSpec, PresetValue, TOP_LEVEL, ValueType, format_float,
};

/// Renders the full language reference as markdown.
pub fn language_reference() -> String {
    let mut out = String::new();
    out.push_str(
        "# The lortflow language, version 1\n\n\
         <!-- Generated from the schema in `lang/src/schema/` by `lortflow docs`. Do not edit by hand:\n\
         `UPDATE_DOCS=1 cargo test -p lortflow-lang docs` rewrites it, and a test fails when it is stale. -->\n\n\
         A pipeline is a [KDL](https://kdl.dev) file (v2; v1 is accepted). Its top level declares stages;\n\
         each stage is a node with a name and a block of settings:\n\n\
         ```kdl\nlortflow 1\n\ndataset \"fmnist-lt\" {\n    source \"fashion-mnist\"\n    long-tail \"exp\" imbalance-ratio=100\n}\n\
         backbone \"cnn\" { data \"fmnist-lt\"; arch \"small-cnn\"; train epochs=10 batch-size=128 lr=0.05 }\n\
         features \"cnn-feats\" { backbone \"cnn\" }\n\
         head \"lort\" { features \"cnn-feats\"; method \"lort\" delta=0.9 }\n\
         evaluate \"table\" { heads \"*\" }\n```\n\n\
         Relative paths are resolved against the directory of the file that names them. Numbers accept\n\
         `5e-4`; integers are accepted wherever a number is. Booleans are `#true` and `#false`.\n\n\
         ## Contents\n\n",
    );
    for node in TOP_LEVEL {
        let _ = writeln!(out, "- [`{}`](#{})", node.name, node.name);
    }
    out.push_str(
        "- [Head methods (presets)](#head-methods-presets)\n- [Diagnostics](#diagnostics)\n\n",
    );
    for node in TOP_LEVEL {
        let _ = writeln!(out, "## `{}`\n", node.name);
        render_node(&mut out, node, 3);
    }
    presets(&mut out);
    diagnostics(&mut out);
    out
}

fn render_node(out: &mut String, node: &NodeSpec, depth: usize) {
    let _ = writeln!(out, "{}\n", node.doc);
    let mut facts = Vec::new();
    if node.required {
        facts.push("required".to_string());
    }
    if node.repeatable {
        facts.push("may be repeated".to_string());
    }
    if !node.conflicts.is_empty() {
        facts.push(format!(
            "cannot be combined with {}",
            node.conflicts
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for group in node.one_of {
        facts.push(format!(
            "needs exactly one of {}",
            group
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !facts.is_empty() {
        let _ = writeln!(out, "*{}.*\n", capitalize(&facts.join("; ")));
    }
    if !node.example.is_empty() {
        let _ = writeln!(out, "```kdl\n{}\n```\n", node.example);
    }
    if !node.args.is_empty() {
        out.push_str("| argument | type | default | description |\n| --- | --- | --- | --- |\n");
        for (i, a) in node.args.iter().enumerate() {
            let variants = node.all_variants();
            let ty = if i == 0 && node.has_variants() && variants.is_empty() {
                "the name of a plugin's variant".to_string()
            } else if i == 0 && node.has_variants() {
                format!(
                    "one of {}",
                    variants
                        .iter()
                        .map(|v| format!("`{}`", v.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                type_cell(a)
            };
            let name = if a.variadic {
                format!("{}...", a.name)
            } else {
                a.name.to_string()
            };
            let _ = writeln!(out, "| {name} | {ty} | {} | {} |", default_cell(a), a.doc);
        }
        out.push('\n');
    }
    if !node.props.is_empty() {
        props_table(out, node.props);
    }
    for v in node.all_variants() {
        let _ = writeln!(out, "- **`{}`**: {}", v.name, v.doc);
        if !v.props.is_empty() {
            out.push('\n');
            let mut table = String::new();
            props_table(&mut table, v.props);
            for line in table.lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
    }
    if node.has_variants() {
        out.push('\n');
    }
    for child in node.children {
        let _ = writeln!(
            out,
            "{} `{}` in `{}`\n",
            "#".repeat(depth),
            child.name,
            node.name
        );
        render_node(out, child, depth + 1);
    }
}

fn props_table(out: &mut String, props: &[ParamSpec]) {
    out.push_str(
        "| property | type | default | range | description |\n| --- | --- | --- | --- | --- |\n",
    );
    for p in props {
        let range = if p.range.is_any() {
            String::new()
        } else {
            p.range.to_string()
        };
        let range = match p.unit {
            Some(u) if !range.is_empty() => format!("{range} {u}"),
            Some(u) => u.to_string(),
            None => range,
        };
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} |",
            p.name,
            type_cell(p),
            default_cell(p),
            range,
            p.doc
        );
    }
    out.push('\n');
}

fn type_cell(p: &ParamSpec) -> String {
    match p.ty {
        ValueType::Enum(choices) => choices
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(" \\| "),
        other => other.describe(),
    }
}

fn default_cell(p: &ParamSpec) -> String {
    match (p.default, p.required) {
        (Some(d), _) => format!("`{d}`"),
        (None, true) => "required".into(),
        (None, false) => "unset".into(),
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn presets(out: &mut String) {
    out.push_str(
        "## Head methods (presets)\n\n\
         `method \"NAME\"` stands for a set of components (the paper's unified form, Eq. 1) and training\n\
         defaults. Components not listed stay neutral: `logits \"linear\"`, `targets \"one-hot\"`,\n\
         `margin \"none\"`, `weighting \"none\"`, `sampler \"instance\"`, `constraint \"none\"`,\n\
         `inference \"none\"`. An explicit component node replaces the preset's part, so methods compose:\n\n\
         ```kdl\nhead \"lort+bs\" {\n    features \"feats\"\n    method \"lort\" delta=0.98\n    margin \"balanced-softmax\"\n}\n```\n\n\
         | method | components | epochs | batch | lr | weight decay | init | reference |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for p in HEAD_PRESETS {
        let mut components = String::new();
        for (i, c) in p.components.iter().enumerate() {
            if i > 0 {
                // Settings of one condition's values are alternatives.
                let prev = p.components[i - 1].when.map(|w| w.prop);
                let alternative = prev.is_some() && prev == c.when.map(|w| w.prop);
                components.push_str(if alternative { " or " } else { ", " });
            }
            let props: String = c
                .props
                .iter()
                .map(|(name, v)| match v {
                    PresetValue::Method(m) | PresetValue::EpochFraction { prop: m, .. } => {
                        format!(" {name}=‹{m}›")
                    }
                    PresetValue::Lit(l) => format!(" {name}={l}"),
                })
                .collect();
            let _ = write!(components, "`{} \"{}\"{props}`", c.node, c.variant);
            if let Some(w) = c.when {
                let _ = write!(components, " (`{}={}`)", w.prop, w.is);
            }
        }
        if components.is_empty() {
            components.push('—');
        }
        let t = p.train;
        let reference = match p.train_when {
            Some((prop, value, alt, why)) => format!(
                "{}; with `{prop}=\"{value}\"`: {} epochs, batch {}, lr {}, weight decay {}, init `{}` ({why})",
                p.reference,
                alt.epochs,
                alt.batch_size,
                format_float(alt.lr),
                format_float(alt.weight_decay),
                alt.init
            ),
            None => p.reference.to_string(),
        };
        let _ = writeln!(
            out,
            "| `{}` | {components} | {} | {} | {} | {} | `{}` | {reference} |",
            p.name,
            t.epochs,
            t.batch_size,
            format_float(t.lr),
            format_float(t.weight_decay),
            t.init,
        );
    }
    out.push_str(
        "\n‹name› is the method's own property of that name (see `method` under `head`).\n\n\
         **Choosing δ for LORT.** The optimal logit gap of the smoothed target is\n\
         log(1 + K(1−δ)/δ): 1.11 for K = 100 and δ = 0.98, but only 0.19 for K = 10. With few classes a\n\
         δ that large leaves almost no margin between classes, so sweep δ (the paper's Fig. 4) rather than\n\
         copying 0.98. LORT helps through its recipe — fine-tuning the backbone's classifier with a small\n\
         learning rate — so keep `init \"backbone\"` unless you are studying that choice.\n\n\
         **Recipes.** Every preset trains with its reference's recipe, named in the table: where the\n\
         reference starts (the backbone's classifier or a fresh head), its epochs, batch, learning rate\n\
         and weight decay. Methods that publish no classifier re-training recipe of their own use Kang\n\
         et al.'s (`cls_crt.yaml`), so that they differ from `ce` by their loss alone. `tau-norm` and\n\
         post-hoc `logit-adjust` map the stage-1 classifier without training (`epochs` 0). Presets that\n\
         start from the backbone's classifier need features made by a backbone: on imported features\n\
         give them `init \"random\"` (and a recipe for a fresh head) or `init \"head\"`.\n\n",
    );
}

fn diagnostics(out: &mut String) {
    out.push_str(
        "## Diagnostics\n\n\
         `lortflow lint` reports every problem at once. Each has a stable code; `--format json` prints an\n\
         array of objects with the fields `code`, `severity` (`error` or `warning`), `message`, `file`,\n\
         `line`, `column` (1-based, in characters), `offset` and `length` (bytes), `labels` (each with\n\
         `message`, `line`, `column`, `offset`, `length`; the first is the primary one) and `help`\n\
         (string or null). Exit code: 0 clean (warnings allowed), 1 errors, 2 usage or unreadable file.\n\n\
         | code | severity | meaning |\n| --- | --- | --- |\n",
    );
    for code in Code::ALL {
        let severity = match code.severity() {
            crate::Severity::Error => "error",
            crate::Severity::Warning => "warning",
        };
        let _ = writeln!(out, "| `{}` | {severity} | {} |", code.as_str(), code.doc());
    }
}
