//! `bitnet-pipeline run`: validate, record a new run, execute it, print a
//! summary. Nothing touches the DB until the pipeline is valid.
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;

use super::{report_error, Cli, PipelineArgs, EXIT_INTERRUPTED, EXIT_STAGE_FAILED};
use crate::engine::select::Selection;
use crate::engine::{self, Executor, JobSlots, RunOptions, RunOutcome};
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
    /// Where stages run: `local` child processes, or one `slurm` batch job
    /// per stage (default: the pipeline's `executor.type`, else local).
    #[arg(long, value_name = "KIND", value_parser = ["local", "slurm"])]
    pub executor: Option<String>,
}

/// Partial runs: which part of the pipeline to run.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SelectArgs {
    /// Run this stage and everything upstream of it, nothing downstream (repeatable).
    #[arg(long, value_name = "STAGE")]
    pub until: Vec<String>,
    /// Run only these stages; their upstream stages must be reusable from
    /// the cache (the command says which are missing).
    #[arg(long, value_name = "STAGE", num_args = 1..)]
    pub only: Vec<String>,
    /// Re-run this stage and everything downstream of it (repeatable).
    #[arg(long, value_name = "STAGE")]
    pub from: Vec<String>,
}

impl SelectArgs {
    pub fn selection(&self) -> Selection {
        Selection {
            until: self.until.clone(),
            only: self.only.clone(),
            from: self.from.clone(),
        }
    }
}

/// Parameter sweeps.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SweepArgs {
    /// Sweep a param: `train.lr=1e-4,3e-4,1e-3`, `train.steps=range(100,500,100)`,
    /// or with --sweep-random `uniform(a,b)`, `loguniform(a,b)`, `randint(a,b)`.
    /// One run per point of the grid of all --sweep axes (repeatable).
    #[arg(long, value_name = "KEY=VALUES")]
    pub sweep: Vec<String>,
    /// Draw N random points from the --sweep axes instead of the grid.
    #[arg(long, value_name = "N")]
    pub sweep_random: Option<usize>,
    /// Seed of --sweep-random (the same seed gives the same points).
    #[arg(long, value_name = "SEED", default_value_t = 0)]
    pub sweep_seed: u64,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub exec: ExecArgs,
    #[command(flatten)]
    pub select: SelectArgs,
    #[command(flatten)]
    pub sweep: SweepArgs,
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
            cache_only: Vec::new(),
            executor: Executor::Local,
            slots: JobSlots::new(jobs.max(1)),
            gpu: JobSlots::new(1),
            label: String::new(),
            concurrent_stages: 1,
        })
    }
}

/// The executor a run uses: `--executor`, else the pipeline's
/// `executor.type`, else `recorded` (a resumed run's), else local. Slurm is
/// checked here, before anything is written.
pub fn resolve_executor(
    flag: Option<&str>,
    p: &Pipeline,
    recorded: Option<&str>,
) -> Result<Executor, ExitCode> {
    let spec = p.executor.clone().unwrap_or_default();
    let kind = flag
        .or(recorded)
        .or(spec.kind.as_deref())
        .unwrap_or("local");
    if kind != "slurm" {
        return Ok(Executor::Local);
    }
    if let Err(e) = crate::engine::slurm::check_available() {
        eprintln!("error: {e}");
        return Err(ExitCode::from(super::EXIT_INVALID));
    }
    Ok(Executor::Slurm(spec.resources()))
}

/// Applies `--until/--only/--from` to the pipeline and the options.
pub fn apply_selection(
    p: &Pipeline,
    selection: &Selection,
    opts: &mut RunOptions,
) -> Result<Pipeline, ExitCode> {
    match selection.apply(p) {
        Ok(sel) => {
            opts.force.extend(sel.force);
            opts.cache_only = sel.cache_only;
            Ok(sel.pipeline)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(super::EXIT_INVALID))
        }
    }
}

/// `--only`: every upstream stage must be reusable now, or the command says
/// which are missing and how to get them, and writes nothing.
pub(super) fn check_only_upstream(
    cli: &Cli,
    p: &Pipeline,
    opts: &RunOptions,
) -> Result<(), ExitCode> {
    if opts.cache_only.is_empty() {
        return Ok(());
    }
    let entries = if cli.db.exists() {
        match Store::open_existing(&cli.db)
            .map_err(anyhow::Error::from)
            .and_then(|s| engine::plan(&s, p, &crate::stages::registry(), opts))
        {
            Ok(e) => e,
            Err(e) => return Err(super::report_error(&e, super::EXIT_INVALID)),
        }
    } else {
        Vec::new()
    };
    let missing: Vec<String> = opts
        .cache_only
        .iter()
        .filter(|s| {
            !entries
                .iter()
                .any(|e| &e.stage == *s && e.action == "reuse")
        })
        .cloned()
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let last = missing.last().cloned().unwrap_or_default();
    eprintln!(
        "error: `--only` runs only the stages it names, but their upstream {} not in the cache with the current inputs: {}\n  help: run them first with `bitnet-pipeline run {} --until {last}`, or use `--from` instead of `--only`; `bitnet-pipeline plan` shows why each would run",
        if missing.len() == 1 { "stage is" } else { "stages are" },
        missing.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", "),
        p.display_path.display()
    );
    Err(ExitCode::from(super::EXIT_INVALID))
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

fn new_run_with(
    p: &Pipeline,
    runs_dir: &Path,
    sweep_id: Option<i64>,
    selection: &Selection,
    executor: &Executor,
) -> NewRun {
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
        sweep_id,
        selection: (!selection.is_empty())
            .then(|| serde_json::to_string(selection).unwrap_or_default()),
        executor: executor.name().to_string(),
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
    let executor = match resolve_executor(args.exec.executor.as_deref(), &p, None) {
        Ok(e) => e,
        Err(code) => return code,
    };
    let mut opts = match args.exec.options(&cli.runs_dir) {
        Ok(o) => o,
        Err(e) => return report_error(&e, super::EXIT_INVALID),
    };
    opts.executor = executor;
    let selection = args.select.selection();
    let selected = match apply_selection(&p, &selection, &mut opts) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if !args.sweep.sweep.is_empty() || args.sweep.sweep_random.is_some() {
        return super::sweep::run(cli, args, &p, &selection, opts);
    }
    if let Err(code) = check_only_upstream(cli, &selected, &opts) {
        return code;
    }
    let result = (|| -> anyhow::Result<RunOutcome> {
        let mut store = Store::open(&cli.db)?;
        store.reap_stale_runs()?;
        let flag = interrupt_flag()?;
        let run_id = store.create_run(&new_run_with(
            &selected,
            &opts.runs_dir,
            None,
            &selection,
            &opts.executor,
        ))?;
        let reg = crate::stages::registry();
        engine::execute(&mut store, run_id, &selected, &reg, &opts, flag)
    })();
    finish(cli, result, &args.exec)
}

/// Records the runs of a sweep (nothing is written if any point is invalid)
/// and runs them side by side; the sweep module drives this.
pub(super) fn record_sweep(
    cli: &Cli,
    points: &[(Pipeline, Pipeline)],
    selection: &Selection,
    opts: &RunOptions,
    sweep_spec: &serde_json::Value,
) -> anyhow::Result<(i64, Vec<(i64, Pipeline)>)> {
    let mut store = Store::open(&cli.db)?;
    store.reap_stale_runs()?;
    let first = &points[0].0;
    let sweep_id = store.create_sweep(&first.name, &first.path.to_string_lossy(), sweep_spec)?;
    let mut runs = Vec::new();
    for (full, selected) in points {
        let mut nr = new_run_with(
            selected,
            &opts.runs_dir,
            Some(sweep_id),
            selection,
            &opts.executor,
        );
        // The recorded text and overrides are the full pipeline's, so
        // `resume` re-applies the selection to the same thing.
        nr.pipeline_source = full.source.clone();
        runs.push((store.create_run(&nr)?, selected.clone()));
    }
    Ok((sweep_id, runs))
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
