//! `command`: run a shell command as a stage, shaped like a DVC stage.
//!
//! `cmd` runs with `sh -c` in the pipeline file's folder (as DVC runs
//! commands in the `dvc.yaml` folder). It gets its own output folder in
//! `BP_OUT` and each upstream stage's folder in `BP_IN_<NAME>` (upper case,
//! non-alphanumerics as `_`), plus `BP_RUN_ID` and `BP_STAGE`. Declared
//! `deps` (relative to the pipeline folder) are hashed into the
//! fingerprint; declared `outs` (relative to `BP_OUT`) must exist after the
//! command. Its stdout and stderr are kept as `stdout.log`/`stderr.log` in
//! the output folder.
//!
//! Like DVC's metrics files, a command reports metrics by writing JSON to
//! `$BP_OUT/metrics.json` (the `metrics` option names another file): an
//! object whose values are a number, an object `{"value", "unit", "step",
//! "meta"}`, or a list of those (a history such as a loss curve; a bare
//! number in a list gets its index as step). They are recorded like the
//! metrics of a native stage, so `validate`, reports and `runs compare`
//! see them.
//!
//! A command reports run-level params (facts it found, like a checkpoint's
//! generation) by writing a JSON object to `$BP_OUT/params.json`; each entry
//! becomes a param of the run, and of every run that reuses the stage.
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::Value;

use super::{parse_config, OptionDoc, StageContext, StageKind};
use crate::pipeline::ConfigIssue;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    pub cmd: String,
    #[serde(default)]
    pub deps: Vec<String>,
    #[serde(default)]
    pub outs: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Metrics file relative to `$BP_OUT`, read when it exists.
    #[serde(default = "default_metrics_file")]
    pub metrics: String,
}

fn default_metrics_file() -> String {
    "metrics.json".to_string()
}

pub struct Command;

/// `BP_IN_<NAME>` for an upstream stage name.
pub fn upstream_env_name(stage: &str) -> String {
    let up: String = stage
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("BP_IN_{up}")
}

const OPTIONS: &[OptionDoc] = &[
    OptionDoc {
        name: "cmd",
        type_name: "string",
        default: "required",
        help: "shell command (sh -c), run in the pipeline file's folder",
    },
    OptionDoc {
        name: "deps",
        type_name: "list of paths",
        default: "[]",
        help: "input files/folders, relative to the pipeline folder; their content is part of the cache key",
    },
    OptionDoc {
        name: "outs",
        type_name: "list of paths",
        default: "[]",
        help: "files the command must create, relative to $BP_OUT",
    },
    OptionDoc {
        name: "env",
        type_name: "map",
        default: "{}",
        help: "extra environment variables",
    },
    OptionDoc {
        name: "metrics",
        type_name: "path",
        default: "metrics.json",
        help: "JSON metrics file the command may write, relative to $BP_OUT: {\"key\": 1.5, \"loss\": [{\"step\": 1, \"value\": 2.3}], \"speedup\": {\"value\": 2.1, \"unit\": \"x\", \"meta\": {..}}}",
    },
];

/// One entry of a metrics file in its long form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricEntry {
    value: f64,
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    step: Option<i64>,
    #[serde(default)]
    meta: Option<Value>,
}

/// Reads a command's metrics file (format in the module docs).
pub fn read_metrics_file(path: &std::path::Path) -> anyhow::Result<Vec<crate::store::Metric>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read metrics file {}", path.display()))?;
    let doc: serde_json::Map<String, Value> = serde_json::from_str(&text).with_context(|| {
        format!(
            "metrics file {} is not a JSON object of metric -> number, {{\"value\": ..}} or a list of those",
            path.display()
        )
    })?;
    let entry = |key: &str,
                 v: &Value,
                 index: Option<i64>|
     -> anyhow::Result<crate::store::Metric> {
        let e = match v {
            Value::Number(n) => MetricEntry {
                value: n.as_f64().unwrap_or(f64::NAN),
                unit: None,
                step: index,
                meta: None,
            },
            Value::Object(_) => {
                let mut e: MetricEntry = serde_json::from_value(v.clone()).with_context(|| {
                    format!(
                        "metrics file {}: `{key}` must be a number or {{\"value\": number, \"unit\", \"step\", \"meta\"}}",
                        path.display()
                    )
                })?;
                e.step = e.step.or(index);
                e
            }
            _ => bail!(
                "metrics file {}: `{key}` is {v}; write a number, an object with `value`, or a list of those",
                path.display()
            ),
        };
        Ok(crate::store::Metric {
            key: key.to_string(),
            step: e.step,
            value: e.value,
            unit: e.unit,
            meta: e.meta,
        })
    };
    let mut out = Vec::new();
    for (key, v) in &doc {
        match v {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    out.push(entry(key, item, Some(i as i64))?);
                }
            }
            _ => out.push(entry(key, v, None)?),
        }
    }
    Ok(out)
}

fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl StageKind for Command {
    fn name(&self) -> &'static str {
        "command"
    }

    fn summary(&self) -> &'static str {
        "run a shell command (DVC-style deps/outs); env: BP_OUT, BP_IN_<UPSTREAM>, BP_RUN_ID, BP_STAGE"
    }

    fn options(&self) -> &'static [OptionDoc] {
        OPTIONS
    }

    /// 2: metrics files are read (a cached result of version 1 has none).
    /// 3: `params.json` is read.
    fn code_version(&self) -> &'static str {
        "3"
    }

    fn check_config(&self, config: &Value) -> Result<(), ConfigIssue> {
        let c: CommandConfig = parse_config(config)?;
        if c.cmd.trim().is_empty() {
            return Err(ConfigIssue {
                path: vec!["cmd".into()],
                message: "`cmd` is empty".into(),
            });
        }
        Ok(())
    }

    fn deps(&self, config: &Value) -> Vec<String> {
        parse_config::<CommandConfig>(config)
            .map(|c| c.deps)
            .unwrap_or_default()
    }

    fn run(&self, ctx: &mut StageContext) -> anyhow::Result<()> {
        let c: CommandConfig =
            parse_config(ctx.config()).map_err(|e| anyhow::anyhow!(e.message))?;
        let out = ctx.output_dir().to_path_buf();
        let stdout_path = out.join("stdout.log");
        let stderr_path = out.join("stderr.log");
        let stdout = std::fs::File::create(&stdout_path)
            .with_context(|| format!("cannot create {}", stdout_path.display()))?;
        let stderr = std::fs::File::create(&stderr_path)
            .with_context(|| format!("cannot create {}", stderr_path.display()))?;
        let inv = &ctx.invocation;
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg(&c.cmd)
            .current_dir(&inv.pipeline_dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .env("BP_OUT", &out)
            .env("BP_RUN_ID", inv.run_id.to_string())
            .env("BP_STAGE", &inv.stage);
        for (name, up) in &inv.upstream {
            cmd.env(upstream_env_name(name), &up.output_dir);
        }
        cmd.envs(&c.env);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(sig, Arc::clone(&stop))
                .context("cannot install signal handler")?;
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start `sh -c {}`", c.cmd))?;
        let pgid = child.id() as libc::pid_t;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if stop.load(Ordering::SeqCst) {
                // SAFETY: signals the process group we created above.
                unsafe {
                    libc::kill(-pgid, libc::SIGTERM);
                }
                let _ = child.wait();
                bail!("stopped by the runner");
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        if !status.success() {
            let how = status
                .code()
                .map(|c| format!("exited with status {c}"))
                .unwrap_or_else(|| "was killed by a signal".into());
            let err_tail = tail(&stderr_path, 5);
            let mut msg = format!("command `{}` {how}", c.cmd);
            if !err_tail.is_empty() {
                msg.push_str(&format!("; last lines of stderr:\n{err_tail}"));
            }
            bail!(msg);
        }
        let missing: Vec<&String> = c.outs.iter().filter(|o| !out.join(o).exists()).collect();
        if !missing.is_empty() {
            let names: Vec<String> = missing.iter().map(|m| format!("`{m}`")).collect();
            bail!(
                "command succeeded but did not create declared outs {} in {}; write them under $BP_OUT",
                names.join(", "),
                out.display()
            );
        }
        let metrics_path = out.join(&c.metrics);
        if metrics_path.is_file() {
            for m in read_metrics_file(&metrics_path)? {
                ctx.metric_full(&m.key, m.step, m.value, m.unit.as_deref(), m.meta);
            }
        }
        let params_path = out.join("params.json");
        if params_path.is_file() {
            let text = std::fs::read_to_string(&params_path)
                .with_context(|| format!("cannot read params file {}", params_path.display()))?;
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(m)) => {
                    for (k, v) in m {
                        ctx.param(&k, v);
                    }
                }
                _ => bail!(
                    "params file {} is not a JSON object of param -> value",
                    params_path.display()
                ),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn config_rejects_unknown_keys_with_their_path() {
        let err = Command
            .check_config(&json!({"cmd": "true", "outz": []}))
            .unwrap_err();
        assert!(
            err.message.contains("unknown field `outz`"),
            "{}",
            err.message
        );
        let err = Command.check_config(&json!({"cmd": 5})).unwrap_err();
        assert_eq!(err.path, vec!["cmd"]);
        assert!(Command
            .check_config(&json!({"cmd": "echo hi", "deps": ["a"]}))
            .is_ok());
    }

    #[test]
    fn metrics_files_accept_numbers_objects_and_histories() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.json");
        std::fs::write(
            &p,
            r#"{"acc": 0.9, "speedup": {"value": 2.5, "unit": "x", "meta": {"batch": 1}},
                "loss": [3.0, {"step": 10, "value": 2.0}]}"#,
        )
        .unwrap();
        let ms = read_metrics_file(&p).unwrap();
        let get = |k: &str| ms.iter().filter(|m| m.key == k).collect::<Vec<_>>();
        assert_eq!(get("acc")[0].value, 0.9);
        assert_eq!(get("acc")[0].step, None);
        assert_eq!(get("speedup")[0].unit.as_deref(), Some("x"));
        assert_eq!(get("speedup")[0].meta, Some(json!({"batch": 1})));
        let loss = get("loss");
        assert_eq!((loss[0].step, loss[0].value), (Some(0), 3.0));
        assert_eq!((loss[1].step, loss[1].value), (Some(10), 2.0));
        std::fs::write(&p, r#"{"acc": "high"}"#).unwrap();
        let msg = read_metrics_file(&p).unwrap_err().to_string();
        assert!(msg.contains("`acc`"), "{msg}");
    }

    #[test]
    fn upstream_env_names_are_shell_safe() {
        assert_eq!(upstream_env_name("load-ckpt.v2"), "BP_IN_LOAD_CKPT_V2");
    }
}
