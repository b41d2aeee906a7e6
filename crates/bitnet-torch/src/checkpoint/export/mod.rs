//! Exports of a packed BitNet model to the formats other engines load: an HF
//! folder for transformers ([`hf`]) and a GGUF file for llama.cpp ([`gguf`]).
//!
//! The model library's side of exporting: a packed [`LlamaModel`] in, files
//! out, and a per-tensor account of what was written. Joining this with the
//! runner (options, verification by the engines, metrics) is the `export`
//! stage's job. Every export is written under a temporary name and renamed
//! into place at the end, so a failure leaves nothing that looks finished.

pub mod gguf;
pub mod hf;

use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::Kind;

use crate::bitnet::{Linear, LlamaModel};

/// Why an export was refused or failed; each names the tensor or path and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{}: already exists; set `overwrite: true` to replace it, or choose another `path`", path.display())]
    Exists { path: PathBuf },
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("`{module}`: {detail}")]
    Unsupported { module: String, detail: String },
    #[error(transparent)]
    Gguf(#[from] crate::checkpoint::gguf_writer::GgufWriteError),
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error(transparent)]
    Model(#[from] crate::bitnet::BitnetError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

pub type Result<T, E = ExportError> = std::result::Result<T, E>;

/// One tensor as written: its name in the export, type, shape and bytes.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TensorEntry {
    pub name: String,
    /// `U8` (packed ternary), `F32`, `F16`, `TQ2_0`, `Q4_0`, ...
    #[serde(rename = "type")]
    pub ty: String,
    /// In the export's own convention (PyTorch order for HF, GGML order for GGUF).
    pub shape: Vec<u64>,
    pub bytes: u64,
    /// Why this tensor has the type it has when it is not the requested one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What an export wrote.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ExportReport {
    pub path: PathBuf,
    /// Total bytes on disk (every file of a folder).
    pub total_bytes: u64,
    pub tensors: Vec<TensorEntry>,
    /// Files copied beside the weights (tokenizer, generation config).
    pub copied_files: Vec<String>,
    /// Ternary tensors written in a fallback type (rows not divisible by 256).
    pub fallback_tensors: Vec<String>,
}

/// A packed layer's codes and scale, read from the model.
pub struct TernaryLayer<'a> {
    pub module: String,
    pub layer: &'a crate::bitnet::PackedBitLinear,
}

/// The packed (ternary) and kept (full-precision) linears of `model`; fails on
/// a latent training-form layer (export packs first).
pub fn split_linears(model: &LlamaModel) -> Result<(Vec<TernaryLayer<'_>>, Vec<String>)> {
    let mut ternary = Vec::new();
    let mut kept = Vec::new();
    for (module, lin) in model.linears() {
        if model.config.tie_word_embeddings && module == "lm_head" {
            continue;
        }
        match lin {
            Linear::Packed(p) => ternary.push(TernaryLayer { module, layer: p }),
            Linear::Full { .. } => kept.push(module),
            Linear::Bit(_) => {
                return Err(ExportError::Unsupported {
                    module,
                    detail: "is in training form; export the packed model (LlamaModel::to_packed)"
                        .into(),
                })
            }
        }
    }
    Ok((ternary, kept))
}

/// Fails when `path` exists and `overwrite` is off (checked before any work).
pub fn check_target(path: &Path, overwrite: bool) -> Result<()> {
    if path.exists() && !overwrite {
        return Err(ExportError::Exists {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Moves a finished `partial` file or folder to `path`, replacing it when
/// `overwrite` is on (checked again here: something may have appeared meanwhile).
pub fn commit(partial: &Path, path: &Path, overwrite: bool) -> Result<()> {
    let io = |action: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| ExportError::Io {
            path: p,
            action,
            source,
        }
    };
    if path.exists() {
        if !overwrite {
            let _ = remove_any(partial);
            return Err(ExportError::Exists {
                path: path.to_path_buf(),
            });
        }
        remove_any(path).map_err(io("remove the old export", path))?;
    }
    std::fs::rename(partial, path).map_err(io("rename into place", path))
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    if p.is_dir() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    }
}

/// Bytes of a file, or of every file under a folder.
pub fn disk_bytes(path: &Path) -> u64 {
    if path.is_dir() {
        std::fs::read_dir(path)
            .map(|rd| rd.flatten().map(|e| disk_bytes(&e.path())).sum())
            .unwrap_or(0)
    } else {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }
}

/// `t` as host f32 values (row-major).
pub fn host_f32(t: &tch::Tensor) -> Result<Vec<f32>> {
    Ok(Vec::<f32>::try_from(
        t.f_to_device(tch::Device::Cpu)?
            .f_to_kind(Kind::Float)?
            .f_contiguous()?
            .f_flatten(0, -1)?,
    )?)
}
