//! The `data:` block that `train` and `evaluate` share: one corpus, one
//! tokenizer and one deterministic train/held-out split, so `evaluate`
//! scores exactly the text that `train` held out.
use serde::Deserialize;

use super::OptionDoc;
use crate::pipeline::ConfigIssue;

/// Text the model trains/evaluates on: a UTF-8 corpus file, tokenized by
/// bytes or by an HF `tokenizer.json`, split deterministically into train
/// and held-out parts (the held-out part starts at the first paragraph break
/// after `1 - heldout_fraction` of it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Corpus file, relative to the pipeline folder.
    pub corpus: String,
    #[serde(default = "default_heldout_fraction")]
    pub heldout_fraction: f64,
    /// HF `tokenizer.json` (relative to the pipeline folder); default: bytes.
    #[serde(default)]
    pub tokenizer: Option<String>,
    /// Upstream stage whose output folder holds the model's `tokenizer.json`
    /// (a `load_checkpoint` of a GGUF writes one); exclusive with `tokenizer`.
    #[serde(default)]
    pub tokenizer_from: Option<String>,
}

fn default_heldout_fraction() -> f64 {
    0.05
}

/// The documentation of the `data` option, the same for every kind using it.
pub const DATA_OPTION: OptionDoc = OptionDoc {
    name: "data",
    type_name: "{corpus, heldout_fraction: 0.05, tokenizer: null, tokenizer_from: null}",
    default: "required",
    help: "text corpus (bytes, the HF tokenizer.json given, or `tokenizer_from: STAGE`: the tokenizer.json that upstream stage wrote, e.g. a GGUF `load_checkpoint`), split into train/held-out deterministically; `train` fits the first part, `evaluate` scores the held-out part",
};

impl DataConfig {
    /// Checks the values serde cannot; `path` is the option's key.
    pub fn check(&self, path: &str) -> Result<(), ConfigIssue> {
        if self.tokenizer.is_some() && self.tokenizer_from.is_some() {
            return Err(ConfigIssue {
                path: vec![path.into(), "tokenizer_from".into()],
                message: "give either `tokenizer` (a file) or `tokenizer_from` (an upstream stage), not both".into(),
            });
        }
        if !(self.heldout_fraction > 0.0 && self.heldout_fraction < 1.0) {
            return Err(ConfigIssue {
                path: vec![path.into(), "heldout_fraction".into()],
                message: format!("must be in (0, 1), got {}", self.heldout_fraction),
            });
        }
        Ok(())
    }

    /// The files it reads (relative to the pipeline folder): the stage's
    /// dependencies for fingerprinting.
    pub fn files(&self) -> Vec<String> {
        std::iter::once(self.corpus.clone())
            .chain(self.tokenizer.clone())
            .collect()
    }
}
