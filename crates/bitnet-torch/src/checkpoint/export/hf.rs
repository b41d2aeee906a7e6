//! HF transformers folder: what `AutoModelForCausalLM.from_pretrained` loads
//! with no custom code (checked against transformers 5.24's
//! `integrations/bitnet.py` and `quantizers/quantizer_bitnet.py`).
//!
//! - `config.json`: `LlamaForCausalLM` with `quantization_config =
//!   {quant_method: bitnet, linear_class, quantization_mode: offline, ...}`;
//!   full-precision linears are listed in `modules_to_not_convert` (with an
//!   explicit list transformers adds nothing itself, not even `lm_head`).
//! - `model.safetensors`: packed uint8 weights in transformers' layout (ours
//!   already, see `bitnet::packing`) and a `(1,)` `weight_scale` per layer in the
//!   convention of the chosen class: `autobitlinear` stores `mean|W|` (its
//!   forward multiplies), `bitlinear` stores `1/mean|W|` (its forward divides).
//!   Both classes need `out_features % 4 == 0` (`BitLinear` allocates
//!   `out // 4` rows; `AutoBitLinear` unpacks only when `rows * 4 == out`).
//! - `tokenizer.json`, `tokenizer_config.json`, `generation_config.json` (and
//!   `special_tokens_map.json`) copied when the model has them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;
use tch::{Kind, Tensor};

use super::{
    check_target, commit, disk_bytes, split_linears, ExportError, ExportReport, Result, TensorEntry,
};
use crate::bitnet::{LlamaModel, ScaleConvention};
use crate::checkpoint::save_safetensors;

/// Files copied from the tokenizer's folder when present.
pub const SIDE_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

/// How to write the folder.
#[derive(Debug, Clone)]
pub struct HfExportOptions {
    /// `Direct` = transformers `autobitlinear` (offline), `Inverse` = `bitlinear`.
    pub convention: ScaleConvention,
    /// Files to copy into the folder under their own names.
    pub side_files: Vec<PathBuf>,
    pub overwrite: bool,
}

/// transformers' name of the linear class of a scale convention.
pub fn linear_class(convention: ScaleConvention) -> &'static str {
    match convention {
        ScaleConvention::Direct => "autobitlinear",
        ScaleConvention::Inverse => "bitlinear",
    }
}

/// The `config.json` of the export: the model's config plus the BitNet quantization config.
pub fn hf_config(
    model: &LlamaModel,
    convention: ScaleConvention,
    kept: &[String],
) -> serde_json::Value {
    let mut cfg = model.config.clone();
    cfg.model_type = "llama".into();
    cfg.extra
        .insert("architectures".into(), json!(["LlamaForCausalLM"]));
    cfg.extra.insert("torch_dtype".into(), json!("float32"));
    cfg.extra.insert(
        "quantization_config".into(),
        json!({
            "quant_method": "bitnet",
            "linear_class": linear_class(convention),
            "quantization_mode": "offline",
            "use_rms_norm": false,
            "rms_norm_eps": 1e-6,
            "modules_to_not_convert": kept,
        }),
    );
    serde_json::to_value(&cfg).unwrap_or_else(|_| json!({}))
}

/// Writes the HF folder at `dir` (through `<dir>.partial`).
pub fn write_hf_folder(
    model: &LlamaModel,
    opts: &HfExportOptions,
    dir: &Path,
) -> Result<ExportReport> {
    check_target(dir, opts.overwrite)?;
    let (ternary, kept) = split_linears(model)?;
    for t in &ternary {
        let out = t.layer.weights.out_features;
        if out % 4 != 0 {
            return Err(ExportError::Unsupported {
                module: t.module.clone(),
                detail: format!(
                    "has {out} output rows; transformers' BitNet layers need a multiple of 4 (keep this layer full precision in convert_bitnet)"
                ),
            });
        }
    }
    let packed_modules: BTreeMap<&str, &super::TernaryLayer> =
        ternary.iter().map(|t| (t.module.as_str(), t)).collect();
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let mut entries = Vec::new();
    for (name, t) in model.named_tensors() {
        let module = name
            .rsplit_once('.')
            .map(|(m, _)| m)
            .unwrap_or("")
            .to_string();
        if name.ends_with(".weight_scale") {
            continue;
        }
        if let Some(layer) = packed_modules.get(module.as_str()) {
            let w = &layer.layer.weights;
            let packed = w.packed.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
            let scale = Tensor::f_from_slice(&[opts.convention.encode(w.w_scale)])?;
            entries.push(TensorEntry {
                name: name.clone(),
                ty: "U8".into(),
                shape: packed.size().iter().map(|&d| d as u64).collect(),
                bytes: packed.numel() as u64,
                note: Some(format!(
                    "ternary, 4 values per byte, [{}, {}]",
                    w.out_features, w.in_features
                )),
            });
            entries.push(TensorEntry {
                name: format!("{module}.weight_scale"),
                ty: "F32".into(),
                shape: vec![1],
                bytes: 4,
                note: None,
            });
            tensors.push((name, packed));
            tensors.push((format!("{module}.weight_scale"), scale));
        } else {
            let t = t
                .f_to_device(tch::Device::Cpu)?
                .f_to_kind(Kind::Float)?
                .f_contiguous()?;
            entries.push(TensorEntry {
                name: name.clone(),
                ty: "F32".into(),
                shape: t.size().iter().map(|&d| d as u64).collect(),
                bytes: 4 * t.numel() as u64,
                note: None,
            });
            tensors.push((name, t));
        }
    }
    let partial = crate::checkpoint::gguf_writer::partial_path(dir);
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|source| ExportError::Io {
            path: partial.clone(),
            action: "remove a stale partial export",
            source,
        })?;
    }
    let result = (|| -> Result<Vec<String>> {
        std::fs::create_dir_all(&partial).map_err(|source| ExportError::Io {
            path: partial.clone(),
            action: "create",
            source,
        })?;
        let cfg = hf_config(model, opts.convention, &kept);
        let cfg_path = partial.join("config.json");
        std::fs::write(
            &cfg_path,
            serde_json::to_string_pretty(&cfg).unwrap_or_default(),
        )
        .map_err(|source| ExportError::Io {
            path: cfg_path.clone(),
            action: "write",
            source,
        })?;
        let mut meta = BTreeMap::new();
        // `format = pt` is what transformers requires of a safetensors file.
        meta.insert("format".to_string(), "pt".to_string());
        meta.insert("producer".to_string(), "bitnet-pipeline export".to_string());
        save_safetensors(&partial.join("model.safetensors"), &tensors, &meta)?;
        let mut copied = Vec::new();
        for src in &opts.side_files {
            let Some(name) = src.file_name() else {
                continue;
            };
            let dst = partial.join(name);
            std::fs::copy(src, &dst).map_err(|source| ExportError::Io {
                path: src.clone(),
                action: "copy",
                source,
            })?;
            copied.push(name.to_string_lossy().into_owned());
        }
        Ok(copied)
    })();
    let copied = match result {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
    };
    commit(&partial, dir, opts.overwrite)?;
    Ok(ExportReport {
        path: dir.to_path_buf(),
        total_bytes: disk_bytes(dir),
        tensors: entries,
        copied_files: copied,
        fallback_tensors: Vec::new(),
    })
}

/// The side files present next to a `tokenizer.json` (or in `dir`).
pub fn side_files_in(dir: &Path) -> Vec<PathBuf> {
    SIDE_FILES
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.is_file())
        .collect()
}
