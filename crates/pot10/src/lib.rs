//! A static analyzer for Gerard Holzmann's "The Power of Ten: Rules for
//! Developing Safety-Critical Code" (IEEE Computer 39(6), 2006) over C,
//! Python and Rust. Phase 4 calls a model production ready only when the
//! code around it complies, so compliance has to be measured, not claimed:
//! this module parses sources with tree-sitter, checks each rule (one
//! module per rule under `rules/`, each documenting exactly what it checks
//! and where it only approximates the paper), and produces a [`Report`]
//! with findings, suppressions, per-rule pass rates and a weighted score
//! (formula in [`score`]).
//!
//! Entry point: [`analyze`]. Suppress a finding with a comment on the same
//! line or the line above: `// pot10: allow(R4) generated lookup table`
//! (`#` in Python). The reason is mandatory; comments without one are
//! ignored and listed under `invalid_suppressions`. `// pot10: init` above
//! a function marks it as initialization code for R3.

pub mod config;
pub mod error;
pub mod lang;
pub mod preprocess;
pub mod report;
pub mod rules;
pub mod score;
pub mod source;

use std::collections::{BTreeMap, BTreeSet};

pub use config::{Config, Language, RuleId};
pub use error::Pot10Error;
pub use report::{
    Coverage, FileCoverage, Finding, InvalidSuppression, LanguageSummary, MacroRewrite, Report,
    RuleStats, RuleStatus, Severity, Suppression, ToolRun, ToolStatus, Unparsed,
};

use rules::{Ctx, Unit};
use source::SourceFile;

/// Analyzes `config.paths` and scores them against the selected rules.
///
/// Errors only for unusable input (no paths, missing paths, no source
/// files, unreadable files, invalid settings); problems in the analyzed
/// code are findings.
pub fn analyze(config: &Config) -> Result<Report, Pot10Error> {
    validate(config)?;
    let discovered = source::discover(config)?;
    if discovered.is_empty() {
        let paths: Vec<String> = config
            .paths
            .iter()
            .map(|p| format!("`{}`", p.display()))
            .collect();
        let languages: Vec<&str> = Language::ALL
            .iter()
            .filter(|l| config.language_enabled(**l))
            .map(|l| l.name())
            .collect();
        return Err(Pot10Error::NoSourceFiles {
            paths: paths.join(", "),
            languages: languages.join(", "),
        });
    }
    let mut files = load_all(config, discovered)?;
    if config.skip_tests {
        let tests = source::out_of_line_test_modules(&files);
        let explicit = |p: &std::path::Path| config.paths.iter().any(|x| x == p);
        files.retain(|f| !tests.contains(&f.path) || explicit(&f.path));
    }
    if files.is_empty() {
        let paths: Vec<String> = config
            .paths
            .iter()
            .map(|p| format!("`{}`", p.display()))
            .collect();
        return Err(Pot10Error::OnlyTestCode {
            paths: paths.join(", "),
        });
    }
    Ok(evaluate(config, &files))
}

/// Reads and parses files on all cores: parsing is most of the run time
/// (tree-sitter does about 3 MB/s per core here) and files are independent.
fn load_all(
    config: &Config,
    discovered: Vec<(std::path::PathBuf, String, Language)>,
) -> Result<Vec<SourceFile>, Pot10Error> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(discovered.len().max(1));
    let chunk = discovered.len().div_ceil(threads).max(1);
    let results: Vec<Result<Vec<SourceFile>, Pot10Error>> = std::thread::scope(|scope| {
        let handles: Vec<_> = discovered
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(|d| load(config, d)).collect()))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(Pot10Error::InvalidConfig(
                        "a parser thread panicked; this is a bug in bitnet-pipeline, please report it".to_string(),
                    ))
                })
            })
            .collect()
    });
    let mut files = Vec::with_capacity(discovered.len());
    for part in results {
        files.extend(part?);
    }
    Ok(files)
}

fn load(
    config: &Config,
    (path, display, lang): &(std::path::PathBuf, String, Language),
) -> Result<SourceFile, Pot10Error> {
    let bytes = std::fs::read(path).map_err(|source| Pot10Error::Io {
        path: path.clone(),
        source,
    })?;
    // Invalid UTF-8 is replaced, not fatal: tree-sitter then reports
    // whatever does not parse.
    let text = String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    SourceFile::parse(path.clone(), display.clone(), *lang, text, config)
}

fn validate(config: &Config) -> Result<(), Pot10Error> {
    let mut problems = Vec::new();
    if !(0.0..=1.0).contains(&config.threshold) {
        problems.push(format!(
            "`threshold` must be between 0 and 1, got {}",
            config.threshold
        ));
    }
    if !(0.0..=1.0).contains(&config.min_coverage) {
        problems.push(format!(
            "`min_coverage` must be between 0 and 1, got {}",
            config.min_coverage
        ));
    }
    for name in config.macros.keys() {
        if crate::preprocess::MacroDef::parse(name, "").is_none() {
            problems.push(format!(
                "`macros` key `{name}` is not a macro name: write `NAME` or `NAME(a, b)`"
            ));
        }
    }
    if config.max_function_lines == 0 {
        problems.push("`max_function_lines` must be at least 1".to_string());
    }
    for (rule, w) in &config.weights {
        if !(w.is_finite() && *w >= 0.0) {
            problems.push(format!(
                "weight of {rule} must be a finite number >= 0, got {w}"
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Pot10Error::InvalidConfig(problems.join("; ")))
    }
}

/// Runs the rules over parsed files and assembles the report.
fn evaluate(config: &Config, files: &[SourceFile]) -> Report {
    let ctx = Ctx { files, config };
    let mut findings = Vec::new();
    let mut suppressions: Vec<(usize, usize, Suppression)> = Vec::new();
    for (fi, f) in files.iter().enumerate() {
        for a in &f.allows {
            suppressions.push((
                fi,
                suppressions.len(),
                Suppression {
                    file: f.display.clone(),
                    line: a.row + 1,
                    rules: a.rules.clone(),
                    reason: a.reason.clone(),
                    suppressed: Vec::new(),
                },
            ));
        }
    }
    let mut stats = Vec::new();
    let mut tools = Vec::new();
    let mut rates = Vec::new();
    for rule in RuleId::ALL {
        let weight = score::weight(rule, &config.weights);
        if !config.rule_enabled(rule) {
            stats.push(RuleStats {
                rule,
                title: rule.title().to_string(),
                status: RuleStatus::NotSelected,
                unit: String::new(),
                units: 0,
                failing_units: 0,
                pass_rate: None,
                weight,
                findings: 0,
                suppressed: 0,
                notes: Vec::new(),
            });
            continue;
        }
        let outcome = rules::check(rule, &ctx);
        let mut failing: BTreeSet<(usize, Unit)> = BTreeSet::new();
        let (mut n_findings, mut n_suppressed) = (0, 0);
        for raw in outcome.findings {
            let file = &files[raw.file];
            if raw.byte != usize::MAX && (file.in_skipped(raw.byte) || file.in_unparsed(raw.byte)) {
                continue;
            }
            // Macro rewrites leave runs of blanks inside quoted code.
            let mut message = raw.message;
            while message.contains("  ") {
                message = message.replace("  ", " ");
            }
            let finding = Finding {
                file: file.display.clone(),
                line: raw.row + 1,
                column: raw.col + 1,
                rule,
                severity: raw.severity,
                message,
            };
            let allow = file
                .allows
                .iter()
                .position(|a| a.rules.contains(&rule) && a.target_rows.contains(&raw.row));
            if let Some(local) = allow {
                let slot = suppressions
                    .iter_mut()
                    .filter(|(f, _, _)| *f == raw.file)
                    .nth(local);
                if let Some((_, _, s)) = slot {
                    s.suppressed.push(finding);
                    n_suppressed += 1;
                    continue;
                }
            }
            if raw.severity >= Severity::Warning {
                failing.insert((raw.file, raw.unit));
            }
            n_findings += 1;
            findings.push(finding);
        }
        // A finding always lies in a counted unit; `max` only guards the
        // rate against a rule that undercounts.
        let failing_units = failing.len();
        let units = outcome.units.max(failing_units);
        let (status, pass_rate) = if units > 0 {
            let p = (units - failing_units) as f64 / units as f64;
            rates.push((weight, p));
            (RuleStatus::Evaluated, Some(p))
        } else if outcome.not_applicable {
            (RuleStatus::NotApplicable, None)
        } else if outcome.tool_unavailable {
            (RuleStatus::ToolUnavailable, None)
        } else {
            (RuleStatus::NoUnits, None)
        };
        stats.push(RuleStats {
            rule,
            title: rule.title().to_string(),
            status,
            unit: outcome.unit.to_string(),
            units,
            failing_units,
            pass_rate,
            weight,
            findings: n_findings,
            suppressed: n_suppressed,
            notes: outcome.notes,
        });
        tools.extend(outcome.tools);
    }
    findings.sort();
    let invalid_suppressions = files
        .iter()
        .flat_map(|f| {
            f.bad_directives.iter().map(move |b| InvalidSuppression {
                file: f.display.clone(),
                line: b.row + 1,
                column: b.col + 1,
                text: b.text.clone(),
                problem: b.problem.clone(),
            })
        })
        .collect();
    let mut summary: BTreeMap<Language, LanguageSummary> = BTreeMap::new();
    for f in files {
        let s = summary.entry(f.language).or_insert(LanguageSummary {
            language: f.language,
            files: 0,
            lines: 0,
            functions: 0,
        });
        s.files += 1;
        s.lines += f.line_count;
        s.functions += f.functions.len();
    }
    let score = score::weighted_score(&rates);
    let mut score_formula = score::FORMULA.to_string();
    if rates.is_empty() {
        score_formula.push_str(" (no rule had units: score is vacuously 1.0)");
    }
    let (coverage, unparsed, rewrites) = coverage_of(files);
    let covered = coverage.line_rate() >= config.min_coverage
        && coverage.function_rate() >= config.min_coverage;
    Report {
        coverage,
        min_coverage: config.min_coverage,
        unparsed,
        rewrites,
        files: summary.into_values().collect(),
        findings,
        suppressions: suppressions.into_iter().map(|(_, _, s)| s).collect(),
        invalid_suppressions,
        rules: stats,
        tools,
        score,
        score_formula,
        threshold: config.threshold,
        passed: score >= config.threshold && covered,
    }
}

/// Lines and functions analyzed per file and overall, the regions that
/// did not parse (one entry each) and the macro rewrites made.
fn coverage_of(files: &[SourceFile]) -> (Coverage, Vec<Unparsed>, Vec<MacroRewrite>) {
    let mut coverage = Coverage::default();
    let mut unparsed = Vec::new();
    let mut rewrites = Vec::new();
    for f in files {
        let fc = FileCoverage {
            file: f.display.clone(),
            lines: f.line_count,
            lines_analyzed: f.line_count - f.unparsed_lines(),
            functions: f.functions.len() + f.lost_functions,
            functions_analyzed: f.functions.len(),
        };
        coverage.lines += fc.lines;
        coverage.lines_analyzed += fc.lines_analyzed;
        coverage.functions += fc.functions;
        coverage.functions_analyzed += fc.functions_analyzed;
        coverage.files.push(fc);
        for r in &f.unparsed {
            let snippet = f.text.get(r.byte_range.clone()).unwrap_or("");
            let snippet: String = snippet.split_whitespace().collect::<Vec<_>>().join(" ");
            let snippet: String = snippet.chars().take(60).collect();
            let what = match &r.missing {
                Some(token) => format!("missing `{token}` (the parser had to assume it)"),
                None => format!("`{snippet}` does not parse"),
            };
            let lines = if r.start_row == r.end_row {
                format!("line {}", r.start_row + 1)
            } else {
                format!("lines {}-{}", r.start_row + 1, r.end_row + 1)
            };
            unparsed.push(Unparsed {
                file: f.display.clone(),
                line: r.start_row + 1,
                column: r.start_col + 1,
                end_line: r.end_row + 1,
                message: format!(
                    "{what}; {lines} not analyzed (not scored). If a macro causes it, define it under `macros:` in the pot10 config"
                ),
            });
        }
        for rw in &f.rewrites {
            rewrites.push(MacroRewrite {
                file: f.display.clone(),
                name: rw.name.clone(),
                kind: rw.kind,
                count: rw.count,
                not_applied: rw.not_applied,
            });
        }
    }
    (coverage, unparsed, rewrites)
}
