//! Removing runs (issue #17: `runs rm`, `runs gc`) without breaking the runs
//! that reuse their outputs. A cached stage references the output folder
//! of the run that computed it (outputs are never copied), so removing that
//! run keeps every stage folder a surviving run still points at, and moves
//! the "reused from" of the survivors to one surviving owner.
use std::collections::BTreeSet;

use rusqlite::{params, TransactionBehavior};

use super::*;

/// What removing runs means on disk.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Removal {
    /// (run id, its run folder) for each removed run.
    pub run_dirs: Vec<(i64, PathBuf)>,
    /// Stage folders that surviving runs reuse, with those runs: left on
    /// disk (they may sit in a removed run's folder or in an older one).
    pub kept_outputs: Vec<(PathBuf, Vec<i64>)>,
}

/// A removal that must not happen.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("run {0} is still running; stop it first (or wait), then remove it")]
    Running(i64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// What `remove_runs(ids)` would do, without doing it.
    pub fn plan_removal(&self, ids: &[i64]) -> Result<Removal, RemoveError> {
        let set: BTreeSet<i64> = ids.iter().copied().collect();
        let mut removal = Removal::default();
        for &id in &set {
            let run = self.run(id)?;
            if run.status == run_status::RUNNING {
                return Err(RemoveError::Running(id));
            }
            removal
                .run_dirs
                .push((id, Path::new(&run.runs_dir).join(id.to_string())));
            for st in self.stages(id)? {
                // The row cache look-ups find for a folder is the
                // `completed` one (the computing run, or after an earlier
                // removal the survivor that took over); a `cached` row only
                // points at it.
                if st.status != stage_status::COMPLETED {
                    continue;
                }
                let Some(dir) = st.output_dir.clone() else {
                    continue;
                };
                let users: Vec<i64> = self
                    .query_all(
                        "SELECT run_id FROM stage_runs WHERE output_dir = ?1 AND run_id != ?2
                         ORDER BY run_id",
                        params![dir, id],
                        |r| r.get(0),
                    )?
                    .into_iter()
                    .filter(|r| !set.contains(r))
                    .collect();
                if !users.is_empty() {
                    removal.kept_outputs.push((PathBuf::from(dir), users));
                }
            }
        }
        Ok(removal)
    }

    /// Removes the runs' rows in one transaction (the caller then deletes
    /// their folders except `kept_outputs`). Survivors that reused a removed
    /// run's stage now name the earliest surviving user as their source;
    /// that user keeps the removed run's id as where it came from, and its
    /// row becomes the one later cache look-ups find.
    pub fn remove_runs(&mut self, ids: &[i64]) -> Result<Removal, RemoveError> {
        let removal = self.plan_removal(ids)?;
        let path = self.path.clone();
        let e = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e)?;
        for (dir, users) in &removal.kept_outputs {
            let owner = users[0];
            let dir = dir.to_string_lossy();
            tx.execute(
                "UPDATE stage_runs SET status = ?3 WHERE run_id = ?1 AND output_dir = ?2",
                params![owner, dir, stage_status::COMPLETED],
            )
            .map_err(e)?;
            tx.execute(
                "UPDATE stage_runs SET reused_from = ?1 WHERE output_dir = ?2 AND run_id != ?1",
                params![owner, dir],
            )
            .map_err(e)?;
            tx.execute(
                "UPDATE params SET reused_from = ?1 WHERE run_id IN
                   (SELECT run_id FROM stage_runs WHERE output_dir = ?2 AND run_id != ?1)
                 AND stage IN (SELECT stage FROM stage_runs WHERE output_dir = ?2)
                 AND reused_from IS NOT NULL",
                params![owner, dir],
            )
            .map_err(e)?;
            tx.execute(
                "UPDATE params SET reused_from = NULL WHERE run_id = ?1
                 AND stage IN (SELECT stage FROM stage_runs WHERE output_dir = ?2 AND run_id = ?1)",
                params![owner, dir],
            )
            .map_err(e)?;
        }
        for (id, _) in &removal.run_dirs {
            for table in [
                "metrics",
                "artifacts",
                "findings",
                "targets",
                "params",
                "stage_runs",
                "stage_locks",
            ] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE run_id = ?1"),
                    params![id],
                )
                .map_err(e)?;
            }
            tx.execute("DELETE FROM runs WHERE id = ?1", params![id])
                .map_err(e)?;
        }
        tx.commit().map_err(e)?;
        Ok(removal)
    }

    /// Runs `gc` may remove: not running, not among the `keep_last` newest,
    /// started before `older_than` (RFC 3339) when given.
    pub fn gc_candidates(
        &self,
        keep_last: Option<usize>,
        older_than: Option<&str>,
    ) -> Result<Vec<i64>> {
        let runs = self.runs(usize::MAX >> 1)?;
        Ok(runs
            .iter()
            .enumerate()
            .filter(|(i, _)| keep_last.is_none_or(|k| *i >= k))
            .filter(|(_, r)| r.status != run_status::RUNNING)
            .filter(|(_, r)| older_than.is_none_or(|t| r.started_at.as_str() < t))
            .map(|(_, r)| r.id)
            .collect())
    }
}
