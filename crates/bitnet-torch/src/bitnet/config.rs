//! Model configuration mirroring Hugging Face `config.json` for LLaMA-family models.
//!
//! Config, weights and runtime state are kept apart (as in candle's
//! `models/llama.rs`): this struct deserialises the HF file as-is, keeps unknown
//! keys so a saved checkpoint round-trips its config, and answers the derived
//! questions (kv heads, head dim, rope theta) in one place. `rope_theta` exists in
//! two spellings in the wild: top-level `rope_theta` (transformers < 5) and
//! `rope_parameters.rope_theta` (transformers 5); both are read.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{BitnetError, Result};

/// `rope_parameters` block of transformers 5 configs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct RopeParameters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_type: Option<String>,
    /// Other keys (scaling factors of non-default rope types) kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A LLaMA-family transformer config (HF `LlamaConfig` field names).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Config {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    /// Grouped-query attention: defaults to `num_attention_heads` (plain MHA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<i64>,
    /// Defaults to `hidden_size / num_attention_heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<i64>,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: i64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// Every other key of `config.json` (token ids, torch_dtype, architectures, ...),
    /// kept so that saving the config writes back what was read.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

fn default_model_type() -> String {
    "llama".to_string()
}
fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_max_position_embeddings() -> i64 {
    2048
}
fn default_hidden_act() -> String {
    "silu".to_string()
}

/// Names accepted by [`Config::preset`].
pub const PRESET_NAMES: &[&str] = &["tiny", "small", "tinyllama-1.1b", "llama2-7b", "llama3-8b"];

impl Config {
    /// A plain config with HF defaults for everything not given.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vocab_size: i64,
        hidden_size: i64,
        intermediate_size: i64,
        num_hidden_layers: i64,
        num_attention_heads: i64,
        num_key_value_heads: i64,
        rope_theta: f64,
        max_position_embeddings: i64,
    ) -> Self {
        Config {
            model_type: default_model_type(),
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: Some(num_key_value_heads),
            head_dim: None,
            rms_norm_eps: 1e-5,
            rope_theta: Some(rope_theta),
            rope_parameters: None,
            rope_scaling: None,
            max_position_embeddings,
            tie_word_embeddings: false,
            attention_bias: false,
            mlp_bias: false,
            hidden_act: default_hidden_act(),
            extra: BTreeMap::new(),
        }
    }

    /// The test preset: hidden 64, 2 layers, 4 heads over 2 kv heads (exercises GQA),
    /// byte-level vocabulary (256). Builds in milliseconds on CPU.
    pub fn tiny() -> Self {
        Config::new(256, 64, 128, 2, 4, 2, 10_000.0, 512)
    }

    /// A named preset: `tiny`, `small` (demo-sized, ~10M params), or the shapes
    /// of well-known checkpoints so a config can be checked without downloading one.
    pub fn preset(name: &str) -> Result<Self> {
        let cfg = match name {
            "tiny" => Config::tiny(),
            "small" => Config::new(256, 256, 688, 6, 8, 4, 10_000.0, 1024),
            "tinyllama-1.1b" => Config::new(32_000, 2048, 5632, 22, 32, 4, 10_000.0, 2048),
            "llama2-7b" => Config::new(32_000, 4096, 11_008, 32, 32, 32, 10_000.0, 4096),
            "llama3-8b" => Config::new(128_256, 4096, 14_336, 32, 32, 8, 500_000.0, 8192),
            other => {
                return Err(BitnetError::Config {
                    key: "preset".into(),
                    reason: format!(
                        "`{other}` is not a preset; known presets: {}",
                        PRESET_NAMES.join(", ")
                    ),
                })
            }
        };
        Ok(cfg)
    }

    /// Reads and validates an HF `config.json`.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let cfg: Config = serde_path_to_error_free(de)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and validates an HF `config.json` file.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| BitnetError::Config {
            key: path.display().to_string(),
            reason: format!("cannot be read: {e}"),
        })?;
        Self::from_json_str(&text).map_err(|e| match e {
            BitnetError::Config { key, reason } => BitnetError::Config {
                key: format!("{key}` in `{}", path.display()),
                reason,
            },
            other => other,
        })
    }

    /// The config as HF-compatible JSON (what `save_pretrained` would write).
    pub fn to_json_string(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".to_string())
    }

    pub fn num_kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> i64 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// RoPE base from either spelling; HF's default 10000 when neither is given.
    pub fn rope_theta(&self) -> f64 {
        self.rope_theta
            .or_else(|| self.rope_parameters.as_ref().and_then(|r| r.rope_theta))
            .unwrap_or(10_000.0)
    }

    /// Total parameter count of the full-precision model.
    pub fn num_parameters(&self) -> i64 {
        let (c, f, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let (hd, h, kv) = (
            self.head_dim(),
            self.num_attention_heads,
            self.num_kv_heads(),
        );
        debug_assert!(kv <= h, "{kv} kv heads > {h} heads");
        debug_assert!(
            c >= 0 && f >= 0 && v >= 0,
            "negative sizes in a validated config"
        );
        let attn = c * h * hd * 2 + c * kv * hd * 2;
        let layer = attn + 3 * c * f + 2 * c;
        let head = if self.tie_word_embeddings { 0 } else { v * c };
        v * c + self.num_hidden_layers * layer + c + head
    }

    /// Checks everything the transformer relies on; names the offending key.
    /// The checks run in this order and the first failure is reported, so the
    /// later ones may rely on what the earlier ones established (positive
    /// sizes before any division by them).
    pub fn validate(&self) -> Result<()> {
        self.check_sizes()?;
        self.check_head_layout()?;
        self.check_numerics()?;
        self.check_supported_features()
    }

    /// Every size positive, and below a sanity cap far above any real
    /// model, so a corrupt config.json fails here instead of in a
    /// multi-terabyte allocation.
    // pot10: init (config validation runs once, while a model is built or loaded; it allocates only its error message)
    fn check_sizes(&self) -> Result<()> {
        for (key, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_kv_heads()),
            ("head_dim", self.head_dim()),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v <= 0 {
                return config_error(key, format!("must be positive, got {v}"));
            }
        }
        for (key, v, cap) in [
            ("vocab_size", self.vocab_size, 1i64 << 24),
            ("hidden_size", self.hidden_size, 1 << 18),
            ("intermediate_size", self.intermediate_size, 1 << 20),
            ("num_hidden_layers", self.num_hidden_layers, 4096),
            ("num_attention_heads", self.num_attention_heads, 4096),
        ] {
            if v > cap {
                return config_error(
                    key,
                    format!("= {v} is implausibly large (limit {cap}); is config.json corrupt?"),
                );
            }
        }
        Ok(())
    }

    /// Whole query groups per kv head, whole heads per hidden size, and an
    /// even head dimension (RoPE rotates pairs).
    // pot10: init (config validation runs once, while a model is built or loaded; it allocates only its error message)
    fn check_head_layout(&self) -> Result<()> {
        // `check_sizes` ran first: the divisions below cannot be by zero.
        debug_assert!(
            self.num_kv_heads() > 0,
            "num_key_value_heads checked positive"
        );
        debug_assert!(
            self.num_attention_heads > 0,
            "num_attention_heads checked positive"
        );
        if self.num_attention_heads % self.num_kv_heads() != 0 {
            return config_error(
                "num_key_value_heads",
                format!(
                    "({}) must divide num_attention_heads ({})",
                    self.num_kv_heads(),
                    self.num_attention_heads
                ),
            );
        }
        if self.head_dim.is_none() && self.hidden_size % self.num_attention_heads != 0 {
            return config_error(
                "hidden_size",
                format!(
                    "({}) is not divisible by num_attention_heads ({}); set head_dim explicitly",
                    self.hidden_size, self.num_attention_heads
                ),
            );
        }
        if self.head_dim() % 2 != 0 {
            return config_error("head_dim", "must be even for RoPE".into());
        }
        Ok(())
    }

    /// Positive (and not NaN) norm epsilon and RoPE base.
    // pot10: init (config validation runs once, while a model is built or loaded; it allocates only its error message)
    fn check_numerics(&self) -> Result<()> {
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 {
            return config_error("rms_norm_eps", "must be positive".into());
        }
        if self.rope_theta().is_nan() || self.rope_theta() <= 0.0 {
            return config_error("rope_theta", "must be positive".into());
        }
        Ok(())
    }

    /// What this LLaMA implementation has: SwiGLU, no biases, default RoPE.
    // pot10: init (config validation runs once, while a model is built or loaded; it allocates only its error message)
    fn check_supported_features(&self) -> Result<()> {
        if self.hidden_act != "silu" {
            return config_error(
                "hidden_act",
                format!(
                    "`{}` is not supported (only `silu`, LLaMA's SwiGLU)",
                    self.hidden_act
                ),
            );
        }
        if self.attention_bias || self.mlp_bias {
            return config_error(
                "attention_bias",
                "biases are not supported (LLaMA has none); use a bias-free checkpoint".into(),
            );
        }
        match self.rope_type() {
            Some(t) if t != "default" => config_error(
                "rope_scaling",
                format!("rope type `{t}` is not supported (only `default` RoPE)"),
            ),
            _ => Ok(()),
        }
    }

    /// The RoPE variant named by `rope_parameters.rope_type`, else by the
    /// older `rope_scaling.rope_type` / `rope_scaling.type`.
    fn rope_type(&self) -> Option<String> {
        self.rope_parameters
            .as_ref()
            .and_then(|r| r.rope_type.clone())
            .or_else(|| {
                self.rope_scaling.as_ref().and_then(|s| {
                    s.get("rope_type")
                        .or_else(|| s.get("type"))
                        .and_then(|t| t.as_str())
                        .map(str::to_string)
                })
            })
    }
}

/// A `Config` error naming `key`.
// pot10: init (builds the error of config validation, which runs while a model is built or loaded)
fn config_error(key: &str, reason: String) -> Result<()> {
    Err(BitnetError::Config {
        key: key.to_string(),
        reason,
    })
}

/// `serde_json` error with the JSON path of the bad key, without another dependency.
fn serde_path_to_error_free<'de, D>(de: D) -> Result<Config>
where
    D: serde::Deserializer<'de, Error = serde_json::Error>,
{
    Config::deserialize(de).map_err(|e| BitnetError::Config {
        key: "config.json".into(),
        reason: format!("does not parse as a LLaMA config: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_rope_theta_spellings() {
        let old = r#"{"vocab_size":8,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,
            "num_attention_heads":2,"rope_theta":500000.0,"bos_token_id":1}"#;
        let new = r#"{"vocab_size":8,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,
            "num_attention_heads":2,"rope_parameters":{"rope_theta":250000.0,"rope_type":"default"}}"#;
        let a = Config::from_json_str(old).unwrap();
        let b = Config::from_json_str(new).unwrap();
        assert_eq!(a.rope_theta(), 500_000.0);
        assert_eq!(b.rope_theta(), 250_000.0);
        assert_eq!(a.num_kv_heads(), 2);
        assert_eq!(a.head_dim(), 4);
        // unknown keys survive a round trip
        let again = Config::from_json_str(&a.to_json_string()).unwrap();
        assert_eq!(again, a);
        assert_eq!(again.extra.get("bos_token_id"), Some(&serde_json::json!(1)));
    }

    #[test]
    fn rejects_bad_values_naming_the_key() {
        let mut c = Config::tiny();
        c.num_key_value_heads = Some(3);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("num_key_value_heads"), "{e}");
        let mut c = Config::tiny();
        c.rope_scaling = Some(serde_json::json!({"rope_type": "llama3", "factor": 8.0}));
        assert!(c.validate().unwrap_err().to_string().contains("llama3"));
        assert!(Config::preset("nope")
            .unwrap_err()
            .to_string()
            .contains("tiny"));
        for name in PRESET_NAMES {
            Config::preset(name).unwrap().validate().unwrap();
        }
    }

    #[test]
    fn parameter_count_matches_known_model() {
        // TinyLlama-1.1B has 1_100_048_384 parameters (HF model card / num_parameters()).
        assert_eq!(
            Config::preset("tinyllama-1.1b").unwrap().num_parameters(),
            1_100_048_384
        );
    }
}
