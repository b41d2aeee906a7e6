//! `load_checkpoint`: the entry point of Phase 4. Reads any checkpoint format
//! the checkpoint module knows (safetensors, HF folder, EvoMerge/torch `.pt`),
//! records its parameter count and scalar metadata (EvoMerge `generation`,
//! `fitness_score`) as run params, and writes it in the one form every later
//! stage reads: `model.safetensors` (config in `__metadata__`) + `config.json`.
use serde::Deserialize;
use serde_json::Value;

use super::{parse_config, Backend, OptionDoc, StageKind};
use crate::pipeline::ConfigIssue;

/// A rename rule applied to tensor names while loading.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameRuleConfig {
    /// Regex over the stored tensor name.
    pub pattern: String,
    /// Replacement (`$1` refers to capture groups).
    pub replace: String,
}

/// Floating-point dtype the model is stored in after loading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DtypeConfig {
    #[default]
    F32,
    Bf16,
    F16,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadCheckpointConfig {
    /// Checkpoint file or HF folder, relative to the pipeline folder.
    pub path: String,
    /// `config.json` for formats that carry none (`.pt`, bare safetensors).
    #[serde(default)]
    pub config: Option<String>,
    /// Tensor renames, applied in order (default: none).
    #[serde(default)]
    pub name_map: Vec<NameRuleConfig>,
    /// Dtype of floating-point tensors in the output (default f32).
    #[serde(default)]
    pub dtype: DtypeConfig,
}

pub struct LoadCheckpoint;

const OPTIONS: &[OptionDoc] = &[
    OptionDoc {
        name: "path",
        type_name: "path",
        default: "required",
        help: "checkpoint: .safetensors, HF folder, or torch .pt/.bin (EvoMerge nested dicts included)",
    },
    OptionDoc {
        name: "config",
        type_name: "path",
        default: "null",
        help: "HF config.json, needed when the checkpoint carries no config (.pt)",
    },
    OptionDoc {
        name: "name_map",
        type_name: "list of {pattern, replace}",
        default: "[]",
        help: "regex renames of tensor names to HF LLaMA names, applied in order",
    },
    OptionDoc {
        name: "dtype",
        type_name: "f32|bf16|f16",
        default: "f32",
        help: "dtype of the floating-point tensors written to model.safetensors",
    },
];

impl StageKind for LoadCheckpoint {
    fn name(&self) -> &'static str {
        "load_checkpoint"
    }

    fn summary(&self) -> &'static str {
        "load a checkpoint (safetensors, HF folder, EvoMerge .pt) into model.safetensors + config.json"
    }

    fn options(&self) -> &'static [OptionDoc] {
        OPTIONS
    }

    fn check_config(&self, config: &Value) -> Result<(), ConfigIssue> {
        parse_config::<LoadCheckpointConfig>(config).map(|_| ())
    }

    fn key_metrics(&self) -> &'static [&'static str] {
        &["parameters", "weight_bytes"]
    }

    fn backend(&self) -> Backend {
        Backend::Torch
    }

    fn deps(&self, config: &Value) -> Vec<String> {
        match parse_config::<LoadCheckpointConfig>(config) {
            Ok(c) => std::iter::once(c.path).chain(c.config).collect(),
            Err(_) => Vec::new(),
        }
    }
}
