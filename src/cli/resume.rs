//! `bitnet-pipeline resume RUN`: continue a failed or interrupted run with
//! the pipeline text and overrides it started with; completed stages stay.
use std::process::ExitCode;

use super::run::{
    apply_selection, check_force, finish, interrupt_flag, resolve_executor, ExecArgs,
};
use super::{report_error, report_invalid, Cli, EXIT_INVALID};
use crate::engine;
use crate::engine::select::Selection;
use crate::liveness;
use crate::store::{run_status, Store};

#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    /// Run id (`bitnet-pipeline runs list`).
    pub run: i64,
    #[command(flatten)]
    pub exec: ExecArgs,
}

pub fn run(cli: &Cli, args: &ResumeArgs) -> ExitCode {
    let mut store = match Store::open_existing(&cli.db) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}; is `--db` right?");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    if let Err(e) = store.reap_stale_runs() {
        return report_error(&e.into(), EXIT_INVALID);
    }
    let record = match store.run(args.run) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    match record.status.as_str() {
        run_status::COMPLETED => {
            println!("run {} already completed; nothing to resume", record.id);
            return ExitCode::SUCCESS;
        }
        run_status::RUNNING => {
            eprintln!(
                "error: run {} is still running (runner pid {} on {}); stop it first",
                record.id,
                record.runner_pid.unwrap_or_default(),
                record.host.as_deref().unwrap_or("?")
            );
            return ExitCode::from(EXIT_INVALID);
        }
        _ => {}
    }
    let reg = crate::stages::registry();
    let path = std::path::PathBuf::from(&record.pipeline_path);
    let p = match crate::pipeline::parse(
        &record.pipeline_source,
        &path,
        &path,
        &record.overrides,
        &reg,
    ) {
        Ok(p) => p,
        Err(d) => return report_invalid(d),
    };
    if let Err(code) = check_force(&p, &args.exec.force) {
        return code;
    }
    if let Ok(text) = std::fs::read_to_string(&path) {
        if blake3::hash(text.as_bytes()).to_hex().as_str() != record.pipeline_sha {
            eprintln!(
                "note: {} changed since run {} started; resuming with the version it started with",
                path.display(),
                record.id
            );
        }
    }
    // A partial run continues the same part of the pipeline, on the same
    // executor (unless `--executor` says otherwise).
    let selection: Selection = record
        .selection
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    let executor = match resolve_executor(
        args.exec.executor.as_deref(),
        &p,
        record.executor.as_deref(),
    ) {
        Ok(e) => e,
        Err(code) => return code,
    };
    let mut opts = match args.exec.options(&cli.runs_dir) {
        Ok(o) => o,
        Err(e) => return report_error(&e, EXIT_INVALID),
    };
    opts.executor = executor;
    let p = match apply_selection(&p, &selection, &mut opts) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let result = (|| -> anyhow::Result<engine::RunOutcome> {
        opts.runs_dir = std::path::PathBuf::from(&record.runs_dir);
        let flag = interrupt_flag()?;
        store.claim_run(record.id, &std::env::args().collect::<Vec<_>>())?;
        debug_assert!(liveness::is_alive(Some(std::process::id() as i64), None));
        engine::execute(&mut store, record.id, &p, &reg, &opts, flag)
    })();
    finish(cli, result, &args.exec)
}
