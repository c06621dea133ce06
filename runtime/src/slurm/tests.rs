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

/// The executor over a fake cluster: `sbatch` hands out ids 1, 2, …; `squeue` answers from the
/// file `states` (`ID|STATE` lines) so a test can end each job as it likes.
mod executor {
    use std::path::Path;

    use lortflow_lang::{MemoryLoader, check_text};

    use super::super::{JobCommand, SlurmExecutor, SlurmProfile};
    use super::*;
    use crate::engine::{RemoteExecutor, RemoteStage};
    use crate::plan::{ConcreteStage, expand};
    use crate::stage::{CancelToken, SilentReporter, StageError};
    use crate::{CacheKey, Store};

    fn plan() -> Vec<ConcreteStage> {
        let text = "lortflow 1\ndataset \"d\" { source \"synthetic\" kind=\"vectors\" }\n\
                    head \"h\" { features \"d\"; train epochs=1 }\nevaluate \"t\" { heads \"*\" }\n";
        let checked = check_text(Path::new("p.kdl"), text.into(), &MemoryLoader::default());
        expand(&checked.pipeline, &[]).unwrap()
    }

    /// A fake cluster in `dir`: job ids count up in `next`; `squeue` prints `states`.
    fn cluster(dir: &Path) -> Slurm {
        let script = |name: &str, body: &str| {
            let path = dir.join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        let d = dir.display();
        script(
            "sbatch",
            &format!(
                "n=$(cat '{d}/next' 2>/dev/null || echo 0); n=$((n + 1)); echo $n > '{d}/next'; \
                 echo \"$@\" >> '{d}/sbatch.calls'; echo $n"
            ),
        );
        script("squeue", &format!("cat '{d}/states' 2>/dev/null"));
        script("sacct", "exit 1");
        script("scontrol", "echo 'Invalid job id specified' >&2; exit 1");
        script("scancel", &format!("echo \"$@\" >> '{d}/scancel.calls'"));
        Slurm::new(Commands::in_dir(dir))
    }

    fn executor(dir: &Path, store: &Store, retries: u32) -> SlurmExecutor {
        let profile = SlurmProfile {
            poll_interval_s: 0,
            retries,
            ..SlurmProfile::default()
        };
        let command = JobCommand {
            program: "/usr/bin/lortflow".into(),
            args: vec!["stage-job".into(), "/p/pipeline.kdl".into()],
            dir: "/p".into(),
        };
        SlurmExecutor::new(cluster(dir), profile, store.clone(), command)
    }

    fn key(n: u8) -> CacheKey {
        format!("{:064x}", n).parse().unwrap()
    }

    /// Runs the task on a thread, ending its jobs as `script` says: (after this many ms, the
    /// `squeue` listing).
    fn run_with(
        dir: &Path,
        store: &Store,
        retries: u32,
        script: &[(u64, &str)],
        cancel: &CancelToken,
    ) -> Result<(), StageError> {
        let plan = plan();
        let stage = plan.iter().find(|s| s.name == "h").unwrap();
        let task = [RemoteStage {
            stage,
            key: key(7),
            forced: false,
        }];
        let exec = executor(dir, store, retries);
        std::thread::scope(|s| {
            s.spawn(|| {
                for (ms, listing) in script {
                    std::thread::sleep(std::time::Duration::from_millis(*ms));
                    std::fs::write(dir.join("states"), listing).unwrap();
                }
            });
            exec.run(&task, cancel, &SilentReporter)
        })
    }

    #[test]
    fn a_node_failure_is_submitted_again_and_a_failure_shows_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let jobs = store.jobs_dir();
        let script = [
            (50, "1|RUNNING\n"),
            (300, "1|NODE_FAIL\n"),
            (300, "2|COMPLETED\n"),
        ];
        run_with(dir.path(), &store, 1, &script, &CancelToken::new()).unwrap();
        let calls = std::fs::read_to_string(dir.path().join("sbatch.calls")).unwrap();
        assert_eq!(calls.lines().count(), 2, "{calls}");
        let job_script =
            std::fs::read_to_string(jobs.join(format!("{}.sh", key(7).as_str()))).unwrap();
        let expected = format!(
            "cd /p || exit 1\nexec /usr/bin/lortflow stage-job /p/pipeline.kdl --stage h={}\n",
            key(7).as_str()
        );
        assert!(job_script.ends_with(&expected), "{job_script}");
        assert!(!jobs.join(format!("{}.job", key(7).as_str())).exists());

        // Without retries left, the failure names the state and shows the end of the log.
        std::fs::remove_file(dir.path().join("states")).unwrap();
        std::fs::write(
            jobs.join(format!("{}.log", key(7).as_str())),
            "epoch 1\nout of luck\n",
        )
        .unwrap();
        let script = [(50, "3|OUT_OF_MEMORY\n")];
        let e = run_with(dir.path(), &store, 1, &script, &CancelToken::new()).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("Slurm job 3 ended OUT_OF_MEMORY"), "{text}");
        assert!(text.contains("out of luck"), "{text}");
    }

    #[test]
    fn a_live_job_of_an_earlier_run_is_adopted_and_cancel_cancels_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        std::fs::create_dir_all(store.jobs_dir()).unwrap();
        std::fs::write(
            store.jobs_dir().join(format!("{}.job", key(7).as_str())),
            "41\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("states"), "41|RUNNING\n").unwrap();
        let cancel = CancelToken::new();
        let canceller = cancel.clone();
        let timer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(400));
            canceller.cancel();
        });
        let e = run_with(dir.path(), &store, 0, &[], &cancel).unwrap_err();
        timer.join().unwrap();
        assert!(matches!(e, StageError::Cancelled), "{e:?}");
        assert!(
            !dir.path().join("sbatch.calls").exists(),
            "a second job was submitted"
        );
        let cancelled = std::fs::read_to_string(dir.path().join("scancel.calls")).unwrap();
        assert_eq!(cancelled.trim(), "41");
    }

    #[test]
    fn a_scheduler_that_refuses_the_job_fails_the_stage_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let slurm_dir = tempfile::tempdir().unwrap();
        let fake = Fake { dir: slurm_dir }.command(
            "sbatch",
            "",
            "sbatch: error: Batch job submission failed: Invalid account\n",
            1,
        );
        let plan = plan();
        let stage = plan.iter().find(|s| s.name == "h").unwrap();
        let task = [RemoteStage {
            stage,
            key: key(9),
            forced: false,
        }];
        let exec = SlurmExecutor::new(
            fake.slurm(),
            SlurmProfile::default(),
            store.clone(),
            JobCommand {
                program: "lortflow".into(),
                args: vec![],
                dir: "/".into(),
            },
        );
        let e = exec
            .run(&task, &CancelToken::new(), &SilentReporter)
            .unwrap_err();
        assert!(e.to_string().contains("Invalid account"), "{e}");
        assert!(e.to_string().contains("nothing was lost"), "{e}");
        assert!(
            !store
                .jobs_dir()
                .join(format!("{}.job", key(9).as_str()))
                .exists()
        );
    }
}
