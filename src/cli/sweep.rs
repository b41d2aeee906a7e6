//! `run --sweep`: one run per point of a parameter grid (or of random
//! draws), grouped under a sweep id and run side by side within `--jobs`.
//! Every point is validated before anything is written.
use std::process::ExitCode;

use super::run::{apply_selection, check_only_upstream, interrupt_flag, record_sweep, RunArgs};
use super::{report_error, report_invalid, Cli, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_STAGE_FAILED};
use crate::engine::select::Selection;
use crate::engine::{self, RunOptions};
use crate::format as table;
use crate::pipeline::params::Override;
use crate::pipeline::sweep::{self, Axis};
use crate::pipeline::Pipeline;
use crate::store::{run_status, Store};

fn invalid(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(EXIT_INVALID)
}

pub fn run(
    cli: &Cli,
    args: &RunArgs,
    p: &Pipeline,
    selection: &Selection,
    opts: RunOptions,
) -> ExitCode {
    let mut axes: Vec<Axis> = Vec::new();
    for raw in &args.sweep.sweep {
        match sweep::parse_axis(raw) {
            Ok(a) => axes.push(a),
            Err(e) => return invalid(e),
        }
    }
    // An unknown key is caught here, with the sweep's own wording, rather
    // than as N identical `--set` errors.
    for a in &axes {
        let probe = format!(
            "{}={}",
            a.key,
            match &a.values {
                sweep::AxisValues::List(v) => v[0].to_string(),
                _ => "0".to_string(),
            }
        );
        let mut params = p.params.clone();
        if let Err(e) = Override::parse(&probe).and_then(|o| o.apply(&mut params)) {
            let msg = e.to_string().replacen(
                &format!("--set `{probe}`"),
                &format!("--sweep `{}`", a.raw),
                1,
            );
            return invalid(format!(
                "{msg}\n  help: `bitnet-pipeline validate {}` shows the params; `+KEY=...` adds a new one",
                p.display_path.display()
            ));
        }
    }
    let points = match sweep::points(&axes, args.sweep.sweep_random, args.sweep.sweep_seed) {
        Ok(p) => p,
        Err(e) => return invalid(e),
    };
    if points.is_empty() {
        return invalid("the sweep has no points (`--sweep-random 0`?)");
    }
    let reg = crate::stages::registry();
    let mut pipelines: Vec<(Pipeline, Pipeline)> = Vec::new();
    let mut opts = opts;
    for point in &points {
        let mut overrides = args.pipeline.set.clone();
        overrides.extend(sweep::overrides(point));
        let full = match crate::pipeline::load(&args.pipeline.pipeline, &overrides, &reg) {
            Ok(p) => p,
            Err(d) => return report_invalid(d),
        };
        let mut o = opts.clone();
        o.force = args.exec.force.clone();
        let selected = match apply_selection(&full, selection, &mut o) {
            Ok(s) => s,
            Err(code) => return code,
        };
        if let Err(code) = check_only_upstream(cli, &selected, &o) {
            return code;
        }
        opts.cache_only = o.cache_only;
        opts.force = o.force;
        pipelines.push((full, selected));
    }
    let spec = serde_json::json!({
        "axes": args.sweep.sweep,
        "mode": if args.sweep.sweep_random.is_some() { "random" } else { "grid" },
        "points": points.len(),
        "seed": args.sweep.sweep_seed,
        "set": args.pipeline.set,
    });
    let quiet = args.exec.quiet;
    let result = (|| -> anyhow::Result<(i64, Vec<engine::RunOutcome>)> {
        let flag = interrupt_flag()?;
        let (sweep_id, runs) = record_sweep(cli, &pipelines, selection, &opts, &spec)?;
        if !quiet {
            eprintln!(
                "sweep {sweep_id}: {} points (runs {}-{}), {} jobs",
                runs.len(),
                runs[0].0,
                runs[runs.len() - 1].0,
                opts.jobs
            );
        }
        let reg = crate::stages::registry();
        let outcomes = engine::execute_many(&cli.db, &runs, &reg, &opts, flag)
            .into_iter()
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok((sweep_id, outcomes))
    })();
    let (sweep_id, outcomes) = match result {
        Ok(r) => r,
        Err(e) => return report_error(&e, EXIT_STAGE_FAILED),
    };
    let store = match Store::open_existing(&cli.db) {
        Ok(s) => s,
        Err(e) => return report_error(&e.into(), EXIT_STAGE_FAILED),
    };
    for o in &outcomes {
        if let Err(e) = crate::report::write_run_report(&store, o.run_id, None) {
            eprintln!(
                "warning: could not write the report of run {}: {e:#}",
                o.run_id
            );
        }
    }
    if !quiet {
        let rows: Vec<Vec<String>> = outcomes
            .iter()
            .zip(&points)
            .map(|(o, pt)| {
                let reused = o.stages.iter().filter(|s| s.status == "cached").count();
                vec![
                    o.run_id.to_string(),
                    pt.iter()
                        .map(|(k, v)| format!("{k}={}", table::shorten(&v.to_string(), 24)))
                        .collect::<Vec<_>>()
                        .join(" "),
                    o.status.clone(),
                    format!("{reused}/{}", o.stages.len()),
                ]
            })
            .collect();
        println!("\nsweep {sweep_id}");
        print!(
            "{}",
            table::render(&["run", "point", "status", "stages reused"], &rows)
        );
    }
    match crate::report::sweep::write_sweep_report(&store, sweep_id, &opts.runs_dir, None) {
        Ok(path) if !quiet => println!(
            "\nsweep page: {}\ncompare: bitnet-pipeline runs compare --sweep {sweep_id}",
            path.display()
        ),
        Ok(_) => {}
        Err(e) => eprintln!("warning: could not write the sweep page: {e:#}"),
    }
    if outcomes.iter().any(|o| o.status == run_status::INTERRUPTED) {
        eprintln!("sweep {sweep_id} interrupted; `bitnet-pipeline resume RUN` continues each unfinished run");
        return ExitCode::from(EXIT_INTERRUPTED);
    }
    if outcomes.iter().any(|o| o.status != run_status::COMPLETED) {
        eprintln!("sweep {sweep_id}: some points failed; `bitnet-pipeline runs list --sweep {sweep_id}` shows which");
        return ExitCode::from(EXIT_STAGE_FAILED);
    }
    ExitCode::SUCCESS
}
