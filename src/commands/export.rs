//! `lortflow export FILE STAGE --to DIR`: a cached artifact's matrices as `.npy` files (and
//! its metadata as JSON) for notebooks, and a backbone as a PyTorch state dict
//! (`backbone.safetensors`, see `docs/checkpoints.md`). Features are also left as the artifact's
//! safetensors files, which Python reads directly (`safetensors.numpy.load_file`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, bail};
use lortflow_runtime::engine::Force;

use crate::cli::ExportArgs;
use crate::session::{Session, Start};

pub(crate) fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let Start::Ready(session) = Session::start(&args.pipeline)? else {
        return Ok(ExitCode::from(1));
    };
    let indices = session.find(&args.stage)?;
    if indices.len() != 1 {
        let names: Vec<&str> = indices
            .iter()
            .map(|&i| session.engine.plan()[i].name.as_str())
            .collect();
        bail!(
            "`{}` names {} stages ({}); export one of them",
            args.stage,
            names.len(),
            names.join(", ")
        );
    }
    let i = indices[0];
    let stage = &session.engine.plan()[i];
    let statuses = session.status(&Force::None);
    let artifact = match &statuses[i].key {
        Some(key) => session.engine.store().get(key)?,
        None => None,
    };
    let Some(artifact) = artifact else {
        bail!(
            "`{}` has no cached artifact for its current parameters; run `lortflow run {} --only {}` first",
            stage.name,
            session.file.display(),
            stage.name
        );
    };
    std::fs::create_dir_all(&args.to)
        .with_context(|| format!("cannot create `{}`", args.to.display()))?;
    let written =
        lortflow_stdlib::stages::export(&artifact, &args.to).map_err(|e| anyhow::anyhow!("{e}"))?;
    if written.is_empty() {
        bail!(
            "`{}` is a {} stage; only backbones, features, feature datasets and heads hold weights or matrices to export",
            stage.name,
            stage.kind()
        );
    }
    let mut out = std::io::stdout().lock();
    for path in written {
        writeln!(out, "{}", path.display())?;
    }
    Ok(ExitCode::SUCCESS)
}
