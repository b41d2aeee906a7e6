//! The result of an analysis and its three renderings: JSON (serde), SARIF
//! 2.1.0 (for code-scanning UIs) and plain text (for terminals and logs).
//! The report carries everything a pipeline stage records: score, per-rule
//! pass rates, findings and suppressions.

use std::fmt;

use serde::Serialize;
use serde_json::{json, Value};

use super::config::{Language, RuleId};
use super::preprocess::RewriteKind;
use super::score;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Does not fail its unit (informational).
    Note,
    /// A heuristic finding: likely a violation, fails its unit.
    Warning,
    /// A definite violation of the rule as implemented.
    Error,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Note => "note",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in bytes.
    pub column: usize,
    pub rule: RuleId,
    pub severity: Severity,
    pub message: String,
}

/// A valid `pot10: allow(..) reason` comment and what it suppressed.
#[derive(Debug, Clone, Serialize)]
pub struct Suppression {
    pub file: String,
    pub line: usize,
    pub rules: Vec<RuleId>,
    pub reason: String,
    /// Findings it hid; empty means the comment is stale.
    pub suppressed: Vec<Finding>,
}

/// A `pot10:` comment that was ignored (no reason, unknown rule, ...).
#[derive(Debug, Clone, Serialize)]
pub struct InvalidSuppression {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub text: String,
    pub problem: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleStatus {
    /// At least one unit was checked.
    Evaluated,
    /// Nothing to check in the analyzed files for this rule.
    NoUnits,
    /// Rule does not apply to any analyzed language (R9 on Python only).
    NotApplicable,
    /// The external tools it needs were unavailable or disabled (R10).
    ToolUnavailable,
    /// Not selected in `Config::rules`.
    NotSelected,
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleStats {
    pub rule: RuleId,
    pub title: String,
    pub status: RuleStatus,
    /// What one unit is: "function", "loop", "scope", "file".
    pub unit: String,
    pub units: usize,
    pub failing_units: usize,
    /// `None` when not evaluated.
    pub pass_rate: Option<f64>,
    pub weight: f64,
    pub findings: usize,
    pub suppressed: usize,
    /// Approximations, per-language applicability, tool status.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolStatus {
    Ran,
    Unavailable,
    Skipped,
    Failed,
}

/// One external tool invocation for R10.
#[derive(Debug, Clone, Serialize)]
pub struct ToolRun {
    pub language: Language,
    pub tool: String,
    pub status: ToolStatus,
    pub files: usize,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LanguageSummary {
    pub language: Language,
    pub files: usize,
    pub lines: usize,
    pub functions: usize,
}

/// How much of one file the rules read.
#[derive(Debug, Clone, Serialize)]
pub struct FileCoverage {
    pub file: String,
    pub lines: usize,
    /// Lines not touched by a region that did not parse.
    pub lines_analyzed: usize,
    /// Functions found, plus those estimated lost in unparsed regions.
    pub functions: usize,
    pub functions_analyzed: usize,
}

/// Lines and functions analyzed out of the total, overall and per file.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Coverage {
    pub lines: usize,
    pub lines_analyzed: usize,
    pub functions: usize,
    pub functions_analyzed: usize,
    pub files: Vec<FileCoverage>,
}

fn rate(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        1.0
    } else {
        part as f64 / whole as f64
    }
}

impl Coverage {
    /// Share of lines analyzed (1.0 when there are none).
    pub fn line_rate(&self) -> f64 {
        rate(self.lines_analyzed, self.lines)
    }

    /// Share of functions analyzed (1.0 when there are none).
    pub fn function_rate(&self) -> f64 {
        rate(self.functions_analyzed, self.functions)
    }
}

impl FileCoverage {
    pub fn complete(&self) -> bool {
        self.lines_analyzed == self.lines && self.functions_analyzed == self.functions
    }
}

/// A region that did not parse: its own kind of finding, not a rule's.
#[derive(Debug, Clone, Serialize)]
pub struct Unparsed {
    pub file: String,
    /// 1-based.
    pub line: usize,
    pub column: usize,
    pub end_line: usize,
    pub message: String,
}

/// A macro the analyzer rewrote before parsing (see `preprocess`).
#[derive(Debug, Clone, Serialize)]
pub struct MacroRewrite {
    pub file: String,
    pub name: String,
    pub kind: RewriteKind,
    pub count: usize,
    pub not_applied: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub files: Vec<LanguageSummary>,
    /// What the score is over: code that did not parse is not scored.
    pub coverage: Coverage,
    pub min_coverage: f64,
    /// Regions that did not parse, one entry each.
    pub unparsed: Vec<Unparsed>,
    pub rewrites: Vec<MacroRewrite>,
    pub findings: Vec<Finding>,
    pub suppressions: Vec<Suppression>,
    pub invalid_suppressions: Vec<InvalidSuppression>,
    pub rules: Vec<RuleStats>,
    pub tools: Vec<ToolRun>,
    pub score: f64,
    pub score_formula: String,
    pub threshold: f64,
    pub passed: bool,
}

impl Report {
    pub fn total_lines(&self) -> usize {
        self.files.iter().map(|f| f.lines).sum()
    }

    /// Whether the analyzed share of lines and functions reaches
    /// `min_coverage`.
    pub fn coverage_passed(&self) -> bool {
        self.coverage.line_rate() >= self.min_coverage
            && self.coverage.function_rate() >= self.min_coverage
    }

    /// The lower of line and function coverage.
    pub fn coverage_rate(&self) -> f64 {
        self.coverage.line_rate().min(self.coverage.function_rate())
    }

    /// Number of findings suppressed by `pot10: allow` comments.
    pub fn suppressed_findings(&self) -> usize {
        self.suppressions.iter().map(|s| s.suppressed.len()).sum()
    }

    /// Metrics for a pipeline stage: `pot10_score`, coverage,
    /// suppression counts and `pot10_pass_rate_R<n>` for every evaluated
    /// rule.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let mut m = vec![
            ("pot10_score".to_string(), self.score),
            ("pot10_coverage".to_string(), self.coverage_rate()),
            (
                "pot10_coverage_lines".to_string(),
                self.coverage.line_rate(),
            ),
            (
                "pot10_coverage_functions".to_string(),
                self.coverage.function_rate(),
            ),
            (
                "pot10_unparsed_regions".to_string(),
                self.unparsed.len() as f64,
            ),
            (
                "pot10_suppressions".to_string(),
                self.suppressions.len() as f64,
            ),
            (
                "pot10_suppressed_findings".to_string(),
                self.suppressed_findings() as f64,
            ),
        ];
        for r in &self.rules {
            if let Some(p) = r.pass_rate {
                m.push((format!("pot10_pass_rate_{}", r.rule), p));
            }
        }
        m
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|e| json!({ "error": e.to_string() }))
    }

    /// SARIF 2.1.0 log with one run. Suppressed findings are included as
    /// results carrying an `inSource` suppression with the comment's reason,
    /// as SARIF viewers expect.
    pub fn to_sarif(&self) -> Value {
        let rules: Vec<Value> = RuleId::ALL
            .iter()
            .map(|r| {
                json!({
                    "id": r.code(),
                    "name": r.title(),
                    "shortDescription": { "text": r.title() },
                    "fullDescription": { "text": r.holzmann() },
                    "defaultConfiguration": { "level": "error" },
                    "properties": { "weight": self.rules.iter().find(|s| s.rule == *r).map_or(score::default_weight(*r), |s| s.weight) }
                })
            })
            .collect();
        let result = |f: &Finding, suppression: Option<&str>| {
            let mut v = json!({
                "ruleId": f.rule.code(),
                "ruleIndex": f.rule.number() - 1,
                "level": f.severity.name(),
                "message": { "text": f.message },
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": { "uri": f.file.replace('\\', "/") },
                        "region": { "startLine": f.line, "startColumn": f.column }
                    }
                }]
            });
            if let Some(reason) = suppression {
                v["suppressions"] = json!([{ "kind": "inSource", "justification": reason }]);
            }
            v
        };
        let mut rules = rules;
        rules.push(json!({
            "id": "unparsed",
            "name": "code that did not parse",
            "shortDescription": { "text": "code that did not parse (not analyzed, not scored)" },
            "defaultConfiguration": { "level": "error" }
        }));
        let mut results: Vec<Value> = self.findings.iter().map(|f| result(f, None)).collect();
        for u in &self.unparsed {
            results.push(json!({
                "ruleId": "unparsed",
                "ruleIndex": RuleId::ALL.len(),
                "level": "error",
                "message": { "text": u.message },
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": { "uri": u.file.replace('\\', "/") },
                        "region": { "startLine": u.line, "startColumn": u.column, "endLine": u.end_line }
                    }
                }]
            }));
        }
        for s in &self.suppressions {
            for f in &s.suppressed {
                results.push(result(f, Some(&s.reason)));
            }
        }
        json!({
            "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
            "version": "2.1.0",
            "runs": [{
                "tool": { "driver": {
                    "name": "bitnet-pipeline pot10",
                    "version": env!("CARGO_PKG_VERSION"),
                    "informationUri": "https://spinroot.com/gerard/pdf/P10.pdf",
                    "rules": rules
                }},
                "results": results,
                "properties": {
                    "score": self.score,
                    "scoreFormula": self.score_formula,
                    "threshold": self.threshold,
                    "passed": self.passed,
                    "coverage": {
                        "lines": self.coverage.lines,
                        "linesAnalyzed": self.coverage.lines_analyzed,
                        "functions": self.coverage.functions,
                        "functionsAnalyzed": self.coverage.functions_analyzed,
                        "minCoverage": self.min_coverage,
                        "files": self.coverage.files.iter().map(|f| json!({
                            "uri": f.file.replace('\\', "/"),
                            "lines": f.lines, "linesAnalyzed": f.lines_analyzed,
                            "functions": f.functions, "functionsAnalyzed": f.functions_analyzed,
                        })).collect::<Vec<_>>()
                    },
                    "passRates": self.rules.iter().map(|r| (r.rule.code().to_string(), json!(r.pass_rate))).collect::<serde_json::Map<_, _>>()
                }
            }]
        })
    }

    /// Human-readable rendering (the `Display` output).
    pub fn render_text(&self) -> String {
        self.to_string()
    }
}

/// Findings (compiler style), per-rule table, notes, tool status,
/// suppressions, the score formula and the verdict.
impl fmt::Display for Report {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        for f in &self.findings {
            writeln!(
                out,
                "{}:{}:{}: {} {}: {}",
                f.file,
                f.line,
                f.column,
                f.rule,
                f.severity.name(),
                f.message
            )?;
        }
        for u in &self.unparsed {
            writeln!(
                out,
                "{}:{}:{}: unparsed error: {}",
                u.file, u.line, u.column, u.message
            )?;
        }
        if !self.findings.is_empty() || !self.unparsed.is_empty() {
            writeln!(out)?;
        }
        let files: Vec<String> = self
            .files
            .iter()
            .map(|l| {
                format!(
                    "{} {} files / {} lines / {} functions",
                    l.language, l.files, l.lines, l.functions
                )
            })
            .collect();
        writeln!(out, "analyzed: {}", files.join(", "))?;
        let c = &self.coverage;
        writeln!(
            out,
            "coverage: {}/{} lines ({:.1}%), {}/{} functions ({:.1}%) analyzed; min_coverage {:.0}%",
            c.lines_analyzed,
            c.lines,
            c.line_rate() * 100.0,
            c.functions_analyzed,
            c.functions,
            c.function_rate() * 100.0,
            self.min_coverage * 100.0
        )?;
        for f in c.files.iter().filter(|f| !f.complete()) {
            writeln!(
                out,
                "  {}: {}/{} lines, {}/{} functions analyzed",
                f.file, f.lines_analyzed, f.lines, f.functions_analyzed, f.functions
            )?;
        }
        for r in &self.rewrites {
            let what = match r.kind {
                RewriteKind::Configured => "expanded as configured",
                RewriteKind::CppGuard => "blanked (C never compiles it)",
                RewriteKind::InferredAttributeMacro => {
                    "removed as an attribute-like macro (add it to `macros:` to say otherwise)"
                }
            };
            let skipped = if r.not_applied > 0 {
                format!(
                    ", {} occurrence(s) not expanded: the expansion is longer than the invocation",
                    r.not_applied
                )
            } else {
                String::new()
            };
            writeln!(
                out,
                "  {}: `{}` {what} x{}{skipped}",
                r.file, r.name, r.count
            )?;
        }
        writeln!(
            out,
            "{:<4} {:<43} {:>6} {:>8} {:>8} {:>6}  unit",
            "rule", "title", "units", "failing", "pass", "weight"
        )?;
        for r in &self.rules {
            let pass = match (r.pass_rate, r.status) {
                (Some(p), _) => format!("{:.1}%", p * 100.0),
                (None, RuleStatus::NotApplicable) => "n/a".to_string(),
                (None, RuleStatus::ToolUnavailable) => "no tool".to_string(),
                (None, RuleStatus::NotSelected) => "off".to_string(),
                (None, _) => "-".to_string(),
            };
            writeln!(
                out,
                "{:<4} {:<43} {:>6} {:>8} {:>8} {:>6}  {}",
                r.rule.code(),
                r.title,
                r.units,
                r.failing_units,
                pass,
                r.weight,
                r.unit
            )?;
        }
        for r in &self.rules {
            for n in &r.notes {
                writeln!(out, "  {}: {}", r.rule, n)?;
            }
        }
        for t in &self.tools {
            let status = match t.status {
                ToolStatus::Ran => "ran",
                ToolStatus::Unavailable => "TOOL UNAVAILABLE",
                ToolStatus::Skipped => "skipped",
                ToolStatus::Failed => "FAILED",
            };
            writeln!(
                out,
                "tool {} ({}): {} on {} files{}",
                t.tool,
                t.language,
                status,
                t.files,
                if t.detail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", t.detail)
                }
            )?;
        }
        if !self.suppressions.is_empty() {
            writeln!(
                out,
                "suppressions ({} comment(s), {} finding(s) suppressed):",
                self.suppressions.len(),
                self.suppressed_findings()
            )?;
            for s in &self.suppressions {
                let rules: Vec<&str> = s.rules.iter().map(|r| r.code()).collect();
                writeln!(
                    out,
                    "  {}:{}: allow({}) {} [{} finding(s) suppressed]",
                    s.file,
                    s.line,
                    rules.join(", "),
                    s.reason,
                    s.suppressed.len()
                )?;
            }
        }
        if !self.invalid_suppressions.is_empty() {
            writeln!(
                out,
                "ignored pot10 comments ({}):",
                self.invalid_suppressions.len()
            )?;
            for s in &self.invalid_suppressions {
                writeln!(
                    out,
                    "  {}:{}:{}: {}: {}",
                    s.file, s.line, s.column, s.text, s.problem
                )?;
            }
        }
        writeln!(out, "{}", self.score_formula)?;
        let coverage_note = if self.coverage_passed() {
            String::new()
        } else {
            format!(
                "; FAILED: coverage {:.1}% is below min_coverage {:.0}%, the score covers only what parsed",
                self.coverage_rate() * 100.0,
                self.min_coverage * 100.0
            )
        };
        writeln!(
            out,
            "pot10 score {:.3} (threshold {:.3}) over {:.1}% of lines: {}{coverage_note}",
            self.score,
            self.threshold,
            self.coverage.line_rate() * 100.0,
            if self.passed { "PASS" } else { "FAIL" }
        )?;
        Ok(())
    }
}
