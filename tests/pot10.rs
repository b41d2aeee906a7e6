//! Fixture tests for the Power-of-Ten analyzer: for every rule and language
//! one file that violates the rule exactly once and a near miss that must
//! not be flagged. Each test asserts the exact (rule, line) findings.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use bitnet_pipeline::pot10::{analyze, Config, Language, Report, RuleId, RuleStatus, ToolStatus};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/pot10_fixtures")
        .join(rel)
}

fn config(rel: &str, rule: RuleId) -> Config {
    let mut c = Config::for_paths([fixture(rel)]);
    c.rules = vec![rule];
    c.run_external_tools = false;
    c
}

fn run(c: &Config) -> Report {
    analyze(c).unwrap_or_else(|e| panic!("analyze {:?}: {e}", c.paths))
}

fn lines(report: &Report) -> Vec<(RuleId, usize)> {
    report.findings.iter().map(|f| (f.rule, f.line)).collect()
}

/// (fixture, rule, expected finding lines)
const CASES: &[(&str, RuleId, &[usize])] = &[
    // C
    ("c/r1_violation.c", RuleId::R1, &[2]),
    ("c/r1_near_miss", RuleId::R1, &[]),
    ("c/r2_violation.c", RuleId::R2, &[5]),
    ("c/r2_near_miss.c", RuleId::R2, &[]),
    ("c/r3_violation.c", RuleId::R3, &[13]),
    ("c/r3_near_miss.c", RuleId::R3, &[]),
    ("c/r4_violation.c", RuleId::R4, &[2]),
    ("c/r4_near_miss.c", RuleId::R4, &[]),
    ("c/r5_violation.c", RuleId::R5, &[11]),
    ("c/r5_near_miss.c", RuleId::R5, &[]),
    ("c/r6_violation.c", RuleId::R6, &[4]),
    ("c/r6_near_miss.c", RuleId::R6, &[]),
    ("c/r7_violation.c", RuleId::R7, &[13]),
    ("c/r7_near_miss.c", RuleId::R7, &[]),
    ("c/r8_violation.c", RuleId::R8, &[3]),
    ("c/r8_near_miss.h", RuleId::R8, &[]),
    ("c/r9_violation.c", RuleId::R9, &[4]),
    ("c/r9_near_miss.c", RuleId::R9, &[]),
    ("c/r10_parse_error.c", RuleId::R10, &[3]),
    // Python
    ("python/r1_violation.py", RuleId::R1, &[4]),
    ("python/r1_near_miss", RuleId::R1, &[]),
    ("python/r2_violation.py", RuleId::R2, &[6]),
    ("python/r2_near_miss.py", RuleId::R2, &[]),
    ("python/r3_violation.py", RuleId::R3, &[10]),
    ("python/r3_near_miss.py", RuleId::R3, &[]),
    ("python/r4_violation.py", RuleId::R4, &[4]),
    ("python/r4_near_miss.py", RuleId::R4, &[]),
    ("python/r5_violation.py", RuleId::R5, &[10]),
    ("python/r5_near_miss.py", RuleId::R5, &[]),
    ("python/r6_violation.py", RuleId::R6, &[3]),
    ("python/r6_near_miss.py", RuleId::R6, &[]),
    ("python/r7_violation.py", RuleId::R7, &[9]),
    ("python/r7_near_miss.py", RuleId::R7, &[]),
    ("python/r8_violation.py", RuleId::R8, &[5]),
    ("python/r8_near_miss.py", RuleId::R8, &[]),
    ("python/r10_parse_error.py", RuleId::R10, &[2]),
    // Rust
    ("rust/r1_violation.rs", RuleId::R1, &[3]),
    ("rust/r1_near_miss", RuleId::R1, &[]),
    ("rust/r2_violation.rs", RuleId::R2, &[5]),
    ("rust/r2_near_miss.rs", RuleId::R2, &[]),
    ("rust/r3_violation.rs", RuleId::R3, &[13]),
    ("rust/r3_near_miss.rs", RuleId::R3, &[]),
    ("rust/r4_violation.rs", RuleId::R4, &[4]),
    ("rust/r4_near_miss.rs", RuleId::R4, &[]),
    ("rust/r5_violation.rs", RuleId::R5, &[9]),
    ("rust/r5_near_miss.rs", RuleId::R5, &[]),
    ("rust/r6_violation.rs", RuleId::R6, &[5]),
    ("rust/r6_near_miss.rs", RuleId::R6, &[]),
    ("rust/r7_violation.rs", RuleId::R7, &[6]),
    ("rust/r7_near_miss.rs", RuleId::R7, &[]),
    ("rust/r8_violation.rs", RuleId::R8, &[3]),
    ("rust/r8_near_miss.rs", RuleId::R8, &[]),
    ("rust/r9_violation.rs", RuleId::R9, &[4]),
    ("rust/r9_near_miss.rs", RuleId::R9, &[]),
    ("rust/r10_parse_error.rs", RuleId::R10, &[2]),
];

#[test]
fn fixtures_give_exact_findings() {
    let mut failures = Vec::new();
    for (rel, rule, expected) in CASES {
        let report = run(&config(rel, *rule));
        let got = lines(&report);
        let want: Vec<(RuleId, usize)> = expected.iter().map(|l| (*rule, *l)).collect();
        if got != want {
            failures.push(format!(
                "{rel} {rule}: want {want:?}, got {got:?}\n{}",
                report.render_text()
            ));
        }
        let stats = report
            .rules
            .iter()
            .find(|s| s.rule == *rule)
            .expect("stats");
        if stats.units == 0 {
            failures.push(format!("{rel} {rule}: no units counted"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A near miss is only convincing if it sits right at the limit: the
/// 60-line functions must be flagged at a limit of 59.
#[test]
fn r4_near_miss_functions_have_exactly_sixty_lines() {
    for rel in [
        "c/r4_near_miss.c",
        "python/r4_near_miss.py",
        "rust/r4_near_miss.rs",
    ] {
        let mut c = config(rel, RuleId::R4);
        assert!(lines(&run(&c)).is_empty(), "{rel} at 60");
        c.max_function_lines = 59;
        let report = run(&c);
        assert_eq!(report.findings.len(), 1, "{rel} at 59");
        assert!(
            report.findings[0].message.contains("60 statement lines"),
            "{}",
            report.findings[0].message
        );
    }
}

#[test]
fn r9_is_not_applicable_to_python() {
    let report = run(&config("python/r9_not_applicable.py", RuleId::R9));
    let r9 = report
        .rules
        .iter()
        .find(|s| s.rule == RuleId::R9)
        .expect("R9");
    assert_eq!(r9.status, RuleStatus::NotApplicable);
    assert_eq!(r9.pass_rate, None);
    assert!(report.findings.is_empty());
}

#[test]
fn suppressions_need_a_reason_and_are_listed() {
    let report = run(&config("rust/suppressions.rs", RuleId::R9));
    assert_eq!(lines(&report), vec![(RuleId::R9, 9)]);
    assert_eq!(report.suppressions.len(), 1);
    let s = &report.suppressions[0];
    assert_eq!((s.line, s.rules.as_slice()), (4, &[RuleId::R9][..]));
    assert!(s.reason.starts_with("FFI boundary"), "{}", s.reason);
    assert_eq!(s.suppressed.len(), 1);
    assert_eq!(s.suppressed[0].line, 5);
    assert_eq!(report.invalid_suppressions.len(), 1);
    assert_eq!(report.invalid_suppressions[0].line, 9);
    assert!(report.render_text().contains("allow(R9) FFI boundary"));

    let report = run(&config("python/suppressions.py", RuleId::R8));
    assert_eq!(lines(&report), vec![(RuleId::R8, 10)]);
    assert_eq!(report.suppressions[0].suppressed[0].line, 5);
    assert_eq!(report.invalid_suppressions[0].line, 9);
}

#[test]
fn test_code_is_skipped_unless_asked() {
    let mut c = config("rust/test_code.rs", RuleId::R2);
    assert!(lines(&run(&c)).is_empty());
    c.skip_tests = false;
    assert_eq!(lines(&run(&c)), vec![(RuleId::R2, 9), (RuleId::R2, 15)]);
}

fn tool_works(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn r10_runs_the_c_compiler_or_reports_it_unavailable() {
    let mut c = config("c/r10_violation.c", RuleId::R10);
    c.run_external_tools = true;
    let report = run(&c);
    if tool_works("cc") {
        assert_eq!(
            lines(&report),
            vec![(RuleId::R10, 4)],
            "{}",
            report.render_text()
        );
        assert!(report.findings[0].message.contains("unused variable"));
        let mut near = config("c/r10_near_miss.c", RuleId::R10);
        near.run_external_tools = true;
        let near = run(&near);
        assert!(near.findings.is_empty(), "{}", near.render_text());
        assert_eq!(near.rules[9].pass_rate, Some(1.0));
    } else {
        assert_eq!(report.tools[0].status, ToolStatus::Unavailable);
    }
}

#[test]
fn r10_runs_python_or_reports_it_unavailable() {
    let mut c = config("python/r10_violation.py", RuleId::R10);
    c.run_external_tools = true;
    let report = run(&c);
    if tool_works("python3") {
        assert_eq!(
            lines(&report),
            vec![(RuleId::R10, 2)],
            "{}",
            report.render_text()
        );
        assert!(
            report.findings[0].message.contains("escape"),
            "{}",
            report.findings[0].message
        );
        let mut near = config("python/r10_near_miss.py", RuleId::R10);
        near.run_external_tools = true;
        assert!(run(&near).findings.is_empty());
    } else {
        assert_eq!(report.tools[0].status, ToolStatus::Unavailable);
    }
}

#[test]
fn r10_missing_tool_is_not_a_pass() {
    let mut c = config("c/r10_near_miss.c", RuleId::R10);
    c.run_external_tools = true;
    c.c_compiler = "pot10-no-such-compiler".to_string();
    let report = run(&c);
    assert_eq!(report.tools[0].status, ToolStatus::Unavailable);
    let r10 = &report.rules[9];
    assert_eq!(
        (r10.status, r10.units, r10.pass_rate),
        (RuleStatus::ToolUnavailable, 0, None)
    );
    assert!(report.render_text().contains("TOOL UNAVAILABLE"));

    let mut rust = config("rust/r10_near_miss.rs", RuleId::R10);
    rust.run_external_tools = true;
    rust.run_clippy = false;
    let report = run(&rust);
    assert_eq!(report.tools[0].status, ToolStatus::Skipped);
    assert_eq!(report.rules[9].status, RuleStatus::ToolUnavailable);
}

#[test]
fn json_and_sarif_carry_findings_and_score() {
    let mut c = config("rust/r9_violation.rs", RuleId::R9);
    c.rules = Vec::new();
    let report = run(&c);
    let json = serde_json::to_value(&report).expect("json");
    assert!(json["findings"].as_array().is_some_and(|f| !f.is_empty()));
    assert_eq!(json["threshold"], 0.92);
    let sarif = report.to_sarif();
    assert_eq!(sarif["version"], "2.1.0");
    let results = sarif["runs"][0]["results"].as_array().expect("results");
    let r9: Vec<_> = results.iter().filter(|r| r["ruleId"] == "R9").collect();
    assert_eq!(r9.len(), 1);
    assert_eq!(
        r9[0]["locations"][0]["physicalLocation"]["region"]["startLine"],
        4
    );
    assert_eq!(
        sarif["runs"][0]["tool"]["driver"]["rules"]
            .as_array()
            .map(Vec::len),
        Some(10)
    );
    let text = report.render_text();
    assert!(text.contains("score = sum(w_r * pass_r)"), "{text}");
}

#[test]
fn score_follows_the_documented_formula() {
    // r1_violation.rs with all rules: recompute the score from the stats.
    let mut c = config("rust/r1_violation.rs", RuleId::R1);
    c.rules = Vec::new();
    let report = run(&c);
    let (mut num, mut den) = (0.0, 0.0);
    for s in &report.rules {
        if let Some(p) = s.pass_rate {
            assert_eq!(p, (s.units - s.failing_units) as f64 / s.units as f64);
            num += s.weight * p;
            den += s.weight;
        }
    }
    assert!((report.score - num / den).abs() < 1e-12);
    let r1 = &report.rules[0];
    assert_eq!((r1.units, r1.failing_units, r1.weight), (1, 1, 2.0));
    assert_eq!(report.passed, report.score >= 0.92);
}

#[test]
fn missing_path_is_an_error_not_a_panic() {
    let c = Config::for_paths(["/nonexistent/pot10"]);
    let err = analyze(&c).expect_err("missing path");
    assert!(err.to_string().contains("does not exist"), "{err}");
    let mut c = Config::for_paths([fixture("rust")]);
    c.languages = vec![Language::C];
    c.skip_tests = false;
    let err = analyze(&c).expect_err("no C files under rust/");
    assert!(
        err.to_string()
            .contains("no C, Python or Rust source files"),
        "{err}"
    );
}

/// Throughput: `cargo test --release --test pot10 -- --ignored --nocapture throughput`.
/// Builds a few thousand lines per language from the fixtures, analyzes
/// them without external tools and prints lines/second; then does the same
/// for this repository's own sources.
#[test]
#[ignore]
fn throughput() {
    let dir = tempfile::tempdir().expect("tempdir");
    for lang in ["c", "python", "rust"] {
        let src_dir = fixture(lang);
        let mut sources = Vec::new();
        for e in std::fs::read_dir(&src_dir).expect("fixtures") {
            let p = e.expect("entry").path();
            if p.is_file() && !p.to_string_lossy().contains("parse_error") {
                sources.push((p.clone(), std::fs::read_to_string(&p).expect("read")));
            }
        }
        let out = dir.path().join(lang);
        std::fs::create_dir_all(&out).expect("mkdir");
        let mut total = 0;
        let mut copy = 0;
        while total < 5000 {
            for (p, text) in &sources {
                let name = format!("{copy}_{}", p.file_name().expect("name").to_string_lossy());
                std::fs::write(out.join(name), text).expect("write");
                total += text.lines().count();
            }
            copy += 1;
        }
        let mut c = Config::for_paths([&out]);
        c.run_external_tools = false;
        let start = Instant::now();
        let report = analyze(&c).expect("analyze");
        let secs = start.elapsed().as_secs_f64();
        let n = report.total_lines();
        println!(
            "{lang}: {n} lines in {:.3} s = {:.0} lines/s ({} findings)",
            secs,
            n as f64 / secs,
            report.findings.len()
        );
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut c = Config::for_paths([&root]);
    c.run_external_tools = false;
    let start = Instant::now();
    let report = analyze(&c).expect("analyze repo");
    let secs = start.elapsed().as_secs_f64();
    let n = report.total_lines();
    println!(
        "repository: {n} lines in {:.3} s = {:.0} lines/s",
        secs,
        n as f64 / secs
    );
    println!(
        "{}",
        report
            .render_text()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
