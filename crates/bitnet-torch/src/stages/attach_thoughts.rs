//! `attach_thoughts`: builds thought mixers (see [`super::thoughts`]) for a
//! model, checks them against it, and writes `thoughts.safetensors` next to a
//! hard link (or copy) of the model files (so downstream stages read one folder).
use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use bitnet_pipeline::stages::attach_thoughts::{AttachThoughtsConfig, DeriveThoughts};
use bitnet_pipeline::stages::{parse_config, StageContext};
use serde_json::json;
use tch::{Device, Kind, Tensor};

use super::common::{
    byte_tokens, pick_upstream, read_model_dir, ModelFiles, CONFIG_FILE, MODEL_FILE, PACKED_FILE,
    THOUGHTS_FILE,
};
use super::link_or_copy::link_or_copy;
use super::thoughts::ThoughtSet;
use crate::bitnet::ForwardOptions;

pub fn run(ctx: &mut StageContext) -> Result<()> {
    let c: AttachThoughtsConfig = parse_config(ctx.config()).map_err(|e| anyhow!(e.message))?;
    let dir = pick_upstream(ctx, c.model.as_deref(), "model", &[])?;
    let files = read_model_dir(&dir, Device::Cpu)?;
    let hidden = files.config.hidden_size;
    let n_layers = files.config.num_hidden_layers;
    let layers: Vec<i64> = match &c.layers {
        Some(l) => l.clone(),
        None => (0..n_layers).collect(),
    };
    if let Some(bad) = layers.iter().find(|i| !(0..n_layers).contains(*i)) {
        bail!(
            "`layers` names layer {bad}, but the model in {} has {n_layers} layers (0..{})",
            files.path.display(),
            n_layers - 1
        );
    }
    let (thoughts, head, meta) = match (&c.path, &c.derive_thoughts) {
        (Some(p), _) => {
            let path = ctx.resolve(p);
            let (t, h, m) = ThoughtSet::read_artifact(&path, hidden, Device::Cpu)?;
            let mut meta: BTreeMap<String, String> = m
                .into_iter()
                .filter(|(k, _)| k != "format" && k != "producer")
                .map(|(k, v)| (format!("artifact.{k}"), v))
                .collect();
            meta.insert("source".into(), p.clone());
            if let Some(l) = meta.get("artifact.thought_length") {
                meta.insert("thought_length".into(), l.clone());
            }
            (t, h, meta)
        }
        (None, Some(d)) => {
            let t = derive(&files, d)?;
            let meta = BTreeMap::from([
                (
                    "source".to_string(),
                    "derived: mean final hidden states".to_string(),
                ),
                ("derived_texts".to_string(), d.texts.len().to_string()),
            ]);
            (t, None, meta)
        }
        (None, None) => bail!("give a thought artifact `path` or `derive_thoughts`"),
    };
    let set = ThoughtSet::new(c.strategy, c.gate, thoughts, &layers, head, meta)?;
    // Check that the mixers run on this model before anything is written.
    let mut model = files.build_frozen(Device::Cpu)?;
    set.attach(&mut model)?;
    let probe = Tensor::zeros([1, 4], (Kind::Int64, Device::Cpu));
    let logits = tch::no_grad(|| model.forward(&probe))?;
    if logits.f_isfinite()?.f_all()?.f_int64_value(&[])? == 0 {
        bail!("the thought mixers make the model's logits non-finite; check the artifact values");
    }
    let out = ctx.output_dir().to_path_buf();
    // The weight files pass through unchanged: hard-linked, not copied (see
    // `link_or_copy` for why that is safe); the small JSON files are copied.
    for f in [MODEL_FILE, PACKED_FILE] {
        let src = dir.join(f);
        if src.is_file() {
            link_or_copy(&src, &out.join(f)).with_context(|| {
                format!(
                    "{}: cannot link or copy into {}",
                    src.display(),
                    out.display()
                )
            })?;
        }
    }
    for f in [CONFIG_FILE, "conversion.json", "tokenizer.json"] {
        let src = dir.join(f);
        if src.is_file() {
            std::fs::copy(&src, out.join(f)).with_context(|| {
                format!("{}: cannot copy into {}", src.display(), out.display())
            })?;
        }
    }
    set.save(&out.join(THOUGHTS_FILE))?;
    ctx.metric("num_thoughts", set.thoughts.size()[0] as f64, None);
    ctx.metric("mixed_layers", layers.len() as f64, None);
    ctx.metric(
        "thought_parameters",
        set.num_parameters() as f64,
        Some("params"),
    );
    ctx.param(
        "thoughts.strategy",
        serde_json::to_value(format!("{:?}", c.strategy).to_lowercase())?,
    );
    ctx.param("thoughts.gate", json!(c.gate));
    ctx.param("thoughts.layers", json!(layers));
    Ok(())
}

/// Thought vectors from the model itself: final (normed) hidden states of
/// all texts, split into `num_thoughts` contiguous shares, each averaged.
fn derive(files: &ModelFiles, d: &DeriveThoughts) -> Result<Tensor> {
    let model = files.build_frozen(Device::Cpu)?;
    let max_len = files.config.max_position_embeddings.max(1) as usize;
    let mut states = Vec::new();
    for text in &d.texts {
        let bytes = text.as_bytes();
        let bytes = &bytes[..bytes.len().min(max_len)];
        if bytes.is_empty() {
            continue;
        }
        let tokens = byte_tokens(bytes).view([1, -1]);
        let h = tch::no_grad(|| -> Result<Tensor> {
            let out = model.forward_with(&tokens, ForwardOptions::default())?;
            Ok(model
                .norm
                .forward(&out.last_hidden_pre_norm)?
                .squeeze_dim(0))
        })?;
        states.push(h.to_kind(Kind::Float));
    }
    let all = Tensor::cat(&states, 0); // (N, C)
    let n = all.size()[0];
    let k = d.num_thoughts as i64;
    if n < k {
        bail!("derive_thoughts: the texts give {n} byte positions, fewer than num_thoughts = {k}; add text");
    }
    let chunks: Vec<Tensor> = (0..k)
        .map(|i| {
            let start = i * n / k;
            let end = (i + 1) * n / k;
            all.narrow(0, start, end - start)
                .mean_dim(0, false, Kind::Float)
        })
        .collect();
    Ok(Tensor::stack(&chunks, 0))
}
