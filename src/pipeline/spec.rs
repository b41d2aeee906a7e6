//! The raw shape of a pipeline file, as serde structs. These mirror the YAML
//! (design.md section 3) and are checked for unknown keys with a
//! did-you-mean before serde sees them; `load` turns them into a validated
//! `Pipeline`.
use serde::Deserialize;

/// Keys allowed at the top level of a pipeline file.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "version",
    "name",
    "description",
    "params",
    "executor",
    "stages",
];

/// Keys allowed in a stage.
pub const STAGE_KEYS: &[&str] = &[
    "uses",
    "needs",
    "with",
    "cache",
    "timeout",
    "retries",
    "device",
    "resources",
    "description",
];

/// The only pipeline file format version so far.
pub const SPEC_VERSION: u64 = 1;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// Stage kind (`bitnet-pipeline stages` lists them).
    pub uses: String,
    #[serde(default)]
    pub needs: Needs,
    #[serde(default, rename = "with")]
    pub with_: Option<serde_yaml::Mapping>,
    pub cache: Option<bool>,
    pub timeout: Option<Timeout>,
    pub retries: Option<u32>,
    pub device: Option<String>,
    #[serde(default)]
    pub resources: Resources,
    pub description: Option<String>,
}

/// A scalar written as text or a number (`mem: 4G`, `cpus: 4`, `gpus: 1`).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum Scalar {
    Int(i64),
    Float(f64),
    Text(String),
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Text(s) => f.write_str(s),
        }
    }
}

/// Batch-job resources (issue #17): in `executor:` for every stage, in a
/// stage's `resources:` to override them. Not part of any fingerprint: where
/// a stage runs does not change what it computes.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub partition: Option<String>,
    pub account: Option<String>,
    /// Slurm `--time` (`30`, `1:00:00`, `1-0`); default from `timeout:`.
    pub time: Option<Scalar>,
    pub cpus: Option<u32>,
    pub mem: Option<Scalar>,
    pub gpus: Option<Scalar>,
    /// More `sbatch` arguments, as written.
    #[serde(default)]
    pub extra_args: Vec<String>,
}

impl Resources {
    /// `self` with every field `over` sets replaced (extra args appended).
    pub fn merged(&self, over: &Resources) -> Resources {
        let mut extra = self.extra_args.clone();
        extra.extend(over.extra_args.iter().cloned());
        Resources {
            partition: over.partition.clone().or_else(|| self.partition.clone()),
            account: over.account.clone().or_else(|| self.account.clone()),
            time: over.time.clone().or_else(|| self.time.clone()),
            cpus: over.cpus.or(self.cpus),
            mem: over.mem.clone().or_else(|| self.mem.clone()),
            gpus: over.gpus.clone().or_else(|| self.gpus.clone()),
            extra_args: extra,
        }
    }
}

/// The top-level `executor:` block.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorSpec {
    /// `local` (default) or `slurm`; `run --executor` overrides it.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub time: Option<Scalar>,
    pub cpus: Option<u32>,
    pub mem: Option<Scalar>,
    pub gpus: Option<Scalar>,
    #[serde(default)]
    pub extra_args: Vec<String>,
}

impl ExecutorSpec {
    pub fn resources(&self) -> Resources {
        Resources {
            partition: self.partition.clone(),
            account: self.account.clone(),
            time: self.time.clone(),
            cpus: self.cpus,
            mem: self.mem.clone(),
            gpus: self.gpus.clone(),
            extra_args: self.extra_args.clone(),
        }
    }
}

/// `needs: load` or `needs: [load, convert]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(untagged)]
pub enum Needs {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl Needs {
    pub fn names(&self) -> Vec<String> {
        match self {
            Needs::None => Vec::new(),
            Needs::One(s) => vec![s.clone()],
            Needs::Many(v) => v.clone(),
        }
    }
}

/// `timeout: 90` (seconds) or `timeout: 10m` / `"2h"` / `"30s"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Timeout {
    Seconds(f64),
    Text(String),
}

impl Timeout {
    pub fn to_duration(&self) -> Result<std::time::Duration, String> {
        let secs = match self {
            Timeout::Seconds(s) => *s,
            Timeout::Text(t) => {
                let t = t.trim();
                let (num, mult) = match t.char_indices().last() {
                    Some((i, 's')) => (&t[..i], 1.0),
                    Some((i, 'm')) => (&t[..i], 60.0),
                    Some((i, 'h')) => (&t[..i], 3600.0),
                    _ => (t, 1.0),
                };
                num.trim().parse::<f64>().map_err(|_| {
                    format!("invalid timeout `{t}`: write seconds (`90`) or `30s`, `10m`, `2h`")
                })? * mult
            }
        };
        if !(secs.is_finite() && secs > 0.0) {
            return Err(format!("timeout must be positive, got {secs}"));
        }
        Ok(std::time::Duration::from_secs_f64(secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_with_units() {
        let d = |t: Timeout| t.to_duration().map(|d| d.as_secs_f64());
        assert_eq!(d(Timeout::Seconds(90.0)), Ok(90.0));
        assert_eq!(d(Timeout::Text("10m".into())), Ok(600.0));
        assert_eq!(d(Timeout::Text("2h".into())), Ok(7200.0));
        assert_eq!(d(Timeout::Text("1.5s".into())), Ok(1.5));
        assert!(d(Timeout::Text("soon".into())).is_err());
        assert!(d(Timeout::Seconds(0.0)).is_err());
    }
}
