//! `bitnet-pipeline plan`: what `run` would do and why, without running.
use std::process::ExitCode;

use super::run::{apply_selection, check_force, ExecArgs, SelectArgs};
use super::{report_error, Cli, PipelineArgs, EXIT_INVALID};
use crate::format as table;
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub exec: ExecArgs,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Output format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub format: String,
}

pub fn run(cli: &Cli, args: &PlanArgs) -> ExitCode {
    let p = match args.pipeline.load() {
        Ok(p) => p,
        Err(code) => return code,
    };
    if let Err(code) = check_force(&p, &args.exec.force) {
        return code;
    }
    let mut opts = match args.exec.options(&cli.runs_dir) {
        Ok(o) => o,
        Err(e) => return report_error(&e, EXIT_INVALID),
    };
    let p = match apply_selection(&p, &args.select.selection(), &mut opts) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let cache_only = opts.cache_only.clone();
    let result = (|| -> anyhow::Result<Vec<crate::engine::PlanEntry>> {
        // Planning reads the DB but never creates one.
        let entries = if cli.db.exists() {
            let store = Store::open(&cli.db)?;
            crate::engine::plan(&store, &p, &crate::stages::registry(), &opts)?
        } else {
            let dir = tempfile_dir()?;
            let store = Store::open(&dir.join("empty.db"))?;
            let e = crate::engine::plan(&store, &p, &crate::stages::registry(), &opts)?;
            let _ = std::fs::remove_dir_all(&dir);
            e
        };
        Ok(entries)
    })();
    let entries = match result {
        Ok(e) => e,
        Err(e) => return report_error(&e, EXIT_INVALID),
    };
    if args.format == "json" {
        println!(
            "{}",
            serde_json::to_string_pretty(&entries).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let action = match e.reused_from {
                Some(r) => format!("reuse (run {r})"),
                // `--only` may not run this one: it must come from the cache.
                None if cache_only.contains(&e.stage) => {
                    "MISSING (needed from the cache by --only)".into()
                }
                None => e.action.clone(),
            };
            vec![
                e.stage.clone(),
                e.kind.clone(),
                action,
                e.reasons.join("; "),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(&["stage", "kind", "action", "why"], &rows)
    );
    let runs = entries.iter().filter(|e| e.action == "run").count();
    println!(
        "\n{runs} of {} stages would run, {} reused",
        entries.len(),
        entries.len() - runs
    );
    ExitCode::SUCCESS
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("bitnet-pipeline-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
