//! A packed LLaMA-family BitNet model as a GGUF file for llama.cpp's `llama`
//! architecture: tensor names and metadata keys as llama.cpp's
//! `convert_hf_to_gguf.py` writes them (`token_embd`, `blk.N.attn_q`, ...,
//! `llama.*` hyper-parameters), Q/K rows permuted from HF's rotate-half RoPE
//! layout to the interleaved pairs llama.cpp's NORM RoPE expects (the
//! converter's `LlamaModel.permute`), ternary matrices as TQ2_0/TQ1_0 with
//! exact Q4_0/Q8_0 fallbacks, and the tokenizer as GGUF `gpt2` BPE metadata
//! (the byte-level demo tokenizer as 256 byte tokens without merges, or an HF
//! `tokenizer.json` BPE vocabulary with its merges).
//!
//! Why `llama` and not llama.cpp's `bitnet` architecture: `bitnet` requires
//! sub-norms our models do not have and hard-codes other choices (see the
//! team's formats notes); a LLaMA-shaped BitNet model is exactly `llama`
//! with ternary weights.

use std::path::Path;

use serde_json::Value;

use super::{check_target, commit, split_linears, ExportError, ExportReport, Result, TensorEntry};
use crate::bitnet::{unpack_ternary_slice, LlamaModel};
use crate::checkpoint::ggml_types::{file_type, GgmlType};
use crate::checkpoint::gguf_writer::{
    encode_f16, encode_f32, encode_ternary, partial_path, ternary_type_for, GgufTensor, GgufWriter,
    MetaValue,
};

/// How to write the file.
#[derive(Debug, Clone)]
pub struct GgufExportOptions {
    /// `Tq2_0` or `Tq1_0`.
    pub ternary: GgmlType,
    /// `Q4_0` or `Q8_0`, for rows not divisible by 256.
    pub fallback: GgmlType,
    /// `F16` or `F32`, for full-precision matrices (1-D tensors are always F32).
    pub kept: GgmlType,
    pub tokenizer: GgufTokenizer,
    pub name: String,
    pub overwrite: bool,
}

/// The vocabulary written into the file.
#[derive(Debug, Clone)]
pub enum GgufTokenizer {
    /// Token id = byte value, no specials (the demo model).
    Bytes,
    /// An HF `tokenizer.json` (BPE), with `tokenizer_config.json` beside it when present.
    HfBpe {
        tokenizer_json: Value,
        tokenizer_config: Option<Value>,
    },
}

impl GgufTokenizer {
    /// Reads an HF `tokenizer.json` (and `tokenizer_config.json` next to it).
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let read = |p: &Path| -> Result<Value> {
            let text = std::fs::read_to_string(p).map_err(|source| ExportError::Io {
                path: p.to_path_buf(),
                action: "read",
                source,
            })?;
            serde_json::from_str(&text).map_err(|e| ExportError::Unsupported {
                module: p.display().to_string(),
                detail: format!("not JSON: {e}"),
            })
        };
        let tokenizer_json = read(path)?;
        let cfg_path = path.with_file_name("tokenizer_config.json");
        let tokenizer_config = if cfg_path.is_file() {
            Some(read(&cfg_path)?)
        } else {
            None
        };
        Ok(GgufTokenizer::HfBpe {
            tokenizer_json,
            tokenizer_config,
        })
    }
}

/// GPT-2's byte -> printable character table (`bytes_to_unicode`), which GGUF
/// `gpt2` vocabularies and HF byte-level BPE both use for token text.
pub fn byte_to_unicode() -> Vec<char> {
    let mut printable: Vec<u32> = (u32::from(b'!')..=u32::from(b'~')).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut table = vec!['\0'; 256];
    let mut extra = 0;
    for b in 0..256u32 {
        let c = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        table[b as usize] = char::from_u32(c).unwrap_or('?');
    }
    table
}

/// GGUF token types (`llama_token_type`).
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;

impl GgufTokenizer {
    /// `tokenizer.ggml.pre`: the llama.cpp name of the model's pre-tokenizer
    /// (how text is split before BPE), and whether it is one we recognise.
    /// An unrecognised one is written as `default` (GPT-2's split), which
    /// llama.cpp may tokenize differently: the stage reports it, and
    /// `verify` compares llama.cpp's token ids with ours.
    pub fn pre_tokenizer(&self) -> (&'static str, bool) {
        match self {
            // No merges: every split gives the same byte tokens.
            GgufTokenizer::Bytes => ("default", true),
            GgufTokenizer::HfBpe { tokenizer_json, .. } => {
                match crate::checkpoint::gguf::tokenizer::pre_tokenizer_name(
                    &tokenizer_json["pre_tokenizer"],
                ) {
                    Some(name) => (name, true),
                    None => ("default", false),
                }
            }
        }
    }
}

fn tokenizer_meta(w: &mut GgufWriter, tok: &GgufTokenizer, model: &LlamaModel) -> Result<()> {
    let vocab = model.config.vocab_size as usize;
    w.meta("tokenizer.ggml.model", MetaValue::String("gpt2".into()));
    let (pre, _) = tok.pre_tokenizer();
    w.meta("tokenizer.ggml.pre", MetaValue::String(pre.into()));
    match tok {
        GgufTokenizer::Bytes => {
            if vocab < 256 {
                return Err(ExportError::Unsupported {
                    module: "tokenizer".into(),
                    detail: format!("the byte-level tokenizer needs vocab_size >= 256, the model has {vocab}; give the model's `tokenizer`"),
                });
            }
            let table = byte_to_unicode();
            let mut tokens: Vec<String> = table.iter().map(|c| c.to_string()).collect();
            // Ids past 255 are never produced by the byte tokenizer; name them so
            // the vocabulary has one entry per embedding row.
            tokens.extend((256..vocab).map(|i| format!("<unused{i}>")));
            let mut types = vec![TOKEN_NORMAL; 256];
            types.extend(std::iter::repeat_n(TOKEN_USER_DEFINED, vocab - 256));
            w.meta("tokenizer.ggml.tokens", MetaValue::Strings(tokens));
            w.meta("tokenizer.ggml.token_type", MetaValue::I32s(types));
            w.meta("tokenizer.ggml.merges", MetaValue::Strings(Vec::new()));
            w.meta("tokenizer.ggml.add_bos_token", MetaValue::Bool(false));
            w.meta("tokenizer.ggml.add_eos_token", MetaValue::Bool(false));
        }
        GgufTokenizer::HfBpe {
            tokenizer_json,
            tokenizer_config,
        } => {
            let m = &tokenizer_json["model"];
            if m["type"].as_str() != Some("BPE") {
                return Err(ExportError::Unsupported {
                    module: "tokenizer".into(),
                    detail: format!(
                        "model type {} is not BPE; only byte-level and BPE tokenizers are written to GGUF",
                        m["type"]
                    ),
                });
            }
            let mut tokens = vec![None::<String>; vocab];
            let mut types = vec![TOKEN_NORMAL; vocab];
            let mut put = |id: u64, text: &str, ty: i32| -> Result<()> {
                let slot = tokens
                    .get_mut(id as usize)
                    .ok_or_else(|| ExportError::Unsupported {
                        module: "tokenizer".into(),
                        detail: format!(
                            "token `{text}` has id {id}, past the model's vocab_size {vocab}"
                        ),
                    })?;
                *slot = Some(text.to_string());
                types[id as usize] = ty;
                Ok(())
            };
            if let Some(v) = m["vocab"].as_object() {
                for (text, id) in v {
                    put(id.as_u64().unwrap_or(u64::MAX), text, TOKEN_NORMAL)?;
                }
            }
            if let Some(added) = tokenizer_json["added_tokens"].as_array() {
                for a in added {
                    let special = a["special"].as_bool().unwrap_or(false);
                    put(
                        a["id"].as_u64().unwrap_or(u64::MAX),
                        a["content"].as_str().unwrap_or(""),
                        if special {
                            TOKEN_CONTROL
                        } else {
                            TOKEN_USER_DEFINED
                        },
                    )?;
                }
            }
            let tokens: Vec<String> = tokens
                .into_iter()
                .enumerate()
                .map(|(i, t)| t.unwrap_or_else(|| format!("<unused{i}>")))
                .collect();
            let merges: Vec<String> = m["merges"]
                .as_array()
                .map(|ms| {
                    ms.iter()
                        .map(|x| match x {
                            Value::String(s) => s.clone(),
                            Value::Array(pair) => pair
                                .iter()
                                .map(|p| p.as_str().unwrap_or(""))
                                .collect::<Vec<_>>()
                                .join(" "),
                            other => other.to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            w.meta("tokenizer.ggml.tokens", MetaValue::Strings(tokens));
            w.meta("tokenizer.ggml.token_type", MetaValue::I32s(types));
            w.meta("tokenizer.ggml.merges", MetaValue::Strings(merges));
            for (key, cfg_key) in [
                ("bos", "bos_token_id"),
                ("eos", "eos_token_id"),
                ("padding", "pad_token_id"),
            ] {
                if let Some(id) = model.config.extra.get(cfg_key).and_then(|v| v.as_u64()) {
                    w.meta(
                        &format!("tokenizer.ggml.{key}_token_id"),
                        MetaValue::U32(id as u32),
                    );
                }
            }
            if let Some(tc) = tokenizer_config {
                if let Some(t) = tc["chat_template"].as_str() {
                    w.meta("tokenizer.chat_template", MetaValue::String(t.to_string()));
                }
                for (key, cfg_key) in [
                    ("add_bos_token", "add_bos_token"),
                    ("add_eos_token", "add_eos_token"),
                ] {
                    if let Some(b) = tc[cfg_key].as_bool() {
                        w.meta(&format!("tokenizer.ggml.{key}"), MetaValue::Bool(b));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The GGUF name of an HF tensor name, and for Q/K the head count to permute by.
pub fn gguf_name(hf: &str, model: &LlamaModel) -> Option<(String, Option<i64>)> {
    let cfg = &model.config;
    match hf {
        "model.embed_tokens.weight" => return Some(("token_embd.weight".into(), None)),
        "model.norm.weight" => return Some(("output_norm.weight".into(), None)),
        "lm_head.weight" => return Some(("output.weight".into(), None)),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (i, tail) = rest.split_once('.')?;
    let (name, heads) = match tail {
        "input_layernorm.weight" => ("attn_norm", None),
        "post_attention_layernorm.weight" => ("ffn_norm", None),
        "self_attn.q_proj.weight" => ("attn_q", Some(cfg.num_attention_heads)),
        "self_attn.k_proj.weight" => ("attn_k", Some(cfg.num_kv_heads())),
        "self_attn.v_proj.weight" => ("attn_v", None),
        "self_attn.o_proj.weight" => ("attn_output", None),
        "mlp.gate_proj.weight" => ("ffn_gate", None),
        "mlp.up_proj.weight" => ("ffn_up", None),
        "mlp.down_proj.weight" => ("ffn_down", None),
        _ => return None,
    };
    Some((format!("blk.{i}.{name}.weight"), heads))
}

/// Reorders the rows of a row-major `(heads * d, cols)` matrix from HF's
/// rotate-half RoPE layout to llama.cpp's interleaved pairs:
/// `new[h*d + 2i + j] = old[h*d + j*d/2 + i]` (`convert_hf_to_gguf.py`'s
/// `reshape(heads, 2, d/2, cols).swapaxes(1, 2)`).
pub fn permute_rows<T: Copy>(values: &[T], heads: usize, cols: usize) -> Vec<T> {
    let rows = values.len() / cols.max(1);
    let d = rows / heads.max(1);
    let mut out = Vec::with_capacity(values.len());
    for h in 0..heads {
        for i in 0..d / 2 {
            for j in 0..2 {
                let src = h * d + j * (d / 2) + i;
                out.extend_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Builds the whole GGUF (metadata + tensors) in memory.
pub fn build_gguf(
    model: &LlamaModel,
    opts: &GgufExportOptions,
) -> Result<(GgufWriter, Vec<TensorEntry>, Vec<String>)> {
    let cfg = &model.config;
    let (ternary, _kept) = split_linears(model)?;
    let mut w = GgufWriter::default();
    let ftype = match opts.ternary {
        GgmlType::Tq1_0 => file_type::MOSTLY_TQ1_0,
        GgmlType::Tq2_0 => file_type::MOSTLY_TQ2_0,
        GgmlType::F16 => file_type::MOSTLY_F16,
        _ => file_type::ALL_F32,
    };
    w.meta("general.architecture", MetaValue::String("llama".into()));
    w.meta("general.name", MetaValue::String(opts.name.clone()));
    w.meta("general.file_type", MetaValue::U32(ftype));
    w.meta("general.quantization_version", MetaValue::U32(2));
    let u = |x: i64| MetaValue::U32(x as u32);
    w.meta("llama.context_length", u(cfg.max_position_embeddings));
    w.meta("llama.embedding_length", u(cfg.hidden_size));
    w.meta("llama.block_count", u(cfg.num_hidden_layers));
    w.meta("llama.feed_forward_length", u(cfg.intermediate_size));
    w.meta("llama.attention.head_count", u(cfg.num_attention_heads));
    w.meta("llama.attention.head_count_kv", u(cfg.num_kv_heads()));
    w.meta(
        "llama.rope.freq_base",
        MetaValue::F32(cfg.rope_theta() as f32),
    );
    w.meta(
        "llama.attention.layer_norm_rms_epsilon",
        MetaValue::F32(cfg.rms_norm_eps as f32),
    );
    w.meta("llama.rope.dimension_count", u(cfg.head_dim()));
    if cfg.head_dim() * cfg.num_attention_heads != cfg.hidden_size {
        w.meta("llama.attention.key_length", u(cfg.head_dim()));
        w.meta("llama.attention.value_length", u(cfg.head_dim()));
    }
    w.meta("llama.vocab_size", u(cfg.vocab_size));
    tokenizer_meta(&mut w, &opts.tokenizer, model)?;

    let mut entries = Vec::new();
    let mut fallbacks = Vec::new();
    for (hf, t) in model.named_tensors() {
        if hf.ends_with(".weight_scale") {
            continue;
        }
        let Some((name, heads)) = gguf_name(&hf, model) else {
            return Err(ExportError::Unsupported {
                module: hf,
                detail: "has no llama.cpp `llama` tensor name".into(),
            });
        };
        let module = hf.trim_end_matches(".weight");
        let shape = t.size();
        let (ty, dims, data, note) = if let Some(tl) = ternary.iter().find(|x| x.module == module) {
            let pw = &tl.layer.weights;
            let (out, cols) = (pw.out_features as usize, pw.in_features as usize);
            let bytes = Vec::<u8>::try_from(
                pw.packed
                    .f_to_device(tch::Device::Cpu)?
                    .f_contiguous()?
                    .f_flatten(0, -1)?,
            )?;
            let mut codes = unpack_ternary_slice(&bytes, out, cols)?;
            if let Some(h) = heads {
                codes = permute_rows(&codes, h as usize, cols);
            }
            let ty = ternary_type_for(cols, opts.ternary, opts.fallback);
            let (data, note) = if ty == GgmlType::F16 {
                let vals: Vec<f32> = codes.iter().map(|&q| f32::from(q) * pw.w_scale).collect();
                (
                    encode_f16(&vals),
                    Some(format!(
                        "rows of {cols} split into no 32-value blocks; ternary values as F16"
                    )),
                )
            } else {
                let note = (ty != opts.ternary).then(|| {
                    format!("rows of {cols} are not a multiple of 256; exact {} (block scale = tensor scale)", ty.name())
                });
                (encode_ternary(&name, &codes, cols, pw.w_scale, ty)?, note)
            };
            if ty != opts.ternary {
                fallbacks.push(name.clone());
            }
            (ty, vec![cols as u64, out as u64], data, note)
        } else {
            let vals = super::host_f32(&t)?;
            let (vals, dims) = match shape.as_slice() {
                [n] => (vals, vec![*n as u64]),
                [r, c] => {
                    let v = match heads {
                        Some(h) => permute_rows(&vals, h as usize, *c as usize),
                        None => vals,
                    };
                    (v, vec![*c as u64, *r as u64])
                }
                other => {
                    return Err(ExportError::Unsupported {
                        module: hf,
                        detail: format!("shape {other:?} is neither 1-D nor 2-D"),
                    })
                }
            };
            if dims.len() == 1 || opts.kept == GgmlType::F32 {
                (GgmlType::F32, dims, encode_f32(&vals), None)
            } else {
                (GgmlType::F16, dims, encode_f16(&vals), None)
            }
        };
        entries.push(TensorEntry {
            name: name.clone(),
            ty: ty.name().into(),
            shape: dims.clone(),
            bytes: data.len() as u64,
            note,
        });
        w.tensor(GgufTensor {
            name,
            dims,
            ty,
            data,
        })?;
    }
    Ok((w, entries, fallbacks))
}

/// Writes the GGUF file at `path` (through `<path>.partial`).
pub fn write_gguf(
    model: &LlamaModel,
    opts: &GgufExportOptions,
    path: &Path,
) -> Result<ExportReport> {
    check_target(path, opts.overwrite)?;
    let (w, tensors, fallback_tensors) = build_gguf(model, opts)?;
    let bytes = w.to_bytes();
    let partial = partial_path(path);
    if let Err(source) = std::fs::write(&partial, &bytes) {
        let _ = std::fs::remove_file(&partial);
        return Err(ExportError::Io {
            path: partial,
            action: "write",
            source,
        });
    }
    commit(&partial, path, opts.overwrite)?;
    let total_bytes = bytes.len() as u64;
    Ok(ExportReport {
        path: path.to_path_buf(),
        total_bytes,
        tensors,
        copied_files: Vec::new(),
        fallback_tensors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_gpt2s() {
        let t = byte_to_unicode();
        assert_eq!(t[b'A' as usize], 'A');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[0], 'Ā');
        let distinct: std::collections::BTreeSet<char> = t.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn permute_matches_the_converters_reshape_swapaxes() {
        // 2 heads of d = 4, one column: rows 0..8.
        let rows: Vec<i32> = (0..8).collect();
        // head 0: [0, 1 | 2, 3] -> pairs (0,2), (1,3); head 1 likewise.
        assert_eq!(permute_rows(&rows, 2, 1), vec![0, 2, 1, 3, 4, 6, 5, 7]);
        // two columns move with their row
        let m: Vec<i32> = (0..8).flat_map(|r| [10 * r, 10 * r + 1]).collect();
        let p = permute_rows(&m, 1, 2);
        assert_eq!(&p[..6], &[0, 1, 40, 41, 10, 11]);
    }
}
