//! The `stage_runs` rows: each stage's state machine (pending, running,
//! completed, cached, failed ...) and the cache look-ups on fingerprints.

use rusqlite::{params, OptionalExtension, TransactionBehavior};
use serde_json::Value;

use super::results::insert_results;
use super::*;

impl Store {
    pub fn set_stage_running(
        &mut self,
        run_id: i64,
        stage: &str,
        fingerprint: &str,
        inputs: &Value,
        output_dir: &str,
    ) -> Result<()> {
        set_running_in(
            &self.conn,
            &super::locks::StageStart {
                run_id,
                stage,
                fingerprint,
                inputs,
                output_dir,
                lock: false,
            },
        )
        .map_err(self.err())
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
        // The shared-stage lock goes in the same commit as the result, so a
        // waiter that finds the lock free also finds the result.
        tx.execute(
            "DELETE FROM stage_locks WHERE run_id = ?1 AND stage = ?2",
            params![run_id, stage],
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
        // Params the source stage reported belong to this run too (issue
        // #17 item 5), marked with the run that computed them. A pipeline
        // param of this run with the same key wins.
        tx.execute(
            "INSERT OR IGNORE INTO params (run_id, key, value, stage, reused_from)
             SELECT ?1, key, value, ?2, ?5 FROM params WHERE run_id = ?3 AND stage = ?4",
            params![run_id, stage, source.run_id, source.stage, source.run_id],
        )
        .map_err(e)?;
        tx.commit().map_err(e)
    }

    /// A stage whose batch job outlived its runner is running again under
    /// this runner (`resume`); attempts are not counted twice.
    pub fn adopt_stage(&mut self, run_id: i64, stage: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE stage_runs SET status = ?3, ended_at = NULL, error = NULL, pid = ?4
                 WHERE run_id = ?1 AND stage = ?2",
                params![run_id, stage, stage_status::RUNNING, std::process::id()],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Records the batch job a stage was submitted as.
    pub fn set_stage_job(&mut self, run_id: i64, stage: &str, job_id: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE stage_runs SET job_id = ?3, node = NULL, job_started_at = NULL,
                    job_ended_at = NULL WHERE run_id = ?1 AND stage = ?2",
                params![run_id, stage, job_id],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Records where and when a stage's batch job ran (from the job's own files).
    pub fn set_stage_job_run(
        &mut self,
        run_id: i64,
        stage: &str,
        node: Option<&str>,
        started_at: Option<&str>,
        ended_at: Option<&str>,
    ) -> Result<()> {
        self.conn
            .execute(
                "UPDATE stage_runs SET node = ?3, job_started_at = ?4, job_ended_at = ?5
                 WHERE run_id = ?1 AND stage = ?2",
                params![run_id, stage, node, started_at, ended_at],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Final non-success state of a stage (failed, skipped, interrupted).
    pub fn end_stage(
        &mut self,
        run_id: i64,
        stage: &str,
        status: &str,
        error: Option<&str>,
    ) -> Result<()> {
        // One statement batch, one implicit transaction each; the lock (if
        // this stage held one) is released with the final state.
        self.conn
            .execute(
                "UPDATE stage_runs SET status = ?3, ended_at = ?4, error = ?5 WHERE run_id = ?1 AND stage = ?2",
                params![run_id, stage, status, now(), error],
            )
            .map_err(self.err())?;
        self.conn
            .execute(
                "DELETE FROM stage_locks WHERE run_id = ?1 AND stage = ?2",
                params![run_id, stage],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// The latest completed execution with this fingerprint whose output
    /// folder still exists, if any.
    pub fn find_reusable(&self, fingerprint: &str) -> Result<Option<StageRecord>> {
        find_reusable_in(&self.conn, fingerprint).map_err(self.err())
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

    pub fn stages(&self, run_id: i64) -> Result<Vec<StageRecord>> {
        self.query_all(
            &format!("SELECT {STAGE_COLS} FROM stage_runs WHERE run_id = ?1 ORDER BY rowid"),
            params![run_id],
            stage_from_row,
        )
    }
}

pub(super) const STAGE_COLS: &str =
    "run_id, stage, kind, status, fingerprint, fingerprint_inputs, reused_from,
    started_at, ended_at, error, output_dir, attempts, job_id, node, job_started_at, job_ended_at";
pub(super) const STAGE_COLS_S: &str =
    "s.run_id, s.stage, s.kind, s.status, s.fingerprint, s.fingerprint_inputs,
    s.reused_from, s.started_at, s.ended_at, s.error, s.output_dir, s.attempts, s.job_id, s.node,
    s.job_started_at, s.job_ended_at";

pub(super) fn stage_from_row(r: &rusqlite::Row) -> rusqlite::Result<StageRecord> {
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
        job_id: r.get(12)?,
        node: r.get(13)?,
        job_started_at: r.get(14)?,
        job_ended_at: r.get(15)?,
    })
}

pub(super) fn set_running_in(
    conn: &rusqlite::Connection,
    st: &super::locks::StageStart,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE stage_runs SET status = ?3, fingerprint = ?4, fingerprint_inputs = ?5,
            output_dir = ?6, started_at = ?7, ended_at = NULL, error = NULL,
            reused_from = NULL, attempts = attempts + 1, pid = ?8, job_id = NULL,
            node = NULL, job_started_at = NULL, job_ended_at = NULL
         WHERE run_id = ?1 AND stage = ?2",
        params![
            st.run_id,
            st.stage,
            stage_status::RUNNING,
            st.fingerprint,
            st.inputs.to_string(),
            st.output_dir,
            now(),
            std::process::id()
        ],
    )?;
    Ok(())
}

pub(super) fn find_reusable_in(
    conn: &rusqlite::Connection,
    fingerprint: &str,
) -> rusqlite::Result<Option<StageRecord>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {STAGE_COLS} FROM stage_runs WHERE fingerprint = ?1 AND status = ?2
         ORDER BY run_id DESC LIMIT 20"
    ))?;
    let rows = stmt.query_map(
        params![fingerprint, stage_status::COMPLETED],
        stage_from_row,
    )?;
    for row in rows {
        let rec = row?;
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

pub(super) fn clear_stage_results(
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
    // Params a stage reported (pipeline params have no stage).
    tx.execute(
        "DELETE FROM params WHERE run_id = ?1 AND stage = ?2",
        params![run_id, stage],
    )?;
    Ok(())
}
