//! Run progress for people: bars on a terminal, plain lines otherwise (CI logs).

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use lortflow_lang::StageKind;
use lortflow_runtime::{Progress, Reporter, StageError, StageOutcome};

/// Draws one bar per running stage when stderr is a terminal; prints lines otherwise.
pub(crate) struct CliReporter {
    bars: Option<MultiProgress>,
    state: Mutex<HashMap<String, (ProgressBar, Instant)>>,
    last_line: Mutex<HashMap<String, Instant>>,
    quiet: bool,
    /// `-v`: a failed stage's error shows each of its causes on a line of its own.
    causes: bool,
}

impl CliReporter {
    pub(crate) fn new(quiet: bool) -> Self {
        use std::io::IsTerminal;
        let bars = (!quiet && std::io::stderr().is_terminal())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8)));
        CliReporter {
            bars,
            state: Mutex::new(HashMap::new()),
            last_line: Mutex::new(HashMap::new()),
            quiet,
            causes: false,
        }
    }

    /// With `show`, a failed stage's error is its headline and then one `caused by:` line per
    /// cause, instead of the whole chain on one line.
    pub(crate) fn show_causes(mut self, show: bool) -> Self {
        self.causes = show;
        self
    }

    fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        match &self.bars {
            Some(bars) => {
                let _ = bars.println(text);
            }
            None => {
                let _ = writeln!(std::io::stderr().lock(), "{text}");
            }
        }
    }
}

impl Reporter for CliReporter {
    fn started(&self, stage: &str, kind: StageKind) {
        match &self.bars {
            Some(bars) => {
                let bar = bars.add(ProgressBar::new(0));
                bar.set_style(
                    ProgressStyle::with_template("{spinner:.cyan} {prefix:<28} {bar:24.cyan/blue} {pos}/{len} {msg} [{elapsed_precise}, eta {eta}]")
                        .expect("a valid template")
                        .progress_chars("=> "),
                );
                bar.set_prefix(format!("{kind} {stage}"));
                bar.enable_steady_tick(Duration::from_millis(150));
                self.state
                    .lock()
                    .expect("reporter lock")
                    .insert(stage.to_string(), (bar, Instant::now()));
            }
            None => self.line(&format!("  running  {kind} `{stage}`")),
        }
    }

    fn progress(&self, stage: &str, p: &Progress) {
        if self.bars.is_some() {
            if let Some((bar, _)) = self.state.lock().expect("reporter lock").get(stage) {
                bar.set_length(p.total);
                bar.set_position(p.done);
                // A state without counts (a Slurm job's) is its message alone.
                if p.total == 0 {
                    bar.set_message(p.message.clone());
                } else {
                    bar.set_message(format!("{}s {}", p.unit, p.message));
                }
            }
            return;
        }
        // Without a terminal, at most one line every 5 seconds per stage, plus the last one.
        let mut last = self.last_line.lock().expect("reporter lock");
        let now = Instant::now();
        let due = last
            .get(stage)
            .is_none_or(|t| now.duration_since(*t) >= Duration::from_secs(5))
            || p.done == p.total;
        if due {
            last.insert(stage.to_string(), now);
            drop(last);
            if p.total == 0 && p.done == 0 {
                self.line(&format!("           `{stage}` {}", p.message));
            } else {
                let of = if p.total > 0 {
                    format!("/{}", p.total)
                } else {
                    String::new()
                };
                self.line(&format!(
                    "           `{stage}` {} {}{of} {}",
                    p.unit, p.done, p.message
                ));
            }
        }
    }

    fn finished(&self, stage: &str, outcome: StageOutcome, seconds: f64, error: Option<&str>) {
        if let Some((bar, _)) = self.state.lock().expect("reporter lock").remove(stage) {
            bar.finish_and_clear();
        }
        let mark = match outcome {
            StageOutcome::Ran => "✓ ran    ",
            StageOutcome::Cached => "· cached ",
            StageOutcome::Failed => "✗ failed ",
            StageOutcome::Skipped => "- skipped",
            StageOutcome::Cancelled => "✗ cancelled",
        };
        let time = if outcome == StageOutcome::Ran || outcome == StageOutcome::Failed {
            format!(" ({seconds:.1}s)")
        } else {
            String::new()
        };
        let why = error.map(|e| format!(": {e}")).unwrap_or_default();
        if outcome == StageOutcome::Failed && self.quiet {
            let _ = writeln!(std::io::stderr().lock(), "{mark} `{stage}`{time}{why}");
            return;
        }
        self.line(&format!("{mark} `{stage}`{time}{why}"));
    }

    fn notice(&self, message: &str) {
        let _ = writeln!(std::io::stderr().lock(), "warning: {message}");
    }

    fn failed(&self, stage: &str, seconds: f64, error: &StageError) {
        self.finished(
            stage,
            StageOutcome::Failed,
            seconds,
            Some(&failure_text(error, self.causes)),
        );
    }
}

/// A failed stage's error: on one line (the default, as run records store it), or with `causes`
/// its headline and one `caused by:` line per cause, like the CLI's own errors. A cause whose
/// text the line above already says (an error that prints its source) is not repeated.
fn failure_text(error: &StageError, causes: bool) -> String {
    use std::error::Error;
    if !causes || error.source().is_none() {
        return error.to_string();
    }
    let mut text = error.headline();
    let mut above = text.clone();
    for cause in std::iter::successors(error.source(), |&e| e.source()) {
        let line = cause.to_string();
        if !above.contains(&line) {
            text.push_str(&format!("\n  caused by: {line}"));
        }
        above = line;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with a cause, as a stage's library error wraps an I/O error.
    #[derive(Debug)]
    struct Wrapped(std::io::Error, bool);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            if self.1 {
                write!(f, "cannot open the list: {}", self.0)
            } else {
                f.write_str("cannot open the list")
            }
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    fn failure(prints_source: bool) -> StageError {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        StageError::with_source("dataset `d`", Wrapped(io, prints_source))
    }

    #[test]
    fn verbose_failures_show_each_cause_once_on_its_own_line() {
        assert_eq!(
            failure_text(&failure(false), false),
            "dataset `d`: cannot open the list: no such file"
        );
        assert_eq!(
            failure_text(&failure(false), true),
            "dataset `d`\n  caused by: cannot open the list\n  caused by: no such file"
        );
        // The cause's text already says its source: the source is not printed again.
        assert_eq!(
            failure_text(&failure(true), true),
            "dataset `d`\n  caused by: cannot open the list: no such file"
        );
        assert_eq!(failure_text(&StageError::failed("plain"), true), "plain");
    }
}
