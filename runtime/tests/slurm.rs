//! The Slurm client against a real one-node cluster (`scripts/slurm up`): a job runs to
//! COMPLETED, a failing job ends FAILED, a cancelled one CANCELLED, all polled in batched calls.
//! Runs when `LORTFLOW_TEST_SLURM=1` (`scripts/test` sets it after `scripts/slurm up` worked);
//! otherwise it says it did not run.

use std::path::Path;
use std::time::{Duration, Instant};

use lortflow_runtime::slurm::{EndState, JobId, JobState, Slurm, Submission};

fn enabled() -> bool {
    if std::env::var_os("LORTFLOW_TEST_SLURM").is_some_and(|v| v == "1") {
        return true;
    }
    eprintln!("not run: set LORTFLOW_TEST_SLURM=1 with a cluster up (scripts/slurm up)");
    false
}

fn script(dir: &Path, name: &str, body: &str) -> Submission {
    let script = dir.join(format!("{name}.sh"));
    std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
    Submission {
        name: format!("lortflow-test-{name}"),
        script,
        log: dir.join(format!("{name}.log")),
        options: vec!["--time=00:05:00".into()],
    }
}

/// Polls `jobs` until every one is terminal (or missing: purged), at most `limit`.
fn wait(slurm: &Slurm, jobs: &[JobId], limit: Duration) -> Vec<Option<JobState>> {
    let started = Instant::now();
    loop {
        let states = slurm.states(jobs).expect("squeue answers");
        if jobs
            .iter()
            .all(|j| states.get(j).is_none_or(JobState::is_terminal))
        {
            return jobs.iter().map(|j| states.get(j).cloned()).collect();
        }
        assert!(started.elapsed() < limit, "jobs still running: {states:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn jobs_complete_fail_and_cancel_on_a_real_cluster() {
    if !enabled() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let slurm = Slurm::default();
    let ok = slurm
        .submit(&script(dir.path(), "ok", "echo lortflow-ok"))
        .unwrap();
    let bad = slurm
        .submit(&script(dir.path(), "bad", "echo failing >&2; exit 3"))
        .unwrap();
    let long = slurm
        .submit(&script(dir.path(), "long", "sleep 120"))
        .unwrap();
    // Cancel the long one once it has started (or while it waits).
    std::thread::sleep(Duration::from_secs(1));
    slurm.cancel(&[long]).unwrap();
    let states = wait(&slurm, &[ok, bad, long], Duration::from_secs(60));
    assert_eq!(states[0], Some(JobState::Completed), "{states:?}");
    assert_eq!(
        states[1],
        Some(JobState::Ended(EndState::Failed)),
        "{states:?}"
    );
    assert_eq!(
        states[2],
        Some(JobState::Ended(EndState::Cancelled)),
        "{states:?}"
    );
    let log = std::fs::read_to_string(dir.path().join("ok.log")).unwrap();
    assert!(log.contains("lortflow-ok"), "{log}");
    let log = std::fs::read_to_string(dir.path().join("bad.log")).unwrap();
    assert!(log.contains("failing"), "{log}");
}
