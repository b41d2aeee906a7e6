//! `runs compare`: params, attributes and final metrics of several runs side
//! by side, with the change against the first run.
//!
//! Kept apart from the CLI so the same rows feed the terminal table, JSON,
//! CSV and the HTML page (which adds overlaid loss and latency curves).
use serde_json::{json, Value};

use super::{charts, curves, latency_points, latency_series, RunData};
use crate::format::fmt_value;
use crate::store::filter::{Field, FieldSource};

/// One compared quantity across runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `attributes`, `params` or `metrics`.
    pub section: &'static str,
    pub key: String,
    /// One per run; None where the run lacks it.
    pub values: Vec<Option<Value>>,
    /// Per run: value minus the first run's (numbers only).
    pub deltas: Vec<Option<f64>>,
    /// Per run: change relative to the first run, in percent.
    pub pct: Vec<Option<f64>>,
    /// Per run: the run that computed this value when this run reused the
    /// stage that reported it (params only).
    pub reused_from: Vec<Option<i64>>,
}

/// Widest value cell in the terminal table; json/csv/html keep it all.
pub const TABLE_CELL_CHARS: usize = 40;

impl Row {
    /// Whether any run differs from the first.
    pub fn changed(&self) -> bool {
        self.values.iter().any(|v| v != &self.values[0])
    }
}

fn number(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn attributes(d: &RunData) -> Vec<(String, Value)> {
    let r = &d.run;
    let dur = super::seconds_between(Some(&r.started_at), r.ended_at.as_deref());
    vec![
        ("name".into(), json!(r.name)),
        ("status".into(), json!(r.status)),
        ("git_commit".into(), json!(r.git_commit)),
        ("git_dirty".into(), json!(r.git_dirty)),
        ("pipeline_sha".into(), json!(r.pipeline_sha)),
        ("duration_s".into(), json!(dur)),
    ]
}

/// `stage.key` -> final value, for each final (non-sweep) metric.
fn metric_pairs(d: &RunData) -> Vec<(String, Value)> {
    d.final_metrics()
        .into_iter()
        .map(|f| (format!("{}.{}", f.stage, f.key), json!(f.value)))
        .collect()
}

/// How a section gets its (key, value) pairs from a run.
type PairsOf = fn(&RunData) -> Vec<(String, Value)>;

/// Builds the comparison rows (in first-seen order per section).
pub fn rows(runs: &[RunData]) -> Vec<Row> {
    let mut out = Vec::new();
    let sections: [(&'static str, PairsOf); 3] = [
        ("attributes", attributes),
        ("params", |d| d.params.clone()),
        ("metrics", metric_pairs),
    ];
    for (section, get) in sections {
        let per_run: Vec<Vec<(String, Value)>> = runs.iter().map(get).collect();
        let mut keys: Vec<String> = Vec::new();
        for pairs in &per_run {
            for (k, _) in pairs {
                if !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
        }
        for key in keys {
            let values: Vec<Option<Value>> = per_run
                .iter()
                .map(|pairs| {
                    pairs
                        .iter()
                        .find(|(k, _)| k == &key)
                        .map(|(_, v)| v.clone())
                        .filter(|v| !v.is_null())
                })
                .collect();
            let first = values[0].as_ref().and_then(number);
            let deltas: Vec<Option<f64>> = values
                .iter()
                .map(|v| Some(v.as_ref().and_then(number)? - first?))
                .collect();
            let pct: Vec<Option<f64>> = deltas
                .iter()
                .map(|d| {
                    let f = first?;
                    (f != 0.0).then(|| d.map(|d| d / f.abs() * 100.0))?
                })
                .collect();
            let reused_from = runs
                .iter()
                .map(|d| {
                    if section != "params" {
                        return None;
                    }
                    d.reused_params
                        .iter()
                        .find(|(k, _)| k == &key)
                        .map(|(_, r)| *r)
                })
                .collect();
            out.push(Row {
                section,
                key,
                values,
                deltas,
                pct,
                reused_from,
            });
        }
    }
    out
}

/// A value as a short cell.
pub fn cell(v: &Option<Value>) -> String {
    match v {
        None => "-".into(),
        Some(Value::Number(n)) => n.as_f64().map(fmt_value).unwrap_or_else(|| n.to_string()),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// The change of run `i` against the first run, e.g. `+0.5 (+25%)`.
pub fn change(row: &Row, i: usize) -> String {
    match (row.deltas[i], row.pct[i]) {
        (Some(0.0), _) => String::new(),
        (Some(d), Some(p)) => format!("{}{} ({:+.1}%)", sign(d), fmt_value(d), p),
        (Some(d), None) => format!("{}{}", sign(d), fmt_value(d)),
        (None, _) => String::new(),
    }
}

fn sign(d: f64) -> &'static str {
    if d > 0.0 {
        "+"
    } else {
        ""
    }
}

/// Terminal table: one column per run, changes in parentheses.
pub fn table(runs: &[RunData], rows: &[Row]) -> String {
    let mut header: Vec<String> = vec!["".into(), "key".into()];
    header.extend(runs.iter().map(|r| format!("run {}", r.run.id)));
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let mut cells = vec![row.section.to_string(), row.key.clone()];
            for i in 0..runs.len() {
                let ch = if i == 0 {
                    String::new()
                } else {
                    change(row, i)
                };
                let mut text = crate::format::shorten(&cell(&row.values[i]), TABLE_CELL_CHARS);
                if !ch.is_empty() {
                    text = format!("{text} {ch}");
                }
                if let Some(src) = row.reused_from[i] {
                    text = format!("{text} (reused from run {src})");
                }
                cells.push(text);
            }
            cells
        })
        .collect();
    let h: Vec<&str> = header.iter().map(String::as_str).collect();
    crate::format::render(&h, &body)
}

/// JSON: run ids and rows with values, deltas and percentages.
pub fn to_json(runs: &[RunData], rows: &[Row]) -> Value {
    json!({
        "runs": runs.iter().map(|r| r.run.id).collect::<Vec<_>>(),
        "rows": rows.iter().map(|r| json!({
            "section": r.section, "key": r.key, "values": r.values,
            "delta": r.deltas, "pct_change": r.pct, "changed": r.changed(),
            "reused_from": r.reused_from,
        })).collect::<Vec<_>>(),
    })
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// CSV: section, key, then value/delta/pct columns per run.
pub fn to_csv(runs: &[RunData], rows: &[Row]) -> String {
    let mut header = vec!["section".to_string(), "key".to_string()];
    for (i, r) in runs.iter().enumerate() {
        header.push(format!("run_{}", r.run.id));
        if i > 0 {
            header.push(format!("delta_{}", r.run.id));
            header.push(format!("pct_change_{}", r.run.id));
        }
    }
    let mut out = header.join(",");
    out.push('\n');
    for row in rows {
        let mut cells = vec![row.section.to_string(), row.key.clone()];
        for i in 0..runs.len() {
            cells.push(match &row.values[i] {
                None => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
            });
            if i > 0 {
                cells.push(row.deltas[i].map(|d| d.to_string()).unwrap_or_default());
                cells.push(row.pct[i].map(|p| format!("{p:.4}")).unwrap_or_default());
            }
        }
        let cells: Vec<String> = cells.iter().map(|c| csv_field(c)).collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

/// The HTML comparison page, with overlaid loss and latency curves.
pub fn to_html(runs: &[RunData], rows: &[Row]) -> anyhow::Result<String> {
    let mut loss = Vec::new();
    let mut latency = Vec::new();
    for d in runs {
        for key in ["loss", "train_loss"] {
            if let Some(series) = curves(d).remove(key) {
                for mut s in series {
                    s.label = format!("run {} {}", d.run.id, s.label);
                    loss.push(s);
                }
            }
        }
        latency.extend(latency_series(
            &latency_points(d),
            &format!("run {} ", d.run.id),
        ));
    }
    let mut charts_out = Vec::new();
    if !loss.is_empty() {
        charts_out.push(charts::line_chart(
            "Training loss",
            "step",
            "loss",
            &loss,
            charts::LegendAt::UpperRight,
        )?);
    }
    if !latency.is_empty() {
        charts_out.push(charts::line_chart(
            "Median latency vs batch size",
            "batch size",
            "median latency (ms)",
            &latency,
            charts::LegendAt::UpperLeft,
        )?);
    }
    let ctx = json!({
        "title": format!("Compare runs {}", runs.iter().map(|r| r.run.id.to_string()).collect::<Vec<_>>().join(", ")),
        "runs": runs.iter().map(|r| json!({"id": r.run.id, "name": r.run.name, "status": r.run.status})).collect::<Vec<_>>(),
        "rows": rows.iter().map(|r| json!({
            "section": r.section, "key": r.key, "changed": r.changed(),
            "cells": (0..runs.len()).map(|i| json!({
                "value": cell(&r.values[i]),
                "change": if i == 0 { String::new() } else { change(r, i) },
                "reused_from": r.reused_from[i],
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "charts": charts_out,
        "generated_by": format!("bitnet-pipeline {}", env!("CARGO_PKG_VERSION")),
    });
    let ctx = tera::Context::from_value(ctx)
        .map_err(|e| anyhow::anyhow!("compare context: {e}; this is a bug, please report it"))?;
    super::tera()?.render("compare.html", &ctx).map_err(|e| {
        anyhow::anyhow!(
            "cannot render the comparison: {}",
            super::tera_error_chain(&e)
        )
    })
}

/// A run's fields for `runs list --where`.
impl FieldSource for RunData {
    fn value(&self, field: &Field) -> Option<Value> {
        let v = match field {
            Field::Param(k) => self
                .params
                .iter()
                .find(|(p, _)| p == k)
                .map(|(_, v)| v.clone()),
            Field::Metric(k) => self.final_value(k).map(|v| json!(v)),
            Field::Attribute(a) => {
                let r = &self.run;
                Some(match a.as_str() {
                    "id" => json!(r.id),
                    "name" => json!(r.name),
                    "status" => json!(r.status),
                    "pipeline_path" => json!(r.pipeline_path),
                    "pipeline_sha" => json!(r.pipeline_sha),
                    "git_commit" => json!(r.git_commit),
                    "git_dirty" => json!(r.git_dirty),
                    "host" => json!(r.host),
                    "device" => json!(r.device),
                    "torch_version" => json!(r.torch_version),
                    "seed" => json!(r.seed),
                    "started_at" => json!(r.started_at),
                    "ended_at" => json!(r.ended_at),
                    _ => Value::Null,
                })
            }
        };
        v.filter(|v| !v.is_null())
    }
}
