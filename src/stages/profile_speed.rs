//! `profile_speed`: inference latency and throughput of the full-precision
//! baseline vs the BitNet packed inference form, on the same inputs.
//!
//! Both models are loaded in one process exactly as `evaluate` scores them
//! (thought mixers included when the upstream stage has them); for each
//! shape the two sides are warmed up, then timed interleaved (A B, B A,
//! A B, ...: the order flips every iteration so neither side always runs
//! second) on the same token ids with the same threads. CUDA timings
//! synchronise the device before reading the clock. The BitNet side runs
//! the packed form through a `TernaryBackend` of the model library, never
//! the fake-quant graph. Its prefills and decode steps run on the fused Rust
//! decode loop (`bitnet-infer`: plain loops over the packed kernels, no
//! libtorch op dispatch) where it applies (`decode_path: auto`: the kernel
//! backend, a plain packed LLaMA without thought mixers, batch 1), else on
//! the libtorch model; the meta's `decode_path` says which ran and why, and a fused model
//! is checked at load against the libtorch model's logits on the same
//! prompt (`fused_check_max_rel_diff`). `kept_dtype` (fp32, bf16, int8)
//! stores the embedding and LM head of the fused path compact.
//!
//! Shapes: every `(batch, seq)` of `batch_sizes` x `seq_lens` (mode
//! `prefill`: the time to first token, a forward of `seq` prompt tokens on
//! an empty KV cache with the LM head on the last position only, on both
//! sides, as generation runs it), then every `(batch,
//! context)` of `decode_batch_sizes` x `decode_contexts` (mode `decode`: one
//! autoregressive step with the KV cache, a new token at position
//! `context` attending to `context` cached positions; the cache is filled
//! once, untimed, and cut back to `context` before every timed step, so
//! every sample is the same step). The `seq` of a decode shape is its
//! context length.
//!
//! Statistics: `iters` (default 30) timed iterations per side and shape;
//! median with interquartile range and p95 per side; the ratio of medians
//! per shape with a 95% paired-bootstrap interval (resampling iterations,
//! which keeps each A/B pair together); the 1-minute load average before and
//! after every shape, with a warning when it exceeded the core count or an
//! interval crosses 1.0 (the machine was too busy, or the difference is not
//! distinguishable from noise).
//!
//! Metrics, for the report (`step` = shape index, in the order above):
//! - `latency_ms_median_{baseline,bitnet}` (ms) with meta `{side, mode,
//!   batch, seq, median_ms, p25_ms, p75_ms, p95_ms, min_ms, max_ms, mean_ms,
//!   samples_per_s, tokens_per_s, iters, warmup, backend, matmul, threads,
//!   device, dtype, load_before, load_after}`;
//! - `latency_ms_p95_*` (ms), `samples_per_s_*`, `tokens_per_s_*` with the
//!   same meta;
//! - `shape_speedup` (x): baseline median / BitNet median, meta `{mode,
//!   batch, seq, ci95_low, ci95_high}`;
//! - plain overall metrics (no step): `speedup_prefill` and
//!   `speedup_decode` = geometric means of the prefill and decode shape
//!   speedups, each with its shapes, interval and method in the meta;
//!   `parameters_{baseline,bitnet}`
//!   (the count `evaluate` records for the same models). There is no
//!   unnamed `speedup`.
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::profiling::{
    check_shape_lists, check_sizes, DecodePathChoice, Dtype, KeptDtypeChoice, TernaryBackendChoice,
    BACKEND_OPTION, BASELINE_OPTION, BITNET_OPTION, DECODE_PATH_OPTION, DTYPE_OPTION,
    KEPT_DTYPE_OPTION, MAX_SIZE,
};
use super::{parse_config, Backend, OptionDoc, StageKind};
use crate::pipeline::ConfigIssue;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpeedConfig {
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
    /// Context lengths of the timed decode steps (empty: no decode).
    #[serde(default = "default_decode_contexts")]
    pub decode_contexts: Vec<i64>,
    /// Batch sizes of the timed decode steps.
    #[serde(default = "default_decode_batch_sizes")]
    pub decode_batch_sizes: Vec<i64>,
    /// Removed in issue #11 (a one-token forward without a cache is not a
    /// decode step); present only to say so when an old file sets it.
    #[serde(default, alias = "decode")]
    pub single_token: Option<Value>,
    /// Untimed iterations per side and shape before timing.
    #[serde(default = "default_warmup")]
    pub warmup: u32,
    /// Timed iterations per side and shape.
    #[serde(default = "default_iters")]
    pub iters: u32,
    /// CPU threads for libtorch (`None`: libtorch's default).
    #[serde(default)]
    pub threads: Option<i32>,
    #[serde(default)]
    pub backend: TernaryBackendChoice,
    /// How the BitNet side runs decode steps (fused Rust loop or libtorch).
    #[serde(default)]
    pub decode_path: DecodePathChoice,
    /// Storage of the kept embedding / LM head on the fused decode path.
    #[serde(default)]
    pub kept_dtype: KeptDtypeChoice,
}

fn default_batch_sizes() -> Vec<i64> {
    vec![1, 4, 8, 16, 32]
}

fn default_seq_lens() -> Vec<i64> {
    vec![128]
}

/// 128 and 512: a short and a longer history, as the issue asks.
fn default_decode_contexts() -> Vec<i64> {
    vec![128, 512]
}

fn default_decode_batch_sizes() -> Vec<i64> {
    vec![1]
}

fn default_warmup() -> u32 {
    3
}

/// 30 timed iterations per side and shape: enough for a stable median and
/// quartiles, and a bootstrap interval that is not just the extremes.
fn default_iters() -> u32 {
    30
}

impl ProfileSpeedConfig {
    pub fn parse(config: &Value) -> Result<Self, ConfigIssue> {
        let c: Self = parse_config(config)?;
        let issue = |path: &str, message: String| ConfigIssue {
            path: vec![path.to_string()],
            message,
        };
        check_shape_lists(&c.batch_sizes, &c.seq_lens)?;
        if c.single_token.is_some() {
            return Err(issue(
                "single_token",
                "`single_token` (`decode`) was removed: profile_speed now times real decode steps with a KV cache at `decode_contexts` (default [128, 512]; `[]` for none) and reports `speedup_decode`; delete this key".into(),
            ));
        }
        if !c.decode_contexts.is_empty() {
            check_sizes("decode_contexts", &c.decode_contexts, MAX_SIZE)
                .map_err(|m| issue("decode_contexts", m))?;
            check_sizes("decode_batch_sizes", &c.decode_batch_sizes, MAX_SIZE)
                .map_err(|m| issue("decode_batch_sizes", m))?;
        }
        if c.decode_path == DecodePathChoice::Fused && c.backend == TernaryBackendChoice::Unpack {
            return Err(issue(
                "decode_path",
                "`decode_path: fused` runs on the packed kernels, but `backend: unpack` asks for none; use `backend: auto` or `kernel`, or `decode_path: libtorch`".into(),
            ));
        }
        if c.iters == 0 {
            return Err(issue(
                "iters",
                "`iters` must be at least 1 (a stable median and interval need 30 or more)".into(),
            ));
        }
        if let Some(t) = c.threads {
            if t < 1 {
                return Err(issue(
                    "threads",
                    format!(
                        "`threads` is {t}; give at least 1, or leave it out for libtorch's default"
                    ),
                ));
            }
        }
        Ok(c)
    }

    /// `(mode, batch, seq)` of every measured shape, in metric-step order.
    pub fn shapes(&self) -> Vec<(&'static str, i64, i64)> {
        let mut out = Vec::new();
        for &b in &self.batch_sizes {
            for &s in &self.seq_lens {
                out.push(("prefill", b, s));
            }
        }
        for &b in &self.decode_batch_sizes {
            for &ctx in &self.decode_contexts {
                out.push(("decode", b, ctx));
            }
        }
        out
    }
}

const OPTIONS: &[OptionDoc] = &[
    BASELINE_OPTION,
    BITNET_OPTION,
    DTYPE_OPTION,
    OptionDoc {
        name: "batch_sizes",
        type_name: "list of integers",
        default: "[1, 4, 8, 16, 32]",
        help: "batch sizes timed (each with every seq_len)",
    },
    OptionDoc {
        name: "seq_lens",
        type_name: "list of integers",
        default: "[128]",
        help: "sequence lengths timed (full forward of that many tokens)",
    },
    OptionDoc {
        name: "decode_contexts",
        type_name: "list of integers",
        default: "[128, 512]",
        help: "context lengths of the timed decode steps (one new token over that many cached positions, KV cache); [] for none",
    },
    OptionDoc {
        name: "decode_batch_sizes",
        type_name: "list of integers",
        default: "[1]",
        help: "batch sizes of the timed decode steps",
    },
    OptionDoc {
        name: "warmup",
        type_name: "integer",
        default: "3",
        help: "untimed iterations per side and shape",
    },
    OptionDoc {
        name: "iters",
        type_name: "integer",
        default: "30",
        help: "timed iterations per side and shape (interleaved baseline/BitNet); median, IQR and a bootstrap interval of the ratio come from them",
    },
    OptionDoc {
        name: "threads",
        type_name: "integer",
        default: "libtorch default",
        help: "CPU threads, the same for both sides",
    },
    BACKEND_OPTION,
    DECODE_PATH_OPTION,
    KEPT_DTYPE_OPTION,
];

pub struct ProfileSpeed;

impl StageKind for ProfileSpeed {
    fn key_metrics(&self) -> &'static [&'static str] {
        &["speedup_prefill", "speedup_decode"]
    }

    fn name(&self) -> &'static str {
        "profile_speed"
    }

    fn summary(&self) -> &'static str {
        "latency and throughput per batch/seq, full-precision baseline vs BitNet packed form, interleaved"
    }

    fn options(&self) -> &'static [OptionDoc] {
        OPTIONS
    }

    fn check_config(&self, config: &Value) -> Result<(), ConfigIssue> {
        ProfileSpeedConfig::parse(config).map(|_| ())
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
    fn defaults_shapes_and_bad_configs() {
        let c = ProfileSpeedConfig::parse(&json!({"baseline": "load", "bitnet": "train"})).unwrap();
        assert_eq!(c.batch_sizes, vec![1, 4, 8, 16, 32]);
        let shapes = c.shapes();
        assert_eq!(shapes.len(), 7);
        assert_eq!(shapes[5], ("decode", 1, 128));
        assert_eq!(shapes[6], ("decode", 1, 512));
        assert_eq!(c.iters, 30);
        let none = ProfileSpeedConfig::parse(
            &json!({"baseline": "a", "bitnet": "b", "decode_contexts": []}),
        )
        .unwrap();
        assert_eq!(none.shapes().len(), 5);
        // The old one-token option is refused with the way forward.
        for old in ["single_token", "decode"] {
            let e = ProfileSpeedConfig::parse(&json!({"baseline": "a", "bitnet": "b", old: true}))
                .unwrap_err();
            assert_eq!(e.path, vec!["single_token"]);
            assert!(e.message.contains("decode_contexts"), "{}", e.message);
        }
        let base = json!({"baseline": "a", "bitnet": "b"});
        for (key, bad, path) in [
            ("iters", json!(0), "iters"),
            ("threads", json!(0), "threads"),
            ("batch_sizes", json!([]), "batch_sizes"),
            ("seq_lens", json!([-3]), "seq_lens"),
            ("decode_contexts", json!([0]), "decode_contexts"),
            ("decode_batch_sizes", json!([]), "decode_batch_sizes"),
            ("backend", json!("cuda-magic"), "backend"),
            ("decode_path", json!("fast"), "decode_path"),
            ("kept_dtype", json!("int4"), "kept_dtype"),
        ] {
            let mut v = base.clone();
            v[key] = bad;
            let e = ProfileSpeedConfig::parse(&v).unwrap_err();
            assert_eq!(e.path, vec![path], "{key}: {}", e.message);
        }
    }

    #[test]
    fn decode_path_and_kept_dtype_default_and_contradictions_are_refused() {
        let c = ProfileSpeedConfig::parse(&json!({"baseline": "a", "bitnet": "b"})).unwrap();
        assert_eq!(c.decode_path, DecodePathChoice::Auto);
        assert_eq!(c.kept_dtype, KeptDtypeChoice::Fp32);
        let c = ProfileSpeedConfig::parse(
            &json!({"baseline": "a", "bitnet": "b", "decode_path": "fused", "kept_dtype": "int8"}),
        )
        .unwrap();
        assert_eq!(
            (c.decode_path, c.kept_dtype),
            (DecodePathChoice::Fused, KeptDtypeChoice::Int8)
        );
        let e = ProfileSpeedConfig::parse(
            &json!({"baseline": "a", "bitnet": "b", "decode_path": "fused", "backend": "unpack"}),
        )
        .unwrap_err();
        assert_eq!(e.path, vec!["decode_path"]);
        assert!(e.message.contains("`backend: unpack`"), "{}", e.message);
    }
}
