//! Shared option types of the profiling kinds (`profile_memory`,
//! `profile_speed` and the internal `memory_probe`).
//!
//! Both measurement kinds compare the same two models: the full-precision
//! baseline written by one upstream stage (`model.safetensors`) and the BitNet
//! packed inference form written by another (`packed.safetensors`). The
//! option types live here, in the root crate, so `validate`/`plan` check them
//! without libtorch and the plugin deserializes exactly the same structs.
use serde::{Deserialize, Serialize};

use super::OptionDoc;
use crate::pipeline::ConfigIssue;

/// The file a model-producing stage writes with the full-precision weights.
pub const BASELINE_FILE: &str = "model.safetensors";
/// The file `convert_bitnet`/`train` write with the packed inference form.
pub const PACKED_FILE: &str = "packed.safetensors";

/// Floating-point dtype the baseline runs in. The BitNet side keeps its
/// packed u8 weights and runs its full-precision parts (embeddings, norms,
/// `lm_head`) in the same dtype, so the comparison is only about the
/// ternary layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    #[serde(alias = "float32", alias = "f32")]
    Fp32,
    #[serde(alias = "float16", alias = "f16", alias = "half")]
    Fp16,
    #[serde(alias = "bfloat16")]
    Bf16,
}

impl Dtype {
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Fp32 => "fp32",
            Dtype::Fp16 => "fp16",
            Dtype::Bf16 => "bf16",
        }
    }
}

/// Which side of the comparison a measurement belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Baseline,
    Bitnet,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Baseline => "baseline",
            Side::Bitnet => "bitnet",
        }
    }

    /// The file this side is read from in its upstream stage's folder.
    pub fn file(self) -> &'static str {
        match self {
            Side::Baseline => BASELINE_FILE,
            Side::Bitnet => PACKED_FILE,
        }
    }
}

/// How the BitNet side multiplies by its packed weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TernaryBackendChoice {
    /// `kernel` where it applies (CPU, per-token int8 activations), else
    /// `unpack`; the metric meta records which one ran.
    #[default]
    Auto,
    /// The packed CPU kernels (2-bit weights computed on directly); an
    /// error where they do not apply.
    Kernel,
    /// Unpack the 2-bit codes once at load and use dense f32 matmuls
    /// (the model library's `UnpackBackend`; no fast kernel).
    Unpack,
}

impl TernaryBackendChoice {
    pub fn name(self) -> &'static str {
        match self {
            TernaryBackendChoice::Auto => "auto",
            TernaryBackendChoice::Kernel => "kernel",
            TernaryBackendChoice::Unpack => "unpack",
        }
    }
}

/// Largest batch size or sequence length accepted (a typo guard, not a
/// hardware limit).
pub const MAX_SIZE: i64 = 65_536;

/// Shared documentation of an option every profiling kind takes.
pub const BASELINE_OPTION: OptionDoc = OptionDoc {
    name: "baseline",
    type_name: "stage name",
    default: "required",
    help: "upstream stage (in `needs`) whose model.safetensors is the full-precision baseline",
};

/// Shared documentation of an option every profiling kind takes.
pub const BITNET_OPTION: OptionDoc = OptionDoc {
    name: "bitnet",
    type_name: "stage name",
    default: "required",
    help: "upstream stage (in `needs`) whose packed.safetensors is the BitNet inference form",
};

/// Shared documentation of an option every profiling kind takes.
pub const DTYPE_OPTION: OptionDoc = OptionDoc {
    name: "dtype",
    type_name: "fp32|fp16|bf16",
    default: "fp32",
    help: "dtype of the baseline and of the BitNet model's full-precision parts",
};

/// Shared documentation of an option every profiling kind takes.
pub const BACKEND_OPTION: OptionDoc = OptionDoc {
        name: "backend",
        type_name: "auto|kernel|unpack",
        default: "auto",
        help: "ternary matmul of the BitNet side: kernel (packed CPU kernels), unpack (dense f32 codes, no fast kernel), auto (kernel where it applies)",
    };

/// How the BitNet side runs a decode step (issue #11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecodePathChoice {
    /// `fused` where it applies (the kernel backend, a plain packed LLaMA
    /// without thought mixers, batch 1), else `libtorch`; the metric meta
    /// records which one ran and why.
    #[default]
    Auto,
    /// The fused Rust decode loop (`bitnet-infer`) over the packed kernels;
    /// an error where it does not apply.
    Fused,
    /// The libtorch model with its ternary backend, one libtorch op at a time.
    Libtorch,
}

impl DecodePathChoice {
    pub fn name(self) -> &'static str {
        match self {
            DecodePathChoice::Auto => "auto",
            DecodePathChoice::Fused => "fused",
            DecodePathChoice::Libtorch => "libtorch",
        }
    }
}

/// How the fused decode path stores the layers kept in full precision
/// (embedding, LM head).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeptDtypeChoice {
    /// As evaluated: fp32 (the default, so the timed model is the scored one).
    #[default]
    Fp32,
    /// bfloat16, round to nearest even (half the bytes).
    Bf16,
    /// int8 with one absmax scale per row (a quarter of the bytes).
    Int8,
}

impl KeptDtypeChoice {
    pub fn name(self) -> &'static str {
        match self {
            KeptDtypeChoice::Fp32 => "fp32",
            KeptDtypeChoice::Bf16 => "bf16",
            KeptDtypeChoice::Int8 => "int8",
        }
    }
}

/// Documentation of `decode_path`.
pub const DECODE_PATH_OPTION: OptionDoc = OptionDoc {
    name: "decode_path",
    type_name: "auto|fused|libtorch",
    default: "auto",
    help: "BitNet decode steps: fused (one Rust loop per token over the packed kernels, no libtorch), libtorch (the model's ops), auto (fused where it applies: kernel backend, no thought mixers, batch 1)",
};

/// Documentation of `kept_dtype`.
pub const KEPT_DTYPE_OPTION: OptionDoc = OptionDoc {
    name: "kept_dtype",
    type_name: "fp32|bf16|int8",
    default: "fp32",
    help: "storage of the embedding and LM head on the fused decode path: fp32 (as evaluated), bf16, or int8 with a per-row absmax scale (see docs/perf.md for speed and logit error)",
};

/// Checks `batch_sizes` and `seq_lens`, naming the offending key.
pub fn check_shape_lists(batch_sizes: &[i64], seq_lens: &[i64]) -> Result<(), ConfigIssue> {
    for (what, sizes) in [("batch_sizes", batch_sizes), ("seq_lens", seq_lens)] {
        check_sizes(what, sizes, MAX_SIZE).map_err(|message| ConfigIssue {
            path: vec![what.to_string()],
            message,
        })?;
    }
    Ok(())
}

/// Checks a list of positive sizes (batch sizes, sequence lengths).
pub fn check_sizes(what: &str, sizes: &[i64], max: i64) -> Result<(), String> {
    if sizes.is_empty() {
        return Err(format!("`{what}` is empty; give at least one size"));
    }
    if let Some(bad) = sizes.iter().find(|&&s| s < 1 || s > max) {
        return Err(format!("`{what}` has {bad}; sizes must be in 1..={max}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_names_and_aliases() {
        let d: Dtype = serde_json::from_str("\"bfloat16\"").unwrap();
        assert_eq!(d, Dtype::Bf16);
        assert_eq!(Dtype::default().name(), "fp32");
        assert!(serde_json::from_str::<Dtype>("\"int4\"").is_err());
    }

    #[test]
    fn sizes_are_checked() {
        assert!(check_sizes("batch_sizes", &[1, 4], 4096).is_ok());
        assert!(check_sizes("batch_sizes", &[], 4096)
            .unwrap_err()
            .contains("empty"));
        assert!(check_sizes("seq_lens", &[0], 4096)
            .unwrap_err()
            .contains("has 0"));
    }
}
