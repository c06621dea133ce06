//! `lortflow graph`: the DAG as text, dot and Mermaid.

use crate::cli::{Test, repo};

#[test]
fn text_graph_lists_stages_in_dependency_order_with_sweep_sizes() {
    let smoke = repo().join("pipelines/smoke.kdl");
    let ran = Test::new()
        .args(["graph", smoke.to_str().unwrap()])
        .run()
        .success();
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert!(lines[0].starts_with("dataset   synth-lt"), "{}", ran.stdout);
    assert!(
        ran.stdout
            .contains("sweep     lort-delta [3 variants over delta]  ← lort"),
        "{}",
        ran.stdout
    );
    assert!(
        lines.last().unwrap().starts_with("evaluate  table"),
        "{}",
        ran.stdout
    );
}

#[test]
fn dot_and_mermaid_render_every_edge() {
    let smoke = repo().join("pipelines/smoke.kdl");
    let dot = Test::new()
        .args(["graph", "--format", "dot", smoke.to_str().unwrap()])
        .run()
        .success();
    assert!(dot.stdout.starts_with("digraph pipeline {"));
    assert!(
        dot.stdout.contains("s0 -> s1 [label=\"data\"]"),
        "{}",
        dot.stdout
    );
    let mermaid = Test::new()
        .args(["graph", "--format", "mermaid", smoke.to_str().unwrap()])
        .run()
        .success();
    assert!(mermaid.stdout.starts_with("flowchart LR"));
    assert!(mermaid.stdout.contains("s0 --> s1"), "{}", mermaid.stdout);
}

#[test]
fn graph_of_an_invalid_pipeline_reports_the_errors() {
    let ran = Test::new()
        .pipeline("lortflow 1\nhead \"h\" { features \"nope\" }\n")
        .args(["graph", "pipeline.kdl"])
        .run()
        .code(1);
    assert!(
        ran.stderr.contains("lortflow::undefined-stage"),
        "{}",
        ran.stderr
    );
}
