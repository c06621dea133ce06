//! `--executor slurm` against a real one-node Slurm (`scripts/slurm up`; `scripts/test` starts it
//! as root and sets `LORTFLOW_TEST_SLURM=1`): the same table as the local executor, a job
//! cancelled mid-training fails cleanly and the re-run resumes from its checkpoint, and a killed
//! submitter's re-run waits for the job still running instead of submitting a second one.

use std::time::{Duration, Instant};

use crate::cli::{Test, repo};
use crate::run::walk;

fn enabled() -> bool {
    if std::env::var_os("LORTFLOW_TEST_SLURM").is_some_and(|v| v == "1") {
        return true;
    }
    eprintln!("not run: set LORTFLOW_TEST_SLURM=1 with a cluster up (scripts/slurm up)");
    false
}

/// Poll quickly: the cluster is this machine.
const PROFILE: &str = "poll-interval 1\ntime \"00:10:00\"\n";

fn results(stdout: &str) -> &str {
    stdout.find("results of").map_or(stdout, |at| &stdout[at..])
}

#[test]
fn the_smoke_pipeline_gives_the_same_table_through_slurm() {
    if !enabled() {
        return;
    }
    let smoke = std::fs::read_to_string(repo().join("pipelines/smoke.kdl")).unwrap();
    let t = Test::new()
        .pipeline(&smoke)
        .file("lortflow-slurm.kdl", PROFILE);
    let dry = t
        .args_run(["run", "pipeline.kdl", "--executor", "slurm", "--dry-run"])
        .success();
    assert!(
        dry.stdout
            .contains("tiny: sbatch --parsable --job-name=lortflow-tiny")
            && dry.stdout.contains("--time=00:10:00"),
        "{}",
        dry.stdout
    );
    let slurm = t
        .args_run(["run", "pipeline.kdl", "--executor", "slurm"])
        .success();
    assert!(slurm.stderr.contains("Slurm job"), "{}", slurm.stderr);
    let local = t
        .args_run(["run", "pipeline.kdl", "--store", "local-store"])
        .success();
    assert_eq!(results(&slurm.stdout), results(&local.stdout));
    // The jobs' records are gone once they ended; their scripts and logs stay.
    let jobs: Vec<String> = std::fs::read_dir(t.path(".lortflow/jobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(jobs.iter().any(|j| j.ends_with(".log")), "{jobs:?}");
    assert!(!jobs.iter().any(|j| j.ends_with(".job")), "{jobs:?}");
}

const LONG: &str = r#"lortflow 1
dataset "d" { source "synthetic" kind="images" classes=4 per-class=200 test-per-class=10 size=16 }
backbone "b" { data "d"; arch "small-cnn"; train epochs=60 batch-size=32 lr=0.05 }
features "f" { backbone "b" }
head "ce" { features "f" }
evaluate "t" { heads "*" }
"#;

/// The id of the job running the backbone, once it has a checkpoint.
fn job_with_checkpoint(t: &Test) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let checkpointed = walk(&t.path(".lortflow/work"))
            .iter()
            .any(|p| p.ends_with("state.json"));
        let record = walk(&t.path(".lortflow/jobs"))
            .into_iter()
            .find(|p| p.extension().is_some_and(|e| e == "job"));
        if checkpointed && let Some(record) = record {
            return std::fs::read_to_string(record).unwrap().trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no checkpointed job within 120 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn submit_in_background(t: &Test) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_lortflow"))
        .args(["run", "pipeline.kdl", "--executor", "slurm"])
        .current_dir(t.dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_cancelled_job_fails_cleanly_and_the_rerun_resumes_from_its_checkpoint() {
    if !enabled() {
        return;
    }
    let t = Test::new()
        .pipeline(LONG)
        .file("lortflow-slurm.kdl", PROFILE);
    let child = submit_in_background(&t);
    let job = job_with_checkpoint(&t);
    let cancelled = std::process::Command::new("scancel")
        .arg(&job)
        .status()
        .unwrap();
    assert!(cancelled.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("Slurm job {job} ended CANCELLED")),
        "{stderr}"
    );
    assert!(stderr.contains("upstream `b` did not finish"), "{stderr}");
    // Nothing half-made is trusted; the re-run continues the backbone from its last epoch.
    assert!(
        !walk(&t.path(".lortflow/objects"))
            .iter()
            .any(|p| p.to_string_lossy().contains("stage-"))
    );
    let rerun = t
        .args_run(["run", "pipeline.kdl", "--executor", "slurm"])
        .success();
    let log = walk(&t.path(".lortflow/jobs"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(rerun.stderr.contains(", 0 failed"), "{}", rerun.stderr);
    // The backbone's log is its second job's (sbatch truncates it); its first progress line
    // comes after the epochs the cancelled job checkpointed.
    let first_epoch: usize = log
        .split("epoch ")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no progress line in\n{log}"));
    assert!(first_epoch > 1, "the backbone's job did not resume:\n{log}");
}

#[test]
fn a_killed_submitter_rerun_waits_for_the_job_still_running() {
    if !enabled() {
        return;
    }
    let t = Test::new()
        .pipeline(LONG)
        .file("lortflow-slurm.kdl", PROFILE);
    let mut child = submit_in_background(&t);
    let job = job_with_checkpoint(&t);
    child.kill().unwrap();
    let _ = child.wait();
    // `status` shows the job still working on the backbone.
    let status = t.args_run(["status", "pipeline.kdl"]).success();
    let line = status
        .stdout
        .lines()
        .find(|l| l.contains(" b "))
        .unwrap_or_default();
    assert!(
        line.contains(&format!("[Slurm job {job} RUNNING]"))
            || line.contains(&format!("[Slurm job {job} PENDING]")),
        "{}",
        status.stdout
    );
    let rerun = t
        .args_run(["run", "pipeline.kdl", "--executor", "slurm"])
        .success();
    assert!(
        rerun
            .stderr
            .contains(&format!("Slurm job {job} of an earlier run is still alive")),
        "{}",
        rerun.stderr
    );
    assert!(rerun.stderr.contains(", 0 failed"), "{}", rerun.stderr);
}

#[test]
fn ctrl_c_cancels_the_runs_jobs() {
    if !enabled() {
        return;
    }
    let t = Test::new()
        .pipeline(LONG)
        .file("lortflow-slurm.kdl", PROFILE);
    let child = submit_in_background(&t);
    let job = job_with_checkpoint(&t);
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    // scancel leaves the job COMPLETING for a moment before it is CANCELLED.
    let deadline = Instant::now() + Duration::from_secs(30);
    let state = loop {
        let out = std::process::Command::new("squeue")
            .args(["--noheader", "--states=all", "--format=%T", "--jobs", &job])
            .output()
            .unwrap();
        let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !matches!(state.as_str(), "RUNNING" | "COMPLETING") || Instant::now() > deadline {
            break state;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(state.starts_with("CANCELLED"), "job {job} is {state}");
}
