//! Pipeline files: parse the YAML, validate it with source locations, apply
//! `--set` overrides and `${params...}` interpolation, and build the stage
//! graph. The result, a `Pipeline`, is the only thing the engine sees.
//!
//! Validation collects every problem it can find before giving up.

pub mod dag;
pub mod diagnostic;
pub mod params;
pub mod source_map;
pub mod spec;
pub mod sweep;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

pub use dag::StageGraph;
pub use diagnostic::{did_you_mean, Diagnostic, Diagnostics, Location};
pub use params::Override;
use source_map::{Pos, SourceMap};
use spec::{StageSpec, SPEC_VERSION, STAGE_KEYS, TOP_LEVEL_KEYS};

/// A problem in one stage's `with` block, found by its stage kind.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigIssue {
    /// Path inside `with`, e.g. `["targets", "speedup"]`; empty for the block.
    pub path: Vec<String>,
    pub message: String,
}

/// What validation needs to know about stage kinds, without depending on
/// the stage implementations (the engine/pipeline layers never import them).
pub trait KindCatalog {
    /// Names of all stage kinds.
    fn kind_names(&self) -> Vec<&'static str>;
    /// Checks a resolved `with` block; None if the kind is unknown.
    fn check_config(&self, kind: &str, config: &Value) -> Option<Result<(), ConfigIssue>>;
}

/// A validated stage, ready for the scheduler.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub name: String,
    pub kind: String,
    /// Upstream stage names, in the order written.
    pub needs: Vec<String>,
    /// The `with` block after interpolation (canonical JSON).
    pub config: Value,
    /// `cache:` as written; None means the kind's default.
    pub cache: Option<bool>,
    pub timeout: Option<Duration>,
    pub retries: u32,
    /// `device:` for this stage, else `params.device`, else None.
    pub device: Option<String>,
    /// `resources:` for a batch job (overrides `executor:`).
    pub resources: spec::Resources,
}

/// A validated pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    /// The path as the user gave it (for messages).
    pub display_path: PathBuf,
    /// Absolute path of the file.
    pub path: PathBuf,
    /// Folder commands run in and relative paths resolve against.
    pub dir: PathBuf,
    /// The file's text, kept so a resumed run uses exactly what started it.
    pub source: String,
    /// blake3 of the file's text.
    pub source_hash: String,
    /// `params` after overrides.
    pub params: Value,
    pub overrides: Vec<Override>,
    /// Stages in a deterministic topological order.
    pub stages: Vec<Stage>,
    pub graph: StageGraph,
    /// The `executor:` block, if any.
    pub executor: Option<spec::ExecutorSpec>,
}

impl Pipeline {
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }

    pub fn kinds(&self) -> HashMap<String, String> {
        self.stages
            .iter()
            .map(|s| (s.name.clone(), s.kind.clone()))
            .collect()
    }

    /// Stage names in topological order.
    pub fn order(&self) -> Vec<String> {
        self.stages.iter().map(|s| s.name.clone()).collect()
    }
}

/// Reads and validates a pipeline file.
pub fn load(
    path: &Path,
    overrides: &[String],
    catalog: &dyn KindCatalog,
) -> Result<Pipeline, Diagnostics> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Diagnostic::new(format!(
            "cannot read pipeline file `{}`: {e}",
            path.display()
        ))
        .help("check the path; pipelines usually live in `pipelines/`")
    })?;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    parse(&text, path, &abs, overrides, catalog)
}

/// Validates pipeline text. `display_path` is used in messages, `abs_path`
/// to resolve the pipeline's folder.
pub fn parse(
    text: &str,
    display_path: &Path,
    abs_path: &Path,
    overrides: &[String],
    catalog: &dyn KindCatalog,
) -> Result<Pipeline, Diagnostics> {
    let v = Validator {
        file: display_path.to_path_buf(),
        map: SourceMap::build(text),
        diags: Diagnostics::default(),
    };
    v.run(text, abs_path, overrides, catalog)
}

struct Validator {
    file: PathBuf,
    map: SourceMap,
    diags: Diagnostics,
}

fn path_of(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

fn yaml_type_name(v: &serde_yaml::Value) -> &'static str {
    match v {
        serde_yaml::Value::Null => "nothing",
        serde_yaml::Value::Bool(_) => "a boolean",
        serde_yaml::Value::Number(_) => "a number",
        serde_yaml::Value::String(_) => "a string",
        serde_yaml::Value::Sequence(_) => "a list",
        serde_yaml::Value::Mapping(_) => "a mapping",
        serde_yaml::Value::Tagged(_) => "a tagged value",
    }
}

impl Validator {
    fn loc(&self, pos: Option<Pos>) -> Option<Location> {
        pos.map(|p| Location {
            file: self.file.clone(),
            line: p.line,
            column: p.column,
        })
    }

    fn at_value(&self, path: &[String]) -> Option<Location> {
        self.loc(self.map.value(path))
    }

    fn at_key(&self, path: &[String]) -> Option<Location> {
        self.loc(self.map.key(path).or_else(|| self.map.value(path)))
    }

    fn error(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    fn unknown_key(&mut self, path: Vec<String>, key: &str, what: &str, allowed: &[&str]) {
        let mut msg = format!("unknown key `{key}` {what}");
        if let Some(hint) = did_you_mean(key, allowed.iter().copied()) {
            msg.push_str(&format!(" ({hint})"));
        }
        let d = Diagnostic::new(msg)
            .at(self.at_key(&path))
            .help(format!("allowed keys: {}", allowed.join(", ")));
        self.error(d);
    }

    fn run(
        mut self,
        text: &str,
        abs_path: &Path,
        overrides: &[String],
        catalog: &dyn KindCatalog,
    ) -> Result<Pipeline, Diagnostics> {
        let start = Some(Location {
            file: self.file.clone(),
            line: 1,
            column: 1,
        });
        if text.trim().is_empty() {
            return Err(Diagnostic::new(format!("pipeline file `{}` is empty", self.file.display()))
                .at(start)
                .help("a pipeline needs at least `version: 1`, `name:` and `stages:`; see pipelines/phase4.yaml")
                .into());
        }
        // Duplicates first: serde_yaml would reject them with a less
        // helpful message, and a user wants to see all of them.
        for dup in std::mem::take(&mut self.map.duplicates) {
            let what = if dup.parent == ["stages"] {
                format!("duplicate stage `{}`", dup.key)
            } else {
                format!("duplicate key `{}`", dup.key)
            };
            let d = Diagnostic::new(format!("{what} (first defined on line {})", dup.first.line))
                .at(self.loc(Some(dup.second)))
                .help("names must be unique; rename or remove one of them");
            self.error(d);
        }
        if !self.diags.is_empty() {
            return Err(self.diags);
        }
        let doc: serde_yaml::Value = match serde_yaml::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                let loc = e.location().map(|l| Location {
                    file: self.file.clone(),
                    line: l.line(),
                    column: l.column(),
                });
                let msg = e.to_string();
                // serde_yaml appends " at line X column Y"; we print it below.
                let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
                return Err(Diagnostic::new(format!("not valid YAML: {msg}"))
                    .at(loc.or(start))
                    .help("check indentation and quoting near that position")
                    .into());
            }
        };
        let serde_yaml::Value::Mapping(top) = doc else {
            return Err(Diagnostic::new(format!(
                "a pipeline file must be a mapping with `version`, `name` and `stages`, found {}",
                yaml_type_name(&doc)
            ))
            .at(start)
            .into());
        };

        for key in top.keys() {
            let k = key.as_str().unwrap_or("<non-string key>");
            if !TOP_LEVEL_KEYS.contains(&k) {
                self.unknown_key(path_of(&[k]), k, "at the top level", TOP_LEVEL_KEYS);
            }
        }
        match top.get("version") {
            None => self.error(
                Diagnostic::new("missing `version`")
                    .at(start.clone())
                    .help(format!("add `version: {SPEC_VERSION}` at the top")),
            ),
            Some(v) if v.as_u64() != Some(SPEC_VERSION) => {
                let d = Diagnostic::new(format!(
                    "unsupported pipeline `version` {}; this bitnet-pipeline reads version {SPEC_VERSION}",
                    serde_yaml::to_string(v).unwrap_or_default().trim()
                ))
                .at(self.at_value(&path_of(&["version"])));
                self.error(d);
            }
            Some(_) => {}
        }
        let name = match top.get("name") {
            Some(serde_yaml::Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(other) => {
                let d = Diagnostic::new(format!(
                    "`name` must be a non-empty string, found {}",
                    yaml_type_name(other)
                ))
                .at(self.at_value(&path_of(&["name"])));
                self.error(d);
                String::new()
            }
            None => abs_path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "pipeline".into()),
        };

        // params (+ overrides)
        let mut params = match top.get("params") {
            None | Some(serde_yaml::Value::Null) => Value::Object(Default::default()),
            Some(p @ serde_yaml::Value::Mapping(_)) => match serde_json::to_value(p) {
                Ok(v) => v,
                Err(e) => {
                    let d = Diagnostic::new(format!("`params` cannot be used: {e}"))
                        .at(self.at_value(&path_of(&["params"])));
                    self.error(d);
                    Value::Object(Default::default())
                }
            },
            Some(other) => {
                let d = Diagnostic::new(format!(
                    "`params` must be a mapping, found {}",
                    yaml_type_name(other)
                ))
                .at(self.at_value(&path_of(&["params"])));
                self.error(d);
                Value::Object(Default::default())
            }
        };
        let mut parsed_overrides = Vec::new();
        for raw in overrides {
            match Override::parse(raw).and_then(|o| o.apply(&mut params).map(|_| o)) {
                Ok(o) => parsed_overrides.push(o),
                Err(e) => self.error(
                    Diagnostic::new(e.to_string())
                        .help("run `bitnet-pipeline validate FILE` to see the pipeline's params"),
                ),
            }
        }

        // stages
        let stage_entries: Vec<(String, serde_yaml::Value)> = match top.get("stages") {
            Some(serde_yaml::Value::Mapping(m)) if !m.is_empty() => m
                .iter()
                .map(|(k, v)| {
                    let name = match k {
                        serde_yaml::Value::String(s) => s.clone(),
                        other => serde_yaml::to_string(other)
                            .unwrap_or_default()
                            .trim()
                            .to_string(),
                    };
                    (name, v.clone())
                })
                .collect(),
            Some(serde_yaml::Value::Mapping(_)) => {
                let d = Diagnostic::new("`stages` is empty")
                    .at(self.at_value(&path_of(&["stages"])))
                    .help("add at least one stage; `bitnet-pipeline stages` lists the kinds");
                self.error(d);
                Vec::new()
            }
            None => {
                self.error(
                    Diagnostic::new("missing `stages`")
                        .at(start.clone())
                        .help("add a `stages:` mapping; `bitnet-pipeline stages` lists the kinds"),
                );
                Vec::new()
            }
            Some(other) => {
                let d = Diagnostic::new(format!(
                    "`stages` must be a mapping from stage name to stage, found {}",
                    yaml_type_name(other)
                ))
                .at(self.at_value(&path_of(&["stages"])));
                self.error(d);
                Vec::new()
            }
        };

        let executor = match top.get("executor") {
            None | Some(serde_yaml::Value::Null) => None,
            Some(v) => match serde_path_to_error::deserialize::<_, spec::ExecutorSpec>(v.clone()) {
                Ok(e) => {
                    if let Some(k) = e
                        .kind
                        .as_deref()
                        .filter(|k| !["local", "slurm"].contains(k))
                    {
                        let d = Diagnostic::new(format!("unknown executor type `{k}`"))
                            .at(self.at_value(&path_of(&["executor", "type"])))
                            .help("use `local` (the default) or `slurm`");
                        self.error(d);
                    }
                    Some(e)
                }
                Err(e) => {
                    let mut p = path_of(&["executor"]);
                    p.extend(
                        e.path()
                            .iter()
                            .map(|seg| seg.to_string())
                            .filter(|s| s != "?"),
                    );
                    let msg = e.inner().to_string();
                    let d = Diagnostic::new(format!(
                        "`executor`: {}",
                        msg.split(" at line ").next().unwrap_or_default()
                    ))
                    .at(self.at_value(&p))
                    .help("executor keys: type, partition, account, time, cpus, mem, gpus, extra_args");
                    self.error(d);
                    None
                }
            },
        };

        let kinds = catalog.kind_names();
        let names: Vec<String> = stage_entries.iter().map(|(n, _)| n.clone()).collect();
        let mut stages = Vec::new();
        for (name, value) in &stage_entries {
            if let Some(stage) = self.stage(name, value, &names, &kinds, &params, catalog) {
                stages.push(stage);
            }
        }

        // graph: cycles are only meaningful when every stage parsed.
        let graph = StageGraph::new(
            &stages
                .iter()
                .map(|s: &Stage| (s.name.clone(), s.needs.clone()))
                .collect::<Vec<_>>(),
        );
        for cycle in graph.cycles() {
            let first = cycle[0].clone();
            let d = Diagnostic::new(format!("the stages form a cycle: {}", cycle.join(" -> ")))
                .at(self.at_value(&path_of(&["stages", &first, "needs"])))
                .help("a stage cannot depend on itself, directly or through other stages; remove one of these `needs`");
            self.error(d);
        }
        if !self.diags.is_empty() {
            return Err(self.diags);
        }
        let order = graph
            .topological_order()
            .expect("cycles were reported above");
        let mut by_name: HashMap<String, Stage> =
            stages.into_iter().map(|s| (s.name.clone(), s)).collect();
        let stages = order
            .iter()
            .map(|n| by_name.remove(n).expect("every node is a stage"))
            .collect();
        Ok(Pipeline {
            name,
            display_path: self.file.clone(),
            path: abs_path.to_path_buf(),
            dir: abs_path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(".")),
            source: text.to_string(),
            source_hash: blake3::hash(text.as_bytes()).to_hex().to_string(),
            params,
            overrides: parsed_overrides,
            stages,
            graph,
            executor,
        })
    }

    fn stage(
        &mut self,
        name: &str,
        value: &serde_yaml::Value,
        names: &[String],
        kinds: &[&'static str],
        params: &Value,
        catalog: &dyn KindCatalog,
    ) -> Option<Stage> {
        let base = path_of(&["stages", name]);
        if name.trim().is_empty() {
            let d = Diagnostic::new("a stage name cannot be empty").at(self.at_key(&base));
            self.error(d);
            return None;
        }
        let serde_yaml::Value::Mapping(m) = value else {
            let d = Diagnostic::new(format!(
                "stage `{name}` must be a mapping with at least `uses:`, found {}",
                yaml_type_name(value)
            ))
            .at(self.at_value(&base));
            self.error(d);
            return None;
        };
        let mut ok = true;
        for key in m.keys() {
            let k = key.as_str().unwrap_or("<non-string key>");
            if !STAGE_KEYS.contains(&k) {
                let mut p = base.clone();
                p.push(k.to_string());
                self.unknown_key(p, k, &format!("in stage `{name}`"), STAGE_KEYS);
                ok = false;
            }
        }
        if !m.contains_key("uses") {
            let d = Diagnostic::new(format!("stage `{name}` has no `uses:`"))
                .at(self.at_key(&base))
                .help(format!("set `uses:` to one of: {}", kinds.join(", ")));
            self.error(d);
            return None;
        }
        if !ok {
            return None;
        }
        let spec: StageSpec = match serde_path_to_error::deserialize(value.clone()) {
            Ok(s) => s,
            Err(e) => {
                let mut p = base.clone();
                p.extend(
                    e.path()
                        .iter()
                        .map(|seg| seg.to_string())
                        .filter(|s| s != "?"),
                );
                let field = e.path().to_string();
                let d = Diagnostic::new(format!(
                    "stage `{name}`: `{field}`: {}",
                    e.inner()
                        .to_string()
                        .split(" at line ")
                        .next()
                        .unwrap_or_default()
                ))
                .at(self.at_value(&p));
                self.error(d);
                return None;
            }
        };
        if !kinds.contains(&spec.uses.as_str()) {
            let mut msg = format!("unknown stage kind `{}` in stage `{name}`", spec.uses);
            if let Some(h) = did_you_mean(&spec.uses, kinds.iter().copied()) {
                msg.push_str(&format!(" ({h})"));
            }
            let mut p = base.clone();
            p.push("uses".into());
            let d = Diagnostic::new(msg).at(self.at_value(&p)).help(format!(
                "known kinds: {}; `bitnet-pipeline stages` describes them",
                kinds.join(", ")
            ));
            self.error(d);
            return None;
        }
        let needs = spec.needs.names();
        for (i, need) in needs.iter().enumerate() {
            if !names.contains(need) {
                let mut msg = format!("stage `{name}` needs `{need}`, which is not defined");
                if let Some(h) = did_you_mean(need, names.iter().map(String::as_str)) {
                    msg.push_str(&format!(" ({h})"));
                }
                let mut p = base.clone();
                p.push("needs".into());
                if matches!(spec.needs, spec::Needs::Many(_)) {
                    p.push(i.to_string());
                }
                let d = Diagnostic::new(msg)
                    .at(self.at_value(&p))
                    .help(format!("defined stages: {}", names.join(", ")));
                self.error(d);
                ok = false;
            }
        }
        let mut with_path = base.clone();
        with_path.push("with".into());
        let raw_with = match &spec.with_ {
            None => Value::Object(Default::default()),
            Some(m) => match serde_json::to_value(m) {
                Ok(v) => v,
                Err(e) => {
                    let d = Diagnostic::new(format!("stage `{name}`: `with` cannot be used: {e}"))
                        .at(self.at_value(&with_path));
                    self.error(d);
                    return None;
                }
            },
        };
        let config = match params::interpolate(&raw_with, params) {
            Ok(c) => c,
            Err(errors) => {
                for (p, e) in errors {
                    let mut full = with_path.clone();
                    full.extend(p);
                    let d = Diagnostic::new(format!("stage `{name}`: {e}"))
                        .at(self.at_value(&full))
                        .help("parameters are defined under `params:` and changed with `--set`");
                    self.error(d);
                }
                return None;
            }
        };
        if let Some(Err(issue)) = catalog.check_config(&spec.uses, &config) {
            let mut full = with_path.clone();
            full.extend(issue.path.iter().cloned());
            let d = Diagnostic::new(format!(
                "stage `{name}` (`{}`): {}",
                spec.uses, issue.message
            ))
            .at(self.at_value(&full))
            .help(format!(
                "`bitnet-pipeline stages {}` lists its options",
                spec.uses
            ));
            self.error(d);
            ok = false;
        }
        let timeout = match spec.timeout.as_ref().map(|t| t.to_duration()).transpose() {
            Ok(t) => t,
            Err(msg) => {
                let mut p = base.clone();
                p.push("timeout".into());
                let d = Diagnostic::new(format!("stage `{name}`: {msg}")).at(self.at_value(&p));
                self.error(d);
                ok = false;
                None
            }
        };
        let device = match spec.device.clone() {
            Some(d) => Some(interpolate_scalar(&d, params).unwrap_or(d)),
            None => params
                .get("device")
                .and_then(Value::as_str)
                .map(str::to_string),
        };
        if let Some(d) = &device {
            if !valid_device(d) {
                let mut p = base.clone();
                p.push("device".into());
                let diag = Diagnostic::new(format!("stage `{name}`: unknown device `{d}`"))
                    .at(self.at_value(&p))
                    .help("use `auto`, `cpu`, `cuda` or `cuda:N`");
                self.error(diag);
                ok = false;
            }
        }
        ok.then(|| Stage {
            name: name.to_string(),
            kind: spec.uses.clone(),
            needs,
            config,
            cache: spec.cache,
            timeout,
            retries: spec.retries.unwrap_or(0),
            device,
            resources: spec.resources.clone(),
        })
    }
}

fn interpolate_scalar(s: &str, params: &Value) -> Option<String> {
    match params::interpolate(&Value::String(s.to_string()), params).ok()? {
        Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

/// `auto`, `cpu`, `cuda` or `cuda:N`.
pub fn valid_device(d: &str) -> bool {
    matches!(d, "auto" | "cpu" | "cuda")
        || d.strip_prefix("cuda:")
            .is_some_and(|n| n.parse::<u32>().is_ok())
}
