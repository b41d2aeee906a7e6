//! HTML reports: one self-contained page per run (`runs/<run>/report.html`)
//! and one per comparison of runs.
//!
//! The report is what decides whether a compressed model ships, so it only
//! shows what the results DB holds: a section without data says so instead
//! of showing a number. Pages are Tera templates compiled into the binary
//! (so it works from any folder) with autoescaping on, because stage names,
//! params and finding messages come from users and checkpoints. Charts are
//! inline SVG from `charts`; CSS is inline; nothing is fetched.
pub mod charts;
pub mod compare;
pub mod sweep;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{json, Value};

use crate::format::fmt_value;
use crate::stages::validate::OPTIMAL_PREFIX;
use crate::store::{Artifact, Finding, Metric, RunRecord, StageRecord, Store, Target};
use charts::{BarGroup, Series};

/// Templates, embedded so the binary renders reports from any folder.
/// Names end in `.html` so Tera autoescapes them.
const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../../templates/base.html.tera")),
    (
        "report.html",
        include_str!("../../templates/report.html.tera"),
    ),
    (
        "compare.html",
        include_str!("../../templates/compare.html.tera"),
    ),
    (
        "sweep.html",
        include_str!("../../templates/sweep.html.tera"),
    ),
];

/// The Tera instance with every report template.
pub fn tera() -> anyhow::Result<tera::Tera> {
    let mut t = tera::Tera::default();
    t.add_raw_templates(TEMPLATES.to_vec())
        .context("report templates do not compile; this is a bug, please report it")?;
    t.autoescape_on(vec![".html"]);
    Ok(t)
}

/// Everything the DB holds about one run.
#[derive(Debug, Clone)]
pub struct RunData {
    pub run: RunRecord,
    pub stages: Vec<StageRecord>,
    pub params: Vec<(String, Value)>,
    /// Params this run has because it reused a stage: key -> computing run.
    pub reused_params: Vec<(String, i64)>,
    /// (stage, metric) in recording order: the full history.
    pub metrics: Vec<(String, Metric)>,
    pub findings: Vec<(String, Finding)>,
    pub targets: Vec<(String, Target)>,
    pub artifacts: Vec<(String, Artifact)>,
}

/// Final value of one metric of one stage.
#[derive(Debug, Clone, PartialEq)]
pub struct FinalMetric {
    pub stage: String,
    pub key: String,
    pub value: f64,
    pub unit: Option<String>,
    /// Number of recorded values (history length).
    pub points: usize,
}

impl RunData {
    pub fn load(store: &Store, run_id: i64) -> anyhow::Result<RunData> {
        Ok(RunData {
            run: store.run(run_id)?,
            stages: store.stages(run_id)?,
            params: store.params(run_id)?,
            reused_params: store.reused_params(run_id)?,
            metrics: store.metrics(run_id)?,
            findings: store.findings(run_id)?,
            targets: store.targets(run_id)?,
            artifacts: store.artifacts(run_id)?,
        })
    }

    /// Last value per (stage, key), in first-recorded order. Metrics that
    /// describe one shape of a sweep (meta with `batch`) are left out: their
    /// "last value" would be an arbitrary shape.
    pub fn final_metrics(&self) -> Vec<FinalMetric> {
        let mut out: Vec<FinalMetric> = Vec::new();
        for (stage, m) in &self.metrics {
            if is_shape_metric(m) {
                continue;
            }
            match out.iter_mut().find(|f| &f.stage == stage && f.key == m.key) {
                Some(f) => {
                    f.value = m.value;
                    f.points += 1;
                }
                None => out.push(FinalMetric {
                    stage: stage.clone(),
                    key: m.key.clone(),
                    value: m.value,
                    unit: m.unit.clone(),
                    points: 1,
                }),
            }
        }
        out
    }

    /// Final value of `key` from the last stage that reported it, or of
    /// `stage.key` when qualified.
    pub fn final_value(&self, key: &str) -> Option<f64> {
        let finals = self.final_metrics();
        if let Some((stage, k)) = key.split_once('.') {
            if let Some(f) = finals.iter().find(|f| f.stage == stage && f.key == k) {
                return Some(f.value);
            }
        }
        finals.iter().rev().find(|f| f.key == key).map(|f| f.value)
    }

    /// Meta of the last non-shape row of `key` (any stage), if any.
    pub fn final_meta(&self, key: &str) -> Option<&Value> {
        self.metrics
            .iter()
            .rev()
            .find(|(_, m)| m.key == key && !is_shape_metric(m))
            .and_then(|(_, m)| m.meta.as_ref())
    }

    /// The report folder of this run: `<runs_dir>/<id>/`.
    pub fn run_dir(&self) -> PathBuf {
        Path::new(&self.run.runs_dir).join(self.run.id.to_string())
    }
}

/// A metric row that belongs to one shape of a latency sweep.
fn is_shape_metric(m: &Metric) -> bool {
    m.meta
        .as_ref()
        .is_some_and(|meta| meta.get("batch").is_some())
}

fn seconds_between(a: Option<&str>, b: Option<&str>) -> Option<f64> {
    let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok();
    let (a, b) = (parse(a?)?, parse(b?)?);
    Some((b - a).num_milliseconds() as f64 / 1000.0)
}

fn fmt_duration(s: Option<f64>) -> String {
    match s {
        Some(s) if s >= 60.0 => format!("{:.0} min {:.0} s", (s / 60.0).floor(), s % 60.0),
        Some(s) => format!("{s:.2} s"),
        None => "-".into(),
    }
}

fn json_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One point of a latency sweep.
#[derive(Debug, Clone)]
pub struct LatencyPoint {
    pub stage: String,
    pub side: String,
    /// e.g. `prefill` or `decode`, when the sweep has several.
    pub mode: Option<String>,
    pub batch: f64,
    pub seq: Option<f64>,
    pub median_ms: f64,
    pub p25_ms: Option<f64>,
    pub p75_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Latency measurements: metrics whose meta names a `batch` and a `side`
/// (`baseline` or `bitnet`). With `median_ms` in the meta (as
/// `profile_speed` records on every metric of a shape: latencies and
/// throughputs) the meta is the source and each shape counts once;
/// otherwise a metric whose key says latency (`*latency*`, `*_ms`, not a
/// p95/p99) gives the median as its value.
pub fn latency_points(data: &RunData) -> Vec<LatencyPoint> {
    let num = |meta: &Value, k: &str| meta.get(k).and_then(Value::as_f64);
    let mut out: Vec<LatencyPoint> = Vec::new();
    for (stage, m) in &data.metrics {
        let Some(meta) = m.meta.as_ref() else {
            continue;
        };
        let (Some(side), Some(batch)) =
            (meta.get("side").and_then(Value::as_str), num(meta, "batch"))
        else {
            continue;
        };
        let median_ms = match num(meta, "median_ms") {
            Some(v) => v,
            None if (m.key.contains("latency") || m.key.ends_with("_ms"))
                && !m.key.contains("p95")
                && !m.key.contains("p99") =>
            {
                m.value
            }
            None => continue,
        };
        let p = LatencyPoint {
            stage: stage.clone(),
            side: side.to_string(),
            mode: meta.get("mode").and_then(Value::as_str).map(str::to_string),
            batch,
            seq: num(meta, "seq"),
            median_ms,
            p25_ms: num(meta, "p25_ms"),
            p75_ms: num(meta, "p75_ms"),
            p95_ms: num(meta, "p95_ms"),
            p99_ms: num(meta, "p99_ms"),
        };
        let same = |q: &LatencyPoint| {
            q.stage == p.stage
                && q.side == p.side
                && q.mode == p.mode
                && q.batch == p.batch
                && q.seq == p.seq
        };
        if !out.iter().any(same) {
            out.push(p);
        }
    }
    out
}

/// The two sides measured at one shape.
type BaselineAndBitnet<'a> = (Option<&'a LatencyPoint>, Option<&'a LatencyPoint>);

/// Latency lines (median vs batch), one per side, mode and sequence length.
pub fn latency_series(points: &[LatencyPoint], prefix: &str) -> Vec<Series> {
    let mut lines: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
    for p in points {
        let mut what = String::new();
        if let Some(m) = &p.mode {
            what.push_str(&format!(" {m}"));
        }
        if let Some(s) = p.seq {
            what.push_str(&format!(" seq {}", fmt_value(s)));
        }
        lines
            .entry((p.side.clone(), what))
            .or_default()
            .push((p.batch, p.median_ms));
    }
    lines
        .into_iter()
        .map(|((side, what), mut pts)| {
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series {
                label: format!("{prefix}{side}{what}"),
                points: pts,
            }
        })
        .collect()
}

/// Stepped histories (training curves), by key, then stage.
pub fn curves(data: &RunData) -> BTreeMap<String, Vec<Series>> {
    let mut by_key: BTreeMap<String, BTreeMap<String, Vec<(f64, f64)>>> = BTreeMap::new();
    for (stage, m) in &data.metrics {
        if let (Some(step), false) = (m.step, is_shape_metric(m)) {
            by_key
                .entry(m.key.clone())
                .or_default()
                .entry(stage.clone())
                .or_default()
                .push((step as f64, m.value));
        }
    }
    by_key
        .into_iter()
        .map(|(key, stages)| {
            let series = stages
                .into_iter()
                .filter(|(_, pts)| pts.len() >= 2)
                .map(|(stage, points)| Series {
                    label: stage,
                    points,
                })
                .collect::<Vec<_>>();
            (key, series)
        })
        .filter(|(_, s)| !s.is_empty())
        .collect()
}

/// The order training curves appear in; other stepped metrics follow.
const CURVE_ORDER: &[&str] = &["loss", "lr", "grad_norm"];
const MEMORY_PAIRS: &[(&str, &str, &str, &str)] = &[
    (
        "weights, stored form",
        "weight_bytes_stored_baseline",
        "weight_bytes_stored_bitnet",
        "weight_memory_reduction_stored",
    ),
    (
        "weights, resident in memory",
        "weight_bytes_resident_baseline",
        "weight_bytes_resident_bitnet",
        "weight_memory_reduction",
    ),
    (
        "peak inference memory",
        "peak_bytes_baseline",
        "peak_bytes_bitnet",
        "memory_reduction",
    ),
    // Runs recorded before the stored/resident split (issue #14).
    (
        "weights (stored)",
        "weight_bytes_baseline",
        "weight_bytes_bitnet",
        "weight_memory_reduction",
    ),
];

/// The overall speed figures, in the order the report shows them.
const SPEED_FIGURES: &[(&str, &str)] = &[
    ("speedup_prefill", "Prefill speedup"),
    ("speedup_decode", "Decode speedup (KV cache)"),
    // Runs recorded before issue #11 replaced it with real decode steps.
    (
        "speedup_single_token",
        "Single-token speedup (old run: one-token forward without a KV cache)",
    ),
    // Runs recorded before issue #14 split it.
    (
        "speedup",
        "Speedup (prefill and single-token mixed; old run)",
    ),
];

/// Longest generated text shown in the report (the artifact has all of it).
const MAX_SHOWN_TEXT: usize = 4000;

/// What each `generate` stage wrote: prompt, text and its figures.
fn generations(data: &RunData, finals: &[FinalMetric]) -> Vec<Value> {
    data.stages
        .iter()
        .filter(|s| s.kind == "generate")
        .filter_map(|s| {
            let file = |name: &str| {
                data.artifacts
                    .iter()
                    .find(|(stage, a)| stage == &s.stage && a.name == name)
                    .and_then(|(_, a)| std::fs::read(&a.path).ok())
            };
            let record: Value = file(crate::stages::generate::RECORD_FILE)
                .and_then(|b| serde_json::from_slice(&b).ok())?;
            let mut text = record["text"].as_str().unwrap_or_default().to_string();
            if text.len() > MAX_SHOWN_TEXT {
                let mut cut = MAX_SHOWN_TEXT;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                text.push_str(" [...]");
            }
            let figure = |key: &str| {
                finals
                    .iter()
                    .find(|f| f.stage == s.stage && f.key == key)
                    .map(|f| fmt_value(f.value))
                    .unwrap_or_else(|| "-".into())
            };
            let settings = &record["settings"];
            Some(json!({
                "stage": s.stage,
                "prompt": record["prompt"].as_str().unwrap_or_default(),
                "text": text,
                "side": record["side"].as_str().unwrap_or("-"),
                "backend": record["model"]["backend"].as_str().unwrap_or("-"),
                "sampling": format!(
                    "temperature {}, top_k {}, top_p {}, repetition penalty {}, seed {}",
                    settings["temperature"], settings["top_k"], settings["top_p"],
                    settings["repetition_penalty"], settings["seed"]
                ),
                "stop_reason": record["stop_reason"].as_str().unwrap_or("-"),
                "prompt_tokens": record["prompt_tokens"],
                "generated_tokens": record["generated_tokens"],
                "ttft_ms": figure("time_to_first_token_ms"),
                "prefill_tps": figure("prefill_tokens_per_s"),
                "decode_tps": figure("decode_tokens_per_s"),
            }))
        })
        .collect()
}

const QUALITY_KEYS: &[(&str, &str)] = &[
    ("ppl_baseline", "perplexity, full-precision baseline"),
    ("ppl_bitnet", "perplexity, BitNet"),
    (
        "accuracy_degradation",
        "relative perplexity increase (degradation)",
    ),
    ("top1_agreement", "top-1 agreement with the baseline"),
];

/// Sorts `R2` before `R10`: the text before the first digit, then the
/// number, then the rest.
fn natural_key(s: &str) -> (String, u64, String) {
    let start = s.find(|c: char| c.is_ascii_digit()).unwrap_or(s.len());
    let digits: String = s[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (
        s[..start].to_string(),
        digits.parse().unwrap_or(0),
        s[start + digits.len()..].to_string(),
    )
}

/// Builds the template context of a run report.
pub fn report_context(data: &RunData) -> anyhow::Result<Value> {
    let r = &data.run;
    let finals = data.final_metrics();
    let value_of = |key: &str| finals.iter().rev().find(|f| f.key == key);

    // Verdict and targets.
    let targets: Vec<Value> = data
        .targets
        .iter()
        .map(|(stage, t)| {
            let optimal = t.name.starts_with(OPTIMAL_PREFIX);
            let status = match (optimal, t.passed) {
                (false, true) => "PASSED",
                (false, false) => "FAILED",
                (true, true) => "OPTIMAL",
                (true, false) => "NOT OPTIMAL",
            };
            json!({
                "stage": stage,
                "name": t.name.strip_prefix(OPTIMAL_PREFIX).unwrap_or(&t.name),
                "metric": t.metric,
                "condition": format!("{} {}", t.op, fmt_value(t.threshold)),
                "value": t.value.map(fmt_value).unwrap_or_else(|| "not measured".into()),
                "status": status,
                "optimal": optimal,
            })
        })
        .collect();
    let required: Vec<&Target> = data
        .targets
        .iter()
        .map(|(_, t)| t)
        .filter(|t| !t.name.starts_with(OPTIMAL_PREFIX))
        .collect();
    let verdict = (!required.is_empty()).then(|| {
        let passed = required.iter().filter(|t| t.passed).count();
        json!({
            "passed": passed,
            "total": required.len(),
            "status": if passed == required.len() { "PASSED" } else { "FAILED" },
        })
    });

    // Stages.
    let stages: Vec<Value> = data
        .stages
        .iter()
        .map(|s| {
            json!({
                "name": s.stage,
                "kind": s.kind,
                "status": s.status,
                "duration": fmt_duration(seconds_between(s.started_at.as_deref(), s.ended_at.as_deref())),
                "reused_from": s.reused_from,
                "attempts": s.attempts,
                "error": s.error,
            })
        })
        .collect();

    // Memory.
    let mut mem_rows = Vec::new();
    let mut mem_groups = Vec::new();
    for (what, base, bit, ratio) in MEMORY_PAIRS {
        let (b, n, q) = (value_of(base), value_of(bit), value_of(ratio));
        if b.is_none() && n.is_none() && q.is_none() {
            continue;
        }
        if *base == "weight_bytes_baseline" && value_of("weight_bytes_stored_baseline").is_some() {
            continue;
        }
        let show = |f: Option<&FinalMetric>| {
            f.map(|f| charts::fmt_bytes(f.value))
                .unwrap_or_else(|| "not measured".into())
        };
        mem_rows.push(json!({
            "what": what,
            "baseline": show(b),
            "bitnet": show(n),
            "reduction": q.map(|f| format!("{}x", fmt_value(f.value))).unwrap_or_else(|| "not measured".into()),
            "method": memory_method(data, bit),
            "fallback": is_fallback(data.final_meta(bit).and_then(|m| m.get("matmul"))),
        }));
        let mut bars = Vec::new();
        if let Some(b) = b {
            bars.push(("baseline".to_string(), b.value));
        }
        if let Some(n) = n {
            bars.push(("BitNet".to_string(), n.value));
        }
        if !bars.is_empty() {
            mem_groups.push(BarGroup {
                name: what.to_string(),
                bars,
            });
        }
    }
    let memory_chart = if mem_groups.is_empty() {
        None
    } else {
        Some(charts::bar_chart(
            "Memory: baseline vs BitNet",
            "bytes",
            &mem_groups,
            &charts::fmt_bytes,
        )?)
    };
    let memory = (!mem_rows.is_empty()).then(|| json!({"rows": mem_rows, "chart": memory_chart}));

    // Speed.
    let lat = latency_points(data);
    let speed = if lat.is_empty() && SPEED_FIGURES.iter().all(|(k, _)| value_of(k).is_none()) {
        None
    } else {
        let mut shapes: BTreeMap<(String, u64, u64), BaselineAndBitnet> = BTreeMap::new();
        for p in &lat {
            let key = (
                p.mode.clone().unwrap_or_default(),
                p.seq.unwrap_or(0.0) as u64,
                p.batch as u64,
            );
            let e = shapes.entry(key).or_default();
            match p.side.as_str() {
                "baseline" => e.0 = Some(p),
                "bitnet" => e.1 = Some(p),
                _ => {}
            }
        }
        let iqr = |p: Option<&LatencyPoint>| match p.map(|p| (p.p25_ms, p.p75_ms)) {
            Some((Some(a), Some(b))) => format!("{a:.3}-{b:.3}"),
            _ => "-".into(),
        };
        let ms = |p: Option<&LatencyPoint>, f: fn(&LatencyPoint) -> Option<f64>| {
            p.and_then(f)
                .map(|v| format!("{v:.3}"))
                .unwrap_or_else(|| "-".into())
        };
        let rows: Vec<Value> = shapes
            .iter()
            .map(|((mode, seq, batch), (b, n))| {
                let speedup = match (b, n) {
                    (Some(b), Some(n)) if n.median_ms > 0.0 => {
                        format!("{}x", fmt_value(b.median_ms / n.median_ms))
                    }
                    _ => "-".into(),
                };
                json!({
                    "mode": if mode.is_empty() { "-" } else { mode.as_str() },
                    "batch": batch, "seq": if *seq == 0 { "-".to_string() } else { seq.to_string() },
                    "baseline_median": ms(*b, |p| Some(p.median_ms)),
                    "baseline_iqr": iqr(*b),
                    "baseline_p95": ms(*b, |p| p.p95_ms),
                    "bitnet_median": ms(*n, |p| Some(p.median_ms)),
                    "bitnet_iqr": iqr(*n),
                    "bitnet_p95": ms(*n, |p| p.p95_ms),
                    "speedup": speedup,
                    "ci": shape_interval(data, mode, *seq, *batch),
                })
            })
            .collect();
        let chart = if lat.is_empty() {
            None
        } else {
            Some(charts::line_chart(
                "Median latency vs batch size",
                "batch size",
                "median latency (ms)",
                &latency_series(&lat, ""),
                charts::LegendAt::UpperLeft,
            )?)
        };
        let figures: Vec<Value> = SPEED_FIGURES
            .iter()
            .filter_map(|(key, label)| {
                let f = value_of(key)?;
                Some(speed_figure(key, label, f.value, data.final_meta(key)))
            })
            .collect();
        Some(json!({
            "rows": rows,
            "chart": chart,
            "figures": figures,
        }))
    };

    // Training curves.
    let mut all_curves = curves(data);
    let mut training = Vec::new();
    let mut keys: Vec<String> = CURVE_ORDER
        .iter()
        .map(|k| k.to_string())
        .filter(|k| all_curves.contains_key(k))
        .collect();
    keys.extend(
        all_curves
            .keys()
            .filter(|k| !CURVE_ORDER.contains(&k.as_str()))
            .cloned(),
    );
    for key in keys.into_iter().take(8) {
        if let Some(series) = all_curves.remove(&key) {
            let svg =
                charts::line_chart(&key, "step", &key, &series, charts::LegendAt::UpperRight)?;
            training.push(json!({"key": key, "chart": svg}));
        }
    }

    // Quality.
    let quality: Vec<Value> = QUALITY_KEYS
        .iter()
        .filter_map(|(k, what)| {
            value_of(k).map(
                |f| json!({"key": k, "what": what, "stage": f.stage, "value": fmt_value(f.value)}),
            )
        })
        .collect();

    // POT10 findings, grouped by rule; suppressions (rule `suppression`,
    // recorded by `pot10_check`) are listed on their own with their reasons.
    let mut groups: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    let mut suppressions: Vec<Value> = Vec::new();
    for (stage, f) in &data.findings {
        if f.rule == "suppression" {
            suppressions.push(json!({
                "stage": stage,
                "location": format!("{}:{}", f.file, f.line.unwrap_or(0)),
                "text": f.message,
            }));
            continue;
        }
        let location = match (f.line, f.column) {
            (Some(l), Some(c)) => format!("{}:{l}:{c}", f.file),
            (Some(l), None) => format!("{}:{l}", f.file),
            _ => f.file.clone(),
        };
        groups.entry(&f.rule).or_default().push(json!({
            "stage": stage, "severity": f.severity, "location": location, "message": f.message,
        }));
    }
    let mut groups: Vec<(&str, Vec<Value>)> = groups.into_iter().collect();
    groups.sort_by_key(|(rule, _)| natural_key(rule));
    let findings: Vec<Value> = groups
        .into_iter()
        .map(|(rule, items)| json!({"rule": rule, "count": items.len(), "items": items}))
        .collect();
    let pot10_score = value_of("pot10_score").map(|f| fmt_value(f.value));
    let pot10_threshold = value_of("pot10_threshold").map(|f| fmt_value(f.value));
    let percent = |key: &str| value_of(key).map(|f| format!("{:.1}%", f.value * 100.0));
    let pot10_coverage = value_of("pot10_coverage").map(|_| {
        json!({
            "lines": percent("pot10_coverage_lines"),
            "functions": percent("pot10_coverage_functions"),
            "unparsed": value_of("pot10_unparsed_regions").map(|f| fmt_value(f.value)),
        })
    });
    let suppressed_findings = value_of("pot10_suppressed_findings").map(|f| fmt_value(f.value));
    // Per-rule pass rates as the `pot10_check` stage reports them.
    let pass_rates: Vec<Value> = finals
        .iter()
        .filter_map(|f| {
            let rule = f.key.strip_prefix("pot10_pass_rate_")?;
            Some(json!({"rule": rule, "rate": format!("{:.1}%", f.value * 100.0)}))
        })
        .collect();
    let has_pot10 = data.stages.iter().any(|s| s.kind.starts_with("pot10"))
        || pot10_score.is_some()
        || !data.findings.is_empty();

    // Provenance.
    let param_text = |key: &str| {
        data.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| json_text(v))
    };
    let torch_version = r
        .torch_version
        .clone()
        .or_else(|| param_text("torch_version"));
    let or = |v: Option<String>, missing: &str| v.unwrap_or_else(|| missing.to_string());
    let provenance = json!({
        "pipeline_path": r.pipeline_path,
        "pipeline_sha": r.pipeline_sha,
        "overrides": r.overrides.join(" "),
        "git_commit": r.git_commit,
        "git_dirty": r.git_dirty.unwrap_or(false),
        "host": or(r.host.clone(), "not recorded"),
        "device": or(r.device.clone().or_else(|| param_text("device")), "not recorded"),
        "torch_version": or(torch_version, "not recorded"),
        "seed": or(r.seed.map(|s| s.to_string()), "not set"),
        "argv": r.argv.join(" "),
        "started_at": r.started_at,
        "ended_at": or(r.ended_at.clone(), "-"),
    });
    let params: Vec<Value> = data
        .params
        .iter()
        .map(|(k, v)| json!({"key": k, "value": json_text(v)}))
        .collect();
    let metrics: Vec<Value> = finals
        .iter()
        .map(|f| {
            json!({
                "stage": f.stage, "key": f.key, "value": fmt_value(f.value),
                "unit": f.unit.clone().unwrap_or_default(), "points": f.points,
            })
        })
        .collect();
    let artifacts: Vec<Value> = data
        .artifacts
        .iter()
        .map(|(stage, a)| {
            json!({
                "stage": stage, "name": a.name, "bytes": charts::fmt_bytes(a.bytes as f64),
                "hash": a.hash.chars().take(12).collect::<String>(),
            })
        })
        .collect();

    Ok(json!({
        "title": format!("Run {} · {}", r.id, r.name),
        "warnings": measurement_warnings(data),
        "run": {
            "id": r.id, "name": r.name, "status": r.status,
            "duration": fmt_duration(seconds_between(Some(&r.started_at), r.ended_at.as_deref())),
        },
        "verdict": verdict,
        "targets": targets,
        "stages": stages,
        "memory": memory,
        "speed": speed,
        "generations": generations(data, &finals),
        "training": training,
        "quality": quality,
        "has_pot10": has_pot10,
        "pot10_score": pot10_score,
        "pot10_threshold": pot10_threshold,
        "pot10_coverage": pot10_coverage,
        "suppressions": suppressions,
        "suppressed_findings": suppressed_findings,
        "pass_rates": pass_rates,
        "findings": findings,
        "provenance": provenance,
        "params": params,
        "metrics": metrics,
        "artifacts": artifacts,
        "generated_by": format!("bitnet-pipeline {}", env!("CARGO_PKG_VERSION")),
    }))
}

/// Whether a matmul name is the unpack fallback (no fast kernel): shown in
/// another colour, so a CUDA run that fell back cannot pass for a kernel run.
fn is_fallback(matmul: Option<&Value>) -> bool {
    matmul
        .and_then(Value::as_str)
        .is_some_and(|m| m.starts_with("unpack"))
}

fn text_of<'a>(meta: Option<&'a Value>, key: &str) -> Option<&'a str> {
    meta.and_then(|m| m.get(key)).and_then(Value::as_str)
}

/// How a memory figure was measured, from its meta: what was counted, the
/// method and repeats of a peak, the backend and dtype.
fn memory_method(data: &RunData, bitnet_key: &str) -> String {
    let meta = data.final_meta(bitnet_key);
    let mut parts = Vec::new();
    if let Some(c) = text_of(meta, "counted") {
        parts.push(c.to_string());
    }
    if let Some(m) = text_of(meta, "method") {
        let repeats = meta
            .and_then(|m| m.get("repeats"))
            .and_then(Value::as_u64)
            .map(|r| format!("median of {r} isolated processes per side, "))
            .unwrap_or_default();
        parts.push(format!("{repeats}{m}"));
    }
    if let Some(b) = text_of(meta, "backend") {
        parts.push(format!("BitNet backend: {b}"));
    }
    if let Some(d) = text_of(meta, "dtype") {
        parts.push(format!("dtype {d}"));
    }
    if parts.is_empty() {
        "method not recorded".into()
    } else {
        parts.join("; ")
    }
}

/// The 95% interval of one shape's speedup, from `shape_speedup`'s meta.
fn shape_interval(data: &RunData, mode: &str, seq: u64, batch: u64) -> String {
    let num = |m: &Value, k: &str| m.get(k).and_then(Value::as_f64);
    data.metrics
        .iter()
        .filter(|(_, m)| m.key == "shape_speedup")
        .filter_map(|(_, m)| m.meta.as_ref())
        .find(|m| {
            m.get("mode").and_then(Value::as_str).unwrap_or("") == mode
                && num(m, "batch") == Some(batch as f64)
                && num(m, "seq").unwrap_or(0.0) as u64 == seq
        })
        .and_then(|m| Some((num(m, "ci95_low")?, num(m, "ci95_high")?)))
        .map(|(lo, hi)| format!("{}-{}x", fmt_value(lo), fmt_value(hi)))
        .unwrap_or_else(|| "-".into())
}

/// One overall speed figure with its interval, definition and method.
fn speed_figure(key: &str, label: &str, value: f64, meta: Option<&Value>) -> Value {
    let num = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_f64);
    let interval = match (num("ci95_low"), num("ci95_high")) {
        (Some(lo), Some(hi)) => Some(format!("{}x to {}x", fmt_value(lo), fmt_value(hi))),
        _ => None,
    };
    let shapes = meta
        .and_then(|m| m.get("shapes"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|s| {
                    format!(
                        "b{} s{}",
                        s.get("batch").unwrap_or(&Value::Null),
                        s.get("seq").unwrap_or(&Value::Null)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        });
    let mut method = Vec::new();
    if let Some(m) = text_of(meta, "bitnet_matmul") {
        method.push(format!("BitNet matmul {m}"));
    }
    if let Some(b) = text_of(meta, "baseline_backend") {
        method.push(format!("baseline {b}"));
    }
    if let Some(d) = text_of(meta, "dtype") {
        method.push(format!("dtype {d}"));
    }
    if let (Some(t), Some(c)) = (num("threads"), num("cores")) {
        method.push(format!("{t} threads on {c} cores"));
    }
    if let Some(i) = num("iters") {
        let w = num("warmup").unwrap_or(0.0);
        method.push(format!(
            "{i} timed iterations per side and shape after {w} warm-up"
        ));
    }
    if let Some(l) = num("load_max") {
        method.push(format!("1-min load average up to {l:.2}"));
    }
    json!({
        "key": key,
        "label": label,
        "value": format!("{}x", fmt_value(value)),
        "interval": interval,
        "definition": text_of(meta, "definition"),
        "shapes": shapes,
        "method": method.join("; "),
        "fallback": is_fallback(meta.and_then(|m| m.get("bitnet_matmul"))),
        "warning": text_of(meta, "warning"),
    })
}

/// Every measurement warning recorded in a metric's meta (a busy machine,
/// an interval that crosses 1.0), once per stage and text.
pub fn measurement_warnings(data: &RunData) -> Vec<Value> {
    let mut seen = std::collections::BTreeSet::new();
    data.metrics
        .iter()
        .filter_map(|(stage, m)| {
            let w = m.meta.as_ref()?.get("warning")?.as_str()?;
            seen.insert((stage.clone(), m.key.clone(), w.to_string()))
                .then(|| json!({"stage": stage, "metric": m.key, "warning": w}))
        })
        .collect()
}

/// Renders the report of one run to HTML.
pub fn render_run(data: &RunData) -> anyhow::Result<String> {
    let ctx = tera::Context::from_value(report_context(data)?)
        .context("report context is not an object; this is a bug, please report it")?;
    tera()?
        .render("report.html", &ctx)
        .map_err(|e| anyhow::anyhow!("cannot render the report: {}", tera_error_chain(&e)))
}

/// Tera's error with its causes (the top level alone says only "failed to
/// render").
pub fn tera_error_chain(e: &tera::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

/// Renders run `run_id` into `out` (default `<runs_dir>/<run>/report.html`),
/// returning the path written.
pub fn write_run_report(store: &Store, run_id: i64, out: Option<&Path>) -> anyhow::Result<PathBuf> {
    let data = RunData::load(store, run_id)?;
    let html = render_run(&data)?;
    let path = match out {
        Some(p) => p.to_path_buf(),
        None => data.run_dir().join("report.html"),
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(&path, html).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_record() -> RunRecord {
        RunRecord {
            id: 3,
            name: "p4".into(),
            pipeline_path: "pipelines/phase4.yaml".into(),
            pipeline_sha: "ab".repeat(32),
            pipeline_source: String::new(),
            overrides: vec!["train.lr=1e-4".into()],
            status: "completed".into(),
            started_at: "2026-01-01T00:00:00.000Z".into(),
            ended_at: Some("2026-01-01T00:01:30.500Z".into()),
            git_commit: Some("deadbeef".into()),
            git_dirty: Some(true),
            host: Some("box".into()),
            device: Some("cpu".into()),
            torch_version: None,
            seed: Some(42),
            argv: vec!["bitnet-pipeline".into(), "run".into()],
            runs_dir: "runs".into(),
            runner_pid: None,
            runner_start_ticks: None,
            sweep_id: None,
            selection: None,
            executor: None,
        }
    }

    fn finding(rule: &str, file: &str, line: i64, message: &str) -> Finding {
        Finding {
            rule: rule.into(),
            severity: "warning".into(),
            file: file.into(),
            line: Some(line),
            column: None,
            message: message.into(),
        }
    }

    #[test]
    fn pot10_findings_are_grouped_by_rule_with_locations_and_escaped() {
        let data = RunData {
            run: run_record(),
            stages: Vec::new(),
            params: vec![("torch_version".into(), json!("2.11.0"))],
            reused_params: Vec::new(),
            metrics: [
                ("pot10_score", 0.875),
                ("pot10_threshold", 0.92),
                ("pot10_pass_rate_rule-2-loop-bound", 0.5),
                ("pot10_coverage", 0.96),
                ("pot10_coverage_lines", 0.96),
                ("pot10_coverage_functions", 1.0),
                ("pot10_unparsed_regions", 1.0),
                ("pot10_suppressed_findings", 2.0),
            ]
            .iter()
            .map(|(k, v)| {
                (
                    "pot10".to_string(),
                    Metric {
                        key: k.to_string(),
                        step: None,
                        value: *v,
                        unit: None,
                        meta: None,
                    },
                )
            })
            .collect(),
            findings: vec![
                (
                    "pot10".into(),
                    finding("rule-2-loop-bound", "src/a.rs", 10, "loop without bound"),
                ),
                (
                    "pot10".into(),
                    finding("rule-10-warnings", "src/b.rs", 3, "<b>goto</b> used"),
                ),
                (
                    "pot10".into(),
                    finding("rule-2-loop-bound", "src/c.rs", 7, "while true"),
                ),
                (
                    "pot10".into(),
                    finding(
                        "suppression",
                        "src/k.rs",
                        12,
                        "allow(R9) SIMD intrinsics [2 finding(s) suppressed: R9 line 13, R9 line 20]",
                    ),
                ),
            ],
            targets: Vec::new(),
            artifacts: Vec::new(),
        };
        let html = render_run(&data).unwrap();
        let findings = html
            .split("<section id=\"findings\">")
            .nth(1)
            .and_then(|s| s.split("</section>").next())
            .expect("findings section");
        assert!(findings.contains("POT10 score: <strong>0.875</strong> (needs 0.92)"));
        // Issue #13: coverage and every suppression with its reason.
        assert!(
            findings.contains("<strong>96.0%</strong> of lines, <strong>100.0%</strong> of functions; 1 region(s) did not parse"),
            "{findings}"
        );
        assert!(findings.contains("Suppressions (1 comment(s), 2 finding(s) suppressed)"));
        assert!(findings.contains("<td><code>src&#x2F;k.rs:12</code></td><td>allow(R9) SIMD intrinsics [2 finding(s) suppressed: R9 line 13, R9 line 20]</td>"), "{findings}");
        assert!(
            !findings.contains("suppression (1)"),
            "suppressions are not a rule group"
        );
        assert!(findings.contains("<td>rule-2-loop-bound</td><td class=\"num\">50.0%</td>"));
        let rule10 = findings
            .find("rule-10-warnings (1)")
            .expect("rule 10 group");
        let rule2 = findings
            .find("rule-2-loop-bound (2)")
            .expect("rule 2 group");
        assert!(rule2 < rule10, "groups in natural order of rules");
        assert!(findings.contains("<code>src&#x2F;c.rs:7</code>"));
        assert!(findings.contains("&lt;b&gt;goto&lt;&#x2F;b&gt; used"));
        // Provenance falls back to the torch_version param; dirty tree shown.
        assert!(html.contains("<dd>2.11.0</dd>"));
        assert!(html.contains("badge FAILED\">dirty"));
        assert!(html.contains("duration 1 min 30 s"));
    }

    fn metric(key: &str, step: Option<i64>, value: f64, meta: Option<Value>) -> (String, Metric) {
        (
            "speed".to_string(),
            Metric {
                key: key.into(),
                step,
                value,
                unit: None,
                meta,
            },
        )
    }

    /// The shape of `profile_speed`'s metrics: four keys per shape and side,
    /// all with the same meta, stepped by shape, plus per-shape and overall
    /// speedups with their intervals and method (issue #14).
    fn speed_run(matmul: &str, warning: Option<&str>) -> RunData {
        let mut metrics = Vec::new();
        for (step, batch) in [(0, 1), (1, 4)] {
            for (side, median) in [("baseline", 4.0 * batch as f64), ("bitnet", 2.0)] {
                let meta = json!({"side": side, "mode": "prefill", "batch": batch, "seq": 32,
                                  "median_ms": median, "p25_ms": median - 0.5, "p75_ms": median + 0.5,
                                  "p95_ms": median + 1.0});
                for key in [
                    "latency_ms_median",
                    "latency_ms_p95",
                    "samples_per_s",
                    "tokens_per_s",
                ] {
                    metrics.push(metric(
                        &format!("{key}_{side}"),
                        Some(step),
                        123.0,
                        Some(meta.clone()),
                    ));
                }
            }
            metrics.push(metric(
                "shape_speedup",
                Some(step),
                2.0,
                Some(json!({"mode": "prefill", "batch": batch, "seq": 32,
                            "ci95_low": 1.5, "ci95_high": 2.5})),
            ));
        }
        let mut meta = json!({"shapes": [{"batch": 1, "seq": 32}, {"batch": 4, "seq": 32}],
            "ci95_low": 2.1, "ci95_high": 3.4, "bitnet_matmul": matmul,
            "baseline_backend": "dense fp32 matmul (libtorch)", "dtype": "fp32",
            "threads": 2, "cores": 2, "iters": 30, "warmup": 3, "load_max": 1.25,
            "definition": "geometric mean over the prefill shapes"});
        if let Some(w) = warning {
            meta["warning"] = json!(w);
        }
        metrics.push(metric("speedup_prefill", None, 2.83, Some(meta)));
        metrics.push(metric(
            "speedup_decode",
            None,
            1.5,
            Some(json!({"ci95_low": 0.9, "ci95_high": 2.0})),
        ));
        RunData {
            run: run_record(),
            stages: Vec::new(),
            params: Vec::new(),
            reused_params: Vec::new(),
            metrics,
            findings: Vec::new(),
            targets: Vec::new(),
            artifacts: Vec::new(),
        }
    }

    #[test]
    fn profile_speed_metrics_give_one_point_per_shape_and_side() {
        let data = speed_run("kernel-avx2", None);
        let points = latency_points(&data);
        assert_eq!(points.len(), 4, "{points:?}");
        let series = latency_series(&points, "");
        let labels: Vec<&str> = series.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["baseline prefill seq 32", "bitnet prefill seq 32"]);
        assert_eq!(series[0].points, [(1.0, 4.0), (4.0, 16.0)]);
        assert!(
            curves(&data).is_empty(),
            "per-shape steps are not training curves"
        );
        let keys: Vec<String> = data.final_metrics().into_iter().map(|f| f.key).collect();
        assert_eq!(keys, ["speedup_prefill", "speedup_decode"]);
        let html = render_run(&data).unwrap();
        assert!(html.contains("Prefill speedup: <strong id=\"speedup_prefill\">2.83x</strong>"));
        assert!(html.contains("(95% interval 2.1x to 3.4x)"));
        assert!(
            html.contains("Decode speedup (KV cache): <strong id=\"speedup_decode\">1.5x</strong>")
        );
        assert!(html.contains("Method: BitNet matmul kernel-avx2; baseline dense fp32 matmul (libtorch); dtype fp32; 2 threads on 2 cores; 30 timed iterations per side and shape after 3 warm-up; 1-min load average up to 1.25"), "{html}");
        assert!(html.contains("shapes: b1 s32, b4 s32"));
        assert!(
            !html.contains("unpack fallback"),
            "a kernel run shows no fallback"
        );
        assert!(!html.contains("Measurement warning"));
        assert!(
            html.contains("<td class=\"num\">8x</td><td class=\"num\">1.5-2.5x</td>"),
            "batch 4: 16 ms / 2 ms, with its interval"
        );
        assert!(
            html.contains("<td class=\"num\">15.500-16.500</td><td class=\"num\">17.000</td>"),
            "baseline IQR and p95 at batch 4"
        );
    }

    /// A run that fell back to the unpack path must look different from a
    /// kernel run, and a load warning must be visible at the top and next
    /// to the figure.
    #[test]
    fn unpack_fallback_and_load_warnings_are_visible() {
        let data = speed_run(
            "unpack-f32",
            Some("the machine was busier than its 2 cores"),
        );
        let html = render_run(&data).unwrap();
        assert!(
            html.contains("<span class=\"badge fallback\">unpack fallback: no fast kernel</span>")
        );
        let summary = html
            .split("<section id=\"summary\">")
            .nth(1)
            .and_then(|s| s.split("</section>").next())
            .unwrap();
        assert!(summary.contains("Measurement warning"), "{summary}");
        assert!(summary.contains("the machine was busier than its 2 cores"));
        assert!(
            html.contains("<div class=\"warning\">the machine was busier than its 2 cores</div>")
        );
    }
}
