//! `validate`: checks measured metrics against targets and records the
//! verdict (the Phase 4 guide's `BitNetPerformanceValidator`).
//!
//! A run exists to answer "does the compressed model ship?", so this stage
//! turns upstream metrics into PASSED/FAILED rows with the measured value
//! next to the threshold. It reads the final metric values of the stages in
//! its `needs` (no DB access from the child). A missed target is data, not a
//! stage failure: the verdict is recorded (targets table, metrics
//! `targets_passed`, `targets_total`, `production_ready`, `verdict.json`)
//! and `bitnet-pipeline run --strict` turns a FAILED verdict into exit code
//! 1 for CI gates. A metric that is not there is an error, never a pass.
use std::collections::BTreeMap;
use std::fmt;

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse_config, OptionDoc, StageContext, StageKind};
use crate::pipeline::ConfigIssue;
use crate::store::Target;

/// Name prefix of the advisory "optimal" rows in the targets table; they
/// never count towards the verdict.
pub const OPTIMAL_PREFIX: &str = "optimal:";

/// The defaults of the Phase 4 guide (`_validate_*` in its section 4.1):
/// memory >= 8x, speedup >= 2x (4x optimal), POT10 compliant. The guide's
/// speedup is the latency ratio of a forward over an input batch, which is
/// what `speedup_prefill` measures. The guide names no accuracy threshold;
/// 5% relative perplexity increase is ours.
const DEFAULT_TARGETS: &[(&str, &str)] = &[
    ("memory_reduction", ">= 8"),
    ("speedup_prefill", ">= 2"),
    ("accuracy_degradation", "<= 0.05"),
    ("pot10_score", ">= 0.92"),
];
const DEFAULT_OPTIMAL: &[(&str, &str)] = &[("speedup_prefill", ">= 4")];

/// Metric names that once existed, with what replaced them, so a pipeline
/// written for them gets told what to write instead.
const RENAMED_METRICS: &[(&str, &str)] = &[
    (
        "speedup",
        "`speedup` mixed prefill and single-token timings and no longer exists; profile_speed reports `speedup_prefill` and `speedup_decode`: name the one you mean",
    ),
    (
        "speedup_single_token",
        "`speedup_single_token` was a one-token forward without a KV cache; profile_speed now times real decode steps with a KV cache at `decode_contexts` and reports `speedup_decode`",
    ),
    (
        "weight_bytes_baseline",
        "profile_memory now reports `weight_bytes_stored_baseline` and `weight_bytes_resident_baseline`",
    ),
    (
        "weight_bytes_bitnet",
        "profile_memory now reports `weight_bytes_stored_bitnet` and `weight_bytes_resident_bitnet`",
    ),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateConfig {
    /// metric -> condition; None means the Phase 4 defaults.
    #[serde(default)]
    pub targets: Option<BTreeMap<String, String>>,
    /// Advisory conditions reported as OPTIMAL or not; default
    /// `speedup_prefill: ">= 4"` only when `targets` is defaulted too.
    #[serde(default)]
    pub optimal: Option<BTreeMap<String, String>>,
}

impl ValidateConfig {
    fn targets(&self) -> Vec<(String, String)> {
        match &self.targets {
            Some(t) => t.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            None => owned(DEFAULT_TARGETS),
        }
    }

    fn optimal(&self) -> Vec<(String, String)> {
        match (&self.optimal, &self.targets) {
            (Some(o), _) => o.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            (None, None) => owned(DEFAULT_OPTIMAL),
            (None, Some(_)) => Vec::new(),
        }
    }
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Comparison operator of a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Ge,
    Le,
    Gt,
    Lt,
    Eq,
    Ne,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Ge => ">=",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Lt => "<",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }

    /// `==`/`!=` allow a relative error of 1e-9, so a 0/1 flag or a value
    /// that went through JSON and SQLite compares as written.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        let close = (value - threshold).abs() <= 1e-9 * threshold.abs().max(1.0);
        match self {
            Op::Ge => value >= threshold,
            Op::Le => value <= threshold,
            Op::Gt => value > threshold,
            Op::Lt => value < threshold,
            Op::Eq => close,
            Op::Ne => !close,
        }
    }
}

/// A parsed condition such as `>= 8`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Condition {
    pub op: Op,
    pub threshold: f64,
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}",
            self.op.as_str(),
            crate::format::fmt_value(self.threshold)
        )
    }
}

/// Parses `">= 8"`, `"<=0.05"`, `"== 1"`; the message says what is allowed.
pub fn parse_condition(text: &str) -> Result<Condition, String> {
    let t = text.trim();
    let ops = [
        (">=", Op::Ge),
        ("<=", Op::Le),
        ("==", Op::Eq),
        ("!=", Op::Ne),
        (">", Op::Gt),
        ("<", Op::Lt),
    ];
    let Some((sym, op)) = ops.iter().find(|(s, _)| t.starts_with(s)) else {
        return Err(format!(
            "condition `{text}` must start with one of >=, <=, >, <, ==, != followed by a number, e.g. \">= 8\""
        ));
    };
    let num = t[sym.len()..].trim();
    match num.parse::<f64>() {
        Ok(threshold) if threshold.is_finite() => Ok(Condition { op: *op, threshold }),
        _ => Err(format!(
            "condition `{text}`: `{num}` is not a finite number; write e.g. \"{sym} 8\""
        )),
    }
}

/// Finds the final value of `name` among upstream metrics (stage -> key ->
/// value). `stage.metric` picks one stage; a bare name must be unique.
pub fn lookup(
    upstream: &BTreeMap<String, BTreeMap<String, f64>>,
    name: &str,
) -> Result<(String, f64), String> {
    if let Some((stage, key)) = name.split_once('.') {
        if let Some(v) = upstream.get(stage).and_then(|m| m.get(key)) {
            return Ok((format!("{stage}.{key}"), *v));
        }
    }
    let found: Vec<(String, f64)> = upstream
        .iter()
        .filter_map(|(stage, m)| m.get(name).map(|v| (format!("{stage}.{name}"), *v)))
        .collect();
    match found.len() {
        1 => Ok(found.into_iter().next().expect("one element")),
        0 => {
            let available: Vec<String> = upstream
                .iter()
                .flat_map(|(s, m)| m.keys().map(move |k| format!("`{s}.{k}`")))
                .collect();
            let stages: Vec<String> = upstream.keys().map(|s| format!("`{s}`")).collect();
            let list = if available.is_empty() {
                "none".to_string()
            } else {
                available.join(", ")
            };
            let bare = name.rsplit('.').next().unwrap_or(name);
            let renamed = RENAMED_METRICS
                .iter()
                .find(|(old, _)| *old == bare)
                .map(|(_, hint)| format!("{hint}. "))
                .unwrap_or_default();
            Err(format!(
                "metric `{name}` was not reported by any stage in `needs` ({}); {renamed}available metrics: {list}. \
                 Add the stage that measures it to `needs`, or fix the name",
                if stages.is_empty() {
                    "none".to_string()
                } else {
                    stages.join(", ")
                }
            ))
        }
        _ => {
            let names: Vec<String> = found.iter().map(|(n, _)| format!("`{n}`")).collect();
            Err(format!(
                "metric `{name}` is ambiguous: reported by {}; write the qualified name",
                names.join(" and ")
            ))
        }
    }
}

/// One evaluated condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub name: String,
    pub metric: String,
    pub condition: Condition,
    pub value: f64,
    pub passed: bool,
}

/// Evaluates targets and optimal conditions; any missing or ambiguous
/// metric or bad condition is an error listing all problems at once.
pub fn evaluate(
    cfg: &ValidateConfig,
    upstream: &BTreeMap<String, BTreeMap<String, f64>>,
) -> anyhow::Result<(Vec<Outcome>, Vec<Outcome>)> {
    let mut problems = Vec::new();
    let mut eval = |list: Vec<(String, String)>| {
        let mut out = Vec::new();
        for (name, cond) in list {
            let condition = match parse_condition(&cond) {
                Ok(c) => c,
                Err(e) => {
                    problems.push(format!("target `{name}`: {e}"));
                    continue;
                }
            };
            match lookup(upstream, &name) {
                Ok((metric, value)) => out.push(Outcome {
                    passed: !value.is_nan() && condition.op.holds(value, condition.threshold),
                    name,
                    metric,
                    condition,
                    value,
                }),
                Err(e) => problems.push(e),
            }
        }
        out
    };
    let targets = eval(cfg.targets());
    let optimal = eval(cfg.optimal());
    if !problems.is_empty() {
        bail!(problems.join("\n"));
    }
    Ok((targets, optimal))
}

pub struct Validate;

const OPTIONS: &[OptionDoc] = &[
    OptionDoc {
        name: "targets",
        type_name: "map metric -> condition",
        default: "{memory_reduction: \">= 8\", speedup_prefill: \">= 2\", accuracy_degradation: \"<= 0.05\", pot10_score: \">= 0.92\"}",
        help: "conditions (>=, <=, >, <, ==, != and a number) on final metrics of the stages in `needs`; write `stage.metric` when two stages report the same metric",
    },
    OptionDoc {
        name: "optimal",
        type_name: "map metric -> condition",
        default: "{speedup_prefill: \">= 4\"} when targets is defaulted, else {}",
        help: "advisory conditions reported as OPTIMAL or not; they never change the verdict",
    },
];

impl StageKind for Validate {
    fn key_metrics(&self) -> &'static [&'static str] {
        &["production_ready", "targets_passed", "targets_total"]
    }

    fn name(&self) -> &'static str {
        "validate"
    }

    fn summary(&self) -> &'static str {
        "check upstream metrics against targets (PASSED/FAILED), record the verdict and production_ready"
    }

    fn options(&self) -> &'static [OptionDoc] {
        OPTIONS
    }

    fn check_config(&self, config: &Value) -> Result<(), ConfigIssue> {
        let c: ValidateConfig = parse_config(config)?;
        for (field, list) in [("targets", &c.targets), ("optimal", &c.optimal)] {
            for (name, cond) in list.iter().flatten() {
                parse_condition(cond).map_err(|message| ConfigIssue {
                    path: vec![field.to_string(), name.clone()],
                    message,
                })?;
            }
        }
        Ok(())
    }

    /// The verdict is about this run's measurements: upstream measurement
    /// stages may write no files, so a cache key over their artifacts could
    /// not tell two runs' metrics apart.
    fn cache_by_default(&self) -> bool {
        false
    }

    fn run(&self, ctx: &mut StageContext) -> anyhow::Result<()> {
        let cfg: ValidateConfig =
            parse_config(ctx.config()).map_err(|e| anyhow::anyhow!(e.message))?;
        if ctx.invocation.upstream.is_empty() {
            bail!(
                "stage `{}` has no `needs`; list the stages whose metrics it validates, e.g. `needs: [profile_memory, profile_speed]`",
                ctx.invocation.stage
            );
        }
        let upstream: BTreeMap<String, BTreeMap<String, f64>> = ctx
            .invocation
            .upstream
            .iter()
            .map(|(n, u)| (n.clone(), u.metrics.clone()))
            .collect();
        let (targets, optimal) = evaluate(&cfg, &upstream)?;
        for (o, prefix) in targets
            .iter()
            .map(|o| (o, ""))
            .chain(optimal.iter().map(|o| (o, OPTIMAL_PREFIX)))
        {
            ctx.target(Target {
                name: format!("{prefix}{}", o.name),
                metric: o.metric.clone(),
                op: o.condition.op.as_str().to_string(),
                threshold: o.condition.threshold,
                value: Some(o.value),
                passed: o.passed,
            });
        }
        let passed = targets.iter().filter(|o| o.passed).count();
        let ready = passed == targets.len();
        ctx.metric("targets_passed", passed as f64, None);
        ctx.metric("targets_total", targets.len() as f64, None);
        ctx.metric("production_ready", if ready { 1.0 } else { 0.0 }, None);
        let rows = |list: &[Outcome], ok: &str, not: &str| -> Vec<Value> {
            list.iter()
                .map(|o| {
                    json!({
                        "name": o.name,
                        "metric": o.metric,
                        "condition": o.condition.to_string(),
                        "value": o.value,
                        "status": if o.passed { ok } else { not },
                    })
                })
                .collect()
        };
        let verdict = json!({
            "verdict": if ready { "PASSED" } else { "FAILED" },
            "production_ready": ready,
            "targets_passed": passed,
            "targets_total": targets.len(),
            "targets": rows(&targets, "PASSED", "FAILED"),
            "optimal": rows(&optimal, "OPTIMAL", "NOT OPTIMAL"),
        });
        let path = ctx.output_dir().join("verdict.json");
        std::fs::write(&path, serde_json::to_string_pretty(&verdict)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::protocol::{Event, Invocation, Upstream};
    use std::sync::{Arc, Mutex};

    /// A writer the test can read after the stage ran.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn run_stage(
        config: Value,
        upstream: &[(&str, &[(&str, f64)])],
    ) -> (anyhow::Result<()>, Vec<Event>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let inv = Invocation {
            run_id: 1,
            stage: "validate".into(),
            kind: "validate".into(),
            config,
            output_dir: dir.path().to_path_buf(),
            pipeline_dir: dir.path().to_path_buf(),
            upstream: upstream
                .iter()
                .map(|(name, ms)| {
                    (
                        name.to_string(),
                        Upstream {
                            kind: "command".into(),
                            output_dir: dir.path().to_path_buf(),
                            metrics: ms.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                        },
                    )
                })
                .collect(),
            device: None,
            seed: None,
            params: json!({}),
            attempt: 0,
        };
        let buf = Buf::default();
        let mut ctx = StageContext::with_writer(inv, Box::new(buf.clone()));
        let r = Validate.run(&mut ctx);
        let text = String::from_utf8(buf.0.lock().expect("not poisoned").clone()).expect("utf8");
        let events = text
            .lines()
            .filter_map(|l| Event::from_line(l).map(|e| e.expect("valid event")))
            .collect();
        (r, events, dir)
    }

    fn targets(events: &[Event]) -> Vec<Target> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Target(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
    }

    fn metric(events: &[Event], key: &str) -> Option<f64> {
        events.iter().find_map(|e| match e {
            Event::Metric(m) if m.key == key => Some(m.value),
            _ => None,
        })
    }

    #[test]
    fn impossible_target_fails_and_trivial_target_passes() {
        let cfg = json!({"targets": {"speedup": ">= 1e9", "memory_reduction": "> 0"}});
        let (r, events, dir) = run_stage(
            cfg,
            &[
                ("speed", &[("speedup", 1.7)]),
                ("mem", &[("memory_reduction", 9.5)]),
            ],
        );
        r.expect("a missed target is not a stage failure");
        let t = targets(&events);
        assert_eq!(t.len(), 2, "{t:?}");
        let get = |n: &str| t.iter().find(|x| x.name == n).expect("target row");
        assert!(!get("speedup").passed);
        assert_eq!(get("speedup").value, Some(1.7));
        assert_eq!(get("speedup").metric, "speed.speedup");
        assert!(get("memory_reduction").passed);
        assert_eq!(metric(&events, "targets_passed"), Some(1.0));
        assert_eq!(metric(&events, "targets_total"), Some(2.0));
        assert_eq!(metric(&events, "production_ready"), Some(0.0));
        let verdict: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("verdict.json")).expect("verdict.json"),
        )
        .expect("json");
        assert_eq!(verdict["verdict"], "FAILED");
        assert_eq!(verdict["optimal"], json!([]));
    }

    #[test]
    fn defaults_mirror_the_phase4_guide_with_optimal_speedup() {
        let (r, events, _dir) = run_stage(
            json!({}),
            &[
                ("mem", &[("memory_reduction", 8.0)]),
                ("speed", &[("speedup_prefill", 2.5)]),
                ("eval", &[("accuracy_degradation", 0.01)]),
                ("pot10", &[("pot10_score", 0.95)]),
            ],
        );
        r.expect("runs");
        let t = targets(&events);
        assert!(t
            .iter()
            .filter(|x| !x.name.starts_with(OPTIMAL_PREFIX))
            .all(|x| x.passed));
        let opt = t
            .iter()
            .find(|x| x.name == "optimal:speedup_prefill")
            .expect("optimal row");
        assert!(!opt.passed, "2.5x is not the optimal 4x");
        assert_eq!(metric(&events, "production_ready"), Some(1.0));
    }

    #[test]
    fn missing_metric_is_an_error_naming_it_and_the_available_ones() {
        let (r, events, _dir) = run_stage(
            json!({"targets": {"speedup": ">= 2"}}),
            &[("mem", &[("memory_reduction", 9.0)])],
        );
        let msg = r.expect_err("missing metric must fail").to_string();
        assert!(msg.contains("metric `speedup`"), "{msg}");
        assert!(msg.contains("`mem.memory_reduction`"), "{msg}");
        assert!(targets(&events).is_empty(), "no partial verdict");
    }

    /// Issue #14: `speedup` was split; a target on the old name says which
    /// names replace it and which metrics exist.
    #[test]
    fn a_target_on_the_old_speedup_name_says_what_replaced_it() {
        let (r, events, _dir) = run_stage(
            json!({"targets": {"speedup": ">= 2"}}),
            &[(
                "speed",
                &[("speedup_prefill", 0.9), ("speedup_decode", 3.1)],
            )],
        );
        let msg = r.expect_err("the old name must fail").to_string();
        assert!(
            msg.contains("profile_speed reports `speedup_prefill` and `speedup_decode`"),
            "{msg}"
        );
        assert!(msg.contains("`speed.speedup_decode`"), "{msg}");
        assert!(targets(&events).is_empty(), "no partial verdict");
    }

    /// Issue #11: the one-token forward gave way to real decode steps; a
    /// target on its name points at `speedup_decode`.
    #[test]
    fn a_target_on_speedup_single_token_points_at_speedup_decode() {
        let (r, _events, _dir) = run_stage(
            json!({"targets": {"speedup_single_token": ">= 2"}}),
            &[(
                "speed",
                &[("speedup_prefill", 0.9), ("speedup_decode", 3.1)],
            )],
        );
        let msg = r.expect_err("the old name must fail").to_string();
        assert!(msg.contains("reports `speedup_decode`"), "{msg}");
    }

    #[test]
    fn ambiguous_bare_name_lists_candidates_and_qualified_name_resolves() {
        let up: &[(&str, &[(&str, f64)])] =
            &[("a", &[("speedup", 1.0)]), ("b", &[("speedup", 3.0)])];
        let (r, _, _d) = run_stage(json!({"targets": {"speedup": ">= 2"}}), up);
        let msg = r.expect_err("ambiguous").to_string();
        assert!(msg.contains("`a.speedup` and `b.speedup`"), "{msg}");
        let (r, events, _d) = run_stage(json!({"targets": {"b.speedup": ">= 2"}}), up);
        r.expect("qualified name resolves");
        assert!(targets(&events)[0].passed);
    }

    #[test]
    fn conditions_parse_and_bad_ones_are_config_errors_with_their_path() {
        assert_eq!(
            parse_condition(">=8").unwrap(),
            Condition {
                op: Op::Ge,
                threshold: 8.0
            }
        );
        assert_eq!(parse_condition(" == 1 ").unwrap().op, Op::Eq);
        assert!(Op::Eq.holds(1.0, 1.0) && !Op::Ne.holds(1.0, 1.0));
        assert!(Op::Gt.holds(2.1, 2.0) && !Op::Lt.holds(2.1, 2.0));
        assert!(parse_condition("=> 8").is_err());
        assert!(parse_condition(">= lots").is_err());
        let err = Validate
            .check_config(&json!({"targets": {"speedup": "at least 2"}}))
            .unwrap_err();
        assert_eq!(err.path, vec!["targets", "speedup"]);
        assert!(Validate.check_config(&json!({"targetz": {}})).is_err());
    }
}
