//! Checkpoint I/O: the formats our users have, loaded into named tensors + metadata.
//!
//! - a `.safetensors` file ([`safetensors_io`], the `safetensors` crate);
//! - an HF folder: `config.json` + `model.safetensors` or sharded
//!   `model.safetensors.index.json` (or `pytorch_model.bin`);
//! - torch `.pt`/`.bin` zip pickles ([`torch_pt`]) read by a pickle interpreter that
//!   never runs code ([`pickle`]); EvoMerge's nested dicts give their scalars as metadata;
//! - a llama.cpp `.gguf` file ([`gguf`]): dequantized to f32, with its config and
//!   its tokenizer rebuilt as an HF `tokenizer.json` ([`Checkpoint::tokenizer_json`]).
//!
//! Every load is all-or-nothing: renames ([`NameMap`]), dtype conversion, NaN/Inf
//! checks and (with [`Checkpoint::validate_for`]) shape checks against a config run
//! before anything is handed to a model, and each failure names file and tensor.

pub mod error;
pub mod export;
pub mod ggml_types;
pub mod gguf;
pub mod gguf_writer;
pub mod name_map;
pub mod pickle;
pub mod safetensors_io;
pub mod torch_pt;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::bitnet::model::{expected_tensor_shapes, is_float_kind};
use crate::bitnet::Config;

pub use error::{CheckpointError, Result};
pub use name_map::{NameMap, NameRule};
pub use safetensors_io::save_safetensors;

use error::TchContext;

/// Where a checkpoint came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointFormat {
    Safetensors,
    HfFolder,
    TorchPt,
    Gguf,
}

/// How to load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Convert floating-point tensors to this dtype (integer tensors, e.g. packed
    /// weights, are left alone). `None` keeps the stored dtypes.
    pub dtype: Option<Kind>,
    pub device: Device,
    pub name_map: NameMap,
    /// Refuse tensors with NaN/Inf values (default on).
    pub check_finite: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: None,
            device: Device::Cpu,
            name_map: NameMap::default(),
            check_finite: true,
        }
    }
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    pub tensors: BTreeMap<String, Tensor>,
    /// `.pt`: the scalar entries (`generation`, `fitness_score`, `is_final`, ...);
    /// safetensors: the `__metadata__` strings (as JSON strings).
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// From `config.json` (HF folder) or the `config` metadata entry we write on save.
    pub config: Option<Config>,
    pub source: PathBuf,
    pub format: CheckpointFormat,
    /// Top-level `.pt` entries that were neither the state dict nor scalars.
    pub ignored_entries: Vec<String>,
    /// GGUF: the model's tokenizer as HF `tokenizer.json` text.
    pub tokenizer_json: Option<String>,
}

/// Loads a checkpoint file or HF folder.
pub fn load_checkpoint(path: &Path, opts: &LoadOptions) -> Result<Checkpoint> {
    let mut tokenizer_json = None;
    let (raw, metadata, config, format, ignored) = if path.is_dir() {
        let (raw, metadata, config) = read_hf_folder(path)?;
        (
            raw,
            metadata,
            Some(config),
            CheckpointFormat::HfFolder,
            Vec::new(),
        )
    } else if path.extension().is_some_and(|e| e == "safetensors") {
        let (raw, meta) = safetensors_io::read_safetensors(path)?;
        let config = match meta.get("config") {
            Some(text) => {
                Some(
                    Config::from_json_str(text).map_err(|e| CheckpointError::Config {
                        path: path.to_path_buf(),
                        detail: e.to_string(),
                    })?,
                )
            }
            None => None,
        };
        let metadata = meta
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        (
            raw,
            metadata,
            config,
            CheckpointFormat::Safetensors,
            Vec::new(),
        )
    } else if gguf::is_gguf_path(path) {
        let m = gguf::read_gguf_model(path)?;
        tokenizer_json = Some(m.tokenizer_json);
        (
            m.tensors,
            m.metadata,
            Some(m.config),
            CheckpointFormat::Gguf,
            Vec::new(),
        )
    } else {
        let c = torch_pt::read_pt(path)?;
        (
            c.tensors,
            c.metadata,
            None,
            CheckpointFormat::TorchPt,
            c.ignored,
        )
    };
    let tensors = finish(path, raw, opts)?;
    Ok(Checkpoint {
        tensors,
        metadata,
        config,
        source: path.to_path_buf(),
        format,
        ignored_entries: ignored,
        tokenizer_json,
    })
}

/// Renames, converts, checks finiteness and moves tensors; all or nothing.
fn finish(
    path: &Path,
    raw: Vec<(String, Tensor)>,
    opts: &LoadOptions,
) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    for (name, t) in raw {
        let renamed = opts.name_map.apply(&name);
        let kind = t.f_kind().at(path)?;
        let mut t = t;
        if is_float_kind(kind) {
            if opts.check_finite {
                let bad = t
                    .f_isfinite()
                    .and_then(|f| f.f_logical_not())
                    .and_then(|f| f.f_sum(Kind::Int64))
                    .and_then(|s| s.f_int64_value(&[]))
                    .at(path)?;
                if bad > 0 {
                    return Err(CheckpointError::NonFinite {
                        path: path.to_path_buf(),
                        tensor: name,
                        count: bad,
                    });
                }
            }
            if let Some(d) = opts.dtype {
                t = t.f_to_kind(d).at(path)?;
            }
        }
        let t = t.f_to_device(opts.device).at(path)?;
        if out.contains_key(&renamed) {
            return Err(CheckpointError::DuplicateTensor {
                path: path.to_path_buf(),
                tensor: name,
                renamed,
            });
        }
        out.insert(renamed, t);
    }
    Ok(out)
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// Tensors, metadata and config of an HF folder.
type HfFolder = (
    Vec<(String, Tensor)>,
    BTreeMap<String, serde_json::Value>,
    Config,
);

/// An HF `save_pretrained` folder.
fn read_hf_folder(dir: &Path) -> Result<HfFolder> {
    let cfg_path = dir.join("config.json");
    if !cfg_path.is_file() {
        return Err(CheckpointError::UnknownFormat {
            path: dir.to_path_buf(),
            reason: "folder has no config.json (expected an HF save_pretrained folder)".into(),
        });
    }
    let config = Config::from_json_file(&cfg_path).map_err(|e| CheckpointError::Config {
        path: cfg_path.clone(),
        detail: e.to_string(),
    })?;
    let index_path = dir.join("model.safetensors.index.json");
    let single = dir.join("model.safetensors");
    let bin = dir.join("pytorch_model.bin");
    let mut metadata = BTreeMap::new();
    let tensors = if index_path.is_file() {
        let text = std::fs::read_to_string(&index_path).map_err(|source| CheckpointError::Io {
            path: index_path.clone(),
            action: "read",
            source,
        })?;
        let index: ShardIndex =
            serde_json::from_str(&text).map_err(|e| CheckpointError::Corrupt {
                path: index_path.clone(),
                detail: format!("not a shard index: {e}"),
            })?;
        let mut by_shard: BTreeMap<&String, Vec<&String>> = BTreeMap::new();
        for (name, shard) in &index.weight_map {
            if shard.contains('/') || shard.contains('\\') || shard.starts_with("..") {
                return Err(CheckpointError::Corrupt {
                    path: index_path.clone(),
                    detail: format!("shard name `{shard}` of `{name}` leaves the folder"),
                });
            }
            by_shard.entry(shard).or_default().push(name);
        }
        let mut all = Vec::new();
        for (shard, names) in by_shard {
            let shard_path = dir.join(shard);
            let (mut ts, _) = safetensors_io::read_safetensors(&shard_path)?;
            for name in names {
                if !ts.iter().any(|(n, _)| n == name) {
                    return Err(CheckpointError::MissingTensor {
                        path: shard_path,
                        tensor: name.clone(),
                        missing: 1,
                    });
                }
            }
            let wanted: std::collections::BTreeSet<&String> = index
                .weight_map
                .iter()
                .filter(|(_, s)| *s == shard)
                .map(|(n, _)| n)
                .collect();
            ts.retain(|(n, _)| wanted.contains(n));
            all.extend(ts);
        }
        all
    } else if single.is_file() {
        let (ts, meta) = safetensors_io::read_safetensors(&single)?;
        metadata.extend(
            meta.into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v))),
        );
        ts
    } else if bin.is_file() {
        torch_pt::read_pt(&bin)?.tensors
    } else {
        return Err(CheckpointError::UnknownFormat {
            path: dir.to_path_buf(),
            reason: "no model.safetensors, model.safetensors.index.json or pytorch_model.bin"
                .into(),
        });
    };
    Ok((tensors, metadata, config))
}

impl Checkpoint {
    /// Checks that every tensor `cfg` needs is present with the right shape
    /// (packed u8 weights against their packed shape).
    pub fn validate_for(&self, cfg: &Config) -> Result<()> {
        let expected = expected_tensor_shapes(cfg);
        let missing: Vec<&String> = expected
            .iter()
            .map(|(n, _)| n)
            .filter(|n| !self.tensors.contains_key(*n))
            .collect();
        if let Some(first) = missing.first() {
            return Err(CheckpointError::MissingTensor {
                path: self.source.clone(),
                tensor: (*first).clone(),
                missing: missing.len(),
            });
        }
        for (name, shape) in expected {
            let t = &self.tensors[&name];
            let want = if t.kind() == Kind::Uint8 && shape.len() == 2 {
                vec![(shape[0] + 3) / 4, shape[1]]
            } else {
                shape
            };
            if t.size() != want {
                return Err(CheckpointError::ShapeMismatch {
                    path: self.source.clone(),
                    tensor: name,
                    expected: want,
                    found: t.size(),
                });
            }
        }
        Ok(())
    }

    /// Scalar metadata as strings (for recording as run params).
    pub fn metadata_strings(&self) -> BTreeMap<String, String> {
        self.metadata
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    },
                )
            })
            .collect()
    }
}

/// Saves tensors as safetensors with `__metadata__`: the config JSON under `config`
/// (so [`load_checkpoint`] restores it), `format = pt`, `producer = bitnet-pipeline`, and `metadata`
/// (strings as-is, other JSON values as JSON text).
pub fn save_checkpoint(
    path: &Path,
    tensors: &[(String, Tensor)],
    config: Option<&Config>,
    metadata: &BTreeMap<String, serde_json::Value>,
) -> Result<()> {
    let mut meta: BTreeMap<String, String> = metadata
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                },
            )
        })
        .collect();
    // `format = pt` is what HF transformers requires to load a safetensors file.
    meta.insert("format".into(), "pt".into());
    meta.insert("producer".into(), "bitnet-pipeline".into());
    if let Some(c) = config {
        meta.insert("config".into(), c.to_json_string());
    }
    save_safetensors(path, tensors, &meta)
}

#[cfg(test)]
mod hostile;
#[cfg(test)]
mod tests;
