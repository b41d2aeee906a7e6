//! Tokenizers: raw bytes by default, a Hugging Face `tokenizer.json` on request.
//!
//! The bundled demo model was trained on bytes (token id = byte value, vocab
//! 256, no special tokens), which needs no file and cannot fail on any input,
//! so it is the default. Real checkpoints come with a `tokenizer.json`; the
//! `tokenizers` crate reads it (built without its C regex engine and without
//! HTTP, so it builds offline and never downloads anything).

use std::path::{Path, PathBuf};

use super::DataError;

/// Deepest JSON nesting accepted in a `tokenizer.json`. Real files nest a few levels
/// (a `Sequence` of normalizers inside the file's object); the `tokenizers` crate
/// buffers untagged enums and panics (`expect("Helper")`) when serde_json's
/// recursion limit is hit inside, which a document under that limit still can
/// (issue #16).
const MAX_TOKENIZER_JSON_DEPTH: usize = 32;

/// Maximum nesting of `[`/`{` in JSON text, outside strings (the text is known to
/// be valid JSON, so escapes are the only subtlety).
fn json_depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Longest added token accepted. Added tokens are short markers (`<|im_start|>`);
/// the `tokenizers` crate took 40 s to load one of 100 000 bytes (issue #16).
const MAX_ADDED_TOKEN_BYTES: usize = 1024;

/// Contradictions the `tokenizers` crate does not survive, found by the hostile-input
/// soak (issue #16): a BPE merge whose second token is shorter than, or does not
/// start with, `continuing_subword_prefix` (a panic slicing it), and giant added
/// tokens (minutes of work).
fn check_tokenizer_doc(doc: &serde_json::Value) -> Result<(), String> {
    if let Some(added) = doc.get("added_tokens").and_then(|a| a.as_array()) {
        for (i, t) in added.iter().enumerate() {
            let len = t
                .get("content")
                .and_then(|c| c.as_str())
                .map_or(0, str::len);
            if len > MAX_ADDED_TOKEN_BYTES {
                return Err(format!(
                    "`added_tokens`[{i}] is {len} bytes long (limit {MAX_ADDED_TOKEN_BYTES}); added tokens are short markers such as `<|im_start|>`, so the file is corrupt"
                ));
            }
        }
    }
    let model = doc.get("model");
    let prefix = model
        .and_then(|m| m.get("continuing_subword_prefix"))
        .and_then(|p| p.as_str())
        .unwrap_or("");
    let merges = model
        .and_then(|m| m.get("merges"))
        .and_then(|m| m.as_array());
    if let (false, Some(merges)) = (prefix.is_empty(), merges) {
        for (i, m) in merges.iter().enumerate() {
            let second = match m {
                serde_json::Value::String(s) => s.split_once(' ').map(|(_, b)| b),
                serde_json::Value::Array(pair) => pair.get(1).and_then(|b| b.as_str()),
                _ => None,
            };
            if let Some(b) = second {
                if !b.starts_with(prefix) {
                    return Err(format!(
                        "`model.merges`[{i}]: its second token `{b}` does not start with `model.continuing_subword_prefix` `{prefix}`; the file is inconsistent"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Size of the byte-level vocabulary: one id per byte value.
pub const BYTE_VOCAB_SIZE: usize = 256;

/// A tokenizer the data pipeline can use.
///
/// An enum rather than a trait object: there are two kinds, both known here,
/// and stages store the choice in their typed config.
#[derive(Clone, Default)]
pub enum Tokenizer {
    /// Token id = byte value (0..=255); no special tokens, no normalisation.
    #[default]
    Bytes,
    /// A Hugging Face tokenizer loaded from `tokenizer.json`.
    HuggingFace {
        /// Where it was loaded from, for error messages and run records.
        path: PathBuf,
        inner: Box<tokenizers::Tokenizer>,
    },
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tokenizer::Bytes => f.write_str("Tokenizer::Bytes"),
            Tokenizer::HuggingFace { path, .. } => f
                .debug_struct("Tokenizer::HuggingFace")
                .field("path", path)
                .finish_non_exhaustive(),
        }
    }
}

impl Tokenizer {
    /// The byte-level tokenizer the demo model was trained with.
    pub fn byte_level() -> Self {
        Tokenizer::Bytes
    }

    /// Loads a Hugging Face `tokenizer.json`.
    ///
    /// The text is checked to be JSON before the `tokenizers` crate sees it: that
    /// crate's deserialisers `expect` on malformed JSON (a truncated download
    /// panicked in `decoders/mod.rs`; issue #16), so syntax errors are reported
    /// here, with the line and column.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, DataError> {
        let path = path.as_ref();
        let load_err = |message: String| DataError::LoadTokenizer {
            path: path.to_path_buf(),
            message,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| load_err(format!("cannot read it: {e}")))?;
        serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|e| {
            load_err(format!(
                "not valid JSON ({e}); the file is truncated or corrupt"
            ))
        })?;
        let depth = json_depth(&text);
        if depth > MAX_TOKENIZER_JSON_DEPTH {
            return Err(load_err(format!(
                "JSON nested {depth} levels deep; a tokenizer.json needs a handful (limit {MAX_TOKENIZER_JSON_DEPTH}), so the file is corrupt"
            )));
        }
        let doc: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| load_err(format!("not valid JSON ({e})")))?;
        check_tokenizer_doc(&doc).map_err(load_err)?;
        let inner: tokenizers::Tokenizer = text
            .parse()
            .map_err(|err: tokenizers::Error| load_err(err.to_string()))?;
        Ok(Tokenizer::HuggingFace {
            path: path.to_path_buf(),
            inner: Box::new(inner),
        })
    }

    /// `None` gives the byte-level default, `Some(path)` loads that file.
    pub fn from_option(path: Option<&Path>) -> Result<Self, DataError> {
        match path {
            None => Ok(Tokenizer::Bytes),
            Some(path) => Tokenizer::from_file(path),
        }
    }

    /// A short name for logs and the results DB: `bytes` or the file path.
    pub fn name(&self) -> String {
        match self {
            Tokenizer::Bytes => "bytes".to_owned(),
            Tokenizer::HuggingFace { path, .. } => path.display().to_string(),
        }
    }

    /// Number of token ids, including added tokens for HF tokenizers; the
    /// model's `vocab_size` must be at least this.
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Bytes => BYTE_VOCAB_SIZE,
            Tokenizer::HuggingFace { inner, .. } => inner.get_vocab_size(true),
        }
    }

    /// Tokenizes raw corpus bytes. HF tokenizers need UTF-8 text; `source`
    /// names the file in the error when the bytes are not.
    pub fn encode_bytes(&self, data: &[u8], source: &Path) -> Result<Vec<i64>, DataError> {
        match self {
            Tokenizer::Bytes => Ok(data.iter().map(|&b| i64::from(b)).collect()),
            Tokenizer::HuggingFace { .. } => {
                let text = std::str::from_utf8(data).map_err(|err| DataError::NotUtf8 {
                    path: source.to_path_buf(),
                    offset: err.valid_up_to(),
                    tokenizer: self.name(),
                })?;
                self.encode(text)
            }
        }
    }

    /// Tokenizes text without adding special tokens (corpus windows are cut
    /// anywhere, so BOS/EOS markers would be meaningless inside them).
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, DataError> {
        match self {
            Tokenizer::Bytes => Ok(text.bytes().map(i64::from).collect()),
            Tokenizer::HuggingFace { inner, .. } => {
                let encoding = inner
                    .encode(text, false)
                    .map_err(|err| DataError::Tokenize {
                        tokenizer: self.name(),
                        action: "encode",
                        message: err.to_string(),
                    })?;
                Ok(encoding.get_ids().iter().map(|&id| i64::from(id)).collect())
            }
        }
    }

    /// Turns ids back into text. Byte sequences that are not UTF-8 (a window
    /// cut inside a multi-byte character) decode to U+FFFD, as in Python's
    /// `errors="replace"`.
    pub fn decode(&self, ids: &[i64]) -> Result<String, DataError> {
        let vocab_size = self.vocab_size();
        let out_of_range = |id: i64| DataError::TokenOutOfRange {
            tokenizer: self.name(),
            id,
            vocab_size,
        };
        match self {
            Tokenizer::Bytes => {
                let bytes = ids
                    .iter()
                    .map(|&id| u8::try_from(id).map_err(|_| out_of_range(id)))
                    .collect::<Result<Vec<u8>, _>>()?;
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            Tokenizer::HuggingFace { inner, .. } => {
                let ids = ids
                    .iter()
                    .map(|&id| u32::try_from(id).map_err(|_| out_of_range(id)))
                    .collect::<Result<Vec<u32>, _>>()?;
                inner
                    .decode(&ids, false)
                    .map_err(|err| DataError::Tokenize {
                        tokenizer: self.name(),
                        action: "decode",
                        message: err.to_string(),
                    })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tokenizer_round_trips_non_ascii_text() {
        let tok = Tokenizer::byte_level();
        let text = "Call me Ishmael—WHŒL, חן, ϰητος.\n";
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids.len(), text.len(), "one id per UTF-8 byte");
        assert!(ids.iter().all(|&id| (0..256).contains(&id)));
        assert_eq!(ids[0], i64::from(b'C'));
        assert_eq!(tok.decode(&ids).unwrap(), text);
        assert_eq!(tok.vocab_size(), 256);
    }

    #[test]
    fn byte_tokenizer_encodes_invalid_utf8_and_decodes_lossily() {
        let tok = Tokenizer::byte_level();
        let ids = tok.encode_bytes(&[0xff, b'a'], Path::new("x")).unwrap();
        assert_eq!(ids, vec![255, 97]);
        assert_eq!(tok.decode(&ids).unwrap(), "\u{fffd}a");
    }

    #[test]
    fn byte_tokenizer_rejects_ids_outside_the_byte_range() {
        let err = Tokenizer::byte_level().decode(&[65, 256]).unwrap_err();
        assert!(err.to_string().contains("token id 256"), "{err}");
    }

    /// A word-level `tokenizer.json` small enough to write inline.
    const WORD_LEVEL_JSON: &str = r#"{
      "version": "1.0",
      "truncation": null,
      "padding": null,
      "added_tokens": [],
      "normalizer": null,
      "pre_tokenizer": {"type": "Whitespace"},
      "post_processor": null,
      "decoder": null,
      "model": {
        "type": "WordLevel",
        "vocab": {"[UNK]": 0, "call": 1, "me": 2, "ishmael": 3, ".": 4},
        "unk_token": "[UNK]"
      }
    }"#;

    #[test]
    fn hf_tokenizer_json_loads_encodes_and_decodes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, WORD_LEVEL_JSON).unwrap();
        let tok = Tokenizer::from_file(&path).unwrap();
        assert_eq!(tok.vocab_size(), 5);
        let ids = tok.encode("call me ishmael . whale").unwrap();
        assert_eq!(ids, vec![1, 2, 3, 4, 0]);
        assert_eq!(tok.decode(&ids[..3]).unwrap(), "call me ishmael");
        assert!(tok.name().ends_with("tokenizer.json"));
    }

    #[test]
    fn hf_tokenizer_rejects_non_utf8_corpus_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, WORD_LEVEL_JSON).unwrap();
        let tok = Tokenizer::from_file(&path).unwrap();
        let err = tok
            .encode_bytes(b"call \xff", Path::new("corpus.txt"))
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("`corpus.txt`") && msg.contains("byte 5"),
            "{msg}"
        );
    }

    #[test]
    fn missing_or_malformed_tokenizer_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.json");
        let err = Tokenizer::from_file(&missing).unwrap_err().to_string();
        assert!(err.contains("nope.json"), "{err}");

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{\"model\": 3}").unwrap();
        let err = Tokenizer::from_file(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.json"), "{err}");
    }

    #[test]
    fn no_path_means_bytes() {
        assert!(matches!(
            Tokenizer::from_option(None).unwrap(),
            Tokenizer::Bytes
        ));
    }
}
