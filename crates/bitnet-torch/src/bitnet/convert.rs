//! Conversion of a full-precision model to BitNet, and which layers to convert.
//!
//! A [`ConvertSpec`] selects linear layers by glob patterns over HF module names;
//! embeddings, `lm_head` and norms stay full precision by default, as in the b1.58
//! recipe. [`convert_to_bitnet`] copies the full-precision weights into the latent
//! weights of a fresh BitNet model and reports what was converted and kept.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::bitlinear::Linear;
use super::error::{BitnetError, Result};
use super::kept::KeptStorage;
use super::model::LlamaModel;
use super::quant::QuantConfig;

/// The safetensors `__metadata__` key under which every writer of a BitNet
/// model (latent or packed) stores its [`ConvertSpec`] as JSON, and from
/// which every reader takes the activation quantization: one definition, so
/// the reader cannot look for a key the writers never write.
pub const SPEC_METADATA_KEY: &str = "bitnet";

/// Which linear layers become BitLinear, and how they quantize.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvertSpec {
    #[serde(default)]
    pub quant: QuantConfig,
    /// Layers to convert (globs); default `["*"]`: every linear.
    #[serde(default = "default_convert")]
    pub convert: Vec<String>,
    /// Layers to keep full precision; wins over `convert`.
    #[serde(default = "default_keep")]
    pub keep_full_precision: Vec<String>,
    /// How `packed.safetensors` stores the kept embedding / LM head
    /// (`super::kept`); absent in files from before the option (fp32).
    #[serde(default, skip_serializing_if = "KeptStorage::is_fp32")]
    pub kept_dtype: KeptStorage,
}

fn default_convert() -> Vec<String> {
    vec!["*".to_string()]
}

fn default_keep() -> Vec<String> {
    vec!["embed_tokens".into(), "lm_head".into(), "*norm*".into()]
}

impl Default for ConvertSpec {
    fn default() -> Self {
        ConvertSpec {
            quant: QuantConfig::default(),
            convert: default_convert(),
            keep_full_precision: default_keep(),
            kept_dtype: KeptStorage::Fp32,
        }
    }
}

/// `*` matches any run of characters (dots included), `?` one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative wildcard matching with single backtrack point (linear-ish, no recursion).
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        debug_assert!(pi <= p.len(), "pattern index {pi} past {}", p.len());
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    // The loop consumed the text; only the rest of the pattern decides.
    debug_assert_eq!(ti, t.len());
    p[pi..].iter().all(|&c| c == '*')
}

/// A pattern selects a module if it matches the whole module name
/// (`model.layers.0.mlp.up_proj`) or any dot-separated component of it (`up_proj`).
pub fn pattern_selects(pattern: &str, module: &str) -> bool {
    glob_match(pattern, module) || module.split('.').any(|part| glob_match(pattern, part))
}

impl ConvertSpec {
    /// Rejects empty patterns (they would silently select nothing).
    pub fn validate(&self) -> Result<()> {
        for p in self.convert.iter().chain(&self.keep_full_precision) {
            if p.trim().is_empty() {
                return Err(BitnetError::Pattern {
                    pattern: p.clone(),
                    reason: "empty pattern; remove it or write `*`".into(),
                });
            }
        }
        self.quant.act.range()?;
        Ok(())
    }

    /// Whether the linear module `module` (HF name without `.weight`) becomes BitLinear.
    pub fn should_convert(&self, module: &str) -> bool {
        self.convert.iter().any(|p| pattern_selects(p, module))
            && !self
                .keep_full_precision
                .iter()
                .any(|p| pattern_selects(p, module))
    }
}

/// One tensor in a [`ConversionReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    pub name: String,
    pub parameters: i64,
}

/// What a conversion did, for the run record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversionReport {
    pub spec: ConvertSpec,
    pub converted: Vec<TensorEntry>,
    pub kept: Vec<TensorEntry>,
    pub converted_parameters: i64,
    pub kept_parameters: i64,
}

impl ConversionReport {
    /// Builds the report of a (BitNet) model: BitLinear/packed weights are
    /// "converted", every other tensor "kept".
    pub fn of_model(model: &LlamaModel, spec: &ConvertSpec) -> Self {
        let converted_names: BTreeMap<String, i64> = model
            .linears()
            .into_iter()
            .filter(|(_, l)| !matches!(l, Linear::Full { .. }))
            .map(|(n, l)| (format!("{n}.weight"), l.num_parameters()))
            .collect();
        let (mut converted, mut kept) = (Vec::new(), Vec::new());
        for (name, t) in model.named_tensors() {
            if name.ends_with(".weight_scale") {
                continue;
            }
            match converted_names.get(&name) {
                Some(&n) => converted.push(TensorEntry {
                    name,
                    parameters: n,
                }),
                None => kept.push(TensorEntry {
                    name,
                    parameters: t.numel() as i64,
                }),
            }
        }
        // Every BitLinear/packed weight appears once among the tensors.
        debug_assert_eq!(converted.len(), converted_names.len());
        debug_assert!(kept.iter().all(|e| !converted_names.contains_key(&e.name)));
        ConversionReport {
            spec: spec.clone(),
            converted_parameters: converted.iter().map(|e| e.parameters).sum(),
            kept_parameters: kept.iter().map(|e| e.parameters).sum(),
            converted,
            kept,
        }
    }
}

/// Builds a BitNet model in `p`'s `VarStore` with `fp`'s weights as latent weights.
pub fn convert_to_bitnet(
    fp: &LlamaModel,
    p: &nn::Path,
    spec: &ConvertSpec,
) -> Result<(LlamaModel, ConversionReport)> {
    let mut model = LlamaModel::new_bitnet(p, &fp.config, spec)?;
    let tensors: BTreeMap<String, Tensor> = fp
        .named_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.detach()))
        .collect();
    model.load_state_dict(&tensors)?;
    let report = ConversionReport::of_model(&model, spec);
    Ok((model, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*norm*", "input_layernorm"));
        assert!(glob_match(
            "model.layers.*.mlp.*",
            "model.layers.3.mlp.up_proj"
        ));
        assert!(!glob_match("q_proj", "q_proj2"));
        assert!(glob_match("?_proj", "q_proj"));
        assert!(glob_match("", ""));
        let spec = ConvertSpec::default();
        assert!(spec.should_convert("model.layers.0.self_attn.q_proj"));
        assert!(!spec.should_convert("lm_head"));
        let only_mlp = ConvertSpec {
            convert: vec!["mlp.*".into(), "*mlp*".into()],
            ..ConvertSpec::default()
        };
        assert!(only_mlp.should_convert("model.layers.0.mlp.down_proj"));
        assert!(!only_mlp.should_convert("model.layers.0.self_attn.o_proj"));
        let bad = ConvertSpec {
            convert: vec![" ".into()],
            ..ConvertSpec::default()
        };
        assert!(bad.validate().is_err());
    }
}
