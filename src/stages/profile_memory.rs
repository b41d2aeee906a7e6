//! `profile_memory`: weight bytes and peak inference memory of the
//! full-precision baseline vs the BitNet packed inference form, and the
//! internal `memory_probe` kind that measures one side.
//!
//! Both sides are the models `evaluate` scores (thought mixers included
//! when the upstream stage has them). Peak memory of a process is only
//! meaningful for what that process did, so each measurement loads and runs
//! one side in its own isolated child (`bitnet-pipeline exec-stage` of a
//! `memory_probe` invocation): on CPU the peak is the child's peak RSS
//! (`VmHWM`, reset just before loading) minus its RSS before the model
//! loads; on CUDA it is the c10 caching allocator's peak allocated bytes
//! minus the bytes allocated before loading. Both include loading the model
//! and the forward passes over every configured `(batch, seq)` input. RSS is
//! noisy (allocator retention, code pages first touched), so each side is
//! measured `repeats` times (default 5), interleaved baseline / BitNet, and
//! the median is reported with its spread. Measurements are per run, so the
//! kind never caches.
//!
//! Metrics (plain, no step), units in `unit`:
//! - `weight_bytes_stored_{baseline,bitnet}` (bytes): exact bytes of the
//!   weights in their stored form (numel x dtype size; a packed layer is its
//!   u8 codes + one f32 scale; thought mixers included);
//! - `weight_bytes_resident_{baseline,bitnet}` (bytes): every byte the
//!   inference model holds for its weights while it runs, all copies (a
//!   packed layer: the kernels' repacked layout, or the unpack fallback's
//!   dense f32 codes; the stored u8 codes are released once the backend
//!   holds its copy);
//! - `peak_bytes_{baseline,bitnet}` (bytes): median over the repeats; meta
//!   has every repeat, `min`/`max`, the method, and what the peak is made of
//!   (`weights_resident_bytes` and the rest: activations, libtorch
//!   workspaces, allocator retention);
//! - `parameters_{baseline,bitnet}`: the parameter count `evaluate` records
//!   for the same models;
//! - `memory_reduction` (x) = median baseline peak / median BitNet peak, and
//!   `weight_memory_reduction` (x) = resident baseline / resident BitNet
//!   weight bytes (`weight_memory_reduction_stored` is the same for the
//!   stored form).
//!
//! `memory.json` in the output folder holds the same numbers.
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::profiling::{
    check_shape_lists, DecodePathChoice, Dtype, Side, TernaryBackendChoice, BACKEND_OPTION,
    BASELINE_OPTION, BITNET_OPTION, DECODE_PATH_OPTION, DTYPE_OPTION,
};
use super::{parse_config, Backend, OptionDoc, StageKind};
use crate::pipeline::ConfigIssue;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileMemoryConfig {
    /// Upstream stage whose `model.safetensors` is the baseline.
    pub baseline: String,
    /// Upstream stage whose `packed.safetensors` is the BitNet model.
    pub bitnet: String,
    #[serde(default)]
    pub dtype: Dtype,
    #[serde(default = "default_batch_sizes")]
    pub batch_sizes: Vec<i64>,
    #[serde(default = "default_seq_lens")]
    pub seq_lens: Vec<i64>,
    #[serde(default)]
    pub backend: TernaryBackendChoice,
    /// Isolated measurements per side (interleaved); the median is reported.
    #[serde(default = "default_repeats")]
    pub repeats: u32,
    /// How the BitNet side runs inference: `auto` takes the fused Rust
    /// decode path where it applies (CPU, kernel backend, no thought
    /// mixers, `batch_sizes: [1]`), else the libtorch packed model.
    #[serde(default)]
    pub decode_path: DecodePathChoice,
    /// With the fused path, the work both sides do per `seq_len`: a prompt
    /// of that many tokens, then this many greedy decode steps (batch 1).
    #[serde(default = "default_decode_tokens")]
    pub decode_tokens: u32,
}

fn default_decode_tokens() -> u32 {
    16
}

fn default_batch_sizes() -> Vec<i64> {
    vec![1, 8]
}

/// Five processes per side: the median of five RSS peaks is stable where
/// a single one swung from 0.91x to 1.37x between identical runs.
fn default_repeats() -> u32 {
    5
}

fn default_seq_lens() -> Vec<i64> {
    vec![128]
}

impl ProfileMemoryConfig {
    pub fn parse(config: &Value) -> Result<Self, ConfigIssue> {
        let c: Self = parse_config(config)?;
        check_shape_lists(&c.batch_sizes, &c.seq_lens)?;
        if c.decode_path == DecodePathChoice::Fused && c.batch_sizes != [1] {
            return Err(ConfigIssue {
                path: vec!["batch_sizes".into()],
                message: format!(
                    "`decode_path: fused` decodes one sequence at a time; set `batch_sizes: [1]` (got {:?}) or use `decode_path: auto`/`libtorch`",
                    c.batch_sizes
                ),
            });
        }
        if c.decode_tokens == 0 || c.decode_tokens > 4096 {
            return Err(ConfigIssue {
                path: vec!["decode_tokens".into()],
                message: format!(
                    "`decode_tokens` is {}; give 1 to 4096 decode steps after the prompt (16 by default)",
                    c.decode_tokens
                ),
            });
        }
        if c.repeats == 0 || c.repeats > 100 {
            return Err(ConfigIssue {
                path: vec!["repeats".into()],
                message: format!(
                    "`repeats` is {}; give 1 to 100 isolated measurements per side (5 by default)",
                    c.repeats
                ),
            });
        }
        Ok(c)
    }
}

/// What a `memory_probe` child measures: one side, loaded from the folder
/// of the stage that wrote it (the side's file and its thoughts, if any).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryProbeConfig {
    pub side: Side,
    /// Absolute path of the upstream stage's output folder.
    pub stage_dir: std::path::PathBuf,
    pub dtype: Dtype,
    pub batch_sizes: Vec<i64>,
    pub seq_lens: Vec<i64>,
    #[serde(default)]
    pub backend: TernaryBackendChoice,
    /// What both sides run after loading (the same on both).
    #[serde(default)]
    pub work: ProbeWork,
    /// The BitNet side runs the fused decode form, loaded straight from
    /// `packed.safetensors` (no libtorch model).
    #[serde(default)]
    pub fused: bool,
}

/// The inference work a probe measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeWork {
    /// One full forward pass per `(batch, seq)` input (logits of every position).
    #[default]
    Forward,
    /// Batch 1 per `seq_len`: prefill a prompt of that length, then
    /// `tokens` greedy decode steps over a KV cache.
    Decode { tokens: u32 },
}

impl ProbeWork {
    /// One line for metric meta.
    pub fn describe(self) -> String {
        match self {
            ProbeWork::Forward => "one forward pass per (batch, seq) input".into(),
            ProbeWork::Decode { tokens } => format!(
                "batch 1: a prompt of seq_len random tokens (same ids both sides), then {tokens} greedy decode steps over a KV cache"
            ),
        }
    }
}

const OPTIONS: &[OptionDoc] = &[
    BASELINE_OPTION,
    BITNET_OPTION,
    DTYPE_OPTION,
    OptionDoc {
        name: "batch_sizes",
        type_name: "list of integers",
        default: "[1, 8]",
        help: "batch sizes of the forward passes; the peak is over all (batch, seq) inputs",
    },
    OptionDoc {
        name: "seq_lens",
        type_name: "list of integers",
        default: "[128]",
        help: "sequence lengths of the forward passes",
    },
    BACKEND_OPTION,
    DECODE_PATH_OPTION,
    OptionDoc {
        name: "decode_tokens",
        type_name: "integer",
        default: "16",
        help: "with the fused path: greedy decode steps after a seq_len-token prompt, on both sides (batch 1)",
    },
    OptionDoc {
        name: "repeats",
        type_name: "integer",
        default: "5",
        help: "isolated measurements per side, interleaved baseline/BitNet; the median peak is reported with its spread",
    },
];

pub struct ProfileMemory;

impl StageKind for ProfileMemory {
    fn key_metrics(&self) -> &'static [&'static str] {
        &["memory_reduction", "weight_memory_reduction"]
    }

    fn name(&self) -> &'static str {
        "profile_memory"
    }

    fn summary(&self) -> &'static str {
        "weight bytes and peak inference memory, full-precision baseline vs BitNet packed form"
    }

    fn options(&self) -> &'static [OptionDoc] {
        OPTIONS
    }

    fn check_config(&self, config: &Value) -> Result<(), ConfigIssue> {
        ProfileMemoryConfig::parse(config).map(|_| ())
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
}

/// Internal: one side of `profile_memory`, run in an isolated child. Not
/// meant for pipeline files (it is registered so `exec-stage` can run it).
pub struct MemoryProbe;

impl StageKind for MemoryProbe {
    fn name(&self) -> &'static str {
        "memory_probe"
    }

    fn summary(&self) -> &'static str {
        "internal: one side of profile_memory in an isolated process (use profile_memory)"
    }

    fn options(&self) -> &'static [OptionDoc] {
        &[]
    }

    fn check_config(&self, config: &Value) -> Result<(), ConfigIssue> {
        parse_config::<MemoryProbeConfig>(config).map(|_| ())
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_bad_configs() {
        let c =
            ProfileMemoryConfig::parse(&json!({"baseline": "load", "bitnet": "train"})).unwrap();
        assert_eq!(c.dtype, Dtype::Fp32);
        assert_eq!(c.batch_sizes, vec![1, 8]);
        let e = ProfileMemoryConfig::parse(&json!({"baseline": "a"})).unwrap_err();
        assert!(e.message.contains("bitnet"), "{}", e.message);
        let e =
            ProfileMemoryConfig::parse(&json!({"baseline": "a", "bitnet": "b", "dtype": "int3"}))
                .unwrap_err();
        assert_eq!(e.path, vec!["dtype"]);
        let e =
            ProfileMemoryConfig::parse(&json!({"baseline": "a", "bitnet": "b", "seq_lens": [0]}))
                .unwrap_err();
        assert_eq!(e.path, vec!["seq_lens"]);
        let e = ProfileMemoryConfig::parse(&json!({"baseline": "a", "bitnet": "b", "batch": 2}))
            .unwrap_err();
        assert!(e.message.contains("unknown field"), "{}", e.message);
        assert_eq!(c.decode_path, DecodePathChoice::Auto);
        assert_eq!(c.decode_tokens, 16);
        let e = ProfileMemoryConfig::parse(
            &json!({"baseline": "a", "bitnet": "b", "decode_path": "fused", "batch_sizes": [1, 8]}),
        )
        .unwrap_err();
        assert_eq!(e.path, vec!["batch_sizes"]);
        let e = ProfileMemoryConfig::parse(
            &json!({"baseline": "a", "bitnet": "b", "decode_tokens": 0}),
        )
        .unwrap_err();
        assert_eq!(e.path, vec!["decode_tokens"]);
    }
}
