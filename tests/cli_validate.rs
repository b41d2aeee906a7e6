//! Invalid pipelines: exit 2, a message naming file, line and column, and
//! nothing written to the DB (issue #2).
mod common;
use common::*;

/// Runs `validate` and `run` on `text`; both must fail with exit 2 and the
/// same message, and no DB may appear.
fn invalid(text: &str) -> String {
    let ws = Workspace::new();
    ws.write("p.yaml", text);
    let v = ws.run(&["validate", "p.yaml"]);
    assert_eq!(v.status.code(), Some(2), "validate: {}", stderr(&v));
    let r = ws.run(&["run", "p.yaml"]);
    assert_eq!(r.status.code(), Some(2), "run: {}", stderr(&r));
    assert_eq!(stderr(&v), stderr(&r));
    assert!(
        !ws.db().exists(),
        "an invalid pipeline must not create the DB"
    );
    assert!(!ws.path().join("runs").exists());
    stderr(&v)
}

#[test]
fn unknown_key_has_location_and_suggestion() {
    let err = invalid(
        "version: 1\nname: t\nstages:\n  a:\n    uses: command\n    with: {cmd: 'true'}\n  train:\n    uses: command\n    nedds: [a]\n    with: {cmd: 'true'}\n",
    );
    assert!(
        err.contains(
            "error: unknown key `nedds` in stage `train` (did you mean `needs`?)\n  --> p.yaml:9:5"
        ),
        "{err}"
    );
}

#[test]
fn cycle_prints_the_full_path() {
    let err = invalid(
        "version: 1\nname: t\nstages:\n  load:\n    uses: command\n    needs: [eval]\n    with: {cmd: 'true'}\n  train:\n    uses: command\n    needs: [load]\n    with: {cmd: 'true'}\n  eval:\n    uses: command\n    needs: [train]\n    with: {cmd: 'true'}\n",
    );
    assert!(
        err.contains("the stages form a cycle: load -> eval -> train -> load")
            || err.contains("the stages form a cycle: load -> train -> eval -> load"),
        "{err}"
    );
    assert!(err.contains("--> p.yaml:6:12"), "{err}");
}

#[test]
fn unknown_kind_lists_known_kinds() {
    let err = invalid("version: 1\nname: t\nstages:\n  a:\n    uses: comand\n");
    assert!(
        err.contains("unknown stage kind `comand` in stage `a` (did you mean `command`?)"),
        "{err}"
    );
    assert!(err.contains("--> p.yaml:5:11"), "{err}");
    assert!(err.contains("known kinds: command"), "{err}");
}

#[test]
fn unknown_needs_names_the_missing_stage() {
    let err = invalid(
        "version: 1\nname: t\nstages:\n  convert:\n    uses: command\n    with: {cmd: 'true'}\n  train:\n    uses: command\n    needs: [convrt]\n    with: {cmd: 'true'}\n",
    );
    assert!(
        err.contains("stage `train` needs `convrt`, which is not defined (did you mean `convert`?)\n  --> p.yaml:9:13"),
        "{err}"
    );
}

#[test]
fn wrong_type_names_the_key() {
    let err = invalid("version: 1\nname: t\nstages:\n  a:\n    uses: command\n    retries: many\n    with: {cmd: 'true'}\n");
    assert!(
        err.contains("stage `a`: `retries`: invalid type: string \"many\""),
        "{err}"
    );
    assert!(err.contains("--> p.yaml:6:14"), "{err}");
    let err = invalid(
        "version: 1\nname: t\nstages:\n  a:\n    uses: command\n    with:\n      cmd: [1, 2]\n",
    );
    assert!(
        err.contains("stage `a` (`command`): invalid type: sequence, expected a string"),
        "{err}"
    );
    assert!(err.contains("--> p.yaml:7:12"), "{err}");
}

#[test]
fn bad_interpolation_is_located() {
    let err = invalid(
        "version: 1\nname: t\nparams:\n  train: {steps: 3}\nstages:\n  a:\n    uses: command\n    with:\n      cmd: \"echo ${params.train.stpes}\"\n",
    );
    assert!(
        err.contains("`${params.train.stpes}` refers to a parameter that is not defined (did you mean `params.train.steps`?)"),
        "{err}"
    );
    assert!(err.contains("--> p.yaml:9:12"), "{err}");
    let err = invalid("version: 1\nname: t\nstages:\n  a:\n    uses: command\n    with: {cmd: \"echo ${params.x\"}\n");
    assert!(err.contains("unterminated `${`"), "{err}");
}

#[test]
fn duplicate_stage_is_reported_with_both_lines() {
    let err = invalid(
        "version: 1\nname: t\nstages:\n  a:\n    uses: command\n    with: {cmd: 'true'}\n  a:\n    uses: command\n    with: {cmd: 'true'}\n",
    );
    assert!(
        err.contains("duplicate stage `a` (first defined on line 4)\n  --> p.yaml:7:3"),
        "{err}"
    );
}

#[test]
fn empty_file_and_non_yaml() {
    let err = invalid("");
    assert!(
        err.contains("pipeline file `p.yaml` is empty\n  --> p.yaml:1:1"),
        "{err}"
    );
    let err = invalid("version: 1\nstages: [a\n  b: {\n");
    assert!(err.starts_with("error: not valid YAML"), "{err}");
    assert!(err.contains("--> p.yaml:"), "{err}");
}

#[test]
fn all_errors_are_reported_at_once() {
    let err = invalid(
        "version: 1\nname: t\nstages:\n  a:\n    uses: nope\n  b:\n    uses: command\n    nedds: [a]\n",
    );
    assert!(err.contains("unknown stage kind `nope`"), "{err}");
    assert!(err.contains("unknown key `nedds`"), "{err}");
    assert!(err.trim_end().ends_with("2 errors"), "{err}");
}

#[test]
fn bad_set_override_is_invalid_input() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        "version: 1\nname: t\nparams: {train: {lr: 0.1}}\nstages:\n  a:\n    uses: command\n    with: {cmd: 'true'}\n",
    );
    let o = ws.run(&["run", "p.yaml", "--set", "train.rl=3"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("did you mean `lr`"), "{}", stderr(&o));
    assert!(!ws.db().exists());
}

#[test]
fn valid_pipeline_validates_and_renders_its_dag() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        "version: 1\nname: t\nstages:\n  a:\n    uses: command\n    with: {cmd: 'true'}\n  b:\n    uses: command\n    needs: a\n    with: {cmd: 'true'}\n",
    );
    let o = ws.run(&["validate", "p.yaml"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("ok: `p.yaml` is valid (2 stages: a -> b)"));
    let o = ws.run(&["dag", "p.yaml", "--format", "mermaid"]);
    assert_eq!(
        stdout(&o),
        "flowchart LR\n  s0[\"a<br/>(command)\"]\n  s1[\"b<br/>(command)\"]\n  s0 --> s1\n"
    );
    let o = ws.run(&["dag", "p.yaml", "--format", "dot"]);
    assert!(stdout(&o).contains("\"a\" -> \"b\";"));
    assert!(!ws.db().exists());
}
