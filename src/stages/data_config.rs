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
}

fn default_heldout_fraction() -> f64 {
    0.05
}

/// The documentation of the `data` option, the same for every kind using it.
pub const DATA_OPTION: OptionDoc = OptionDoc {
    name: "data",
    type_name: "{corpus, heldout_fraction: 0.05, tokenizer: null}",
    default: "required",
    help: "text corpus (bytes, or the HF tokenizer.json given), split into train/held-out deterministically; `train` fits the first part, `evaluate` scores the held-out part",
};

impl DataConfig {
    /// Checks the values serde cannot; `path` is the option's key.
    pub fn check(&self, path: &str) -> Result<(), ConfigIssue> {
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
