//! `attach_thoughts` (Phase 3 Quiet-STaR integration): attaches a
//! full-precision thought mixer to the attention outputs of selected layers,
//! `out = (1 - g) * attn_out + g * proj(read(thoughts))`, from a Phase 3
//! thought artifact or from thought vectors derived from the model itself.
//! Output: `thoughts.safetensors` (mixer weights + metadata) next to a copy
//! of the incoming model files, so downstream stages read one folder.
use serde::Deserialize;
use serde_json::Value;

use super::{parse_config, Backend, OptionDoc, StageKind};
use crate::pipeline::ConfigIssue;

/// How the mixing weight `g` is formed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MixStrategy {
    /// A constant `g` (the Phase 4 guide's 0.1).
    #[default]
    Fixed,
    /// A trainable scalar per layer, starting at `gate`.
    Learned,
    /// `sigmoid(mixing_head(attn_out))` per position, as Quiet-STaR's mixing head.
    Gated,
}

fn default_num_thoughts() -> usize {
    4
}

/// Builds thought vectors from the model's own mean hidden states.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeriveThoughts {
    /// Texts (byte-tokenized); each thought is the mean final hidden state
    /// over one contiguous share of them.
    pub texts: Vec<String>,
    #[serde(default = "default_num_thoughts")]
    pub num_thoughts: usize,
}

fn default_gate() -> f64 {
    0.1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachThoughtsConfig {
    /// Upstream stage holding the model (default: the only one in `needs`).
    #[serde(default)]
    pub model: Option<String>,
    /// Phase 3 thought artifact (safetensors), relative to the pipeline folder.
    #[serde(default)]
    pub path: Option<String>,
    /// Derive thoughts from the model instead of reading an artifact.
    #[serde(default)]
    pub derive_thoughts: Option<DeriveThoughts>,
    #[serde(default)]
    pub strategy: MixStrategy,
    /// `g` for `fixed`, the initial `g` for `learned`, the mean-gate bias for `gated`
    /// when the artifact has no mixing head.
    #[serde(default = "default_gate")]
    pub gate: f64,
    /// Layer indices that get a mixer (default: all).
    #[serde(default)]
    pub layers: Option<Vec<i64>>,
}

pub struct AttachThoughts;

const OPTIONS: &[OptionDoc] = &[
    OptionDoc {
        name: "model",
        type_name: "stage name",
        default: "the only upstream",
        help: "upstream stage whose model gets the thought mixers",
    },
    OptionDoc {
        name: "path",
        type_name: "path",
        default: "null",
        help: "Phase 3 artifact: thought_vectors [K, hidden], optional mixing_head.*, __metadata__",
    },
    OptionDoc {
        name: "derive_thoughts",
        type_name: "{texts, num_thoughts: 4}",
        default: "null",
        help: "without an artifact: thoughts = mean hidden states of the model over these texts",
    },
    OptionDoc {
        name: "strategy",
        type_name: "fixed|learned|gated",
        default: "fixed",
        help:
            "mixing weight g: constant, trainable scalar per layer, or a mixing head per position",
    },
    OptionDoc {
        name: "gate",
        type_name: "float in [0, 1]",
        default: "0.1",
        help: "g (fixed), its start value (learned), mean gate without a mixing head (gated)",
    },
    OptionDoc {
        name: "layers",
        type_name: "list of ints",
        default: "all",
        help: "decoder layers whose attention output is mixed",
    },
];

impl StageKind for AttachThoughts {
    fn name(&self) -> &'static str {
        "attach_thoughts"
    }

    fn summary(&self) -> &'static str {
        "attach full-precision Quiet-STaR thought mixers to attention outputs (Phase 3 artifact or derived)"
    }

    fn options(&self) -> &'static [OptionDoc] {
        OPTIONS
    }

    fn check_config(&self, config: &Value) -> Result<(), ConfigIssue> {
        let c = parse_config::<AttachThoughtsConfig>(config)?;
        let issue = |path: &str, message: String| ConfigIssue {
            path: vec![path.into()],
            message,
        };
        match (&c.path, &c.derive_thoughts) {
            (Some(_), Some(_)) => {
                return Err(issue(
                    "derive_thoughts",
                    "give either `path` or `derive_thoughts`, not both".into(),
                ))
            }
            (None, None) => {
                return Err(issue(
                    "path",
                    "missing: give a thought artifact `path` or `derive_thoughts: {texts: [...]}`"
                        .into(),
                ))
            }
            (None, Some(d)) if d.texts.is_empty() || d.num_thoughts == 0 => {
                return Err(issue(
                    "derive_thoughts",
                    "needs at least one text and num_thoughts >= 1".into(),
                ))
            }
            _ => {}
        }
        if !(0.0..=1.0).contains(&c.gate) {
            return Err(issue("gate", format!("must be in [0, 1], got {}", c.gate)));
        }
        Ok(())
    }

    fn key_metrics(&self) -> &'static [&'static str] {
        &["num_thoughts", "mixed_layers", "thought_parameters"]
    }

    fn backend(&self) -> Backend {
        Backend::Torch
    }

    fn deps(&self, config: &Value) -> Vec<String> {
        parse_config::<AttachThoughtsConfig>(config)
            .ok()
            .and_then(|c| c.path)
            .into_iter()
            .collect()
    }
}
