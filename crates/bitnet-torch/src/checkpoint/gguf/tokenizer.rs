//! The tokenizer stored in GGUF metadata (`tokenizer.ggml.*`) as an HF `tokenizer.json`.
//!
//! A model is only measurable with its own tokenizer: perplexity over a different
//! segmentation of the same text is a different number. llama.cpp keeps the vocabulary,
//! merges and token types in the GGUF, plus a pre-tokenizer *name*
//! (`tokenizer.ggml.pre`) standing for the regex its converter detected. We rebuild the
//! `tokenizer.json` that HF `tokenizers` reads (the project's data module already loads
//! that format): a byte-level BPE model, the pre-tokenizer the name stands for (the
//! same definitions as the models' own `tokenizer.json` on the Hub), control tokens as
//! special added tokens. Only the `gpt2` tokenizer model (byte-level BPE) is supported;
//! SentencePiece (`llama`) vocabularies are refused with a way out.

use serde_json::{json, Value};

use super::file::{GgufFile, GgufValue};

/// Byte-level BPE pre-tokenizer names we can rebuild, and what they are.
pub const SUPPORTED_PRE_TOKENIZERS: &[&str] =
    &["default", "gpt-2", "smollm", "llama-bpe", "llama3", "qwen2"];

/// llama.cpp token types (`llama_token_type`; gguf-py `TokenType`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The Llama 3 split regex (its `tokenizer.json`); Qwen2 differs in single digits.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split_then_bytes(regex: &str) -> Value {
    json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
        byte_level(false),
    ]})
}

/// The HF pre-tokenizer of a llama.cpp pre-tokenizer name.
fn pre_tokenizer(pre: &str) -> Option<Value> {
    Some(match pre {
        // GPT-2's own regex is ByteLevel's built-in one.
        "default" | "gpt-2" => byte_level(true),
        // SmolLM's tokenizer.json: every digit on its own, then GPT-2 bytes.
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level(true),
        ]}),
        "llama-bpe" | "llama3" => split_then_bytes(LLAMA3_REGEX),
        "qwen2" => split_then_bytes(QWEN2_REGEX),
        _ => return None,
    })
}

/// The llama.cpp pre-tokenizer name (`tokenizer.ggml.pre`) whose definition
/// an HF `tokenizer.json` `pre_tokenizer` is: the inverse of
/// `pre_tokenizer`, so a GGUF export writes the name llama.cpp needs to split
/// text as the model's own tokenizer does. `trim_offsets` is ignored (it
/// changes offsets, not the split). `None`: not one we know.
pub fn pre_tokenizer_name(pre_tok: &Value) -> Option<&'static str> {
    fn strip(v: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .filter(|(k, _)| k.as_str() != "trim_offsets")
                    .map(|(k, v)| (k.clone(), strip(v)))
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.iter().map(strip).collect()),
            other => other.clone(),
        }
    }
    let want = strip(pre_tok);
    // Canonical names first: "gpt-2" over its alias "default", "llama-bpe" over "llama3".
    ["gpt-2", "smollm", "llama-bpe", "qwen2"]
        .into_iter()
        .find(|name| pre_tokenizer(name).is_some_and(|p| strip(&p) == want))
}

fn strings<'a>(f: &'a GgufFile, key: &str) -> Result<Vec<&'a str>, String> {
    let arr = f
        .get(key)
        .ok_or_else(|| format!("metadata `{key}` is missing"))?
        .as_array()
        .ok_or_else(|| format!("metadata `{key}` is not an array"))?;
    arr.iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .ok_or_else(|| format!("`{key}`[{i}] is not a string"))
        })
        .collect()
}

/// Builds `tokenizer.json` from the `tokenizer.ggml.*` metadata of `f`.
/// Errors say which key is missing or unsupported (the caller names the file).
pub fn hf_tokenizer_json(f: &GgufFile) -> Result<Value, String> {
    let model = f
        .get("tokenizer.ggml.model")
        .and_then(GgufValue::as_str)
        .ok_or("no tokenizer metadata (`tokenizer.ggml.model` is missing); re-convert the model with llama.cpp's convert_hf_to_gguf.py, which stores it")?;
    if model != "gpt2" {
        return Err(format!(
            "tokenizer model `{model}` is not supported (only `gpt2`, byte-level BPE); give `train`/`evaluate` the model's HF tokenizer.json with `data.tokenizer`"
        ));
    }
    let pre = f
        .get("tokenizer.ggml.pre")
        .and_then(GgufValue::as_str)
        .unwrap_or("default");
    let pre_tok = pre_tokenizer(pre).ok_or_else(|| {
        format!(
            "pre-tokenizer `{pre}` (`tokenizer.ggml.pre`) is not supported (supported: {}); give `train`/`evaluate` the model's HF tokenizer.json with `data.tokenizer`",
            SUPPORTED_PRE_TOKENIZERS.join(", ")
        )
    })?;
    let tokens = strings(f, "tokenizer.ggml.tokens")?;
    let merges = strings(f, "tokenizer.ggml.merges")?;
    let types: Vec<i64> = match f.get("tokenizer.ggml.token_type") {
        None => vec![1; tokens.len()],
        Some(v) => v
            .as_array()
            .ok_or("`tokenizer.ggml.token_type` is not an array")?
            .iter()
            .map(|t| t.as_i64().unwrap_or(1))
            .collect(),
    };
    if types.len() != tokens.len() {
        return Err(format!(
            "`tokenizer.ggml.token_type` has {} entries but `tokenizer.ggml.tokens` has {}",
            types.len(),
            tokens.len()
        ));
    }
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, (tok, ty)) in tokens.iter().zip(&types).enumerate() {
        if vocab.insert(tok.to_string(), json!(id)).is_some() {
            return Err(format!(
                "token `{tok}` appears twice in `tokenizer.ggml.tokens`"
            ));
        }
        if *ty == TOKEN_TYPE_CONTROL || *ty == TOKEN_TYPE_USER_DEFINED {
            added.push(json!({
                "id": id, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": *ty == TOKEN_TYPE_CONTROL,
            }));
        }
    }
    for (i, m) in merges.iter().enumerate() {
        if m.split(' ').count() != 2 {
            return Err(format!(
                "`tokenizer.ggml.merges`[{i}] = `{m}` is not two tokens separated by one space"
            ));
        }
    }
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tok,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    }))
}

#[cfg(test)]
mod pre_tokenizer_name_tests {
    use super::*;

    /// The export writes the name the reader would rebuild the same
    /// pre-tokenizer from (issue #12): every supported name round-trips to its
    /// canonical spelling, `trim_offsets` does not matter, and anything else is
    /// not recognised.
    #[test]
    fn pre_tokenizer_names_round_trip() {
        for (name, canonical) in [
            ("default", "gpt-2"),
            ("gpt-2", "gpt-2"),
            ("smollm", "smollm"),
            ("llama-bpe", "llama-bpe"),
            ("llama3", "llama-bpe"),
            ("qwen2", "qwen2"),
        ] {
            let def = pre_tokenizer(name).unwrap();
            assert_eq!(pre_tokenizer_name(&def), Some(canonical), "{name}");
        }
        let mut smollm = pre_tokenizer("smollm").unwrap();
        smollm["pretokenizers"][1]["trim_offsets"] = json!(false);
        assert_eq!(pre_tokenizer_name(&smollm), Some("smollm"));
        let mut other = pre_tokenizer("smollm").unwrap();
        other["pretokenizers"][0]["individual_digits"] = json!(false);
        assert_eq!(pre_tokenizer_name(&other), None);
        assert_eq!(pre_tokenizer_name(&Value::Null), None);
    }
}
