//! `bitnet-pipeline exec-stage`: the child process of one stage (internal).
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ExecStageArgs {
    /// The stage's invocation file, written by the runner.
    pub invocation: PathBuf,
}

pub fn run(args: &ExecStageArgs) -> ExitCode {
    crate::stages::exec::exec_stage(&args.invocation)
}
