//! `generate`: text from a model of an upstream stage, with a KV cache, and
//! the figures users of llama.cpp judge a model by: time to first token,
//! prefill tokens/s and decode tokens/s.
//!
//! A packed BitNet model runs prompt and decode steps on the fused Rust loop
//! of `bitnet-infer` where it applies (`decode_path: auto`: the CPU kernels,
//! no thought mixers; libtorch on CUDA), with its embedding / LM head in
//! `kept_dtype`; `decode_path: libtorch` runs the libtorch model's ops. The
//! sampler and the loop are the same on both paths, so the same seed and
//! prompt give the same ids (up to float rounding of the logits); the
//! metrics' meta says which path ran and why.
//!
//! The same options drive the `bitnet-pipeline generate` command, which
//! takes a finished stage (`<run>/<stage>`) or a model folder instead of an
//! upstream stage; both run the libtorch side's one generation loop
//! (`bitnet-torch`'s `stages::generate`). Which file: `side: bitnet` reads
//! the packed inference form (`packed.safetensors`), `baseline` the
//! full-precision `model.safetensors`, `auto` (default) the packed form when
//! the folder has one. Thought mixers in the folder are attached, as
//! `evaluate` does.
//!
//! Metrics: `time_to_first_token_ms` (prompt in to first token chosen),
//! `prefill_tokens_per_s` (prompt tokens / prompt forward),
//! `decode_tokens_per_s` (tokens after the first / their forward + sampling
//! time), `prompt_tokens`, `generated_tokens`, each with the method in its
//! meta. Artifacts: `generation.txt` (the generated text) and
//! `generation.json` (prompt, ids, text, settings, stop reason, timings),
//! written only when generation finished, so a failed stage leaves neither.
//! Measurements: never cached by default.
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::profiling::{
    DecodePathChoice, Dtype, KeptDtypeChoice, TernaryBackendChoice, BACKEND_OPTION,
    DECODE_PATH_OPTION, DTYPE_OPTION, KEPT_DTYPE_OPTION,
};
use super::{parse_config, Backend, OptionDoc, StageKind};
use crate::pipeline::ConfigIssue;

/// The text artifact the report shows.
pub const TEXT_FILE: &str = "generation.txt";
/// Everything about one generation, as JSON.
pub const RECORD_FILE: &str = "generation.json";

/// Largest `max_new_tokens` accepted (a typo guard).
pub const MAX_NEW_TOKENS: u32 = 65_536;

/// Which of a folder's models generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelSide {
    /// The packed form when the folder has `packed.safetensors`, else the
    /// full-precision `model.safetensors`.
    #[default]
    Auto,
    Baseline,
    Bitnet,
}

/// Sampling and stopping, shared by the stage and the command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationSettings {
    pub prompt: String,
    #[serde(default = "d_max_new")]
    pub max_new_tokens: u32,
    /// 0 = greedy.
    #[serde(default)]
    pub temperature: f64,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default = "d_one")]
    pub top_p: f64,
    #[serde(default = "d_one")]
    pub repetition_penalty: f64,
    #[serde(default)]
    pub seed: u64,
    /// Generation ends when the text contains one of these (it is cut there).
    #[serde(default)]
    pub stop: Vec<String>,
    /// Also stop at the model's `eos_token_id` (from its config).
    #[serde(default = "d_true")]
    pub stop_at_eos: bool,
}

fn d_max_new() -> u32 {
    64
}
fn d_one() -> f64 {
    1.0
}
fn d_true() -> bool {
    true
}

impl GenerationSettings {
    /// Checks every setting, naming the key at fault.
    pub fn check(&self) -> Result<(), ConfigIssue> {
        let issue = |path: &str, message: String| {
            Err(ConfigIssue {
                path: vec![path.to_string()],
                message,
            })
        };
        if self.prompt.is_empty() {
            return issue(
                "prompt",
                "the prompt is empty; give the text to continue".into(),
            );
        }
        if self.max_new_tokens == 0 || self.max_new_tokens > MAX_NEW_TOKENS {
            return issue(
                "max_new_tokens",
                format!(
                    "`max_new_tokens` is {}; give 1..={MAX_NEW_TOKENS}",
                    self.max_new_tokens
                ),
            );
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return issue(
                "temperature",
                format!(
                    "`temperature` is {}; give 0 (greedy) or a positive number",
                    self.temperature
                ),
            );
        }
        if self.top_k == Some(0) {
            return issue(
                "top_k",
                "`top_k` is 0, which keeps no token; give at least 1 or leave it out".into(),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return issue(
                "top_p",
                format!("`top_p` is {}; give a number in (0, 1]", self.top_p),
            );
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return issue(
                "repetition_penalty",
                format!(
                    "`repetition_penalty` is {}; give a positive number (1.0 = off)",
                    self.repetition_penalty
                ),
            );
        }
        if self.stop.iter().any(String::is_empty) {
            return issue(
                "stop",
                "`stop` has an empty string, which would stop at once; remove it".into(),
            );
        }
        Ok(())
    }
}

/// The `generate` stage's `with` block.
/// Unknown keys are refused by [`GenerateConfig::parse`] (serde cannot
/// deny them through `flatten`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerateConfig {
    /// Upstream stage whose model generates.
    pub model: String,
    #[serde(default)]
    pub side: ModelSide,
    #[serde(flatten)]
    pub settings: GenerationSettings,
    /// `tokenizer.json` (relative to the pipeline folder); default: the
    /// model folder's `tokenizer.json`, else byte-level.
    #[serde(default)]
    pub tokenizer: Option<String>,
    #[serde(default)]
    pub dtype: Dtype,
    #[serde(default)]
    pub backend: TernaryBackendChoice,
    /// How a packed model runs prefill and decode (fused Rust loop or libtorch).
    #[serde(default)]
    pub decode_path: DecodePathChoice,
    /// Storage of the kept embedding / LM head on the fused path.
    #[serde(default)]
    pub kept_dtype: KeptDtypeChoice,
    /// CPU threads (`None`: libtorch's default).
    #[serde(default)]
    pub threads: Option<i32>,
}

/// `decode_path: fused` needs the packed kernels: `backend: unpack` contradicts it.
pub fn check_decode_path(
    path: DecodePathChoice,
    backend: TernaryBackendChoice,
) -> Result<(), ConfigIssue> {
    if path == DecodePathChoice::Fused && backend == TernaryBackendChoice::Unpack {
        return Err(ConfigIssue {
            path: vec!["decode_path".into()],
            message: "`decode_path: fused` runs on the packed kernels, but `backend: unpack` asks for none; use `backend: auto` or `kernel`, or `decode_path: libtorch`".into(),
        });
    }
    Ok(())
}

impl GenerateConfig {
    pub fn parse(config: &Value) -> Result<Self, ConfigIssue> {
        // `flatten` and `deny_unknown_fields` do not mix in serde: check the
        // keys by hand so a typo is still an error naming the key.
        if let Some(map) = config.as_object() {
            if let Some(bad) = map.keys().find(|k| !KEYS.contains(&k.as_str())) {
                return Err(ConfigIssue {
                    path: vec![bad.clone()],
                    message: format!(
                        "unknown option `{bad}`; `generate` takes {}",
                        KEYS.join(", ")
                    ),
                });
            }
        }
        let c: Self = parse_config(config)?;
        c.settings.check()?;
        check_decode_path(c.decode_path, c.backend)?;
        if let Some(t) = c.threads {
            if t < 1 {
                return Err(ConfigIssue {
                    path: vec!["threads".into()],
                    message: format!(
                        "`threads` is {t}; give at least 1, or leave it out for libtorch's default"
                    ),
                });
            }
        }
        Ok(c)
    }
}

/// What the `generate` command hands the libtorch plugin
/// (`bitnet_torch_generate`): a model folder already checked to exist, and
/// everything the stage's config would say.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub dir: std::path::PathBuf,
    pub side: ModelSide,
    pub settings: GenerationSettings,
    pub tokenizer: Option<std::path::PathBuf>,
    pub dtype: Dtype,
    pub backend: TernaryBackendChoice,
    #[serde(default)]
    pub decode_path: DecodePathChoice,
    #[serde(default)]
    pub kept_dtype: KeptDtypeChoice,
    pub threads: Option<i32>,
    /// `auto`, `cpu`, `cuda`, `cuda:N`.
    pub device: Option<String>,
    /// Print the generation record as JSON on stdout instead of the text.
    pub json: bool,
}

/// Exported by the plugin for the `generate` command:
/// `extern "C" fn(request_json: *const u8, len: usize) -> i32`; 0 done,
/// 2 the input was refused (nothing generated), 1 generation failed.
pub const GENERATE_SYMBOL: &[u8] = b"bitnet_torch_generate\0";

const KEYS: &[&str] = &[
    "model",
    "side",
    "prompt",
    "max_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "seed",
    "stop",
    "stop_at_eos",
    "tokenizer",
    "dtype",
    "backend",
    "decode_path",
    "kept_dtype",
    "threads",
];

const OPTIONS: &[OptionDoc] = &[
    OptionDoc {
        name: "model",
        type_name: "stage name",
        default: "required",
        help: "upstream stage (in `needs`) whose model generates",
    },
    OptionDoc {
        name: "side",
        type_name: "auto|baseline|bitnet",
        default: "auto",
        help: "bitnet: packed.safetensors; baseline: model.safetensors; auto: packed when present",
    },
    OptionDoc {
        name: "prompt",
        type_name: "string",
        default: "required",
        help: "text to continue (must leave room for a token in the model's context)",
    },
    OptionDoc {
        name: "max_new_tokens",
        type_name: "integer",
        default: "64",
        help: "tokens to generate at most",
    },
    OptionDoc {
        name: "temperature",
        type_name: "number",
        default: "0",
        help: "0 = greedy; otherwise logits / temperature before sampling",
    },
    OptionDoc {
        name: "top_k",
        type_name: "integer",
        default: "all",
        help: "sample among the k most likely tokens",
    },
    OptionDoc {
        name: "top_p",
        type_name: "number",
        default: "1.0",
        help: "nucleus sampling: the smallest set of likeliest tokens reaching this probability",
    },
    OptionDoc {
        name: "repetition_penalty",
        type_name: "number",
        default: "1.0",
        help: "CTRL penalty on tokens already in the context (1.0 = off)",
    },
    OptionDoc {
        name: "seed",
        type_name: "integer",
        default: "0",
        help: "sampling seed: the same seed and prompt give the same text",
    },
    OptionDoc {
        name: "stop",
        type_name: "list of strings",
        default: "[]",
        help: "stop when the generated text contains one (cut before it)",
    },
    OptionDoc {
        name: "stop_at_eos",
        type_name: "bool",
        default: "true",
        help: "stop at the model's eos_token_id",
    },
    OptionDoc {
        name: "tokenizer",
        type_name: "path",
        default: "model folder's tokenizer.json, else bytes",
        help: "tokenizer.json to use (relative to the pipeline folder)",
    },
    DTYPE_OPTION,
    BACKEND_OPTION,
    DECODE_PATH_OPTION,
    KEPT_DTYPE_OPTION,
    OptionDoc {
        name: "threads",
        type_name: "integer",
        default: "libtorch default",
        help: "CPU threads",
    },
];

pub struct Generate;

impl StageKind for Generate {
    fn name(&self) -> &'static str {
        "generate"
    }

    fn summary(&self) -> &'static str {
        "text from a model with a KV cache; time to first token, prefill and decode tokens/s"
    }

    fn options(&self) -> &'static [OptionDoc] {
        OPTIONS
    }

    fn check_config(&self, config: &Value) -> Result<(), ConfigIssue> {
        GenerateConfig::parse(config).map(|_| ())
    }

    fn key_metrics(&self) -> &'static [&'static str] {
        &[
            "time_to_first_token_ms",
            "prefill_tokens_per_s",
            "decode_tokens_per_s",
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
        GenerateConfig::parse(config)
            .ok()
            .and_then(|c| c.tokenizer)
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_every_bad_setting_names_its_key() {
        let c = GenerateConfig::parse(&json!({"model": "train", "prompt": "Call me"})).unwrap();
        assert_eq!(c.settings.max_new_tokens, 64);
        assert_eq!(c.settings.temperature, 0.0);
        assert_eq!(c.side, ModelSide::Auto);
        assert!(c.settings.stop_at_eos);
        assert_eq!(c.decode_path, DecodePathChoice::Auto);
        assert_eq!(c.kept_dtype, KeptDtypeChoice::Fp32);
        let base = json!({"model": "m", "prompt": "x"});
        for (key, bad) in [
            ("prompt", json!("")),
            ("max_new_tokens", json!(0)),
            ("temperature", json!(-0.5)),
            ("top_k", json!(0)),
            ("top_p", json!(1.5)),
            ("repetition_penalty", json!(0)),
            ("stop", json!(["ok", ""])),
            ("threads", json!(0)),
            ("side", json!("both")),
            ("tmperature", json!(1.0)),
            ("decode_path", json!("fast")),
            ("kept_dtype", json!("int4")),
        ] {
            let mut v = base.clone();
            v[key] = bad;
            let e = GenerateConfig::parse(&v).unwrap_err();
            assert_eq!(e.path, vec![key.to_string()], "{key}: {}", e.message);
        }
        let e = GenerateConfig::parse(&json!({"model": "m"})).unwrap_err();
        assert!(e.message.contains("prompt"), "{}", e.message);
        let e = GenerateConfig::parse(
            &json!({"model": "m", "prompt": "x", "decode_path": "fused", "backend": "unpack"}),
        )
        .unwrap_err();
        assert_eq!(e.path, vec!["decode_path"]);
        assert!(e.message.contains("backend: unpack"), "{}", e.message);
    }
}
