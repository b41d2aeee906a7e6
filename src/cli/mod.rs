//! The command line. Parses arguments, calls the library, maps outcomes to
//! exit codes: 0 success, 1 a stage failed, 2 invalid input, 130 interrupted.
//! One file per subcommand.

mod dag;
mod exec_stage;
mod generate;
mod plan;
pub mod pot10;
mod report;
mod resume;
mod run;
mod runs;
mod stages;
mod sweep;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::pipeline::{Diagnostics, Pipeline};

pub const EXIT_OK: u8 = 0;
pub const EXIT_STAGE_FAILED: u8 = 1;
pub const EXIT_INVALID: u8 = 2;
pub const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, Parser)]
#[command(
    name = "bitnet-pipeline",
    version,
    about = "Declarative experiment pipelines for compressing language models to BitNet b1.58",
    long_about = "Declarative experiment pipelines for compressing language models to BitNet b1.58.\n\n\
        A YAML file describes a DAG of stages (load a checkpoint, convert it to BitNet, train, \
        evaluate, profile, check code, validate targets). `run` executes it with independent \
        stages in parallel, reuses stages whose inputs did not change, and records every \
        parameter, metric and artifact in a SQLite results DB.",
    after_help = "Examples:\n  \
        bitnet-pipeline validate pipelines/phase4.yaml\n  \
        bitnet-pipeline plan pipelines/phase4.yaml --set train.steps=500\n  \
        bitnet-pipeline run pipelines/phase4.yaml --set train.steps=500\n  \
        bitnet-pipeline runs list --where \"metrics.speedup >= 2\"\n  \
        bitnet-pipeline runs compare 12 13 --only-changed\n  \
        bitnet-pipeline resume 7\n  \
        bitnet-pipeline generate 13/train --prompt \"Call me Ishmael.\"\n\n\
        Exit codes: 0 success, 1 a stage failed, 2 invalid input, 130 interrupted."
)]
pub struct Cli {
    /// Results DB (created on first run).
    #[arg(
        long,
        global = true,
        default_value = "runs/results.db",
        value_name = "PATH"
    )]
    pub db: PathBuf,
    /// Folder for run outputs (`<runs-dir>/<run-id>/<stage>/`).
    #[arg(long, global = true, default_value = "runs", value_name = "DIR")]
    pub runs_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline.
    Run(run::RunArgs),
    /// Check a pipeline file and report every problem with its location.
    Validate(validate::ValidateArgs),
    /// Show what `run` would do: which stages run, which are reused, and why.
    Plan(plan::PlanArgs),
    /// Print the stage graph as text, Mermaid or Graphviz dot.
    Dag(dag::DagArgs),
    /// Continue a failed or interrupted run without re-running completed stages.
    Resume(resume::ResumeArgs),
    /// List, inspect and compare recorded runs.
    #[command(subcommand)]
    Runs(runs::RunsCommand),
    /// Render a run's HTML report (also written after every run).
    Report(report::ReportArgs),
    /// List the stage kinds and their options.
    Stages(stages::StagesArgs),
    /// Generate text from a stage's model or a model folder (KV cache, streamed).
    Generate(generate::GenerateArgs),
    /// Check C, Python and Rust sources against NASA's Power of Ten rules.
    Pot10(pot10::Pot10Args),
    /// Run one stage in this process (used by the runner; not for users).
    #[command(hide = true)]
    ExecStage(exec_stage::ExecStageArgs),
}

/// Arguments shared by commands that read a pipeline.
#[derive(Debug, clap::Args)]
pub struct PipelineArgs {
    /// Pipeline file (YAML).
    pub pipeline: PathBuf,
    /// Override a parameter: `--set train.lr=1e-4` (typed like YAML); `+key=value` adds a new key.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

impl PipelineArgs {
    /// Loads and validates the pipeline, printing diagnostics on failure.
    pub fn load(&self) -> Result<Pipeline, ExitCode> {
        let reg = crate::stages::registry();
        crate::pipeline::load(&self.pipeline, &self.set, &reg).map_err(report_invalid)
    }
}

pub fn report_invalid(d: Diagnostics) -> ExitCode {
    eprintln!("{d}");
    ExitCode::from(EXIT_INVALID)
}

/// Prints an unexpected error with its causes and returns `code`.
pub fn report_error(e: &anyhow::Error, code: u8) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::from(code)
}

pub fn main() -> ExitCode {
    // Like other Unix tools, die quietly when the reader of our output goes
    // away (`bitnet-pipeline runs list | head`) instead of panicking.
    // SAFETY: restoring the default disposition of SIGPIPE before any
    // thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match &cli.command {
        Command::Run(a) => run::run(&cli, a),
        Command::Validate(a) => validate::run(a),
        Command::Plan(a) => plan::run(&cli, a),
        Command::Dag(a) => dag::run(a),
        Command::Resume(a) => resume::run(&cli, a),
        Command::Runs(c) => runs::run(&cli, c),
        Command::Report(a) => report::run(&cli, a),
        Command::Stages(a) => stages::run(a),
        Command::Generate(a) => generate::run(&cli, a),
        Command::Pot10(a) => match pot10::run(a) {
            Ok(code) => code,
            Err(e) => report_error(&e, EXIT_INVALID),
        },
        Command::ExecStage(a) => exec_stage::run(a),
    }
}
