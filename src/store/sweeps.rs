//! The `sweeps` rows (issue #17): a sweep groups the runs of one
//! `run --sweep ...` invocation, one run per point, and remembers the spec
//! that generated the points.
use rusqlite::{params, OptionalExtension};

use super::runs::{run_from_row, RUN_COLS};
use super::*;

/// A sweep's row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SweepRecord {
    pub id: i64,
    pub name: String,
    pub pipeline_path: String,
    /// The sweep definition (JSON: axes, mode, seed).
    pub spec: Value,
    pub created_at: String,
}

impl Store {
    pub fn create_sweep(&mut self, name: &str, pipeline_path: &str, spec: &Value) -> Result<i64> {
        self.conn
            .execute(
                "INSERT INTO sweeps (name, pipeline_path, spec, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![name, pipeline_path, spec.to_string(), now()],
            )
            .map_err(self.err())?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn sweep(&self, id: i64) -> Result<Option<SweepRecord>> {
        self.conn
            .query_row(
                "SELECT id, name, pipeline_path, spec, created_at FROM sweeps WHERE id = ?1",
                params![id],
                |r| {
                    let spec: String = r.get(3)?;
                    Ok(SweepRecord {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        pipeline_path: r.get(2)?,
                        spec: serde_json::from_str(&spec).unwrap_or(Value::Null),
                        created_at: r.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(self.err())
    }

    /// The runs of a sweep, in point order.
    pub fn sweep_runs(&self, id: i64) -> Result<Vec<RunRecord>> {
        self.query_all(
            &format!("SELECT {RUN_COLS} FROM runs WHERE sweep_id = ?1 ORDER BY id"),
            params![id],
            run_from_row,
        )
    }
}
