//! The engine against test doubles: caching, invalidation, failures, corruption.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use lortflow_lang::ir::Backend;
use lortflow_lang::{MemoryLoader, StageKind, check_text};
use lortflow_runtime::plan::expand;
use lortflow_runtime::*;
use serde_json::json;

/// Writes one file whose content depends on the stage and its inputs; counts its runs; fails
/// for stages whose name starts with `fail`, panics for those starting with `panic`.
struct Fake {
    runs: Arc<AtomicUsize>,
}

impl StageExecutor for Fake {
    fn version(&self) -> &'static str {
        "test-1"
    }
    fn run(&self, cx: &StageContext<'_>) -> Result<serde_json::Value, StageError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        if cx.stage.name.starts_with("fail") {
            return Err(StageError::failed("this stage always fails"));
        }
        if cx.stage.name.starts_with("panic") {
            panic!("a bug in this stage");
        }
        if cx.stage.name.starts_with("rewrite") {
            // The user saves an input file while the stage reads it.
            for (_, path) in lortflow_runtime::plan::external_files(cx.stage) {
                let mut bytes = std::fs::read(&path).unwrap();
                bytes.extend_from_slice(b" edited");
                std::fs::write(&path, bytes).unwrap();
            }
        }
        let inputs: Vec<String> = cx
            .inputs
            .iter()
            .map(|i| i.artifact.key().short().to_string())
            .collect();
        std::fs::write(
            cx.out_dir.join("out.txt"),
            format!("{} {:?}", cx.stage.name, inputs),
        )
        .unwrap();
        Ok(json!({"name": cx.stage.name}))
    }
}

struct Harness {
    dir: tempfile::TempDir,
    registry: Registry,
    runs: Arc<AtomicUsize>,
}

impl Harness {
    fn new() -> Self {
        let runs = Arc::new(AtomicUsize::new(0));
        let mut registry = Registry::new();
        for kind in StageKind::ALL {
            registry.register(kind, Arc::new(Fake { runs: runs.clone() }));
        }
        Harness {
            dir: tempfile::tempdir().unwrap(),
            registry,
            runs,
        }
    }

    fn run(&self, text: &str) -> (Vec<StageStatus>, RunReport) {
        let checked = check_text(
            &self.dir.path().join("p.kdl"),
            text.to_string(),
            &MemoryLoader::default(),
        );
        assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
        let plan = expand(&checked.pipeline, &[]).unwrap();
        let store = Store::open(&self.dir.path().join(".lortflow")).unwrap();
        let engine = Engine::new(plan, store, self.registry.clone(), Backend::Cpu, "p.kdl");
        let request = RunRequest {
            jobs: 2,
            ..RunRequest::default()
        };
        let report = engine
            .run(&request, &CancelToken::new(), &SilentReporter)
            .unwrap();
        (report.statuses.clone(), report)
    }

    fn runs(&self) -> usize {
        self.runs.swap(0, Ordering::SeqCst)
    }
}

const PIPELINE: &str = r#"lortflow 1
dataset "d" { source "synthetic" kind="vectors" }
head "ce" { features "d" }
head "lort" { features "d"; method "lort" delta=0.9; init "random" }
evaluate "t" { heads "*" }
"#;

fn outcomes(report: &RunReport) -> Vec<(String, StageOutcome)> {
    report
        .record
        .stages
        .iter()
        .map(|s| (s.name.clone(), s.outcome))
        .collect()
}

#[test]
fn an_input_file_rewritten_during_its_stage_is_not_stored_under_the_old_key() {
    let h = Harness::new();
    for f in ["train.safetensors", "test.safetensors"] {
        std::fs::write(h.dir.path().join(f), b"original").unwrap();
    }
    let text = r#"lortflow 1
dataset "rewrite" { source "features" train="train.safetensors" test="test.safetensors" }
head "ce" { features "rewrite"; init "random" }
evaluate "t" { heads "*" }
"#;
    let (_, report) = h.run(text);
    let stage = &report.record.stages[0];
    assert_eq!(stage.outcome, StageOutcome::Failed);
    let error = stage.error.as_deref().unwrap();
    assert!(
        error.contains("`train.safetensors` changed while the stage was reading it"),
        "{error}"
    );
    assert!(report.artifacts.is_empty());
    // The next run keys the new content, and (the file now left alone) stores it.
    let (statuses, _) = h.run(&text.replace("\"rewrite\"", "\"d\""));
    assert_eq!(statuses[0].state, State::Stale);
}

#[test]
fn second_run_executes_nothing() {
    let h = Harness::new();
    let (_, first) = h.run(PIPELINE);
    assert!(!first.failed());
    assert_eq!(h.runs(), 4);
    let (statuses, second) = h.run(PIPELINE);
    assert_eq!(h.runs(), 0);
    assert!(statuses.iter().all(|s| s.state == State::Cached));
    assert!(
        outcomes(&second)
            .iter()
            .all(|(_, o)| *o == StageOutcome::Cached)
    );
}

#[test]
fn a_parameter_change_reruns_that_head_and_its_evaluation_only() {
    let h = Harness::new();
    h.run(PIPELINE);
    h.runs();
    let edited = PIPELINE.replace("delta=0.9", "delta=0.8");
    let (statuses, report) = h.run(&edited);
    assert_eq!(h.runs(), 2);
    let ran: Vec<String> = outcomes(&report)
        .into_iter()
        .filter(|(_, o)| *o == StageOutcome::Ran)
        .map(|(n, _)| n)
        .collect();
    assert_eq!(ran, ["lort", "t"]);
    let lort = statuses.iter().find(|s| s.name == "lort").unwrap();
    assert!(
        lort.reasons
            .iter()
            .any(|r| r.contains("targets.delta") && r.contains("0.9") && r.contains("0.8")),
        "{:?}",
        lort.reasons
    );
    let t = statuses.iter().find(|s| s.name == "t").unwrap();
    assert!(
        t.reasons.iter().any(|r| r.contains("upstream `lort`")),
        "{:?}",
        t.reasons
    );
}

#[test]
fn a_failing_stage_stops_its_downstream_and_siblings_finish() {
    let h = Harness::new();
    let text = PIPELINE.replace("head \"ce\"", "head \"fail-ce\"");
    let (_, report) = h.run(&text);
    assert!(report.failed());
    let o = outcomes(&report);
    assert!(o.contains(&("fail-ce".into(), StageOutcome::Failed)));
    assert!(o.contains(&("lort".into(), StageOutcome::Ran)));
    assert!(o.contains(&("t".into(), StageOutcome::Skipped)));
}

#[test]
fn a_panicking_stage_fails_like_an_error_and_siblings_finish() {
    let h = Harness::new();
    let text = PIPELINE.replace("head \"ce\"", "head \"panic-ce\"");
    let (_, report) = h.run(&text);
    assert!(report.failed());
    let o = outcomes(&report);
    assert!(
        o.contains(&("panic-ce".into(), StageOutcome::Failed)),
        "{o:?}"
    );
    assert!(o.contains(&("lort".into(), StageOutcome::Ran)));
    assert!(o.contains(&("t".into(), StageOutcome::Skipped)));
    // Nothing of the panicking stage was committed: a second run tries it again.
    let (_, again) = h.run(&text);
    assert!(outcomes(&again).contains(&("panic-ce".into(), StageOutcome::Failed)));
}

#[test]
fn a_corrupt_artifact_is_detected_and_rebuilt() {
    let h = Harness::new();
    let (statuses, _) = h.run(PIPELINE);
    h.runs();
    let key = statuses
        .iter()
        .find(|s| s.name == "ce")
        .unwrap()
        .key
        .clone()
        .unwrap();
    let file = h
        .dir
        .path()
        .join(".lortflow/objects")
        .join(key.as_str())
        .join("out.txt");
    std::fs::write(&file, "tampered").unwrap();
    let (_, report) = h.run(PIPELINE);
    let o = outcomes(&report);
    assert!(o.contains(&("ce".into(), StageOutcome::Ran)), "{o:?}");
    assert!(o.contains(&("t".into(), StageOutcome::Ran)), "{o:?}");
    assert!(o.contains(&("lort".into(), StageOutcome::Cached)), "{o:?}");
    assert_ne!(std::fs::read_to_string(&file).unwrap(), "tampered");
}

/// Every kind of stage that others read, and a sweep.
const EVERY_KIND: &str = r#"lortflow 1
dataset "d" { source "synthetic" kind="images" classes=3 per-class=4 test-per-class=2 size=8 }
backbone "b" { data "d"; arch "small-cnn"; train epochs=1 }
features "f" { backbone "b" }
head "ce" { features "f" }
head "ft" { features "f"; init "head" head="ce" }
sweep "s" { base "ce"; vary "train.lr" 0.1 0.3 }
evaluate "t" { heads "*" }
"#;

#[test]
fn renaming_any_upstream_stage_keeps_everything_cached() {
    let h = Harness::new();
    h.run(EVERY_KIND);
    assert_eq!(h.runs(), 8);
    // (old, new, whether head names change: the evaluation's table shows them).
    let renames = [
        ("\"d\"", "\"data\"", false),
        ("\"b\"", "\"net\"", false),
        ("\"f\"", "\"feats\"", false),
        ("\"ce\"", "\"plain\"", true),
        ("\"ft\"", "\"tuned\"", true),
        ("\"s\"", "\"lrs\"", true),
    ];
    let mut text = EVERY_KIND.to_string();
    for (old, new, names_heads) in renames {
        text = text.replace(old, new);
        let (statuses, report) = h.run(&text);
        for s in &statuses {
            if s.kind == "evaluate" && names_heads {
                assert_eq!(s.state, State::Stale, "{text}");
                assert!(
                    s.reasons
                        .iter()
                        .any(|r| r.starts_with("`heads` changed from")),
                    "{:?}",
                    s.reasons
                );
            } else {
                assert_eq!(
                    s.state,
                    State::Cached,
                    "renaming {old} to {new}: `{}` is {:?} because {:?}",
                    s.name,
                    s.state,
                    s.reasons
                );
            }
        }
        assert_eq!(
            h.runs(),
            usize::from(names_heads),
            "{:?}",
            outcomes(&report)
        );
    }
    // The renamed stages are recorded under their new names: a change after the rename is
    // explained against their own last run, not as a stage that never ran.
    let changed = text.replace("epochs=1", "epochs=2");
    let (statuses, _) = h.run(&changed);
    let net = statuses.iter().find(|s| s.name == "net").unwrap();
    assert_eq!(
        net.reasons,
        ["`weights.train.epochs` changed from 1 to 2"],
        "{statuses:?}"
    );
}

#[test]
fn a_downloadable_dataset_has_the_same_key_before_and_after_its_download() {
    /// Writes the "official" files into the source's root, as the real download does.
    struct Downloads;
    impl StageExecutor for Downloads {
        fn version(&self) -> &'static str {
            "test-1"
        }
        fn run(&self, cx: &StageContext<'_>) -> Result<serde_json::Value, StageError> {
            for (_, root) in lortflow_runtime::plan::external_files(cx.stage) {
                std::fs::create_dir_all(&root).unwrap();
                std::fs::write(root.join("train-images-idx3-ubyte.gz"), b"images").unwrap();
            }
            std::fs::write(cx.out_dir.join("index.json"), b"[]").unwrap();
            Ok(json!({}))
        }
    }
    let mut h = Harness::new();
    h.registry.register(StageKind::Dataset, Arc::new(Downloads));
    let text = r#"lortflow 1
dataset "d" { source "fashion-mnist" root="data/fm" download=#true }
backbone "b" { data "d"; arch "small-cnn"; train epochs=1 }
"#;
    let (before, _) = h.run(text);
    assert!(
        h.dir
            .path()
            .join("data/fm/train-images-idx3-ubyte.gz")
            .exists()
    );
    let (after, report) = h.run(text);
    assert_eq!(before[0].key, after[0].key);
    assert!(after.iter().all(|s| s.state == State::Cached), "{after:?}");
    assert_eq!(
        outcomes(&report),
        [
            ("d".into(), StageOutcome::Cached),
            ("b".into(), StageOutcome::Cached)
        ]
    );
    // Without `download`, the files' content is the key, and the folder must exist.
    let (own, _) = h.run(&text.replace(" download=#true", ""));
    assert_ne!(own[0].key, before[0].key);
    assert_eq!(own[0].state, State::Stale);
}

#[test]
fn two_stages_that_compute_the_same_thing_run_once() {
    let h = Harness::new();
    let text = r#"lortflow 1
dataset "a" { source "synthetic" kind="vectors" }
dataset "b" { source "synthetic" kind="vectors" }
head "ha" { features "a"; init "random" }
head "hb" { features "b"; init "random" }
evaluate "t" { heads "*" }
"#;
    let (statuses, report) = h.run(text);
    assert_eq!(statuses[0].key, statuses[1].key);
    assert_eq!(statuses[2].key, statuses[3].key);
    // One dataset, one head and the evaluation ran; the twins reuse the artifacts.
    assert_eq!(h.runs(), 3, "{:?}", outcomes(&report));
    assert_eq!(
        outcomes(&report),
        [
            ("a".into(), StageOutcome::Ran),
            ("b".into(), StageOutcome::Cached),
            ("ha".into(), StageOutcome::Ran),
            ("hb".into(), StageOutcome::Cached),
            ("t".into(), StageOutcome::Ran),
        ]
    );
}
