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
    },
    /// Params, attributes and final metrics of runs side by side, with the
    /// change against the first run.
    Compare {
        /// Two or more run ids; the first is the reference.
        #[arg(required = true, num_args = 2..)]
        runs: Vec<i64>,
        /// Only rows where some run differs from the first.
        #[arg(long)]
        only_changed: bool,
        #[arg(long, default_value = "table", value_parser = ["table", "json", "csv", "html"])]
        format: String,
        /// Write to this file instead of stdout.
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
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
        Err(_) => {
            eprintln!(
                "error: no results DB at `{}`; run a pipeline first (`bitnet-pipeline run FILE`) or pass --db",
                cli.db.display()
            );
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let _ = store.reap_stale_runs();
    let result = match cmd {
        RunsCommand::List {
            limit,
            format,
            filter,
        } => {
            let expr = match filter.as_deref().map(filter::parse).transpose() {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("{}", e.render(filter.as_deref().unwrap_or_default()));
                    return ExitCode::from(EXIT_INVALID);
                }
            };
            list(&store, *limit, format, expr.as_ref())
        }
        RunsCommand::Compare {
            runs,
            only_changed,
            format,
            out,
        } => compare(&store, runs, *only_changed, format, out.as_deref()),
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

fn list(
    store: &Store,
    limit: usize,
    format: &str,
    filter: Option<&filter::Expr>,
) -> anyhow::Result<()> {
    let runs: Vec<RunRecord> = match filter {
        None => store.runs(limit)?,
        Some(expr) => {
            let mut kept = Vec::new();
            for r in store.runs(usize::MAX >> 1)? {
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
        rows.push(vec![
            r.id.to_string(),
            r.name.clone(),
            r.status.clone(),
            r.started_at.clone(),
            duration(r),
            format!("{done}/{}", stages.len()),
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
                "stages done"
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
    if !params.is_empty() {
        println!("\nparams");
        for (k, v) in &params {
            println!("  {k} = {v}");
        }
    }
    println!("\nstages");
    let rows: Vec<Vec<String>> = stages
        .iter()
        .map(|s| {
            let status = match s.reused_from {
                Some(src) => format!("{} (run {src})", s.status),
                None => s.status.clone(),
            };
            vec![
                format!("  {}", s.stage),
                s.kind.clone(),
                status,
                s.attempts.to_string(),
                s.error
                    .clone()
                    .unwrap_or_default()
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(&["  stage", "kind", "status", "attempts", "error"], &rows)
    );
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
