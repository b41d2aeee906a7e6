//! Builds the fused Rust decode model ([`bitnet_infer::DecodeModel`]) from a
//! packed [`LlamaModel`], so decode can leave libtorch: one libtorch op costs
//! on the order of 10 us to dispatch, and a step of a 30-layer model runs
//! hundreds of them (issue #11). The libtorch model stays the reference the
//! fused path is tested against (below) and the form training uses.
//!
//! Only the plain packed BitNet LLaMA fits: every projection packed with
//! per-token int8 activations, no Quiet-STaR mixers, default RoPE, f32 or
//! bf16 float weights (read as f32), on the CPU. Anything else is refused
//! with the reason, and callers stay on libtorch.
use bitnet_infer::{
    DecodeConfig, DecodeModel, DecodeState, KeptDtype, KeptMatrix, LayerWeights, LmHead,
};
use tch::{Device, Kind, Tensor};

use super::PackedTernaryMatrix;
use std::collections::BTreeMap;

use crate::bitnet::kept::kept_matrix;
use crate::bitnet::{ActQuant, BitnetError, Config, Decoder, Linear, LlamaModel, ScaleConvention};

/// Why a model cannot run on the fused path (callers fall back to libtorch
/// and record this reason).
#[derive(Debug, thiserror::Error)]
pub enum FusedError {
    #[error("the fused decode path does not cover this model: {0}")]
    Unsupported(String),
    #[error("reading weights for the fused decode path: {0}")]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    Infer(#[from] bitnet_infer::InferError),
    #[error(transparent)]
    Kernel(#[from] bitnet_kernels::KernelError),
    #[error(transparent)]
    Model(#[from] crate::bitnet::BitnetError),
}

fn unsupported(reason: impl Into<String>) -> FusedError {
    FusedError::Unsupported(reason.into())
}

/// The values of a float CPU tensor as f32, row-major.
// pot10: init (runs once while the model is built at load; a decode step never calls it)
fn f32_values(t: &Tensor) -> Result<Vec<f32>, FusedError> {
    if t.device() != Device::Cpu {
        return Err(unsupported(format!(
            "weights on {:?}, the fused path runs on the CPU",
            t.device()
        )));
    }
    Ok(Vec::<f32>::try_from(
        t.f_to_kind(Kind::Float)?.f_contiguous()?.f_flatten(0, -1)?,
    )?)
}

/// A packed projection in the kernels' layout (from its stored u8 codes).
// pot10: init (runs once while the model is built at load; a decode step never calls it)
fn ternary(name: &str, l: &Linear) -> Result<PackedTernaryMatrix, FusedError> {
    let Linear::Packed(p) = l else {
        return Err(unsupported(format!(
            "`{name}` is {}, not packed ternary",
            l.form()
        )));
    };
    if p.act != ActQuant::INT8 {
        return Err(unsupported(format!(
            "`{name}` quantizes activations as {:?}; the kernels do per-token int8",
            p.act
        )));
    }
    let w = &p.weights;
    if !w.packed.defined() || w.packed.numel() == 0 || w.packed.f_kind()? != Kind::Uint8 {
        return Err(unsupported(format!(
            "`{name}` holds no stored u8 codes (released after load?); build the fused model before `release_stored_codes`"
        )));
    }
    if w.packed.device() != Device::Cpu {
        return Err(unsupported(format!(
            "`{name}` is on {:?}",
            w.packed.device()
        )));
    }
    let bytes = Vec::<u8>::try_from(w.packed.f_contiguous()?.f_flatten(0, -1)?)?;
    Ok(PackedTernaryMatrix::from_storage(
        &bytes,
        w.out_features as usize,
        w.in_features as usize,
        w.w_scale,
    )?)
}

fn decode_config(c: &Config) -> DecodeConfig {
    DecodeConfig {
        hidden: c.hidden_size as usize,
        intermediate: c.intermediate_size as usize,
        heads: c.num_attention_heads as usize,
        kv_heads: c.num_kv_heads() as usize,
        head_dim: c.head_dim() as usize,
        vocab: c.vocab_size as usize,
        rope_theta: c.rope_theta(),
        rms_eps: c.rms_norm_eps,
    }
}

/// The fused decode form of a packed `model`, kept layers (embedding, LM
/// head) stored as `kept`. The model must still hold its stored codes.
// pot10: init (runs once while the model is built at load; a decode step never calls it)
pub fn fused_decode_model(model: &LlamaModel, kept: KeptDtype) -> Result<DecodeModel, FusedError> {
    let cfg = decode_config(&model.config);
    let mut layers = Vec::with_capacity(model.layers.len());
    for (i, l) in model.layers.iter().enumerate() {
        if l.self_attn.mixer.is_some() {
            return Err(unsupported(format!(
                "layer {i} has a Quiet-STaR thought mixer; the fused path has none"
            )));
        }
        let name = |s: &str| format!("model.layers.{i}.{s}");
        layers.push(LayerWeights {
            input_norm: f32_values(&l.input_layernorm.weight)?,
            q: ternary(&name("self_attn.q_proj"), &l.self_attn.q_proj)?,
            k: ternary(&name("self_attn.k_proj"), &l.self_attn.k_proj)?,
            v: ternary(&name("self_attn.v_proj"), &l.self_attn.v_proj)?,
            o: ternary(&name("self_attn.o_proj"), &l.self_attn.o_proj)?,
            post_norm: f32_values(&l.post_attention_layernorm.weight)?,
            gate: ternary(&name("mlp.gate_proj"), &l.mlp.gate_proj)?,
            up: ternary(&name("mlp.up_proj"), &l.mlp.up_proj)?,
            down: ternary(&name("mlp.down_proj"), &l.mlp.down_proj)?,
        });
    }
    let embed = KeptMatrix::new(
        &f32_values(&model.embed_tokens)?,
        cfg.vocab,
        cfg.hidden,
        kept,
    )?;
    let head = match &model.lm_head {
        Linear::Full { .. } if model.config.tie_word_embeddings => LmHead::Tied,
        Linear::Full { weight } => LmHead::Kept(KeptMatrix::new(
            &f32_values(weight)?,
            cfg.vocab,
            cfg.hidden,
            kept,
        )?),
        other => LmHead::Ternary(ternary("lm_head", other)?),
    };
    Ok(DecodeModel::new(
        cfg,
        embed,
        layers,
        f32_values(&model.norm.weight)?,
        head,
    )?)
}

/// The fused loop as a [`Decoder`] for [`crate::bitnet::generate_with`]:
/// `generate` samples, stops and times it exactly as it does the libtorch
/// model. Its cache and scratch are allocated by [`FusedDecoder::new`]; a
/// step copies the logits into the loop's vector (no allocation after the
/// first).
pub struct FusedDecoder<'a> {
    model: &'a DecodeModel,
    state: DecodeState,
    /// The prompt as the kernels' ids (sized once, at prefill).
    ids: Vec<u32>,
}

impl<'a> FusedDecoder<'a> {
    /// A state of `capacity` positions, with scratch for a `prompt_len`-token prefill.
    // pot10: init (allocates the KV cache and scratch once per generation)
    pub fn new(
        model: &'a DecodeModel,
        capacity: i64,
        prompt_len: usize,
    ) -> crate::bitnet::Result<Self> {
        let capacity = usize::try_from(capacity).unwrap_or(0);
        let state = DecodeState::new(model, capacity, prompt_len).map_err(infer_error)?;
        Ok(FusedDecoder {
            model,
            state,
            ids: Vec::with_capacity(prompt_len),
        })
    }

    fn run(&mut self, logits: &mut Vec<f32>) -> crate::bitnet::Result<()> {
        let out = self
            .state
            .forward(self.model, &self.ids)
            .map_err(infer_error)?;
        logits.clear();
        logits.extend_from_slice(out);
        Ok(())
    }
}

fn infer_error(e: bitnet_infer::InferError) -> BitnetError {
    BitnetError::Module {
        module: "fused decode".into(),
        message: e.to_string(),
    }
}

/// Token ids into the kernels' u32 (checked against the vocabulary first).
fn to_u32(ids: &[i64], out: &mut Vec<u32>) {
    out.clear();
    out.extend(ids.iter().map(|&t| u32::try_from(t).unwrap_or(u32::MAX)));
}

impl Decoder for FusedDecoder<'_> {
    fn vocab(&self) -> i64 {
        self.model.config().vocab as i64
    }

    fn capacity(&self) -> i64 {
        self.state.capacity() as i64
    }

    fn prefill(&mut self, prompt: &[i64], logits: &mut Vec<f32>) -> crate::bitnet::Result<()> {
        to_u32(prompt, &mut self.ids);
        self.run(logits)
    }

    fn step(&mut self, token: i64, logits: &mut Vec<f32>) -> crate::bitnet::Result<()> {
        to_u32(&[token], &mut self.ids);
        self.run(logits)
    }
}

/// Where [`fused_decode_model_from_tensors`] reads its tensors from: a
/// borrowed state dict, or one it empties as it goes, so that a load holds
/// the file's tensors and the fused form together only one layer at a time.
pub enum TensorSource<'a> {
    Borrowed(&'a BTreeMap<String, Tensor>),
    Consumed(&'a mut BTreeMap<String, Tensor>),
}

impl TensorSource<'_> {
    fn take(&mut self, name: &str) -> Result<Tensor, FusedError> {
        let t = match self {
            TensorSource::Borrowed(m) => m.get(name).map(Tensor::shallow_clone),
            TensorSource::Consumed(m) => m.remove(name),
        };
        t.ok_or_else(|| unsupported(format!("the file has no tensor `{name}`")))
    }

    /// Drops `name` (and an int8 layer's row scales) once used, when consuming.
    fn release(&mut self, name: &str) {
        if let TensorSource::Consumed(m) = self {
            m.remove(name);
            m.remove(&format!("{name}{}", crate::bitnet::kept::ROW_SCALE_SUFFIX));
        }
    }

    fn map(&self) -> &BTreeMap<String, Tensor> {
        match self {
            TensorSource::Borrowed(m) => m,
            TensorSource::Consumed(m) => m,
        }
    }
}

/// Packed projection `module` of a state dict (u8 codes + `weight_scale`).
// pot10: init (runs once while the model is built at load; a decode step never calls it)
fn ternary_from(
    src: &mut TensorSource,
    module: &str,
    shape: (usize, usize),
    convention: ScaleConvention,
) -> Result<PackedTernaryMatrix, FusedError> {
    let w = src.take(&format!("{module}.weight"))?;
    if w.f_kind()? != Kind::Uint8 {
        return Err(unsupported(format!(
            "`{module}` is stored as {:?}, not packed ternary (u8)",
            w.f_kind()?
        )));
    }
    let s = src.take(&format!("{module}.weight_scale"))?;
    let stored = s
        .f_to_kind(Kind::Float)?
        .f_flatten(0, -1)?
        .f_double_value(&[0])? as f32;
    let bytes = Vec::<u8>::try_from(w.f_contiguous()?.f_flatten(0, -1)?)?;
    drop(w);
    Ok(PackedTernaryMatrix::from_storage(
        &bytes,
        shape.0,
        shape.1,
        convention.decode(stored),
    )?)
}

/// Decoder layer `i` of a state dict in the fused form.
// pot10: init (runs once while the model is built at load; a decode step never calls it)
fn layer_from(
    src: &mut TensorSource,
    i: usize,
    c: &DecodeConfig,
    convention: ScaleConvention,
) -> Result<LayerWeights, FusedError> {
    let p = format!("model.layers.{i}");
    let (h, qd, kvd, f) = (
        c.hidden,
        c.heads * c.head_dim,
        c.kv_heads * c.head_dim,
        c.intermediate,
    );
    let mut t = |m: &str, shape| ternary_from(src, &format!("{p}.{m}"), shape, convention);
    let (q, k, v, o) = (
        t("self_attn.q_proj", (qd, h))?,
        t("self_attn.k_proj", (kvd, h))?,
        t("self_attn.v_proj", (kvd, h))?,
        t("self_attn.o_proj", (h, qd))?,
    );
    let (gate, up, down) = (
        t("mlp.gate_proj", (f, h))?,
        t("mlp.up_proj", (f, h))?,
        t("mlp.down_proj", (h, f))?,
    );
    Ok(LayerWeights {
        input_norm: f32_values(&src.take(&format!("{p}.input_layernorm.weight"))?)?,
        q,
        k,
        v,
        o,
        post_norm: f32_values(&src.take(&format!("{p}.post_attention_layernorm.weight"))?)?,
        gate,
        up,
        down,
    })
}

/// The fused decode form read straight from a packed state dict (the
/// tensors of `packed.safetensors`), without building the libtorch model:
/// ternary layers from their u8 codes, kept layers in the dtype the file
/// stores (int8 codes and row scales, bf16 bits: used as they are) or, for
/// float32 kept layers, as `kept_if_float`. `act` is the file's activation
/// quantization (only per-token int8 runs on the kernels).
// pot10: init (runs once while the model is built at load; a decode step never calls it)
pub fn fused_decode_model_from_tensors(
    config: &Config,
    mut src: TensorSource,
    act: ActQuant,
    kept_if_float: KeptDtype,
) -> Result<DecodeModel, FusedError> {
    if act != ActQuant::INT8 {
        return Err(unsupported(format!(
            "the file quantizes activations as {act:?}; the kernels do per-token int8"
        )));
    }
    let cfg = decode_config(config);
    let convention = ScaleConvention::of_config(config);
    let mut layers = Vec::with_capacity(config.num_hidden_layers as usize);
    for i in 0..config.num_hidden_layers as usize {
        layers.push(layer_from(&mut src, i, &cfg, convention)?);
    }
    let head = if config.tie_word_embeddings {
        LmHead::Tied
    } else if src.map().get("lm_head.weight").map(|t| t.kind()) == Some(Kind::Uint8) {
        LmHead::Ternary(ternary_from(
            &mut src,
            "lm_head",
            (cfg.vocab, cfg.hidden),
            convention,
        )?)
    } else {
        let m = kept_matrix(src.map(), "lm_head.weight", kept_if_float)?;
        src.release("lm_head.weight");
        LmHead::Kept(m)
    };
    let embed = kept_matrix(src.map(), "model.embed_tokens.weight", kept_if_float)?;
    src.release("model.embed_tokens.weight");
    let norm = f32_values(&src.take("model.norm.weight")?)?;
    Ok(DecodeModel::new(cfg, embed, layers, norm, head)?)
}

#[cfg(test)]
mod tests {
    use tch::nn;

    use super::*;
    use crate::bitnet::generation::argmax;
    use crate::bitnet::{convert_to_bitnet, Config, ConvertSpec, KvCache};
    use crate::kernels::KernelBackend;

    fn packed_model(cfg: &Config, seed: i64) -> LlamaModel {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let fp = LlamaModel::new(&vs.root(), cfg).unwrap();
        let bvs = nn::VarStore::new(Device::Cpu);
        let (bit, _) = convert_to_bitnet(&fp, &bvs.root(), &ConvertSpec::default()).unwrap();
        bit.to_packed(&KernelBackend).unwrap()
    }

    /// Largest |a - b| relative to the largest |b|.
    fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
        let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
            / scale
    }

    /// Issue #11: the fused path gives the libtorch packed model's logits
    /// (`forward_cached_last`) on a prompt of odd length and on every greedy
    /// decode step after it, with GQA, tied and untied heads, and picks the
    /// same ids. Tolerance 1e-5 of the logits' scale: the integer
    /// accumulations are the same kernels' and only the float parts' order
    /// of summation differs (RMSNorm mean, softmax, head dot products).
    #[test]
    fn fused_decode_matches_the_libtorch_packed_model() {
        let mut untied = Config::tiny();
        untied.tie_word_embeddings = false;
        let mut tied = Config::tiny();
        tied.tie_word_embeddings = true;
        tied.num_key_value_heads = Some(1); // 4 query heads over 1 kv head
                                            // SmolLM2-135M's layer shape: hidden 576 (not a multiple of the
                                            // kernels' 256-column block), 9 heads over 3, theta 1e5, tied.
        let mut smol = Config::new(300, 576, 1536, 2, 9, 3, 100_000.0, 512);
        smol.tie_word_embeddings = true;
        for (what, cfg) in [
            ("untied, 4/2 heads", untied),
            ("tied, 4/1 heads", tied),
            ("SmolLM2 layer shape", smol),
        ] {
            let model = packed_model(&cfg, 3);
            let fused = fused_decode_model(&model, KeptDtype::F32).unwrap();
            let prompt: Vec<i64> = vec![72, 101, 108, 108, 111, 44, 32]; // 7 tokens
            let mut cache = KvCache::new(&model, 1, 32, Kind::Float).unwrap();
            let mut state = DecodeState::new(&fused, 32, 8).unwrap();
            let mut tokens = Tensor::from_slice(&prompt).view([1, -1]);
            let mut fused_in: Vec<u32> = prompt.iter().map(|&t| t as u32).collect();
            for step in 0..12 {
                let reference =
                    tch::no_grad(|| model.forward_cached_last(&tokens, &mut cache)).unwrap();
                let reference = Vec::<f32>::try_from(reference.flatten(0, -1)).unwrap();
                let ours = state.forward(&fused, &fused_in).unwrap();
                let d = rel_diff(ours, &reference);
                assert!(d <= 1e-5, "{what}, step {step}: relative difference {d}");
                let next = argmax(&reference);
                assert_eq!(argmax(ours), next, "{what}, step {step}: greedy ids differ");
                tokens = Tensor::from_slice(&[next as i64]).view([1, 1]);
                fused_in = vec![next as u32];
            }
            assert_eq!(state.len() as i64, cache.len());
        }
    }

    /// Issue #11: `generate` on the fused path picks the libtorch packed
    /// model's ids (greedy, and sampled with the same seed: one sampler
    /// serves both), stops alike at a full context, and the same seed gives
    /// the same ids twice.
    #[test]
    fn generate_on_the_fused_path_gives_the_libtorch_ids() {
        use crate::bitnet::{
            cache_capacity, generate, generate_with, Flow, GenerateOptions, Generation, Sampler,
            SamplingConfig, StopReason,
        };
        let mut cfg = Config::tiny();
        cfg.num_key_value_heads = Some(1);
        let model = packed_model(&cfg, 11);
        let fused = fused_decode_model(&model, KeptDtype::F32).unwrap();
        let prompt = [72i64, 101, 108, 108, 111, 44, 32];
        let opts = |max_new_tokens, context| GenerateOptions {
            max_new_tokens,
            eos_ids: Vec::new(),
            context,
            kind: Kind::Float,
        };
        let sampled = SamplingConfig {
            temperature: 1.2,
            top_k: Some(40),
            top_p: 0.95,
            repetition_penalty: 1.1,
            seed: 42,
        };
        let go = |lib: bool, s: &SamplingConfig, o: &GenerateOptions| -> Generation {
            let mut sampler = Sampler::new(s.clone()).unwrap();
            let mut cont = |_: i64, _: &[i64]| Ok(Flow::Continue);
            if lib {
                return generate(&model, &prompt, o, &mut sampler, &mut cont).unwrap();
            }
            let mut dec =
                FusedDecoder::new(&fused, cache_capacity(&prompt, o), prompt.len()).unwrap();
            generate_with(&mut dec, &prompt, o, &mut sampler, &mut cont).unwrap()
        };
        for s in [SamplingConfig::default(), sampled.clone()] {
            let reference = go(true, &s, &opts(20, 64));
            let ours = go(false, &s, &opts(20, 64));
            assert_eq!(ours.ids, reference.ids, "{s:?}");
            assert_eq!(ours.ids.len(), 20);
            assert_eq!(ours.decode_steps, 19);
            assert_eq!(go(false, &s, &opts(20, 64)).ids, ours.ids, "same seed");
        }
        let other = SamplingConfig {
            seed: 43,
            ..sampled.clone()
        };
        assert_ne!(
            go(false, &other, &opts(20, 64)).ids,
            go(false, &sampled, &opts(20, 64)).ids,
            "another seed, other ids (temperature 1.2 on a random model)"
        );
        let full = go(false, &SamplingConfig::default(), &opts(100, 11));
        assert_eq!(full.stop, StopReason::ContextFull);
        assert_eq!(full.ids.len(), 4, "7 prompt tokens + 4 fill 11 positions");
    }

    /// Issue #15: the fused form read straight from the packed file's
    /// tensors (kept layers in each stored dtype) is the form built from the
    /// libtorch model with the same kept dtype: same bytes, same logits.
    #[test]
    fn fused_from_the_file_equals_fused_from_the_model_in_every_kept_dtype() {
        use crate::bitnet::kept::compact_kept;
        use crate::bitnet::KeptStorage;
        for tie in [true, false] {
            let mut cfg = Config::tiny();
            cfg.tie_word_embeddings = tie;
            let model = packed_model(&cfg, 5);
            for kept in [KeptStorage::Fp32, KeptStorage::Bf16, KeptStorage::Int8] {
                let mut file: BTreeMap<String, Tensor> = compact_kept(model.named_tensors(), kept)
                    .unwrap()
                    .into_iter()
                    .collect();
                let reference = fused_decode_model(&model, kept.infer_dtype()).unwrap();
                let ours = fused_decode_model_from_tensors(
                    &cfg,
                    TensorSource::Consumed(&mut file),
                    ActQuant::INT8,
                    KeptDtype::F32,
                )
                .unwrap();
                assert!(
                    file.is_empty(),
                    "left unread: {:?}",
                    file.keys().collect::<Vec<_>>()
                );
                assert_eq!(ours.weight_bytes(), reference.weight_bytes());
                assert_eq!(ours.head_form(), reference.head_form());
                let prompt = [3u32, 1, 4, 1, 5, 9, 2];
                let mut a = DecodeState::new(&reference, 16, 8).unwrap();
                let mut b = DecodeState::new(&ours, 16, 8).unwrap();
                let la = a.forward(&reference, &prompt).unwrap().to_vec();
                assert_eq!(
                    b.forward(&ours, &prompt).unwrap(),
                    la.as_slice(),
                    "tie {tie} {kept:?}"
                );
            }
        }
    }

    #[test]
    fn models_the_fused_path_cannot_run_are_refused_with_the_reason() {
        let cfg = Config::tiny();
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let fp = LlamaModel::new(&vs.root(), &cfg).unwrap();
        let err = fused_decode_model(&fp, KeptDtype::F32).unwrap_err();
        assert!(
            err.to_string()
                .contains("`model.layers.0.self_attn.q_proj` is full, not packed ternary"),
            "{err}"
        );
        let mut packed = packed_model(&cfg, 2);
        packed.release_stored_codes().unwrap();
        let err = fused_decode_model(&packed, KeptDtype::F32).unwrap_err();
        assert!(
            err.to_string().contains("holds no stored u8 codes"),
            "{err}"
        );
    }
}
