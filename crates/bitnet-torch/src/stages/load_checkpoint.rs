//! `load_checkpoint`: any checkpoint format -> `model.safetensors` + `config.json`
//! (+ `tokenizer.json` when the checkpoint carries its tokenizer, as GGUF does).
use std::collections::BTreeMap;

use anyhow::{anyhow, Context, Result};
use bitnet_pipeline::stages::load_checkpoint::{DtypeConfig, LoadCheckpointConfig};
use bitnet_pipeline::stages::{parse_config, StageContext};
use serde_json::json;
use tch::{Device, Kind};

use super::common::{write_model_dir, ModelFiles};
use crate::bitnet::Config;
use crate::checkpoint::{load_checkpoint, LoadOptions, NameMap, NameRule};

pub fn run(ctx: &mut StageContext) -> Result<()> {
    let c: LoadCheckpointConfig = parse_config(ctx.config()).map_err(|e| anyhow!(e.message))?;
    let path = ctx.resolve(&c.path);
    if !path.exists() {
        anyhow::bail!(
            "{}: checkpoint not found (`path` is relative to the pipeline folder)",
            path.display()
        );
    }
    let rules: Vec<NameRule> = c
        .name_map
        .iter()
        .map(|r| NameRule {
            pattern: r.pattern.clone(),
            replace: r.replace.clone(),
        })
        .collect();
    let dtype = match c.dtype {
        DtypeConfig::F32 => Kind::Float,
        DtypeConfig::Bf16 => Kind::BFloat16,
        DtypeConfig::F16 => Kind::Half,
    };
    ctx.progress(0, Some(2), "reading checkpoint");
    let ckpt = load_checkpoint(
        &path,
        &LoadOptions {
            dtype: Some(dtype),
            device: Device::Cpu,
            name_map: NameMap::new(&rules)?,
            check_finite: true,
        },
    )?;
    let config = match &c.config {
        Some(p) => {
            let p = ctx.resolve(p);
            Config::from_json_file(&p)
                .with_context(|| format!("{}: invalid config", p.display()))?
        }
        None => ckpt.config.clone().ok_or_else(|| {
            anyhow!(
                "{}: the checkpoint carries no model config; set `config: path/to/config.json`",
                path.display()
            )
        })?,
    };
    ckpt.validate_for(&config)?;
    let files = ModelFiles {
        path: path.clone(),
        config,
        tensors: ckpt.tensors,
        spec: None,
        metadata: BTreeMap::new(),
    };
    let model = files.build_frozen(Device::Cpu)?;
    let used: std::collections::BTreeSet<String> =
        model.named_tensors().into_iter().map(|(n, _)| n).collect();
    let unused: Vec<&String> = files
        .tensors
        .keys()
        .filter(|k| !used.contains(*k))
        .collect();
    let params: i64 = model
        .named_tensors()
        .iter()
        .map(|(_, t)| t.numel() as i64)
        .sum();
    ctx.metric("parameters", params as f64, Some("params"));
    ctx.metric("weight_bytes", model.weight_bytes()? as f64, Some("bytes"));
    ctx.param("model.parameters", json!(params));
    ctx.param(
        "model.config",
        serde_json::from_str(&files.config.to_json_string())?,
    );
    ctx.param("checkpoint.path", json!(c.path));
    ctx.param("checkpoint.format", json!(ckpt.format));
    let mut meta: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for (k, v) in &ckpt.metadata {
        if k == "config" || k == "format" || k == "producer" {
            continue;
        }
        ctx.param(&format!("checkpoint.{k}"), v.clone());
        meta.insert(format!("source.{k}"), v.clone());
    }
    if !ckpt.ignored_entries.is_empty() {
        ctx.param("checkpoint.ignored_entries", json!(ckpt.ignored_entries));
    }
    if !unused.is_empty() {
        ctx.param("checkpoint.unused_tensors", json!(unused));
    }
    meta.insert("source.path".into(), json!(c.path));
    ctx.progress(1, Some(2), "writing model.safetensors");
    write_model_dir(ctx.output_dir(), &model, None, &meta)?;
    if let Some(json) = &ckpt.tokenizer_json {
        // The model's own tokenizer (GGUF metadata), for `data: {tokenizer_from: <this stage>}`.
        let tok = crate::checkpoint::gguf::tokenizer_path(ctx.output_dir());
        std::fs::write(&tok, json).with_context(|| format!("{}: cannot write", tok.display()))?;
        ctx.param("checkpoint.tokenizer", json!("tokenizer.json"));
    }
    ctx.progress(2, Some(2), "done");
    Ok(())
}
