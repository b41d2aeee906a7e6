//! `convert_bitnet`: turns a full-precision model into BitNet b1.58. Output:
//! the latent weights for quantization-aware training (`model.safetensors`,
//! with the conversion spec in its `__metadata__` under `bitnet`), the packed
//! 2-bit inference form (`packed.safetensors`), `config.json` and the report
//! `conversion.json` (what was converted or kept, byte counts). `kept_dtype`
//! stores the kept embedding / LM head of the packed form as fp32, bf16 or
//! int8 per row (issue #15); the latent weights stay fp32 for training.
use serde::Deserialize;
use serde_json::Value;

use super::profiling::KeptDtypeChoice;
use super::{parse_config, Backend, OptionDoc, StageKind};
use crate::pipeline::ConfigIssue;

/// Weight quantization.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantMode {
    /// {-1, 0, +1}, absmean scale (b1.58).
    #[default]
    Ternary,
    /// {-1, +1}, sign with mean|W| scale.
    Binary,
}

fn default_activation_bits() -> Option<u8> {
    Some(8)
}

fn default_convert() -> Vec<String> {
    vec!["*".into()]
}

/// The b1.58 recipe keeps embeddings, the LM head and norms in full precision.
pub fn default_keep_full_precision() -> Vec<String> {
    vec!["embed_tokens".into(), "lm_head".into(), "*norm*".into()]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvertBitnetConfig {
    /// Upstream stage holding the model (default: the only one in `needs`).
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub mode: QuantMode,
    /// Activation bits (2..=8) entering BitLinear; `null` keeps them full precision.
    #[serde(default = "default_activation_bits")]
    pub activation_bits: Option<u8>,
    /// Linear layers to convert (globs over HF module names).
    #[serde(default = "default_convert")]
    pub convert: Vec<String>,
    /// Layers kept full precision; wins over `convert`.
    #[serde(default = "default_keep_full_precision")]
    pub keep_full_precision: Vec<String>,
    /// How `packed.safetensors` stores the kept embedding / LM head.
    #[serde(default = "default_kept_dtype")]
    pub kept_dtype: KeptDtypeChoice,
}

/// int8 per row: a quarter of the kept layers' fp32 bytes, and no
/// measurable perplexity cost (docs/perf.md, "Memory of inference").
fn default_kept_dtype() -> KeptDtypeChoice {
    KeptDtypeChoice::Int8
}

pub struct ConvertBitnet;

const OPTIONS: &[OptionDoc] = &[
    OptionDoc {
        name: "model",
        type_name: "stage name",
        default: "the only upstream",
        help: "upstream stage whose model.safetensors is converted",
    },
    OptionDoc {
        name: "mode",
        type_name: "ternary|binary",
        default: "ternary",
        help: "weight codes: {-1,0,1} absmean (b1.58) or {-1,1} sign",
    },
    OptionDoc {
        name: "activation_bits",
        type_name: "2..8|null",
        default: "8",
        help: "per-token absmax activation quantization; null = full-precision activations",
    },
    OptionDoc {
        name: "convert",
        type_name: "list of globs",
        default: "[\"*\"]",
        help: "linear layers to convert (matches the module name or any dotted part)",
    },
    OptionDoc {
        name: "keep_full_precision",
        type_name: "list of globs",
        default: "[embed_tokens, lm_head, \"*norm*\"]",
        help: "layers kept full precision; wins over `convert`",
    },
    OptionDoc {
        name: "kept_dtype",
        type_name: "fp32|bf16|int8",
        default: "int8",
        help: "how packed.safetensors stores the kept embedding and float LM head: int8 with one absmax scale per row (a quarter of the fp32 bytes; evaluate scores it), bf16, or fp32",
    },
];

impl StageKind for ConvertBitnet {
    fn name(&self) -> &'static str {
        "convert_bitnet"
    }

    fn summary(&self) -> &'static str {
        "convert a model to BitNet b1.58: latent weights for training + packed 2-bit form + report"
    }

    fn options(&self) -> &'static [OptionDoc] {
        OPTIONS
    }

    fn check_config(&self, config: &Value) -> Result<(), ConfigIssue> {
        let c = parse_config::<ConvertBitnetConfig>(config)?;
        if let Some(b) = c.activation_bits {
            if !(2..=8).contains(&b) {
                return Err(ConfigIssue {
                    path: vec!["activation_bits".into()],
                    message: format!("must be 2..=8 or null, got {b}"),
                });
            }
        }
        Ok(())
    }

    fn key_metrics(&self) -> &'static [&'static str] {
        &[
            "converted_parameters",
            "packed_weight_bytes",
            "compression_vs_fp16",
            "kept_parameters",
        ]
    }

    fn backend(&self) -> Backend {
        Backend::Torch
    }
}
