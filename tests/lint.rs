//! `lortflow lint`: exit codes, human and JSON output on real files.

use crate::cli::{Test, repo};

const BAD: &str = r#"lortflow 1
dataset "d" { source "synthetic" kind="vectors" }
head "h" { features "d"; method "lrot" delta=0.98 }
head "g" { features "d"; method "ce" delta=0.5 }
evaluate "t" { heads "*" }
"#;

#[test]
fn every_shipped_pipeline_is_clean() {
    let mut files: Vec<String> = std::fs::read_dir(repo().join("pipelines"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "kdl"))
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    let mut args = vec!["lint".to_string()];
    args.extend(files);
    let ran = Test::new().args(args).run().success();
    assert!(!ran.stderr.contains("warning"), "{}", ran.stderr);
}

#[test]
fn errors_exit_with_1_and_render_with_spans_and_help() {
    let ran = Test::new()
        .pipeline(BAD)
        .args(["lint", "pipeline.kdl"])
        .run()
        .code(1);
    assert!(
        ran.stderr.contains("lortflow::unknown-method"),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr.contains("did you mean `lort`?"),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr.contains("lortflow::param-not-for-method"),
        "{}",
        ran.stderr
    );
    assert!(ran.stderr.contains("pipeline.kdl:3:"), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("error: `pipeline.kdl`: 2 errors"),
        "{}",
        ran.stderr
    );
}

#[test]
fn json_output_is_a_stable_array() {
    let ran = Test::new()
        .pipeline(BAD)
        .args(["lint", "--format", "json", "pipeline.kdl"])
        .run()
        .code(1);
    let json: serde_json::Value = serde_json::from_str(&ran.stdout).expect("valid JSON on stdout");
    let first = &json[0];
    for field in [
        "code", "severity", "message", "file", "line", "column", "offset", "length", "labels",
        "help",
    ] {
        assert!(first.get(field).is_some(), "missing `{field}` in {first}");
    }
    assert_eq!(first["code"], "lortflow::unknown-method");
    assert_eq!(first["line"], 3);
    assert_eq!(first["column"], 33);
}

#[test]
fn warnings_alone_exit_with_0_unless_denied() {
    let text = r#"lortflow 1
dataset "d" { source "synthetic" kind="vectors" }
head "h" { features "d"; select "best-test" }
evaluate "t" { heads "*" }
"#;
    let ran = Test::new()
        .pipeline(text)
        .args(["lint", "pipeline.kdl"])
        .run()
        .success();
    assert!(
        ran.stderr.contains("lortflow::test-selection"),
        "{}",
        ran.stderr
    );
    Test::new()
        .pipeline(text)
        .args(["lint", "--deny-warnings", "pipeline.kdl"])
        .run()
        .code(1);
}

#[test]
fn unreadable_files_exit_with_2() {
    let ran = Test::new().args(["lint", "missing.kdl"]).run().code(2);
    assert!(
        ran.stderr.contains("cannot read `missing.kdl`"),
        "{}",
        ran.stderr
    );
}

#[test]
fn usage_errors_exit_with_2() {
    Test::new().args(["lint"]).run().code(2);
    Test::new().args(["frobnicate"]).run().code(2);
}
