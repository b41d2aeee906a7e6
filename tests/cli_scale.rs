//! Scale-out without a cluster (issue #17): partial runs, reused stages'
//! params in compare and --where, the shared-stage lock across processes,
//! sweeps, and `runs rm`/`runs gc`. Driven with `command` stages.
mod common;
use common::*;

fn integrity_ok(ws: &Workspace) {
    let ok: String = ws
        .sqlite()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}

fn count(ws: &Workspace, sql: &str) -> i64 {
    ws.sqlite().query_row(sql, [], |r| r.get(0)).unwrap()
}

/// A chain load -> convert -> train -> eval; `load` reports checkpoint
/// params (like load_checkpoint), every stage appends to `execs.log` so
/// tests count executions.
const CHAIN: &str = r#"version: 1
name: chain
params:
  train: { steps: 10, lr: 0.001 }
stages:
  load:
    uses: command
    with: { cmd: "echo load >> execs.log; echo '{\"checkpoint.generation\": 12, \"model.config\": {\"hidden_size\": 256, \"intermediate_size\": 688, \"num_hidden_layers\": 4, \"num_attention_heads\": 8, \"vocab_size\": 256}}' > $BP_OUT/params.json; echo w > $BP_OUT/w" }
  convert:
    uses: command
    needs: [load]
    with: { cmd: "echo convert >> execs.log; sleep 0.3; cat $BP_IN_LOAD/w > $BP_OUT/w" }
  train:
    uses: command
    needs: [convert]
    with: { cmd: "echo train >> execs.log; echo '{\"loss\": ${params.train.lr}}' > $BP_OUT/metrics.json" }
  eval:
    uses: command
    needs: [train]
    with: { cmd: "echo eval >> execs.log; echo '{\"score\": ${params.train.steps}}' > $BP_OUT/metrics.json" }
"#;

fn execs(ws: &Workspace) -> Vec<String> {
    std::fs::read_to_string(ws.path().join("execs.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn statuses(ws: &Workspace, run: i64) -> Vec<(String, String)> {
    stage_rows(ws, run)
        .into_iter()
        .map(|r| (r.0, r.1))
        .collect()
}

#[test]
fn until_only_and_from_run_the_parts_plan_reports() {
    let ws = Workspace::new();
    ws.write("p.yaml", CHAIN);
    // --only before anything is cached: exit 2, names what is missing, writes nothing.
    let o = ws.run(&["run", "p.yaml", "--only", "eval"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("their upstream stages are not in the cache with the current inputs: `load`, `convert`, `train`"),
        "{err}"
    );
    assert!(err.contains("--until train"), "{err}");
    assert!(!ws.db().exists(), "nothing may be written");

    // --until: train and upstream only.
    let plan = stdout(&ws.run(&["plan", "p.yaml", "--until", "train"]));
    assert!(plan.contains("3 of 3 stages would run"), "{plan}");
    let o = ws.run(&["run", "p.yaml", "--until", "train", "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(execs(&ws), ["load", "convert", "train"]);
    assert_eq!(statuses(&ws, 1).len(), 3);
    let show = stdout(&ws.run(&["runs", "show", "1"]));
    assert!(show.contains("partial   --until train"), "{show}");

    // --only eval now: upstream reused, only eval runs; plan agrees.
    let plan = stdout(&ws.run(&["plan", "p.yaml", "--only", "eval"]));
    assert!(plan.contains("1 of 4 stages would run, 3 reused"), "{plan}");
    let o = ws.run(&["run", "p.yaml", "--only", "eval", "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(execs(&ws), ["load", "convert", "train", "eval"]);

    // --from convert: convert and everything downstream re-run, load reused.
    let plan = stdout(&ws.run(&["plan", "p.yaml", "--from", "convert"]));
    assert!(plan.contains("3 of 4 stages would run, 1 reused"), "{plan}");
    let o = ws.run(&["run", "p.yaml", "--from", "convert", "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(&execs(&ws)[4..], ["convert", "train", "eval"]);

    // A misspelt stage: exit 2 with a suggestion, no run recorded.
    let o = ws.run(&["run", "p.yaml", "--until", "trian"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--until `trian`: no such stage in `chain` (did you mean `train`?)"),
        "{}",
        stderr(&o)
    );
    assert_eq!(count(&ws, "SELECT count(*) FROM runs"), 3);
    integrity_ok(&ws);
}

#[test]
fn reused_stages_params_are_visible_to_compare_and_where() {
    let ws = Workspace::new();
    ws.write("p.yaml", CHAIN);
    assert_eq!(ws.run(&["run", "p.yaml", "-q"]).status.code(), Some(0));
    let o = ws.run(&["run", "p.yaml", "-q", "--set", "train.steps=20"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // Run 2 reused load, so it has load's params, marked as reused.
    let cmp = stdout(&ws.run(&["runs", "compare", "1", "2", "--only-changed"]));
    assert!(!cmp.contains("checkpoint.generation"), "{cmp}");
    assert!(!cmp.contains("model.config"), "{cmp}");
    assert!(cmp.contains("train.steps"), "{cmp}");
    let list = stdout(&ws.run(&[
        "runs",
        "list",
        "--where",
        "params.checkpoint.generation = 12",
    ]));
    let ids: Vec<&str> = list
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(ids, ["2", "1"], "{list}");
    let full = stdout(&ws.run(&["runs", "compare", "1", "2"]));
    let line = full
        .lines()
        .find(|l| l.contains("model.config"))
        .expect("model.config row");
    // The long JSON value is shortened in the table...
    assert!(line.len() < 160, "{line}");
    assert!(
        line.contains("...") && line.contains("(reused from run 1)"),
        "{line}"
    );
    // ...but complete in JSON, with where it came from.
    let json: serde_json::Value = serde_json::from_str(&stdout(
        &ws.run(&["runs", "compare", "1", "2", "--format", "json"]),
    ))
    .unwrap();
    let row = json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "model.config")
        .unwrap();
    assert_eq!(row["values"][1]["vocab_size"], 256);
    assert_eq!(row["reused_from"][1], 1);
    let show = stdout(&ws.run(&["runs", "show", "2"]));
    assert!(
        show.contains("checkpoint.generation = 12  (reused from run 1)"),
        "{show}"
    );
}

#[test]
fn two_runners_on_one_db_compute_a_shared_stage_once() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        "version: 1\nname: lock\nparams: {tag: a}\nstages:\n  shared:\n    uses: command\n    with: { cmd: \"echo x >> execs.log; sleep 1; echo s > $BP_OUT/s\" }\n  own:\n    uses: command\n    needs: [shared]\n    with: { cmd: \"echo ${params.tag} > $BP_OUT/o\" }\n",
    );
    let a = ws
        .cmd()
        .args(["run", "p.yaml", "--set", "tag=a"])
        .spawn()
        .unwrap();
    let b = ws
        .cmd()
        .args(["run", "p.yaml", "--set", "tag=b"])
        .spawn()
        .unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(a.status.code(), Some(0), "{}", stderr(&a));
    assert_eq!(b.status.code(), Some(0), "{}", stderr(&b));
    assert_eq!(execs(&ws), ["x"], "the shared stage ran more than once");
    assert_eq!(
        count(
            &ws,
            "SELECT count(*) FROM stage_runs WHERE stage = 'shared' AND status = 'cached'"
        ),
        1
    );
    assert_eq!(count(&ws, "SELECT count(*) FROM stage_locks"), 0);
    integrity_ok(&ws);
}

#[test]
fn a_dead_runners_lock_is_taken_over() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        "version: 1\nname: stale\nstages:\n  s:\n    uses: command\n    with: { cmd: \"test -f release || sleep 30; echo s > $BP_OUT/s\" }\n",
    );
    let mut child = ws.cmd().args(["run", "p.yaml", "-q"]).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !(ws.db().exists()
        && ws
            .sqlite()
            .query_row("SELECT count(*) FROM stage_locks", [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap_or(0)
            == 1)
    {
        assert!(std::time::Instant::now() < deadline, "lock never taken");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    ws.write("release", "");
    let o = ws.run(&["run", "p.yaml"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("took over the lock on s from run 1"),
        "{}",
        stderr(&o)
    );
    integrity_ok(&ws);
}

#[test]
fn a_sweep_makes_one_run_per_point_and_computes_shared_stages_once() {
    let ws = Workspace::new();
    ws.write("p.yaml", CHAIN);
    let o = ws.run(&[
        "run",
        "p.yaml",
        "--jobs",
        "2",
        "--sweep",
        "train.lr=0.001,0.003",
        "--sweep",
        "train.steps=range(10,40,10)",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let ex = execs(&ws);
    let n = |s: &str| ex.iter().filter(|e| *e == s).count();
    assert_eq!((n("load"), n("convert")), (1, 1), "{ex:?}");
    assert_eq!(n("train"), 2, "train depends only on lr: {ex:?}");
    assert_eq!(n("eval"), 6, "{ex:?}");
    assert_eq!(
        count(&ws, "SELECT count(*) FROM runs WHERE sweep_id = 1"),
        6
    );
    // Each point has its params.
    let pts: Vec<(String, String)> = {
        let conn = ws.sqlite();
        let mut st = conn
            .prepare(
                "SELECT a.value, b.value FROM params a JOIN params b ON a.run_id = b.run_id
                 WHERE a.key = 'train.lr' AND b.key = 'train.steps' ORDER BY a.run_id",
            )
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(pts.len(), 6);
    assert_eq!(pts[0], ("0.001".to_string(), "10".to_string()));
    assert_eq!(pts[5], ("0.003".to_string(), "30".to_string()));
    let list = stdout(&ws.run(&["runs", "list", "--sweep", "1"]));
    assert_eq!(list.lines().count(), 7, "{list}");
    let cmp = stdout(&ws.run(&[
        "runs", "compare", "--sweep", "1", "--best", "score", "--goal", "max",
    ]));
    assert!(
        cmp.contains("train.lr") && cmp.contains("train.steps"),
        "{cmp}"
    );
    assert!(
        !cmp.lines()
            .next()
            .unwrap()
            .contains("checkpoint.generation"),
        "{cmp}"
    );
    assert!(
        cmp.contains("best by `score` (highest): run 3 = 30"),
        "{cmp}"
    );
    let page = std::fs::read_to_string(ws.path().join("runs/sweeps/1.html")).unwrap();
    assert!(
        page.contains("<svg") && page.contains("eval.score vs train.steps"),
        "{page:.300}"
    );
    integrity_ok(&ws);
}

#[test]
fn bad_sweeps_exit_2_and_write_nothing() {
    let ws = Workspace::new();
    ws.write("p.yaml", CHAIN);
    for (args, want) in [
        (
            vec!["--sweep", "train.lrr=1,2"],
            "--sweep `train.lrr=1,2` overrides `params.train.lrr`, which the pipeline does not define (did you mean",
        ),
        (
            vec!["--sweep", "train.lr="],
            "--sweep `train.lr=` has no values",
        ),
        (
            vec!["--sweep", "train.lr=loguniform(1e-4,1e-2)"],
            "needs `--sweep-random N`",
        ),
    ] {
        let mut a = vec!["run", "p.yaml"];
        a.extend(args);
        let o = ws.run(&a);
        assert_eq!(o.status.code(), Some(2), "{a:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{a:?}: {}", stderr(&o));
    }
    assert!(!ws.db().exists(), "nothing may be written");
}

#[test]
fn rm_and_gc_keep_outputs_that_kept_runs_reuse() {
    let ws = Workspace::new();
    ws.write("p.yaml", CHAIN);
    assert_eq!(ws.run(&["run", "p.yaml", "-q"]).status.code(), Some(0));
    assert_eq!(
        ws.run(&["run", "p.yaml", "-q", "--set", "train.steps=20"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        ws.run(&["run", "p.yaml", "-q", "--set", "train.lr=0.5"])
            .status
            .code(),
        Some(0)
    );
    // Run 2 reuses load/convert/train of run 1; run 3 reuses load/convert.
    let dry = stdout(&ws.run(&["runs", "gc", "--keep-last", "2", "--dry-run"]));
    assert!(dry.contains("would remove run 1"), "{dry}");
    assert!(ws.path().join("runs/1").exists());
    let o = ws.run(&["runs", "rm", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("kept") && out.contains("reused by runs 2, 3"),
        "{out}"
    );
    integrity_ok(&ws);
    assert!(
        ws.path().join("runs/1/load/w").exists(),
        "reused output deleted"
    );
    assert!(
        !ws.path().join("runs/1/eval").exists(),
        "unreused output kept"
    );
    assert_eq!(count(&ws, "SELECT count(*) FROM runs WHERE id = 1"), 0);
    assert_eq!(
        count(&ws, "SELECT count(*) FROM stage_runs WHERE run_id = 1"),
        0
    );
    // The survivors still resume/reuse: a new identical run reuses everything.
    assert_eq!(
        ws.run(&["run", "p.yaml", "-q", "--set", "train.steps=20"])
            .status
            .code(),
        Some(0)
    );
    assert!(
        statuses(&ws, 4).iter().all(|s| s.1 == "cached"),
        "{:?}",
        statuses(&ws, 4)
    );
    assert_eq!(execs(&ws).iter().filter(|e| *e == "load").count(), 1);
    // gc of everything but the newest keeps what run 4 reuses.
    let o = ws.run(&["runs", "gc", "--keep-last", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    integrity_ok(&ws);
    let list = stdout(&ws.run(&["runs", "list"]));
    assert_eq!(list.lines().count(), 2, "{list}");
    assert!(list.lines().next().unwrap().contains("disk"), "{list}");
    let o = ws.run(&["run", "p.yaml", "-q", "--set", "train.steps=20"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        statuses(&ws, 5).iter().all(|s| s.1 == "cached"),
        "{:?}",
        statuses(&ws, 5)
    );
    // Bad gc input.
    let o = ws.run(&["runs", "gc"]);
    assert_eq!(o.status.code(), Some(2));
    let o = ws.run(&["runs", "gc", "--older-than", "soon"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--older-than `soon`"), "{}", stderr(&o));
}

#[test]
fn executor_slurm_without_sbatch_is_invalid_input() {
    let ws = Workspace::new();
    ws.write("p.yaml", CHAIN);
    let o = ws
        .cmd()
        .args(["run", "p.yaml", "--executor", "slurm"])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("`sbatch` is not on PATH"),
        "{}",
        stderr(&o)
    );
    assert!(!ws.db().exists(), "nothing may be written");
}
