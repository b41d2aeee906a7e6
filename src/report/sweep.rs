//! The sweep page and `runs compare --sweep` (issue #17): the params that
//! vary across a sweep's points, each point's final metrics, the best point
//! by a chosen metric, and a chart of each metric against each varied
//! numeric param.
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{json, Value};

use super::compare::{cell, Row};
use super::{charts, RunData};
use crate::store::Store;

/// Which way is better for `--best`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    Min,
    Max,
}

/// A sweep's runs and the comparison rows that matter for it: params that
/// vary across points, then every metric.
pub struct SweepView {
    pub sweep_id: i64,
    pub runs: Vec<RunData>,
    pub rows: Vec<Row>,
}

impl SweepView {
    pub fn load(store: &Store, sweep_id: i64) -> anyhow::Result<SweepView> {
        let sweep = store.sweep(sweep_id)?.ok_or_else(|| {
            anyhow::anyhow!("sweep {sweep_id} does not exist; `bitnet-pipeline runs list` shows the sweep of each run")
        })?;
        let runs: Vec<RunData> = store
            .sweep_runs(sweep.id)?
            .iter()
            .map(|r| RunData::load(store, r.id))
            .collect::<anyhow::Result<_>>()?;
        if runs.is_empty() {
            anyhow::bail!("sweep {sweep_id} has no runs left (removed with `runs rm`?)");
        }
        let rows = super::compare::rows(&runs)
            .into_iter()
            .filter(|r| match r.section {
                "params" => r.changed(),
                "metrics" => true,
                _ => false,
            })
            .collect();
        Ok(SweepView {
            sweep_id,
            runs,
            rows,
        })
    }

    /// The varied params (keys).
    pub fn varied(&self) -> Vec<&Row> {
        self.rows.iter().filter(|r| r.section == "params").collect()
    }

    /// Index of the best run by metric `key` (as `runs compare` names it:
    /// `stage.key`, or a bare key matched against the end), or an error
    /// naming the metrics there are.
    pub fn best(&self, key: &str, goal: Goal) -> anyhow::Result<(usize, f64)> {
        let row = self
            .rows
            .iter()
            .filter(|r| r.section == "metrics")
            .find(|r| r.key == key || r.key.ends_with(&format!(".{key}")))
            .ok_or_else(|| {
                let names: Vec<&str> = self
                    .rows
                    .iter()
                    .filter(|r| r.section == "metrics")
                    .map(|r| r.key.as_str())
                    .collect();
                anyhow::anyhow!(
                    "--best `{key}`: no such metric in sweep {}; metrics: {}",
                    self.sweep_id,
                    names.join(", ")
                )
            })?;
        row.values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| Some((i, v.as_ref()?.as_f64()?)))
            .reduce(|a, b| match goal {
                Goal::Min if b.1 < a.1 => b,
                Goal::Max if b.1 > a.1 => b,
                _ => a,
            })
            .ok_or_else(|| anyhow::anyhow!("--best `{key}`: no point recorded it"))
    }

    /// Terminal table: one row per point (run), varied params then metrics.
    pub fn table(&self) -> String {
        let mut header: Vec<String> = vec!["run".into(), "status".into()];
        header.extend(self.rows.iter().map(|r| r.key.clone()));
        let body: Vec<Vec<String>> = self
            .runs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let mut cells = vec![d.run.id.to_string(), d.run.status.clone()];
                cells.extend(self.rows.iter().map(|r| {
                    crate::format::shorten(&cell(&r.values[i]), super::compare::TABLE_CELL_CHARS)
                }));
                cells
            })
            .collect();
        let h: Vec<&str> = header.iter().map(String::as_str).collect();
        crate::format::render(&h, &body)
    }

    /// One chart per (metric, varied numeric param): the metric's final
    /// value at each point against the param's value.
    pub fn charts(&self) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        let metrics: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| r.section == "metrics" && r.changed())
            .take(8)
            .collect();
        let varied = self.varied();
        for p in &varied {
            for m in &metrics {
                // One line per combination of the other varied params (so a
                // grid reads as a family of curves), unless there are too
                // many; then one line through all points.
                let mut lines: Vec<charts::Series> = Vec::new();
                for (i, (x, y)) in p.values.iter().zip(&m.values).enumerate() {
                    let (Some(x), Some(y)) = (
                        x.as_ref().and_then(Value::as_f64),
                        y.as_ref().and_then(Value::as_f64),
                    ) else {
                        continue;
                    };
                    let label = varied
                        .iter()
                        .filter(|o| o.key != p.key)
                        .map(|o| format!("{}={}", o.key, cell(&o.values[i])))
                        .collect::<Vec<_>>()
                        .join(" ");
                    let label = if label.is_empty() {
                        m.key.clone()
                    } else {
                        label
                    };
                    match lines.iter_mut().find(|l| l.label == label) {
                        Some(l) => l.points.push((x, y)),
                        None => lines.push(charts::Series {
                            label,
                            points: vec![(x, y)],
                        }),
                    }
                }
                if lines.len() > 8 {
                    let mut all: Vec<(f64, f64)> =
                        lines.into_iter().flat_map(|l| l.points).collect();
                    all.sort_by(|a, b| a.0.total_cmp(&b.0));
                    lines = vec![charts::Series {
                        label: m.key.clone(),
                        points: all,
                    }];
                }
                if lines.iter().map(|l| l.points.len()).sum::<usize>() < 2 {
                    continue;
                }
                for l in &mut lines {
                    l.points.sort_by(|a, b| a.0.total_cmp(&b.0));
                }
                out.push(charts::line_chart(
                    &format!("{} vs {}", m.key, p.key),
                    &p.key,
                    &m.key,
                    &lines,
                    charts::LegendAt::UpperRight,
                )?);
            }
        }
        Ok(out)
    }

    pub fn to_json(&self, best: Option<(&str, Goal)>) -> anyhow::Result<Value> {
        let best = match best {
            Some((k, g)) => {
                let (i, v) = self.best(k, g)?;
                json!({"metric": k, "goal": if g == Goal::Min { "min" } else { "max" }, "run": self.runs[i].run.id, "value": v})
            }
            None => Value::Null,
        };
        Ok(json!({
            "sweep": self.sweep_id,
            "runs": self.runs.iter().map(|r| json!({"id": r.run.id, "status": r.run.status})).collect::<Vec<_>>(),
            "rows": self.rows.iter().map(|r| json!({"section": r.section, "key": r.key, "values": r.values, "reused_from": r.reused_from})).collect::<Vec<_>>(),
            "best": best,
        }))
    }

    pub fn to_html(&self, best: Option<(&str, Goal)>) -> anyhow::Result<String> {
        let best_run = match best {
            Some((k, g)) => {
                let (i, v) = self.best(k, g)?;
                Some(
                    json!({"metric": k, "goal": if g == Goal::Min { "lowest" } else { "highest" }, "run": self.runs[i].run.id, "value": crate::format::fmt_value(v)}),
                )
            }
            None => None,
        };
        let ctx = json!({
            "title": format!("Sweep {}: {}", self.sweep_id, self.runs[0].run.name),
            "columns": self.rows.iter().map(|r| json!({"section": r.section, "key": r.key})).collect::<Vec<_>>(),
            "points": self.runs.iter().enumerate().map(|(i, d)| json!({
                "id": d.run.id,
                "status": d.run.status,
                "cells": self.rows.iter().map(|r| cell(&r.values[i])).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "best": best_run,
            "charts": self.charts()?,
            "generated_by": format!("bitnet-pipeline {}", env!("CARGO_PKG_VERSION")),
        });
        let ctx = tera::Context::from_value(ctx)
            .map_err(|e| anyhow::anyhow!("sweep context: {e}; this is a bug, please report it"))?;
        super::tera()?.render("sweep.html", &ctx).map_err(|e| {
            anyhow::anyhow!(
                "cannot render the sweep page: {}",
                super::tera_error_chain(&e)
            )
        })
    }
}

/// Writes `<runs-dir>/sweeps/<id>.html` (or `out`) and returns its path.
pub fn write_sweep_report(
    store: &Store,
    sweep_id: i64,
    runs_dir: &Path,
    out: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    let view = SweepView::load(store, sweep_id)?;
    let html = view.to_html(None)?;
    let path = match out {
        Some(p) => p.to_path_buf(),
        None => runs_dir.join("sweeps").join(format!("{sweep_id}.html")),
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(&path, html).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}
