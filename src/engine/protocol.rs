//! The contract between the runner and a stage's child process.
//!
//! The runner writes an `Invocation` as JSON into the stage's output folder
//! (`.invocation.json`) and starts `bitnet-pipeline exec-stage PATH`. The
//! child reports back on stdout, one event per line, each line prefixed
//! with `EVENT_PREFIX` so stray output (libtorch warnings, prints) can never
//! be mistaken for an event; anything else it prints goes to the stage log.
//! Exit status 0 means success. The same command line is what a cluster
//! executor would submit.
use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::{Finding, Metric, Target};

pub const EVENT_PREFIX: &str = "@@bitnet-pipeline@@ ";
pub const INVOCATION_FILE: &str = ".invocation.json";

/// An upstream stage as the child sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Upstream {
    pub kind: String,
    pub output_dir: PathBuf,
    /// Final metric values of the upstream stage (last value per key), so a
    /// stage such as `validate` can read them without the DB.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
}

/// Everything a stage needs to run, independent of the DB.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Invocation {
    pub run_id: i64,
    pub stage: String,
    pub kind: String,
    pub config: Value,
    pub output_dir: PathBuf,
    /// Folder of the pipeline file; relative paths resolve against it.
    pub pipeline_dir: PathBuf,
    pub upstream: BTreeMap<String, Upstream>,
    /// Requested device (`auto`, `cpu`, `cuda`, `cuda:N`) or None.
    pub device: Option<String>,
    pub seed: Option<i64>,
    /// All pipeline params after overrides.
    pub params: Value,
    /// Set when this attempt continues an earlier interrupted one (a stage
    /// may pick up its own checkpoints from `output_dir/.resume/`).
    #[serde(default)]
    pub attempt: u32,
}

/// A message from a stage to the runner.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// Progress of long work: `pos` of `len` (if known) and a short message.
    Progress {
        pos: u64,
        len: Option<u64>,
        message: String,
    },
    Metric(Metric),
    /// A run-level parameter discovered while running (checkpoint metadata).
    Param {
        key: String,
        value: Value,
    },
    Finding(Finding),
    Target(Target),
    /// Why the stage failed (the child then exits non-zero).
    Error {
        message: String,
    },
}

impl Event {
    pub fn to_line(&self) -> String {
        format!(
            "{EVENT_PREFIX}{}",
            serde_json::to_string(self).expect("events always serialize")
        )
    }

    /// Parses one stdout line; None for ordinary output.
    pub fn from_line(line: &str) -> Option<Result<Event, serde_json::Error>> {
        line.strip_prefix(EVENT_PREFIX)
            .map(|json| serde_json::from_str(json.trim_end()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_plain_lines_are_not_events() {
        let e = Event::Progress {
            pos: 3,
            len: Some(10),
            message: "step".into(),
        };
        assert_eq!(Event::from_line(&e.to_line()).unwrap().unwrap(), e);
        assert!(Event::from_line("warning: something").is_none());
    }
}
