//! `lortflow run` / `status` / `inspect` / `cache` end to end on synthetic data: caching,
//! invalidation with reasons, failures, corruption, the lock and a killed run.

use std::time::{Duration, Instant};

use crate::cli::{Test, VECTORS, repo};

fn smoke() -> String {
    std::fs::read_to_string(repo().join("pipelines/smoke.kdl")).unwrap()
}

#[test]
fn smoke_pipeline_runs_end_to_end_then_is_fully_cached() {
    let t = Test::new().pipeline(&smoke());
    let first = t.args_run(["run", "pipeline.kdl"]).success();
    assert!(
        first.stdout.contains("results of `table`"),
        "{}",
        first.stdout
    );
    for head in [
        "ce",
        "lort-delta[delta=0.98]",
        "balanced-softmax",
        "tau-norm",
    ] {
        assert!(
            first.stdout.lines().any(|l| l.starts_with(head)),
            "no row for {head}:\n{}",
            first.stdout
        );
    }
    // `lort-delta[delta=0.9]` is the `lort` head under another name: one computation, run once.
    assert!(
        first.stderr.contains("18 ran, 1 cached, 0 failed"),
        "{}",
        first.stderr
    );
    assert!(
        first.stderr.contains("· cached  `lort-delta[delta=0.9]`"),
        "{}",
        first.stderr
    );
    assert_stage1_row_is_the_backbone_classifier(&t, &first.stdout);
    assert_tau_norm_maps_the_backbone_classifier(&t);
    let second = t.args_run(["run", "pipeline.kdl"]).success();
    assert!(
        second.stderr.contains("0 ran, 19 cached, 0 failed"),
        "{}",
        second.stderr
    );
    // The table is printed again from the cached evaluation.
    assert_eq!(first.stdout, second.stdout);
}

/// An `.npy` file of little-endian f32 (format 1.0, as `export` writes): its values.
pub(crate) fn read_npy_f32(path: &std::path::Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let header = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytes[10 + header..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// `method "tau-norm"` maps the backbone's classifier without training it: its test logits are
/// the features times the stage-1 fc rows divided by their norms (τ = 1, bias dropped).
fn assert_tau_norm_maps_the_backbone_classifier(t: &Test) {
    t.args_run(["export", "pipeline.kdl", "tiny-feats", "--to", "feats"])
        .success();
    t.args_run(["export", "pipeline.kdl", "tau-norm", "--to", "tau"])
        .success();
    let features = read_npy_f32(&t.path("feats/test_features.npy"));
    let weight = read_npy_f32(&t.path("feats/classifier_weight.npy"));
    let logits = read_npy_f32(&t.path("tau/test_logits_t0.npy"));
    let k = read_npy_f32(&t.path("feats/classifier_bias.npy")).len();
    let dim = weight.len() / k;
    assert_eq!(logits.len(), features.len() / dim * k);
    let rows: Vec<Vec<f32>> = weight
        .chunks(dim)
        .map(|w| {
            let norm = w.iter().map(|v| v * v).sum::<f32>().sqrt();
            w.iter().map(|v| v / norm).collect()
        })
        .collect();
    for (f, z) in features.chunks(dim).zip(logits.chunks(k)) {
        for (row, &z) in rows.iter().zip(z) {
            let expected: f32 = row.iter().zip(f).map(|(w, x)| w * x).sum();
            assert!(
                (expected - z).abs() <= 1e-4 * expected.abs().max(1.0),
                "τ-norm logit {z}, the normalised stage-1 classifier gives {expected}"
            );
        }
    }
}

/// The table starts with the backbone's own classifier, and its accuracy (on features without
/// test-time augmentation) is the one the backbone stage measured on the same test images.
fn assert_stage1_row_is_the_backbone_classifier(t: &Test, table: &str) {
    let first_row = table
        .lines()
        .skip_while(|l| !l.starts_with("head "))
        .nth(1)
        .unwrap_or_default();
    let cells: Vec<&str> = first_row.split_whitespace().collect();
    assert_eq!(cells[..3], ["stage-1", "backbone", "classifier"], "{table}");
    let inspect = t.args_run(["inspect", "pipeline.kdl", "tiny"]).success();
    let recorded: f64 = inspect
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("\"test_top1\": "))
        .and_then(|v| v.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("no test_top1 in\n{}", inspect.stdout));
    let metrics = walk(&t.path(".lortflow/objects"))
        .into_iter()
        .find(|p| p.ends_with("metrics.json"))
        .expect("the evaluation wrote metrics.json");
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(metrics).unwrap()).unwrap();
    let row = &metrics["heads"][0];
    assert_eq!(row["name"], "stage-1", "{row}");
    assert_eq!(row["kind"], "stage-1", "{row}");
    assert_eq!(row["stage"], "tiny-feats", "{row}");
    let top1 = row["top1"]["best"].as_f64().unwrap();
    // The backbone stage counts hits in f32 and divides in f32; both count the same images.
    assert!(
        (top1 - recorded).abs() < 1e-6,
        "stage-1 {top1} vs the backbone's {recorded}"
    );
    // The heads follow, each with the recipe its plan resolved (`ce`: `train epochs=30`
    // over the preset's fresh head, lr 0.2).
    let ce = &metrics["heads"][1];
    assert_eq!(ce["kind"], "head", "{ce}");
    assert_eq!(ce["name"], "ce", "{ce}");
    assert_eq!(ce["recipe"]["epochs"], 30, "{ce}");
    assert_eq!(ce["recipe"]["init"], "random", "{ce}");
    assert_eq!(ce["recipe"]["lr"], 0.2, "{ce}");
}

#[test]
fn a_parameter_change_reruns_only_that_head_and_status_says_why() {
    let t = Test::new().pipeline(VECTORS);
    t.args_run(["run", "pipeline.kdl"]).success();
    let edited = VECTORS.replace("delta=0.9", "delta=0.8");
    let t = t.file("pipeline.kdl", &edited);
    let status = t.args_run(["status", "pipeline.kdl"]).success();
    let lort = status
        .stdout
        .lines()
        .find(|l| l.contains(" lort "))
        .expect("a lort line");
    assert!(lort.starts_with("stale"), "{}", status.stdout);
    assert!(
        lort.contains("`targets.delta` changed from 0.9 to 0.8"),
        "{}",
        status.stdout
    );
    assert!(
        status
            .stdout
            .lines()
            .any(|l| l.starts_with("cached ") && l.contains(" ce ")),
        "{}",
        status.stdout
    );
    let json = t
        .args_run(["status", "--format", "json", "pipeline.kdl"])
        .success();
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let stages = v["stages"].as_array().unwrap();
    assert!(
        stages
            .iter()
            .all(|s| s["name"].is_string() && s["state"].is_string() && s["reasons"].is_array())
    );
    let ran = t.args_run(["run", "pipeline.kdl"]).success();
    assert!(ran.stderr.contains("2 ran, 3 cached"), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("✓ ran     `lort`") && ran.stderr.contains("✓ ran     `table`"),
        "{}",
        ran.stderr
    );
}

#[test]
fn set_overrides_are_checked_like_the_file() {
    let t = Test::new().pipeline(VECTORS);
    let bad = t
        .args_run(["run", "pipeline.kdl", "--set", "lort.delta=1.5"])
        .code(1);
    assert!(bad.stderr.contains("must be in [0, 1)"), "{}", bad.stderr);
    let dry = t
        .args_run([
            "run",
            "pipeline.kdl",
            "--dry-run",
            "--set",
            "lort.train.lr=0.1",
        ])
        .success();
    assert!(
        dry.stdout
            .contains("would run (dry run: nothing was executed)"),
        "{}",
        dry.stdout
    );
    assert!(
        !t.path(".lortflow/objects")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some()),
        "dry run wrote artifacts"
    );
}

#[test]
fn a_failing_stage_stops_its_downstream_and_siblings_finish() {
    let text = format!(
        "{VECTORS}\ndataset \"missing\" {{ source \"fashion-mnist\" root=\"nowhere\" }}\n\
         backbone \"b\" {{ data \"missing\"; arch \"small-cnn\"; train epochs=1 }}\n\
         features \"f\" {{ backbone \"b\" }}\nhead \"h\" {{ features \"f\" }}\nevaluate \"other\" {{ heads \"h\" }}\n"
    );
    let t = Test::new().pipeline(&text);
    let ran = t.args_run(["run", "pipeline.kdl"]).code(1);
    assert!(ran.stderr.contains("reads `nowhere`"), "{}", ran.stderr);
    assert!(ran.stderr.contains("download=#true"), "{}", ran.stderr);
    assert!(ran.stderr.contains("✗ failed  `missing`"), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("✓ ran     `bs`") && ran.stderr.contains("✓ ran     `lort`"),
        "{}",
        ran.stderr
    );
    assert!(ran.stderr.contains("- skipped `b`"), "{}", ran.stderr);
    // `table` evaluates every head, `h` included: it cannot run either.
    assert!(ran.stderr.contains("- skipped `table`"), "{}", ran.stderr);
}

#[test]
fn a_corrupt_artifact_is_reported_and_rebuilt() {
    let t = Test::new().pipeline(VECTORS);
    t.args_run(["run", "pipeline.kdl"]).success();
    let inspect = t
        .args_run(["inspect", "pipeline.kdl", "ce", "--format", "json"])
        .success();
    let v: serde_json::Value = serde_json::from_str(&inspect.stdout).unwrap();
    let dir = std::path::PathBuf::from(v[0]["dir"].as_str().unwrap());
    std::fs::write(dir.join("head.json"), "{}").unwrap();
    let ran = t.args_run(["run", "pipeline.kdl"]).success();
    assert!(
        ran.stderr
            .contains("the cached artifact of `ce` is corrupt"),
        "{}",
        ran.stderr
    );
    assert!(ran.stderr.contains("✓ ran     `ce`"), "{}", ran.stderr);
    assert_ne!(
        std::fs::read_to_string(dir.join("head.json")).unwrap(),
        "{}"
    );
}

#[test]
fn a_second_concurrent_run_fails_fast_naming_the_holder() {
    let t = Test::new().pipeline(VECTORS);
    std::fs::create_dir_all(t.path(".lortflow")).unwrap();
    let mut holder = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let lock = serde_json::json!({
        "pid": holder.id(), "started_at": "2026-11-26 10:00:00 UTC", "started_at_unix": 1.0, "token": "other-run",
    });
    std::fs::write(t.path(".lortflow/lock"), lock.to_string()).unwrap();
    let start = Instant::now();
    let ran = t.args_run(["run", "pipeline.kdl"]);
    holder.kill().unwrap();
    let _ = holder.wait();
    assert_ne!(ran.code, 0);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "should fail at once"
    );
    assert!(
        ran.stderr.contains(&format!("pid {}", holder.id())),
        "{}",
        ran.stderr
    );
    assert!(ran.stderr.contains("--store"), "{}", ran.stderr);
    // The holder is gone: its lock is stale and the next run takes it over.
    t.args_run(["run", "pipeline.kdl"]).success();
}

#[test]
fn a_killed_run_leaves_nothing_trusted_and_the_next_run_completes() {
    let text = r#"lortflow 1
dataset "d" { source "synthetic" kind="images" classes=4 per-class=200 test-per-class=10 size=16 }
backbone "b" { data "d"; arch "small-cnn"; train epochs=200 batch-size=32 lr=0.05 }
features "f" { backbone "b" }
head "ce" { features "f" }
evaluate "t" { heads "*" }
"#;
    let t = Test::new().pipeline(text);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lortflow"))
        .args(["run", "pipeline.kdl"])
        .current_dir(t.dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the backbone has written its first epoch checkpoint, then SIGKILL.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if checkpointed(&t) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    let _ = child.wait();
    // The backbone is not in the store; a shorter run (same stage, fewer epochs) must not
    // mistake the half-trained one for its own, and the original completes on rerun.
    let status = t.args_run(["status", "pipeline.kdl"]).success();
    assert!(
        status
            .stdout
            .lines()
            .any(|l| l.starts_with("stale") && l.contains(" b ")),
        "{}",
        status.stdout
    );
    let edited = text.replace("epochs=200", "epochs=2");
    let t = t.file("pipeline.kdl", &edited);
    let ran = t.args_run(["run", "pipeline.kdl"]).success();
    assert!(
        ran.stderr.contains("✓ ran     `b`") && ran.stderr.contains(", 0 failed"),
        "{}",
        ran.stderr
    );
    assert!(
        walk(&t.path(".lortflow/tmp")).is_empty(),
        "staging leftovers were not cleaned"
    );
}

#[test]
fn inspect_shows_class_counts_and_cache_ls_lists_artifacts() {
    let t = Test::new().pipeline(VECTORS);
    t.args_run(["run", "pipeline.kdl"]).success();
    let inspect = t.args_run(["inspect", "pipeline.kdl", "d"]).success();
    assert!(
        inspect.stdout.contains("class    train  group"),
        "{}",
        inspect.stdout
    );
    assert!(
        inspect.stdout.contains("    0       80  many"),
        "{}",
        inspect.stdout
    );
    let ls = t.args_run(["cache", "ls", "pipeline.kdl"]).success();
    assert!(ls.stdout.contains("5 artifacts"), "{}", ls.stdout);
    // After an edit, gc removes the artifact nothing references any more.
    let t = t.file("pipeline.kdl", &VECTORS.replace("delta=0.9", "delta=0.7"));
    t.args_run(["run", "pipeline.kdl"]).success();
    let gc = t.args_run(["cache", "gc", "pipeline.kdl"]).success();
    assert!(gc.stdout.contains("removed 2 artifacts"), "{}", gc.stdout);
}

/// Whether a backbone has written an epoch checkpoint in the store's work directory.
fn checkpointed(t: &Test) -> bool {
    walk(&t.path(".lortflow/work"))
        .iter()
        .any(|p| p.ends_with("state.json"))
}

/// Every file under `dir`, recursively (none when it does not exist).
pub(crate) fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn export_writes_npy_files_python_can_read() {
    let t = Test::new().pipeline(VECTORS);
    let missing = t
        .args_run(["export", "pipeline.kdl", "d", "--to", "out"])
        .code(2);
    assert!(
        missing
            .stderr
            .contains("run `lortflow run pipeline.kdl --only d` first"),
        "{}",
        missing.stderr
    );
    t.args_run(["run", "pipeline.kdl"]).success();
    let ran = t
        .args_run(["export", "pipeline.kdl", "d", "--to", "out"])
        .success();
    for file in [
        "train_features.npy",
        "train_labels.npy",
        "test_features.npy",
        "test_labels.npy",
        "meta.json",
    ] {
        assert!(ran.stdout.contains(file), "{}", ran.stdout);
    }
    let header = std::fs::read(t.path("out/test_features.npy")).unwrap();
    assert_eq!(&header[..6], b"\x93NUMPY");
    let text = String::from_utf8_lossy(&header[..128]);
    assert!(
        text.contains("'descr': '<f4'") && text.contains("(100, 16)"),
        "{text}"
    );
}

/// Every artifact's manifest, by key: equal snapshots mean the store holds the same artifacts.
fn manifests(t: &Test) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut all: Vec<_> = walk(&t.path(".lortflow/objects"))
        .into_iter()
        .filter(|p| p.ends_with("manifest.json"))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    all.sort();
    all
}

#[cfg(unix)]
#[test]
fn an_interrupted_force_keeps_the_artifact_it_was_replacing() {
    let text = r#"lortflow 1
dataset "d" { source "synthetic" kind="images" classes=4 per-class=150 test-per-class=10 size=16 }
backbone "b" { data "d"; arch "small-cnn"; train epochs=8 batch-size=32 lr=0.05 }
features "f" { backbone "b" }
head "ce" { features "f" }
evaluate "t" { heads "*" }
"#;
    let t = Test::new().pipeline(text);
    t.args_run(["run", "pipeline.kdl"]).success();
    let before = manifests(&t);
    assert_eq!(before.len(), 5);
    for signal in ["INT", "KILL"] {
        // Each forced run starts from scratch, not from the last one's checkpoint.
        let _ = std::fs::remove_dir_all(t.path(".lortflow/work"));
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lortflow"))
            .args(["run", "pipeline.kdl", "--force", "b"])
            .current_dir(t.dir.path())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Interrupt the forced re-train once it has a first epoch behind it and more to go.
        let deadline = Instant::now() + Duration::from_secs(120);
        while !checkpointed(&t) {
            assert!(
                Instant::now() < deadline,
                "the forced backbone never checkpointed"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "the forced run ended before it could be interrupted"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        if signal == "INT" {
            assert_eq!(output.status.code(), Some(130), "{stderr}");
            assert!(stderr.contains("interrupted:"), "{stderr}");
        }
        // The artifact being replaced is still there, unchanged and trusted.
        assert_eq!(manifests(&t), before, "after SIG{signal}");
        let status = t.args_run(["status", "pipeline.kdl"]).success();
        assert!(
            status.stdout.lines().all(|l| !l.starts_with("stale")),
            "after SIG{signal}:\n{}",
            status.stdout
        );
    }
    let ran = t.args_run(["run", "pipeline.kdl"]).success();
    assert!(ran.stderr.contains("0 ran, 5 cached"), "{}", ran.stderr);
    // A forced run that completes replaces the artifact.
    t.args_run(["run", "pipeline.kdl", "--force", "ce"])
        .success();
    let after = manifests(&t);
    assert_eq!(after.len(), 5);
    assert_ne!(after, before);
    assert!(walk(&t.path(".lortflow/tmp")).is_empty());
}

#[test]
fn renaming_stages_or_moving_the_project_keeps_the_cache() {
    let t = crate::hostile::imported();
    let first = t.args_run(["run", "pipeline.kdl"]).success();
    assert!(first.stderr.contains("3 ran, 0 cached"), "{}", first.stderr);
    // A renamed dataset is the same input to everything below it.
    let renamed = crate::hostile::IMPORTED.replace("\"k\"", "\"kfeat\"");
    let t = t.file("pipeline.kdl", &renamed);
    let ran = t.args_run(["run", "pipeline.kdl"]).success();
    assert!(ran.stderr.contains("0 ran, 3 cached"), "{}", ran.stderr);
    // A renamed head re-runs only the evaluation, whose table is labelled with head names.
    let renamed = renamed.replace("\"ce\"", "\"plain\"");
    let t = t.file("pipeline.kdl", &renamed);
    let status = t.args_run(["status", "pipeline.kdl"]).success();
    let table = status.stdout.lines().find(|l| l.contains(" t ")).unwrap();
    assert!(
        table.starts_with("stale") && table.contains(r#"`heads` changed from ["ce"] to ["plain"]"#),
        "{}",
        status.stdout
    );
    let ran = t.args_run(["run", "pipeline.kdl"]).success();
    assert!(ran.stderr.contains("1 ran, 2 cached"), "{}", ran.stderr);
    // The project moved elsewhere, store and data with it: paths are keyed as written.
    let moved = Test::new();
    std::fs::remove_dir(moved.dir.path()).unwrap();
    std::fs::rename(t.dir.path(), moved.dir.path()).unwrap();
    let ran = moved.args_run(["run", "pipeline.kdl"]).success();
    assert!(ran.stderr.contains("0 ran, 3 cached"), "{}", ran.stderr);
}

/// A pipeline that imports the PyTorch fixture `checkpoint` (small-cnn over 10 classes of
/// 1 x 28 x 28 images) as backbone `b`.
pub(crate) fn imported_backbone(checkpoint: &str, extra: &str) -> String {
    format!(
        r#"lortflow 1
dataset "d" {{
    source "synthetic" kind="images" classes=10 per-class=12 test-per-class=4 size=28 channels=1
    long-tail "exp" imbalance-ratio=4
}}
backbone "b" {{
    data "d"
    arch "small-cnn"
    checkpoint "{checkpoint}"
    normalize "none"
}}
features "f" {{ backbone "b" }}
head "h" {{ features "f"; train epochs=2 }}
evaluate "t" {{ heads "*" }}
{extra}
"#
    )
}

pub(crate) fn checkpoint_fixture(name: &str) -> String {
    repo()
        .join("stdlib/tests/fixtures/checkpoints")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn a_pytorch_checkpoint_runs_exports_and_reimports_to_the_same_backbone() {
    let t = Test::new().pipeline(&imported_backbone(
        &checkpoint_fixture("small_cnn_classifier_balancing.pth"),
        "",
    ));
    let ran = t.args_run(["run", "pipeline.kdl"]).success();
    assert!(ran.stderr.contains("0 failed"), "{}", ran.stderr);
    let inspect = t.args_run(["inspect", "pipeline.kdl", "b"]).success();
    assert!(
        inspect.stdout.contains("state_dict.feat_model.module."),
        "the import says where it found the network:\n{}",
        inspect.stdout
    );
    // Out as PyTorch weights, and back in: the same backbone, so the same stage-1 accuracy.
    t.args_run(["export", "pipeline.kdl", "b", "--to", "out"])
        .success();
    for file in [
        "backbone.safetensors",
        "normalization.json",
        "backbone.json",
    ] {
        assert!(t.path(&format!("out/{file}")).is_file(), "{file}");
    }
    let again = Test::new().pipeline(&imported_backbone(
        &t.path("out/backbone.safetensors").display().to_string(),
        "",
    ));
    again.args_run(["run", "pipeline.kdl"]).success();
    // Same weights, same features (the dataset is the same seeded synthetic one).
    for t in [&t, &again] {
        t.args_run(["export", "pipeline.kdl", "f", "--to", "features"])
            .success();
    }
    let features = |t: &Test| std::fs::read(t.path("features/test_features.npy")).unwrap();
    assert_eq!(features(&t), features(&again));
}

#[test]
fn a_broken_checkpoint_fails_once_with_its_reason_and_path() {
    let bytes = std::fs::read(checkpoint_fixture("small_cnn_legacy.pth")).expect("the fixture");
    let t = Test::new().pipeline(&imported_backbone("cut.pth", ""));
    std::fs::write(t.path("cut.pth"), &bytes[..bytes.len() / 2]).unwrap();
    let run = t.args_run(["run", "pipeline.kdl"]).code(1);
    let reason = format!("truncated at byte {}", bytes.len() / 2);
    assert_eq!(
        run.stderr.matches(&reason).count(),
        1,
        "the error once:\n{}",
        run.stderr
    );
    assert_eq!(run.stderr.matches("cut.pth").count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("failed: `b`"), "{}", run.stderr);
    // A missing file: its path once too.
    std::fs::remove_file(t.path("cut.pth")).unwrap();
    let run = t.args_run(["run", "pipeline.kdl"]).code(1);
    assert_eq!(run.stderr.matches("cut.pth").count(), 1, "{}", run.stderr);
}

/// A backbone that trains, its features and one head: the data-parallel tests' pipeline.
const DATA_PARALLEL: &str = r#"lortflow 1
dataset "synth" {
    source "synthetic" kind="images" classes=4 per-class=20 test-per-class=5 size=12 channels=1
    long-tail "exp" imbalance-ratio=4
}
backbone "net" {
    data "synth"
    arch "small-cnn"
    train epochs=1 batch-size=16
}
features "feats" { backbone "net" }
head "ce" { features "feats"; method "ce"; train epochs=2 }
"#;

/// `--devices 2` trains the backbone data-parallel: its key names the device count, so `status`
/// says why it is stale and what follows it re-runs; `defaults devices 2` is the same run; one
/// device keeps the keys it had; a batch that does not split among the devices fails the stage
/// with what to change.
#[test]
fn devices_train_the_backbone_data_parallel_and_enter_its_key() {
    let t = Test::new().pipeline(DATA_PARALLEL);
    t.args_run(["run", "pipeline.kdl"]).success();
    let status = t
        .args_run(["status", "pipeline.kdl", "--devices", "2"])
        .success();
    let line = |name: &str| {
        status
            .stdout
            .lines()
            .find(|l| l.contains(&format!(" {name} ")) || l.ends_with(&format!(" {name}")))
            .unwrap_or_else(|| panic!("no line for {name}:\n{}", status.stdout))
            .to_string()
    };
    assert!(
        line("net").starts_with("stale") && line("net").contains("devices"),
        "{}",
        status.stdout
    );
    assert!(line("synth").starts_with("cached"), "{}", status.stdout);
    let ran = t
        .args_run(["-v", "run", "pipeline.kdl", "--devices", "2"])
        .success();
    assert!(ran.stderr.contains("3 ran, 1 cached"), "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("training data-parallel, one replica per device")
            && ran.stderr.contains("devices=2"),
        "{}",
        ran.stderr
    );
    let t = t.file(
        "pipeline.kdl",
        &DATA_PARALLEL.replace("lortflow 1\n", "lortflow 1\ndefaults { devices 2 }\n"),
    );
    let again = t.args_run(["run", "pipeline.kdl"]).success();
    assert!(again.stderr.contains("0 ran, 4 cached"), "{}", again.stderr);
    // One device: the first run's artifacts, still cached.
    let one = t
        .args_run(["run", "pipeline.kdl", "--devices", "1"])
        .success();
    assert!(one.stderr.contains("0 ran, 4 cached"), "{}", one.stderr);

    let failed = t
        .args_run(["run", "pipeline.kdl", "--devices", "3"])
        .code(1);
    assert!(
        failed
            .stderr
            .contains("the batch of 16 images does not split evenly among 3 devices; use a batch size that is a multiple of 3"),
        "{}",
        failed.stderr
    );
    t.args_run(["run", "pipeline.kdl", "--devices", "0"])
        .code(2);
}

/// With `--executor slurm`, a CUDA run on several devices asks Slurm for that many GPUs for the
/// backbone (and the features), unless the profile asks for more; the other stages ask for
/// none. A dry run prints the `sbatch` commands without Slurm or a GPU.
#[test]
fn a_data_parallel_slurm_job_asks_for_its_devices() {
    let t = Test::new().pipeline(DATA_PARALLEL);
    let sbatch = |args: &[&str]| {
        let mut all = vec!["run", "pipeline.kdl", "--executor", "slurm", "--dry-run"];
        all.extend_from_slice(args);
        let dry = t.args_run(all).success();
        let line = |name: &str| {
            dry.stdout
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{name}: sbatch")))
                .unwrap_or_else(|| panic!("no job for {name}:\n{}", dry.stdout))
                .to_string()
        };
        (line("synth"), line("net"), line("feats"))
    };
    let (data, net, feats) = sbatch(&["--backend", "cuda", "--devices", "4"]);
    assert!(
        net.contains("--gres=gpu:4") && feats.contains("--gres=gpu:4"),
        "{net}\n{feats}"
    );
    assert!(!data.contains("--gres"), "{data}");
    // On the CPU the replicas are threads: no GPUs.
    let (_, net, _) = sbatch(&["--devices", "4"]);
    assert!(!net.contains("--gres"), "{net}");
    // A profile that asks for more keeps its number.
    let t = t.file("lortflow-slurm.kdl", "stage \"backbone\" { gpus 8 }\n");
    let dry = t
        .args_run([
            "run",
            "pipeline.kdl",
            "--executor",
            "slurm",
            "--dry-run",
            "--backend",
            "cuda",
            "--devices",
            "4",
        ])
        .success();
    assert!(dry.stdout.contains("--gres=gpu:8"), "{}", dry.stdout);
}
