//! Stage kinds: the contract every kind implements, and the registry.
//!
//! This is the only module that joins the engine with the code doing the
//! work. A kind declares its typed config (serde, unknown fields denied),
//! its options for `bitnet-pipeline stages`, whether it caches and uses the
//! device, and how it runs in its child process. Kinds that need libtorch
//! run inside the `bitnet-torch` plugin (see `exec`), so the runner and
//! light stages never load libtorch. A new kind is one file here plus one
//! line in `registry()`.

pub mod attach_thoughts;
pub mod command;
pub mod context;
pub mod convert_bitnet;
pub mod data_config;
pub mod device_info;
pub mod evaluate;
pub mod exec;
pub mod export;
pub mod generate;
pub mod load_checkpoint;
pub mod pot10_check;
pub mod profile_memory;
pub mod profile_speed;
pub mod profiling;
pub mod train;
pub mod validate;

use serde::de::DeserializeOwned;
use serde_json::Value;

pub use context::StageContext;

use crate::engine::KindInfo;
use crate::pipeline::{ConfigIssue, KindCatalog};

/// One documented option of a stage kind.
#[derive(Debug, Clone, Copy)]
pub struct OptionDoc {
    pub name: &'static str,
    pub type_name: &'static str,
    /// "required" or the default, as YAML.
    pub default: &'static str,
    pub help: &'static str,
}

/// Where a kind's `run` happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// In the `bitnet-pipeline` binary itself.
    Native,
    /// In the libtorch plugin (`libbitnet_torch.so`).
    Torch,
}

pub trait StageKind: Send + Sync {
    fn name(&self) -> &'static str;
    /// One line for `bitnet-pipeline stages`.
    fn summary(&self) -> &'static str;
    fn options(&self) -> &'static [OptionDoc];
    /// Checks the resolved `with` block (typed, unknown keys rejected).
    fn check_config(&self, config: &Value) -> Result<(), ConfigIssue>;
    fn backend(&self) -> Backend {
        Backend::Native
    }
    fn cache_by_default(&self) -> bool {
        true
    }
    fn uses_device(&self) -> bool {
        false
    }
    /// Metrics the run summary shows first (the rest follow alphabetically).
    fn key_metrics(&self) -> &'static [&'static str] {
        &[]
    }
    /// Bump when the kind's behaviour changes, to invalidate cached results.
    fn code_version(&self) -> &'static str {
        "1"
    }
    /// Files/folders (relative to the pipeline folder) read by the stage.
    fn deps(&self, _config: &Value) -> Vec<String> {
        Vec::new()
    }
    /// Runs the stage in its child process. Only `Native` kinds run here;
    /// a `Torch` kind's implementation lives in the libtorch plugin, and
    /// `exec-stage` hands it there without calling this.
    fn run(&self, _ctx: &mut StageContext) -> anyhow::Result<()> {
        anyhow::bail!(
            "stage kind `{}` has no native implementation (it runs in the libtorch plugin); \
             this is a bug, please report it",
            self.name()
        )
    }
}

/// Deserializes a stage config, turning serde's error into a `ConfigIssue`
/// with the path of the offending key.
pub fn parse_config<T: DeserializeOwned>(config: &Value) -> Result<T, ConfigIssue> {
    serde_path_to_error::deserialize(config).map_err(|e| {
        let path: Vec<String> = e
            .path()
            .iter()
            .map(|s| s.to_string())
            .filter(|s| s != "?" && s != ".")
            .collect();
        ConfigIssue {
            path,
            message: e.inner().to_string(),
        }
    })
}

/// All stage kinds.
pub struct Registry {
    kinds: Vec<Box<dyn StageKind>>,
}

/// The registry of every stage kind this build knows.
pub fn registry() -> Registry {
    Registry {
        kinds: vec![
            Box::new(command::Command),
            Box::new(device_info::DeviceInfo),
            Box::new(load_checkpoint::LoadCheckpoint),
            Box::new(convert_bitnet::ConvertBitnet),
            Box::new(attach_thoughts::AttachThoughts),
            Box::new(train::Train),
            Box::new(evaluate::Evaluate),
            Box::new(profile_memory::ProfileMemory),
            Box::new(profile_speed::ProfileSpeed),
            Box::new(generate::Generate),
            Box::new(pot10_check::Pot10Check),
            Box::new(validate::Validate),
            Box::new(export::Export),
            Box::new(profile_memory::MemoryProbe),
        ],
    }
}

impl Registry {
    pub fn get(&self, name: &str) -> Option<&dyn StageKind> {
        self.kinds
            .iter()
            .find(|k| k.name() == name)
            .map(|k| k.as_ref())
    }

    pub fn all(&self) -> impl Iterator<Item = &dyn StageKind> {
        self.kinds.iter().map(|k| k.as_ref())
    }
}

impl KindCatalog for Registry {
    fn kind_names(&self) -> Vec<&'static str> {
        self.kinds.iter().map(|k| k.name()).collect()
    }

    fn check_config(&self, kind: &str, config: &Value) -> Option<Result<(), ConfigIssue>> {
        self.get(kind).map(|k| k.check_config(config))
    }
}

impl KindInfo for Registry {
    fn cache_by_default(&self, kind: &str) -> bool {
        self.get(kind).is_none_or(|k| k.cache_by_default())
    }

    fn uses_device(&self, kind: &str) -> bool {
        self.get(kind).is_some_and(|k| k.uses_device())
    }

    fn code_version(&self, kind: &str) -> String {
        self.get(kind)
            .map(|k| k.code_version().to_string())
            .unwrap_or_default()
    }

    fn deps(&self, kind: &str, config: &Value) -> Vec<String> {
        self.get(kind).map(|k| k.deps(config)).unwrap_or_default()
    }
}
