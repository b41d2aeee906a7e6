//! The shared-stage lock (issue #17): one row per fingerprint being computed
//! right now, so two runs (or sweep points, or runner processes on one DB)
//! that need the same stage compute it once; the others wait and reuse it.
//!
//! A lock names the runner process holding it (host, PID and start time);
//! a lock whose runner died (kill -9, crash) is stale and the next runner
//! that asks takes it over, in the same transaction that finds it stale.
use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::*;

/// Who holds a fingerprint's lock.
#[derive(Debug, Clone, PartialEq)]
pub struct LockHolder {
    pub run_id: i64,
    pub stage: String,
    pub host: String,
    pub pid: i64,
}

/// The answer to a lock request.
#[derive(Debug, Clone, PartialEq)]
pub enum LockAttempt {
    /// This runner holds it now; `took_over` names a dead holder it replaced.
    Acquired { took_over: Option<LockHolder> },
    /// A live runner computes it; wait, then look in the cache again.
    Held(LockHolder),
}

impl Store {
    /// Takes the lock on `fingerprint` for (`run_id`, `stage`), unless a live
    /// runner holds it. Re-entrant for the same (run, stage).
    pub fn try_lock_stage(
        &mut self,
        fingerprint: &str,
        run_id: i64,
        stage: &str,
    ) -> Result<LockAttempt> {
        let path = self.path.clone();
        let e = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let host = crate::liveness::hostname();
        let (pid, ticks) = crate::liveness::current_process();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e)?;
        let holder: Option<(LockHolder, Option<i64>)> = tx
            .query_row(
                "SELECT run_id, stage, host, pid, start_ticks FROM stage_locks WHERE fingerprint = ?1",
                params![fingerprint],
                |r| {
                    Ok((
                        LockHolder {
                            run_id: r.get(0)?,
                            stage: r.get(1)?,
                            host: r.get(2)?,
                            pid: r.get(3)?,
                        },
                        r.get(4)?,
                    ))
                },
            )
            .optional()
            .map_err(e)?;
        let mut took_over = None;
        if let Some((h, h_ticks)) = holder {
            let mine = h.run_id == run_id && h.stage == stage;
            // Liveness can only be checked on the holder's own host; a lock
            // from another host is honoured (the DB is never shared across
            // hosts, see README "Slurm").
            let alive = h.host != host || crate::liveness::is_alive(Some(h.pid), h_ticks);
            if !mine && alive {
                return Ok(LockAttempt::Held(h));
            }
            if !mine {
                took_over = Some(h);
            }
        }
        tx.execute(
            "INSERT OR REPLACE INTO stage_locks (fingerprint, run_id, stage, host, pid, start_ticks, acquired_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![fingerprint, run_id, stage, host, pid, ticks, now()],
        )
        .map_err(e)?;
        tx.commit().map_err(e)?;
        Ok(LockAttempt::Acquired { took_over })
    }

    /// Releases the lock on `fingerprint` if (`run_id`, `stage`) holds it.
    pub fn unlock_stage(&mut self, fingerprint: &str, run_id: i64, stage: &str) -> Result<()> {
        self.conn
            .execute(
                "DELETE FROM stage_locks WHERE fingerprint = ?1 AND run_id = ?2 AND stage = ?3",
                params![fingerprint, run_id, stage],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Releases every lock a run holds (at the end of a run, whatever its end).
    pub fn unlock_run(&mut self, run_id: i64) -> Result<()> {
        self.conn
            .execute(
                "DELETE FROM stage_locks WHERE run_id = ?1 AND pid = ?2",
                params![run_id, std::process::id()],
            )
            .map_err(self.err())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_taker_waits_and_a_dead_holder_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let mut a = Store::open(&path).unwrap();
        let mut b = Store::open(&path).unwrap();
        assert_eq!(
            a.try_lock_stage("fp", 1, "s").unwrap(),
            LockAttempt::Acquired { took_over: None }
        );
        // Re-entrant for the holder.
        assert!(matches!(
            a.try_lock_stage("fp", 1, "s").unwrap(),
            LockAttempt::Acquired { took_over: None }
        ));
        match b.try_lock_stage("fp", 2, "s").unwrap() {
            LockAttempt::Held(h) => assert_eq!((h.run_id, h.stage.as_str()), (1, "s")),
            other => panic!("{other:?}"),
        }
        a.unlock_stage("fp", 1, "s").unwrap();
        assert!(matches!(
            b.try_lock_stage("fp", 2, "s").unwrap(),
            LockAttempt::Acquired { took_over: None }
        ));
        // A holder whose process is gone (a PID that cannot be alive: the
        // start time does not match) is stale.
        b.conn
            .execute(
                "UPDATE stage_locks SET run_id = 9, pid = ?1, start_ticks = -1",
                params![std::process::id()],
            )
            .unwrap();
        match a.try_lock_stage("fp", 3, "s").unwrap() {
            LockAttempt::Acquired { took_over: Some(h) } => assert_eq!(h.run_id, 9),
            other => panic!("{other:?}"),
        }
        assert_eq!(a.integrity_check().unwrap(), "ok");
    }
}
