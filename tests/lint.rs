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

#[test]
fn lint_expands_sweeps_and_set_overrides_like_run() {
    let text = r#"lortflow 1
dataset "d" { source "synthetic" kind="vectors" }
head "lort" { features "d"; method "lort" delta=0.9; init "random" }
evaluate "t" { heads "*" }
"#;
    let t = Test::new().pipeline(text);
    t.args_run(["lint", "pipeline.kdl"]).success();
    // An override is checked like the file: range, then the combination it makes.
    let bad = t
        .args_run(["lint", "pipeline.kdl", "--set", "lort.delta=1.5"])
        .code(1);
    assert!(bad.stderr.contains("must be in [0, 1)"), "{}", bad.stderr);
    assert!(
        bad.stderr.contains("× `--set lort.delta=1.5`"),
        "{}",
        bad.stderr
    );
    let untrained = t
        .args_run(["lint", "pipeline.kdl", "--set", "lort.train.epochs=0"])
        .code(1);
    assert!(
        untrained
            .stderr
            .contains("has `epochs=0` and a re-initialised classifier"),
        "{}",
        untrained.stderr
    );
    t.args_run(["lint", "pipeline.kdl", "--set", "lort.delta=0.5"])
        .success();
    let usage = t
        .args_run(["lint", "pipeline.kdl", "--set", "lort"])
        .code(2);
    assert!(
        usage.stderr.contains("STAGE.PARAM=VALUE"),
        "{}",
        usage.stderr
    );
    // A sweep member that cannot run is a lint error, with the sweep's span.
    let swept = format!("{text}sweep \"e\" {{ base \"lort\"; vary \"train.epochs\" 0 2 }}\n");
    let t = t.file("pipeline.kdl", &swept);
    let ran = t.args_run(["lint", "pipeline.kdl"]).code(1);
    assert!(
        ran.stderr
            .contains("has `epochs=0` and a re-initialised classifier"),
        "{}",
        ran.stderr
    );
}
