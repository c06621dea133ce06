//! `lortflow bench input FILE [--stage BACKBONE]`: a backbone's input stream without the model.

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, bail};
use lortflow_data::input::BatchOutput;
use lortflow_lang::StageKind;
use lortflow_runtime::engine::{Force, RunRequest};
use lortflow_runtime::{CancelToken, StageOutcome};

use crate::cli::{BenchCommand, BenchInputArgs};
use crate::reporter::CliReporter;
use crate::session::{Session, Start};

pub(crate) fn run(command: BenchCommand, quiet: bool) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Input(args) => input(args, quiet),
    }
}

/// A `/proc/self/status` field in MB (Linux; 0 elsewhere).
fn status_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| {
            v.trim_start_matches(':')
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn input(args: BenchInputArgs, quiet: bool) -> anyhow::Result<ExitCode> {
    let Start::Ready(session) = Session::start(&args.pipeline)? else {
        return Ok(ExitCode::from(1));
    };
    let plan = session.plan();
    let backbone = match &args.stage {
        Some(name) => {
            let found = session.find(name)?;
            match found.as_slice() {
                [i] if plan[*i].kind() == StageKind::Backbone => *i,
                [i] => bail!(
                    "`{}` is a {}, not a backbone",
                    plan[*i].name,
                    plan[*i].kind().as_str()
                ),
                _ => bail!("`{name}` names {} stages; name one backbone", found.len()),
            }
        }
        None => {
            let backbones: Vec<usize> = (0..plan.len())
                .filter(|&i| plan[i].kind() == StageKind::Backbone)
                .collect();
            match backbones.as_slice() {
                [i] => *i,
                [] => bail!("`{}` has no backbone stage", session.file.display()),
                many => bail!(
                    "`{}` has {} backbones ({}); choose one with `--stage`",
                    session.file.display(),
                    many.len(),
                    many.iter()
                        .map(|&i| format!("`{}`", plan[i].name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    };
    let data = plan[backbone]
        .inputs
        .iter()
        .find(|(_, j)| plan[*j].kind() == StageKind::Dataset)
        .map(|&(_, j)| j)
        .ok_or_else(|| anyhow!("backbone `{}` reads no dataset", plan[backbone].name))?;

    // Pack (or find the packs) exactly as `run --only DATASET` would.
    let started = Instant::now();
    let request = RunRequest {
        force: Force::None,
        only: Some(HashSet::from([data])),
        ..RunRequest::default()
    };
    let report = session
        .engine
        .run(&request, &CancelToken::new(), &CliReporter::new(quiet))?;
    if report.failed() {
        eprintln!("error: the dataset stage `{}` failed", plan[data].name);
        return Ok(ExitCode::from(1));
    }
    let packed_now = report
        .stages_with(StageOutcome::Ran)
        .contains(&plan[data].name.as_str());
    let pack_seconds = started.elapsed().as_secs_f64();
    let statuses = session.status(&Force::None);
    let key = statuses[data]
        .key
        .clone()
        .ok_or_else(|| anyhow!("the dataset `{}` has no key", plan[data].name))?;
    let artifact = session
        .engine
        .store()
        .get(&key)?
        .ok_or_else(|| anyhow!("the dataset `{}` left no artifact", plan[data].name))?;
    let mut own_peak = 0f64;
    let view = if args.eval { "extraction" } else { "training" };
    let setup = lortflow_stdlib::stages::bench_input(
        &plan[data],
        &artifact,
        &plan[backbone],
        session.engine.backend(),
        args.epochs as usize,
        args.eval,
        &mut |setup, rate| {
            own_peak = own_peak.max(rate.own_memory_mb);
            println!(
                "epoch {}: {} images in {:.2} s = {:.0} img/s ({} view, {} workers, batch {}, {}x{}x{} {})",
                rate.epoch,
                rate.images,
                rate.seconds,
                rate.images as f64 / rate.seconds.max(1e-9),
                view,
                setup.workers,
                setup.batch_size,
                setup.shape[0],
                setup.shape[1],
                setup.shape[2],
                match setup.output {
                    BatchOutput::Normalized => "normalised f32",
                    BatchOutput::Bytes => "u8, for the GPU",
                },
            );
        },
    )
    .map_err(|e| anyhow!("{e}"))?;
    if packed_now {
        println!(
            "dataset `{}`: read and packed in {pack_seconds:.2} s",
            plan[data].name
        );
    } else {
        println!("dataset `{}`: cached", plan[data].name);
    }
    println!(
        "input of `{}` ({} data): peak RSS {:.0} MB; the process's own memory (sampled after every batch) at most {:.0} MB, the rest being pages of the memory-mapped packs, which the kernel can drop",
        plan[backbone].name,
        setup.storage,
        status_mb("VmHWM"),
        own_peak.max(status_mb("RssAnon")),
    );
    Ok(ExitCode::SUCCESS)
}
