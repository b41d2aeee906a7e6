//! `bitnet-pipeline validate`: check a pipeline without running anything.
use std::process::ExitCode;

use super::PipelineArgs;

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

pub fn run(args: &ValidateArgs) -> ExitCode {
    match args.pipeline.load() {
        Ok(p) => {
            println!(
                "ok: `{}` is valid ({} stages: {})",
                p.display_path.display(),
                p.stages.len(),
                p.order().join(" -> ")
            );
            let params = crate::pipeline::params::flatten(&p.params);
            if !params.is_empty() {
                println!("params:");
                for (k, v) in params {
                    println!("  {k} = {v}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}
