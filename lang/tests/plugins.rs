//! Plugin variants: a loss registered at run time is checked, lowered, documented and diffed like
//! a built-in component. (A test binary of its own: the registry is process-wide, and the other
//! test binaries must see the stock language.)

use lortflow_lang::schema::{
    self, Lit, ParamSpec, PluginVariant, Range, RegisterError, ValueType, VariantSpec,
};
use lortflow_lang::{Checked, MemoryLoader, load};
mod common;

use common::render;

const SMOOTHING: VariantSpec = VariantSpec {
    name: "label-aware-smoothing",
    doc: "Per-class smoothing from δ_max (head classes) to δ_min (tail classes).",
    props: &[
        ParamSpec::new("delta-min", ValueType::Float, "δ of the rarest class.")
            .default(Lit::Float(0.0))
            .range(Range::UNIT_HALF_OPEN),
        ParamSpec::new(
            "delta-max",
            ValueType::Float,
            "δ of the most frequent class.",
        )
        .default(Lit::Float(0.4))
        .range(Range::UNIT_HALF_OPEN),
    ],
};

fn register() {
    schema::register_variant(PluginVariant {
        node: "loss",
        variant: &SMOOTHING,
        version: "1",
    })
    .expect("the loss registers");
}

const DATA: &str = r#"lortflow 1
dataset "d" {
    source "synthetic" kind="vectors" classes=5 dim=8 per-class=20 test-per-class=5
    long-tail "exp" imbalance-ratio=10
}
evaluate "t" { heads "*" }
"#;

fn lint(heads: &str) -> Checked {
    let loader = MemoryLoader::default().with("p.kdl", format!("{DATA}{heads}\n"));
    load("p.kdl".as_ref(), &loader).expect("in memory")
}

#[test]
fn a_registered_loss_is_checked_and_lowered_like_a_component() {
    register();
    let checked = lint(r#"head "h" { features "d"; loss "label-aware-smoothing" delta-max=0.3 }"#);
    assert!(checked.diagnostics.is_empty(), "{}", render(&checked));
    let head = checked.pipeline.stage("h").expect("the head");
    let lortflow_lang::ir::StageSpec::Head(h) = &head.spec else {
        panic!("a head");
    };
    let loss = &h.loss.as_ref().expect("the plugin loss").value;
    assert_eq!(loss.name, "label-aware-smoothing");
    assert_eq!(loss.version, "1");
    assert_eq!(loss.params["delta-max"], 0.3);
    assert_eq!(loss.params["delta-min"], 0.0, "defaults are filled in");

    // Its properties are typed and range-checked; misspellings get suggestions.
    let bad = lint(
        r#"head "h" { features "d"; loss "label-aware-smoothing" delta-max=1.5 delta-mn=0.1 }
head "g" { features "d"; loss "label-aware-smothing" }"#,
    );
    insta::assert_snapshot!("plugin-loss-properties", render(&bad));

    // It replaces targets and margin, and trains linear logits only.
    let conflicts = lint(
        r#"head "h" { features "d"; targets "smoothed" delta=0.9; loss "label-aware-smoothing" }
head "g" { features "d"; loss "label-aware-smoothing"; margin "balanced-softmax" }
head "c" { features "d"; loss "label-aware-smoothing"; logits "cosine" }
head "f" { features "d"; loss "label-aware-smoothing"; weighting "focal" }"#,
    );
    insta::assert_snapshot!("plugin-loss-conflicts", render(&conflicts));
    assert_eq!(conflicts.diagnostics.len(), 4, "{}", render(&conflicts));

    // Class weights combine with it.
    let weighted = lint(
        r#"head "h" { features "d"; loss "label-aware-smoothing"; weighting "class-balanced" beta=0.99 loss="softmax" }"#,
    );
    assert!(weighted.diagnostics.is_empty(), "{}", render(&weighted));
}

#[test]
fn the_docs_of_a_plugin_binary_list_its_losses() {
    register();
    let docs = lortflow_lang::docs::language_reference();
    assert!(docs.contains("**`label-aware-smoothing`**"), "{docs}");
    assert!(docs.contains("δ of the rarest class."));
}

#[test]
fn registration_refuses_clashes_and_untyped_properties() {
    register();
    // The same plugin again is a no-op; another implementation under the same name is refused.
    register();
    let clash = schema::register_variant(PluginVariant {
        node: "loss",
        variant: &SMOOTHING,
        version: "2",
    });
    assert!(
        matches!(clash, Err(RegisterError::Taken { .. })),
        "{clash:?}"
    );
    let not_extensible = schema::register_variant(PluginVariant {
        node: "margin",
        variant: &SMOOTHING,
        version: "1",
    });
    assert!(
        matches!(not_extensible, Err(RegisterError::NotExtensible { .. })),
        "{not_extensible:?}"
    );
    const UNTYPED: VariantSpec = VariantSpec {
        name: "untyped",
        doc: "",
        props: &[ParamSpec::new("mode", ValueType::String, "A string.").default(Lit::Str("a"))],
    };
    let untyped = schema::register_variant(PluginVariant {
        node: "loss",
        variant: &UNTYPED,
        version: "1",
    });
    assert!(
        matches!(untyped, Err(RegisterError::BadProperty { .. })),
        "{untyped:?}"
    );
}
