//! A small builder to run the CLI: `Test::new().pipeline(kdl).args([...]).run()`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub(crate) struct Test {
    pub(crate) dir: tempfile::TempDir,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// The program to run: the `lortflow` binary unless [`Test::binary`] chose another.
    binary: PathBuf,
}

pub(crate) struct Ran {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Test {
    pub(crate) fn new() -> Self {
        Test {
            dir: tempfile::tempdir().expect("temp dir"),
            args: vec![],
            env: vec![],
            binary: PathBuf::from(env!("CARGO_BIN_EXE_lortflow")),
        }
    }

    /// Runs `binary` (a `lortflow` built with plugins) instead of the stock binary.
    pub(crate) fn binary(mut self, binary: PathBuf) -> Self {
        self.binary = binary;
        self
    }

    /// Writes `pipeline.kdl` into the test directory.
    pub(crate) fn pipeline(self, text: &str) -> Self {
        self.file("pipeline.kdl", text)
    }

    pub(crate) fn file(self, name: &str, text: &str) -> Self {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        self
    }

    /// Sets an environment variable for every run.
    pub(crate) fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub(crate) fn args<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, args: I) -> Self {
        self.args = args.into_iter().map(|a| a.as_ref().to_string()).collect();
        self
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs the CLI with these arguments (the builder's own arguments are ignored).
    pub(crate) fn args_run<I: IntoIterator<Item = S>, S: AsRef<str>>(&self, args: I) -> Ran {
        let args: Vec<String> = args.into_iter().map(|a| a.as_ref().to_string()).collect();
        self.exec(&args)
    }

    pub(crate) fn run(&self) -> Ran {
        self.exec(&self.args)
    }

    fn exec(&self, args: &[String]) -> Ran {
        let output: Output = Command::new(&self.binary)
            .args(args)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .env("COLUMNS", "100")
            .env_remove("LORTFLOW_LOG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("the lortflow binary should start");
        Ran {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Ran {
    pub(crate) fn success(self) -> Self {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
    pub(crate) fn code(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "expected exit code {code}\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// The repository root, for the shipped pipelines.
pub(crate) fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Heads that train on synthetic feature vectors in milliseconds (no backbone): the pipeline the
/// run, watch and report tests share.
pub(crate) const VECTORS: &str = r#"lortflow 1
dataset "d" {
    source "synthetic" kind="vectors" classes=5 per-class=80 test-per-class=20 dim=16 noise=1.0
    long-tail "exp" imbalance-ratio=10
    groups many=40 few=15
}
head "ce" { features "d"; method "ce"; train epochs=5 }
head "lort" { features "d"; method "lort" delta=0.9; init "head" head="ce"; train epochs=5 }
head "bs" { features "d"; method "balanced-softmax"; train epochs=5 }
evaluate "table" { heads "*" }
"#;
