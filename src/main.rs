//! The `lortflow` binary: the CLI of [`lortflow::run_cli`] with the standard library of stages.

use std::process::ExitCode;

fn main() -> ExitCode {
    lortflow::run_cli()
}
