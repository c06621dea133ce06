//! `--backend wgpu` through the real CLI: the smoke pipeline end to end on the device path (on CI,
//! Mesa's software Vulkan), against the CPU; and the errors of a machine or a build without it.

use crate::cli::{Test, repo};

fn smoke() -> String {
    std::fs::read_to_string(repo().join("pipelines/smoke.kdl")).unwrap()
}

/// Whether the wgpu tests must run: `scripts/test` sets `LORTFLOW_TEST_WGPU=1` once Mesa's
/// Vulkan drivers are installed. Elsewhere a machine without an adapter skips them.
#[cfg(feature = "wgpu")]
fn required() -> bool {
    std::env::var("LORTFLOW_TEST_WGPU").is_ok_and(|v| v == "1")
}

/// The evaluation's `metrics.json` in `store`.
#[cfg(feature = "wgpu")]
fn metrics(store: &std::path::Path) -> serde_json::Value {
    let path = crate::run::walk(&store.join("objects"))
        .into_iter()
        .find(|p| p.ends_with("metrics.json"))
        .expect("the evaluation wrote metrics.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[cfg(feature = "wgpu")]
#[test]
fn the_smoke_pipeline_runs_on_wgpu_and_matches_the_cpu() {
    let t = Test::new().pipeline(&smoke());
    let gpu = t.args_run(["run", "pipeline.kdl", "--backend", "wgpu", "--store", "gpu"]);
    if gpu.code != 0 && !required() && gpu.stderr.contains("wgpu backend is not usable") {
        eprintln!("skipped (no wgpu adapter): {}", gpu.stderr);
        return;
    }
    let gpu = gpu.success();
    assert!(gpu.stdout.contains("results of `table`"), "{}", gpu.stdout);
    assert!(
        gpu.stderr.contains("18 ran, 1 cached, 0 failed"),
        "{}",
        gpu.stderr
    );
    // Cached by backend: a second run on wgpu runs nothing.
    let again = t
        .args_run(["run", "pipeline.kdl", "--backend", "wgpu", "--store", "gpu"])
        .success();
    assert!(
        again.stderr.contains("0 ran, 19 cached, 0 failed"),
        "{}",
        again.stderr
    );
    t.args_run(["run", "pipeline.kdl", "--store", "cpu"])
        .success();
    let (gpu, cpu) = (metrics(&t.path("gpu")), metrics(&t.path("cpu")));
    let (gpu_heads, cpu_heads) = (
        gpu["heads"].as_array().unwrap(),
        cpu["heads"].as_array().unwrap(),
    );
    assert_eq!(gpu_heads.len(), cpu_heads.len());
    // Every number of the table comes from the device, so it cannot be the CPU's to the bit: the
    // backbone's 90 SGD steps drift apart by rounding (the unit tests hold single steps, heads and
    // extraction to 1e-5). Measured: three of 16 rows differ by one test image of 120.
    let mut total = 0.0;
    for (g, c) in gpu_heads.iter().zip(cpu_heads) {
        assert_eq!(g["name"], c["name"]);
        let (a, b) = (
            g["top1"]["best"].as_f64().unwrap(),
            c["top1"]["best"].as_f64().unwrap(),
        );
        assert!(
            (a - b).abs() <= 0.025,
            "{}: top-1 {a} on wgpu, {b} on the CPU",
            g["name"]
        );
        total += (a - b).abs();
    }
    let mean = total / gpu_heads.len() as f64;
    assert!(mean <= 0.01, "top-1 differs by {mean} on average");
}

/// A PyTorch checkpoint imported onto the device: its features are the CPU's (no training in
/// between, so only rounding differs).
#[cfg(feature = "wgpu")]
#[test]
fn a_pytorch_checkpoint_on_wgpu_gives_the_cpus_features() {
    use crate::run::{checkpoint_fixture, imported_backbone, read_npy_f32};
    let t = Test::new().pipeline(&imported_backbone(&checkpoint_fixture("small_cnn.pth"), ""));
    for (backend, store) in [("wgpu", "gpu"), ("cpu", "cpu")] {
        let ran = t.args_run([
            "run",
            "pipeline.kdl",
            "--backend",
            backend,
            "--store",
            store,
        ]);
        if ran.code != 0 && !required() && ran.stderr.contains("wgpu backend is not usable") {
            eprintln!("skipped (no wgpu adapter): {}", ran.stderr);
            return;
        }
        ran.success();
        let to = format!("{store}-features");
        t.args_run([
            "export",
            "pipeline.kdl",
            "f",
            "--backend",
            backend,
            "--store",
            store,
            "--to",
            &to,
        ])
        .success();
    }
    let gpu = read_npy_f32(&t.path("gpu-features/test_features.npy"));
    let cpu = read_npy_f32(&t.path("cpu-features/test_features.npy"));
    assert_eq!(gpu.len(), cpu.len());
    let scale = cpu.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    for (i, (a, b)) in gpu.iter().zip(&cpu).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * scale,
            "feature {i}: {a} on wgpu, {b} on the CPU"
        );
    }
}

/// A machine whose Vulkan loader finds no driver: the run stops before any work with what to
/// install, and nothing is written. (Linux: Metal on macOS takes no Vulkan driver.)
#[cfg(all(feature = "wgpu", target_os = "linux"))]
#[test]
fn without_a_vulkan_driver_wgpu_says_what_to_install() {
    let missing = "/nonexistent/lortflow-test-icd.json";
    let t = Test::new()
        .pipeline(&smoke())
        .env("VK_ICD_FILENAMES", missing)
        .env("VK_DRIVER_FILES", missing);
    let ran = t.args_run(["run", "pipeline.kdl", "--backend", "wgpu"]);
    assert_ne!(ran.code, 0, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("the wgpu backend is not usable")
            && ran.stderr.contains("mesa-vulkan-drivers"),
        "{}",
        ran.stderr
    );
    assert!(!ran.stderr.contains("panicked"), "{}", ran.stderr);
    let objects = t.path(".lortflow/objects");
    assert!(!objects.exists() || crate::run::walk(&objects).is_empty());
}

/// A lortflow built without the feature says how to get it, for `--backend wgpu` and for
/// `defaults backend "wgpu"` alike.
#[cfg(not(feature = "wgpu"))]
#[test]
fn a_build_without_wgpu_says_how_to_get_it() {
    let t = Test::new().pipeline(&smoke().replace("backend \"cpu\"", "backend \"wgpu\""));
    for args in [
        vec!["run", "pipeline.kdl"],
        vec!["run", "pipeline.kdl", "--backend", "wgpu"],
    ] {
        let ran = t.args_run(&args);
        assert_ne!(ran.code, 0, "{}", ran.stderr);
        assert!(ran.stderr.contains("--features wgpu"), "{}", ran.stderr);
    }
}
