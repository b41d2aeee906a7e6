//! Fixture tests for the Power-of-Ten analyzer: for every rule and language
//! one file that violates the rule exactly once and a near miss that must
//! not be flagged. Each test asserts the exact (rule, line) findings.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use pot10::{analyze, Config, Language, Report, RuleId, RuleStatus, ToolStatus};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
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
        Some(11),
        "ten rules and `unparsed`"
    );
    let text = report.render_text();
    assert!(text.contains("score = sum(w_r * pass_r)"), "{text}");
}

/// Issue #13: code that does not parse is its own kind of finding (not
/// R10), the rest of the file is still analyzed, and coverage says how
/// much was read.
#[test]
fn unparsed_code_is_reported_outside_r10_and_lowers_coverage() {
    for (rel, line) in [
        ("c/r10_parse_error.c", 3),
        ("python/r10_parse_error.py", 2),
        ("rust/r10_parse_error.rs", 2),
    ] {
        let mut c = config(rel, RuleId::R10);
        c.rules = Vec::new();
        let report = run(&c);
        let at: Vec<usize> = report.unparsed.iter().map(|u| u.line).collect();
        assert_eq!(at, vec![line], "{rel}\n{}", report.render_text());
        assert!(
            report.findings.iter().all(|f| f.rule != RuleId::R10),
            "{rel}"
        );
        assert!(report.coverage.line_rate() < 1.0, "{rel}");
        assert!(!report.passed, "{rel}: coverage below 95% cannot pass");
        let text = report.render_text();
        assert!(text.contains("unparsed error:"), "{text}");
        assert!(text.contains("below min_coverage 95%"), "{text}");
        let sarif = report.to_sarif();
        let results = sarif["runs"][0]["results"].as_array().expect("results");
        assert!(results.iter().any(|r| r["ruleId"] == "unparsed"), "{rel}");
    }
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
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
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

/// One snippet per sub-check not covered by the fixture pairs: (file
/// extension, source, rule, expected finding lines, message fragment).
const VARIANTS: &[(&str, &str, RuleId, &[usize], &str)] = &[
    ("c", "void f(int x)\n{\n    if (x) goto out;\nout:\n    return;\n}\n", RuleId::R1, &[3], "goto"),
    ("c", "#include <setjmp.h>\nstatic jmp_buf env;\nvoid f(void)\n{\n    longjmp(env, 1);\n}\n", RuleId::R1, &[5], "longjmp"),
    ("c", "int b(int);\nint a(int x) { return b(x); }\nint b(int x) { return a(x); }\n", RuleId::R1, &[2], "indirect recursion: a -> b -> a"),
    ("c", "void f(void)\n{\n    for (;;) {\n    }\n}\n", RuleId::R2, &[3], "without a condition"),
    ("c", "int apply(int (*op)(int), int x)\n{\n    return op(x);\n}\n", RuleId::R9, &[1], "function pointer"),
    ("c", "typedef int *intp;\n", RuleId::R9, &[1], "hides a pointer"),
    ("c", "struct s { struct s *a; int b; };\nint f(struct s *p)\n{\n    return p->a->b;\n}\n", RuleId::R9, &[4], "2 levels"),
    ("c", "#include <stdio.h>\n#define LOG(...) printf(__VA_ARGS__)\n", RuleId::R8, &[2], "variadic"),
    ("c", "#define A B\n#define B A\n", RuleId::R8, &[1], "recursive macro"),
    ("c", "#ifdef X\n#ifdef Y\nint y;\n#endif\n#endif\n", RuleId::R8, &[2], "nested 2 deep"),
    ("c", "int f(int c)\n{\n    int t = 0;\n    if (c) {\n        t = c * 2;\n        return t;\n    }\n    return 0;\n}\n", RuleId::R6, &[3], "only used inside"),
    ("c", "int f(const int *p)\n{\n    return p[0];\n}\n", RuleId::R7, &[1], "never checked"),
    ("py", "import itertools\n\n\ndef f():\n    for i in itertools.count():\n        return i\n", RuleId::R2, &[5], "infinite iterator"),
    ("py", "def f(done):\n    while not done():\n        pass\n", RuleId::R2, &[2], "non-counter"),
    ("py", "X = 0\n\n\ndef f():\n    global X\n    X = 1\n", RuleId::R6, &[5], "global X"),
    ("py", "import importlib\n\n\ndef f(n):\n    return importlib.import_module(n)\n", RuleId::R8, &[5], "import_module"),
    ("py", "class A:\n    def a(self):\n        return self.b()\n\n    def b(self):\n        return self.a()\n", RuleId::R1, &[2], "A::a -> A::b -> A::a"),
    ("py", "def f(x):\n    sorted(x)\n    return x\n", RuleId::R7, &[2], "sorted"),
    ("rs", "pub fn f(v: &mut Vec<u32>) {\n    while let Some(_) = v.pop() {}\n}\n", RuleId::R2, &[2], "while let"),
    ("rs", "pub fn f() {\n    for _ in 0.. {}\n}\n", RuleId::R2, &[2], "unbounded iterator"),
    ("rs", "pub fn f(n: usize) -> usize {\n    let mut i = 0;\n    while i < n && i != 7 {\n        i += 1;\n    }\n    i\n}\n", RuleId::R2, &[], ""),
    ("rs", "use std::sync::Mutex;\nstatic M: Mutex<u32> = Mutex::new(0);\n", RuleId::R6, &[2], "Mutex"),
    ("rs", "pub fn f(c: bool) -> u32 {\n    let mut t = 0;\n    if c {\n        t += 1;\n        return t;\n    }\n    0\n}\n", RuleId::R6, &[2], "only used inside"),
    ("rs", "/// # Safety\n/// `p` must be valid.\npub unsafe fn f(p: *const u8) -> u8 {\n    *p\n}\n", RuleId::R9, &[3], "unsafe fn"),
    ("rs", "macro_rules! count {\n    () => { 0 };\n    ($x:tt $($r:tt)*) => { 1 + count!($($r)*) };\n}\n", RuleId::R8, &[1], "invokes itself"),
    ("rs", "fn g() -> Result<(), ()> {\n    Ok(())\n}\npub fn f() {\n    _ = g();\n    g().ok();\n    g();\n}\n", RuleId::R7, &[5, 6, 7], "discards"),
    ("rs", "struct S;\nimpl S {\n    fn a(&self) {\n        self.b()\n    }\n    fn b(&self) {\n        Self::a(self)\n    }\n}\n", RuleId::R1, &[3], "S::a -> S::b -> S::a"),
];

#[test]
fn variants_give_exact_findings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut failures = Vec::new();
    for (i, (ext, src, rule, expected, fragment)) in VARIANTS.iter().enumerate() {
        let case = dir.path().join(format!("case{i}"));
        std::fs::create_dir_all(&case).expect("mkdir");
        std::fs::write(case.join(format!("snippet.{ext}")), src).expect("write");
        let mut c = Config::for_paths([&case]);
        c.rules = vec![*rule];
        c.run_external_tools = false;
        let report = run(&c);
        let got = lines(&report);
        let want: Vec<(RuleId, usize)> = expected.iter().map(|l| (*rule, *l)).collect();
        let message_ok =
            expected.is_empty() || report.findings.iter().any(|f| f.message.contains(fragment));
        if got != want || !message_ok {
            failures.push(format!(
                "variant {i} ({ext}, {rule}): want {want:?} with `{fragment}`, got\n{}",
                report.render_text()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn custom_assertion_names_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("a.rs");
    std::fs::write(
        &file,
        "pub fn f(x: u32) {\n    ensure!(x > 1);\n    ensure!(x < 9);\n}\n",
    )
    .expect("write");
    let mut c = Config::for_paths([&file]);
    c.rules = vec![RuleId::R5];
    c.run_external_tools = false;
    assert_eq!(lines(&run(&c)), vec![(RuleId::R5, 1)]);
    c.assertion_names = vec!["ensure".to_string()];
    assert!(lines(&run(&c)).is_empty());
}

/// Runs real `cargo clippy` on a throw-away package (slow: a build), so it
/// is ignored by default: `cargo test --test pot10 -- --ignored clippy`.
#[test]
#[ignore]
fn r10_runs_clippy_on_a_cargo_package() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("Cargo.toml"),
        "[package]\nname = \"pot10-clippy-probe\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )
    .expect("write");
    std::fs::create_dir_all(dir.path().join("src")).expect("mkdir");
    std::fs::write(
        dir.path().join("src/lib.rs"),
        "pub fn f(x: &Vec<u32>) -> usize {\n    x.len()\n}\n",
    )
    .expect("write");
    let mut c = Config::for_paths([dir.path().join("src")]);
    c.rules = vec![RuleId::R10];
    let report = run(&c);
    assert_eq!(
        report.tools[0].status,
        ToolStatus::Ran,
        "{}",
        report.render_text()
    );
    assert_eq!(
        lines(&report),
        vec![(RuleId::R10, 1)],
        "{}",
        report.render_text()
    );
    assert!(
        report.findings[0].message.contains("clippy"),
        "{}",
        report.findings[0].message
    );
}
