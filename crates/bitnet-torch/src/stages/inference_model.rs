//! The one way the measuring stages (`evaluate`, `profile_speed`,
//! `memory_probe`) load a model for inference, so that what is timed and
//! what is weighed is exactly what was scored.
//!
//! A side is read from an upstream stage's folder: the full-precision
//! baseline from `model.safetensors`, the BitNet side from
//! `packed.safetensors` (u8 2-bit codes + `weight_scale` per BitLinear, HF
//! layout, see `bitnet::packing`), and, on either side, the Quiet-STaR thought
//! mixers from `thoughts.safetensors` when the stage wrote one (the model that
//! `evaluate` scores runs with them, so its speed and memory include them).
//! The activation quantization of the packed layers comes from the
//! conversion spec the writers store under [`SPEC_METADATA_KEY`]. Float
//! tensors are cast to one dtype on both sides, so only the ternary layers
//! differ. After the backend built its own copy of each packed layer, the
//! stored u8 codes are released: an inference model holds one copy.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bitnet_infer::{DecodeModel, DecodeState, KeptDtype};
use bitnet_pipeline::stages::profiling::{
    DecodePathChoice, Dtype, KeptDtypeChoice, Side, TernaryBackendChoice,
};
use bitnet_pipeline::stages::StageContext;
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use super::common::THOUGHTS_FILE;
use super::thoughts::ThoughtSet;
use crate::bitnet::model::is_float_kind;
use crate::bitnet::KvCache;
use crate::bitnet::{
    ActQuant, Config, ConvertSpec, Linear, LlamaModel, TernaryBackend, UnpackBackend,
    SPEC_METADATA_KEY,
};
use crate::checkpoint::{load_checkpoint, LoadOptions};
use crate::kernels::backend::{kernel_supports, KernelBackend};
use crate::kernels::fused::{fused_decode_model_from_tensors, TensorSource};

pub fn kind_of(dtype: Dtype) -> Kind {
    match dtype {
        Dtype::Fp32 => Kind::Float,
        Dtype::Fp16 => Kind::Half,
        Dtype::Bf16 => Kind::BFloat16,
    }
}

/// The folder of upstream stage `stage`, checked to hold the file `side`
/// is read from; an error naming the file and the fix when it does not.
pub fn side_dir(ctx: &StageContext, stage: &str, side: Side) -> Result<PathBuf> {
    let dir = std::path::absolute(ctx.upstream_dir(stage)?)
        .with_context(|| format!("resolving the folder of upstream stage `{stage}`"))?;
    let path = dir.join(side.file());
    if !path.is_file() {
        let (key, hint) = match side {
            Side::Baseline => (
                "baseline",
                "a stage that writes the full-precision model (e.g. load_checkpoint)",
            ),
            Side::Bitnet => (
                "bitnet",
                "a stage that writes the packed inference form (convert_bitnet or train)",
            ),
        };
        bail!(
            "upstream stage `{stage}` has no `{}` ({} does not exist); point `{key}:` at {hint}",
            side.file(),
            path.display()
        );
    }
    Ok(dir)
}

/// A model ready for inference, with what the reports need to know about it.
pub struct LoadedModel {
    pub model: LlamaModel,
    /// The weights file it was read from.
    pub file: PathBuf,
    /// The thought file attached, if the stage wrote one.
    pub thoughts_file: Option<PathBuf>,
    /// [`LlamaModel::parameter_count`]: logical weights, mixers included.
    pub parameters: i64,
    /// Parameters of the attached thought mixers (0 without).
    pub thought_parameters: i64,
    /// Bytes of the weights in their stored form (packed layers: u8 codes +
    /// one f32 scale; the rest numel x dtype size; mixers included).
    pub weight_bytes_stored: i64,
    /// Bytes the model holds for its weights while it runs, every copy
    /// counted (packed layers: the backend's kernel layout or unpacked f32
    /// codes, after the stored codes were released).
    pub weight_bytes_resident: i64,
    /// Number of packed (ternary) layers.
    pub packed_layers: usize,
    /// Short name of what multiplies the ternary layers: `kernel-avx512vnni`,
    /// `unpack-f32`, or `dense-fp32` for a baseline.
    pub matmul: String,
    /// One-line description of the backend for metric meta and reports.
    pub backend: String,
    /// Activation quantization of the packed layers and where it came from.
    pub act_quant: Value,
    pub dtype: Dtype,
    /// The fused Rust decode form, when asked for and applicable.
    pub fused: Option<DecodeModel>,
    /// Which decode path runs and why: `{path, reason, kept_dtype, head, ...}`.
    pub decode_path: Value,
}

impl LoadedModel {
    /// What every metric measured on this model should carry in its meta.
    pub fn method_meta(&self) -> Value {
        json!({
            "file": self.file.display().to_string(),
            "thoughts_file": self.thoughts_file.as_ref().map(|p| p.display().to_string()),
            "parameters": self.parameters,
            "thought_parameters": self.thought_parameters,
            "matmul": self.matmul,
            "backend": self.backend,
            "act_quant": self.act_quant,
            "dtype": self.dtype.name(),
            "weight_bytes_stored": self.weight_bytes_stored,
            "weight_bytes_resident": self.weight_bytes_resident,
            "decode_path": self.decode_path,
        })
    }
}

/// The ternary backend that actually runs, after resolving `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedBackend {
    Kernel,
    Unpack,
}

/// Resolves `auto` (kernel where it applies) and checks `kernel` applies.
pub fn resolve_backend(
    choice: TernaryBackendChoice,
    act: ActQuant,
    device: Device,
) -> Result<ResolvedBackend> {
    let supported = kernel_supports(act, device);
    Ok(match choice {
        TernaryBackendChoice::Unpack => ResolvedBackend::Unpack,
        TernaryBackendChoice::Auto if supported => ResolvedBackend::Kernel,
        TernaryBackendChoice::Auto => ResolvedBackend::Unpack,
        TernaryBackendChoice::Kernel if supported => ResolvedBackend::Kernel,
        TernaryBackendChoice::Kernel => bail!(
            "`backend: kernel` needs a CPU device and per-token int8 activations (this run: {}, {act:?}); use `backend: auto` or `unpack`",
            super::device::name(device)
        ),
    })
}

fn ternary_backend(b: ResolvedBackend) -> Box<dyn TernaryBackend> {
    match b {
        ResolvedBackend::Kernel => Box::new(KernelBackend),
        ResolvedBackend::Unpack => Box::new(UnpackBackend),
    }
}

/// How a backend is described in metric meta (`matmul` is a layer's
/// matmul name, e.g. `kernel-avx512vnni`). The unpack fallback says so
/// loudly: it is no fast kernel.
fn backend_description(b: ResolvedBackend, matmul: &str, device: Device) -> String {
    match b {
        ResolvedBackend::Kernel => format!(
            "{matmul} (packed 2-bit CPU kernel, int8 activations, repacked once at load)"
        ),
        ResolvedBackend::Unpack => format!(
            "{matmul} (unpack fallback, no fast kernel on {}): 2-bit codes unpacked once to dense f32 at load",
            super::device::name(device)
        ),
    }
}

/// The activation quantization a packed checkpoint was converted with, from
/// the conversion spec under [`SPEC_METADATA_KEY`]; BitNet b1.58's
/// per-token int8 when the file has no spec (a packed model from elsewhere).
pub fn act_quant_of(
    metadata: &std::collections::BTreeMap<String, Value>,
) -> Result<(ActQuant, String)> {
    let Some(v) = metadata.get(SPEC_METADATA_KEY) else {
        return Ok((
            ActQuant::INT8,
            format!(
                "default per-token int8 (no `{SPEC_METADATA_KEY}` conversion spec in the file)"
            ),
        ));
    };
    let text = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let spec: ConvertSpec = serde_json::from_str(&text).with_context(|| {
        format!("metadata `{SPEC_METADATA_KEY}` is not a conversion spec: {text}")
    })?;
    Ok((
        spec.quant.act,
        format!("conversion spec (metadata `{SPEC_METADATA_KEY}`)"),
    ))
}

/// Loads `side` from stage folder `dir` onto `device`, float tensors in
/// `dtype`, with its thought mixers when the folder has them.
pub fn load_model(
    dir: &Path,
    side: Side,
    dtype: Dtype,
    backend: TernaryBackendChoice,
    device: Device,
) -> Result<LoadedModel> {
    load_model_with(dir, side, dtype, backend, device, None)
}

/// What a decode-timing caller asks of the fused path.
#[derive(Debug, Clone, Copy)]
pub struct FusedRequest {
    pub path: DecodePathChoice,
    pub kept: KeptDtypeChoice,
}

fn kept_dtype(k: KeptDtypeChoice) -> KeptDtype {
    match k {
        KeptDtypeChoice::Fp32 => KeptDtype::F32,
        KeptDtypeChoice::Bf16 => KeptDtype::Bf16,
        KeptDtypeChoice::Int8 => KeptDtype::Int8,
    }
}

/// Builds the fused decode form of a packed model when `request` asks for
/// it and it applies; `decode_path: fused` turns "does not apply" into an
/// error, `auto` into a recorded fallback to libtorch.
fn fused_for(
    file: (
        &Config,
        &std::collections::BTreeMap<String, Tensor>,
        ActQuant,
    ),
    has_thoughts: bool,
    resolved: ResolvedBackend,
    request: Option<FusedRequest>,
) -> Result<(Option<DecodeModel>, Value)> {
    let Some(req) = request else {
        return Ok((
            None,
            json!({"path": "libtorch", "reason": "not a decode-timing load"}),
        ));
    };
    let refusal = match (req.path, resolved) {
        (DecodePathChoice::Libtorch, _) => Some("`decode_path: libtorch`".to_string()),
        (_, ResolvedBackend::Unpack) => {
            Some("the ternary backend is the unpack fallback, not the CPU kernels".to_string())
        }
        _ if has_thoughts => {
            Some("the model has Quiet-STaR thought mixers; the fused path has none".to_string())
        }
        _ => None,
    };
    let (cfg, tensors, act) = file;
    let built = match refusal {
        Some(reason) => Err(reason),
        None => fused_decode_model_from_tensors(
            cfg,
            TensorSource::Borrowed(tensors),
            act,
            kept_dtype(req.kept),
        )
        .map_err(|e| e.to_string()),
    };
    match built {
        Ok(fused) => {
            let meta = json!({
                "path": "fused",
                "reason": format!("decode_path: {}", req.path.name()),
                "kept_dtype": req.kept.name(),
                "kept_dtype_note": "the file's own dtype wins where convert_bitnet stored the kept layers compact (see `head`)",
                "head": fused.head_form(),
                "fused_weight_bytes": fused.weight_bytes(),
                "method": "one Rust loop per token (bitnet-infer): RMSNorm, RoPE, GQA attention over a preallocated f32 KV cache, SiLU-GLU, ternary GEMV on the packed kernels with per-token int8 activations (one quantization shared by q/k/v and by gate/up); kept layers in kept_dtype",
            });
            Ok((Some(fused), meta))
        }
        Err(reason) if req.path == DecodePathChoice::Fused => {
            bail!("`decode_path: fused` cannot run this model: {reason}; use `decode_path: auto` or `libtorch`")
        }
        Err(reason) => Ok((None, json!({"path": "libtorch", "reason": reason}))),
    }
}

/// How the fused path's last-position logits compare with the libtorch
/// model's on one prompt.
#[derive(Debug, Clone, Copy)]
pub struct FusedCheck {
    /// Largest |fused - libtorch| over the largest |libtorch logit|.
    pub max_rel_diff: f64,
    /// Whether both pick the same greedy next token.
    pub same_argmax: bool,
}

use crate::bitnet::generation::argmax;

/// Compares the fused path's and the libtorch model's last-position logits
/// on `tokens` (a prompt): the check that the timed fused path computes the
/// model.
pub fn fused_logit_difference(
    model: &LlamaModel,
    fused: &DecodeModel,
    tokens: &[i64],
    kind: Kind,
) -> Result<FusedCheck> {
    let t = tokens.len() as i64;
    let mut cache = KvCache::new(model, 1, t, kind)?;
    let ids = Tensor::from_slice(tokens).f_view([1, t])?;
    let reference = tch::no_grad(|| model.forward_cached_last(&ids, &mut cache))?;
    let reference = Vec::<f32>::try_from(reference.f_to_kind(Kind::Float)?.f_flatten(0, -1)?)?;
    let mut state = DecodeState::new(fused, tokens.len(), tokens.len())?;
    let ids: Vec<u32> = tokens.iter().map(|&v| v as u32).collect();
    let ours = state.forward(fused, &ids)?;
    let scale = reference
        .iter()
        .fold(0.0f64, |m, v| m.max(f64::from(v.abs())))
        .max(1e-12);
    let worst = ours
        .iter()
        .zip(&reference)
        .map(|(a, b)| f64::from((a - b).abs()))
        .fold(0.0, f64::max);
    Ok(FusedCheck {
        max_rel_diff: worst / scale,
        same_argmax: argmax(ours) == argmax(&reference),
    })
}

/// [`load_model`], also building the fused decode form when `fused` asks for it.
pub fn load_model_with(
    dir: &Path,
    side: Side,
    dtype: Dtype,
    backend: TernaryBackendChoice,
    device: Device,
    fused: Option<FusedRequest>,
) -> Result<LoadedModel> {
    let path = dir.join(side.file());
    // Stored dtypes first: `LoadOptions::dtype` would also round the f32
    // `weight_scale`s of packed layers (to bf16, 3 significant digits).
    let opts = LoadOptions {
        device,
        ..LoadOptions::default()
    };
    let mut ckpt = load_checkpoint(&path, &opts)
        .with_context(|| format!("loading the {} model {}", side.name(), path.display()))?;
    let kind = kind_of(dtype);
    for (name, t) in ckpt.tensors.iter_mut() {
        let k = t.f_kind()?;
        if is_float_kind(k) && k != kind && !name.ends_with("weight_scale") {
            *t = t.f_to_kind(kind)?;
        }
    }
    let cfg = config_of(dir, &path, ckpt.config.clone())?;
    let (act, act_source) = match side {
        Side::Baseline => (ActQuant::Off, "full precision".to_string()),
        Side::Bitnet => act_quant_of(&ckpt.metadata)?,
    };
    let resolved = resolve_backend(backend, act, device)?;
    let tb = ternary_backend(resolved);
    let mut model = LlamaModel::from_state_dict(&cfg, &ckpt.tensors, act, tb.as_ref(), device)
        .with_context(|| format!("building the {} model from {}", side.name(), path.display()))?;
    let thoughts_path = dir.join(THOUGHTS_FILE);
    // Read from the file's tensors: compact kept layers are used as stored.
    let (fused, decode_path) = match side {
        Side::Baseline => (
            None,
            json!({"path": "libtorch", "reason": "full-precision baseline"}),
        ),
        Side::Bitnet => fused_for(
            (&cfg, &ckpt.tensors, act),
            thoughts_path.is_file(),
            resolved,
            fused,
        )?,
    };
    drop(ckpt);
    let mut packed_layers = 0usize;
    let mut matmul = format!("dense-{}", dtype.name());
    for (_, l) in model.linears() {
        if let Linear::Packed(p) = l {
            packed_layers += 1;
            matmul = p.backend_name().to_string();
        }
    }
    match side {
        Side::Baseline if packed_layers > 0 => bail!(
            "the baseline {} has {packed_layers} packed (u8) layers; `baseline:` must name a stage with the full-precision model",
            path.display()
        ),
        Side::Bitnet if packed_layers == 0 => bail!(
            "{} has no packed (u8) BitLinear weights; `bitnet:` must name a stage that writes the packed inference form",
            path.display()
        ),
        _ => {}
    }
    let (thoughts_file, thought_parameters) = if thoughts_path.is_file() {
        let t = ThoughtSet::load(
            &thoughts_path,
            cfg.hidden_size,
            cfg.num_hidden_layers,
            device,
        )?;
        t.attach(&mut model)?;
        (Some(thoughts_path), t.num_parameters())
    } else {
        (None, 0)
    };
    let weight_bytes_stored = model.weight_bytes()?;
    model.release_stored_codes()?;
    let weight_bytes_resident = model.resident_weight_bytes()?;
    Ok(LoadedModel {
        file: path,
        thoughts_file,
        parameters: model.parameter_count(),
        thought_parameters,
        weight_bytes_stored,
        weight_bytes_resident,
        packed_layers,
        backend: match side {
            Side::Baseline => format!("dense {} matmul (libtorch)", dtype.name()),
            Side::Bitnet => backend_description(resolved, &matmul, device),
        },
        matmul,
        act_quant: json!({"act": act, "source": act_source}),
        dtype,
        model,
        fused,
        decode_path,
    })
}

/// The model config a checkpoint carries, else the `config.json` next to it.
fn config_of(dir: &Path, path: &Path, stored: Option<Config>) -> Result<Config> {
    if let Some(c) = stored {
        return Ok(c);
    }
    let json = dir.join("config.json");
    if !json.is_file() {
        bail!(
            "{} has no `config` metadata and there is no config.json next to it; the producing stage must save the model config",
            path.display()
        );
    }
    Config::from_json_file(&json)
        .with_context(|| format!("reading the model config {}", json.display()))
}

/// The BitNet side as a user runs it on the CPU: the fused decode form
/// read straight from `dir/packed.safetensors` (no libtorch model, no float
/// copy of a compact kept layer; each tensor is dropped once converted).
pub struct FusedOnly {
    pub fused: DecodeModel,
    pub config: Config,
    /// [`LoadedModel::method_meta`]'s keys, for this form.
    pub meta: Value,
}

/// Loads [`FusedOnly`]; an error when the folder's model does not fit the
/// fused path (thought mixers, no per-token int8 activations, ...).
pub fn load_fused_only(dir: &Path, kept_if_float: KeptDtypeChoice) -> Result<FusedOnly> {
    let path = dir.join(Side::Bitnet.file());
    if dir.join(THOUGHTS_FILE).is_file() {
        bail!(
            "{} has Quiet-STaR thought mixers; the fused decode path has none: use `decode_path: libtorch`",
            dir.display()
        );
    }
    let mut ckpt = load_checkpoint(&path, &LoadOptions::default())
        .with_context(|| format!("loading the bitnet model {}", path.display()))?;
    let cfg = config_of(dir, &path, ckpt.config.clone())?;
    let (act, act_source) = act_quant_of(&ckpt.metadata)?;
    let mut stored = 0i64;
    for t in ckpt.tensors.values() {
        stored += (t.numel() * t.f_kind()?.elt_size_in_bytes()) as i64;
    }
    let fused = fused_decode_model_from_tensors(
        &cfg,
        TensorSource::Consumed(&mut ckpt.tensors),
        act,
        kept_dtype(kept_if_float),
    )
    .with_context(|| format!("building the fused decode form from {}", path.display()))?;
    drop(ckpt);
    let matmul = format!("fused-{}", bitnet_kernels::KernelPath::selected()?.name());
    let meta = json!({
        "file": path.display().to_string(),
        "thoughts_file": Value::Null,
        "parameters": logical_parameters(&cfg),
        "thought_parameters": 0,
        "matmul": matmul,
        "backend": format!("{matmul} (bitnet-infer: one Rust loop per token over the packed kernels, loaded straight from the file; no libtorch model)"),
        "act_quant": {"act": act, "source": act_source},
        "dtype": "fp32",
        "weight_bytes_stored": stored,
        "weight_bytes_resident": fused.weight_bytes(),
        "decode_path": {"path": "fused", "head": fused.head_form(), "fused_weight_bytes": fused.weight_bytes()},
    });
    Ok(FusedOnly {
        fused,
        config: cfg,
        meta,
    })
}

/// Logical parameters of a plain LLaMA of `cfg` (tied embeddings once), as
/// [`LlamaModel::parameter_count`] counts them.
fn logical_parameters(cfg: &Config) -> i64 {
    crate::bitnet::expected_tensor_shapes(cfg)
        .iter()
        .map(|(_, s)| s.iter().product::<i64>())
        .sum()
}

/// Token ids `(B, T)` drawn uniformly from the vocabulary, deterministic per
/// shape (both sides see the same ids).
pub fn random_tokens(vocab: i64, batch: i64, seq: i64, device: Device) -> Result<Tensor> {
    tch::manual_seed(batch * 1_000_003 + seq);
    Ok(Tensor::f_randint(vocab, [batch, seq], (Kind::Int64, Device::Cpu))?.f_to_device(device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitnet::QuantConfig;
    use std::collections::BTreeMap;

    #[test]
    fn act_quant_comes_from_the_spec_key_the_writers_write() {
        let mut meta = BTreeMap::new();
        let (act, source) = act_quant_of(&meta).unwrap();
        assert_eq!(act, ActQuant::INT8);
        assert!(source.contains("default"), "{source}");
        let spec = ConvertSpec {
            quant: QuantConfig {
                act: ActQuant::Off,
                ..QuantConfig::default()
            },
            ..ConvertSpec::default()
        };
        meta.insert(
            SPEC_METADATA_KEY.to_string(),
            Value::String(serde_json::to_string(&spec).unwrap()),
        );
        let (act, source) = act_quant_of(&meta).unwrap();
        assert_eq!(act, ActQuant::Off);
        assert!(source.contains(SPEC_METADATA_KEY), "{source}");
        meta.insert(
            SPEC_METADATA_KEY.to_string(),
            Value::String("{\"quant\": 7}".into()),
        );
        let e = act_quant_of(&meta).unwrap_err().to_string();
        assert!(e.contains("is not a conversion spec"), "{e}");
    }

    /// Issue #15: the kept dtype round-trips through `packed.safetensors`
    /// (what convert_bitnet and train write) into both loaders: the libtorch
    /// model gets the dequantized values, the fused form the stored codes;
    /// an fp32 file, the form of files from before the option, loads as before.
    #[test]
    fn kept_dtype_round_trips_through_the_packed_file() {
        use crate::bitnet::kept::{kept_matrix, ROW_SCALE_SUFFIX};
        use crate::bitnet::{convert_to_bitnet, KeptStorage};
        use tch::nn;
        let mut cfg = Config::tiny();
        cfg.tie_word_embeddings = true; // as SmolLM2
        tch::manual_seed(11);
        let vs = nn::VarStore::new(Device::Cpu);
        let fp = LlamaModel::new(&vs.root(), &cfg).unwrap();
        let mut resident = Vec::new();
        for kept in [KeptStorage::Fp32, KeptStorage::Bf16, KeptStorage::Int8] {
            let spec = ConvertSpec {
                kept_dtype: kept,
                ..ConvertSpec::default()
            };
            let bvs = nn::VarStore::new(Device::Cpu);
            let (latent, _) = convert_to_bitnet(&fp, &bvs.root(), &spec).unwrap();
            let dir = tempfile::tempdir().unwrap();
            super::super::common::write_model_dir(
                dir.path(),
                &latent,
                Some(&spec),
                &BTreeMap::new(),
            )
            .unwrap();
            let file = load_checkpoint(
                &dir.path().join(Side::Bitnet.file()),
                &LoadOptions::default(),
            )
            .unwrap();
            let embed = &file.tensors["model.embed_tokens.weight"];
            let want = match kept {
                KeptStorage::Fp32 => Kind::Float,
                KeptStorage::Bf16 => Kind::BFloat16,
                KeptStorage::Int8 => Kind::Int8,
            };
            assert_eq!(embed.kind(), want, "{kept:?}");
            let row_scale = format!("model.embed_tokens.weight{ROW_SCALE_SUFFIX}");
            assert_eq!(
                file.tensors.contains_key(&row_scale),
                kept == KeptStorage::Int8
            );
            let spec_text = file.metadata_strings()[SPEC_METADATA_KEY].clone();
            assert_eq!(
                spec_text.contains("kept_dtype"),
                kept != KeptStorage::Fp32,
                "{spec_text}"
            );
            // The libtorch model holds exactly the stored values, as floats.
            let stored = kept_matrix(&file.tensors, "model.embed_tokens.weight", KeptDtype::F32)
                .unwrap()
                .to_f32();
            let m = load_model(
                dir.path(),
                Side::Bitnet,
                Dtype::Fp32,
                TernaryBackendChoice::Auto,
                Device::Cpu,
            )
            .unwrap();
            let held = Vec::<f32>::try_from(m.model.embed_tokens.flatten(0, -1)).unwrap();
            assert_eq!(held, stored, "{kept:?}");
            // The fused form keeps the stored dtype.
            let f = load_fused_only(dir.path(), KeptDtypeChoice::Fp32).unwrap();
            assert_eq!(f.fused.head_form(), format!("tied-{}", kept.name()));
            resident.push(f.fused.weight_bytes());
        }
        assert!(
            resident[0] > resident[1] && resident[1] > resident[2],
            "{resident:?}"
        );
    }

    #[test]
    fn backend_resolution() {
        use TernaryBackendChoice::*;
        let cpu = Device::Cpu;
        let cuda = Device::Cuda(0);
        assert_eq!(
            resolve_backend(Auto, ActQuant::INT8, cpu).unwrap(),
            ResolvedBackend::Kernel
        );
        assert_eq!(
            resolve_backend(Auto, ActQuant::Off, cpu).unwrap(),
            ResolvedBackend::Unpack
        );
        assert_eq!(
            resolve_backend(Auto, ActQuant::INT8, cuda).unwrap(),
            ResolvedBackend::Unpack
        );
        assert_eq!(
            resolve_backend(Unpack, ActQuant::INT8, cpu).unwrap(),
            ResolvedBackend::Unpack
        );
        let e = resolve_backend(Kernel, ActQuant::INT8, cuda).unwrap_err();
        assert!(
            e.to_string()
                .contains("`backend: kernel` needs a CPU device"),
            "{e}"
        );
    }
}
