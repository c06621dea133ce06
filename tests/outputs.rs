//! What the CLI prints, as snapshots: the graph, a dry run, a run's stage lines and summary,
//! `status` after an edit, `lint`, a bad `--set`, `cache gc`. Temporary paths, durations,
//! sizes, progress lines and cache keys are filtered out, so a snapshot changes only when the
//! output does. (Accuracy tables are left to the numeric tests: their last digits may differ between
//! CPUs.) Review a change with `cargo insta review`, or `INSTA_UPDATE=always` and `git diff`.

use crate::cli::{Ran, Test, VECTORS};

/// Runs `args` in `t` and returns stdout and stderr as one text with volatile parts filtered.
fn output(t: &Test, args: &[&str]) -> String {
    let ran: Ran = t.args_run(args);
    let dir = t.dir.path().display().to_string();
    let text = format!(
        "exit code {}\n--- stdout\n{}--- stderr\n{}",
        ran.code, ran.stdout, ran.stderr
    );
    text.replace(&dir, "[DIR]")
}

fn settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    for (pattern, replacement) in [
        (r"\b[0-9a-f]{64}\b", "[KEY]"),
        (r"\b[0-9a-f]{12}\b", "[KEY]"),
        (r"\d+\.\d+s\b", "[TIME]"),
        // Progress lines: how many appear depends on the machine's speed (one per 5 s).
        (r"(?m)^ {11}`[^\n]*\n", ""),
        (r"\(\d+(\.\d+)? (B|KiB|MiB|GiB)\)", "([SIZE])"),
        // Accuracy rows of a results table: their last digits may differ between CPUs.
        (
            r"(?m)^(\S+ +\S+ +\S+ +\S+ +\S+ +)\d+\.\d\d( +(\d+\.\d\d|-))* *$",
            "$1[ACCURACIES]",
        ),
    ] {
        s.add_filter(pattern, replacement);
    }
    s.set_prepend_module_to_snapshot(false);
    s.set_snapshot_path("snapshots/outputs");
    s
}

#[test]
fn graph_dry_run_run_and_status_after_an_edit() {
    let t = Test::new().pipeline(VECTORS);
    settings().bind(|| {
        insta::assert_snapshot!("graph", output(&t, &["graph", "pipeline.kdl"]));
        insta::assert_snapshot!("dry-run", output(&t, &["run", "--dry-run", "pipeline.kdl"]));
        // One worker, so the stage lines come in one order.
        insta::assert_snapshot!("first-run", output(&t, &["run", "-j", "1", "pipeline.kdl"]));
        let t = t.file("pipeline.kdl", &VECTORS.replace("delta=0.9", "delta=0.8"));
        insta::assert_snapshot!("status-after-edit", output(&t, &["status", "pipeline.kdl"]));
        insta::assert_snapshot!(
            "rerun-after-edit",
            output(&t, &["run", "-j", "1", "-q", "pipeline.kdl"])
        );
        insta::assert_snapshot!("gc", output(&t, &["cache", "gc", "pipeline.kdl"]));
    });
}

#[test]
fn lint_and_set_errors() {
    let bad = r#"lortflow 1
dataset "d" { source "synthetic" kind="vectors" }
head "h" { features "d"; method "lrot" delta=0.98 }
evaluate "t" { heads "*" }
"#;
    let t = Test::new().pipeline(bad).file("good.kdl", VECTORS);
    settings().bind(|| {
        insta::assert_snapshot!("lint-error", output(&t, &["lint", "pipeline.kdl"]));
        insta::assert_snapshot!(
            "set-out-of-range",
            output(&t, &["run", "good.kdl", "--set", "lort.delta=1.5"])
        );
        insta::assert_snapshot!(
            "set-unknown-stage",
            output(&t, &["lint", "good.kdl", "--set", "lrot.delta=0.5"])
        );
    });
}
