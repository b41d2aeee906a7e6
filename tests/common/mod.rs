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
