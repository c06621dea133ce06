//! `lortflow stage-job FILE --stage NAME=KEY … [--store DIR] [--set …] [--force]`: what a Slurm
//! job runs on its node (hidden; `run --executor slurm` writes it into the job's script). It plans
//! the pipeline as the submitter did, checks that each stage still has the key it was submitted
//! with, runs it without taking the store's lock (the submitter holds it) and commits its
//! artifact; the log goes to the job's output file.

use std::process::ExitCode;

use anyhow::{Context, bail};
use lortflow_runtime::{CacheKey, CancelToken};

use crate::cli::StageJobArgs;
use crate::reporter::CliReporter;
use crate::session::{Session, Start};

pub(crate) fn run(args: StageJobArgs) -> anyhow::Result<ExitCode> {
    let Start::Ready(session) = Session::start(&args.pipeline)? else {
        return Ok(ExitCode::from(1));
    };
    let mut stages: Vec<(String, CacheKey)> = Vec::new();
    for arg in &args.stages {
        let Some((name, key)) = arg.rsplit_once('=') else {
            bail!("`--stage {arg}`: expected NAME=KEY");
        };
        let key: CacheKey = key
            .parse()
            .with_context(|| format!("`--stage {arg}`: not a cache key"))?;
        stages.push((name.to_string(), key));
    }
    // No terminal on a node: stage lines and a progress line every few seconds, into the log.
    let reporter = CliReporter::new(false);
    let cancel = CancelToken::new();
    let results = match session
        .engine
        .run_job(&stages, args.force, &cancel, &reporter)
    {
        Ok(results) => results,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let mut failed = false;
    for (name, result) in results {
        match result {
            Ok(artifact) => println!("committed `{name}` as {}", artifact.key().short()),
            Err(e) => {
                failed = true;
                eprintln!("error: `{name}`: {e}");
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
