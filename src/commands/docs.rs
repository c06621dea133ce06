//! `lortflow docs`: the language reference, generated from the schema.

use std::io::Write;
use std::process::ExitCode;

pub(crate) fn run() -> anyhow::Result<ExitCode> {
    std::io::stdout()
        .lock()
        .write_all(lortflow_lang::docs::language_reference().as_bytes())?;
    Ok(ExitCode::SUCCESS)
}
