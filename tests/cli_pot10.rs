//! The Power-of-Ten analyzer through the CLI and as the `pot10_check`
//! pipeline stage (issue #6).
mod common;
use common::*;

const GOTO_C: &str = "int f(int x) {\n    if (x > 0) {\n        goto done;\n    }\n    x = 1;\ndone:\n    return x;\n}\n";

#[test]
fn pot10_check_stage_records_score_and_findings() {
    let ws = Workspace::new();
    ws.write("src/a.c", GOTO_C);
    ws.write(
        "p.yaml",
        "version: 1\nname: pot\nstages:\n  check:\n    uses: pot10_check\n    with:\n      paths: [src]\n      rules: [R1]\n      run_external_tools: false\n",
    );
    let o = ws.run(&["run", "p.yaml", "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let conn = ws.sqlite();
    let (rule, file, line): (String, String, i64) = conn
        .query_row(
            "SELECT rule, file, line FROM findings WHERE run_id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((rule.as_str(), file.as_str(), line), ("R1", "src/a.c", 3));
    let score: f64 = conn
        .query_row(
            "SELECT value FROM metrics WHERE key = 'pot10_score'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!((0.0..1.0).contains(&score), "{score}");
    for f in ["pot10.json", "pot10.sarif", "pot10.txt"] {
        assert!(ws.path().join("runs/1/check").join(f).exists(), "{f}");
    }
    // Same sources: reused. Changed sources: re-run.
    assert_eq!(ws.run(&["run", "p.yaml", "-q"]).status.code(), Some(0));
    assert_eq!(stage_rows(&ws, 2)[0].1, "cached");
    ws.write("src/a.c", "int f(int x) {\n    return x;\n}\n");
    assert_eq!(ws.run(&["run", "p.yaml", "-q"]).status.code(), Some(0));
    assert_eq!(stage_rows(&ws, 3)[0].1, "completed");
}

#[test]
fn pot10_command_exit_codes_follow_the_threshold() {
    let ws = Workspace::new();
    ws.write("a.c", GOTO_C);
    let o = ws.run(&[
        "pot10",
        "a.c",
        "--rules",
        "R1",
        "--no-external",
        "--format",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json output");
    assert_eq!(v["findings"][0]["rule"], "R1");
    let o = ws.run(&["pot10", "missing_dir", "--no-external"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// Issue #13: code that does not parse is reported (rule `unparsed`), not
/// scored; coverage below `min_coverage` fails the stage's `pot10_coverage`
/// target; suppressions are recorded with their reasons and shown in the
/// report.
#[test]
fn pot10_check_reports_coverage_target_and_suppressions() {
    let ws = Workspace::new();
    ws.write(
        "src/broken.c",
        "int ok(int x) { return x; }\n@@@ not C @@@;\n",
    );
    ws.write(
        "src/lib.rs",
        "pub fn f(n: u32) -> u32 {\n    // pot10: allow(R2) the caller bounds n\n    while n > 0 {\n        return n;\n    }\n    0\n}\n",
    );
    ws.write(
        "p.yaml",
        "version: 1\nname: pot\nstages:\n  check:\n    uses: pot10_check\n    with:\n      paths: [src]\n      rules: [R2]\n      run_external_tools: false\n",
    );
    let o = ws.run(&["run", "p.yaml", "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let conn = ws.sqlite();
    let (value, passed): (f64, bool) = conn
        .query_row(
            "SELECT value, passed FROM targets WHERE name = 'pot10_coverage'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(value < 0.95 && !passed, "{value} {passed}");
    let rules: Vec<String> = conn
        .prepare("SELECT rule FROM findings ORDER BY rule")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<Vec<String>, _>>()
        .unwrap();
    let mut kinds = rules.clone();
    kinds.dedup();
    assert_eq!(kinds, ["suppression", "unparsed"], "{rules:?}");
    let html = std::fs::read_to_string(ws.path().join("runs/1/report.html")).unwrap();
    assert!(
        html.contains("allow(R2) the caller bounds n [1 finding(s) suppressed: R2 line 3]"),
        "{html}"
    );
    assert!(html.contains("region(s) did not parse"));
    assert!(html.contains("FAILED"));
}
