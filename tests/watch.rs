//! `lortflow watch` end to end (issue 8): a running watcher is edited like an editor would
//! (write a temporary file, rename it over the pipeline) and its per-cycle lines are read back.
//! Unix only: the watcher is stopped with SIGINT.
#![cfg(unix)]

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cli::{Test, VECTORS};

/// Generous: the tests share the machine with the rest of the suite. A passing test takes a
/// fraction of this.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A `lortflow watch` child whose output is collected by two threads.
struct Watcher {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Watcher {
    fn start(t: &Test, args: &[&str]) -> Watcher {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lortflow"))
            .arg("watch")
            .args(args)
            .current_dir(t.dir.path())
            .env("NO_COLOR", "1")
            .env("COLUMNS", "100")
            .env_remove("LORTFLOW_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the lortflow binary should start");
        let stdout = collect(child.stdout.take().expect("piped stdout"));
        let stderr = collect(child.stderr.take().expect("piped stderr"));
        Watcher {
            child,
            stdout,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits until stderr contains `needle`; returns the line holding it.
    #[track_caller]
    fn wait_for(&mut self, needle: &str) -> String {
        self.wait_line(&format!("`{needle}`"), |l| l.contains(needle))
    }

    /// Waits for the summary line of cycle `n`.
    #[track_caller]
    fn cycle(&mut self, n: u32) -> String {
        let prefix = format!("cycle {n}: ");
        self.wait_line(&format!("cycle {n}"), |l| l.starts_with(&prefix))
    }

    #[track_caller]
    fn wait_line(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let stderr = self.stderr();
            if let Some(line) = stderr.lines().find(|l| matches(l)) {
                return line.to_string();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the watcher exited ({status}) before {what}:\n{stderr}");
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "no {what} after {TIMEOUT:?}:\n{stderr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGINT and returns the exit code.
    fn interrupt(&mut self) -> i32 {
        let sent = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("kill should run");
        assert!(sent.success());
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "the watcher did not stop:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // A failed test must not leave a watcher running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(mut stream: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&text);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

/// Saves like many editors: write a temporary file beside the target, then rename it over.
fn save(path: &Path, text: &str) {
    let tmp = path.with_extension("kdl.tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The `N` of `(started N ms after the save)` in a cycle line.
fn latency_ms(line: &str) -> u64 {
    let rest = line
        .split("(started ")
        .nth(1)
        .unwrap_or_else(|| panic!("no latency in `{line}`"));
    rest.split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn watch_reruns_the_edited_head_survives_a_syntax_error_and_stops_on_ctrl_c() {
    let t = Test::new().pipeline(VECTORS);
    let file = t.path("pipeline.kdl");
    let mut w = Watcher::start(&t, &["pipeline.kdl"]);
    let line = w.cycle(1);
    assert!(
        line.starts_with("cycle 1: 5 ran, 0 cached, 0 failed"),
        "{line}"
    );
    assert!(t.path(".lortflow/lock").exists(), "held while watching");

    // One head's parameter: that head and the evaluation run again, nothing else.
    let edited = VECTORS.replace(
        "\"balanced-softmax\"; train epochs=5",
        "\"balanced-softmax\"; train epochs=6",
    );
    save(&file, &edited);
    let line = w.cycle(2);
    assert!(
        line.starts_with("cycle 2: 2 ran, 3 cached, 0 failed"),
        "{line}"
    );
    let latency = latency_ms(&line);
    eprintln!("save to re-run: {latency} ms");
    assert!(latency < 5_000, "{line}");
    w.wait_for("  re-ran: `bs`, `table`");

    // A syntax error: the diagnostic (as `lortflow lint` renders it), and the watcher goes on.
    save(&file, &format!("{edited}head \"x\" {{\n"));
    let line = w.cycle(3);
    assert!(
        line.contains("the pipeline has errors, nothing ran"),
        "{line}"
    );
    let stderr = w.stderr();
    assert!(stderr.contains("lortflow::syntax"), "{stderr}");
    assert!(stderr.contains("error: `pipeline.kdl`: "), "{stderr}");

    // The fix runs again.
    save(&file, &edited.replace("epochs=6", "epochs=7"));
    let line = w.cycle(4);
    assert!(
        line.starts_with("cycle 4: 2 ran, 3 cached, 0 failed"),
        "{line}"
    );

    assert_eq!(w.interrupt(), 0, "{}", w.stderr());
    assert!(w.stderr().contains("stopped"));
    assert!(!t.path(".lortflow/lock").exists(), "the lock is released");
    // Each run printed the results table.
    assert_eq!(w.stdout().matches("results of `table`").count(), 3);
}

#[test]
fn watch_follows_includes_added_by_an_edit() {
    let t = Test::new().pipeline(VECTORS).file(
        "more.kdl",
        "head \"extra\" { features \"d\"; method \"ce\"; train epochs=3 }\n",
    );
    let file = t.path("pipeline.kdl");
    let mut w = Watcher::start(&t, &["pipeline.kdl"]);
    w.cycle(1);
    save(&file, &format!("{VECTORS}include \"more.kdl\"\n"));
    let line = w.cycle(2);
    assert!(line.starts_with("cycle 2: 2 ran, 4 cached"), "{line}");
    // The included file is watched from the cycle that included it on.
    std::fs::write(
        t.path("more.kdl"),
        "head \"extra\" { features \"d\"; method \"ce\"; train epochs=4 }\n",
    )
    .unwrap();
    let line = w.cycle(3);
    assert!(line.starts_with("cycle 3: 2 ran, 4 cached"), "{line}");
    w.wait_for("  re-ran: `extra`, `table`");
    assert_eq!(w.interrupt(), 0);
}

#[test]
fn a_change_during_a_run_cancels_the_stage_it_made_stale() {
    // `bs` trains for tens of seconds unless cancelled.
    let slow = VECTORS.replace(
        "\"balanced-softmax\"; train epochs=5",
        "\"balanced-softmax\"; train epochs=500000",
    );
    let t = Test::new().pipeline(&slow);
    let mut w = Watcher::start(&t, &["pipeline.kdl", "-j", "1"]);
    w.wait_for("running  head `bs`");
    save(&t.path("pipeline.kdl"), VECTORS);
    w.wait_for("cancelling the run (`bs` became stale)");
    let line = w.cycle(1);
    assert!(line.contains(" cancelled"), "{line}");
    // The next cycle starts when the cancelled run has returned; nothing half-written is reused.
    let line = w.cycle(2);
    assert!(line.contains(" 0 failed"), "{line}");
    assert!(!line.contains("cancelled"), "{line}");
    assert_eq!(w.interrupt(), 0);
    let status = t.args_run(["status", "pipeline.kdl"]).success();
    assert!(
        status.stdout.lines().all(|l| !l.starts_with("stale")),
        "{}",
        status.stdout
    );
}

#[test]
fn watch_cannot_start_without_its_file_or_with_the_store_in_use() {
    let t = Test::new().pipeline(VECTORS);
    let missing = t.args_run(["watch", "missing.kdl"]).code(2);
    assert!(
        missing
            .stderr
            .contains("cannot read pipeline `missing.kdl`"),
        "{}",
        missing.stderr
    );
    let mut first = Watcher::start(&t, &["pipeline.kdl"]);
    first.cycle(1);
    let second = t.args_run(["watch", "pipeline.kdl"]).code(2);
    assert!(
        second.stderr.contains("in use by another lortflow run"),
        "{}",
        second.stderr
    );
    assert_eq!(first.interrupt(), 0);
}

#[test]
fn a_failing_stage_does_not_end_the_watcher_and_its_missing_input_is_watched() {
    let text = format!(
        "{VECTORS}dataset \"fm\" {{ source \"fashion-mnist\" root=\"fm\" }}\n\
         backbone \"b\" {{ data \"fm\"; arch \"small-cnn\"; train epochs=1 }}\n\
         features \"f\" {{ backbone \"b\" }}\nhead \"h\" {{ features \"f\" }}\n"
    );
    let t = Test::new().pipeline(&text);
    let mut w = Watcher::start(&t, &["pipeline.kdl"]);
    let line = w.cycle(1);
    assert!(
        line.starts_with("cycle 1: 4 ran, 0 cached, 1 failed"),
        "{line}"
    );
    // The reason once, as it happens; the cycle's summary only names the stage.
    w.wait_for("): reads `fm`, which does not exist");
    w.wait_for("  failed: `fm`");
    // The dataset root appears: a change, although nothing in the pipeline file changed.
    std::fs::create_dir(t.path("fm")).unwrap();
    let line = w.cycle(2);
    assert!(
        line.starts_with("cycle 2: 0 ran, 4 cached, 1 failed"),
        "{line}"
    );
    // From then on the root is watched with everything in it.
    std::fs::write(t.path("fm/train-images-idx3-ubyte"), "not an IDX file").unwrap();
    let line = w.cycle(3);
    assert!(
        line.starts_with("cycle 3: 0 ran, 4 cached, 1 failed"),
        "{line}"
    );
    assert_eq!(w.interrupt(), 0);
}
