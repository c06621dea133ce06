//! The `lortflow` command-line tool: argument parsing, logging, output and exit codes.
//! The work itself lives in the library crates.
//!
//! The whole program is [`run_cli`], so that a binary of your own can register plugins first
//! and then be `lortflow` with them: see `examples/custom_head_method.rs`.

mod cli;
mod commands;
mod render;
mod reporter;
mod session;

use std::process::ExitCode;

use clap::Parser;

/// Parses the process's arguments and runs the command; the exit code follows the CLI's
/// convention (0 success, 1 pipeline problems or failed stages, 2 usage or internal errors).
pub fn run_cli() -> ExitCode {
    let args = cli::Arguments::parse();
    cli::init_logging(&args.global);
    // Checked before any work: a mistyped level would otherwise surface as a panic in a kernel.
    match lortflow_stdlib::cpu::choice() {
        Ok(level) => tracing::info!("CPU kernels: {level}"),
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    }
    if let Some(workers) = args.global.workers {
        lortflow_data::images::set_default_workers(workers as usize);
    }
    match commands::run(args) {
        Ok(code) => code,
        Err(err) => {
            // A closed pipe (`lortflow graph | head`) is not a failure.
            if err.chain().any(|e| {
                e.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(2)
        }
    }
}
