//! `bitnet-pipeline run`: validate, record a new run, execute it, print a
//! summary. Nothing touches the DB until the pipeline is valid.
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;

use super::{report_error, Cli, PipelineArgs, EXIT_INTERRUPTED, EXIT_STAGE_FAILED};
use crate::engine::{self, RunOptions, RunOutcome};
use crate::format as table;
use crate::liveness;
use crate::pipeline::{params, Pipeline};
use crate::stages::validate::OPTIMAL_PREFIX;
use crate::store::{run_status, NewRun, Store};

/// Options shared by `run` and `resume`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Stages to run at once (default: number of CPU cores).
    #[arg(long, short = 'j', value_name = "N")]
    pub jobs: Option<usize>,
    /// Re-run this stage even if its result is cached (repeatable).
    #[arg(long, value_name = "STAGE")]
    pub force: Vec<String>,
    /// Re-run every stage.
    #[arg(long)]
    pub force_all: bool,
    /// No progress output.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Exit with code 1 when a `validate` stage's verdict is FAILED (for CI
    /// gates); without it a missed target is recorded, not an error.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub exec: ExecArgs,
}

impl ExecArgs {
    pub fn options(&self, runs_dir: &Path) -> anyhow::Result<RunOptions> {
        let jobs = self.jobs.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        Ok(RunOptions {
            jobs: jobs.max(1),
            force: self.force.clone(),
            force_all: self.force_all,
            quiet: self.quiet,
            runs_dir: std::path::absolute(runs_dir)?,
            exe: std::env::current_exe().context("cannot locate the running binary")?,
        })
    }
}

/// Checks that `--force` names real stages.
pub fn check_force(p: &Pipeline, force: &[String]) -> Result<(), ExitCode> {
    for f in force {
        if p.stage(f).is_none() {
            let mut msg = format!("--force `{f}`: no such stage in `{}`", p.name);
            if let Some(h) =
                crate::pipeline::did_you_mean(f, p.stages.iter().map(|s| s.name.as_str()))
            {
                msg.push_str(&format!(" ({h})"));
            }
            eprintln!("error: {msg}");
            return Err(ExitCode::from(super::EXIT_INVALID));
        }
    }
    Ok(())
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn new_run(p: &Pipeline, runs_dir: &Path) -> NewRun {
    let commit = git(&p.dir, &["rev-parse", "HEAD"]);
    let dirty = commit
        .as_ref()
        .and_then(|_| git(&p.dir, &["status", "--porcelain", "--untracked-files=no"]))
        .map(|s| !s.is_empty());
    NewRun {
        name: p.name.clone(),
        pipeline_path: p.path.to_string_lossy().into_owned(),
        pipeline_sha: p.source_hash.clone(),
        pipeline_source: p.source.clone(),
        overrides: p.overrides.iter().map(|o| o.raw.clone()).collect(),
        git_commit: commit,
        git_dirty: dirty,
        host: liveness::hostname(),
        device: p
            .params
            .get("device")
            .and_then(|d| d.as_str())
            .map(str::to_string),
        // The libtorch the plugin was built against (the runner itself
        // does not load libtorch).
        torch_version: Some(env!("BITNET_TORCH_VERSION").to_string()),
        seed: p.params.get("seed").and_then(|s| s.as_i64()),
        argv: std::env::args().collect(),
        runs_dir: runs_dir.to_string_lossy().into_owned(),
        params: params::flatten(&p.params),
        stages: p
            .stages
            .iter()
            .map(|s| (s.name.clone(), s.kind.clone()))
            .collect(),
    }
}

/// SIGINT/SIGTERM set a flag the scheduler polls; children are then
/// stopped in order and the run is marked `interrupted`.
pub fn interrupt_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&flag))
            .context("cannot install signal handlers")?;
    }
    Ok(flag)
}

pub fn run(cli: &Cli, args: &RunArgs) -> ExitCode {
    let p = match args.pipeline.load() {
        Ok(p) => p,
        Err(code) => return code,
    };
    if let Err(code) = check_force(&p, &args.exec.force) {
        return code;
    }
    let result = (|| -> anyhow::Result<RunOutcome> {
        let opts = args.exec.options(&cli.runs_dir)?;
        let mut store = Store::open(&cli.db)?;
        store.reap_stale_runs()?;
        let flag = interrupt_flag()?;
        let run_id = store.create_run(&new_run(&p, &opts.runs_dir))?;
        let reg = crate::stages::registry();
        engine::execute(&mut store, run_id, &p, &reg, &opts, flag)
    })();
    finish(cli, result, &args.exec)
}

/// Prints the summary, writes the run's report, applies `--strict`, and
/// maps the outcome to an exit code.
pub fn finish(cli: &Cli, result: anyhow::Result<RunOutcome>, exec: &ExecArgs) -> ExitCode {
    let quiet = exec.quiet;
    match result {
        Ok(outcome) => {
            if !quiet {
                print_summary(&outcome);
            }
            // The report is a view of the DB: failing to write it must not
            // change what the run's exit code says about the run.
            let store = Store::open_existing(&cli.db);
            match store
                .as_ref()
                .map_err(|e| anyhow::anyhow!("{e}"))
                .and_then(|s| crate::report::write_run_report(s, outcome.run_id, None))
            {
                Ok(path) if !quiet => println!("\nreport: {}", path.display()),
                Ok(_) => {}
                Err(e) => eprintln!(
                    "warning: could not write the report of run {}: {e:#}; retry with `bitnet-pipeline report {}`",
                    outcome.run_id, outcome.run_id
                ),
            }
            // Measurements that say they cannot be trusted (a busy machine,
            // an interval that crosses 1.0) are printed, not just stored.
            if let Ok(s) = store.as_ref() {
                for (stage, m) in s.metrics(outcome.run_id).unwrap_or_default() {
                    if let Some(w) = m
                        .meta
                        .as_ref()
                        .and_then(|v| v.get("warning"))
                        .and_then(|v| v.as_str())
                    {
                        eprintln!("warning: {stage}.{}: {w}", m.key);
                    }
                }
            }
            let verdict = store
                .ok()
                .and_then(|s| s.targets(outcome.run_id).ok())
                .unwrap_or_default();
            let failed: Vec<String> = verdict
                .iter()
                .filter(|(_, t)| !t.passed && !t.name.starts_with(OPTIMAL_PREFIX))
                .map(|(_, t)| {
                    format!(
                        "`{}` measured {} (needs {} {})",
                        t.name,
                        t.value
                            .map(table::fmt_value)
                            .unwrap_or_else(|| "nothing".into()),
                        t.op,
                        table::fmt_value(t.threshold)
                    )
                })
                .collect();
            if !quiet && !verdict.is_empty() {
                let total = verdict
                    .iter()
                    .filter(|(_, t)| !t.name.starts_with(OPTIMAL_PREFIX))
                    .count();
                println!(
                    "verdict: {} ({} of {total} targets passed)",
                    if failed.is_empty() {
                        "PASSED"
                    } else {
                        "FAILED"
                    },
                    total - failed.len()
                );
            }
            match outcome.status.as_str() {
                run_status::COMPLETED if exec.strict && !failed.is_empty() => {
                    eprintln!(
                        "error: run {} completed but its verdict is FAILED (--strict): {}",
                        outcome.run_id,
                        failed.join(", ")
                    );
                    ExitCode::from(EXIT_STAGE_FAILED)
                }
                run_status::COMPLETED => ExitCode::SUCCESS,
                run_status::INTERRUPTED => {
                    eprintln!(
                        "run {} interrupted; continue it with `bitnet-pipeline resume {}`",
                        outcome.run_id, outcome.run_id
                    );
                    ExitCode::from(EXIT_INTERRUPTED)
                }
                _ => {
                    eprintln!(
                        "run {} failed; fix the cause, then `bitnet-pipeline resume {}` continues it",
                        outcome.run_id, outcome.run_id
                    );
                    ExitCode::from(EXIT_STAGE_FAILED)
                }
            }
        }
        Err(e) => report_error(&e, EXIT_STAGE_FAILED),
    }
}

pub fn print_summary(outcome: &RunOutcome) {
    let registry = crate::stages::registry();
    let rows: Vec<Vec<String>> = outcome
        .stages
        .iter()
        .map(|s| {
            let duration = s
                .duration
                .map(|d| format!("{:.2} s", d.as_secs_f64()))
                .unwrap_or_else(|| "-".into());
            let status = match s.reused_from {
                Some(r) if s.status == "cached" => format!("cached (run {r})"),
                _ => s.status.clone(),
            };
            // The kind's key metrics first, then the rest alphabetically.
            let key: &[&str] = registry
                .get(&s.kind)
                .map(|k| k.key_metrics())
                .unwrap_or(&[]);
            let mut ordered: Vec<(&String, &f64)> = s
                .metrics
                .iter()
                .filter(|(k, _)| key.contains(&k.as_str()))
                .collect();
            ordered.sort_by_key(|(k, _)| key.iter().position(|x| x == k));
            ordered.extend(s.metrics.iter().filter(|(k, _)| !key.contains(&k.as_str())));
            let mut metrics: Vec<String> = ordered
                .into_iter()
                .take(4)
                .map(|(k, v)| format!("{k}={}", table::fmt_value(*v)))
                .collect();
            if s.metrics.len() > 4 {
                metrics.push(format!("(+{} more)", s.metrics.len() - 4));
            }
            vec![
                s.stage.clone(),
                s.kind.clone(),
                status,
                duration,
                metrics.join(" "),
            ]
        })
        .collect();
    println!();
    println!("run {}: {}", outcome.run_id, outcome.status);
    print!(
        "{}",
        table::render(
            &["stage", "kind", "status", "duration", "key metrics"],
            &rows
        )
    );
    for s in &outcome.stages {
        if let Some(e) = &s.error {
            if s.status == "failed" {
                println!("\n{} failed: {e}", s.stage);
            }
        }
    }
}
