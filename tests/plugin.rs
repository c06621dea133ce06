//! A head method added by a plugin (`examples/custom_head_method.rs`): the example's binary is
//! `lortflow` with one more loss, and the stock binary explains what is missing.

use std::path::PathBuf;

use crate::cli::Test;

/// The example binary, which `cargo test` builds next to the `lortflow` binary.
fn plugin_binary() -> PathBuf {
    let lortflow = PathBuf::from(env!("CARGO_BIN_EXE_lortflow"));
    let path = lortflow
        .parent()
        .expect("the binary is in a directory")
        .join("examples")
        .join(format!(
            "custom_head_method{}",
            std::env::consts::EXE_SUFFIX
        ));
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds the examples; with `--test integration` alone, first \
         build it with the tests' profile (`cargo build --release --example custom_head_method` \
         for `scripts/test`)",
        path.display()
    );
    path
}

const PIPELINE: &str = r#"lortflow 1
dataset "d" {
    source "synthetic" kind="vectors" classes=6 per-class=80 test-per-class=20 dim=12 noise=1.0
    long-tail "exp" imbalance-ratio=10
    groups many=40 few=15
}
head "ce" { features "d"; method "ce"; train epochs=4 }
head "las" { features "d"; loss "label-aware-smoothing" delta-max=0.4 delta-min=0.1; train epochs=4 }
sweep "las-high" {
    base "las"
    vary "loss.delta-max" 0.2 0.6
}
evaluate "t" { heads "*"; metrics "top1"; plots #false }
"#;

#[test]
fn a_plugin_loss_runs_like_a_built_in_method() {
    let t = Test::new().pipeline(PIPELINE).binary(plugin_binary());
    t.args_run(["lint", "pipeline.kdl"]).success();
    let ran = t.args_run(["run", "pipeline.kdl"]).success();
    for head in [
        "las",
        "las-high[loss.delta-max=0.2]",
        "las-high[loss.delta-max=0.6]",
    ] {
        let row = ran
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{head} ")));
        // The table names the plugin loss as the method.
        assert!(
            row.is_some_and(|r| r.contains("label-aware-smoothing")),
            "{head} missing from:\n{}",
            ran.stdout
        );
    }
    // Cached, then a changed plugin property re-runs that head and the evaluation only.
    let again = t.args_run(["status", "pipeline.kdl"]).success();
    assert!(!again.stdout.contains("will run"), "{}", again.stdout);
    let changed = t
        .args_run([
            "run",
            "pipeline.kdl",
            "--set",
            "las.loss.delta-min=0.0",
            "--dry-run",
        ])
        .success();
    let runs: Vec<&str> = changed
        .stdout
        .lines()
        .filter(|l| l.starts_with("run"))
        .collect();
    // `las`, the two sweep copies derived from it, and the evaluation; `ce` stays cached.
    assert_eq!(runs.len(), 4, "{}", changed.stdout);
    assert!(
        runs[0].contains("las") && runs[0].contains("`loss.delta-min` changed from 0.1 to 0.0"),
        "{}",
        changed.stdout
    );
    assert!(
        !runs.iter().any(|l| l.contains(" ce ")),
        "{}",
        changed.stdout
    );
    // Its docs list the loss with its properties.
    let docs = t.args_run(["docs"]).success();
    assert!(
        docs.stdout.contains("label-aware-smoothing"),
        "{}",
        docs.stdout
    );
    assert!(docs.stdout.contains("δ of the rarest class."));
}

#[test]
fn the_stock_binary_explains_a_plugin_loss_it_does_not_have() {
    let t = Test::new().pipeline(PIPELINE);
    let lint = t.args_run(["lint", "pipeline.kdl"]);
    assert_eq!(lint.code, 1, "{}", lint.stderr);
    assert!(
        lint.stderr
            .contains("unknown kind `label-aware-smoothing` for `loss`")
            && lint.stderr.contains("examples/custom_head_method.rs"),
        "{}",
        lint.stderr
    );
}
