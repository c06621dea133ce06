//! The client against stand-in `sbatch` / `squeue` / `sacct` / `scontrol` / `scancel` scripts:
//! every state, malformed output, a controller that is down, commands that are not installed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::*;

/// A directory of stand-in commands; each logs its arguments to `<name>.calls`.
struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    fn new() -> Self {
        Fake {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// `name` prints `stdout`, `stderr` and exits with `code`.
    fn command(self, name: &str, stdout: &str, stderr: &str, code: i32) -> Self {
        let path = self.dir.path().join(name);
        let calls = self.dir.path().join(format!("{name}.calls"));
        let script = format!(
            "#!/bin/sh\necho \"$@\" >> '{}'\nprintf '%s' '{}'\nprintf '%s' '{}' >&2\nexit {code}\n",
            calls.display(),
            stdout.replace('\'', "'\\''"),
            stderr.replace('\'', "'\\''"),
        );
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        self
    }

    fn slurm(&self) -> Slurm {
        Slurm::new(Commands::in_dir(self.dir.path()))
    }

    fn calls(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.calls")))
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }
}

fn job(script: &str) -> Submission {
    Submission {
        name: "lortflow-cnn".into(),
        script: PathBuf::from(script),
        log: PathBuf::from("/store/jobs/cnn.log"),
        options: vec!["--partition=gpu".into(), "--gres=gpu:1".into()],
    }
}

#[test]
fn submit_passes_the_options_and_reads_the_job_id() {
    let fake = Fake::new().command("sbatch", "4711\n", "", 0);
    assert_eq!(
        fake.slurm().submit(&job("/store/jobs/cnn.sh")),
        Ok(JobId(4711))
    );
    assert_eq!(
        fake.calls("sbatch"),
        [
            "--parsable --job-name=lortflow-cnn --output=/store/jobs/cnn.log --partition=gpu --gres=gpu:1 /store/jobs/cnn.sh"
        ]
    );
}

#[test]
fn a_refused_or_unreadable_submission_is_an_error_with_what_sbatch_said() {
    let fake = Fake::new().command(
        "sbatch",
        "",
        "sbatch: error: invalid partition specified: gpu\n",
        1,
    );
    let e = fake.slurm().submit(&job("s.sh")).unwrap_err();
    assert!(
        matches!(
            e,
            SlurmError::Failed {
                status: Some(1),
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("invalid partition specified: gpu"),
        "{e}"
    );
    let fake = Fake::new().command("sbatch", "Submitted batch job 12\n", "", 0);
    let e = fake.slurm().submit(&job("s.sh")).unwrap_err();
    assert!(matches!(e, SlurmError::Malformed { .. }), "{e:?}");
}

#[test]
fn every_state_is_read_in_one_squeue_call() {
    let states = [
        "PENDING",
        "RUNNING",
        "COMPLETED",
        "FAILED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "PREEMPTED",
        "CANCELLED",
    ];
    let listing: String = states
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{}|{s}\n{}.batch|{s}\n", 100 + i, 100 + i))
        .collect();
    let fake = Fake::new().command("squeue", &listing, "", 0);
    let jobs: Vec<JobId> = (0..states.len() as u64).map(|i| JobId(100 + i)).collect();
    let got = fake.slurm().states(&jobs).unwrap();
    for (i, s) in states.iter().enumerate() {
        assert_eq!(
            got[&JobId(100 + i as u64)],
            JobState::parse(s).unwrap(),
            "{s}"
        );
    }
    let calls = fake.calls("squeue");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(
        calls[0].ends_with("--jobs 100,101,102,103,104,105,106,107,108"),
        "{calls:?}"
    );
    assert!(fake.calls("sacct").is_empty());
}

#[test]
fn jobs_squeue_forgot_are_asked_of_sacct_then_scontrol() {
    // squeue lists 1; sacct knows 2; accounting knows nothing of 3, scontrol does; 4 is gone.
    let fake = Fake::new()
        .command("squeue", "1|RUNNING\n", "", 0)
        .command("sacct", "2|COMPLETED\n2.batch|COMPLETED\n", "", 0)
        .command(
            "scontrol",
            "",
            "slurm_load_jobs error: Invalid job id specified\n",
            1,
        );
    let got = fake
        .slurm()
        .states(&[JobId(1), JobId(2), JobId(3)])
        .unwrap();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[&JobId(2)], JobState::Completed);
    assert_eq!(fake.calls("sacct").len(), 1);
    assert!(
        fake.calls("sacct")[0].ends_with("--jobs 2,3"),
        "{:?}",
        fake.calls("sacct")
    );

    let fake = Fake::new()
        .command(
            "squeue",
            "",
            "slurm_load_jobs error: Invalid job id specified\n",
            1,
        )
        .command(
            "sacct",
            "",
            "sacct: error: Slurm accounting storage is disabled\n",
            1,
        )
        .command(
            "scontrol",
            "JobId=3 JobName=lortflow-cnn UserId=root(0) JobState=TIMEOUT Reason=TimeLimit\n",
            "",
            0,
        );
    let got = fake.slurm().states(&[JobId(3)]).unwrap();
    assert_eq!(got[&JobId(3)], JobState::Ended(EndState::Timeout));
}

#[test]
fn malformed_output_is_an_error_not_a_guess() {
    for listing in ["7 RUNNING\n", "7|EXPLODED\n", "seven|RUNNING\n"] {
        let fake = Fake::new().command("squeue", listing, "", 0);
        let e = fake.slurm().states(&[JobId(7)]).unwrap_err();
        assert!(
            matches!(e, SlurmError::Malformed { .. }),
            "{listing}: {e:?}"
        );
        assert!(e.to_string().contains("squeue"), "{e}");
    }
    let fake = Fake::new()
        .command("squeue", "", "", 0)
        .command("sacct", "", "disabled", 1)
        .command("scontrol", "JobId=7 Reason=None\n", "", 0);
    let e = fake.slurm().states(&[JobId(7)]).unwrap_err();
    assert!(e.to_string().contains("no JobState= field"), "{e}");
}

#[test]
fn a_controller_that_is_down_or_a_missing_command_is_a_clear_error() {
    let fake = Fake::new().command(
        "squeue",
        "",
        "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n",
        1,
    );
    let e = fake.slurm().states(&[JobId(1)]).unwrap_err();
    assert!(
        e.to_string().contains("Unable to contact slurm controller"),
        "{e}"
    );
    let nowhere = Slurm::new(Commands::in_dir(Path::new("/nonexistent/slurm/bin")));
    let e = nowhere.submit(&job("s.sh")).unwrap_err();
    assert!(matches!(e, SlurmError::Missing { .. }), "{e:?}");
    assert!(e.to_string().contains("login node"), "{e}");
}

#[test]
fn cancel_is_one_call_and_tolerates_ended_jobs() {
    let fake = Fake::new().command("scancel", "", "", 0);
    fake.slurm().cancel(&[JobId(5), JobId(6)]).unwrap();
    assert_eq!(fake.calls("scancel"), ["5 6"]);
    let fake = Fake::new().command(
        "scancel",
        "",
        "scancel: error: Kill job error on job id 5: Invalid job id specified\n",
        1,
    );
    fake.slurm().cancel(&[JobId(5)]).unwrap();
    assert!(fake.slurm().cancel(&[]).is_ok());
}
