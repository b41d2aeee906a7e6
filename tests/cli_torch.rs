//! Stage kinds that run in the libtorch plugin, through the real binary
//! (issue #2: torch stages run as `exec-stage` children that dlopen
//! `libbitnet_torch.so`). Needs `cargo build --workspace` first, which
//! `make test` does.
mod common;
use common::*;

#[test]
fn device_info_runs_in_the_plugin_and_records_metrics() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        "version: 1\nname: dev\nparams: {device: cpu}\nstages:\n  info:\n    uses: device_info\n",
    );
    let o = ws.run(&["run", "p.yaml", "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let conn = ws.sqlite();
    let threads: f64 = conn
        .query_row(
            "SELECT value FROM metrics WHERE stage = 'info' AND key = 'cpu_threads'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(threads >= 1.0);
    let device: String = conn
        .query_row(
            "SELECT value FROM params WHERE key = 'runtime.device'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(device, "\"cpu\"");
    // Measurement-like: never cached.
    assert_eq!(ws.run(&["run", "p.yaml", "-q"]).status.code(), Some(0));
    assert_eq!(stage_rows(&ws, 2)[0].1, "completed");
}

#[test]
fn a_missing_cuda_device_fails_the_stage_clearly() {
    if std::path::Path::new("/dev/nvidia0").exists() {
        return; // only meaningful without a GPU
    }
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        "version: 1\nname: dev\nstages:\n  info:\n    uses: device_info\n    device: cuda\n",
    );
    let o = ws.run(&["run", "p.yaml", "-q"]);
    assert_eq!(o.status.code(), Some(1));
    let err: String = ws
        .sqlite()
        .query_row(
            "SELECT error FROM stage_runs WHERE stage = 'info'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        err.contains("device `cuda` requested but libtorch sees no CUDA device"),
        "{err}"
    );
}
