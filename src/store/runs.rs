//! The `runs` rows (and a new run's `params`): a run's identity, the process
//! that drives it, its status, and reaping runs whose runner died.

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::*;

impl Store {
    /// Records a new run with its params and one `pending` row per stage.
    pub fn create_run(&mut self, run: &NewRun) -> Result<i64> {
        let path = self.path.clone();
        let e = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let (pid, ticks) = crate::liveness::current_process();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e)?;
        tx.execute(
            "INSERT INTO runs (name, pipeline_path, pipeline_sha, pipeline_source, overrides, status,
                started_at, git_commit, git_dirty, host, device, torch_version, seed, argv, runs_dir,
                runner_pid, runner_start_ticks, sweep_id, selection, executor)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                ?18, ?19, ?20)",
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
                run.sweep_id,
                run.selection,
                run.executor,
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
        let (pid, ticks) = crate::liveness::current_process();
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

    /// Marks runs whose runner process is gone (killed, crashed, machine
    /// rebooted) as `interrupted`, and their running stages likewise, so
    /// they can be resumed. Returns the ids it changed.
    pub fn reap_stale_runs(&mut self) -> Result<Vec<i64>> {
        let host = crate::liveness::hostname();
        let stale: Vec<i64> = self
            .runs(usize::MAX >> 1)?
            .into_iter()
            .filter(|r| r.status == run_status::RUNNING)
            .filter(|r| r.host.as_deref() == Some(host.as_str()))
            .filter(|r| !crate::liveness::is_alive(r.runner_pid, r.runner_start_ticks))
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

pub(super) const RUN_COLS: &str =
    "id, name, pipeline_path, pipeline_sha, pipeline_source, overrides, status,
    started_at, ended_at, git_commit, git_dirty, host, device, torch_version, seed, argv, runs_dir,
    runner_pid, runner_start_ticks, sweep_id, selection, executor";

pub(super) fn run_from_row(r: &rusqlite::Row) -> rusqlite::Result<RunRecord> {
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
        sweep_id: r.get(19)?,
        selection: r.get(20)?,
        executor: r.get(21)?,
    })
}
