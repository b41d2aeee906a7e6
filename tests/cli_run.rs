//! Running pipelines end to end with `command` stages: parallelism, caching,
//! failure isolation, kill -9 and resume, concurrent runs (issue #2).
mod common;
use common::*;

use std::time::{Duration, Instant};

const DIAMOND: &str = r#"version: 1
name: diamond
params:
  msg: hello
  word: right
  sleep: 0.5
stages:
  top:
    uses: command
    with: { cmd: "echo ${params.msg} > $BP_OUT/top.txt", outs: [top.txt] }
  left:
    uses: command
    needs: [top]
    with: { cmd: "sleep ${params.sleep}; cat $BP_IN_TOP/top.txt > $BP_OUT/left.txt" }
  right:
    uses: command
    needs: [top]
    with: { cmd: "sleep ${params.sleep}; echo ${params.word} > $BP_OUT/right.txt" }
  bottom:
    uses: command
    needs: [left, right]
    with: { cmd: "cat $BP_IN_LEFT/left.txt $BP_IN_RIGHT/right.txt > $BP_OUT/bottom.txt" }
"#;

fn ts(s: &Option<String>) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(s.as_deref().expect("timestamp")).unwrap()
}

#[test]
fn diamond_runs_middle_stages_concurrently_then_caches() {
    let ws = Workspace::new();
    ws.write("p.yaml", DIAMOND);
    let o = ws.run(&["run", "p.yaml", "--jobs", "2"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rows = stage_rows(&ws, 1);
    let get = |n: &str| rows.iter().find(|r| r.0 == n).unwrap().clone();
    let (left, right) = (get("left"), get("right"));
    // Overlapping intervals prove concurrency: each started before the
    // other ended.
    assert!(
        ts(&left.2) < ts(&right.3) && ts(&right.2) < ts(&left.3),
        "{rows:?}"
    );
    assert!(ts(&get("bottom").2) >= ts(&left.3).max(ts(&right.3)));
    let out = std::fs::read_to_string(ws.path().join("runs/1/bottom/bottom.txt")).unwrap();
    assert_eq!(out, "hello\nright\n");

    // Identical second run: every stage reused.
    let o = ws.run(&["run", "p.yaml"]);
    assert_eq!(o.status.code(), Some(0));
    let rows = stage_rows(&ws, 2);
    assert!(rows.iter().all(|r| r.1 == "cached"), "{rows:?}");

    // Changing one stage's `with` re-runs it and its descendants only.
    let plan = ws.run(&["plan", "p.yaml", "--set", "word=left"]);
    let plan_out = stdout(&plan);
    assert!(plan_out.contains("`with.cmd` changed"), "{plan_out}");
    assert!(
        plan_out.contains("2 of 4 stages would run, 2 reused"),
        "{plan_out}"
    );
    let o = ws.run(&["run", "p.yaml", "--set", "word=left"]);
    assert_eq!(o.status.code(), Some(0));
    let rows = stage_rows(&ws, 3);
    let status = |n: &str| rows.iter().find(|r| r.0 == n).unwrap().1.clone();
    assert_eq!(status("top"), "cached");
    assert_eq!(status("left"), "cached");
    assert_eq!(status("right"), "completed");
    assert_eq!(status("bottom"), "completed");
    let out = std::fs::read_to_string(ws.path().join("runs/3/bottom/bottom.txt")).unwrap();
    assert_eq!(out, "hello\nleft\n");
    // The override is recorded with the run.
    let conn = ws.sqlite();
    let v: String = conn
        .query_row(
            "SELECT value FROM params WHERE run_id = 3 AND key = 'word'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(v, "\"left\"");
}

#[test]
fn sweep_points_get_a_share_of_the_cores() {
    // Sweep points run side by side: each stage sees OMP_NUM_THREADS =
    // cores / min(--jobs, points) (libtorch's intra-op pool and our kernels
    // follow it). A single run keeps the default (every core), and a value
    // the user set is passed on unchanged.
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        "version: 1\nname: threads\nparams: { x: 0 }\nstages:\n  a:\n    uses: command\n    with: { cmd: 'echo ${params.x} n$OMP_NUM_THREADS > $BP_OUT/t.txt' }\n",
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let seen = |run: u32| {
        std::fs::read_to_string(ws.path().join(format!("runs/{run}/a/t.txt")))
            .unwrap()
            .trim()
            .to_string()
    };
    let run = |args: &[&str], user: Option<&str>| {
        let mut c = ws.cmd();
        c.env_remove("OMP_NUM_THREADS");
        if let Some(v) = user {
            c.env("OMP_NUM_THREADS", v);
        }
        let o = c.arg("run").arg("p.yaml").args(args).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    };
    let share = (cores / 2).max(1);
    run(&["--jobs", "2", "--sweep", "x=1,2"], None);
    assert_eq!(
        [seen(1), seen(2)],
        [format!("1 n{share}"), format!("2 n{share}")]
    );
    run(&["--jobs", "2", "--set", "x=3"], None);
    assert_eq!(seen(3), "3 n");
    run(&["--jobs", "2", "--sweep", "x=4,5"], Some("3"));
    assert_eq!([seen(4), seen(5)], ["4 n3", "5 n3"]);
}

#[test]
fn failure_skips_only_downstream_and_resume_continues() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        r#"version: 1
name: fail
stages:
  ok:
    uses: command
    with: { cmd: "echo ok > $BP_OUT/x" }
  bad:
    uses: command
    with: { cmd: "test -f flag || { echo missing flag >&2; exit 3; }" }
  after_bad:
    uses: command
    needs: [bad]
    with: { cmd: "true" }
  after_ok:
    uses: command
    needs: [ok]
    with: { cmd: "true" }
"#,
    );
    let o = ws.run(&["run", "p.yaml"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("exited with status 3; last lines of stderr:\nmissing flag"),
        "{}",
        stdout(&o)
    );
    let rows = stage_rows(&ws, 1);
    let status = |n: &str| rows.iter().find(|r| r.0 == n).unwrap().1.clone();
    assert_eq!(status("ok"), "completed");
    assert_eq!(status("after_ok"), "completed");
    assert_eq!(status("bad"), "failed");
    assert_eq!(status("after_bad"), "skipped");

    ws.write("flag", "");
    let o = ws.run(&["resume", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rows = stage_rows(&ws, 1);
    assert!(rows.iter().all(|r| r.1 == "completed"), "{rows:?}");
    let attempts: i64 = ws
        .sqlite()
        .query_row(
            "SELECT attempts FROM stage_runs WHERE run_id = 1 AND stage = 'ok'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        attempts, 1,
        "a completed stage must not run again on resume"
    );
}

#[test]
fn sigkill_of_the_runner_then_resume_completes() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        r#"version: 1
name: killme
stages:
  first:
    uses: command
    with: { cmd: "date +%s%N > $BP_OUT/t" }
  slow:
    uses: command
    needs: [first]
    with: { cmd: "test -f release || sleep 30; echo done > $BP_OUT/slow.txt" }
  last:
    uses: command
    needs: [slow]
    with: { cmd: "cat $BP_IN_SLOW/slow.txt > $BP_OUT/last.txt" }
"#,
    );
    let mut child = ws.cmd().args(["run", "p.yaml", "-q"]).spawn().unwrap();
    // Wait until `slow` is running, then kill -9 the runner.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "slow never started");
        if ws.db().exists() {
            let running: i64 = ws
                .sqlite()
                .query_row(
                    "SELECT count(*) FROM stage_runs WHERE stage = 'slow' AND status = 'running'",
                    [],
                    |r| r.get(0),
                )
                .unwrap_or(0);
            if running == 1 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let conn = ws.sqlite();
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    drop(conn);
    // The stale run is detected by its dead PID.
    let o = ws.run(&["runs", "show", "1"]);
    assert!(
        stdout(&o).contains("run 1: killme (interrupted)"),
        "{}",
        stdout(&o)
    );

    ws.write("release", "");
    let o = ws.run(&["resume", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rows = stage_rows(&ws, 1);
    assert!(rows.iter().all(|r| r.1 == "completed"), "{rows:?}");
    let attempts: i64 = ws
        .sqlite()
        .query_row(
            "SELECT attempts FROM stage_runs WHERE run_id = 1 AND stage = 'first'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(attempts, 1, "completed stage re-ran");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("runs/1/last/last.txt")).unwrap(),
        "done\n"
    );
}

#[test]
fn sigint_stops_children_and_marks_the_run_interrupted() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        "version: 1\nname: intr\nstages:\n  slow:\n    uses: command\n    with: { cmd: \"sleep 30\" }\n",
    );
    let mut child = ws.cmd().args(["run", "p.yaml", "-q"]).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "stage never started");
        if ws.db().exists() {
            let n: i64 = ws
                .sqlite()
                .query_row(
                    "SELECT count(*) FROM stage_runs WHERE status = 'running'",
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
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let rows = stage_rows(&ws, 1);
    assert_eq!(rows[0].1, "interrupted");
    let s: String = ws
        .sqlite()
        .query_row("SELECT status FROM runs WHERE id = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(s, "interrupted");
}

#[test]
fn two_runs_at_once_on_one_db_both_complete() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        "version: 1\nname: twin\nparams: {tag: a}\nstages:\n  s1:\n    uses: command\n    with: { cmd: \"sleep 0.2; echo ${params.tag} > $BP_OUT/o\" }\n  s2:\n    uses: command\n    needs: s1\n    with: { cmd: \"cat $BP_IN_S1/o > $BP_OUT/o\" }\n",
    );
    let a = ws
        .cmd()
        .args(["run", "p.yaml", "-q", "--set", "tag=a"])
        .spawn()
        .unwrap();
    let b = ws
        .cmd()
        .args(["run", "p.yaml", "-q", "--set", "tag=b"])
        .spawn()
        .unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(a.status.code(), Some(0), "{}", stderr(&a));
    assert_eq!(b.status.code(), Some(0), "{}", stderr(&b));
    let conn = ws.sqlite();
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM runs WHERE status = 'completed'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 2);
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM stage_runs WHERE status = 'completed'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 4);
}

#[test]
fn timeout_and_retries_are_honoured() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        r#"version: 1
name: tr
stages:
  flaky:
    uses: command
    retries: 2
    with: { cmd: "n=$(cat count 2>/dev/null || echo 0); echo $((n+1)) > count; test $n -ge 1" }
  hang:
    uses: command
    timeout: 0.5s
    with: { cmd: "sleep 30" }
"#,
    );
    let o = ws.run(&["run", "p.yaml"]);
    assert_eq!(o.status.code(), Some(1));
    let rows = stage_rows(&ws, 1);
    let status = |n: &str| rows.iter().find(|r| r.0 == n).unwrap().1.clone();
    assert_eq!(status("flaky"), "completed");
    assert_eq!(status("hang"), "failed");
    assert!(stdout(&o).contains("timed out after"), "{}", stdout(&o));
    let attempts: i64 = ws
        .sqlite()
        .query_row(
            "SELECT attempts FROM stage_runs WHERE stage = 'flaky'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(attempts, 2);
}

#[test]
fn missing_outs_and_deps_fail_with_clear_messages() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        r#"version: 1
name: io
stages:
  no_out:
    uses: command
    with: { cmd: "true", outs: [model.bin] }
  no_dep:
    uses: command
    with: { cmd: "true", deps: [data/missing.txt] }
"#,
    );
    let o = ws.run(&["run", "p.yaml"]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.contains("did not create declared outs `model.bin`"),
        "{out}"
    );
    assert!(
        out.contains("input `data/missing.txt` of stage `no_dep` cannot be read"),
        "{out}"
    );
}

#[test]
fn changed_dep_file_invalidates_the_cache() {
    let ws = Workspace::new();
    ws.write("data/in.txt", "1");
    ws.write(
        "p.yaml",
        "version: 1\nname: deps\nstages:\n  s:\n    uses: command\n    with: { cmd: \"cp data/in.txt $BP_OUT/out\", deps: [data/in.txt] }\n",
    );
    assert_eq!(ws.run(&["run", "p.yaml", "-q"]).status.code(), Some(0));
    assert_eq!(ws.run(&["run", "p.yaml", "-q"]).status.code(), Some(0));
    assert_eq!(stage_rows(&ws, 2)[0].1, "cached");
    ws.write("data/in.txt", "2");
    let plan = stdout(&ws.run(&["plan", "p.yaml"]));
    assert!(plan.contains("input file `data/in.txt` changed"), "{plan}");
    assert_eq!(ws.run(&["run", "p.yaml", "-q"]).status.code(), Some(0));
    assert_eq!(stage_rows(&ws, 3)[0].1, "completed");
    let o = ws.run(&["run", "p.yaml", "-q", "--force", "s"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stage_rows(&ws, 4)[0].1, "completed");
}

/// `params.seed` reaches every stage (training draws its batches from it),
/// so another seed re-runs the stage instead of reusing the old seed's
/// result, and `plan` says so.
#[test]
fn another_seed_invalidates_the_cache() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        "version: 1\nname: seeded\nparams:\n  seed: 42\nstages:\n  s:\n    uses: command\n    with: { cmd: \"echo x > $BP_OUT/out\" }\n",
    );
    assert_eq!(ws.run(&["run", "p.yaml", "-q"]).status.code(), Some(0));
    assert_eq!(ws.run(&["run", "p.yaml", "-q"]).status.code(), Some(0));
    assert_eq!(stage_rows(&ws, 2)[0].1, "cached");
    let plan = stdout(&ws.run(&["plan", "p.yaml", "--set", "params.seed=43"]));
    assert!(plan.contains("`params.seed` changed: 42 -> 43"), "{plan}");
    let o = ws.run(&["run", "p.yaml", "-q", "--set", "params.seed=43"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stage_rows(&ws, 3)[0].1, "completed");
    let o = ws.run(&["run", "p.yaml", "-q", "--set", "params.seed=42"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stage_rows(&ws, 4)[0].1, "cached");
}
