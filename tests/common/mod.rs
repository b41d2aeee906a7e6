//! Shared helpers for CLI end-to-end tests: a temp workspace with a
//! pipeline file, and the real binary pointed at its own DB and runs folder.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Default for Workspace {
    fn default() -> Self {
        Workspace::new()
    }
}

impl Workspace {
    pub fn new() -> Workspace {
        Workspace {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn db(&self) -> PathBuf {
        self.path().join("runs/results.db")
    }

    /// The binary with `--db`/`--runs-dir` inside this workspace.
    pub fn cmd(&self) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_bitnet-pipeline"));
        c.current_dir(self.path());
        c.env_remove("RUST_LOG");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("binary runs")
    }

    pub fn sqlite(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.db()).expect("db opens")
    }
}

/// The repository root (the root crate's folder): pipelines, data, scripts,
/// and what scripts/setup.sh fetched (`.venv`, `.models`).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The most recently recorded value of `stage.key` in the workspace's DB.
pub fn last_metric(ws: &Workspace, stage: &str, key: &str) -> f64 {
    ws.sqlite()
        .query_row(
            "SELECT value FROM metrics WHERE stage = ?1 AND key = ?2 ORDER BY rowid DESC LIMIT 1",
            [stage, key],
            |r| r.get(0),
        )
        .unwrap_or_else(|e| panic!("metric {stage}.{key}: {e}"))
}

/// The error recorded for the latest run of `stage` ("" when none).
pub fn stage_error(ws: &Workspace, stage: &str) -> String {
    ws.sqlite()
        .query_row(
            "SELECT error FROM stage_runs WHERE stage = ?1 ORDER BY rowid DESC LIMIT 1",
            [stage],
            |r| r.get::<_, Option<String>>(0),
        )
        .unwrap()
        .unwrap_or_default()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// (stage, status, started_at, ended_at) for a run.
pub fn stage_rows(
    ws: &Workspace,
    run: i64,
) -> Vec<(String, String, Option<String>, Option<String>)> {
    let conn = ws.sqlite();
    let mut stmt = conn
        .prepare("SELECT stage, status, started_at, ended_at FROM stage_runs WHERE run_id = ?1 ORDER BY stage")
        .unwrap();
    stmt.query_map([run], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

/// Deterministic pseudo-random f32 values in [-scale, scale].
pub fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// A safetensors file of f32 tensors plus `__metadata__`.
pub fn safetensors(tensors: &[(String, Vec<usize>, Vec<f32>)], meta: &[(&str, String)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, vals) in tensors {
        let start = data.len();
        for v in vals {
            data.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let m: serde_json::Map<String, serde_json::Value> = meta
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone())))
        .collect();
    header.insert("__metadata__".into(), serde_json::Value::Object(m));
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}
