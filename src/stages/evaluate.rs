//! `evaluate`: how much quality the BitNet model kept. Perplexity of the
//! full-precision baseline and of the BitNet model (its packed inference
//! form, thought mixers attached) on the same held-out tokens, the relative
//! increase (`accuracy_degradation`) and next-token top-1 agreement.
//! A measurement: never cached.
use serde::Deserialize;
use serde_json::Value;

use super::data_config::{DataConfig, DATA_OPTION};
use super::profiling::TernaryBackendChoice;
use super::{parse_config, Backend, OptionDoc, StageKind};
use crate::pipeline::ConfigIssue;

fn d_seq() -> i64 {
    128
}
fn d_tokens() -> i64 {
    16384
}
fn d_batch() -> i64 {
    8
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateConfig {
    /// Upstream stage with the BitNet model.
    pub model: String,
    /// Upstream stage with the full-precision baseline.
    pub baseline: String,
    pub data: DataConfig,
    #[serde(default = "d_seq")]
    pub seq_len: i64,
    /// At most this many held-out tokens (from the start of the held-out part).
    #[serde(default = "d_tokens")]
    pub tokens: i64,
    #[serde(default = "d_batch")]
    pub batch_size: i64,
    /// How the BitNet side multiplies by its packed weights; `auto` is what
    /// `profile_speed` and `profile_memory` use, so accuracy is measured on
    /// exactly what is timed.
    #[serde(default)]
    pub backend: TernaryBackendChoice,
}

pub struct Evaluate;

const OPTIONS: &[OptionDoc] = &[
    OptionDoc {
        name: "model",
        type_name: "stage name",
        default: "required",
        help: "upstream stage with the BitNet model (evaluated in its packed form)",
    },
    OptionDoc {
        name: "baseline",
        type_name: "stage name",
        default: "required",
        help: "upstream stage with the full-precision model",
    },
    DATA_OPTION,
    OptionDoc {
        name: "seq_len",
        type_name: "int",
        default: "128",
        help: "evaluation window (non-overlapping windows)",
    },
    OptionDoc {
        name: "tokens",
        type_name: "int",
        default: "16384",
        help: "held-out tokens evaluated at most",
    },
    OptionDoc {
        name: "batch_size",
        type_name: "int",
        default: "8",
        help: "windows per forward pass",
    },
    OptionDoc {
        name: "backend",
        type_name: "auto|kernel|unpack",
        default: "auto",
        help: "ternary matmul of the BitNet side, as in the profile stages: kernel (packed CPU kernels), unpack (dense f32 codes), auto (kernel where it applies); ppl_bitnet's meta records which ran",
    },
];

impl StageKind for Evaluate {
    fn name(&self) -> &'static str {
        "evaluate"
    }

    fn summary(&self) -> &'static str {
        "held-out perplexity of the fp baseline vs the BitNet model, degradation and top-1 agreement"
    }

    fn options(&self) -> &'static [OptionDoc] {
        OPTIONS
    }

    fn check_config(&self, config: &Value) -> Result<(), ConfigIssue> {
        let c = parse_config::<EvaluateConfig>(config)?;
        c.data.check("data")?;
        if c.seq_len < 1 || c.tokens <= c.seq_len || c.batch_size < 1 {
            return Err(ConfigIssue {
                path: vec!["tokens".into()],
                message: "need seq_len >= 1, batch_size >= 1 and tokens > seq_len".into(),
            });
        }
        Ok(())
    }

    fn key_metrics(&self) -> &'static [&'static str] {
        &[
            "ppl_baseline",
            "ppl_bitnet",
            "accuracy_degradation",
            "top1_agreement",
        ]
    }

    fn backend(&self) -> Backend {
        Backend::Torch
    }

    fn cache_by_default(&self) -> bool {
        false
    }

    fn uses_device(&self) -> bool {
        true
    }

    fn deps(&self, config: &Value) -> Vec<String> {
        parse_config::<EvaluateConfig>(config)
            .map(|c| c.data.files())
            .unwrap_or_default()
    }
}
