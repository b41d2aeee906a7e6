//! The shared-stage lock (issue #17): one row per fingerprint being computed
//! right now, so two runs (or sweep points, or runner processes on one DB)
//! that need the same stage compute it once; the others wait and reuse it.
//!
//! A lock names the runner process holding it (host, PID and start time);
//! a lock whose runner died (kill -9, crash) is stale and the next runner
//! that asks takes it over, in the same transaction that finds it stale.
use rusqlite::{params, OptionalExtension, TransactionBehavior};
use serde_json::Value;

use super::*;

/// Who holds a fingerprint's lock.
#[derive(Debug, Clone, PartialEq)]
pub struct LockHolder {
    pub run_id: i64,
    pub stage: String,
    pub host: String,
    pub pid: i64,
}

/// The answer to `claim_stage`.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Another run completed this fingerprint meanwhile: reuse it.
    Reuse(Box<StageRecord>),
    /// A live runner computes it now; wait, then ask again.
    Held(LockHolder),
    /// The stage is `running` in this run now and (when asked) holds the
    /// lock; `took_over` names a dead holder it replaced.
    Started { took_over: Option<LockHolder> },
}

/// Where and how a stage is about to run.
pub struct StageStart<'a> {
    pub run_id: i64,
    pub stage: &'a str,
    pub fingerprint: &'a str,
    pub inputs: &'a Value,
    pub output_dir: &'a str,
    /// Take the shared-stage lock (cacheable stages only).
    pub lock: bool,
}

impl Store {
    /// In one transaction: if `lock`, look for a completed execution of the
    /// fingerprint (reuse it) and for a live holder of its lock (wait); else
    /// take the lock and mark the stage `running`. One commit per started
    /// stage, as before the lock existed; the lock is released in the same
    /// commit as the stage's final state (`complete_stage`, `end_stage`).
    pub fn claim_stage(&mut self, st: &StageStart) -> Result<Claim> {
        let path = self.path.clone();
        let e = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e)?;
        let mut took_over = None;
        if st.lock {
            if let Some(rec) =
                super::stage_runs::find_reusable_in(&tx, st.fingerprint).map_err(e)?
            {
                return Ok(Claim::Reuse(Box::new(rec)));
            }
            let host = crate::liveness::hostname();
            let holder: Option<(LockHolder, Option<i64>)> = tx
                .query_row(
                    "SELECT run_id, stage, host, pid, start_ticks FROM stage_locks WHERE fingerprint = ?1",
                    params![st.fingerprint],
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
            if let Some((h, h_ticks)) = holder {
                let mine = h.run_id == st.run_id && h.stage == st.stage;
                // Liveness can only be checked on the holder's own host; a
                // lock from another host is honoured (the DB is never
                // shared across hosts, see README "Slurm").
                let alive = h.host != host || crate::liveness::is_alive(Some(h.pid), h_ticks);
                if !mine && alive {
                    return Ok(Claim::Held(h));
                }
                if !mine {
                    took_over = Some(h);
                }
            }
            let (pid, ticks) = crate::liveness::current_process();
            tx.execute(
                "INSERT OR REPLACE INTO stage_locks (fingerprint, run_id, stage, host, pid, start_ticks, acquired_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![st.fingerprint, st.run_id, st.stage, host, pid, ticks, now()],
            )
            .map_err(e)?;
        }
        super::stage_runs::set_running_in(&tx, st).map_err(e)?;
        tx.commit().map_err(e)?;
        Ok(Claim::Started { took_over })
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

    fn start<'a>(run_id: i64, out: &'a str, v: &'a Value) -> StageStart<'a> {
        StageStart {
            run_id,
            stage: "s",
            fingerprint: "fp",
            inputs: v,
            output_dir: out,
            lock: true,
        }
    }

    fn new_run(store: &mut Store) -> i64 {
        store
            .create_run(&NewRun {
                name: "p".into(),
                pipeline_path: "/p.yaml".into(),
                pipeline_sha: "abc".into(),
                pipeline_source: String::new(),
                overrides: Vec::new(),
                git_commit: None,
                git_dirty: None,
                host: "h".into(),
                device: None,
                torch_version: None,
                seed: None,
                argv: Vec::new(),
                runs_dir: "/r".into(),
                params: Vec::new(),
                stages: vec![("s".into(), "command".into())],
                sweep_id: None,
                selection: None,
                executor: "local".into(),
            })
            .unwrap()
    }

    #[test]
    fn second_claimer_waits_then_reuses_and_a_dead_holder_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let out = out.to_string_lossy().into_owned();
        let v = serde_json::json!({});
        let mut a = Store::open(&path).unwrap();
        let mut b = Store::open(&path).unwrap();
        let (r1, r2, r3) = (new_run(&mut a), new_run(&mut a), new_run(&mut a));
        assert_eq!(
            a.claim_stage(&start(r1, &out, &v)).unwrap(),
            Claim::Started { took_over: None }
        );
        match b.claim_stage(&start(r2, &out, &v)).unwrap() {
            Claim::Held(h) => assert_eq!((h.run_id, h.stage.as_str()), (r1, "s")),
            other => panic!("{other:?}"),
        }
        // The holder completes: lock released with the result, so the
        // waiter's next claim reuses it.
        a.complete_stage(r1, "s", &StageResults::default()).unwrap();
        match b.claim_stage(&start(r2, &out, &v)).unwrap() {
            Claim::Reuse(rec) => assert_eq!(rec.run_id, r1),
            other => panic!("{other:?}"),
        }
        // A holder whose process is gone (the start time does not match) is stale.
        a.conn
            .execute(
                "INSERT INTO stage_locks VALUES ('fp2', 9, 's', ?1, ?2, -1, 't')",
                params![crate::liveness::hostname(), std::process::id()],
            )
            .unwrap();
        let st = StageStart {
            fingerprint: "fp2",
            ..start(r3, &out, &v)
        };
        match a.claim_stage(&st).unwrap() {
            Claim::Started { took_over: Some(h) } => assert_eq!(h.run_id, 9),
            other => panic!("{other:?}"),
        }
        assert_eq!(a.integrity_check().unwrap(), "ok");
    }
}
