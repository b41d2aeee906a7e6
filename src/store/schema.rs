//! Schema migrations, forward only. `PRAGMA user_version` holds the number
//! of migrations applied; each entry below runs once, in its own
//! transaction, in order. Never edit a released migration: append one.

/// Migration N (1-based) is `MIGRATIONS[N - 1]`.
pub const MIGRATIONS: &[&str] = &[
    // 1: the design.md section 5 schema, plus what resumption needs
    // (pipeline source and overrides, runner pid, stage output folders).
    r#"
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        pipeline_path TEXT NOT NULL,
        pipeline_sha TEXT NOT NULL,
        pipeline_source TEXT NOT NULL,
        overrides TEXT NOT NULL DEFAULT '[]',
        status TEXT NOT NULL,
        started_at TEXT NOT NULL,
        ended_at TEXT,
        git_commit TEXT,
        git_dirty INTEGER,
        host TEXT,
        device TEXT,
        torch_version TEXT,
        seed INTEGER,
        argv TEXT NOT NULL,
        runs_dir TEXT NOT NULL,
        runner_pid INTEGER,
        runner_start_ticks INTEGER
    );
    CREATE TABLE params (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (run_id, key)
    );
    CREATE TABLE stage_runs (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        stage TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        fingerprint TEXT,
        fingerprint_inputs TEXT,
        reused_from INTEGER,
        started_at TEXT,
        ended_at TEXT,
        error TEXT,
        output_dir TEXT,
        pid INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, stage)
    );
    CREATE INDEX stage_runs_by_fingerprint ON stage_runs(fingerprint, status);
    CREATE TABLE metrics (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        stage TEXT NOT NULL,
        key TEXT NOT NULL,
        step INTEGER,
        value REAL NOT NULL,
        unit TEXT,
        recorded_at TEXT NOT NULL,
        meta TEXT
    );
    CREATE INDEX metrics_by_run ON metrics(run_id, stage, key);
    CREATE TABLE artifacts (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        stage TEXT NOT NULL,
        name TEXT NOT NULL,
        path TEXT NOT NULL,
        hash TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        PRIMARY KEY (run_id, stage, name)
    );
    CREATE TABLE findings (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        stage TEXT NOT NULL,
        rule TEXT NOT NULL,
        severity TEXT NOT NULL,
        file TEXT NOT NULL,
        line INTEGER,
        column INTEGER,
        message TEXT NOT NULL
    );
    CREATE TABLE targets (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        stage TEXT NOT NULL,
        name TEXT NOT NULL,
        metric TEXT NOT NULL,
        op TEXT NOT NULL,
        threshold REAL NOT NULL,
        value REAL,
        passed INTEGER NOT NULL
    );
    "#,
    // 2 (issue #17): params remember the stage that reported them and the
    // run they were reused from (so a run that reuses a cached stage has
    // its params too); sweeps group runs; runs record a partial selection;
    // a lock per fingerprint lets one runner compute a shared stage while
    // others wait; Slurm job ids, nodes and the job's own start/end times.
    r#"
    ALTER TABLE params ADD COLUMN stage TEXT;
    ALTER TABLE params ADD COLUMN reused_from INTEGER;
    CREATE TABLE sweeps (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        pipeline_path TEXT NOT NULL,
        spec TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    ALTER TABLE runs ADD COLUMN sweep_id INTEGER REFERENCES sweeps(id);
    ALTER TABLE runs ADD COLUMN selection TEXT;
    ALTER TABLE runs ADD COLUMN executor TEXT;
    CREATE INDEX runs_by_sweep ON runs(sweep_id);
    CREATE TABLE stage_locks (
        fingerprint TEXT PRIMARY KEY,
        run_id INTEGER NOT NULL,
        stage TEXT NOT NULL,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        start_ticks INTEGER,
        acquired_at TEXT NOT NULL
    );
    ALTER TABLE stage_runs ADD COLUMN job_id TEXT;
    ALTER TABLE stage_runs ADD COLUMN node TEXT;
    ALTER TABLE stage_runs ADD COLUMN job_started_at TEXT;
    ALTER TABLE stage_runs ADD COLUMN job_ended_at TEXT;
    "#,
];

/// The schema version this build writes.
pub fn latest_version() -> u32 {
    MIGRATIONS.len() as u32
}
