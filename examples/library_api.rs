//! Building and running a pipeline from Rust through the library API, without the CLI.
//!
//!     cargo run --release --example library_api
//!
//! The pipeline text could come from anywhere (a generator, a notebook, a web form); here it is
//! a string. The store is a temporary directory.

use std::path::Path;

use lortflow_lang::ir::Backend;
use lortflow_lang::{MemoryLoader, check_text};
use lortflow_runtime::plan::expand;
use lortflow_runtime::{CancelToken, Engine, RunRequest, SilentReporter, Store};

const PIPELINE: &str = r#"lortflow 1
dataset "d" {
    source "synthetic" kind="vectors" classes=10 per-class=200 test-per-class=50 dim=32 noise=1.5
    long-tail "exp" imbalance-ratio=50
    groups many=100 few=20
}
head "ce" { features "d"; method "ce" }
head "bs" { features "d"; method "balanced-softmax" }
head "la" { features "d"; method "logit-adjust" form="loss" }
evaluate "table" { heads "*" }
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. Check: all problems at once, as diagnostics with spans.
    let checked = check_text(
        Path::new("example.kdl"),
        PIPELINE.to_string(),
        &MemoryLoader::default(),
    );
    for d in &checked.diagnostics {
        eprintln!("{}: {}", d.code, d.message);
    }
    if checked.has_errors() {
        return Err("the pipeline has errors".into());
    }

    // 2. Plan: sweeps expanded, `--set`-style overrides applied.
    let overrides = [lortflow_runtime::Override::parse("la.tau=1.5")?];
    let plan = expand(&checked.pipeline, &overrides).map_err(|d| format!("{d:?}"))?;

    // 3. An engine: the plan, a store to cache into, the standard stages and a backend. `run`
    //    takes the store's lock, computes keys and staleness, and executes what is stale.
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join(".lortflow"))?;
    let engine = Engine::new(
        plan,
        store,
        lortflow_stdlib::stages::registry(),
        Backend::Cpu,
        "example.kdl",
    );
    let request = RunRequest {
        jobs: 2,
        ..RunRequest::default()
    };
    let report = engine.run(&request, &CancelToken::new(), &SilentReporter)?;
    eprintln!("{}", report.summary());

    // 4. Results: the evaluation's summary holds the printed table; metrics.json the rest.
    for (i, artifact) in &report.artifacts {
        if engine.plan()[*i].name == "table" {
            println!(
                "{}",
                artifact.manifest().summary["table"]
                    .as_str()
                    .unwrap_or_default()
            );
            let metrics = std::fs::read_to_string(artifact.file("metrics.json"))?;
            println!("metrics.json: {} bytes", metrics.len());
        }
    }
    Ok(())
}
