//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Declarative pipelines for decoupled long-tailed recognition.
#[derive(Debug, Parser)]
#[command(name = "lortflow", version, about, long_about = None)]
pub(crate) struct Arguments {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// More log output (-v debug, -vv trace); `LORTFLOW_LOG` takes a full filter.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    /// Threads that decode and transform images for training and extraction (default: every
    /// core; `LORTFLOW_WORKERS` for scheduler jobs). Results do not depend on it.
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) workers: Option<u64>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the stale stages of a pipeline and print its results.
    Run(RunArgs),
    /// Run, then re-run what each save of the pipeline (or a file it reads) invalidates.
    Watch(WatchArgs),
    /// Show which stages are cached or stale, and why.
    Status(StatusArgs),
    /// Show what a stage's cached artifact holds.
    Inspect(InspectArgs),
    /// Inspect and prune the artifact store.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Write an artifact out: features or a head as `.npy` files, a backbone as PyTorch weights.
    Export(ExportArgs),
    /// Check pipeline files and report every problem.
    Lint(LintArgs),
    /// Show the stage graph.
    Graph(GraphArgs),
    /// Show the results of the last run: accuracy by group, the paper's metrics, plots; or what
    /// changed since an earlier run.
    Report(ReportArgs),
    /// Print the language reference (generated from the schema).
    Docs,
    /// Measure one part of a pipeline on its own.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run stages of a pipeline as a scheduler job does (`--executor slurm` submits this).
    #[command(name = "stage-job", hide = true)]
    StageJob(StageJobArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Stream a backbone's input without the model: packs the dataset if needed (as `run`
    /// would), then reads the training view (`--eval`: the extraction view) through the real
    /// loader and prints img/s and peak memory.
    Input(BenchInputArgs),
}

#[derive(Debug, Args)]
pub(crate) struct BenchInputArgs {
    #[command(flatten)]
    pub(crate) pipeline: PipelineArgs,
    /// The backbone whose input is streamed (needed when the pipeline has several).
    #[arg(long, value_name = "BACKBONE")]
    pub(crate) stage: Option<String>,
    /// Epochs to stream.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) epochs: u64,
    /// The extraction view (Resize + CenterCrop) of the training split instead of training's.
    #[arg(long)]
    pub(crate) eval: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum DiagnosticFormat {
    Human,
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct LintArgs {
    /// Pipeline files.
    #[arg(required = true)]
    pub(crate) files: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = DiagnosticFormat::Human)]
    pub(crate) format: DiagnosticFormat,
    /// Treat warnings as errors (exit code 1).
    #[arg(long)]
    pub(crate) deny_warnings: bool,
    /// Check the pipeline with a parameter overridden, as `run --set` would run it.
    #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
    pub(crate) set: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum GraphFormat {
    Text,
    Dot,
    Mermaid,
}

#[derive(Debug, Args)]
pub(crate) struct GraphArgs {
    /// Pipeline file.
    pub(crate) file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = GraphFormat::Text)]
    pub(crate) format: GraphFormat,
}

/// Installs the tracing subscriber: stderr, `-v`/`-q`, `LORTFLOW_LOG`, `--log-format`.
pub(crate) fn init_logging(args: &GlobalArgs) {
    use tracing_subscriber::EnvFilter;
    let default = match (args.quiet, args.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info,lortflow=debug,lortflow_runtime=debug,lortflow_stdlib=debug",
        (false, _) => "trace",
    };
    let filter =
        EnvFilter::try_from_env("LORTFLOW_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match args.log_format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BackendArg {
    Cpu,
    Cuda,
    Wgpu,
}

impl From<BackendArg> for lortflow_lang::ir::Backend {
    fn from(arg: BackendArg) -> Self {
        match arg {
            BackendArg::Cpu => Self::Cpu,
            BackendArg::Cuda => Self::Cuda,
            BackendArg::Wgpu => Self::Wgpu,
        }
    }
}

/// Arguments shared by the commands that plan a pipeline.
#[derive(Debug, Args)]
pub(crate) struct PipelineArgs {
    /// Pipeline file.
    pub(crate) file: PathBuf,
    /// Override a parameter: `--set lort.delta=0.9` (checked like the file).
    #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
    pub(crate) set: Vec<String>,
    /// Compute backend (default: the pipeline's `defaults backend`).
    #[arg(long, value_enum)]
    pub(crate) backend: Option<BackendArg>,
    /// Devices a training backbone splits its batches over, one replica each (default: the
    /// pipeline's `defaults devices`, else 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) devices: Option<u32>,
    /// Artifact store (default: `.lortflow/` beside the pipeline).
    #[arg(long, value_name = "DIR")]
    pub(crate) store: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) pipeline: PipelineArgs,
    /// Show the plan (what runs, what is cached, and why) without running anything.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Re-run stages even if cached: all, or the named ones (repeatable).
    #[arg(long, value_name = "STAGE", num_args = 0..=1, default_missing_value = "")]
    pub(crate) force: Vec<String>,
    /// Run only this stage and what it needs.
    #[arg(long, value_name = "STAGE")]
    pub(crate) only: Option<String>,
    /// Stages run in parallel (default: the number of CPUs; with `--executor slurm`, every
    /// ready stage).
    #[arg(short = 'j', long = "jobs", value_name = "N")]
    pub(crate) jobs: Option<usize>,
    #[command(flatten)]
    pub(crate) executor: ExecutorArgs,
}

/// Where stages run.
#[derive(Debug, Args)]
pub(crate) struct ExecutorArgs {
    /// Run stages here (`local`) or as Slurm jobs against the same store (`slurm`).
    #[arg(long, value_enum, default_value_t = ExecutorArg::Local)]
    pub(crate) executor: ExecutorArg,
    /// The Slurm profile (default: `lortflow-slurm.kdl` beside the pipeline, else
    /// `~/.config/lortflow/slurm.kdl`; see docs/slurm.md).
    #[arg(long, value_name = "FILE")]
    pub(crate) slurm_profile: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ExecutorArg {
    Local,
    Slurm,
}

#[derive(Debug, Args)]
pub(crate) struct StageJobArgs {
    #[command(flatten)]
    pub(crate) pipeline: PipelineArgs,
    /// A stage to run and the key its submitter computed for it (repeatable: a batch group).
    #[arg(long = "stage", value_name = "NAME=KEY", required = true)]
    pub(crate) stages: Vec<String>,
    /// Replace the cached artifacts (the submitting run was `--force`d).
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    #[command(flatten)]
    pub(crate) pipeline: PipelineArgs,
    /// Stages run in parallel (default: the number of CPUs; with `--executor slurm`, every
    /// ready stage).
    #[arg(short = 'j', long = "jobs", value_name = "N")]
    pub(crate) jobs: Option<usize>,
    #[command(flatten)]
    pub(crate) executor: ExecutorArgs,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    pub(crate) pipeline: PipelineArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    pub(crate) format: OutputFormat,
}

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    #[command(flatten)]
    pub(crate) pipeline: PipelineArgs,
    /// The stage (as `lortflow graph` or `status` names it).
    pub(crate) stage: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    pub(crate) format: OutputFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutputFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CacheCommand {
    /// List the artifacts in a store.
    Ls {
        /// A pipeline whose store to list (default: `.lortflow` in the current directory).
        file: Option<PathBuf>,
        /// Artifact store.
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
    },
    /// Remove every artifact the given pipelines do not reference.
    Gc {
        /// The pipelines whose artifacts to keep (all sharing one store).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Artifact store.
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
        /// Show what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    #[command(flatten)]
    pub(crate) pipeline: PipelineArgs,
    /// The stage to export: a backbone (a PyTorch state dict), a features stage, a dataset of
    /// feature vectors, or a head.
    pub(crate) stage: String,
    /// Output directory (created if missing).
    #[arg(long, value_name = "DIR")]
    pub(crate) to: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ReportFormat {
    Human,
    Markdown,
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct ReportArgs {
    #[command(flatten)]
    pub(crate) pipeline: PipelineArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Human)]
    pub(crate) format: ReportFormat,
    /// Show what changed since an earlier run: a run id (as in `.lortflow/runs/`) or `previous`.
    #[arg(long, value_name = "RUN")]
    pub(crate) compare: Option<String>,
    /// Write one self-contained HTML page instead (tables, plots, training curves, recipes,
    /// provenance): to FILE, or beside the pipeline as `<pipeline>.report.html`.
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    #[allow(clippy::option_option)]
    pub(crate) html: Option<Option<PathBuf>>,
}
