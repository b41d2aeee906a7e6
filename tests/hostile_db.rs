//! The results DB under hostile conditions (issue #16): eight runners killed
//! mid-stage with SIGKILL and SIGTERM then resumed together; a DB from a newer
//! schema, a read-only DB and a full disk, each refused with a clear error that
//! changes nothing. The long randomised version is `scripts/soak-db.sh`.
mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn db_count(db: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Eight runners on one DB, each killed inside its stage (half SIGKILL, half
/// SIGTERM), then all resumed at once: the DB stays consistent, every run
/// completes, no stage is recorded completed twice, no folder is orphaned.
#[test]
fn eight_killed_runners_resume_to_a_consistent_db() {
    let ws = Workspace::new();
    // `first` blocks until `release` exists, so every runner is killed at the same
    // point; the tag makes each run's fingerprints its own.
    ws.write(
        "p.yaml",
        "version: 1\nname: kill\nparams: {tag: a}\nstages:\n  first:\n    uses: command\n    with: { cmd: \"touch started-${params.tag}; test -f release || sleep 60; echo ${params.tag} > $BP_OUT/f\" }\n  second:\n    uses: command\n    needs: [first]\n    with: { cmd: \"cat $BP_IN_FIRST/f > $BP_OUT/s\" }\n",
    );
    let mut children: Vec<_> = (0..8)
        .map(|i| {
            ws.cmd()
                .args(["run", "p.yaml", "-q", "--set", &format!("tag=t{i}")])
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    wait_for("all eight stages to start", || {
        (0..8).all(|i| ws.path().join(format!("started-t{i}")).exists())
    });
    for (i, c) in children.iter_mut().enumerate() {
        let sig = if i % 2 == 0 {
            libc::SIGKILL
        } else {
            libc::SIGTERM
        };
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        assert_eq!(unsafe { libc::kill(c.id() as i32, sig) }, 0);
    }
    for c in &mut children {
        let status = c.wait().unwrap();
        assert!(!status.success(), "a killed runner exited 0");
    }
    let db = ws.db();
    assert_eq!(db_count(&db, "SELECT count(*) FROM runs"), 8);
    assert_eq!(
        db_count(&db, "SELECT count(*) FROM runs WHERE status = 'completed'"),
        0
    );
    ws.write("release", "");
    let resumes: Vec<_> = (1..=8)
        .map(|id| {
            ws.cmd()
                .args(["resume", &id.to_string(), "-q"])
                .spawn()
                .unwrap()
        })
        .collect();
    for r in resumes {
        let o = r.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    let ok: String = ws
        .sqlite()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    assert_eq!(
        db_count(&db, "SELECT count(*) FROM runs WHERE status = 'completed'"),
        8
    );
    assert_eq!(
        db_count(
            &db,
            "SELECT count(*) FROM (SELECT run_id, stage FROM stage_runs WHERE status IN ('completed', 'cached') GROUP BY run_id, stage HAVING count(*) > 1)"
        ),
        0
    );
    assert_eq!(
        db_count(
            &db,
            "SELECT count(*) FROM stage_runs WHERE status NOT IN ('completed', 'cached')"
        ),
        0
    );
    assert_eq!(db_count(&db, "SELECT count(*) FROM stage_locks"), 0);
    for entry in std::fs::read_dir(ws.path().join("runs")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Ok(id) = name.parse::<i64>() {
            assert_eq!(
                db_count(&db, &format!("SELECT count(*) FROM runs WHERE id = {id}")),
                1,
                "run folder runs/{id} has no DB row"
            );
        }
    }
}

const ONE_STAGE: &str =
    "version: 1\nname: t\nstages:\n  a:\n    uses: command\n    with: { cmd: \"echo a > $BP_OUT/a\" }\n";

fn files_beside(db: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(db.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// A DB written by a newer bitnet-pipeline: every command refuses it with the
/// versions and what to do, and the file is byte-for-byte unchanged (it used to be
/// switched to WAL mode before the version check).
#[test]
fn a_db_from_a_newer_schema_is_refused_and_left_unchanged() {
    let ws = Workspace::new();
    ws.write("p.yaml", ONE_STAGE);
    let db = ws.db();
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("CREATE TABLE future (x); PRAGMA user_version = 999;")
            .unwrap();
    }
    let before = std::fs::read(&db).unwrap();
    let files = files_beside(&db);
    for args in [
        vec!["run", "p.yaml"],
        vec!["runs", "list"],
        vec!["resume", "1"],
        vec!["report", "1"],
    ] {
        let o = ws.run(&args);
        assert_ne!(o.status.code(), Some(0), "{args:?} accepted a newer DB");
        let e = stderr(&o);
        assert!(
            e.contains("schema version 999, newer than this bitnet-pipeline understands")
                && e.contains("upgrade bitnet-pipeline"),
            "{args:?}: {e}"
        );
    }
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "the newer DB was modified"
    );
    assert_eq!(files_beside(&db), files, "files appeared beside the DB");
}

/// Makes a path unwritable for the test's lifetime: `chattr +i` as root (root
/// ignores permission bits), file modes otherwise. `None` when neither works here.
struct ReadOnly(Vec<PathBuf>, bool);

impl ReadOnly {
    fn new(paths: &[&Path]) -> Option<ReadOnly> {
        let root = unsafe { libc::geteuid() } == 0;
        for p in paths {
            let ok = if root {
                Command::new("chattr")
                    .arg("+i")
                    .arg(p)
                    .status()
                    .is_ok_and(|s| s.success())
            } else {
                use std::os::unix::fs::PermissionsExt;
                let mode = if p.is_dir() { 0o555 } else { 0o444 };
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).is_ok()
            };
            if !ok {
                return None;
            }
        }
        Some(ReadOnly(
            paths.iter().map(|p| p.to_path_buf()).collect(),
            root,
        ))
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        for p in &self.0 {
            if self.1 {
                let _ = Command::new("chattr").arg("-i").arg(p).status();
            } else {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
            }
        }
    }
}

/// A read-only DB (and folder): a clear error naming the DB and what to do, and
/// nothing changed.
#[test]
fn a_read_only_db_is_refused_and_left_unchanged() {
    let ws = Workspace::new();
    ws.write("p.yaml", ONE_STAGE);
    let o = ws.run(&["run", "p.yaml", "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let db = ws.db();
    // Check-point the WAL so the DB is one file, as a copied or archived DB is.
    ws.sqlite()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    let before = std::fs::read(&db).unwrap();
    let dir = db.parent().unwrap().to_path_buf();
    let mut paths: Vec<PathBuf> = files_beside(&db);
    paths.push(dir.clone());
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let Some(guard) = ReadOnly::new(&refs) else {
        eprintln!("SKIPPED a_read_only_db_is_refused_and_left_unchanged: cannot make files read-only here (chattr as root, chmod otherwise)");
        return;
    };
    let o = ws.run(&["run", "p.yaml"]);
    let e = stderr(&o);
    assert_ne!(o.status.code(), Some(0), "ran on a read-only DB: {e}");
    assert!(
        e.contains("runs/results.db") && e.contains("read-only") && e.contains("--db"),
        "{e}"
    );
    drop(guard);
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "the read-only DB changed"
    );
    assert_eq!(
        db_count(&db, "SELECT count(*) FROM runs"),
        1,
        "a run row appeared"
    );
}

/// Unmounts the tmpfs when the test ends, pass or fail.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A full disk (a 512 KiB tmpfs filled up): the run fails with an error that says
/// the disk may be full, and the DB keeps exactly its earlier rows. Needs root to
/// mount; skipped with a message otherwise.
#[test]
fn a_full_disk_fails_cleanly_and_keeps_the_db() {
    let ws = Workspace::new();
    ws.write("p.yaml", ONE_STAGE);
    let mnt = ws.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = unsafe { libc::geteuid() } == 0
        && Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
            .arg(&mnt)
            .status()
            .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!(
            "SKIPPED a_full_disk_fails_cleanly_and_keeps_the_db: mounting a small tmpfs needs root"
        );
        return;
    }
    let _mount = Mount(mnt.clone());
    let db = mnt.join("results.db");
    let runs = mnt.join("runs");
    let bp = |args: &[&str]| {
        ws.cmd()
            .arg("--db")
            .arg(&db)
            .arg("--runs-dir")
            .arg(&runs)
            .args(args)
            .output()
            .unwrap()
    };
    let o = bp(&["run", "p.yaml", "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // Fill the filesystem to the last block.
    let filler = mnt.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let o = bp(&["run", "p.yaml"]);
    let e = stderr(&o);
    assert_ne!(o.status.code(), Some(0), "ran on a full disk: {e}");
    assert!(
        e.contains("full"),
        "the error does not mention a full disk: {e}"
    );
    std::fs::remove_file(&filler).unwrap();
    let ok: String = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    assert_eq!(db_count(&db, "SELECT count(*) FROM runs"), 1);
    assert_eq!(
        db_count(&db, "SELECT count(*) FROM runs WHERE status = 'completed'"),
        1
    );
}
