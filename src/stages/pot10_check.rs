//! `pot10_check`: the NASA Power-of-Ten analyzer (the `pot10` crate) as a
//! pipeline stage. The `with` block is the analyzer's own config (paths
//! relative to the pipeline file); the stage records `pot10_score`, the
//! coverage (`pot10_coverage`, lines and functions analyzed), suppression
//! counts and the per-rule pass rates as metrics; every finding, every
//! region that did not parse (rule `unparsed`) and every suppression (rule
//! `suppression`, its reason and what it hid) in the `findings` table; a
//! target `pot10_coverage >= min_coverage`, so a run that scored only part
//! of the code is FAILED rather than trusted; and writes `pot10.json`,
//! `pot10.sarif` and `pot10.txt`.
//!
//! Its inputs are the analyzed files, so it is cached like any stage whose
//! inputs did not change: `paths` are part of the fingerprint.
use serde_json::Value;

use super::{parse_config, OptionDoc, StageContext, StageKind};
use crate::pipeline::ConfigIssue;
use crate::store::{Finding, Target};

pub struct Pot10Check;

const OPTIONS: &[OptionDoc] = &[
    OptionDoc {
        name: "paths",
        type_name: "list of paths",
        default: "required",
        help: "files/folders to analyze, relative to the pipeline folder",
    },
    OptionDoc {
        name: "languages",
        type_name: "list",
        default: "[c, python, rust]",
        help: "languages to analyze",
    },
    OptionDoc {
        name: "rules",
        type_name: "list",
        default: "all (R1..R10)",
        help: "rules to check",
    },
    OptionDoc {
        name: "threshold",
        type_name: "number",
        default: "0.92",
        help: "compliance score needed to pass (recorded as metric pot10_threshold)",
    },
    OptionDoc {
        name: "min_coverage",
        type_name: "number",
        default: "0.95",
        help: "share of lines and of functions that must parse; below it the stage's `pot10_coverage` target FAILS",
    },
    OptionDoc {
        name: "macros",
        type_name: "map",
        default: "{}",
        help: "C macros to expand before parsing, e.g. {\"API(t)\": \"t\", CDECL: \"\"}",
    },
    OptionDoc {
        name: "run_external_tools / run_clippy",
        type_name: "bool",
        default: "true",
        help: "R10: run cc/clippy/python; a tool that is unavailable is reported, never a pass",
    },
    OptionDoc {
        name: "(more)",
        type_name: "",
        default: "",
        help: "max_function_lines, assertion_names, init_function_patterns, exclude_dirs, skip_tests, weights: see `bitnet-pipeline pot10 --help`",
    },
];

fn config(config: &Value) -> Result<pot10::Config, ConfigIssue> {
    let c: pot10::Config = parse_config(config)?;
    if c.paths.is_empty() {
        return Err(ConfigIssue {
            path: vec!["paths".into()],
            message: "`paths` is empty; list the source folders to check".into(),
        });
    }
    Ok(c)
}

impl StageKind for Pot10Check {
    fn key_metrics(&self) -> &'static [&'static str] {
        &["pot10_score", "pot10_findings"]
    }

    fn name(&self) -> &'static str {
        "pot10_check"
    }

    fn summary(&self) -> &'static str {
        "NASA Power-of-Ten compliance of C, Python and Rust sources (score, per-rule pass rates, findings)"
    }

    fn options(&self) -> &'static [OptionDoc] {
        OPTIONS
    }

    fn check_config(&self, c: &Value) -> Result<(), ConfigIssue> {
        config(c).map(|_| ())
    }

    fn deps(&self, c: &Value) -> Vec<String> {
        config(c)
            .map(|c| {
                c.paths
                    .iter()
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn run(&self, ctx: &mut StageContext) -> anyhow::Result<()> {
        let mut c = config(ctx.config()).map_err(|e| anyhow::anyhow!(e.message))?;
        c.paths = c
            .paths
            .iter()
            .map(|p| ctx.resolve(&p.to_string_lossy()))
            .collect();
        ctx.progress(0, None, "analyzing");
        let report = pot10::analyze(&c)?;
        for (key, value) in report.metrics() {
            ctx.metric(&key, value, None);
        }
        ctx.metric("pot10_threshold", report.threshold, None);
        ctx.metric(
            "pot10_findings",
            report.findings.len() as f64,
            Some("findings"),
        );
        ctx.target(Target {
            name: "pot10_coverage".to_string(),
            metric: "pot10_coverage".to_string(),
            op: ">=".to_string(),
            threshold: report.min_coverage,
            value: Some(report.coverage_rate()),
            passed: report.coverage_passed(),
        });
        let base = ctx.invocation.pipeline_dir.clone();
        let shown = |f: &str| {
            let file = std::path::Path::new(f);
            file.strip_prefix(&base)
                .unwrap_or(file)
                .to_string_lossy()
                .into_owned()
        };
        for f in &report.findings {
            ctx.finding(Finding {
                rule: f.rule.code().to_string(),
                severity: f.severity.name().to_string(),
                file: shown(&f.file),
                line: Some(f.line as i64),
                column: Some(f.column as i64),
                message: f.message.clone(),
            });
        }
        for u in &report.unparsed {
            ctx.finding(Finding {
                rule: "unparsed".to_string(),
                severity: "error".to_string(),
                file: shown(&u.file),
                line: Some(u.line as i64),
                column: Some(u.column as i64),
                message: u.message.clone(),
            });
        }
        for s in &report.suppressions {
            ctx.finding(Finding {
                rule: "suppression".to_string(),
                severity: "note".to_string(),
                file: shown(&s.file),
                line: Some(s.line as i64),
                column: None,
                message: suppression_text(s),
            });
        }
        let out = ctx.output_dir().to_path_buf();
        std::fs::write(
            out.join("pot10.json"),
            serde_json::to_vec_pretty(&report.to_json())?,
        )?;
        std::fs::write(
            out.join("pot10.sarif"),
            serde_json::to_vec_pretty(&report.to_sarif())?,
        )?;
        std::fs::write(out.join("pot10.txt"), report.render_text())?;
        Ok(())
    }
}

/// `allow(R3) reason [2 finding(s) suppressed: R3 line 40, R3 line 41]`,
/// as stored in the `findings` table and listed in the report.
pub fn suppression_text(s: &pot10::Suppression) -> String {
    let rules: Vec<&str> = s.rules.iter().map(|r| r.code()).collect();
    let hidden: Vec<String> = s
        .suppressed
        .iter()
        .map(|f| format!("{} line {}", f.rule, f.line))
        .collect();
    let what = if hidden.is_empty() {
        "nothing suppressed: the comment is stale".to_string()
    } else {
        format!(
            "{} finding(s) suppressed: {}",
            hidden.len(),
            hidden.join(", ")
        )
    };
    format!("allow({}) {} [{what}]", rules.join(", "), s.reason)
}
