//! `lortflow graph FILE`: the stage DAG as text, dot or Mermaid.

use std::io::Write;
use std::process::ExitCode;

use lortflow_runtime::StageGraph;

use crate::cli::{GraphArgs, GraphFormat};

pub(crate) fn run(args: GraphArgs) -> anyhow::Result<ExitCode> {
    let Some(checked) = super::load_valid(&args.file)? else {
        return Ok(ExitCode::from(1));
    };
    let graph = StageGraph::build(&checked.pipeline);
    let text = match args.format {
        GraphFormat::Text => graph.to_text(),
        GraphFormat::Dot => graph.to_dot(),
        GraphFormat::Mermaid => graph.to_mermaid(),
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}
