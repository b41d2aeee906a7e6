//! The LLaMA-family transformer (RMSNorm, RoPE, grouped-query attention, SwiGLU)
//! with HF tensor names, in full-precision, BitLinear or packed form.
//!
//! One struct per layer, tensor paths equal HF checkpoint names
//! (`model.layers.{i}.self_attn.q_proj.weight`, ...), following HF
//! `modeling_llama.py` op for op so that logits match transformers to 1e-4 in
//! fp32 (checked by `tests::hf_parity` against a stored reference). Models built
//! with [`LlamaModel::new`] live in a `tch` `VarStore` (trainable); models built
//! with [`LlamaModel::from_state_dict`] hold plain tensors (inference, packed).

use std::collections::{BTreeMap, BTreeSet};

use tch::{nn, Device, Kind, Tensor};

use super::bitlinear::{BitLinear, Linear};
use super::config::Config;
use super::convert::ConvertSpec;
use super::error::{BitnetError, Result};
use super::packing::{PackedBitLinear, PackedLinear, ScaleConvention, TernaryBackend};
use super::quant::ActQuant;

/// A module that rewrites an attention block's output before the residual add.
///
/// Hook point for Quiet-STaR's mixing head: `attn_out` is the `o_proj` output,
/// `(B, T, C)`, and the result must have the same shape. `Send` only, like tensors.
pub trait AttnOutputMixer: Send {
    fn mix(&self, attn_out: &Tensor) -> Result<Tensor>;
    /// The tensors the mixer holds (shallow clones), so a model counts its
    /// parameters and bytes with the mixers it runs. Mixers of several
    /// layers may share a tensor; the model counts each storage once.
    fn tensors(&self) -> Vec<Tensor> {
        Vec::new()
    }
}

/// Bytes of a tensor's elements.
fn tensor_bytes(t: &Tensor) -> Result<i64> {
    Ok(t.numel() as i64 * t.f_kind()?.elt_size_in_bytes() as i64)
}

/// HF `LlamaRMSNorm`: normalise in f32, cast back, then scale.
#[derive(Debug)]
pub struct RmsNorm {
    pub weight: Tensor, // (C,)
    pub eps: f64,
}

impl RmsNorm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        debug_assert!(self.eps > 0.0, "RMSNorm eps {}", self.eps);
        debug_assert_eq!(
            x.size().last(),
            self.weight.size().last(),
            "(.., C) vs (C,)"
        );
        let kind = x.f_kind()?;
        let xf = x.f_to_kind(Kind::Float)?;
        let var = xf
            .f_pow_tensor_scalar(2)?
            .f_mean_dim(-1, true, Kind::Float)?; // (B, T, 1)
        let normed = xf
            .f_mul(&var.f_add_scalar(self.eps)?.f_rsqrt()?)?
            .f_to_kind(kind)?;
        Ok(self.weight.f_mul(&normed)?)
    }
}

/// cos/sin tables of default RoPE (HF `LlamaRotaryEmbedding`, rotate-half form).
#[derive(Debug)]
pub struct Rotary {
    inv_freq: Tensor, // (D/2,) f32
}

impl Rotary {
    pub fn new(cfg: &Config, device: Device) -> Result<Self> {
        let dim = cfg.head_dim();
        debug_assert!(dim > 0, "head_dim {dim}");
        // inv_freq = 1 / theta^(arange(0, D, 2) / D), computed in f32 as HF does.
        let exponent = Tensor::f_arange_start_step(0, dim, 2, (Kind::Int64, device))?
            .f_to_kind(Kind::Float)?
            .f_div_scalar(dim as f64)?;
        let inv_freq = Tensor::f_pow_scalar(cfg.rope_theta(), &exponent)?.f_reciprocal()?;
        debug_assert_eq!(inv_freq.size(), [(dim + 1) / 2]); // (D/2,)
        Ok(Rotary { inv_freq })
    }

    /// `(cos, sin)`, each `(T, D)` in `kind`, for positions `start..start+T`.
    pub fn cos_sin(&self, start: i64, t: i64, kind: Kind) -> Result<(Tensor, Tensor)> {
        debug_assert!(start >= 0 && t >= 0, "positions {start}..{start}+{t}");
        let pos = Tensor::f_arange_start(start, start + t, (Kind::Float, self.inv_freq.device()))?;
        let freqs = pos.f_unsqueeze(-1)?.f_mul(&self.inv_freq.f_unsqueeze(0)?)?; // (T, D/2)
        let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?; // (T, D)
        debug_assert_eq!(emb.size().first(), Some(&t));
        Ok((emb.f_cos()?.f_to_kind(kind)?, emb.f_sin()?.f_to_kind(kind)?))
    }
}

fn rotate_half(x: &Tensor) -> Result<Tensor> {
    debug_assert!(x.dim() >= 1, "rotate_half of a scalar");
    let d = x.size().last().copied().unwrap_or(0);
    let x1 = x.f_narrow(-1, 0, d / 2)?;
    let x2 = x.f_narrow(-1, d / 2, d - d / 2)?;
    let rotated = Tensor::f_cat(&[&x2.f_neg()?, &x1], -1)?;
    debug_assert_eq!(rotated.size(), x.size());
    Ok(rotated)
}

fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    // x (B, H, T, D); cos/sin (T, D) broadcast over B, H
    debug_assert_eq!(x.size().last(), cos.size().last(), "head_dim of x and cos");
    debug_assert_eq!(cos.size(), sin.size());
    Ok(x.f_mul(cos)?.f_add(&rotate_half(x)?.f_mul(sin)?)?)
}

/// Grouped-query self-attention with a causal mask.
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub num_heads: i64,
    pub num_kv_heads: i64,
    pub head_dim: i64,
    /// Optional rewrite of the `o_proj` output (Quiet-STaR mixing head).
    pub mixer: Option<Box<dyn AttnOutputMixer>>,
}

impl std::fmt::Debug for Attention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attention")
            .field("q_proj", &self.q_proj)
            .field("num_heads", &self.num_heads)
            .field("num_kv_heads", &self.num_kv_heads)
            .field("mixer", &self.mixer.is_some())
            .finish()
    }
}

impl Attention {
    /// Self-attention over `x` alone (positions `0..T`, causal).
    pub fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        self.forward_cached(x, cos, sin, None)
    }

    /// Self-attention of `x`, `(B, T, C)` at positions `start..start+T`
    /// (`cos`/`sin` are those positions' rows), over the cached keys and
    /// values of positions `0..start` plus its own. With `cache`, this
    /// block's keys and values are written into it at `start..start+T`
    /// (`start` = the cache's length before this forward); without, `start`
    /// is 0 and nothing is kept. One code path for both, so cached decoding
    /// computes what the full forward computes.
    pub fn forward_cached(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: Option<(&mut LayerCache, i64)>,
    ) -> Result<Tensor> {
        let (b, t) = match x.size().as_slice() {
            [b, t, _] => (*b, *t),
            other => {
                return Err(BitnetError::invalid(
                    "attention input",
                    format!("expected (B, T, C), got {other:?}"),
                ))
            }
        };
        let (h, kv) = (self.num_heads, self.num_kv_heads);
        // Config validation guarantees whole query groups per kv head.
        debug_assert!(kv > 0 && h % kv == 0, "{h} heads over {kv} kv heads");
        let (q, k, v) = self.project_qkv(x, b, t, cos, sin)?;
        let (k, v, mask) = match cache {
            None => (k, v, AttnMask::Causal),
            Some((c, start)) => with_history(c, start, t, &k, &v, x.device())?,
        };
        let y = if h != kv && t == 1 && matches!(mask, AttnMask::None) {
            self.grouped_decode(&q, &k, &v, b)?
        } else {
            self.attend(&q, k, v, &mask, b, t)?
        };
        debug_assert_eq!(y.size(), [b, t, h * self.head_dim]); // (B, T, H*D)
        let out = self.o_proj.forward(&y)?; // (B, T, C)
        match &self.mixer {
            Some(m) => m.mix(&out),
            None => Ok(out),
        }
    }

    /// Queries `(B, H, T, D)` and keys `(B, KV, T, D)` with RoPE applied,
    /// values `(B, KV, T, D)`, of `x` `(B, T, C)`.
    fn project_qkv(
        &self,
        x: &Tensor,
        b: i64,
        t: i64,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (h, kv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        debug_assert!(h > 0 && kv > 0 && d > 0, "validated positive");
        let q = self
            .q_proj
            .forward(x)?
            .f_view([b, t, h, d])?
            .f_transpose(1, 2)?; // (B, H, T, D)
        let k = self
            .k_proj
            .forward(x)?
            .f_view([b, t, kv, d])?
            .f_transpose(1, 2)?; // (B, KV, T, D)
        let v = self
            .v_proj
            .forward(x)?
            .f_view([b, t, kv, d])?
            .f_transpose(1, 2)?; // (B, KV, T, D)
        let q = apply_rope(&q, cos, sin)?;
        let k = apply_rope(&k, cos, sin)?;
        debug_assert_eq!(q.size(), [b, h, t, d]);
        Ok((q, k, v))
    }

    /// One new token over a history (decode) with grouped-query attention:
    /// the h/kv query heads of a kv head become h/kv query rows of that
    /// head, so the cached keys and values are read in place instead of
    /// being copied h/kv times per step (`repeat_kv` in [`Self::attend`]).
    /// No mask: every row sees every cached position. Same sums as the
    /// repeated form. Returns `(B, 1, H*D)`, head-major like `attend`.
    fn grouped_decode(&self, q: &Tensor, k: &Tensor, v: &Tensor, b: i64) -> Result<Tensor> {
        let (h, kv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        debug_assert!(kv > 0 && h % kv == 0, "{h} heads over {kv} kv heads");
        debug_assert_eq!(q.size(), [b, h, 1, d], "one new token");
        let g = h / kv;
        let qg = q.f_reshape([b, kv, g, d])?; // (B, KV, G, D): heads kv*G..kv*G+G
        let y = Tensor::f_scaled_dot_product_attention::<Tensor>(
            &qg, k, v, None, 0.0, false, None, false,
        )?; // (B, KV, G, D)
        Ok(y.f_reshape([b, 1, h * d])?) // (B, 1, H*D)
    }

    /// Attention of queries `(B, H, T, D)` over keys and values
    /// `(B, KV, S, D)` (repeated to H heads when KV < H) under `mask`;
    /// returns `(B, T, H*D)`.
    fn attend(
        &self,
        q: &Tensor,
        mut k: Tensor,
        mut v: Tensor,
        mask: &AttnMask,
        b: i64,
        t: i64,
    ) -> Result<Tensor> {
        let (h, kv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        debug_assert!(kv > 0 && h % kv == 0, "{h} heads over {kv} kv heads");
        if h != kv {
            // HF `repeat_kv`: each kv head serves h/kv consecutive query heads.
            k = k.f_repeat_interleave_self_int(h / kv, 1, None)?;
            v = v.f_repeat_interleave_self_int(h / kv, 1, None)?;
        }
        let (attn_mask, is_causal) = match mask {
            AttnMask::Causal => (None, true),
            AttnMask::None => (None, false),
            AttnMask::Explicit(m) => (Some(m), false),
        };
        let y = Tensor::f_scaled_dot_product_attention(
            q, &k, &v, attn_mask, 0.0, is_causal, None, false,
        )?; // (B, H, T, D)
        debug_assert_eq!(y.size(), [b, h, t, d]);
        Ok(y.f_transpose(1, 2)?.f_reshape([b, t, h * d])?) // (B, T, H*D)
    }
}

/// Writes this block's keys and values `(B, KV, T, D)` into the layer's
/// cache at `start..start+T` and returns the keys and values attended to,
/// `(B, KV, S, D)` with S = start + T, and the mask: causal from position 0
/// for a fresh sequence, none for one new token (it sees every cached
/// position), explicit when T > 1 new tokens follow a history (`is_causal`
/// would align the triangle to the top-left).
fn with_history(
    c: &mut LayerCache,
    start: i64,
    t: i64,
    k: &Tensor,
    v: &Tensor,
    device: Device,
) -> Result<(Tensor, Tensor, AttnMask)> {
    debug_assert!(start >= 0 && t >= 0, "start {start}, {t} new positions");
    debug_assert_eq!(k.size(), v.size(), "keys and values (B, KV, T, D)");
    c.write(start, k, v)?;
    let (k_all, v_all) = c.upto(start + t)?; // (B, KV, S, D)
    let mask = if start == 0 {
        AttnMask::Causal
    } else if t == 1 {
        AttnMask::None
    } else {
        AttnMask::Explicit(causal_mask_from(start, t, device)?)
    };
    Ok((k_all, v_all, mask))
}

/// Which attention mask a forward needs.
enum AttnMask {
    /// Lower-triangular from position 0 (`is_causal`).
    Causal,
    /// Every key visible (one new token over its history).
    None,
    /// Query `i` (position `start + i`) sees keys `0..=start + i`; bool `(T, S)`.
    Explicit(Tensor),
}

/// Bool mask `(T, start + T)`: true where query `i` may attend key `j`, i.e.
/// `j <= start + i`.
fn causal_mask_from(start: i64, t: i64, device: Device) -> Result<Tensor> {
    let keys = Tensor::f_arange(start + t, (Kind::Int64, device))?.f_unsqueeze(0)?; // (1, S)
    let queries =
        Tensor::f_arange_start(start, start + t, (Kind::Int64, device))?.f_unsqueeze(1)?; // (T, 1)
    Ok(keys.f_le_tensor(&queries)?)
}

/// One layer's keys and values for every position seen so far, in
/// buffers preallocated to the cache's capacity.
#[derive(Debug)]
pub struct LayerCache {
    k: Tensor, // (B, KV, capacity, D), RoPE already applied
    v: Tensor, // (B, KV, capacity, D)
}

impl LayerCache {
    /// Copies `k`/`v`, `(B, KV, T, D)`, into positions `start..start+T`.
    fn write(&mut self, start: i64, k: &Tensor, v: &Tensor) -> Result<()> {
        let t = k.size()[2];
        self.k.f_narrow(2, start, t)?.f_copy_(k)?;
        self.v.f_narrow(2, start, t)?.f_copy_(v)?;
        Ok(())
    }

    /// Views of positions `0..len` (no copy).
    fn upto(&self, len: i64) -> Result<(Tensor, Tensor)> {
        Ok((self.k.f_narrow(2, 0, len)?, self.v.f_narrow(2, 0, len)?))
    }
}

/// The KV cache of a [`LlamaModel`]: every layer's keys and values, and the
/// RoPE tables, preallocated for `capacity` positions so that a decode step
/// writes into existing buffers instead of growing them (HF's
/// `StaticCache`). Grouped-query aware: it holds `num_key_value_heads`
/// heads, not the repeated query heads.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    cos: Tensor, // (capacity, D)
    sin: Tensor, // (capacity, D)
    len: i64,
    capacity: i64,
    batch: i64,
    kind: Kind,
}

impl KvCache {
    /// An empty cache of `capacity` positions for `batch` sequences of
    /// `model`, in `kind` (the dtype its activations run in) on its device.
    pub fn new(model: &LlamaModel, batch: i64, capacity: i64, kind: Kind) -> Result<Self> {
        if batch < 1 || capacity < 1 {
            return Err(BitnetError::invalid(
                "KvCache::new",
                format!("batch ({batch}) and capacity ({capacity}) must be at least 1"),
            ));
        }
        let cfg = &model.config;
        let device = model.embed_tokens.device();
        let shape = [batch, cfg.num_kv_heads(), capacity, cfg.head_dim()];
        let mut layers = Vec::with_capacity(model.layers.len());
        for _ in &model.layers {
            layers.push(LayerCache {
                k: Tensor::f_zeros(shape, (kind, device))?,
                v: Tensor::f_zeros(shape, (kind, device))?,
            });
        }
        let (cos, sin) = model.rotary.cos_sin(0, capacity, kind)?;
        Ok(KvCache {
            layers,
            cos,
            sin,
            len: 0,
            capacity,
            batch,
            kind,
        })
    }

    /// Positions held.
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the buffers have room for.
    pub fn capacity(&self) -> i64 {
        self.capacity
    }

    /// Forgets every position (the buffers are kept for the next sequence).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Drops positions `len..` (e.g. to time the same decode step again).
    pub fn truncate(&mut self, len: i64) {
        self.len = self.len.min(len.max(0));
    }

    /// Bytes of the key/value buffers.
    pub fn bytes(&self) -> i64 {
        self.layers
            .iter()
            .map(|l| 2 * l.k.numel() as i64 * self.kind.elt_size_in_bytes() as i64)
            .sum()
    }
}

/// SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
#[derive(Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let g = self.gate_proj.forward(x)?.f_silu()?; // (B, T, F)
        let u = self.up_proj.forward(x)?; // (B, T, F)
        debug_assert_eq!(g.size(), u.size());
        let y = self.down_proj.forward(&g.f_mul(&u)?)?; // (B, T, C)
        debug_assert_eq!(y.size(), x.size());
        Ok(y)
    }
}

/// One pre-norm decoder block.
#[derive(Debug)]
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

impl DecoderLayer {
    pub fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        self.forward_cached(x, cos, sin, None)
    }

    /// [`Self::forward`] at positions `start..` over a cached history (see
    /// [`Attention::forward_cached`]).
    pub fn forward_cached(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: Option<(&mut LayerCache, i64)>,
    ) -> Result<Tensor> {
        let h = x.f_add(&self.self_attn.forward_cached(
            &self.input_layernorm.forward(x)?,
            cos,
            sin,
            cache,
        )?)?;
        // Residual stream keeps (B, T, C).
        debug_assert_eq!(h.size(), x.size());
        debug_assert_eq!(x.dim(), 3, "(B, T, C)");
        Ok(h.f_add(
            &self
                .mlp
                .forward(&self.post_attention_layernorm.forward(&h)?)?,
        )?)
    }

    fn linears(&self) -> [(&'static str, &Linear); 7] {
        [
            ("self_attn.q_proj", &self.self_attn.q_proj),
            ("self_attn.k_proj", &self.self_attn.k_proj),
            ("self_attn.v_proj", &self.self_attn.v_proj),
            ("self_attn.o_proj", &self.self_attn.o_proj),
            ("mlp.gate_proj", &self.mlp.gate_proj),
            ("mlp.up_proj", &self.mlp.up_proj),
            ("mlp.down_proj", &self.mlp.down_proj),
        ]
    }

    fn linears_mut(&mut self) -> [&mut Linear; 7] {
        [
            &mut self.self_attn.q_proj,
            &mut self.self_attn.k_proj,
            &mut self.self_attn.v_proj,
            &mut self.self_attn.o_proj,
            &mut self.mlp.gate_proj,
            &mut self.mlp.up_proj,
            &mut self.mlp.down_proj,
        ]
    }
}

/// What [`LlamaModel::forward_with`] returns besides logits.
#[derive(Debug, Default, Clone, Copy)]
pub struct ForwardOptions {
    /// Collect the embedding output and the output of every layer.
    pub output_hidden_states: bool,
}

/// Outputs of a forward pass.
#[derive(Debug)]
pub struct ModelOutput {
    /// `(B, T, V)`.
    pub logits: Tensor,
    /// Output of the last layer before the final norm, `(B, T, C)`.
    pub last_hidden_pre_norm: Tensor,
    /// When requested: `[embeddings, after layer 0, ..., after layer L-1]`, each `(B, T, C)`.
    pub hidden_states: Vec<Tensor>,
}

/// A LLaMA-family causal language model.
#[derive(Debug)]
pub struct LlamaModel {
    pub config: Config,
    pub embed_tokens: Tensor, // (V, C)
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    pub lm_head: Linear,
    pub rotary: Rotary,
}

/// Shapes of every tensor a checkpoint for `cfg` must provide (HF names, full precision).
/// `lm_head.weight` is omitted when embeddings are tied.
pub fn expected_tensor_shapes(cfg: &Config) -> Vec<(String, Vec<i64>)> {
    let (c, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (h, kv, d) = (cfg.num_attention_heads, cfg.num_kv_heads(), cfg.head_dim());
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, c])];
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        out.extend([
            (format!("{p}.input_layernorm.weight"), vec![c]),
            (format!("{p}.self_attn.q_proj.weight"), vec![h * d, c]),
            (format!("{p}.self_attn.k_proj.weight"), vec![kv * d, c]),
            (format!("{p}.self_attn.v_proj.weight"), vec![kv * d, c]),
            (format!("{p}.self_attn.o_proj.weight"), vec![c, h * d]),
            (format!("{p}.post_attention_layernorm.weight"), vec![c]),
            (format!("{p}.mlp.gate_proj.weight"), vec![f, c]),
            (format!("{p}.mlp.up_proj.weight"), vec![f, c]),
            (format!("{p}.mlp.down_proj.weight"), vec![c, f]),
        ]);
    }
    out.push(("model.norm.weight".to_string(), vec![c]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![v, c]));
    }
    // embed + 9 per layer + final norm (+ untied head), all 1-D or 2-D.
    let head = usize::from(!cfg.tie_word_embeddings);
    debug_assert_eq!(
        out.len(),
        2 + 9 * cfg.num_hidden_layers.max(0) as usize + head
    );
    debug_assert!(out.iter().all(|(_, s)| (1..=2).contains(&s.len())));
    out
}

/// Checks that `tensors` holds every tensor of `cfg` with the right shape.
/// Packed (u8) linear weights are checked against their packed shape.
pub fn check_state_dict(cfg: &Config, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let expected = expected_tensor_shapes(cfg);
    let missing: Vec<&String> = expected
        .iter()
        .map(|(n, _)| n)
        .filter(|n| !tensors.contains_key(*n))
        .collect();
    if let Some(first) = missing.first() {
        return Err(BitnetError::MissingTensor {
            name: (*first).clone(),
            missing: missing.len(),
        });
    }
    for (name, shape) in &expected {
        let t = &tensors[name];
        let found = t.size();
        let want = if t.f_kind()? == Kind::Uint8 && shape.len() == 2 {
            vec![(shape[0] + 3) / 4, shape[1]]
        } else {
            shape.clone()
        };
        if found != want {
            return Err(BitnetError::ShapeMismatch {
                name: name.clone(),
                expected: want,
                found,
            });
        }
    }
    Ok(())
}

/// Float dtypes a checkpoint tensor may have.
pub fn is_float_kind(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
    )
}

/// A linear of [`LlamaModel::new_bitnet`]'s model: the latent `weight` as
/// BitLinear when `spec` converts `module`, else full precision.
fn build_trainable_linear(weight: Tensor, spec: Option<&ConvertSpec>, module: &str) -> Linear {
    match spec {
        Some(s) if s.should_convert(module) => Linear::Bit(BitLinear {
            weight,
            quant: s.quant,
        }),
        _ => Linear::Full { weight },
    }
}

/// A trainable RMSNorm of `hidden_size`, initialised to ones.
fn build_trainable_norm(p: &nn::Path, cfg: &Config) -> Result<RmsNorm> {
    debug_assert!(cfg.hidden_size > 0, "validated config");
    debug_assert!(cfg.rms_norm_eps > 0.0, "validated config");
    Ok(RmsNorm {
        weight: p.f_var("weight", &[cfg.hidden_size], nn::Init::Const(1.0))?,
        eps: cfg.rms_norm_eps,
    })
}

/// Decoder layer `i` of a trainable model under `lp` (`model.layers.{i}`).
fn build_trainable_layer(
    lp: &nn::Path,
    i: i64,
    cfg: &Config,
    spec: Option<&ConvertSpec>,
) -> Result<DecoderLayer> {
    let (c, f) = (cfg.hidden_size, cfg.intermediate_size);
    let (h, kv, d) = (cfg.num_attention_heads, cfg.num_kv_heads(), cfg.head_dim());
    debug_assert!(i >= 0 && i < cfg.num_hidden_layers, "layer {i}");
    debug_assert!(kv > 0 && h % kv == 0, "validated config");
    let make = |sub: &str, module: &str, out: i64, inf: i64| -> Result<Linear> {
        let weight = Linear::full_var(&(lp / sub / module), out, inf)?;
        let name = format!("model.layers.{i}.{sub}.{module}");
        Ok(build_trainable_linear(weight, spec, &name))
    };
    Ok(DecoderLayer {
        input_layernorm: build_trainable_norm(&(lp / "input_layernorm"), cfg)?,
        self_attn: Attention {
            q_proj: make("self_attn", "q_proj", h * d, c)?,
            k_proj: make("self_attn", "k_proj", kv * d, c)?,
            v_proj: make("self_attn", "v_proj", kv * d, c)?,
            o_proj: make("self_attn", "o_proj", c, h * d)?,
            num_heads: h,
            num_kv_heads: kv,
            head_dim: d,
            mixer: None,
        },
        post_attention_layernorm: build_trainable_norm(&(lp / "post_attention_layernorm"), cfg)?,
        mlp: Mlp {
            gate_proj: make("mlp", "gate_proj", f, c)?,
            up_proj: make("mlp", "up_proj", f, c)?,
            down_proj: make("mlp", "down_proj", c, f)?,
        },
    })
}

/// What [`LlamaModel::from_state_dict`] builds its layers from.
struct StateDict<'a> {
    cfg: &'a Config,
    tensors: &'a BTreeMap<String, Tensor>,
    act: ActQuant,
    backend: &'a dyn TernaryBackend,
    device: Device,
    convention: ScaleConvention,
}

impl StateDict<'_> {
    /// Tensor `name` on the model's device, detached.
    fn load_tensor(&self, name: &str) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| BitnetError::MissingTensor {
                name: name.to_string(),
                missing: 1,
            })?;
        Ok(t.f_to_device(self.device)?.f_detach()?)
    }

    /// The linear `module`: full precision for a float weight, packed for
    /// a u8 weight with its `weight_scale`.
    fn load_linear(&self, module: &str, out: i64, inf: i64) -> Result<Linear> {
        let w = self.load_tensor(&format!("{module}.weight"))?;
        if w.f_kind()? == Kind::Int8 {
            return Ok(Linear::Full {
                weight: self.load_kept(&format!("{module}.weight"))?,
            });
        }
        if w.f_kind()? != Kind::Uint8 {
            return Ok(Linear::Full { weight: w });
        }
        let scale_name = format!("{module}.weight_scale");
        let s = self.load_tensor(&scale_name)?;
        let stored = s.f_to_kind(Kind::Float)?.f_flatten(0, -1)?;
        if stored.numel() != 1 {
            return Err(BitnetError::ShapeMismatch {
                name: scale_name,
                expected: vec![1],
                found: s.size(),
            });
        }
        let stored = stored.f_double_value(&[0])? as f32;
        if !(stored.is_finite() && stored > 0.0) {
            return Err(BitnetError::invalid(
                scale_name,
                format!("weight_scale {stored} must be finite and positive"),
            ));
        }
        let packed = PackedLinear::new(w, self.convention.decode(stored), out, inf)?;
        Ok(Linear::Packed(PackedBitLinear::new(
            packed,
            self.act,
            self.backend,
        )?))
    }

    /// A kept layer (embedding, float LM head) as a float tensor of the
    /// final norm's kind: int8 kept layers (`super::kept`) are dequantized,
    /// since libtorch computes in float.
    fn load_kept(&self, name: &str) -> Result<Tensor> {
        let kind = self.load_tensor("model.norm.weight")?.f_kind()?;
        Ok(super::kept::kept_to_float(self.tensors, name, kind)?
            .f_to_device(self.device)?
            .f_detach()?)
    }

    fn load_norm(&self, name: &str) -> Result<RmsNorm> {
        Ok(RmsNorm {
            weight: self.load_tensor(name)?,
            eps: self.cfg.rms_norm_eps,
        })
    }

    /// Decoder layer `i` (`model.layers.{i}.*`).
    fn load_layer(&self, i: i64) -> Result<DecoderLayer> {
        let cfg = self.cfg;
        let (c, f) = (cfg.hidden_size, cfg.intermediate_size);
        let (h, kv, d) = (cfg.num_attention_heads, cfg.num_kv_heads(), cfg.head_dim());
        debug_assert!(i >= 0 && i < cfg.num_hidden_layers, "layer {i}");
        debug_assert!(kv > 0 && h % kv == 0, "validated config");
        let p = format!("model.layers.{i}");
        Ok(DecoderLayer {
            input_layernorm: self.load_norm(&format!("{p}.input_layernorm.weight"))?,
            self_attn: Attention {
                q_proj: self.load_linear(&format!("{p}.self_attn.q_proj"), h * d, c)?,
                k_proj: self.load_linear(&format!("{p}.self_attn.k_proj"), kv * d, c)?,
                v_proj: self.load_linear(&format!("{p}.self_attn.v_proj"), kv * d, c)?,
                o_proj: self.load_linear(&format!("{p}.self_attn.o_proj"), c, h * d)?,
                num_heads: h,
                num_kv_heads: kv,
                head_dim: d,
                mixer: None,
            },
            post_attention_layernorm: self
                .load_norm(&format!("{p}.post_attention_layernorm.weight"))?,
            mlp: Mlp {
                gate_proj: self.load_linear(&format!("{p}.mlp.gate_proj"), f, c)?,
                up_proj: self.load_linear(&format!("{p}.mlp.up_proj"), f, c)?,
                down_proj: self.load_linear(&format!("{p}.mlp.down_proj"), c, f)?,
            },
        })
    }
}

impl LlamaModel {
    /// A trainable model in `p`'s `VarStore`, all linears full precision.
    pub fn new(p: &nn::Path, cfg: &Config) -> Result<Self> {
        Self::build(p, cfg, None)
    }

    /// A trainable model whose linears selected by `spec` are BitLinear (latent weights).
    pub fn new_bitnet(p: &nn::Path, cfg: &Config, spec: &ConvertSpec) -> Result<Self> {
        spec.validate()?;
        Self::build(p, cfg, Some(spec))
    }

    fn build(p: &nn::Path, cfg: &Config, spec: Option<&ConvertSpec>) -> Result<Self> {
        cfg.validate()?;
        let (c, v) = (cfg.hidden_size, cfg.vocab_size);
        let m = p / "model";
        let embed_tokens = (&m / "embed_tokens").f_var(
            "weight",
            &[v, c],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        )?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers as usize);
        for i in 0..cfg.num_hidden_layers {
            layers.push(build_trainable_layer(&(&m / "layers" / i), i, cfg, spec)?);
        }
        let norm_f = build_trainable_norm(&(&m / "norm"), cfg)?;
        let lm_head = if cfg.tie_word_embeddings {
            build_trainable_linear(embed_tokens.shallow_clone(), spec, "lm_head")
        } else {
            build_trainable_linear(Linear::full_var(&(p / "lm_head"), v, c)?, spec, "lm_head")
        };
        Ok(LlamaModel {
            config: cfg.clone(),
            embed_tokens,
            layers,
            norm: norm_f,
            lm_head,
            rotary: Rotary::new(cfg, p.device())?,
        })
    }

    /// An inference model from plain tensors (no `VarStore`): float linear weights
    /// become full-precision layers, u8 weights with a `weight_scale` (HF BitNet
    /// layout, see [`super::packing`]) become packed layers using `backend`. The
    /// meaning of `weight_scale` follows `cfg`'s HF `quantization_config`
    /// ([`ScaleConvention::of_config`]).
    pub fn from_state_dict(
        cfg: &Config,
        tensors: &BTreeMap<String, Tensor>,
        act: ActQuant,
        backend: &dyn TernaryBackend,
        device: Device,
    ) -> Result<Self> {
        cfg.validate()?;
        check_state_dict(cfg, tensors)?;
        let sd = StateDict {
            cfg,
            tensors,
            act,
            backend,
            device,
            convention: ScaleConvention::of_config(cfg),
        };
        let (c, v) = (cfg.hidden_size, cfg.vocab_size);
        let embed_tokens = sd.load_kept("model.embed_tokens.weight")?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers as usize);
        for i in 0..cfg.num_hidden_layers {
            layers.push(sd.load_layer(i)?);
        }
        let lm_head = if cfg.tie_word_embeddings {
            Linear::Full {
                weight: embed_tokens.shallow_clone(),
            }
        } else {
            sd.load_linear("lm_head", v, c)?
        };
        Ok(LlamaModel {
            config: cfg.clone(),
            embed_tokens,
            norm: sd.load_norm("model.norm.weight")?,
            layers,
            lm_head,
            rotary: Rotary::new(cfg, device)?,
        })
    }

    /// Every linear layer with its HF module name (`model.layers.0.self_attn.q_proj`, `lm_head`).
    pub fn linears(&self) -> Vec<(String, &Linear)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            for (n, lin) in l.linears() {
                out.push((format!("model.layers.{i}.{n}"), lin));
            }
        }
        out.push(("lm_head".to_string(), &self.lm_head));
        out
    }

    /// All tensors under their checkpoint names (shallow clones; packed layers give
    /// `weight` u8 and `weight_scale`). Tied `lm_head` is omitted, as HF does.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed_tokens.shallow_clone(),
        )];
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((
                format!("{p}.input_layernorm.weight"),
                l.input_layernorm.weight.shallow_clone(),
            ));
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                l.post_attention_layernorm.weight.shallow_clone(),
            ));
            for (n, lin) in l.linears() {
                for (suffix, t) in lin.named_tensors() {
                    out.push((format!("{p}.{n}.{suffix}"), t));
                }
            }
        }
        out.push((
            "model.norm.weight".to_string(),
            self.norm.weight.shallow_clone(),
        ));
        if !self.config.tie_word_embeddings {
            for (suffix, t) in self.lm_head.named_tensors() {
                out.push((format!("lm_head.{suffix}"), t));
            }
        }
        out
    }

    /// The attention-output mixers' tensors (Quiet-STaR thoughts), each
    /// storage once even when several layers share it.
    fn mixer_tensors(&self) -> Vec<Tensor> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for l in &self.layers {
            if let Some(m) = &l.self_attn.mixer {
                for t in m.tensors() {
                    if seen.insert(t.data_ptr() as usize) {
                        out.push(t);
                    }
                }
            }
        }
        out
    }

    /// Exact bytes of the weights in their stored form (packed layers: u8
    /// codes + one f32 scale; everything else, attached mixers included:
    /// numel x dtype size). Tied embeddings count once.
    pub fn weight_bytes(&self) -> Result<i64> {
        let mut total = 0i64;
        for (name, t) in self.named_tensors() {
            total += match self.packed_layer(&name) {
                Some(p) => p.weights.weight_bytes() * i64::from(name.ends_with(".weight")),
                None => tensor_bytes(&t)?,
            };
        }
        for t in self.mixer_tensors() {
            total += tensor_bytes(&t)?;
        }
        debug_assert!(total > 0, "a model has at least its embeddings");
        Ok(total)
    }

    /// Bytes the model holds in memory for its weights, every copy counted:
    /// the stored codes of packed layers (unless released) and the copy
    /// their backend built (kernel layout or unpacked codes), plus every
    /// full-precision tensor and attached mixer. At least `weight_bytes`
    /// whenever the backend keeps a full copy of each layer.
    pub fn resident_weight_bytes(&self) -> Result<i64> {
        let mut total = 0i64;
        for (name, t) in self.named_tensors() {
            match self.packed_layer(&name) {
                Some(p) if name.ends_with(".weight") => total += p.resident_bytes(),
                Some(_) => {} // the scale, counted in resident_bytes
                None => total += tensor_bytes(&t)?,
            }
        }
        for t in self.mixer_tensors() {
            total += tensor_bytes(&t)?;
        }
        Ok(total)
    }

    /// Parameters of the model as it runs: one per weight of every linear
    /// layer in its logical (unpacked) shape, embeddings and norms, and the
    /// attached mixers. Packed layers' scales are not counted.
    pub fn parameter_count(&self) -> i64 {
        let mut total = self.embed_tokens.numel() as i64 + self.norm.weight.numel() as i64;
        for (_, l) in self.linears() {
            total += l.num_parameters();
        }
        if self.config.tie_word_embeddings {
            total -= self.lm_head.num_parameters();
        }
        for l in &self.layers {
            total += l.input_layernorm.weight.numel() as i64
                + l.post_attention_layernorm.weight.numel() as i64;
        }
        total
            + self
                .mixer_tensors()
                .iter()
                .map(|t| t.numel() as i64)
                .sum::<i64>()
    }

    /// Drops the stored codes of every packed layer (their backends hold
    /// their own copy), for a model used only for inference; see
    /// [`PackedBitLinear::release_stored_codes`].
    pub fn release_stored_codes(&mut self) -> Result<()> {
        for l in &mut self.layers {
            for lin in l.linears_mut() {
                if let Linear::Packed(p) = lin {
                    p.release_stored_codes()?;
                }
            }
        }
        if let Linear::Packed(p) = &mut self.lm_head {
            p.release_stored_codes()?;
        }
        Ok(())
    }

    /// Stores every full-precision linear weight (the LM head included) in
    /// `kind`, for a frozen model such as a distillation teacher: its
    /// matmuls then run in `kind` (see `bitlinear::matmul_t`) while the
    /// embeddings, norms and residual stream keep their dtype. A tied head
    /// gets its own copy in `kind`.
    pub fn full_linears_to_kind(&mut self, kind: Kind) -> Result<()> {
        let cast = |lin: &mut Linear| -> Result<()> {
            if let Linear::Full { weight } = lin {
                *weight = weight.f_detach()?.f_to_kind(kind)?;
            }
            Ok(())
        };
        for l in &mut self.layers {
            for lin in l.linears_mut() {
                cast(lin)?;
            }
        }
        cast(&mut self.lm_head)
    }

    /// The packed layer a checkpoint tensor name belongs to, if any.
    fn packed_layer(&self, tensor_name: &str) -> Option<&PackedBitLinear> {
        let module = tensor_name
            .strip_suffix(".weight_scale")
            .or_else(|| tensor_name.strip_suffix(".weight"))?;
        self.linears()
            .into_iter()
            .find(|(n, _)| n == module)
            .and_then(|(_, l)| match l {
                Linear::Packed(p) => Some(p),
                _ => None,
            })
    }

    /// Copies `tensors` into this model's weights (dtype/device converted).
    ///
    /// Everything is checked first (missing tensors, shapes), so on error the model
    /// is unchanged: never a partially loaded model. Returns the names in `tensors`
    /// that the model does not use. Packed models are built with
    /// [`LlamaModel::from_state_dict`] instead.
    pub fn load_state_dict(&mut self, tensors: &BTreeMap<String, Tensor>) -> Result<Vec<String>> {
        if self
            .linears()
            .iter()
            .any(|(_, l)| matches!(l, Linear::Packed(_)))
        {
            return Err(BitnetError::invalid(
                "load_state_dict",
                "this model has packed layers; build it with LlamaModel::from_state_dict",
            ));
        }
        check_state_dict(&self.config, tensors)?;
        let own = self.named_tensors();
        for (name, _) in &own {
            let kind = tensors[name].f_kind()?;
            if !is_float_kind(kind) {
                return Err(BitnetError::Dtype {
                    name: name.clone(),
                    expected: "a float dtype".into(),
                    found: format!("{kind:?}"),
                });
            }
        }
        tch::no_grad(|| -> Result<()> {
            for (name, dst) in &own {
                let mut dst = dst.shallow_clone();
                dst.f_copy_(&tensors[name])?;
            }
            Ok(())
        })?;
        let used: BTreeSet<&String> = own.iter().map(|(n, _)| n).collect();
        // `check_state_dict` verified every own tensor is present.
        debug_assert!(own.iter().all(|(n, _)| tensors.contains_key(n)));
        debug_assert_eq!(used.len(), own.len(), "tensor names are unique");
        let tied_head = self.config.tie_word_embeddings;
        Ok(tensors
            .keys()
            .filter(|k| !(used.contains(k) || tied_head && k.as_str() == "lm_head.weight"))
            .cloned()
            .collect())
    }

    /// Rebuilds the matmul of every packed layer with `backend`.
    pub fn set_ternary_backend(&mut self, backend: &dyn TernaryBackend) -> Result<()> {
        for l in &mut self.layers {
            for lin in l.linears_mut() {
                if let Linear::Packed(p) = lin {
                    p.set_backend(backend)?;
                }
            }
        }
        if let Linear::Packed(p) = &mut self.lm_head {
            p.set_backend(backend)?;
        }
        Ok(())
    }

    /// The packed inference form: every BitLinear packed (weights quantized now),
    /// everything else shared with `self` (no copy). Attention mixers are not carried
    /// over (they are not clonable); attach them again if needed.
    pub fn to_packed(&self, backend: &dyn TernaryBackend) -> Result<LlamaModel> {
        let conv = |l: &Linear| -> Result<Linear> {
            Ok(match l {
                Linear::Full { weight } => Linear::Full {
                    weight: weight.detach(),
                },
                Linear::Bit(b) => Linear::Packed(b.to_packed(backend)?),
                Linear::Packed(p) => {
                    p.check_codes_held("to_packed")?;
                    let w = PackedLinear::new(
                        p.weights.packed.shallow_clone(),
                        p.weights.w_scale,
                        p.weights.out_features,
                        p.weights.in_features,
                    )?;
                    Linear::Packed(PackedBitLinear::new(w, p.act, backend)?)
                }
            })
        };
        let norm = |n: &RmsNorm| RmsNorm {
            weight: n.weight.detach(),
            eps: n.eps,
        };
        let mut layers = Vec::new();
        debug_assert_eq!(self.layers.len() as i64, self.config.num_hidden_layers);
        for l in &self.layers {
            let a = &l.self_attn;
            layers.push(DecoderLayer {
                input_layernorm: norm(&l.input_layernorm),
                self_attn: Attention {
                    q_proj: conv(&a.q_proj)?,
                    k_proj: conv(&a.k_proj)?,
                    v_proj: conv(&a.v_proj)?,
                    o_proj: conv(&a.o_proj)?,
                    num_heads: a.num_heads,
                    num_kv_heads: a.num_kv_heads,
                    head_dim: a.head_dim,
                    mixer: None,
                },
                post_attention_layernorm: norm(&l.post_attention_layernorm),
                mlp: Mlp {
                    gate_proj: conv(&l.mlp.gate_proj)?,
                    up_proj: conv(&l.mlp.up_proj)?,
                    down_proj: conv(&l.mlp.down_proj)?,
                },
            });
        }
        debug_assert_eq!(layers.len(), self.layers.len());
        Ok(LlamaModel {
            config: self.config.clone(),
            embed_tokens: self.embed_tokens.detach(),
            layers,
            norm: norm(&self.norm),
            lm_head: conv(&self.lm_head)?,
            rotary: Rotary {
                inv_freq: self.rotary.inv_freq.shallow_clone(),
            },
        })
    }

    /// Token embeddings `(B, T, C)` of `(B, T)` i64 token ids.
    pub fn embed(&self, tokens: &Tensor) -> Result<Tensor> {
        let embeds = Tensor::f_embedding(&self.embed_tokens, tokens, -1, false, false)?;
        // One hidden-size row per token id.
        debug_assert_eq!(embeds.dim(), tokens.dim() + 1);
        debug_assert_eq!(embeds.size().last(), Some(&self.config.hidden_size));
        Ok(embeds)
    }

    /// Logits `(B, T, V)` of `(B, T)` i64 token ids.
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        Ok(self.forward_with(tokens, ForwardOptions::default())?.logits)
    }

    /// Forward pass with hidden states.
    pub fn forward_with(&self, tokens: &Tensor, opts: ForwardOptions) -> Result<ModelOutput> {
        if tokens.dim() != 2 {
            return Err(BitnetError::invalid(
                "forward",
                format!("tokens must be (B, T), got {:?}", tokens.size()),
            ));
        }
        let out = self.forward_embeds(&self.embed(tokens)?, opts)?;
        // (B, T) ids -> (B, T, V) logits.
        debug_assert_eq!(out.logits.dim(), 3);
        debug_assert_eq!(out.logits.size()[..2], tokens.size()[..]);
        Ok(out)
    }

    /// Forward pass from input embeddings `(B, T, C)` (thought tokens, soft prompts).
    pub fn forward_embeds(&self, embeds: &Tensor, opts: ForwardOptions) -> Result<ModelOutput> {
        self.forward_embeds_cached(embeds, None, opts, false)
    }

    /// Logits `(B, T, V)` of `(B, T)` token ids at positions
    /// `cache.len()..cache.len()+T`, attending to the cached positions too;
    /// their keys and values are appended to `cache`. A prompt of `T` tokens
    /// on an empty cache, then one token at a time, gives the logits of one
    /// full forward over the whole sequence.
    pub fn forward_cached(&self, tokens: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        self.forward_tokens_cached(tokens, cache, false)
    }

    /// [`Self::forward_cached`] computing the LM head only for the last
    /// position: logits `(B, 1, V)`, what generation samples from (the head
    /// is the largest matmul of a small model; prefill needs one row of it).
    pub fn forward_cached_last(&self, tokens: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        self.forward_tokens_cached(tokens, cache, true)
    }

    fn forward_tokens_cached(
        &self,
        tokens: &Tensor,
        cache: &mut KvCache,
        last_only: bool,
    ) -> Result<Tensor> {
        if tokens.dim() != 2 {
            return Err(BitnetError::invalid(
                "forward_cached",
                format!("tokens must be (B, T), got {:?}", tokens.size()),
            ));
        }
        let embeds = self.embed(tokens)?.f_to_kind(cache.kind)?;
        Ok(self
            .forward_embeds_cached(&embeds, Some(cache), ForwardOptions::default(), last_only)?
            .logits)
    }

    /// The one forward: without a cache from position 0, with one from its
    /// length on (checked against its capacity and batch first, so a
    /// refused step leaves the cache as it was).
    fn forward_embeds_cached(
        &self,
        embeds: &Tensor,
        mut cache: Option<&mut KvCache>,
        opts: ForwardOptions,
        last_only: bool,
    ) -> Result<ModelOutput> {
        let (b, t) = match embeds.size().as_slice() {
            [b, t, c] if *c == self.config.hidden_size => (*b, *t),
            other => {
                return Err(BitnetError::invalid(
                    "forward",
                    format!(
                        "embeddings must be (B, T, {}), got {other:?}",
                        self.config.hidden_size
                    ),
                ))
            }
        };
        let start = match &cache {
            None => 0,
            Some(c) => self.check_cache_fits(c, b, t)?,
        };
        let (cos, sin) = match &cache {
            // (T, D) rows of the cache's precomputed tables: no work per step.
            Some(c) => (c.cos.f_narrow(0, start, t)?, c.sin.f_narrow(0, start, t)?),
            None => self.rotary.cos_sin(0, t, embeds.f_kind()?)?,
        };
        let mut hidden_states = Vec::new();
        let mut x = embeds.shallow_clone(); // (B, T, C)
        for (i, layer) in self.layers.iter().enumerate() {
            if opts.output_hidden_states {
                hidden_states.push(x.shallow_clone());
            }
            let layer_cache = cache.as_deref_mut().map(|c| (&mut c.layers[i], start));
            x = layer.forward_cached(&x, &cos, &sin, layer_cache)?;
        }
        if let Some(c) = cache {
            c.len = start + t;
        }
        if opts.output_hidden_states {
            hidden_states.push(x.shallow_clone());
        }
        let logits = self.head(&x, t, last_only)?;
        Ok(ModelOutput {
            logits,
            last_hidden_pre_norm: x,
            hidden_states,
        })
    }

    /// The cache's length, after checking that it was made for this model
    /// and batch and that `t` more positions fit (so a refused step leaves
    /// it as it was).
    fn check_cache_fits(&self, c: &KvCache, b: i64, t: i64) -> Result<i64> {
        debug_assert!(t >= 0 && b >= 0, "sizes of a (B, T, C) tensor");
        if c.layers.len() != self.layers.len() || b != c.batch {
            return Err(BitnetError::invalid(
                "forward_cached",
                format!(
                    "the cache was made for batch {} and {} layers, got batch {b} for a model of {} layers",
                    c.batch,
                    c.layers.len(),
                    self.layers.len()
                ),
            ));
        }
        if c.len + t > c.capacity {
            return Err(BitnetError::invalid(
                "forward_cached",
                format!(
                    "{t} more positions do not fit: the cache holds {} of {}",
                    c.len, c.capacity
                ),
            ));
        }
        debug_assert!(c.len >= 0 && c.len <= c.capacity);
        Ok(c.len)
    }

    /// Final norm and LM head over `x` `(B, T, C)`: logits `(B, T, V)`, or
    /// `(B, 1, V)` of the last position only.
    pub(crate) fn head(&self, x: &Tensor, t: i64, last_only: bool) -> Result<Tensor> {
        debug_assert_eq!(x.dim(), 3, "(B, T, C)");
        let head_in = if last_only {
            x.f_narrow(1, t - 1, 1)? // (B, 1, C)
        } else {
            x.shallow_clone()
        };
        let logits = self.lm_head.forward(&self.norm.forward(&head_in)?)?; // (B, T, V)
        debug_assert_eq!(logits.size().last(), Some(&self.config.vocab_size));
        Ok(logits)
    }
}
