//! `bitnet-pipeline dag`: the stage graph as text, Mermaid or dot.
use std::process::ExitCode;

use super::PipelineArgs;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DagFormat {
    Text,
    Mermaid,
    Dot,
}

#[derive(Debug, clap::Args)]
pub struct DagArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[arg(long, value_enum, default_value = "text")]
    pub format: DagFormat,
}

pub fn run(args: &DagArgs) -> ExitCode {
    let p = match args.pipeline.load() {
        Ok(p) => p,
        Err(code) => return code,
    };
    let kinds = p.kinds();
    let text = match args.format {
        DagFormat::Text => p.graph.to_text(&p.order(), &kinds),
        DagFormat::Mermaid => p.graph.to_mermaid(&kinds),
        DagFormat::Dot => p.graph.to_dot(&kinds),
    };
    print!("{text}");
    ExitCode::SUCCESS
}
