//! The decode model's weights: packed ternary projections, RMSNorm weights,
//! and the kept embedding / LM head, checked against a [`DecodeConfig`].

use bitnet_kernels::PackedTernaryMatrix;

use crate::kept::KeptMatrix;
use crate::ops::inv_freq;
use crate::InferError;

/// The shape of a LLaMA-family model (HF `config.json` names in the docs).
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeConfig {
    /// `hidden_size`.
    pub hidden: usize,
    /// `intermediate_size`.
    pub intermediate: usize,
    /// `num_attention_heads`.
    pub heads: usize,
    /// `num_key_value_heads` (GQA: each serves `heads / kv_heads` query heads).
    pub kv_heads: usize,
    /// `head_dim` (usually `hidden / heads`).
    pub head_dim: usize,
    /// `vocab_size`.
    pub vocab: usize,
    /// `rope_theta`.
    pub rope_theta: f64,
    /// `rms_norm_eps`.
    pub rms_eps: f64,
}

impl DecodeConfig {
    // pot10: init (runs once while the model is built at load; a decode step never calls it)
    fn check(&self) -> Result<(), InferError> {
        let ok = self.hidden > 0
            && self.intermediate > 0
            && self.vocab > 0
            && self.kv_heads > 0
            && self.heads.is_multiple_of(self.kv_heads)
            && self.heads > 0
            && self.head_dim >= 2
            && self.head_dim.is_multiple_of(2)
            && self.rope_theta > 0.0
            && self.rms_eps > 0.0;
        if ok {
            Ok(())
        } else {
            Err(InferError::Config(format!(
                "{self:?} is not a valid LLaMA shape (positive sizes, heads a multiple of kv_heads, even head_dim, positive theta and eps)"
            )))
        }
    }
}

/// One decoder block: HF names `input_layernorm`, `self_attn.{q,k,v,o}_proj`,
/// `post_attention_layernorm`, `mlp.{gate,up,down}_proj`.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub input_norm: Vec<f32>,
    pub q: PackedTernaryMatrix,
    pub k: PackedTernaryMatrix,
    pub v: PackedTernaryMatrix,
    pub o: PackedTernaryMatrix,
    pub post_norm: Vec<f32>,
    pub gate: PackedTernaryMatrix,
    pub up: PackedTernaryMatrix,
    pub down: PackedTernaryMatrix,
}

/// The LM head.
#[derive(Debug, Clone)]
pub enum LmHead {
    /// `tie_word_embeddings`: the embedding matrix, in its kept dtype.
    Tied,
    /// A kept full-precision head `[vocab, hidden]`.
    Kept(KeptMatrix),
    /// A ternarized head (when a conversion did not keep it).
    Ternary(PackedTernaryMatrix),
}

/// A packed BitNet LLaMA ready for [`crate::DecodeState::forward`].
#[derive(Debug, Clone)]
pub struct DecodeModel {
    pub(crate) config: DecodeConfig,
    pub(crate) embed: KeptMatrix,
    pub(crate) layers: Vec<LayerWeights>,
    pub(crate) norm: Vec<f32>,
    pub(crate) head: LmHead,
    pub(crate) inv_freq: Vec<f32>,
}

fn check_len(what: String, actual: usize, expected: usize) -> Result<(), InferError> {
    if actual == expected {
        Ok(())
    } else {
        Err(InferError::Shape {
            what,
            expected,
            actual,
        })
    }
}

// pot10: init (runs once while the model is built at load; a decode step never calls it)
fn check_matrix(
    what: String,
    m: &PackedTernaryMatrix,
    out: usize,
    inp: usize,
) -> Result<(), InferError> {
    check_len(format!("{what} (out_features)"), m.out_features(), out)?;
    check_len(format!("{what} (in_features)"), m.in_features(), inp)
}

// pot10: init (runs once while the model is built at load; a decode step never calls it)
fn check_layer(cfg: &DecodeConfig, i: usize, l: &LayerWeights) -> Result<(), InferError> {
    let (c, f) = (cfg.hidden, cfg.intermediate);
    let (qd, kvd) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim);
    let name = |s: &str| format!("model.layers.{i}.{s}");
    check_len(name("input_layernorm.weight"), l.input_norm.len(), c)?;
    check_len(
        name("post_attention_layernorm.weight"),
        l.post_norm.len(),
        c,
    )?;
    check_matrix(name("self_attn.q_proj"), &l.q, qd, c)?;
    check_matrix(name("self_attn.k_proj"), &l.k, kvd, c)?;
    check_matrix(name("self_attn.v_proj"), &l.v, kvd, c)?;
    check_matrix(name("self_attn.o_proj"), &l.o, c, qd)?;
    check_matrix(name("mlp.gate_proj"), &l.gate, f, c)?;
    check_matrix(name("mlp.up_proj"), &l.up, f, c)?;
    check_matrix(name("mlp.down_proj"), &l.down, c, f)
}

impl DecodeModel {
    /// Checks every weight against `config` and precomputes RoPE's
    /// frequencies.
    pub fn new(
        config: DecodeConfig,
        embed: KeptMatrix,
        layers: Vec<LayerWeights>,
        norm: Vec<f32>,
        head: LmHead,
    ) -> Result<Self, InferError> {
        config.check()?;
        check_len(
            "model.embed_tokens.weight (rows)".into(),
            embed.rows(),
            config.vocab,
        )?;
        check_len(
            "model.embed_tokens.weight (columns)".into(),
            embed.cols(),
            config.hidden,
        )?;
        check_len("model.norm.weight".into(), norm.len(), config.hidden)?;
        for (i, layer) in layers.iter().enumerate() {
            check_layer(&config, i, layer)?;
        }
        match &head {
            LmHead::Tied => {}
            LmHead::Kept(m) => {
                check_len("lm_head.weight (rows)".into(), m.rows(), config.vocab)?;
                check_len("lm_head.weight (columns)".into(), m.cols(), config.hidden)?;
            }
            LmHead::Ternary(m) => check_matrix("lm_head".into(), m, config.vocab, config.hidden)?,
        }
        let inv_freq = inv_freq(config.head_dim, config.rope_theta);
        Ok(DecodeModel {
            config,
            embed,
            layers,
            norm,
            head,
            inv_freq,
        })
    }

    /// The model's shape.
    pub fn config(&self) -> &DecodeConfig {
        &self.config
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Decoder layer `i` (panics past [`DecodeModel::num_layers`]).
    pub fn layer(&self, i: usize) -> &LayerWeights {
        &self.layers[i]
    }

    /// Bytes of weights this model holds, every copy counted (ternary
    /// matrices in the kernels' layout, kept layers in their dtype, norms).
    pub fn weight_bytes(&self) -> usize {
        let ternary: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]
                    .iter()
                    .map(|m| m.weight_bytes())
                    .sum::<usize>()
                    + (l.input_norm.len() + l.post_norm.len()) * 4
            })
            .sum();
        let head = match &self.head {
            LmHead::Tied => 0,
            LmHead::Kept(m) => m.bytes(),
            LmHead::Ternary(m) => m.weight_bytes(),
        };
        ternary + self.embed.bytes() + head + self.norm.len() * 4
    }

    /// The LM head's description for reports (`tied-int8`, `kept-bf16`, `ternary`).
    // pot10: init (a report label, computed once per load, never per step)
    pub fn head_form(&self) -> String {
        match &self.head {
            LmHead::Tied => format!("tied-{}", self.embed.dtype().name()),
            LmHead::Kept(m) => format!("kept-{}", m.dtype().name()),
            LmHead::Ternary(_) => "ternary".into(),
        }
    }
}
