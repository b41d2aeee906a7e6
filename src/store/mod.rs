//! The results DB: every run, parameter, stage, metric, artifact, finding and
//! target, in one SQLite file (WAL, busy timeout, forward-only migrations).
//!
//! Only the runner process writes, and every state change is one
//! transaction, so a killed runner leaves a consistent DB: a stage is either
//! `running` (and then its runner's PID tells whether it is stale) or in a
//! final state with all its metrics and artifacts.

mod cleanup;
pub mod filter;
mod locks;
mod results;
mod runs;
pub mod schema;
mod stage_runs;
mod sweeps;

pub use cleanup::{Removal, RemoveError};
pub use locks::{Claim, LockHolder, StageStart};
pub use sweeps::SweepRecord;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};
use serde_json::Value;

/// Errors from the results DB.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("results DB `{path}`: {source}{hint}", hint = sqlite_hint(source))]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("results DB `{path}` has schema version {found}, newer than this bitnet-pipeline understands ({supported}); upgrade bitnet-pipeline or use another --db")]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("cannot create the folder for results DB `{path}`: {source}")]
    Folder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("run {0} does not exist; `bitnet-pipeline runs list` shows the runs in this DB")]
    NoSuchRun(i64),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What to do about the SQLite failures a user can fix (issue #16): a read-only
/// DB or folder, a full disk. SQLite rolls a failed transaction back, so the DB is
/// as it was before the failed command.
fn sqlite_hint(e: &rusqlite::Error) -> &'static str {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
            "; the DB file or its folder is read-only (SQLite also writes `-wal` and `-shm` files beside the DB): make both writable, or copy the DB to a writable place and pass --db; nothing was changed"
        }
        Some(ErrorCode::DiskFull) => {
            "; the disk holding the DB is full: free space (see `df` for its folder) and run again; the failed change was rolled back"
        }
        Some(ErrorCode::SystemIoFailure) => {
            "; an I/O error, most often a full disk (see `df` for the DB's folder) or a failing or network filesystem; the failed change was rolled back"
        }
        _ => "",
    }
}

/// Lifecycle of a run.
pub mod run_status {
    pub const RUNNING: &str = "running";
    pub const COMPLETED: &str = "completed";
    pub const FAILED: &str = "failed";
    pub const INTERRUPTED: &str = "interrupted";
}

/// Lifecycle of one stage within a run.
pub mod stage_status {
    pub const PENDING: &str = "pending";
    pub const RUNNING: &str = "running";
    pub const COMPLETED: &str = "completed";
    pub const CACHED: &str = "cached";
    pub const FAILED: &str = "failed";
    pub const SKIPPED: &str = "skipped";
    pub const INTERRUPTED: &str = "interrupted";

    /// States a resumed run keeps instead of re-running.
    pub fn is_done(s: &str) -> bool {
        s == COMPLETED || s == CACHED
    }
}

/// What is recorded about a run when it starts.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub name: String,
    pub pipeline_path: String,
    pub pipeline_sha: String,
    pub pipeline_source: String,
    pub overrides: Vec<String>,
    pub git_commit: Option<String>,
    pub git_dirty: Option<bool>,
    pub host: String,
    pub device: Option<String>,
    pub torch_version: Option<String>,
    pub seed: Option<i64>,
    pub argv: Vec<String>,
    pub runs_dir: String,
    pub params: Vec<(String, Value)>,
    /// (stage, kind) in topological order.
    pub stages: Vec<(String, String)>,
    /// The sweep this run is a point of.
    pub sweep_id: Option<i64>,
    /// A partial run's `--until/--only/--from`, as JSON.
    pub selection: Option<String>,
    /// `local` or `slurm`.
    pub executor: String,
}

/// A run's row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub name: String,
    pub pipeline_path: String,
    pub pipeline_sha: String,
    #[serde(skip)]
    pub pipeline_source: String,
    pub overrides: Vec<String>,
    pub status: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub git_commit: Option<String>,
    pub git_dirty: Option<bool>,
    pub host: Option<String>,
    pub device: Option<String>,
    pub torch_version: Option<String>,
    pub seed: Option<i64>,
    pub argv: Vec<String>,
    pub runs_dir: String,
    pub runner_pid: Option<i64>,
    pub runner_start_ticks: Option<i64>,
    pub sweep_id: Option<i64>,
    /// A partial run's `--until/--only/--from`, as JSON.
    pub selection: Option<String>,
    /// `local` or `slurm` (None for runs recorded before issue #17).
    pub executor: Option<String>,
}

/// A stage's row within a run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StageRecord {
    pub run_id: i64,
    pub stage: String,
    pub kind: String,
    pub status: String,
    pub fingerprint: Option<String>,
    pub fingerprint_inputs: Option<Value>,
    pub reused_from: Option<i64>,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub error: Option<String>,
    pub output_dir: Option<String>,
    pub attempts: i64,
    /// Slurm job id and node, when the stage ran as a batch job.
    pub job_id: Option<String>,
    pub node: Option<String>,
    /// When the job itself started and ended (written by the job).
    pub job_started_at: Option<String>,
    pub job_ended_at: Option<String>,
}

/// One metric value.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Metric {
    pub key: String,
    #[serde(default)]
    pub step: Option<i64>,
    pub value: f64,
    #[serde(default)]
    pub unit: Option<String>,
    /// How it was measured (device, threads, dtype...), as JSON.
    #[serde(default)]
    pub meta: Option<Value>,
}

/// One file a stage produced.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Artifact {
    /// Path relative to the stage's output folder.
    pub name: String,
    /// Absolute path.
    pub path: String,
    pub hash: String,
    pub bytes: i64,
}

/// One finding of a code check.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Finding {
    pub rule: String,
    pub severity: String,
    pub file: String,
    pub line: Option<i64>,
    pub column: Option<i64>,
    pub message: String,
}

/// One validated target.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Target {
    pub name: String,
    pub metric: String,
    pub op: String,
    pub threshold: f64,
    pub value: Option<f64>,
    pub passed: bool,
}

/// Everything a successful stage reports, written in one transaction.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct StageResults {
    pub metrics: Vec<Metric>,
    pub artifacts: Vec<Artifact>,
    /// Run-level params a stage discovered (e.g. checkpoint metadata).
    pub params: Vec<(String, Value)>,
    pub findings: Vec<Finding>,
    pub targets: Vec<Target>,
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The results DB.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) and migrates the DB at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::Folder {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let conn = Connection::open(path).map_err(|source| StoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        })?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
        };
        // Before anything that writes (WAL mode rewrites the file header): a DB
        // from a newer version is refused untouched.
        store.refuse_newer_schema()?;
        store.configure()?;
        store.migrate()?;
        Ok(store)
    }

    /// Opens an existing DB for reading; a missing file is an error that says
    /// how to create one, rather than an empty DB appearing.
    pub fn open_existing(path: &Path) -> Result<Store> {
        if !path.exists() {
            return Err(StoreError::Sqlite {
                path: path.to_path_buf(),
                source: rusqlite::Error::InvalidPath(path.to_path_buf()),
            });
        }
        Store::open(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Runs a query and maps every row; the shape all list queries share.
    fn query_all<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        map: impl FnMut(&rusqlite::Row) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(self.err())?;
        let rows = stmt.query_map(params, map).map_err(self.err())?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err())
    }

    /// A DB whose schema is newer than this binary's is an error that changes nothing.
    fn refuse_newer_schema(&self) -> Result<()> {
        let found: u32 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(self.err())?;
        let supported = schema::latest_version();
        if found > supported {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found,
                supported,
            });
        }
        Ok(())
    }

    fn configure(&mut self) -> Result<()> {
        self.conn
            .busy_timeout(Duration::from_secs(30))
            .map_err(self.err())?;
        // Switching a new DB to WAL needs a moment of exclusive access, and
        // SQLite answers SQLITE_BUSY to it without consulting the busy
        // handler; two runners starting on a fresh DB at the same time hit
        // that (issue #2, seen 1 in 40). Retry for as long as busy_timeout.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match self.conn.execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
            ) {
                Ok(()) => return Ok(()),
                Err(rusqlite::Error::SqliteFailure(f, _))
                    if f.code == rusqlite::ErrorCode::DatabaseBusy
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(self.err()(e)),
            }
        }
    }

    fn migrate(&mut self) -> Result<()> {
        let path = self.path.clone();
        let e = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e)?;
        let version: u32 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(e)?;
        let latest = schema::latest_version();
        if version > latest {
            return Err(StoreError::TooNew {
                path: path.clone(),
                found: version,
                supported: latest,
            });
        }
        for (i, sql) in schema::MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql).map_err(e)?;
            tx.pragma_update(None, "user_version", (i + 1) as u32)
                .map_err(e)?;
        }
        tx.commit().map_err(e)
    }

    /// Schema version of the open DB.
    pub fn schema_version(&self) -> Result<u32> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(self.err())
    }

    /// `PRAGMA integrity_check` result ("ok" when healthy).
    pub fn integrity_check(&self) -> Result<String> {
        self.conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(self.err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_run() -> NewRun {
        NewRun {
            name: "p".into(),
            pipeline_path: "/p.yaml".into(),
            pipeline_sha: "abc".into(),
            pipeline_source: "version: 1".into(),
            overrides: vec!["a=1".into()],
            git_commit: None,
            git_dirty: None,
            host: "h".into(),
            device: None,
            torch_version: None,
            seed: Some(1),
            argv: vec!["x".into()],
            runs_dir: "/r".into(),
            params: vec![("a".into(), serde_json::json!(1))],
            stages: vec![("s".into(), "command".into())],
            sweep_id: None,
            selection: None,
            executor: "local".into(),
        }
    }

    #[test]
    fn migrates_fresh_db_to_latest_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/results.db");
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), schema::latest_version());
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.integrity_check().unwrap(), "ok");
    }

    #[test]
    fn a_version_1_db_migrates_forward_keeping_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(schema::MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute_batch(
                "INSERT INTO runs (name, pipeline_path, pipeline_sha, pipeline_source, status,
                    started_at, argv, runs_dir) VALUES ('p', '/p', 'x', '', 'completed', 't', '[]', '/r');
                 INSERT INTO params (run_id, key, value) VALUES (1, 'checkpoint.generation', '12');",
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), schema::latest_version());
        let run = store.run(1).unwrap();
        assert_eq!((run.sweep_id, run.executor), (None, None));
        assert_eq!(store.params(1).unwrap().len(), 1);
        assert!(store.reused_params(1).unwrap().is_empty());
        assert_eq!(store.integrity_check().unwrap(), "ok");
    }

    #[test]
    fn refuses_a_db_from_a_newer_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 999)
            .unwrap();
        let before = std::fs::read(&path).unwrap();
        let err = Store::open(&path).err().expect("must refuse");
        assert!(err.to_string().contains("newer"), "{err}");
        // Refused before WAL mode was switched on (it rewrites the header; issue #16).
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "the refused DB was modified"
        );
        assert!(!dir.path().join("results.db-wal").exists());
    }

    #[test]
    fn stage_results_round_trip_and_cache_copies_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("r.db")).unwrap();
        let run = store.create_run(&new_run()).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        store
            .set_stage_running(
                run,
                "s",
                "fp1",
                &serde_json::json!({}),
                out.to_str().unwrap(),
            )
            .unwrap();
        let results = StageResults {
            metrics: vec![Metric {
                key: "loss".into(),
                step: Some(3),
                value: 1.5,
                unit: None,
                meta: None,
            }],
            ..Default::default()
        };
        store.complete_stage(run, "s", &results).unwrap();
        let source = store.find_reusable("fp1").unwrap().expect("reusable");
        assert_eq!(source.run_id, run);
        let run2 = store.create_run(&new_run()).unwrap();
        store
            .cache_stage(run2, "s", &source, "fp1", &serde_json::json!({}))
            .unwrap();
        let m = store.metrics(run2).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].1.value, 1.5);
        let st = &store.stages(run2).unwrap()[0];
        assert_eq!(st.status, stage_status::CACHED);
        assert_eq!(st.reused_from, Some(run));
        assert_eq!(store.params(run2).unwrap()[0].0, "a");
    }
}
