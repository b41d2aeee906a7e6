//! Plumbing shared by the Phase 4 stage kinds: which upstream folder holds
//! the model, and the one on-disk form models travel in between stages.
//!
//! A stage that outputs a model writes `model.safetensors` (weights, config
//! JSON under `__metadata__["config"]`, and for BitNet models the conversion
//! spec under `__metadata__["bitnet"]`, so any stage can rebuild the latent
//! training form) plus `config.json`; BitNet models also get
//! `packed.safetensors` (2-bit inference form, HF BitNet layout; the kept
//! embedding / LM head in the spec's `kept_dtype`, see `bitnet::kept`). Thought
//! mixers travel in `thoughts.safetensors` next to them.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use bitnet_pipeline::stages::StageContext;
use tch::{nn, Device, Tensor};

use crate::bitnet::{Config, ConvertSpec, LlamaModel, UnpackBackend, SPEC_METADATA_KEY};
use crate::checkpoint::{load_checkpoint, save_checkpoint, LoadOptions};

pub const MODEL_FILE: &str = "model.safetensors";
pub const PACKED_FILE: &str = "packed.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const THOUGHTS_FILE: &str = "thoughts.safetensors";

/// The upstream folder a stage reads its `role` input from: the stage named
/// in the config, else the only upstream not in `exclude`.
pub fn pick_upstream(
    ctx: &StageContext,
    configured: Option<&str>,
    role: &str,
    exclude: &[&str],
) -> Result<PathBuf> {
    if let Some(name) = configured {
        return Ok(ctx.upstream_dir(name)?.to_path_buf());
    }
    let candidates: Vec<&String> = ctx
        .invocation
        .upstream
        .keys()
        .filter(|k| !exclude.contains(&k.as_str()))
        .collect();
    match candidates.as_slice() {
        [one] => Ok(ctx.upstream_dir(one)?.to_path_buf()),
        [] => bail!(
            "stage `{}` needs an upstream stage with the {role}: add it to `needs`",
            ctx.invocation.stage
        ),
        many => bail!(
            "stage `{}` has several upstream stages ({}); name the one with the {role} as `{role}: <stage>` in `with`",
            ctx.invocation.stage,
            many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// A model as stored in a stage folder.
pub struct ModelFiles {
    pub path: PathBuf,
    pub config: Config,
    pub tensors: BTreeMap<String, Tensor>,
    /// Present for BitNet (latent) models.
    pub spec: Option<ConvertSpec>,
    pub metadata: BTreeMap<String, String>,
}

/// Reads `dir/model.safetensors` onto `device`.
pub fn read_model_dir(dir: &Path, device: Device) -> Result<ModelFiles> {
    let path = dir.join(MODEL_FILE);
    if !path.is_file() {
        bail!(
            "{}: missing; the upstream stage must write {MODEL_FILE} (a load_checkpoint, convert_bitnet, attach_thoughts or train stage)",
            path.display()
        );
    }
    let ckpt = load_checkpoint(
        &path,
        &LoadOptions {
            device,
            ..LoadOptions::default()
        },
    )?;
    let config = ckpt.config.clone().ok_or_else(|| {
        anyhow!(
            "{}: has no `config` entry in its __metadata__; write it with save_checkpoint and a config",
            path.display()
        )
    })?;
    ckpt.validate_for(&config)?;
    let metadata = ckpt.metadata_strings();
    let spec = match metadata.get(SPEC_METADATA_KEY) {
        Some(text) => Some(serde_json::from_str::<ConvertSpec>(text).with_context(|| {
            format!(
                "{}: __metadata__[\"{SPEC_METADATA_KEY}\"] is not a conversion spec",
                path.display()
            )
        })?),
        None => None,
    };
    Ok(ModelFiles {
        path,
        config,
        tensors: ckpt.tensors,
        spec,
        metadata,
    })
}

impl ModelFiles {
    /// The trainable form in `p`'s VarStore: BitLinear latent weights when the
    /// files carry a conversion spec, full precision otherwise.
    pub fn build_trainable(&self, p: &nn::Path) -> Result<LlamaModel> {
        let mut model = match &self.spec {
            Some(spec) => LlamaModel::new_bitnet(p, &self.config, spec)?,
            None => LlamaModel::new(p, &self.config)?,
        };
        model
            .load_state_dict(&self.tensors)
            .with_context(|| format!("{}: does not fit its config", self.path.display()))?;
        Ok(model)
    }

    /// A frozen model for inference (teacher, baseline): plain tensors for
    /// full-precision files, the packed form of the latent weights for BitNet.
    pub fn build_frozen(&self, device: Device) -> Result<LlamaModel> {
        match &self.spec {
            None => Ok(LlamaModel::from_state_dict(
                &self.config,
                &self.tensors,
                crate::bitnet::ActQuant::Off,
                &UnpackBackend,
                device,
            )
            .with_context(|| format!("{}: does not fit its config", self.path.display()))?),
            Some(_) => {
                let vs = nn::VarStore::new(device);
                let latent = self.build_trainable(&vs.root())?;
                Ok(latent.to_packed(&UnpackBackend)?)
            }
        }
    }
}

/// Writes `model.safetensors` + `config.json` (+ `packed.safetensors` for BitNet).
pub fn write_model_dir(
    dir: &Path,
    model: &LlamaModel,
    spec: Option<&ConvertSpec>,
    extra: &BTreeMap<String, serde_json::Value>,
) -> Result<()> {
    let mut meta = extra.clone();
    if let Some(s) = spec {
        meta.insert(
            SPEC_METADATA_KEY.into(),
            serde_json::Value::String(serde_json::to_string(s)?),
        );
    }
    let tensors: Vec<(String, Tensor)> = model
        .named_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.detach()))
        .collect();
    save_checkpoint(&dir.join(MODEL_FILE), &tensors, Some(&model.config), &meta)?;
    if spec.is_some() {
        let packed = model.to_packed(&UnpackBackend)?;
        let kept = spec.map(|s| s.kept_dtype).unwrap_or_default();
        save_checkpoint(
            &dir.join(PACKED_FILE),
            &crate::bitnet::kept::compact_kept(packed.named_tensors(), kept)?,
            Some(&model.config),
            &meta,
        )?;
    }
    let cfg_path = dir.join(CONFIG_FILE);
    std::fs::write(&cfg_path, model.config.to_json_string())
        .with_context(|| format!("{}: cannot write", cfg_path.display()))?;
    Ok(())
}

/// Copies the upstream model folder's `tokenizer.json` (if it has one) next
/// to the model a stage writes, so the model's own tokenizer travels with
/// it: `generate` and `export` on a converted or trained model find it
/// without a `tokenizer:` option. Copied, not linked: a re-run upstream
/// rewrites its tokenizer.json in place.
pub fn carry_tokenizer(from_dir: &Path, to_dir: &Path) -> Result<()> {
    let src = crate::checkpoint::gguf::tokenizer_path(from_dir);
    if !src.is_file() {
        return Ok(());
    }
    let dst = crate::checkpoint::gguf::tokenizer_path(to_dir);
    std::fs::copy(&src, &dst)
        .with_context(|| format!("{}: cannot copy to {}", src.display(), dst.display()))?;
    Ok(())
}

/// Byte tokens of `text` as an i64 tensor (the byte-level tokenizer: id = byte).
pub fn byte_tokens(bytes: &[u8]) -> Tensor {
    let ids: Vec<i64> = bytes.iter().map(|&b| i64::from(b)).collect();
    Tensor::from_slice(&ids)
}

/// Train and held-out token ids of a stage's `data` config, checked against
/// the model's vocabulary.
pub fn load_tokens(
    ctx: &StageContext,
    data: &bitnet_pipeline::stages::data_config::DataConfig,
    vocab_size: i64,
) -> Result<(Vec<i64>, Vec<i64>)> {
    let tok_path = match (&data.tokenizer, &data.tokenizer_from) {
        (Some(p), _) => Some(ctx.resolve(p)),
        (None, Some(stage)) => {
            let p = crate::checkpoint::gguf::tokenizer_path(ctx.upstream_dir(stage)?);
            if !p.is_file() {
                bail!(
                    "{}: missing; `data.tokenizer_from: {stage}` needs a stage that writes tokenizer.json (a load_checkpoint of a GGUF does)",
                    p.display()
                );
            }
            Some(p)
        }
        (None, None) => None,
    };
    let tokenizer = crate::data::Tokenizer::from_option(tok_path.as_deref())?;
    if tokenizer.vocab_size() as i64 > vocab_size {
        bail!(
            "tokenizer `{}` has {} tokens but the model's vocab_size is {vocab_size}; use the model's own tokenizer",
            tokenizer.name(),
            tokenizer.vocab_size()
        );
    }
    let corpus = crate::data::Corpus::load(ctx.resolve(&data.corpus), data.heldout_fraction)?;
    Ok((
        corpus.train_tokens(&tokenizer)?,
        corpus.heldout_tokens(&tokenizer)?,
    ))
}
