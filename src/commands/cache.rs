//! `lortflow cache ls|gc`: inspect and prune the artifact store.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use lortflow_runtime::Store;
use lortflow_runtime::engine::Force;

use crate::cli::{CacheCommand, PipelineArgs};
use crate::session::{Session, Start, store_dir};

pub(crate) fn run(command: CacheCommand) -> anyhow::Result<ExitCode> {
    match command {
        CacheCommand::Ls { file, store } => ls(file, store),
        CacheCommand::Gc {
            files,
            store,
            dry_run,
        } => gc(files, store, dry_run),
    }
}

fn ls(file: Option<PathBuf>, store: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let dir = match (&file, &store) {
        (_, Some(s)) => s.clone(),
        (Some(f), None) => store_dir(f, None),
        (None, None) => PathBuf::from(".lortflow"),
    };
    if !dir.exists() {
        bail!(
            "no artifact store at `{}`; `lortflow run` creates one beside the pipeline",
            dir.display()
        );
    }
    let store = Store::open(&dir).with_context(|| format!("cannot open `{}`", dir.display()))?;
    let mut items = store.list()?;
    items.sort_by(|a, b| {
        a.created
            .unix_seconds()
            .total_cmp(&b.created.unix_seconds())
    });
    let mut out = std::io::stdout().lock();
    let mut total = 0;
    for a in &items {
        total += a.size_bytes;
        writeln!(
            out,
            "{}  {:<9} {:<32} {:>10}  {}",
            a.key.short(),
            a.kind.as_deref().unwrap_or("?"),
            a.stage.as_deref().unwrap_or("?"),
            human_bytes(a.size_bytes),
            a.created
        )?;
    }
    writeln!(
        out,
        "\n{} artifacts, {} in `{}`",
        items.len(),
        human_bytes(total),
        dir.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

fn gc(files: Vec<PathBuf>, store: Option<PathBuf>, dry_run: bool) -> anyhow::Result<ExitCode> {
    let mut keep = HashSet::new();
    let mut dir: Option<PathBuf> = None;
    for file in &files {
        let args = PipelineArgs {
            file: file.clone(),
            set: vec![],
            backend: None,
            devices: None,
            store: store.clone(),
        };
        let Start::Ready(mut session) = Session::start(&args)? else {
            bail!(
                "`{}` has errors; gc keeps only what valid pipelines reference, so nothing was removed",
                file.display()
            );
        };
        let this = session.engine.store().root().to_path_buf();
        if dir.as_ref().is_some_and(|d| *d != this) {
            bail!(
                "the pipelines use different stores (`{}` and `{}`); run gc once per store",
                dir.unwrap_or_default().display(),
                this.display()
            );
        }
        dir = Some(this);
        // Keep the current artifacts of every backend the pipeline may run on.
        for &backend in lortflow_lang::ir::Backend::ALL {
            session.engine = session.engine.with_backend(backend);
            keep.extend(
                session
                    .status(&Force::None)
                    .into_iter()
                    .filter_map(|st| st.key),
            );
        }
    }
    let dir = dir.expect("at least one pipeline");
    let store = Store::open(&dir)?;
    if dry_run {
        let doomed: Vec<_> = store
            .list()?
            .into_iter()
            .filter(|a| !keep.contains(&a.key))
            .collect();
        let bytes: u64 = doomed.iter().map(|a| a.size_bytes).sum();
        for a in &doomed {
            println!(
                "would remove {}  {}",
                a.key.short(),
                a.stage.as_deref().unwrap_or("?")
            );
        }
        println!(
            "{} artifacts, {} would be freed",
            doomed.len(),
            human_bytes(bytes)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let lock = store.lock()?;
    let report = store.gc(&keep, &lock)?;
    let checkpoints = match report.work_removed {
        0 => String::new(),
        1 => " and the checkpoints of 1 unfinished stage".to_string(),
        n => format!(" and the checkpoints of {n} unfinished stages"),
    };
    println!(
        "removed {} artifacts{checkpoints} ({}), kept {}",
        report.removed,
        human_bytes(report.bytes_freed),
        report.kept
    );
    Ok(ExitCode::SUCCESS)
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
