//! `export`: writes a trained BitNet model in a format other engines run —
//! an HF folder that `transformers` loads with `AutoModelForCausalLM` and no
//! custom code (`format: hf`), or a GGUF file for llama.cpp (`format: gguf`)
//! — and, with `verify`, proves the export by running it in that engine and
//! comparing its outputs with ours. A model that only this tool can run is a
//! dead end; this stage is the way out. The options live here so `validate`
//! and `plan` check them without libtorch; the work happens in the
//! `bitnet-torch` plugin (`crates/bitnet-torch/src/stages/export.rs`).
use serde::Deserialize;
use serde_json::Value;

use super::data_config::DataConfig;
use super::{parse_config, Backend, OptionDoc, StageKind};
use crate::pipeline::ConfigIssue;

/// What the export writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// HF `save_pretrained` folder, `LlamaForCausalLM` + BitNet quantization config.
    Hf,
    /// One GGUF file, `llama` architecture.
    Gguf,
}

impl ExportFormat {
    /// File or folder name inside the stage's output folder when `path` is not given.
    pub fn default_name(self) -> &'static str {
        match self {
            ExportFormat::Hf => "hf",
            ExportFormat::Gguf => "model.gguf",
        }
    }
}

/// transformers' two BitNet linear classes store `weight_scale` with opposite meanings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinearClass {
    /// `AutoBitLinear`, offline: `weight_scale = mean|W|` (output multiplied);
    /// our own loader reads it back bit for bit.
    #[default]
    Autobitlinear,
    /// `BitLinear`: `weight_scale = 1 / mean|W|` (output divided); keeps the
    /// 2-bit weights packed in transformers' memory.
    Bitlinear,
}

impl LinearClass {
    pub fn as_str(self) -> &'static str {
        match self {
            LinearClass::Autobitlinear => "autobitlinear",
            LinearClass::Bitlinear => "bitlinear",
        }
    }
}

/// GGUF type of the ternary (converted) matrices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TernaryType {
    /// 2 bits per value + an f16 scale per 256 values (2.0625 bits/weight).
    #[default]
    Tq2_0,
    /// 5 trits per byte (1.6875 bits/weight).
    Tq1_0,
}

/// GGUF type of kept (full-precision) matrices; 1-D tensors are always F32.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeptType {
    #[default]
    F16,
    F32,
}

/// GGUF type for ternary matrices whose rows are not a multiple of 256 long:
/// both hold the ternary codes exactly (block scale = the tensor scale).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FallbackType {
    /// 4.5 bits/weight (what `llama-quantize` falls back to).
    #[default]
    Q4_0,
    /// 8.5 bits/weight.
    Q8_0,
}

/// `verify: false | true | required`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "VerifyRaw")]
pub enum Verify {
    /// No engine check.
    #[default]
    Off,
    /// Check with every engine that is installed; a missing engine is reported, not fatal.
    IfInstalled,
    /// Check with every engine; a missing engine fails the stage.
    Required,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum VerifyRaw {
    Bool(bool),
    Word(String),
}

impl TryFrom<VerifyRaw> for Verify {
    type Error = String;
    fn try_from(raw: VerifyRaw) -> Result<Self, String> {
        match raw {
            VerifyRaw::Bool(false) => Ok(Verify::Off),
            VerifyRaw::Bool(true) => Ok(Verify::IfInstalled),
            VerifyRaw::Word(w) if w == "required" => Ok(Verify::Required),
            VerifyRaw::Word(w) => Err(format!(
                "`{w}` is not a verify mode; use true, false or required"
            )),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// Upstream stage with the BitNet model (default: the only one in `needs`).
    #[serde(default)]
    pub model: Option<String>,
    pub format: ExportFormat,
    /// Where to write (relative to the pipeline folder); default: inside the stage's output folder.
    #[serde(default)]
    pub path: Option<String>,
    /// Replace `path` when it exists.
    #[serde(default)]
    pub overwrite: bool,
    /// Export a model with thought mixers without them (the engines have no such module).
    #[serde(default)]
    pub drop_thoughts: bool,
    #[serde(default)]
    pub linear_class: LinearClass,
    #[serde(default)]
    pub ternary_type: TernaryType,
    #[serde(default)]
    pub kept_type: KeptType,
    #[serde(default)]
    pub fallback_type: FallbackType,
    /// HF `tokenizer.json` of the model (relative to the pipeline folder); default: bytes.
    #[serde(default)]
    pub tokenizer: Option<String>,
    #[serde(default)]
    pub verify: Verify,
    /// Text whose tokens the engines and our model are compared on.
    #[serde(default)]
    pub prompt: Option<String>,
    /// Held-out data for the llama.cpp perplexity comparison (GGUF); without
    /// it `verify` scores the comparison prompt as one window.
    #[serde(default)]
    pub eval_data: Option<DataConfig>,
    #[serde(default = "d_eval_tokens")]
    pub eval_tokens: i64,
    #[serde(default = "d_eval_seq")]
    pub eval_seq_len: i64,
    /// Python with transformers/gguf (default: `$BITNET_PYTHON`, then `.venv/bin/python`
    /// above the pipeline folder, then `python3`).
    #[serde(default)]
    pub python: Option<String>,
}

fn d_eval_tokens() -> i64 {
    4096
}
fn d_eval_seq() -> i64 {
    128
}

/// The comparison prompt when none is given: plain English that any tokenizer encodes.
pub const DEFAULT_PROMPT: &str = "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse, and nothing particular to interest me on shore, I thought I would sail about a little and see the watery part of the world.";

pub struct Export;

const OPTIONS: &[OptionDoc] = &[
    OptionDoc {
        name: "model",
        type_name: "stage name",
        default: "the only upstream",
        help: "upstream stage with the BitNet model (convert_bitnet, attach_thoughts or train)",
    },
    OptionDoc {
        name: "format",
        type_name: "hf|gguf",
        default: "required",
        help: "hf: folder for transformers' AutoModelForCausalLM; gguf: file for llama.cpp (`llama` architecture)",
    },
    OptionDoc {
        name: "path",
        type_name: "path",
        default: "<stage output>/hf or model.gguf",
        help: "where to write, relative to the pipeline folder; written to a temporary name and renamed at the end",
    },
    OptionDoc {
        name: "overwrite",
        type_name: "bool",
        default: "false",
        help: "replace `path` when it exists (otherwise that is an error)",
    },
    OptionDoc {
        name: "drop_thoughts",
        type_name: "bool",
        default: "false",
        help: "export a model with Quiet-STaR thought mixers without them (no engine has the module); the report says so",
    },
    OptionDoc {
        name: "linear_class",
        type_name: "autobitlinear|bitlinear",
        default: "autobitlinear",
        help: "hf: transformers' BitNet layer; autobitlinear stores weight_scale = mean|W|, bitlinear 1/mean|W| (keeps weights 2-bit in memory)",
    },
    OptionDoc {
        name: "ternary_type",
        type_name: "tq2_0|tq1_0",
        default: "tq2_0",
        help: "gguf: type of the ternary matrices (rows of 256 values)",
    },
    OptionDoc {
        name: "kept_type",
        type_name: "f16|f32",
        default: "f16",
        help: "gguf: type of full-precision matrices (embeddings, lm_head); norms are always f32",
    },
    OptionDoc {
        name: "fallback_type",
        type_name: "q4_0|q8_0",
        default: "q4_0",
        help: "gguf: exact type for ternary rows not divisible by 256 (listed in export.json)",
    },
    OptionDoc {
        name: "tokenizer",
        type_name: "path",
        default: "bytes",
        help: "the model's HF tokenizer.json; copied to hf exports (with tokenizer_config/generation_config beside it), converted for gguf",
    },
    OptionDoc {
        name: "verify",
        type_name: "false|true|required",
        default: "false",
        help: "run the export in the engine (transformers for hf; gguf-py and llama.cpp for gguf) and compare with our model; `required` fails when an engine is missing",
    },
    OptionDoc {
        name: "prompt",
        type_name: "string",
        default: "a fixed English sentence",
        help: "text whose tokens the logits are compared on",
    },
    OptionDoc {
        name: "eval_data",
        type_name: "{corpus, heldout_fraction, tokenizer}",
        default: "null",
        help: "gguf: held-out windows that `verify` scores in llama.cpp and in our model (default: the prompt as one window); written to llama_cpp_request.json",
    },
    OptionDoc {
        name: "eval_tokens",
        type_name: "int",
        default: "4096",
        help: "gguf: held-out tokens in those windows at most",
    },
    OptionDoc {
        name: "eval_seq_len",
        type_name: "int",
        default: "128",
        help: "gguf: window length",
    },
    OptionDoc {
        name: "python",
        type_name: "path",
        default: "$BITNET_PYTHON, .venv/bin/python, python3",
        help: "interpreter with transformers and gguf for `verify`",
    },
];

impl StageKind for Export {
    fn name(&self) -> &'static str {
        "export"
    }

    fn summary(&self) -> &'static str {
        "export a BitNet model for transformers (hf) or llama.cpp (gguf), verified by the engine"
    }

    fn options(&self) -> &'static [OptionDoc] {
        OPTIONS
    }

    fn check_config(&self, config: &Value) -> Result<(), ConfigIssue> {
        let c = parse_config::<ExportConfig>(config)?;
        if let Some(p) = &c.path {
            if p.trim().is_empty() {
                return Err(ConfigIssue {
                    path: vec!["path".into()],
                    message: "is empty; give a file or folder name, or leave it out".into(),
                });
            }
        }
        if let Some(d) = &c.eval_data {
            d.check("eval_data")?;
            if c.eval_seq_len < 1 || c.eval_tokens <= c.eval_seq_len {
                return Err(ConfigIssue {
                    path: vec!["eval_tokens".into()],
                    message: "need eval_seq_len >= 1 and eval_tokens > eval_seq_len".into(),
                });
            }
        }
        if c.prompt.as_deref().is_some_and(|p| p.is_empty()) {
            return Err(ConfigIssue {
                path: vec!["prompt".into()],
                message: "is empty; give some text or leave it out".into(),
            });
        }
        Ok(())
    }

    fn key_metrics(&self) -> &'static [&'static str] {
        &[
            "export_bytes",
            "engine_max_abs_diff",
            "engine_top1_agreement",
            "roundtrip_max_abs_diff",
            "llama_cpp_ppl_rel_diff",
        ]
    }

    fn backend(&self) -> Backend {
        Backend::Torch
    }

    /// An export with `verify` is a measurement, and a `path` outside the run
    /// folder must be written each time the pipeline asks for it.
    fn cache_by_default(&self) -> bool {
        false
    }

    fn deps(&self, config: &Value) -> Vec<String> {
        parse_config::<ExportConfig>(config)
            .map(|c| {
                c.tokenizer
                    .into_iter()
                    .chain(c.eval_data.map(|d| d.files()).unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn verify_accepts_bools_and_required_only() {
        let parse = |v: Value| parse_config::<ExportConfig>(&json!({"format": "hf", "verify": v}));
        assert_eq!(parse(json!(true)).unwrap().verify, Verify::IfInstalled);
        assert_eq!(parse(json!(false)).unwrap().verify, Verify::Off);
        assert_eq!(parse(json!("required")).unwrap().verify, Verify::Required);
        let err = parse(json!("maybe")).unwrap_err();
        assert!(
            err.message.contains("true, false or required"),
            "{}",
            err.message
        );
    }

    #[test]
    fn unknown_format_names_the_choices() {
        let err = Export.check_config(&json!({"format": "onnx"})).unwrap_err();
        assert_eq!(err.path, vec!["format".to_string()]);
        assert!(
            err.message.contains("`hf`") && err.message.contains("`gguf`"),
            "{}",
            err.message
        );
        let c = parse_config::<ExportConfig>(
            &json!({"format": "gguf", "ternary_type": "tq1_0", "fallback_type": "q8_0"}),
        )
        .unwrap();
        assert_eq!(
            (c.ternary_type, c.fallback_type),
            (TernaryType::Tq1_0, FallbackType::Q8_0)
        );
        assert!(Export
            .check_config(&json!({"format": "hf", "path": " "}))
            .is_err());
    }
}
