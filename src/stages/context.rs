//! What a stage sees while it runs in its child process: its invocation
//! (config, output folder, upstream folders) and a way to report progress,
//! metrics, params, findings and targets to the runner.
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::engine::protocol::{Event, Invocation};
use crate::store::{Finding, Metric, Target};

pub struct StageContext {
    pub invocation: Invocation,
    out: Box<dyn Write + Send>,
}

impl StageContext {
    /// A context that reports on this process's stdout (the runner reads it).
    pub fn new(invocation: Invocation) -> StageContext {
        StageContext {
            invocation,
            out: Box::new(std::io::stdout()),
        }
    }

    /// A context that reports into any writer (tests).
    pub fn with_writer(invocation: Invocation, out: Box<dyn Write + Send>) -> StageContext {
        StageContext { invocation, out }
    }

    pub fn config(&self) -> &Value {
        &self.invocation.config
    }

    pub fn output_dir(&self) -> &Path {
        &self.invocation.output_dir
    }

    /// Resolves a path written in the pipeline file (relative to its folder).
    pub fn resolve(&self, path: &str) -> PathBuf {
        self.invocation.pipeline_dir.join(path)
    }

    /// The output folder of upstream stage `name` (must be in `needs`).
    pub fn upstream_dir(&self, name: &str) -> anyhow::Result<&Path> {
        self.invocation
            .upstream
            .get(name)
            .map(|u| u.output_dir.as_path())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "stage `{}` reads from `{name}`, which is not in its `needs`; add `needs: [{name}]`",
                    self.invocation.stage
                )
            })
    }

    fn emit(&mut self, event: Event) {
        // A broken pipe means the runner is gone; the stage will be stopped.
        let _ = writeln!(self.out, "{}", event.to_line());
        let _ = self.out.flush();
    }

    pub fn progress(&mut self, pos: u64, len: Option<u64>, message: impl Into<String>) {
        self.emit(Event::Progress {
            pos,
            len,
            message: message.into(),
        });
    }

    pub fn metric(&mut self, key: &str, value: f64, unit: Option<&str>) {
        self.metric_full(key, None, value, unit, None);
    }

    pub fn metric_full(
        &mut self,
        key: &str,
        step: Option<i64>,
        value: f64,
        unit: Option<&str>,
        meta: Option<Value>,
    ) {
        self.emit(Event::Metric(Metric {
            key: key.to_string(),
            step,
            value,
            unit: unit.map(str::to_string),
            meta,
        }));
    }

    pub fn param(&mut self, key: &str, value: Value) {
        self.emit(Event::Param {
            key: key.to_string(),
            value,
        });
    }

    pub fn finding(&mut self, finding: Finding) {
        self.emit(Event::Finding(finding));
    }

    pub fn target(&mut self, target: Target) {
        self.emit(Event::Target(target));
    }

    pub fn error(&mut self, message: impl Into<String>) {
        self.emit(Event::Error {
            message: message.into(),
        });
    }
}
