//! The results DB: every run, parameter, stage, metric, artifact, finding and
//! target, in one SQLite file (WAL, busy timeout, forward-only migrations).
//!
//! Only the runner process writes, and every state change is one
//! transaction, so a killed runner leaves a consistent DB: a stage is either
//! `running` (and then its runner's PID tells whether it is stale) or in a
//! final state with all its metrics and artifacts.

pub mod filter;
pub mod schema;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde_json::Value;

/// Errors from the results DB.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("results DB `{path}`: {source}")]
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
}

/// A stage's row within a run.
#[derive(Debug, Clone, serde::Serialize)]
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

    /// Records a new run with its params and one `pending` row per stage.
    pub fn create_run(&mut self, run: &NewRun) -> Result<i64> {
        let path = self.path.clone();
        let e = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let (pid, ticks) = crate::engine::liveness::current_process();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e)?;
        tx.execute(
            "INSERT INTO runs (name, pipeline_path, pipeline_sha, pipeline_source, overrides, status,
                started_at, git_commit, git_dirty, host, device, torch_version, seed, argv, runs_dir,
                runner_pid, runner_start_ticks)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            params![
                run.name,
                run.pipeline_path,
                run.pipeline_sha,
                run.pipeline_source,
                serde_json::to_string(&run.overrides).unwrap_or_default(),
                run_status::RUNNING,
                now(),
                run.git_commit,
                run.git_dirty,
                run.host,
                run.device,
                run.torch_version,
                run.seed,
                serde_json::to_string(&run.argv).unwrap_or_default(),
                run.runs_dir,
                pid,
                ticks,
            ],
        )
        .map_err(e)?;
        let id = tx.last_insert_rowid();
        for (k, v) in &run.params {
            tx.execute(
                "INSERT OR REPLACE INTO params (run_id, key, value) VALUES (?1, ?2, ?3)",
                params![id, k, v.to_string()],
            )
            .map_err(e)?;
        }
        for (stage, kind) in &run.stages {
            tx.execute(
                "INSERT INTO stage_runs (run_id, stage, kind, status) VALUES (?1, ?2, ?3, ?4)",
                params![id, stage, kind, stage_status::PENDING],
            )
            .map_err(e)?;
        }
        tx.commit().map_err(e)?;
        Ok(id)
    }

    /// Marks a run as being driven by this process again (for `resume`).
    pub fn claim_run(&mut self, run_id: i64, argv: &[String]) -> Result<()> {
        let (pid, ticks) = crate::engine::liveness::current_process();
        self.conn
            .execute(
                "UPDATE runs SET status = ?2, ended_at = NULL, runner_pid = ?3, runner_start_ticks = ?4,
                    argv = ?5 WHERE id = ?1",
                params![
                    run_id,
                    run_status::RUNNING,
                    pid,
                    ticks,
                    serde_json::to_string(argv).unwrap_or_default()
                ],
            )
            .map_err(self.err())?;
        Ok(())
    }

    pub fn set_stage_running(
        &mut self,
        run_id: i64,
        stage: &str,
        fingerprint: &str,
        inputs: &Value,
        output_dir: &str,
    ) -> Result<()> {
        self.conn
            .execute(
                "UPDATE stage_runs SET status = ?3, fingerprint = ?4, fingerprint_inputs = ?5,
                    output_dir = ?6, started_at = ?7, ended_at = NULL, error = NULL,
                    reused_from = NULL, attempts = attempts + 1, pid = ?8
                 WHERE run_id = ?1 AND stage = ?2",
                params![
                    run_id,
                    stage,
                    stage_status::RUNNING,
                    fingerprint,
                    inputs.to_string(),
                    output_dir,
                    now(),
                    std::process::id()
                ],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Records a completed stage and everything it reported, atomically.
    pub fn complete_stage(
        &mut self,
        run_id: i64,
        stage: &str,
        results: &StageResults,
    ) -> Result<()> {
        let path = self.path.clone();
        let e = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e)?;
        clear_stage_results(&tx, run_id, stage).map_err(e)?;
        insert_results(&tx, run_id, stage, results, &now()).map_err(e)?;
        tx.execute(
            "UPDATE stage_runs SET status = ?3, ended_at = ?4, error = NULL WHERE run_id = ?1 AND stage = ?2",
            params![run_id, stage, stage_status::COMPLETED, now()],
        )
        .map_err(e)?;
        tx.commit().map_err(e)
    }

    /// Records that a stage reused the outputs of an earlier identical stage:
    /// its artifacts are referenced (same paths) and its metrics copied, so
    /// this run is complete on its own.
    pub fn cache_stage(
        &mut self,
        run_id: i64,
        stage: &str,
        source: &StageRecord,
        fingerprint: &str,
        inputs: &Value,
    ) -> Result<()> {
        let path = self.path.clone();
        let e = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e)?;
        clear_stage_results(&tx, run_id, stage).map_err(e)?;
        let t = now();
        tx.execute(
            "UPDATE stage_runs SET status = ?3, fingerprint = ?4, fingerprint_inputs = ?5,
                reused_from = ?6, output_dir = ?7, started_at = ?8, ended_at = ?8, error = NULL
             WHERE run_id = ?1 AND stage = ?2",
            params![
                run_id,
                stage,
                stage_status::CACHED,
                fingerprint,
                inputs.to_string(),
                source.run_id,
                source.output_dir,
                t
            ],
        )
        .map_err(e)?;
        for table in ["metrics", "artifacts", "findings", "targets"] {
            let cols = match table {
                "metrics" => "key, step, value, unit, recorded_at, meta",
                "artifacts" => "name, path, hash, bytes",
                "findings" => "rule, severity, file, line, column, message",
                _ => "name, metric, op, threshold, value, passed",
            };
            tx.execute(
                &format!(
                    "INSERT INTO {table} (run_id, stage, {cols}) SELECT ?1, ?2, {cols} FROM {table}
                     WHERE run_id = ?3 AND stage = ?4"
                ),
                params![run_id, stage, source.run_id, source.stage],
            )
            .map_err(e)?;
        }
        tx.commit().map_err(e)
    }

    /// Final non-success state of a stage (failed, skipped, interrupted).
    pub fn end_stage(
        &mut self,
        run_id: i64,
        stage: &str,
        status: &str,
        error: Option<&str>,
    ) -> Result<()> {
        self.conn
            .execute(
                "UPDATE stage_runs SET status = ?3, ended_at = ?4, error = ?5 WHERE run_id = ?1 AND stage = ?2",
                params![run_id, stage, status, now(), error],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Final status of a run.
    pub fn finish_run(&mut self, run_id: i64, status: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE runs SET status = ?2, ended_at = ?3 WHERE id = ?1",
                params![run_id, status, now()],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// The earliest completed execution with this fingerprint whose output
    /// folder still exists, if any.
    pub fn find_reusable(&self, fingerprint: &str) -> Result<Option<StageRecord>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {STAGE_COLS} FROM stage_runs WHERE fingerprint = ?1 AND status = ?2
                 ORDER BY run_id DESC LIMIT 20"
            ))
            .map_err(self.err())?;
        let rows = stmt
            .query_map(
                params![fingerprint, stage_status::COMPLETED],
                stage_from_row,
            )
            .map_err(self.err())?;
        for row in rows {
            let rec = row.map_err(self.err())?;
            if rec
                .output_dir
                .as_deref()
                .is_some_and(|d| Path::new(d).is_dir())
            {
                return Ok(Some(rec));
            }
        }
        Ok(None)
    }

    /// The most recent finished execution of a stage of a pipeline with this
    /// name (what `plan` compares against to say why a stage re-runs).
    pub fn last_execution(&self, pipeline: &str, stage: &str) -> Result<Option<StageRecord>> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {STAGE_COLS_S} FROM stage_runs s JOIN runs r ON r.id = s.run_id
                     WHERE r.name = ?1 AND s.stage = ?2 AND s.status IN ('completed', 'cached')
                     ORDER BY s.run_id DESC LIMIT 1"
                ),
                params![pipeline, stage],
                stage_from_row,
            )
            .optional()
            .map_err(self.err())
    }

    pub fn run(&self, run_id: i64) -> Result<RunRecord> {
        self.conn
            .query_row(
                &format!("SELECT {RUN_COLS} FROM runs WHERE id = ?1"),
                params![run_id],
                run_from_row,
            )
            .optional()
            .map_err(self.err())?
            .ok_or(StoreError::NoSuchRun(run_id))
    }

    /// Runs, newest first.
    pub fn runs(&self, limit: usize) -> Result<Vec<RunRecord>> {
        self.query_all(
            &format!("SELECT {RUN_COLS} FROM runs ORDER BY id DESC LIMIT ?1"),
            params![limit as i64],
            run_from_row,
        )
    }

    pub fn stages(&self, run_id: i64) -> Result<Vec<StageRecord>> {
        self.query_all(
            &format!("SELECT {STAGE_COLS} FROM stage_runs WHERE run_id = ?1 ORDER BY rowid"),
            params![run_id],
            stage_from_row,
        )
    }

    pub fn params(&self, run_id: i64) -> Result<Vec<(String, Value)>> {
        self.query_all(
            "SELECT key, value FROM params WHERE run_id = ?1 ORDER BY key",
            params![run_id],
            |r| {
                let k: String = r.get(0)?;
                let v: String = r.get(1)?;
                Ok((k, serde_json::from_str(&v).unwrap_or(Value::String(v))))
            },
        )
    }

    /// All metric rows of a run: (stage, metric), in recording order.
    pub fn metrics(&self, run_id: i64) -> Result<Vec<(String, Metric)>> {
        self.query_all("SELECT stage, key, step, value, unit, meta FROM metrics WHERE run_id = ?1 ORDER BY rowid", params![run_id], |r| {
                let meta: Option<String> = r.get(5)?;
                Ok((
                    r.get::<_, String>(0)?,
                    Metric {
                        key: r.get(1)?,
                        step: r.get(2)?,
                        value: r.get(3)?,
                        unit: r.get(4)?,
                        meta: meta.and_then(|m| serde_json::from_str(&m).ok()),
                    },
                ))
            })
    }

    pub fn artifacts(&self, run_id: i64) -> Result<Vec<(String, Artifact)>> {
        self.query_all("SELECT stage, name, path, hash, bytes FROM artifacts WHERE run_id = ?1 ORDER BY stage, name", params![run_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Artifact {
                        name: r.get(1)?,
                        path: r.get(2)?,
                        hash: r.get(3)?,
                        bytes: r.get(4)?,
                    },
                ))
            })
    }

    /// All findings of a run: (stage, finding), by stage, file and line.
    pub fn findings(&self, run_id: i64) -> Result<Vec<(String, Finding)>> {
        self.query_all(
            "SELECT stage, rule, severity, file, line, column, message FROM findings
                 WHERE run_id = ?1 ORDER BY stage, rule, file, line, rowid",
            params![run_id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Finding {
                        rule: r.get(1)?,
                        severity: r.get(2)?,
                        file: r.get(3)?,
                        line: r.get(4)?,
                        column: r.get(5)?,
                        message: r.get(6)?,
                    },
                ))
            },
        )
    }

    /// All validated targets of a run: (stage, target), in recording order.
    pub fn targets(&self, run_id: i64) -> Result<Vec<(String, Target)>> {
        self.query_all(
            "SELECT stage, name, metric, op, threshold, value, passed FROM targets
                 WHERE run_id = ?1 ORDER BY rowid",
            params![run_id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Target {
                        name: r.get(1)?,
                        metric: r.get(2)?,
                        op: r.get(3)?,
                        threshold: r.get(4)?,
                        value: r.get(5)?,
                        passed: r.get::<_, i64>(6)? != 0,
                    },
                ))
            },
        )
    }

    /// Marks runs whose runner process is gone (killed, crashed, machine
    /// rebooted) as `interrupted`, and their running stages likewise, so
    /// they can be resumed. Returns the ids it changed.
    pub fn reap_stale_runs(&mut self) -> Result<Vec<i64>> {
        let host = crate::engine::liveness::hostname();
        let stale: Vec<i64> = self
            .runs(usize::MAX >> 1)?
            .into_iter()
            .filter(|r| r.status == run_status::RUNNING)
            .filter(|r| r.host.as_deref() == Some(host.as_str()))
            .filter(|r| !crate::engine::liveness::is_alive(r.runner_pid, r.runner_start_ticks))
            .map(|r| r.id)
            .collect();
        for id in &stale {
            let path = self.path.clone();
            let e = |source| StoreError::Sqlite {
                path: path.clone(),
                source,
            };
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(e)?;
            tx.execute(
                "UPDATE stage_runs SET status = ?2, ended_at = ?3, error = 'runner process died'
                 WHERE run_id = ?1 AND status = 'running'",
                params![id, stage_status::INTERRUPTED, now()],
            )
            .map_err(e)?;
            tx.execute(
                "UPDATE runs SET status = ?2, ended_at = ?3 WHERE id = ?1 AND status = 'running'",
                params![id, run_status::INTERRUPTED, now()],
            )
            .map_err(e)?;
            tx.commit().map_err(e)?;
        }
        Ok(stale)
    }
}

const RUN_COLS: &str = "id, name, pipeline_path, pipeline_sha, pipeline_source, overrides, status,
    started_at, ended_at, git_commit, git_dirty, host, device, torch_version, seed, argv, runs_dir,
    runner_pid, runner_start_ticks";
const STAGE_COLS: &str =
    "run_id, stage, kind, status, fingerprint, fingerprint_inputs, reused_from,
    started_at, ended_at, error, output_dir, attempts";
const STAGE_COLS_S: &str =
    "s.run_id, s.stage, s.kind, s.status, s.fingerprint, s.fingerprint_inputs,
    s.reused_from, s.started_at, s.ended_at, s.error, s.output_dir, s.attempts";

fn run_from_row(r: &rusqlite::Row) -> rusqlite::Result<RunRecord> {
    let overrides: String = r.get(5)?;
    let argv: String = r.get(15)?;
    Ok(RunRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        pipeline_path: r.get(2)?,
        pipeline_sha: r.get(3)?,
        pipeline_source: r.get(4)?,
        overrides: serde_json::from_str(&overrides).unwrap_or_default(),
        status: r.get(6)?,
        started_at: r.get(7)?,
        ended_at: r.get(8)?,
        git_commit: r.get(9)?,
        git_dirty: r.get(10)?,
        host: r.get(11)?,
        device: r.get(12)?,
        torch_version: r.get(13)?,
        seed: r.get(14)?,
        argv: serde_json::from_str(&argv).unwrap_or_default(),
        runs_dir: r.get(16)?,
        runner_pid: r.get(17)?,
        runner_start_ticks: r.get(18)?,
    })
}

fn stage_from_row(r: &rusqlite::Row) -> rusqlite::Result<StageRecord> {
    let inputs: Option<String> = r.get(5)?;
    Ok(StageRecord {
        run_id: r.get(0)?,
        stage: r.get(1)?,
        kind: r.get(2)?,
        status: r.get(3)?,
        fingerprint: r.get(4)?,
        fingerprint_inputs: inputs.and_then(|s| serde_json::from_str(&s).ok()),
        reused_from: r.get(6)?,
        started_at: r.get(7)?,
        ended_at: r.get(8)?,
        error: r.get(9)?,
        output_dir: r.get(10)?,
        attempts: r.get(11)?,
    })
}

fn clear_stage_results(
    tx: &rusqlite::Transaction,
    run_id: i64,
    stage: &str,
) -> rusqlite::Result<()> {
    for table in ["metrics", "artifacts", "findings", "targets"] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE run_id = ?1 AND stage = ?2"),
            params![run_id, stage],
        )?;
    }
    Ok(())
}

fn insert_results(
    tx: &rusqlite::Transaction,
    run_id: i64,
    stage: &str,
    res: &StageResults,
    t: &str,
) -> rusqlite::Result<()> {
    for m in &res.metrics {
        tx.execute(
            "INSERT INTO metrics (run_id, stage, key, step, value, unit, recorded_at, meta)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                run_id,
                stage,
                m.key,
                m.step,
                m.value,
                m.unit,
                t,
                m.meta.as_ref().map(|v| v.to_string())
            ],
        )?;
    }
    for a in &res.artifacts {
        tx.execute(
            "INSERT OR REPLACE INTO artifacts (run_id, stage, name, path, hash, bytes) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![run_id, stage, a.name, a.path, a.hash, a.bytes],
        )?;
    }
    for (k, v) in &res.params {
        tx.execute(
            "INSERT OR REPLACE INTO params (run_id, key, value) VALUES (?1, ?2, ?3)",
            params![run_id, k, v.to_string()],
        )?;
    }
    for f in &res.findings {
        tx.execute(
            "INSERT INTO findings (run_id, stage, rule, severity, file, line, column, message)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![run_id, stage, f.rule, f.severity, f.file, f.line, f.column, f.message],
        )?;
    }
    for tgt in &res.targets {
        tx.execute(
            "INSERT INTO targets (run_id, stage, name, metric, op, threshold, value, passed)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                run_id,
                stage,
                tgt.name,
                tgt.metric,
                tgt.op,
                tgt.threshold,
                tgt.value,
                tgt.passed
            ],
        )?;
    }
    Ok(())
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
    fn refuses_a_db_from_a_newer_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 999)
            .unwrap();
        let err = Store::open(&path).err().expect("must refuse");
        assert!(err.to_string().contains("newer"), "{err}");
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
