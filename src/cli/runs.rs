//! `bitnet-pipeline runs`: list, filter, inspect and compare recorded runs.
use std::path::PathBuf;
use std::process::ExitCode;

use super::{Cli, EXIT_INVALID};
use crate::format as table;
use crate::report::{compare as cmp, RunData};
use crate::stages::validate::OPTIMAL_PREFIX;
use crate::store::{filter, RunRecord, Store};

#[derive(Debug, clap::Subcommand)]
pub enum RunsCommand {
    /// Runs, newest first.
    List {
        /// How many runs to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
        /// Only runs matching a filter, e.g.
        /// "metrics.speedup >= 2 and params.train.lr = 3e-4". Fields:
        /// `params.KEY`, `metrics.KEY` or `metrics.STAGE.KEY` (final values),
        /// `attributes.COLUMN` (status, name, git_commit, ...); operators
        /// =, !=, <, <=, >, >=; `and`, `or`, parentheses.
        #[arg(long = "where", value_name = "FILTER")]
        filter: Option<String>,
        /// Only the runs of this sweep.
        #[arg(long, value_name = "ID")]
        sweep: Option<i64>,
    },
    /// Params, attributes and final metrics of runs side by side, with the
    /// change against the first run.
    Compare {
        /// Two or more run ids; the first is the reference.
        #[arg(required_unless_present = "sweep", num_args = 2..)]
        runs: Vec<i64>,
        /// The points of a sweep: the params that vary and every metric, one
        /// row per run (the HTML form adds a chart per metric and param).
        #[arg(long, value_name = "ID", conflicts_with = "runs")]
        sweep: Option<i64>,
        /// With --sweep: the best point by this metric (`stage.key` or `key`).
        #[arg(long, value_name = "METRIC", requires = "sweep")]
        best: Option<String>,
        /// Whether --best is the lowest or the highest value.
        #[arg(long, default_value = "min", value_parser = ["min", "max"])]
        goal: String,
        /// Only rows where some run differs from the first.
        #[arg(long)]
        only_changed: bool,
        #[arg(long, default_value = "table", value_parser = ["table", "json", "csv", "html"])]
        format: String,
        /// Write to this file instead of stdout.
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },
    /// Remove runs: their DB rows and folders. Stage outputs that other
    /// runs reuse are kept (and those runs now name a surviving source).
    Rm {
        #[arg(required = true)]
        runs: Vec<i64>,
        /// Say what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove old runs: all but the newest N, or those older than an age.
    Gc {
        /// Keep the N newest runs.
        #[arg(long, value_name = "N")]
        keep_last: Option<usize>,
        /// Only runs started longer ago than this (`30d`, `12h`, `90m`).
        #[arg(long, value_name = "AGE")]
        older_than: Option<String>,
        /// Say what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// One run: provenance, params, stages, final metrics, artifacts.
    Show {
        run: i64,
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        format: String,
    },
}

fn duration(r: &RunRecord) -> String {
    let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok();
    match (parse(&r.started_at), r.ended_at.as_deref().and_then(parse)) {
        (Some(a), Some(b)) => format!("{:.2} s", (b - a).num_milliseconds() as f64 / 1000.0),
        _ => "-".into(),
    }
}

pub fn run(cli: &Cli, cmd: &RunsCommand) -> ExitCode {
    let mut store = match Store::open_existing(&cli.db) {
        Ok(s) => s,
        Err(_) if !cli.db.exists() => {
            eprintln!(
                "error: no results DB at `{}`; run a pipeline first (`bitnet-pipeline run FILE`) or pass --db",
                cli.db.display()
            );
            return ExitCode::from(EXIT_INVALID);
        }
        // A DB that exists but cannot be used (newer schema, read-only, corrupt)
        // says why, not that it is missing (issue #16).
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let _ = store.reap_stale_runs();
    let result = match cmd {
        RunsCommand::List {
            limit,
            format,
            filter,
            sweep,
        } => {
            let expr = match filter.as_deref().map(filter::parse).transpose() {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("{}", e.render(filter.as_deref().unwrap_or_default()));
                    return ExitCode::from(EXIT_INVALID);
                }
            };
            list(&store, *limit, format, expr.as_ref(), *sweep)
        }
        RunsCommand::Compare {
            sweep: Some(id),
            best,
            goal,
            format,
            out,
            ..
        } => compare_sweep(&store, *id, best.as_deref(), goal, format, out.as_deref()),
        RunsCommand::Compare {
            runs,
            only_changed,
            format,
            out,
            ..
        } => compare(&store, runs, *only_changed, format, out.as_deref()),
        RunsCommand::Rm { runs, dry_run } => remove(&mut store, runs, *dry_run),
        RunsCommand::Gc {
            keep_last,
            older_than,
            dry_run,
        } => {
            if keep_last.is_none() && older_than.is_none() {
                eprintln!("error: `runs gc` needs `--keep-last N` and/or `--older-than AGE` (e.g. `--older-than 30d`); to remove given runs use `runs rm`");
                return ExitCode::from(EXIT_INVALID);
            }
            let cutoff = match older_than.as_deref().map(parse_age).transpose() {
                Ok(c) => c,
                Err(msg) => {
                    eprintln!("error: {msg}");
                    return ExitCode::from(EXIT_INVALID);
                }
            };
            store
                .gc_candidates(*keep_last, cutoff.as_deref())
                .map_err(anyhow::Error::from)
                .and_then(|ids| {
                    if ids.is_empty() {
                        println!("nothing to remove");
                        return Ok(());
                    }
                    remove(&mut store, &ids, *dry_run)
                })
        }
        RunsCommand::Show { run, format } => show(&store, *run, format),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_INVALID)
        }
    }
}

/// `30d` / `12h` / `90m` / `45s` before now, as an RFC 3339 cut-off.
fn parse_age(age: &str) -> Result<String, String> {
    let t = age.trim();
    let bad =
        || format!("--older-than `{age}`: write a number and a unit, e.g. `30d`, `12h`, `90m`");
    let (num, unit) = t.split_at(t.len().saturating_sub(1));
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = n * match unit {
        "d" => 86400.0,
        "h" => 3600.0,
        "m" => 60.0,
        "s" => 1.0,
        _ => return Err(bad()),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(bad());
    }
    let cutoff = chrono::Utc::now() - chrono::Duration::milliseconds((secs * 1000.0) as i64);
    Ok(cutoff.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Bytes under a folder (files only; links are not followed).
fn disk_bytes(path: &std::path::Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|rd| rd.flatten().map(|e| disk_bytes(&e.path())).sum())
        .unwrap_or(0)
}

fn remove(store: &mut Store, ids: &[i64], dry_run: bool) -> anyhow::Result<()> {
    let removal = if dry_run {
        store.plan_removal(ids)?
    } else {
        store.remove_runs(ids)?
    };
    let verb = if dry_run { "would remove" } else { "removed" };
    let mut freed = 0u64;
    for (id, dir) in &removal.run_dirs {
        let kept: Vec<&std::path::PathBuf> = removal
            .kept_outputs
            .iter()
            .filter(|(k, _)| k.starts_with(dir))
            .map(|(k, _)| k)
            .collect();
        let bytes = disk_bytes(dir) - kept.iter().map(|k| disk_bytes(k)).sum::<u64>();
        freed += bytes;
        if !dry_run && dir.exists() {
            remove_except(dir, &kept)?;
        }
        println!(
            "{verb} run {id} ({})",
            crate::report::charts::fmt_bytes(bytes as f64)
        );
    }
    for (dir, users) in &removal.kept_outputs {
        println!(
            "  kept {} (reused by run{} {})",
            dir.display(),
            if users.len() == 1 { "" } else { "s" },
            users
                .iter()
                .map(|u| u.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!(
        "{} {}",
        if dry_run { "would free" } else { "freed" },
        crate::report::charts::fmt_bytes(freed as f64)
    );
    Ok(())
}

/// Deletes `dir` except the listed sub-folders (and the folders leading to them).
fn remove_except(dir: &std::path::Path, keep: &[&std::path::PathBuf]) -> anyhow::Result<()> {
    if keep.is_empty() {
        return std::fs::remove_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot remove {}: {e}", dir.display()));
    }
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if keep.iter().any(|k| k.as_path() == p) {
            continue;
        }
        if keep.iter().any(|k| k.starts_with(&p)) {
            remove_except(&p, keep)?;
        } else if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

fn compare_sweep(
    store: &Store,
    id: i64,
    best: Option<&str>,
    goal: &str,
    format: &str,
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use crate::report::sweep::{Goal, SweepView};
    let view = SweepView::load(store, id)?;
    let goal = if goal == "max" { Goal::Max } else { Goal::Min };
    let best = best.map(|b| (b, goal));
    let text = match format {
        "json" => serde_json::to_string_pretty(&view.to_json(best)?)? + "\n",
        "html" => view.to_html(best)?,
        "csv" => cmp::to_csv(&view.runs, &view.rows),
        _ => {
            let mut t = view.table();
            if let Some((k, g)) = best {
                let (i, v) = view.best(k, g)?;
                t.push_str(&format!(
                    "\nbest by `{k}` ({}): run {} = {}\n",
                    if g == Goal::Min { "lowest" } else { "highest" },
                    view.runs[i].run.id,
                    table::fmt_value(v)
                ));
            }
            t
        }
    };
    match out {
        Some(path) => {
            std::fs::write(path, text)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            println!("{}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

fn list(
    store: &Store,
    limit: usize,
    format: &str,
    filter: Option<&filter::Expr>,
    sweep: Option<i64>,
) -> anyhow::Result<()> {
    let pool = match sweep {
        Some(id) => {
            if store.sweep(id)?.is_none() {
                anyhow::bail!("sweep {id} does not exist");
            }
            store.sweep_runs(id)?
        }
        None => store.runs(usize::MAX >> 1)?,
    };
    let runs: Vec<RunRecord> = match filter {
        None => pool.into_iter().take(limit).collect(),
        Some(expr) => {
            let mut kept = Vec::new();
            for r in pool {
                if kept.len() == limit {
                    break;
                }
                if expr.matches(&RunData::load(store, r.id)?) {
                    kept.push(r);
                }
            }
            kept
        }
    };
    if format == "json" {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(());
    }
    let mut rows = Vec::new();
    for r in &runs {
        let stages = store.stages(r.id)?;
        let done = stages
            .iter()
            .filter(|s| crate::store::stage_status::is_done(&s.status))
            .count();
        let disk = disk_bytes(&std::path::Path::new(&r.runs_dir).join(r.id.to_string()));
        rows.push(vec![
            r.id.to_string(),
            r.name.clone(),
            r.status.clone(),
            r.started_at.clone(),
            duration(r),
            format!("{done}/{}", stages.len()),
            r.sweep_id
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into()),
            crate::report::charts::fmt_bytes(disk as f64),
        ]);
    }
    print!(
        "{}",
        table::render(
            &[
                "id",
                "pipeline",
                "status",
                "started",
                "duration",
                "stages done",
                "sweep",
                "disk"
            ],
            &rows
        )
    );
    Ok(())
}

fn show(store: &Store, id: i64, format: &str) -> anyhow::Result<()> {
    let r = store.run(id)?;
    let stages = store.stages(id)?;
    let params = store.params(id)?;
    let metrics = store.metrics(id)?;
    let artifacts = store.artifacts(id)?;
    let targets = store.targets(id)?;
    if format == "json" {
        let v = serde_json::json!({
            "run": r,
            "params": params.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<serde_json::Map<_, _>>(),
            "stages": stages,
            "metrics": metrics.iter().map(|(s, m)| serde_json::json!({"stage": s, "metric": m})).collect::<Vec<_>>(),
            "artifacts": artifacts.iter().map(|(s, a)| serde_json::json!({"stage": s, "artifact": a})).collect::<Vec<_>>(),
            "targets": targets.iter().map(|(s, t)| serde_json::json!({"stage": s, "target": t})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("run {}: {} ({})", r.id, r.name, r.status);
    println!(
        "  pipeline  {} (blake3 {})",
        r.pipeline_path,
        &r.pipeline_sha[..12.min(r.pipeline_sha.len())]
    );
    println!("  started   {}  duration {}", r.started_at, duration(&r));
    let dirty = match r.git_dirty {
        Some(true) => " (dirty)",
        _ => "",
    };
    println!(
        "  git       {}{dirty}",
        r.git_commit.as_deref().unwrap_or("not a git checkout")
    );
    println!("  host      {}", r.host.as_deref().unwrap_or("?"));
    println!(
        "  device    {}  torch {}  seed {}",
        r.device.as_deref().unwrap_or("-"),
        r.torch_version.as_deref().unwrap_or("-"),
        r.seed.map(|s| s.to_string()).unwrap_or_else(|| "-".into())
    );
    if !r.overrides.is_empty() {
        println!("  overrides {}", r.overrides.join(" "));
    }
    println!("  argv      {}", r.argv.join(" "));
    if let Some(sw) = r.sweep_id {
        println!("  sweep     {sw} (`bitnet-pipeline runs compare --sweep {sw}`)");
    }
    if let Some(sel) = r
        .selection
        .as_deref()
        .and_then(|s| serde_json::from_str::<crate::engine::select::Selection>(s).ok())
    {
        println!("  partial   {}", sel.describe());
    }
    if let Some(ex) = r.executor.as_deref().filter(|e| *e != "local") {
        println!("  executor  {ex}");
    }
    if !params.is_empty() {
        let reused = store.reused_params(id)?;
        println!("\nparams");
        for (k, v) in &params {
            match reused.iter().find(|(rk, _)| rk == k) {
                Some((_, src)) => println!("  {k} = {v}  (reused from run {src})"),
                None => println!("  {k} = {v}"),
            }
        }
    }
    println!("\nstages");
    let jobs = stages.iter().any(|s| s.job_id.is_some());
    let rows: Vec<Vec<String>> = stages
        .iter()
        .map(|s| {
            let status = match s.reused_from {
                Some(src) => format!("{} (run {src})", s.status),
                None => s.status.clone(),
            };
            let job = match (&s.job_id, &s.node) {
                (Some(j), Some(n)) => format!("{j} on {n}"),
                (Some(j), None) => j.clone(),
                _ => "-".into(),
            };
            let mut row = vec![
                format!("  {}", s.stage),
                s.kind.clone(),
                status,
                s.attempts.to_string(),
            ];
            if jobs {
                row.push(job);
            }
            row.push(
                s.error
                    .clone()
                    .unwrap_or_default()
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string(),
            );
            row
        })
        .collect();
    let header: &[&str] = if jobs {
        &[
            "  stage",
            "kind",
            "status",
            "attempts",
            "slurm job",
            "error",
        ]
    } else {
        &["  stage", "kind", "status", "attempts", "error"]
    };
    print!("{}", table::render(header, &rows));
    if !metrics.is_empty() {
        println!("\nmetrics (final values)");
        let mut last: Vec<(String, String, f64, Option<String>, usize)> = Vec::new();
        for (s, m) in &metrics {
            match last.iter_mut().find(|(ls, lk, ..)| ls == s && lk == &m.key) {
                Some(e) => {
                    e.2 = m.value;
                    e.4 += 1;
                }
                None => last.push((s.clone(), m.key.clone(), m.value, m.unit.clone(), 1)),
            }
        }
        let rows: Vec<Vec<String>> = last
            .into_iter()
            .map(|(s, k, v, u, n)| {
                vec![
                    format!("  {s}"),
                    k,
                    table::fmt_value(v),
                    u.unwrap_or_default(),
                    if n > 1 {
                        format!("{n} points")
                    } else {
                        String::new()
                    },
                ]
            })
            .collect();
        print!(
            "{}",
            table::render(&["  stage", "metric", "value", "unit", "history"], &rows)
        );
    }
    if !targets.is_empty() {
        println!("\ntargets");
        let rows: Vec<Vec<String>> = targets
            .iter()
            .map(|(_, t)| {
                let optimal = t.name.starts_with(OPTIMAL_PREFIX);
                let status = match (optimal, t.passed) {
                    (false, true) => "PASSED",
                    (false, false) => "FAILED",
                    (true, true) => "OPTIMAL",
                    (true, false) => "NOT OPTIMAL",
                };
                vec![
                    format!("  {}", t.name),
                    t.metric.clone(),
                    t.value.map(table::fmt_value).unwrap_or_else(|| "-".into()),
                    format!("{} {}", t.op, table::fmt_value(t.threshold)),
                    status.to_string(),
                ]
            })
            .collect();
        print!(
            "{}",
            table::render(
                &["  target", "metric", "measured", "condition", "status"],
                &rows
            )
        );
    }
    if !artifacts.is_empty() {
        println!("\nartifacts");
        for (s, a) in &artifacts {
            println!(
                "  {s}/{}  {} bytes  {}",
                a.name,
                a.bytes,
                &a.hash[..12.min(a.hash.len())]
            );
        }
    }
    Ok(())
}

fn compare(
    store: &Store,
    ids: &[i64],
    only_changed: bool,
    format: &str,
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let runs: Vec<RunData> = ids
        .iter()
        .map(|id| RunData::load(store, *id))
        .collect::<anyhow::Result<_>>()?;
    let mut rows = cmp::rows(&runs);
    if only_changed {
        rows.retain(|r| r.changed());
    }
    let text = match format {
        "json" => serde_json::to_string_pretty(&cmp::to_json(&runs, &rows))? + "\n",
        "csv" => cmp::to_csv(&runs, &rows),
        "html" => cmp::to_html(&runs, &rows)?,
        _ => {
            if rows.is_empty() {
                "no differences\n".to_string()
            } else {
                cmp::table(&runs, &rows)
            }
        }
    };
    match out {
        Some(path) => {
            std::fs::write(path, text)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            println!("{}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}
