//! Loading the two models the profiling stages compare, and their inputs.
//!
//! The baseline is an upstream stage's `model.safetensors` (full precision),
//! the BitNet side its `packed.safetensors` (u8 2-bit codes + `weight_scale`
//! per BitLinear, HF layout, see `bitnet::packing`), built into an inference
//! model with a `TernaryBackend`. Both are loaded with the same float dtype
//! for their full-precision tensors, so only the ternary layers differ.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bitnet_pipeline::stages::profiling::{Dtype, Side, TernaryBackendChoice};
use bitnet_pipeline::stages::StageContext;
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use crate::bitnet::model::is_float_kind;
use crate::bitnet::{
    ActQuant, Config, ConvertSpec, Linear, LlamaModel, QuantConfig, TernaryBackend, UnpackBackend,
};
use crate::checkpoint::{load_checkpoint, LoadOptions};
use crate::kernels::backend::{compute_layout_bytes, kernel_supports, KernelBackend};

pub fn kind_of(dtype: Dtype) -> Kind {
    match dtype {
        Dtype::Fp32 => Kind::Float,
        Dtype::Fp16 => Kind::Half,
        Dtype::Bf16 => Kind::BFloat16,
    }
}

/// The file `side` is read from in upstream stage `stage`'s output folder;
/// an error naming the file when the stage did not write it.
pub fn side_file(ctx: &StageContext, stage: &str, side: Side) -> Result<PathBuf> {
    let dir = ctx.upstream_dir(stage)?;
    let path = dir.join(side.file());
    if !path.is_file() {
        let hint = match side {
            Side::Baseline => "point `baseline:` at a stage that writes the full-precision model (e.g. load_checkpoint)",
            Side::Bitnet => "point `bitnet:` at a stage that writes the packed inference form (convert_bitnet or train)",
        };
        bail!(
            "upstream stage `{stage}` has no `{}` ({} does not exist); {hint}",
            side.file(),
            path.display()
        );
    }
    Ok(path)
}

/// A model ready for inference, with what the reports need to know about it.
pub struct LoadedModel {
    pub model: LlamaModel,
    /// Exact bytes of the stored weights (packed layers: u8 codes + scale).
    pub weight_bytes: i64,
    /// Bytes the backend holds on top of `weight_bytes` (the unpack fallback:
    /// every ternary layer as dense f32 codes; the kernels: their repacked
    /// 2-bit compute layout).
    pub backend_extra_bytes: i64,
    /// Number of packed (ternary) layers.
    pub packed_layers: usize,
    /// Backend as recorded in metric meta.
    pub backend: String,
    /// Activation quantization of the packed layers and where it came from.
    pub act_quant: Value,
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
/// matmul name, e.g. `kernel-avx512vnni`).
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

/// The activation quantization stored with a packed checkpoint: metadata
/// `quant` (a QuantConfig) or `convert_spec` (a ConvertSpec); BitNet b1.58's
/// per-token int8 when neither is present.
fn act_quant_of(
    metadata: &std::collections::BTreeMap<String, Value>,
) -> Result<(ActQuant, String)> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if let Some(v) = metadata.get("quant") {
        let q: QuantConfig = serde_json::from_str(&text(v)).with_context(|| {
            format!("metadata `quant` is not a quantization config: {}", text(v))
        })?;
        return Ok((q.act, "metadata `quant`".into()));
    }
    if let Some(v) = metadata.get("convert_spec") {
        let s: ConvertSpec = serde_json::from_str(&text(v)).with_context(|| {
            format!(
                "metadata `convert_spec` is not a conversion spec: {}",
                text(v)
            )
        })?;
        return Ok((s.quant.act, "metadata `convert_spec`".into()));
    }
    Ok((
        ActQuant::INT8,
        "default per-token int8 (no `quant` metadata)".into(),
    ))
}

/// Loads one side from `path` onto `device`, float tensors in `dtype`.
pub fn load_side(
    path: &Path,
    side: Side,
    dtype: Dtype,
    backend: TernaryBackendChoice,
    device: Device,
) -> Result<LoadedModel> {
    // Stored dtypes first: `LoadOptions::dtype` would also round the f32
    // `weight_scale`s of packed layers (to bf16, 3 significant digits).
    let opts = LoadOptions {
        device,
        ..LoadOptions::default()
    };
    let mut ckpt = load_checkpoint(path, &opts)
        .with_context(|| format!("loading the {} model {}", side.name(), path.display()))?;
    let kind = kind_of(dtype);
    for (name, t) in ckpt.tensors.iter_mut() {
        let k = t.f_kind()?;
        if is_float_kind(k) && k != kind && !name.ends_with("weight_scale") {
            *t = t.f_to_kind(kind)?;
        }
    }
    let cfg = match ckpt.config.clone() {
        Some(c) => c,
        None => {
            let json = path.with_file_name("config.json");
            if !json.is_file() {
                bail!(
                    "{} has no `config` metadata and there is no config.json next to it; the producing stage must save the model config",
                    path.display()
                );
            }
            Config::from_json_file(&json)
                .with_context(|| format!("reading the model config {}", json.display()))?
        }
    };
    let (act, act_source) = act_quant_of(&ckpt.metadata)?;
    let resolved = resolve_backend(backend, act, device)?;
    let tb = ternary_backend(resolved);
    let model = LlamaModel::from_state_dict(&cfg, &ckpt.tensors, act, tb.as_ref(), device)
        .with_context(|| format!("building the {} model from {}", side.name(), path.display()))?;
    drop(ckpt);
    let mut packed_layers = 0usize;
    let mut extra = 0i64;
    let mut matmul = String::new();
    for (_, l) in model.linears() {
        if let Linear::Packed(p) = l {
            packed_layers += 1;
            matmul = p.backend_name().to_string();
            let (out, inf) = (p.weights.out_features, p.weights.in_features);
            extra += match resolved {
                ResolvedBackend::Unpack => out * inf * 4,
                ResolvedBackend::Kernel => compute_layout_bytes(out, inf),
            };
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
    let weight_bytes = model.weight_bytes()?;
    Ok(LoadedModel {
        weight_bytes,
        backend_extra_bytes: extra,
        packed_layers,
        backend: match side {
            Side::Baseline => format!("dense {} matmul", dtype.name()),
            Side::Bitnet => backend_description(resolved, &matmul, device),
        },
        act_quant: match side {
            Side::Baseline => Value::Null,
            Side::Bitnet => json!({"act": act, "source": act_source}),
        },
        model,
    })
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
    use std::collections::BTreeMap;

    #[test]
    fn act_quant_comes_from_metadata_or_the_int8_default() {
        let mut meta = BTreeMap::new();
        let (act, source) = act_quant_of(&meta).unwrap();
        assert_eq!(act, ActQuant::INT8);
        assert!(source.contains("default"));
        let off = QuantConfig {
            act: ActQuant::Off,
            ..QuantConfig::default()
        };
        meta.insert(
            "quant".to_string(),
            Value::String(serde_json::to_string(&off).unwrap()),
        );
        assert_eq!(act_quant_of(&meta).unwrap().0, ActQuant::Off);
        meta.insert("quant".to_string(), Value::String("{\"act\": 7}".into()));
        let e = act_quant_of(&meta).unwrap_err().to_string();
        assert!(e.contains("metadata `quant`"), "{e}");
        let mut meta = BTreeMap::new();
        let spec = ConvertSpec {
            quant: off,
            ..ConvertSpec::default()
        };
        meta.insert(
            "convert_spec".to_string(),
            Value::String(serde_json::to_string(&spec).unwrap()),
        );
        assert_eq!(act_quant_of(&meta).unwrap().0, ActQuant::Off);
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
