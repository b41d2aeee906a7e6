//! What stages report: params, metrics, artifacts, findings and targets,
//! written with their stage in one transaction and read back per run.

use rusqlite::params;
use serde_json::Value;

use super::*;

impl Store {
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

    /// Params that a stage reported and that this run has because it
    /// reused that stage: key -> the run that computed them.
    pub fn reused_params(&self, run_id: i64) -> Result<Vec<(String, i64)>> {
        self.query_all(
            "SELECT key, reused_from FROM params WHERE run_id = ?1 AND reused_from IS NOT NULL
             ORDER BY key",
            params![run_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
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
}

pub(super) fn insert_results(
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
            "INSERT OR REPLACE INTO params (run_id, key, value, stage) VALUES (?1, ?2, ?3, ?4)",
            params![run_id, k, v.to_string(), stage],
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
