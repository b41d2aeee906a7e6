//! The Slurm executor against a real single-node Slurm (issue #17):
//! `scripts/slurm-local.sh` installs and starts slurmctld, slurmd and munge
//! (Debian's slurm 22.05, as root). Where that cannot be done (not root, no
//! apt-get) each test prints why and returns; everywhere else the tests
//! run for real.
mod common;
use common::*;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Starts the local Slurm once per test binary; None (with a visible
/// message) where it cannot be set up.
fn slurm() -> Option<()> {
    static UP: OnceLock<Result<(), String>> = OnceLock::new();
    let up = UP.get_or_init(|| {
        let script = repo_root().join("scripts/slurm-local.sh");
        let o = std::process::Command::new(&script)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        match o.status.code() {
            Some(0) => Ok(()),
            Some(3) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            _ => panic!(
                "scripts/slurm-local.sh failed:\n{}\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        }
    });
    match up {
        Ok(()) => Some(()),
        Err(why) => {
            eprintln!("SKIPPED: no local Slurm here ({why}); the Slurm executor tests did not run");
            None
        }
    }
}

/// (stage, status, job_id, node, job_started_at, job_ended_at)
type JobRow = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn job_rows(ws: &Workspace, run: i64) -> Vec<JobRow> {
    let conn = ws.sqlite();
    let mut st = conn
        .prepare(
            "SELECT stage, status, job_id, node, job_started_at, job_ended_at FROM stage_runs
             WHERE run_id = ?1 ORDER BY stage",
        )
        .unwrap();
    st.query_map([run], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// The row of `stage`.
fn job<'a>(rows: &'a [JobRow], stage: &str) -> &'a JobRow {
    rows.iter()
        .find(|r| r.0 == stage)
        .unwrap_or_else(|| panic!("no stage `{stage}` in {rows:?}"))
}

fn ts(s: &Option<String>) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(s.as_deref().expect("timestamp")).unwrap()
}

/// Dependency order from the jobs' own start/end times: the job of `stage`
/// started after the job of every stage in `needs` had ended.
fn assert_ran_after(rows: &[JobRow], stage: &str, needs: &[&str]) {
    let started = ts(&job(rows, stage).4);
    for n in needs {
        assert!(
            started >= ts(&job(rows, n).5),
            "`{stage}` started before `{n}` ended: {rows:?}"
        );
    }
}

const DIAMOND: &str = r#"version: 1
name: slurm-diamond
executor: { type: slurm, time: 10 }
stages:
  top:
    uses: command
    with: { cmd: "echo hello > $BP_OUT/top.txt; echo '{\"t\": 1}' > $BP_OUT/metrics.json" }
  left:
    uses: command
    needs: [top]
    with: { cmd: "sleep 1; cat $BP_IN_TOP/top.txt > $BP_OUT/left.txt" }
  right:
    uses: command
    needs: [top]
    resources: { cpus: 1 }
    with: { cmd: "sleep 1; echo right > $BP_OUT/right.txt" }
  bottom:
    uses: command
    needs: [left, right]
    with: { cmd: "cat $BP_IN_LEFT/left.txt $BP_IN_RIGHT/right.txt > $BP_OUT/bottom.txt" }
"#;

#[test]
fn diamond_runs_as_jobs_in_dependency_order_and_caches_like_local() {
    if slurm().is_none() {
        return;
    }
    let ws = Workspace::new();
    ws.write("p.yaml", DIAMOND);
    let o = ws.run(&["run", "p.yaml", "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rows = job_rows(&ws, 1);
    eprintln!("slurm diamond jobs (stage, status, job, node, job start, job end): {rows:?}");
    for r in &rows {
        assert_eq!(r.1, "completed", "{r:?}");
        assert!(
            r.2.is_some() && r.3.is_some(),
            "job id and node recorded: {r:?}"
        );
    }
    assert_ran_after(&rows, "left", &["top"]);
    assert_ran_after(&rows, "right", &["top"]);
    assert_ran_after(&rows, "bottom", &["left", "right"]);
    assert_eq!(
        std::fs::read_to_string(ws.path().join("runs/1/bottom/bottom.txt")).unwrap(),
        "hello\nright\n"
    );
    // Events written by the job were ingested (metrics of `top`).
    assert_eq!(last_metric(&ws, "top", "t"), 1.0);
    let show = stdout(&ws.run(&["runs", "show", "1"]));
    assert!(
        show.contains("slurm job") && show.contains("executor  slurm"),
        "{show}"
    );
    // The same fingerprints as a local run: a local re-run reuses all four.
    let o = ws.run(&["run", "p.yaml", "-q", "--executor", "local"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(job_rows(&ws, 2).iter().all(|r| r.1 == "cached"));
}

#[test]
fn a_failing_job_fails_the_run_and_its_dependants_are_never_submitted() {
    if slurm().is_none() {
        return;
    }
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        r#"version: 1
name: slurm-fail
stages:
  bad:
    uses: command
    with: { cmd: "echo broken >&2; exit 4" }
  after:
    uses: command
    needs: [bad]
    with: { cmd: "true" }
  other:
    uses: command
    with: { cmd: "echo ok > $BP_OUT/o" }
"#,
    );
    let o = ws.run(&["run", "p.yaml", "--executor", "slurm"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("exited with status 4"),
        "{}",
        stdout(&o)
    );
    let rows = job_rows(&ws, 1);
    assert_eq!(job(&rows, "bad").1, "failed");
    assert!(job(&rows, "bad").2.is_some());
    assert_eq!(job(&rows, "after").1, "skipped");
    assert_eq!(
        job(&rows, "after").2,
        None,
        "a dependant of a failed job was submitted"
    );
    assert_eq!(job(&rows, "other").1, "completed");
}

#[test]
fn kill_9_of_the_runner_then_resume_adopts_the_jobs() {
    if slurm().is_none() {
        return;
    }
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        r#"version: 1
name: slurm-adopt
stages:
  first:
    uses: command
    with: { cmd: "echo first >> execs.log; echo 1 > $BP_OUT/f" }
  slow:
    uses: command
    needs: [first]
    with: { cmd: "echo slow >> execs.log; sleep 3; echo done > $BP_OUT/slow.txt" }
  last:
    uses: command
    needs: [slow]
    with: { cmd: "echo last >> execs.log; cat $BP_IN_SLOW/slow.txt > $BP_OUT/last.txt" }
"#,
    );
    let mut child = ws
        .cmd()
        .args(["run", "p.yaml", "-q", "--executor", "slurm"])
        .spawn()
        .unwrap();
    // Wait until `slow` is submitted, then kill -9 the runner.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "slow was never submitted");
        if ws.db().exists() {
            let n: i64 = ws
                .sqlite()
                .query_row(
                    "SELECT count(*) FROM stage_runs WHERE stage = 'slow' AND job_id IS NOT NULL",
                    [],
                    |r| r.get(0),
                )
                .unwrap_or(0);
            if n == 1 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let job_before: String = ws
        .sqlite()
        .query_row(
            "SELECT job_id FROM stage_runs WHERE stage = 'slow'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let o = ws.run(&["resume", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("adopted   slow (Slurm job {job_before}")),
        "{}",
        stderr(&o)
    );
    let rows = job_rows(&ws, 1);
    eprintln!("slurm adopt jobs: {rows:?}");
    assert!(rows.iter().all(|r| r.1 == "completed"), "{rows:?}");
    let slow = job(&rows, "slow");
    assert_eq!(
        slow.2.as_deref(),
        Some(job_before.as_str()),
        "slow was resubmitted"
    );
    let execs = std::fs::read_to_string(ws.path().join("execs.log")).unwrap();
    assert_eq!(execs, "first\nslow\nlast\n", "a stage ran twice");
    let attempts: i64 = ws
        .sqlite()
        .query_row(
            "SELECT sum(attempts) FROM stage_runs WHERE run_id = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(attempts, 3);
    let ok: String = ws
        .sqlite()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}
