//! llama.cpp's `llama` architecture -> our HF LLaMA names, config and row order.
//!
//! llama.cpp renames tensors (`blk.N.attn_q.weight`), keeps the HF config as
//! `llama.*` metadata keys, and — because its `llama` graph applies RoPE to
//! adjacent pairs while HF's `rotate_half` pairs dimension i with i + d/2 —
//! `convert_hf_to_gguf.py` permutes the rows of Q and K (`LlamaModel.permute`).
//! Our model is HF's, so the rows are permuted back here (transformers does the
//! same in `_reverse_permute_weights`), after dequantization: quantization
//! blocks run along rows, so whole rows move and no value changes.

use std::collections::BTreeMap;

use serde_json::json;

use super::file::{GgufFile, GgufValue};

/// Architectures we can map (`general.architecture`).
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama"];

/// The HF name of a llama.cpp tensor name, or `None` for names we do not know
/// (returned unchanged by the caller, so they show up as unused tensors).
pub fn hf_name(gguf_name: &str) -> Option<String> {
    let fixed = match gguf_name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: u32 = layer.parse().ok()?;
    let (module, suffix) = part.rsplit_once('.')?;
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// The rows of a Q or K weight stored by llama.cpp, in HF order: stored row
/// `h*d + 2j + i` is HF row `h*d + i*d/2 + j` (`d` = rows per head, `i` in {0, 1}).
/// `rows` is `(n_heads * d) x cols`, row-major.
pub fn unpermute_rows(values: &[f32], n_heads: usize, cols: usize) -> Vec<f32> {
    // No rows or no heads: nothing to permute (and nothing to divide by; a tensor
    // with a zero dimension once panicked here, issue #16).
    if cols == 0 || n_heads == 0 {
        return values.to_vec();
    }
    let rows = values.len() / cols;
    let d = rows / n_heads;
    let half = d / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..n_heads {
        for j in 0..half {
            for i in 0..2 {
                let src = h * d + 2 * j + i;
                let dst = h * d + i * half + j;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Reads a metadata number the config needs.
fn required_int(f: &GgufFile, key: &str) -> Result<i64, String> {
    f.get(key).and_then(GgufValue::as_i64).ok_or_else(|| {
        format!("metadata `{key}` is missing or not an integer; a llama GGUF from llama.cpp always has it")
    })
}

/// An f32 metadata value as the decimal it was most likely written from
/// (`1e-5` rather than `9.999999747378752e-6`), so the config matches the
/// original `config.json`.
fn shortest_f64(v: f64) -> f64 {
    let f = v as f32;
    if f64::from(f) == v {
        format!("{f}").parse().unwrap_or(v)
    } else {
        v
    }
}

/// The HF `config.json` of a llama GGUF (values as `convert_hf_to_gguf.py` wrote them).
/// `vocab_size` falls back to the embedding's row count; `tied` says whether the file
/// has no `output.weight`.
pub fn hf_config(
    f: &GgufFile,
    embedding_rows: i64,
    tied: bool,
) -> Result<serde_json::Value, String> {
    let a = "llama";
    let heads = required_int(f, &format!("{a}.attention.head_count"))?;
    let hidden = required_int(f, &format!("{a}.embedding_length"))?;
    // Divided by below: a corrupt 0 once panicked here (issue #16).
    if heads <= 0 {
        return Err(format!(
            "metadata `{a}.attention.head_count` = {heads}; it must be positive (the file is corrupt)"
        ));
    }
    let kv_heads = f
        .get(&format!("{a}.attention.head_count_kv"))
        .and_then(GgufValue::as_i64)
        .unwrap_or(heads);
    let head_dim = f
        .get(&format!("{a}.rope.dimension_count"))
        .and_then(GgufValue::as_i64)
        .unwrap_or(hidden / heads);
    if let Some(t) = f
        .get(&format!("{a}.rope.scaling.type"))
        .and_then(GgufValue::as_str)
    {
        if t != "none" {
            return Err(format!(
                "`{a}.rope.scaling.type` = `{t}`: RoPE scaling is not supported by this reader yet"
            ));
        }
    }
    let eps = f
        .get(&format!("{a}.attention.layer_norm_rms_epsilon"))
        .and_then(GgufValue::as_f64)
        .map(shortest_f64)
        .unwrap_or(1e-5);
    let theta = f
        .get(&format!("{a}.rope.freq_base"))
        .and_then(GgufValue::as_f64)
        .map(shortest_f64)
        .unwrap_or(10000.0);
    let vocab = f
        .get(&format!("{a}.vocab_size"))
        .and_then(GgufValue::as_i64)
        .unwrap_or(embedding_rows);
    let mut cfg = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": required_int(f, &format!("{a}.feed_forward_length"))?,
        "num_hidden_layers": required_int(f, &format!("{a}.block_count"))?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": eps,
        "rope_theta": theta,
        "max_position_embeddings": f.get(&format!("{a}.context_length")).and_then(GgufValue::as_i64).unwrap_or(2048),
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
    });
    let ids: BTreeMap<&str, &str> = [
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
        ("pad_token_id", "tokenizer.ggml.padding_token_id"),
    ]
    .into_iter()
    .collect();
    for (hf, key) in ids {
        if let Some(v) = f.get(key).and_then(GgufValue::as_i64) {
            cfg[hf] = json!(v);
        }
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hf() {
        assert_eq!(
            hf_name("blk.12.attn_k.weight").as_deref(),
            Some("model.layers.12.self_attn.k_proj.weight")
        );
        assert_eq!(hf_name("output.weight").as_deref(), Some("lm_head.weight"));
        assert_eq!(hf_name("blk.x.attn_k.weight"), None);
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // 2 heads of 4 rows, 1 column: HF rows [0..8); llama.cpp's permute
        // interleaves halves per head: [0, 2, 1, 3, 4, 6, 5, 7].
        let stored = [0., 2., 1., 3., 4., 6., 5., 7.];
        assert_eq!(
            unpermute_rows(&stored, 2, 1),
            vec![0., 1., 2., 3., 4., 5., 6., 7.]
        );
    }

    #[test]
    fn f32_metadata_reads_as_its_decimal() {
        assert_eq!(shortest_f64(f64::from(1e-5f32)), 1e-5);
        assert_eq!(shortest_f64(100000.0), 100000.0);
    }
}
