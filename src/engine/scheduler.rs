//! Executes a run: the scheduling loop, cache reuse, retries, timeouts and
//! interruption. The DB is written only here, one transaction per state
//! change, so the run is resumable whenever the runner stops.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;

use super::child::{self, ChildMsg};
use super::fingerprint::FingerprintInputs;
use super::hashing;
use super::progress::Progress;
use super::protocol::{Event, Invocation, Upstream, INVOCATION_FILE};
use super::slurm;
use super::{stage_dir_name, wants_gpu, Executor, KindInfo, RunOptions, CRATE_VERSION};
use crate::pipeline::{Pipeline, Stage};
use crate::store::{run_status, stage_status, Claim, StageResults, StageStart, Store};

/// How long a stopped child gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// One stage's line in the end-of-run summary.
#[derive(Debug, Clone)]
pub struct StageSummary {
    pub stage: String,
    pub kind: String,
    pub status: String,
    pub duration: Option<Duration>,
    pub reused_from: Option<i64>,
    pub error: Option<String>,
    /// Final value per metric key.
    pub metrics: BTreeMap<String, f64>,
}

#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub run_id: i64,
    pub status: String,
    pub stages: Vec<StageSummary>,
}

/// A finished stage whose outputs downstream stages read.
#[derive(Debug, Clone)]
struct DoneStage {
    output_dir: PathBuf,
    content_hash: String,
    metrics: BTreeMap<String, f64>,
}

#[derive(Debug)]
enum State {
    Pending,
    Running(Box<Running>),
    Done(DoneStage),
    Failed,
    Skipped,
    Interrupted,
}

/// What runs a stage: a local child process group, or a Slurm batch job.
#[derive(Debug)]
enum Handle {
    Local(u32),
    Job(String),
}

impl Handle {
    fn signal(&self, sig: i32) {
        match self {
            Handle::Local(pid) => child::signal_group(*pid, sig),
            Handle::Job(id) => slurm::cancel(id, sig == libc::SIGKILL),
        }
    }
}

#[derive(Debug)]
struct Running {
    handle: Handle,
    started: Instant,
    deadline: Option<Instant>,
    term_sent: Option<Instant>,
    kill_sent: bool,
    timed_out: bool,
    uses_gpu: bool,
    results: StageResults,
    error: Option<String>,
    output_dir: PathBuf,
    log: PathBuf,
}

fn last_values(metrics: &[crate::store::Metric]) -> BTreeMap<String, f64> {
    metrics.iter().map(|m| (m.key.clone(), m.value)).collect()
}

/// Inputs of a stage's fingerprint, given its upstream stages' hashes.
pub(crate) fn fingerprint_inputs(
    pipeline: &Pipeline,
    stage: &Stage,
    kinds: &dyn KindInfo,
    upstream_hashes: BTreeMap<String, String>,
) -> Result<FingerprintInputs> {
    let mut deps = BTreeMap::new();
    for dep in kinds.deps(&stage.kind, &stage.config) {
        let path = pipeline.dir.join(&dep);
        let hash = hashing::hash_path(&path).with_context(|| {
            format!(
                "input `{dep}` of stage `{}` cannot be read (looked for {})",
                stage.name,
                path.display()
            )
        })?;
        deps.insert(dep, hash);
    }
    Ok(FingerprintInputs {
        kind: stage.kind.clone(),
        config: stage.config.clone(),
        upstream: upstream_hashes,
        deps,
        code_version: format!("{CRATE_VERSION}+{}", kinds.code_version(&stage.kind)),
        seed: pipeline_seed(pipeline),
    })
}

/// `params.seed`, as every stage's invocation carries it.
fn pipeline_seed(pipeline: &Pipeline) -> Option<i64> {
    pipeline.params.get("seed").and_then(Value::as_i64)
}

/// Whether a stage may be reused from the cache in this run. The upstream
/// of `run --only` is always looked up (and must be found).
pub(crate) fn cacheable(stage: &Stage, kinds: &dyn KindInfo, opts: &RunOptions) -> bool {
    if opts.cache_only.contains(&stage.name) {
        return true;
    }
    let enabled = stage
        .cache
        .unwrap_or_else(|| kinds.cache_by_default(&stage.kind));
    enabled && !opts.force_all && !opts.force.contains(&stage.name)
}

/// Runs (or continues) `run_id`: stages already completed in it are kept,
/// everything else is scheduled.
pub fn execute(
    store: &mut Store,
    run_id: i64,
    pipeline: &Pipeline,
    kinds: &dyn KindInfo,
    opts: &RunOptions,
    interrupted: Arc<AtomicBool>,
) -> Result<RunOutcome> {
    let run_dir = opts.runs_dir.join(run_id.to_string());
    std::fs::create_dir_all(run_dir.join("logs"))
        .with_context(|| format!("cannot create run folder {}", run_dir.display()))?;
    let mut progress = Progress::new(opts.quiet).with_label(&opts.label);
    progress.line(&format!(
        "run {run_id}: {} ({} stages, {} jobs) in {}",
        pipeline.name,
        pipeline.stages.len(),
        opts.jobs,
        run_dir.display()
    ));

    let (tx, rx) = mpsc::channel::<ChildMsg>();
    // Stages a resumed run already finished stay finished; batch jobs a dead
    // runner left queued or running are adopted, not submitted again.
    let mut states: HashMap<String, State> = HashMap::new();
    let records = store.stages(run_id)?;
    let artifacts = store.artifacts(run_id)?;
    let metrics = store.metrics(run_id)?;
    for stage in &pipeline.stages {
        let rec = records.iter().find(|r| r.stage == stage.name);
        let state = match rec {
            Some(r) if stage_status::is_done(&r.status) => {
                let arts: Vec<_> = artifacts
                    .iter()
                    .filter(|(s, _)| s == &stage.name)
                    .map(|(_, a)| a.clone())
                    .collect();
                let ms: Vec<_> = metrics
                    .iter()
                    .filter(|(s, _)| s == &stage.name)
                    .map(|(_, m)| m.clone())
                    .collect();
                progress.finished(&stage.name, "cached", "(completed earlier in this run)");
                State::Done(DoneStage {
                    output_dir: PathBuf::from(r.output_dir.clone().unwrap_or_default()),
                    content_hash: hashing::combined_hash(&arts),
                    metrics: last_values(&ms),
                })
            }
            Some(r) => match adopt_job(store, run_id, r, opts, &run_dir, &tx)? {
                Some(running) => {
                    progress.line(&format!(
                        "  adopted   {} (Slurm job {} left by the previous runner)",
                        stage.name,
                        r.job_id.as_deref().unwrap_or("?")
                    ));
                    State::Running(Box::new(running))
                }
                None => State::Pending,
            },
            None => State::Pending,
        };
        states.insert(stage.name.clone(), state);
    }
    let mut waiting_announced: HashSet<String> = HashSet::new();
    let mut waiting: HashSet<String> = HashSet::new();
    let mut attempts: HashMap<String, u32> = HashMap::new();
    let mut durations: HashMap<String, Duration> = HashMap::new();
    let mut stopping = false;

    loop {
        if interrupted.load(Ordering::SeqCst) && !stopping {
            stopping = true;
            progress.line("interrupt received: stopping running stages (Ctrl-C again is ignored; wait a few seconds)");
            for st in states.values_mut() {
                if let State::Running(r) = st {
                    r.handle.signal(libc::SIGTERM);
                    r.term_sent = Some(Instant::now());
                }
            }
            waiting.clear();
        }
        if !stopping {
            waiting = schedule(
                store,
                run_id,
                pipeline,
                kinds,
                opts,
                &run_dir,
                &mut states,
                &mut attempts,
                &mut progress,
                &tx,
                &mut waiting_announced,
            )?;
        }
        let running = states
            .values()
            .filter(|s| matches!(s, State::Running(_)))
            .count();
        let pending = states.values().any(|s| matches!(s, State::Pending));
        // A pending stage waits for a job slot (which another run of this
        // process may hold), for the shared-stage lock, or for the GPU; all
        // free up, so the loop goes on until nothing is pending.
        if running == 0 && (stopping || !pending) {
            break;
        }
        if running == 0 && waiting.is_empty() && opts.slots.in_use() == 0 {
            anyhow::bail!(
                "run {run_id}: stages are pending but nothing runs or holds them up; this is a bug, please report it (`bitnet-pipeline resume {run_id}` continues the run)"
            );
        }
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(ChildMsg::Event(stage, ev)) => {
                if let Some(State::Running(r)) = states.get_mut(&stage) {
                    match ev {
                        Event::Progress { pos, len, message } => {
                            progress.update(&stage, pos, len, &message)
                        }
                        Event::Metric(m) => r.results.metrics.push(m),
                        Event::Param { key, value } => r.results.params.push((key, value)),
                        Event::Finding(f) => r.results.findings.push(f),
                        Event::Target(t) => r.results.targets.push(t),
                        Event::Error { message } => r.error = Some(message),
                    }
                }
            }
            Ok(ChildMsg::BadEvent(stage, msg)) => {
                if let Some(State::Running(r)) = states.get_mut(&stage) {
                    r.error = Some(format!("stage sent a malformed event: {msg}"));
                }
            }
            Ok(ChildMsg::JobRan(stage, record)) => {
                let (node, start, end) = match &record {
                    Some((n, s, e)) => (Some(n.as_str()), Some(s.as_str()), Some(e.as_str())),
                    None => (None, None, None),
                };
                store.set_stage_job_run(run_id, &stage, node, start, end)?;
            }
            Ok(ChildMsg::Exited(stage, status)) => {
                let Some(State::Running(r)) = states.remove(&stage) else {
                    continue;
                };
                opts.slots.release();
                if r.uses_gpu {
                    opts.gpu.release();
                }
                let elapsed = r.started.elapsed();
                durations.insert(stage.clone(), elapsed);
                let ok = matches!(&status, Ok(s) if s.success()) && r.error.is_none();
                let new_state = if ok && !r.timed_out {
                    finish_success(store, run_id, &stage, *r, &mut progress, elapsed)?
                } else {
                    let reason = failure_reason(&r, &status);
                    if stopping {
                        store.end_stage(
                            run_id,
                            &stage,
                            stage_status::INTERRUPTED,
                            Some("interrupted"),
                        )?;
                        progress.finished(&stage, stage_status::INTERRUPTED, "");
                        State::Interrupted
                    } else {
                        let max = pipeline.stage(&stage).map(|s| s.retries).unwrap_or(0) + 1;
                        let used = attempts.get(&stage).copied().unwrap_or(1);
                        if used < max {
                            progress.line(&format!(
                                "  retrying  {stage} (attempt {} of {max}): {reason}",
                                used + 1
                            ));
                            State::Pending
                        } else {
                            store.end_stage(run_id, &stage, stage_status::FAILED, Some(&reason))?;
                            progress.finished(
                                &stage,
                                stage_status::FAILED,
                                &format!("after {:.2} s: {reason}", elapsed.as_secs_f64()),
                            );
                            State::Failed
                        }
                    }
                };
                states.insert(stage, new_state);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        // Timeouts and escalation to SIGKILL.
        let now = Instant::now();
        for st in states.values_mut() {
            if let State::Running(r) = st {
                if r.term_sent.is_none() && r.deadline.is_some_and(|d| now >= d) {
                    r.timed_out = true;
                    r.handle.signal(libc::SIGTERM);
                    r.term_sent = Some(now);
                }
                if r.term_sent
                    .is_some_and(|t| now.duration_since(t) >= KILL_GRACE)
                    && !r.kill_sent
                {
                    r.handle.signal(libc::SIGKILL);
                    // A job is cancelled once; a process group may need
                    // the signal again if it ignores it.
                    r.kill_sent = matches!(r.handle, Handle::Job(_));
                }
            }
        }
    }

    let any_failed = states
        .values()
        .any(|s| matches!(s, State::Failed | State::Skipped));
    let status = if stopping {
        run_status::INTERRUPTED
    } else if any_failed {
        run_status::FAILED
    } else {
        run_status::COMPLETED
    };
    store.finish_run(run_id, status)?;
    store.unlock_run(run_id)?;
    let summaries = summarize(store, run_id, pipeline, &durations)?;
    Ok(RunOutcome {
        run_id,
        status: status.to_string(),
        stages: summaries,
    })
}

fn failure_reason(r: &Running, status: &std::io::Result<std::process::ExitStatus>) -> String {
    if r.timed_out {
        return format!(
            "timed out after {:.0} s (raise `timeout:` in the pipeline if it needs longer)",
            r.deadline
                .map(|d| d.duration_since(r.started).as_secs_f64())
                .unwrap_or_default()
        );
    }
    if let Some(e) = &r.error {
        return e.clone();
    }
    let how = match status {
        Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(s)) {
            (Some(c), _) => format!("exited with status {c}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => "ended abnormally".to_string(),
        },
        Err(e) => format!("could not be waited for: {e}"),
    };
    format!("stage process {how}; see {}", r.log.display())
}

fn finish_success(
    store: &mut Store,
    run_id: i64,
    stage: &str,
    mut r: Running,
    progress: &mut Progress,
    elapsed: Duration,
) -> Result<State> {
    r.results.artifacts = hashing::collect_artifacts(&r.output_dir)
        .with_context(|| format!("cannot hash outputs in {}", r.output_dir.display()))?;
    store.complete_stage(run_id, stage, &r.results)?;
    progress.finished(
        stage,
        stage_status::COMPLETED,
        &format!("in {:.2} s", elapsed.as_secs_f64()),
    );
    Ok(State::Done(DoneStage {
        output_dir: r.output_dir.clone(),
        content_hash: hashing::combined_hash(&r.results.artifacts),
        metrics: last_values(&r.results.metrics),
    }))
}

/// Starts or reuses every stage that can go now; marks stages downstream
/// of a failure as skipped.
#[allow(clippy::too_many_arguments)]
fn schedule(
    store: &mut Store,
    run_id: i64,
    pipeline: &Pipeline,
    kinds: &dyn KindInfo,
    opts: &RunOptions,
    run_dir: &Path,
    states: &mut HashMap<String, State>,
    attempts: &mut HashMap<String, u32>,
    progress: &mut Progress,
    tx: &mpsc::Sender<ChildMsg>,
    announced: &mut HashSet<String>,
) -> Result<HashSet<String>> {
    loop {
        let mut changed = false;
        // Stages waiting for another runner's computation of the same
        // fingerprint (the shared-stage lock); rebuilt on every pass.
        let mut waiting: HashSet<String> = HashSet::new();
        for stage in &pipeline.stages {
            if !matches!(states.get(&stage.name), Some(State::Pending)) {
                continue;
            }
            let blocked = stage.needs.iter().any(|n| {
                matches!(
                    states.get(n),
                    Some(State::Failed | State::Skipped | State::Interrupted)
                )
            });
            if blocked {
                store.end_stage(
                    run_id,
                    &stage.name,
                    stage_status::SKIPPED,
                    Some("an upstream stage did not complete"),
                )?;
                progress.finished(
                    &stage.name,
                    stage_status::SKIPPED,
                    "(upstream did not complete)",
                );
                states.insert(stage.name.clone(), State::Skipped);
                changed = true;
                continue;
            }
            let mut upstream = BTreeMap::new();
            let mut upstream_hashes = BTreeMap::new();
            let mut ready = true;
            for n in &stage.needs {
                match states.get(n) {
                    Some(State::Done(d)) => {
                        upstream_hashes.insert(n.clone(), d.content_hash.clone());
                        upstream.insert(
                            n.clone(),
                            Upstream {
                                kind: pipeline
                                    .stage(n)
                                    .map(|s| s.kind.clone())
                                    .unwrap_or_default(),
                                output_dir: d.output_dir.clone(),
                                metrics: d.metrics.clone(),
                            },
                        );
                    }
                    _ => ready = false,
                }
            }
            if !ready {
                continue;
            }
            let inputs = match fingerprint_inputs(pipeline, stage, kinds, upstream_hashes) {
                Ok(i) => i,
                Err(e) => {
                    let msg = format!("{e:#}");
                    store.end_stage(run_id, &stage.name, stage_status::FAILED, Some(&msg))?;
                    progress.finished(&stage.name, stage_status::FAILED, &msg);
                    states.insert(stage.name.clone(), State::Failed);
                    changed = true;
                    continue;
                }
            };
            let fp = inputs.fingerprint();
            let inputs_json = serde_json::to_value(&inputs)?;
            let cache = cacheable(stage, kinds, opts);
            if cache {
                if let Some(source) = store.find_reusable(&fp)? {
                    let done = reuse(
                        store,
                        run_id,
                        &stage.name,
                        source,
                        &fp,
                        &inputs_json,
                        progress,
                    )?;
                    states.insert(stage.name.clone(), done);
                    changed = true;
                    continue;
                }
            }
            if opts.cache_only.contains(&stage.name) {
                let msg = format!(
                    "`{}` must be reused from the cache (`--only` runs only the stages it names), but no completed run of it with these inputs is left; run `bitnet-pipeline run {} --until {}` first",
                    stage.name,
                    pipeline.display_path.display(),
                    stage.name
                );
                store.end_stage(run_id, &stage.name, stage_status::FAILED, Some(&msg))?;
                progress.finished(&stage.name, stage_status::FAILED, &msg);
                states.insert(stage.name.clone(), State::Failed);
                changed = true;
                continue;
            }
            let uses_gpu = kinds.uses_device(&stage.kind) && wants_gpu(stage.device.as_deref());
            // The device token is shared by every run this process drives.
            if uses_gpu && opts.gpu.in_use() > 0 {
                continue;
            }
            if !opts.slots.try_acquire() {
                continue;
            }
            if uses_gpu && !opts.gpu.try_acquire() {
                opts.slots.release();
                continue;
            }
            let release = || {
                opts.slots.release();
                if uses_gpu {
                    opts.gpu.release();
                }
            };
            let output_dir = std::path::absolute(run_dir.join(stage_dir_name(&stage.name)))?;
            let claim = store.claim_stage(&StageStart {
                run_id,
                stage: &stage.name,
                fingerprint: &fp,
                inputs: &inputs_json,
                output_dir: &output_dir.to_string_lossy(),
                lock: cache,
            })?;
            match claim {
                // Another runner completed it since the look-up above.
                Claim::Reuse(source) => {
                    release();
                    let done = reuse(
                        store,
                        run_id,
                        &stage.name,
                        *source,
                        &fp,
                        &inputs_json,
                        progress,
                    )?;
                    states.insert(stage.name.clone(), done);
                    changed = true;
                    continue;
                }
                Claim::Held(h) => {
                    release();
                    if announced.insert(stage.name.clone()) {
                        progress.line(&format!(
                            "  waiting   {} (run {} computes the same stage `{}`; it will be reused)",
                            stage.name, h.run_id, h.stage
                        ));
                    }
                    waiting.insert(stage.name.clone());
                    continue;
                }
                Claim::Started { took_over: Some(h) } => progress.line(&format!(
                    "  took over the lock on {} from run {} (its runner, pid {} on {}, is gone)",
                    stage.name, h.run_id, h.pid, h.host
                )),
                Claim::Started { took_over: None } => {}
            }
            let attempt = attempts.entry(stage.name.clone()).or_insert(0);
            *attempt += 1;
            let r = start_stage(
                store, run_id, pipeline, stage, opts, run_dir, upstream, *attempt, uses_gpu, tx,
            )?;
            progress.started(&stage.name, &stage.kind);
            states.insert(stage.name.clone(), State::Running(Box::new(r)));
            changed = true;
        }
        if !changed {
            return Ok(waiting);
        }
    }
}

/// Records that `stage` reuses `source`'s outputs and returns its state.
fn reuse(
    store: &mut Store,
    run_id: i64,
    stage: &str,
    source: crate::store::StageRecord,
    fp: &str,
    inputs_json: &Value,
    progress: &mut Progress,
) -> Result<State> {
    store.cache_stage(run_id, stage, &source, fp, inputs_json)?;
    let arts: Vec<_> = store
        .artifacts(run_id)?
        .into_iter()
        .filter(|(s, _)| s == stage)
        .map(|(_, a)| a)
        .collect();
    let ms: Vec<_> = store
        .metrics(run_id)?
        .into_iter()
        .filter(|(s, _)| s == stage)
        .map(|(_, m)| m)
        .collect();
    progress.finished(
        stage,
        stage_status::CACHED,
        &format!("(reused from run {})", source.run_id),
    );
    Ok(State::Done(DoneStage {
        output_dir: PathBuf::from(source.output_dir.unwrap_or_default()),
        content_hash: hashing::combined_hash(&arts),
        metrics: last_values(&ms),
    }))
}

/// A stage of a resumed run whose Slurm job the previous (dead) runner
/// left behind: follow it when it is still queued or running, or ingest
/// it when it finished meanwhile. None means the stage must run again.
fn adopt_job(
    store: &mut Store,
    run_id: i64,
    rec: &crate::store::StageRecord,
    opts: &RunOptions,
    run_dir: &Path,
    tx: &mpsc::Sender<ChildMsg>,
) -> Result<Option<Running>> {
    let (Some(job), Some(dir)) = (&rec.job_id, &rec.output_dir) else {
        return Ok(None);
    };
    let output_dir = PathBuf::from(dir);
    let finished = output_dir.join(slurm::EXIT_FILE).exists();
    if !finished && !slurm::is_active(job) {
        return Ok(None);
    }
    // An adopted job runs whether or not a slot is free; take one so the
    // count stays right when it ends.
    let _ = opts.slots.try_acquire();
    store.adopt_stage(run_id, &rec.stage)?;
    let log = child::log_path(run_dir, &stage_dir_name(&rec.stage));
    slurm::watch(
        job.clone(),
        rec.stage.clone(),
        output_dir.clone(),
        log.clone(),
        tx.clone(),
    );
    Ok(Some(Running {
        handle: Handle::Job(job.clone()),
        started: Instant::now(),
        deadline: None,
        term_sent: None,
        kill_sent: false,
        timed_out: false,
        uses_gpu: false,
        results: StageResults::default(),
        error: None,
        output_dir,
        log,
    }))
}

#[allow(clippy::too_many_arguments)]
fn start_stage(
    store: &mut Store,
    run_id: i64,
    pipeline: &Pipeline,
    stage: &Stage,
    opts: &RunOptions,
    run_dir: &Path,
    upstream: BTreeMap<String, Upstream>,
    attempt: u32,
    uses_gpu: bool,
    tx: &mpsc::Sender<ChildMsg>,
) -> Result<Running> {
    let dir_name = stage_dir_name(&stage.name);
    let output_dir = std::path::absolute(run_dir.join(&dir_name))?;
    // A stage's folder holds exactly one attempt's outputs; a resumable
    // stage keeps its own checkpoints in `.resume/`.
    if output_dir.exists() {
        for entry in std::fs::read_dir(&output_dir)? {
            let entry = entry?;
            if entry.file_name() == ".resume" {
                continue;
            }
            let p = entry.path();
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else {
                std::fs::remove_file(&p)?;
            }
        }
    }
    std::fs::create_dir_all(&output_dir)
        .with_context(|| format!("cannot create {}", output_dir.display()))?;
    let invocation = Invocation {
        run_id,
        stage: stage.name.clone(),
        kind: stage.kind.clone(),
        config: stage.config.clone(),
        output_dir: output_dir.clone(),
        pipeline_dir: pipeline.dir.clone(),
        upstream,
        device: stage.device.clone(),
        seed: pipeline_seed(pipeline),
        params: pipeline.params.clone(),
        attempt,
    };
    let inv_path = output_dir.join(INVOCATION_FILE);
    std::fs::write(&inv_path, serde_json::to_vec_pretty(&invocation)?)
        .with_context(|| format!("cannot write {}", inv_path.display()))?;
    let log = child::log_path(run_dir, &dir_name);
    let handle = match &opts.executor {
        Executor::Local => Handle::Local(
            child::spawn(
                &opts.exe,
                &stage.name,
                &inv_path,
                &log,
                child::thread_share(
                    opts.concurrent_stages,
                    std::thread::available_parallelism().map_or(1, |n| n.get()),
                    std::env::var_os(child::THREADS_ENV).is_some(),
                ),
                tx.clone(),
            )
            .with_context(|| format!("cannot start {}", opts.exe.display()))?,
        ),
        Executor::Slurm(defaults) => {
            let resources = defaults.merged(&stage.resources);
            let spec = slurm::JobSpec {
                run_id,
                stage: &stage.name,
                exe: &opts.exe,
                invocation: &inv_path,
                output_dir: &output_dir,
                workdir: &pipeline.dir,
                log: &log,
                resources: &resources,
                timeout: stage.timeout,
            };
            let job = slurm::submit(&spec)?;
            store.set_stage_job(run_id, &stage.name, &job)?;
            slurm::watch(
                job.clone(),
                stage.name.clone(),
                output_dir.clone(),
                log.clone(),
                tx.clone(),
            );
            Handle::Job(job)
        }
    };
    let started = Instant::now();
    Ok(Running {
        handle,
        kill_sent: false,
        started,
        deadline: stage.timeout.map(|t| started + t),
        term_sent: None,
        timed_out: false,
        uses_gpu,
        results: StageResults::default(),
        error: None,
        output_dir,
        log,
    })
}

fn summarize(
    store: &Store,
    run_id: i64,
    pipeline: &Pipeline,
    durations: &HashMap<String, Duration>,
) -> Result<Vec<StageSummary>> {
    let records = store.stages(run_id)?;
    let metrics = store.metrics(run_id)?;
    let mut out = Vec::new();
    for stage in &pipeline.stages {
        let Some(rec) = records.iter().find(|r| r.stage == stage.name) else {
            continue;
        };
        let ms: Vec<_> = metrics
            .iter()
            .filter(|(s, _)| s == &stage.name)
            .map(|(_, m)| m.clone())
            .collect();
        out.push(StageSummary {
            stage: stage.name.clone(),
            kind: stage.kind.clone(),
            status: rec.status.clone(),
            duration: durations.get(&stage.name).copied(),
            reused_from: rec.reused_from,
            error: rec.error.clone(),
            metrics: last_values(&ms),
        });
    }
    Ok(out)
}

/// Runs several recorded runs side by side (the points of a sweep), each on
/// its own thread and DB connection, sharing `opts.slots` so that together
/// they never run more than `--jobs` stages. Stages the points share are
/// computed once: the first point to reach one takes its lock, the others
/// wait and reuse it.
pub fn execute_many(
    db: &Path,
    runs: &[(i64, Pipeline)],
    kinds: &dyn KindInfo,
    opts: &RunOptions,
    interrupted: Arc<AtomicBool>,
) -> Vec<Result<RunOutcome>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = runs
            .iter()
            .map(|(run_id, pipeline)| {
                let mut o = opts.clone();
                o.label = format!("[run {run_id}] ");
                o.concurrent_stages = opts.jobs.min(runs.len()).max(1);
                let flag = Arc::clone(&interrupted);
                scope.spawn(move || -> Result<RunOutcome> {
                    let mut store = Store::open(db)?;
                    execute(&mut store, *run_id, pipeline, kinds, &o, flag)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(anyhow::anyhow!(
                        "a sweep point's thread panicked; this is a bug, please report it"
                    ))
                })
            })
            .collect()
    })
}
