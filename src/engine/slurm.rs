//! The Slurm executor (issue #17): each stage becomes one batch job that runs
//! the same `bitnet-pipeline exec-stage <invocation>` child as a local run,
//! so results and fingerprints are identical wherever a stage ran.
//!
//! Design choices, and why:
//! - **The runner submits a stage when its upstreams finish** rather than
//!   submitting the whole DAG up front with `--dependency=afterok:`. A
//!   stage's fingerprint includes its upstream outputs' content hashes, so
//!   whether it runs at all (or is reused from the cache, or waits on the
//!   shared-stage lock) is only known once its upstreams are done; and a
//!   failed upstream then leaves nothing queued to cancel. The cost is one
//!   poll interval (50 ms) per edge, small next to Slurm's own scheduling
//!   latency (measured in docs/perf.md).
//! - **The results DB stays with the runner.** SQLite's WAL needs shared
//!   memory, so the DB must not be opened from several hosts. A job writes
//!   its events to `<stage>/.events` (the child's stdout), its exit status
//!   to `.exit`, and its node and start/end times to `.job`; the runner,
//!   which shares the run folder with the nodes, tails and ingests them.
//! - **Accounting may be off** (no `sacct`): the files above are the record
//!   of a finished job; `squeue` only tells whether a job is still queued
//!   or running, so a job that vanished without `.exit` was cancelled,
//!   timed out or lost its node.
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use super::child::ChildMsg;
use super::protocol::Event;
use crate::pipeline::spec::Resources;

/// Files a job writes into its stage folder.
pub const EVENTS_FILE: &str = ".events";
pub const EXIT_FILE: &str = ".exit";
pub const JOB_FILE: &str = ".job";
pub const SCRIPT_FILE: &str = ".job.sh";

/// How often the watcher looks at a job's files, and at `squeue`.
const FILE_POLL: Duration = Duration::from_millis(50);
const QUEUE_POLL: Duration = Duration::from_secs(1);

/// Errors talking to Slurm.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    #[error("`{0}` is not on PATH; the Slurm executor needs the Slurm client commands (sbatch, squeue, scancel). Install them, or run with `--executor local`")]
    Missing(&'static str),
    #[error("sbatch failed for stage `{stage}`: {message}")]
    Submit { stage: String, message: String },
    #[error("cannot write the job script {path}: {source}")]
    Script {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Checks that the client commands exist, before anything is written.
pub fn check_available() -> Result<(), SlurmError> {
    for cmd in ["sbatch", "squeue", "scancel"] {
        if which(cmd).is_none() {
            return Err(SlurmError::Missing(cmd));
        }
    }
    Ok(())
}

fn which(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// What a job needs to run one stage.
pub struct JobSpec<'a> {
    pub run_id: i64,
    pub stage: &'a str,
    pub exe: &'a Path,
    pub invocation: &'a Path,
    pub output_dir: &'a Path,
    pub workdir: &'a Path,
    pub log: &'a Path,
    pub resources: &'a Resources,
    /// The stage's `timeout:`, used as `--time` unless `time` is set.
    pub timeout: Option<Duration>,
}

/// The batch script: runs the child, then records its exit status, node
/// and times in the stage folder (the runner's only view of a finished job
/// when accounting is off). `.exit` is renamed into place last, so its
/// presence means the other files are complete.
pub fn job_script(spec: &JobSpec) -> String {
    let out = sh_quote(&spec.output_dir.to_string_lossy());
    format!(
        "#!/bin/sh\n\
         # bitnet-pipeline: stage `{stage}` of run {run}\n\
         out={out}\n\
         start=$(date +%s.%N)\n\
         cd {wd} || exit 97\n\
         {exe} exec-stage {inv} > \"$out/{EVENTS_FILE}\"\n\
         code=$?\n\
         printf '%s %s %s\\n' \"${{SLURMD_NODENAME:-$(hostname)}}\" \"$start\" \"$(date +%s.%N)\" > \"$out/{JOB_FILE}\"\n\
         echo $code > \"$out/{EXIT_FILE}.tmp\" && mv \"$out/{EXIT_FILE}.tmp\" \"$out/{EXIT_FILE}\"\n\
         exit $code\n",
        stage = spec.stage.replace('\n', " "),
        run = spec.run_id,
        wd = sh_quote(&spec.workdir.to_string_lossy()),
        exe = sh_quote(&spec.exe.to_string_lossy()),
        inv = sh_quote(&spec.invocation.to_string_lossy()),
    )
}

/// `sbatch` arguments for a job (without the script).
pub fn sbatch_args(spec: &JobSpec) -> Vec<String> {
    let r = spec.resources;
    let mut a = vec![
        "--parsable".to_string(),
        format!("--job-name=bp-{}-{}", spec.run_id, spec.stage),
        format!("--output={}", spec.log.display()),
        "--open-mode=append".to_string(),
        format!("--chdir={}", spec.workdir.display()),
    ];
    if let Some(p) = &r.partition {
        a.push(format!("--partition={p}"));
    }
    if let Some(acc) = &r.account {
        a.push(format!("--account={acc}"));
    }
    match (&r.time, spec.timeout) {
        (Some(t), _) => a.push(format!("--time={t}")),
        // Slurm's --time is in whole minutes; round up and leave the exact
        // timeout to the runner.
        (None, Some(d)) => a.push(format!("--time={}", d.as_secs().div_ceil(60).max(1))),
        _ => {}
    }
    if let Some(c) = r.cpus {
        a.push(format!("--cpus-per-task={c}"));
    }
    if let Some(m) = &r.mem {
        a.push(format!("--mem={m}"));
    }
    if let Some(g) = &r.gpus {
        a.push(format!("--gpus={g}"));
    }
    a.extend(r.extra_args.iter().cloned());
    a
}

/// Writes the job script and submits it; returns the job id.
pub fn submit(spec: &JobSpec) -> Result<String, SlurmError> {
    let script = spec.output_dir.join(SCRIPT_FILE);
    std::fs::write(&script, job_script(spec)).map_err(|source| SlurmError::Script {
        path: script.clone(),
        source,
    })?;
    let out = Command::new("sbatch")
        .args(sbatch_args(spec))
        .arg(&script)
        .output()
        .map_err(|e| SlurmError::Submit {
            stage: spec.stage.to_string(),
            message: e.to_string(),
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let id = stdout.trim().split(';').next().unwrap_or("").to_string();
    if !out.status.success() || id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(SlurmError::Submit {
            stage: spec.stage.to_string(),
            message: format!(
                "{} {}",
                String::from_utf8_lossy(&out.stderr).trim(),
                stdout.trim()
            ),
        });
    }
    Ok(id)
}

/// The job's state in `squeue` (PENDING, RUNNING, COMPLETING, ...), or None
/// when Slurm no longer lists it (finished and purged, or unknown).
pub fn queue_state(job_id: &str) -> Option<String> {
    let out = Command::new("squeue")
        .args(["-h", "-j", job_id, "-o", "%T"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Whether a job is still queued or running (so `resume` can adopt it).
pub fn is_active(job_id: &str) -> bool {
    matches!(
        queue_state(job_id).as_deref(),
        Some("PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING" | "SUSPENDED" | "REQUEUED")
    )
}

/// Cancels a job; `hard` sends SIGKILL instead of Slurm's default TERM.
pub fn cancel(job_id: &str, hard: bool) {
    let mut cmd = Command::new("scancel");
    if hard {
        cmd.arg("--signal=KILL").arg("--full");
    }
    let _ = cmd.arg(job_id).output();
}

/// Node and times a finished job wrote (`node start_epoch end_epoch`).
pub fn job_record(output_dir: &Path) -> Option<(String, String, String)> {
    let text = std::fs::read_to_string(output_dir.join(JOB_FILE)).ok()?;
    let mut it = text.split_whitespace();
    let node = it.next()?.to_string();
    let epoch = |s: &str| -> Option<String> {
        let secs: f64 = s.parse().ok()?;
        let dt = chrono::DateTime::from_timestamp_millis((secs * 1000.0) as i64)?;
        Some(dt.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    };
    let start = epoch(it.next()?)?;
    let end = epoch(it.next()?)?;
    Some((node, start, end))
}

/// Follows a submitted (or adopted) job on a thread: forwards the events it
/// writes as they appear, then its node/times and its exit status, over the
/// same channel local children use.
pub fn watch(
    job_id: String,
    stage: String,
    output_dir: PathBuf,
    log: PathBuf,
    tx: Sender<ChildMsg>,
) {
    std::thread::spawn(move || {
        let events = output_dir.join(EVENTS_FILE);
        let exit = output_dir.join(EXIT_FILE);
        let mut offset = 0u64;
        let mut partial = String::new();
        let mut last_queue_check = Instant::now();
        let mut gone_since: Option<Instant> = None;
        let forward = |offset: &mut u64, partial: &mut String| {
            let Ok(mut f) = std::fs::File::open(&events) else {
                return;
            };
            if f.seek(SeekFrom::Start(*offset)).is_err() {
                return;
            }
            let mut buf = String::new();
            if let Ok(n) = f.read_to_string(&mut buf) {
                *offset += n as u64;
            }
            partial.push_str(&buf);
            let mut log_file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .ok();
            while let Some(nl) = partial.find('\n') {
                let line: String = partial.drain(..=nl).collect();
                let line = line.trim_end_matches('\n');
                match Event::from_line(line) {
                    Some(Ok(ev)) => {
                        let _ = tx.send(ChildMsg::Event(stage.clone(), ev));
                    }
                    Some(Err(e)) => {
                        let _ = tx.send(ChildMsg::BadEvent(stage.clone(), format!("{e}: {line}")));
                    }
                    None => {
                        if let Some(f) = log_file.as_mut() {
                            let _ = writeln!(f, "{line}");
                        }
                    }
                }
            }
        };
        loop {
            forward(&mut offset, &mut partial);
            if let Ok(text) = std::fs::read_to_string(&exit) {
                forward(&mut offset, &mut partial);
                let code: i32 = text.trim().parse().unwrap_or(1);
                let _ = tx.send(ChildMsg::JobRan(stage.clone(), job_record(&output_dir)));
                let _ = tx.send(ChildMsg::Exited(
                    stage,
                    Ok(ExitStatus::from_raw((code & 0xff) << 8)),
                ));
                return;
            }
            if last_queue_check.elapsed() >= QUEUE_POLL {
                last_queue_check = Instant::now();
                if is_active(&job_id) {
                    gone_since = None;
                } else {
                    // Give a shared filesystem a moment to show `.exit`.
                    let since = *gone_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= Duration::from_secs(3) {
                        forward(&mut offset, &mut partial);
                        let _ = tx.send(ChildMsg::JobRan(stage.clone(), job_record(&output_dir)));
                        let _ = tx.send(ChildMsg::Exited(
                            stage,
                            Err(std::io::Error::other(format!(
                                "Slurm job {job_id} ended without writing its exit status (cancelled, out of time, or its node failed); see {}",
                                log.display()
                            ))),
                        ));
                        return;
                    }
                }
            }
            std::thread::sleep(FILE_POLL);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(r: &'a Resources, p: &'a Path) -> JobSpec<'a> {
        JobSpec {
            run_id: 7,
            stage: "train",
            exe: p,
            invocation: p,
            output_dir: p,
            workdir: p,
            log: p,
            resources: r,
            timeout: Some(Duration::from_secs(90)),
        }
    }

    #[test]
    fn sbatch_args_carry_resources_and_round_the_timeout_up() {
        let r = Resources {
            partition: Some("gpu".into()),
            cpus: Some(4),
            mem: Some(crate::pipeline::spec::Scalar::Text("8G".into())),
            extra_args: vec!["--qos=short".into()],
            ..Default::default()
        };
        let p = Path::new("/shared/runs/7/train");
        let a = sbatch_args(&spec(&r, p));
        for want in [
            "--parsable",
            "--job-name=bp-7-train",
            "--partition=gpu",
            "--time=2",
            "--cpus-per-task=4",
            "--mem=8G",
            "--qos=short",
        ] {
            assert!(a.contains(&want.to_string()), "{want} missing from {a:?}");
        }
    }

    #[test]
    fn job_script_writes_exit_status_last_and_quotes_paths() {
        let r = Resources::default();
        let p = Path::new("/runs/it's here");
        let s = job_script(&spec(&r, p));
        assert!(s.contains("'/runs/it'\\''s here'"), "{s}");
        let exit_at = s.find("mv \"$out/.exit.tmp\"").unwrap();
        assert!(s.find(".job\"").unwrap() < exit_at, "{s}");
    }
}
