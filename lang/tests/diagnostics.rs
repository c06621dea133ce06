//! Snapshot tests of the linter: every fixture under `fixtures/invalid/` is rendered as people
//! see it (miette, no colour, fixed width) and as JSON, and compared with its snapshot.
//! Fixtures under `fixtures/valid/` must produce no diagnostics at all.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use lortflow_lang::{Checked, Code, FsLoader, load};
mod common;

use common::render;

fn fixtures(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(Path::new("tests/fixtures").join(dir))
        .expect("fixture directory should exist")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "kdl"))
        .collect();
    files.sort();
    files
}

fn check(path: &Path) -> Checked {
    load(path, &FsLoader).expect("fixture should be readable")
}

#[test]
fn invalid_fixtures_match_snapshots() {
    let mut seen_codes = BTreeSet::new();
    for path in fixtures("invalid") {
        let checked = check(&path);
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        assert!(
            !checked.diagnostics.is_empty(),
            "{name} should produce diagnostics"
        );
        seen_codes.extend(checked.diagnostics.iter().map(|d| d.code));
        let json: Vec<_> = checked
            .diagnostics
            .iter()
            .map(|d| d.to_json(&checked.pipeline.sources))
            .collect();
        insta::assert_snapshot!(format!("{name}.human"), render(&checked));
        insta::assert_snapshot!(
            format!("{name}.json"),
            serde_json::to_string_pretty(&json).unwrap()
        );
    }
    // Every diagnostic class is exercised by at least one fixture.
    let missing: Vec<&str> = Code::ALL
        .iter()
        // `io` needs an unreadable file and `too-large` a file over 1 MiB: tested in `fuzz.rs`
        // and by the CLI tests.
        .filter(|c| !matches!(c, Code::Io | Code::TooLarge) && !seen_codes.contains(c))
        .map(|c| c.as_str())
        .collect();
    assert!(missing.is_empty(), "no fixture produces {missing:?}");
}

#[test]
fn valid_fixtures_are_clean() {
    for path in fixtures("valid") {
        let checked = check(&path);
        assert!(
            checked.diagnostics.is_empty(),
            "{}:\n{}",
            path.display(),
            render(&checked)
        );
    }
}

#[test]
fn shipped_pipelines_are_clean() {
    let mut files: Vec<PathBuf> = std::fs::read_dir("../pipelines")
        .expect("pipelines/ should exist")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "kdl"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 6,
        "expected the shipped pipelines, found {files:?}"
    );
    for path in files {
        let checked = check(&path);
        assert!(
            checked.diagnostics.is_empty(),
            "{}:\n{}",
            path.display(),
            render(&checked)
        );
    }
}

#[test]
fn components_resolve_presets_and_overrides() {
    let checked = check(Path::new("tests/fixtures/valid/components.kdl"));
    let head = |name: &str| match &checked.pipeline.stage(name).expect("stage").spec {
        lortflow_lang::ir::StageSpec::Head(h) => h.clone(),
        _ => panic!("{name} is not a head"),
    };
    use lortflow_lang::ir::*;
    let lort_bs = head("lort+bs");
    assert_eq!(lort_bs.targets.value, Targets::Smoothed { delta: 0.98 });
    assert_eq!(lort_bs.margin.value, Margin::BalancedSoftmax);
    // LORT's own recipe: small lr, no weight decay, batch 64.
    assert_eq!(
        (
            lort_bs.train.lr,
            lort_bs.train.weight_decay,
            lort_bs.train.batch_size
        ),
        (5e-4, 0.0, 64)
    );
    let spelled = head("spelled-out");
    assert_eq!(
        spelled.logits.value,
        Logits::Cosine {
            scale: 16.0,
            init_norm: None
        }
    );
    assert_eq!(spelled.weighting.value, Weighting::Focal { gamma: 2.0 });
    assert_eq!(spelled.train.seed, 7, "the pipeline seed is the default");
    assert_eq!(spelled.trials, 3);
    let post_hoc = head("post-hoc");
    assert_eq!(
        post_hoc.inference.value,
        Inference::TauNorm {
            tau: 0.5,
            bias: false
        }
    );
    assert!(matches!(&post_hoc.init.value, Init::Head(h) if h.value == "spelled-out"));
}
