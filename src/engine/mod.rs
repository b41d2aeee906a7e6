//! The engine: turns a validated `Pipeline` into a run. It schedules stages
//! in dependency order with up to `--jobs` in parallel, reuses stages whose
//! fingerprint already completed, runs each stage as a child process, and
//! records every state change in the results DB. It knows stage kinds only
//! through `KindInfo`, never their implementations.

pub mod child;
pub mod fingerprint;
pub mod hashing;
pub mod plan;
pub mod progress;
pub mod protocol;
pub mod scheduler;
pub mod select;
pub mod slurm;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::Value;

pub use plan::{plan, PlanEntry};
pub use scheduler::{execute, execute_many, RunOutcome, StageSummary};

/// What the engine needs to know about a stage kind.
pub trait KindInfo: Send + Sync {
    /// Whether stages of this kind are reused when their fingerprint matches
    /// (measurement stages say no: a measurement is only true for its run).
    fn cache_by_default(&self, kind: &str) -> bool;
    /// Whether the kind runs tensors on the run's device (so CUDA stages
    /// take the device token).
    fn uses_device(&self, kind: &str) -> bool;
    /// Implementation version, part of the fingerprint.
    fn code_version(&self, kind: &str) -> String;
    /// Input files/folders (relative to the pipeline folder) whose content
    /// is part of the fingerprint.
    fn deps(&self, kind: &str, config: &Value) -> Vec<String>;
}

/// Where stages run.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Executor {
    /// A child process of the runner.
    #[default]
    Local,
    /// A Slurm batch job per stage; `executor:` resources from the pipeline.
    Slurm(crate::pipeline::spec::Resources),
}

impl Executor {
    pub fn name(&self) -> &'static str {
        match self {
            Executor::Local => "local",
            Executor::Slurm(_) => "slurm",
        }
    }
}

/// Job slots shared by every run a process drives (the points of a sweep
/// run side by side but together never exceed `--jobs`).
#[derive(Debug)]
pub struct JobSlots {
    capacity: usize,
    used: AtomicUsize,
}

impl JobSlots {
    pub fn new(capacity: usize) -> Arc<JobSlots> {
        Arc::new(JobSlots {
            capacity: capacity.max(1),
            used: AtomicUsize::new(0),
        })
    }

    /// Takes a slot if one is free.
    pub fn try_acquire(&self) -> bool {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                (u < self.capacity).then_some(u + 1)
            })
            .is_ok()
    }

    /// Slots taken now (by every run sharing them).
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }

    pub fn release(&self) {
        let _ = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| u.checked_sub(1));
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Stages at once (default: number of cores).
    pub jobs: usize,
    /// Stages to re-run even if cached.
    pub force: Vec<String>,
    pub force_all: bool,
    /// No progress output at all.
    pub quiet: bool,
    /// Where runs live (`runs/` by default).
    pub runs_dir: PathBuf,
    /// The binary children run (`exec-stage`); the current executable.
    pub exe: PathBuf,
    /// Stages that must be reused from the cache and may not run (the
    /// upstream of `run --only`); see `select.rs`.
    pub cache_only: Vec<String>,
    /// Where stages run.
    pub executor: Executor,
    /// Shared job slots (`--jobs`); one per process, shared by sweep points.
    pub slots: Arc<JobSlots>,
    /// The device token (one slot): GPU stages of every run this process
    /// drives take it, so two never share a card.
    pub gpu: Arc<JobSlots>,
    /// Prefix for progress lines (`[run 3] `) when several runs share a terminal.
    pub label: String,
    /// How many stages are expected to run at once, for each stage's share
    /// of the cores (`child::thread_share`): 1 for a single run (its stages
    /// keep libtorch's default of every core, as before), min(`--jobs`,
    /// points) for a sweep, whose points' heavy stages run side by side.
    pub concurrent_stages: usize,
}

/// Version of this crate, the shared part of every kind's code version.
pub const CRATE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A folder name for a stage: its name when that is a safe path component,
/// else a sanitised name plus a short hash (stage names are free text, e.g.
/// in tests that check HTML escaping).
pub fn stage_dir_name(stage: &str) -> String {
    let safe = !stage.is_empty()
        && !stage.starts_with('.')
        && stage
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if safe {
        return stage.to_string();
    }
    let cleaned: String = stage
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(40)
        .collect();
    let hash = blake3::hash(stage.as_bytes()).to_hex();
    format!("{}-{}", cleaned.trim_matches('_'), &hash[..8])
}

/// `auto` means CUDA when an NVIDIA device node exists; the stage itself
/// decides with libtorch, this is only for the device token.
pub fn wants_gpu(device: Option<&str>) -> bool {
    match device {
        Some(d) if d.starts_with("cuda") => true,
        Some("auto") => std::path::Path::new("/dev/nvidia0").exists(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_dirs_are_safe_path_components() {
        assert_eq!(stage_dir_name("train"), "train");
        let d = stage_dir_name("<script>alert(1)</script>");
        assert!(
            d.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            "{d}"
        );
        assert_ne!(stage_dir_name("a/b"), stage_dir_name("a_b"));
    }
}
