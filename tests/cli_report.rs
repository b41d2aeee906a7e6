//! Targets, reports and run comparison end to end (issue #5): `command`
//! stages report metrics through `$BP_OUT/metrics.json`, a `validate` stage
//! checks them, and the run's HTML report, `runs compare` and
//! `runs list --where` read them back from the results DB.
mod common;
use common::*;

/// Memory, latency, training and quality metrics from command stages; the
/// memory stage has a name that is HTML, to check escaping. `speed` and
/// `mem` are params so a second run can change them.
const PIPELINE: &str = r#"version: 1
name: report-demo
params:
  seed: 7
  speed: 2.5
  mem: 6.0
  train: { lr: 3.0e-4 }
stages:
  "<script>alert(1)</script>":
    uses: command
    with:
      cmd: >-
        echo '{"weight_bytes_baseline": 4000000, "weight_bytes_bitnet": 450000,
        "peak_bytes_baseline": 9000000, "peak_bytes_bitnet": 1500000,
        "memory_reduction": ${params.mem}, "weight_memory_reduction": 8.9}' > $BP_OUT/metrics.json
  speed:
    uses: command
    with:
      cmd: >-
        echo '{"latency_ms": [
        {"value": 2.0, "meta": {"batch": 1, "seq": 64, "side": "baseline", "median_ms": 2.0, "p95_ms": 2.2, "p99_ms": 2.5}},
        {"value": 1.0, "meta": {"batch": 1, "seq": 64, "side": "bitnet", "median_ms": 1.0, "p95_ms": 1.1, "p99_ms": 1.3}},
        {"value": 6.0, "meta": {"batch": 4, "seq": 64, "side": "baseline", "median_ms": 6.0, "p95_ms": 6.5, "p99_ms": 7.0}},
        {"value": 2.0, "meta": {"batch": 4, "seq": 64, "side": "bitnet", "median_ms": 2.0, "p95_ms": 2.1, "p99_ms": 2.4}}],
        "speedup": ${params.speed}}' > $BP_OUT/metrics.json
  train:
    uses: command
    with:
      cmd: >-
        echo '{"loss": [3.0, 2.5, 2.1, 1.9], "lr": [0.0001, 0.0003, 0.0003, 0.0002],
        "ppl_baseline": 12.0, "ppl_bitnet": 12.5, "accuracy_degradation": 0.041,
        "top1_agreement": 0.9}' > $BP_OUT/metrics.json
  validate:
    uses: validate
    needs: ["<script>alert(1)</script>", speed, train]
    with:
      targets: { memory_reduction: ">= 8", speedup: "> 0", accuracy_degradation: "<= 0.05" }
      optimal: { speedup: ">= 4" }
"#;

fn report(ws: &Workspace, run: i64) -> String {
    std::fs::read_to_string(ws.path().join(format!("runs/{run}/report.html")))
        .expect("report.html written after the run")
}

/// The structure of a report: its section ids and headings, in order.
fn outline(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in html.split("<section id=\"").skip(1) {
        let id = part.split('"').next().unwrap_or_default();
        let h2 = part
            .split("<h2>")
            .nth(1)
            .and_then(|h| h.split("</h2>").next())
            .unwrap_or_default();
        out.push(format!("{id}: {h2}"));
    }
    out
}

#[test]
fn report_has_every_section_and_escapes_names_from_the_pipeline() {
    let ws = Workspace::new();
    ws.write("p.yaml", PIPELINE);
    let o = ws.run(&["run", "p.yaml"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("verdict: FAILED (2 of 3 targets passed)"),
        "{}",
        stdout(&o)
    );
    let html = report(&ws, 1);
    assert_eq!(
        outline(&html),
        [
            "summary: Executive summary",
            "stages: Stages",
            "memory: Memory",
            "speed: Latency",
            "training: Training",
            "quality: Quality",
            "metrics: All metrics (final values)",
            "provenance: Provenance",
        ]
    );
    // Verdict and the targets table, measured vs target.
    assert!(
        html.contains("Verdict: FAILED: 2 of 3 targets met"),
        "verdict"
    );
    assert!(
        html.contains("<td class=\"num\">6</td>"),
        "measured memory_reduction"
    );
    assert!(html.contains("badge NOT_OPTIMAL"), "optimal speedup row");
    // One SVG chart each for memory and latency, two training curves.
    assert_eq!(html.matches("<svg").count(), 4, "charts");
    assert!(html.contains("3.81 MiB") && html.contains("2x") && html.contains("3x"));
    // Provenance: params after overrides, seed, argv.
    assert!(html.contains("<code>train.lr</code>") && html.contains("<dd>7</dd>"));
    // Escaping: the stage name is text, and the page has no script at all.
    assert!(html.contains("&lt;script&gt;alert(1)&lt;&#x2F;script&gt;"));
    assert!(
        !html.to_lowercase().contains("<script"),
        "no script element"
    );
    // Self-contained: nothing is loaded from elsewhere.
    for needle in ["src=\"http", "href=\"http", "url(http", "<link", "<img"] {
        assert!(!html.contains(needle), "{needle}");
    }
}

#[test]
fn sections_without_data_say_so_instead_of_showing_numbers() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        "version: 1\nname: plain\nstages:\n  hello:\n    uses: command\n    with: { cmd: \"true\" }\n",
    );
    let o = ws.run(&["run", "p.yaml", "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let html = report(&ws, 1);
    for text in [
        "No targets were validated in this run",
        "Memory not measured in this run.",
        "Latency not measured in this run.",
        "No training curves in this run.",
        "Perplexity not measured in this run.",
    ] {
        assert!(html.contains(text), "{text}");
    }
    assert!(!html.contains("<svg"), "no chart without data");
    assert!(
        !html.contains("id=\"findings\""),
        "no POT10 section without a pot10 stage"
    );
}

#[test]
fn strict_turns_a_failed_verdict_into_exit_code_1() {
    let ws = Workspace::new();
    ws.write("p.yaml", PIPELINE);
    let o = ws.run(&["run", "p.yaml", "-q", "--strict"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o)
            .contains("verdict is FAILED (--strict): `memory_reduction` measured 6 (needs >= 8)"),
        "{}",
        stderr(&o)
    );
    let show = stdout(&ws.run(&["runs", "show", "1"]));
    let row = show
        .lines()
        .find(|l| l.trim_start().starts_with("memory_reduction"))
        .unwrap_or_else(|| panic!("targets in `runs show`:\n{show}"));
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        [
            "memory_reduction",
            "<script>alert(1)</script>.memory_reduction",
            "6",
            ">=",
            "8",
            "FAILED"
        ]
    );
    // Targets met: --strict passes.
    let o = ws.run(&["run", "p.yaml", "-q", "--strict", "--set", "mem=9"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let conn = ws.sqlite();
    let rows: Vec<(String, i64)> = conn
        .prepare("SELECT name, passed FROM targets WHERE run_id = 2 ORDER BY name")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(
        rows,
        [
            ("accuracy_degradation".to_string(), 1),
            ("memory_reduction".to_string(), 1),
            ("optimal:speedup".to_string(), 0),
            ("speedup".to_string(), 1),
        ]
    );
}

#[test]
fn validate_with_a_missing_metric_fails_the_stage_naming_it() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        r#"version: 1
name: missing
stages:
  mem:
    uses: command
    with: { cmd: "echo '{\"memory_reduction\": 9}' > $BP_OUT/metrics.json" }
  validate:
    uses: validate
    needs: [mem]
    with: { targets: { speedup: ">= 2" } }
"#,
    );
    let o = ws.run(&["run", "p.yaml", "-q"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err: String = ws
        .sqlite()
        .query_row(
            "SELECT error FROM stage_runs WHERE stage = 'validate'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        err.contains("metric `speedup` was not reported") && err.contains("`mem.memory_reduction`"),
        "{err}"
    );
    // The report of a failed run is still written and shows the error.
    assert!(report(&ws, 1).contains("metric `speedup` was not reported"));
}

#[test]
fn compare_two_recorded_runs_in_every_format() {
    let ws = Workspace::new();
    ws.write("p.yaml", PIPELINE);
    assert_eq!(ws.run(&["run", "p.yaml", "-q"]).status.code(), Some(0));
    assert_eq!(
        ws.run(&["run", "p.yaml", "-q", "--set", "speed=3"])
            .status
            .code(),
        Some(0)
    );
    let o = ws.run(&["runs", "compare", "1", "2", "--only-changed"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let t = stdout(&o);
    let line = |key: &str| {
        t.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(key))
            .unwrap_or_else(|| panic!("row {key} in\n{t}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(line("speed"), "params speed 2.5 3 +0.5 (+20.0%)");
    assert_eq!(
        line("speed.speedup"),
        "metrics speed.speedup 2.5 3 +0.5 (+20.0%)"
    );
    assert!(!t.contains("train.lr"), "unchanged rows are left out:\n{t}");
    let all = stdout(&ws.run(&["runs", "compare", "1", "2"]));
    assert!(all.contains("train.lr"), "{all}");

    let o = ws.run(&["runs", "compare", "1", "2", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let row = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "speed.speedup")
        .unwrap();
    assert_eq!(row["values"], serde_json::json!([2.5, 3.0]));
    assert_eq!(row["delta"][1], 0.5);
    assert_eq!(row["pct_change"][1], 20.0);

    let csv = stdout(&ws.run(&["runs", "compare", "1", "2", "--format", "csv"]));
    assert!(
        csv.starts_with("section,key,run_1,run_2,delta_2,pct_change_2\n"),
        "{csv}"
    );
    assert!(
        csv.contains("\nmetrics,speed.speedup,2.5,3.0,0.5,20.0000\n"),
        "{csv}"
    );
    assert!(
        csv.contains("\nmetrics,<script>alert(1)</script>.memory_reduction,6.0,6.0,0,0.0000\n"),
        "{csv}"
    );

    let o = ws.run(&[
        "runs", "compare", "1", "2", "--format", "html", "--out", "c.html",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let html = std::fs::read_to_string(ws.path().join("c.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 2, "overlaid loss and latency");
    assert!(html.contains("run 2 bitnet seq 64"));
    assert!(!html.contains("<script"));

    let o = ws.run(&["runs", "compare", "1"]);
    assert_eq!(o.status.code(), Some(2), "one run is not a comparison");
}

#[test]
fn runs_list_where_filters_and_points_at_bad_filters() {
    let ws = Workspace::new();
    ws.write("p.yaml", PIPELINE);
    assert_eq!(ws.run(&["run", "p.yaml", "-q"]).status.code(), Some(0));
    assert_eq!(
        ws.run(&["run", "p.yaml", "-q", "--set", "speed=3"])
            .status
            .code(),
        Some(0)
    );
    let ids = |filter: &str| -> Vec<String> {
        let o = ws.run(&["runs", "list", "--where", filter]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        stdout(&o)
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().next().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids("metrics.speedup >= 3"), ["2"]);
    assert_eq!(
        ids("metrics.speedup >= 2 and params.train.lr = 3e-4"),
        ["2", "1"]
    );
    assert_eq!(
        ids("params.speed = 2.5 or attributes.status = failed"),
        ["1"]
    );
    assert_eq!(
        ids("metrics.validate.production_ready = 1"),
        Vec::<String>::new()
    );
    let o = ws.run(&["runs", "list", "--where", "metrics.speedup => 3"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o)
            .starts_with("error: unknown operator `=>` (use =, !=, <, <=, >, >=) at column 17"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn report_command_rerenders_to_a_chosen_path() {
    let ws = Workspace::new();
    ws.write("p.yaml", PIPELINE);
    assert_eq!(ws.run(&["run", "p.yaml", "-q"]).status.code(), Some(0));
    let o = ws.run(&["report", "1", "--out", "out/r.html"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let html = std::fs::read_to_string(ws.path().join("out/r.html")).unwrap();
    assert_eq!(
        html,
        report(&ws, 1),
        "same page as the one written by `run`"
    );
    let o = ws.run(&["report", "9"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("run 9 does not exist"),
        "{}",
        stderr(&o)
    );
}
