//! Per-sequence runtime state: the KV cache, RoPE tables and every scratch
//! buffer a step writes, allocated up front so a decode step allocates
//! nothing (buffers for a `T`-token prefill grow once, on the first such call).

use bitnet_kernels::{for_each_chunk_mut, QuantizedActivations};

use crate::model::{DecodeModel, LmHead};
use crate::ops::{add_assign, causal_attention, rms_norm, rope_head, silu_mul, AttnShape};
use crate::InferError;

/// Vocabulary rows per task of the threaded LM head: a few hundred rows
/// (100-300 KB of fp32 weights) amortise taking a task from the queue.
const HEAD_ROWS_PER_TASK: usize = 512;

/// Token rows per task of the threaded RMSNorm and SiLU of a prefill (one
/// row, a decode step, is one task: no thread hand-off for a few us of work).
const ROWS_PER_TASK: usize = 16;

/// KV cache and scratch buffers of one sequence (batch 1) of a [`DecodeModel`].
#[derive(Debug)]
pub struct DecodeState {
    /// `[layer][kv_head][capacity][head_dim]`.
    keys: Vec<f32>,
    values: Vec<f32>,
    /// `[capacity][head_dim / 2]`: HF's cos/sin table (its two halves are equal).
    cos: Vec<f32>,
    sin: Vec<f32>,
    capacity: usize,
    len: usize,
    layers: usize,
    // Scratch, `[rows, width]`: grown to the largest `rows` seen.
    x: Vec<f32>,
    normed: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    last: Vec<f32>,
    logits: Vec<f32>,
    acts: QuantizedActivations,
}

impl DecodeState {
    /// An empty state for `capacity` positions of `model`, with buffers for
    /// one-token steps (and `prefill_rows`-token prefills) allocated now.
    // pot10: init (allocates the KV cache and scratch once per sequence; steps reuse them)
    pub fn new(
        model: &DecodeModel,
        capacity: usize,
        prefill_rows: usize,
    ) -> Result<Self, InferError> {
        let c = &model.config;
        if capacity == 0 {
            return Err(InferError::Config(
                "a decode state needs a capacity of at least 1 position".into(),
            ));
        }
        let half = c.head_dim / 2;
        let cache = model.layers.len() * c.kv_heads * capacity * c.head_dim;
        let (mut cos, mut sin) = (vec![0.0; capacity * half], vec![0.0; capacity * half]);
        for pos in 0..capacity {
            for (i, &f) in model.inv_freq.iter().enumerate() {
                // HF: freqs = pos (f32) * inv_freq, then cos/sin in f32.
                let angle = pos as f32 * f;
                cos[pos * half + i] = angle.cos();
                sin[pos * half + i] = angle.sin();
            }
        }
        let mut state = DecodeState {
            keys: vec![0.0; cache],
            values: vec![0.0; cache],
            cos,
            sin,
            capacity,
            len: 0,
            layers: model.layers.len(),
            x: Vec::new(),
            normed: Vec::new(),
            q: Vec::new(),
            k: Vec::new(),
            v: Vec::new(),
            attn: Vec::new(),
            proj: Vec::new(),
            gate: Vec::new(),
            up: Vec::new(),
            last: vec![0.0; c.hidden],
            logits: vec![0.0; c.vocab],
            acts: QuantizedActivations::new(),
        };
        state.grow(model, prefill_rows.max(1));
        Ok(state)
    }

    /// Positions held in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets positions from `len` on (a benchmark repeats the same step).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Bytes of the KV cache.
    pub fn cache_bytes(&self) -> usize {
        (self.keys.len() + self.values.len()) * 4
    }

    /// Sizes the scratch buffers for `rows` tokens (allocates only to grow).
    fn grow(&mut self, model: &DecodeModel, rows: usize) {
        let c = &model.config;
        let (qd, kvd) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
        for (buf, width) in [
            (&mut self.x, c.hidden),
            (&mut self.normed, c.hidden),
            (&mut self.proj, c.hidden),
            (&mut self.q, qd),
            (&mut self.attn, qd),
            (&mut self.k, kvd),
            (&mut self.v, kvd),
            (&mut self.gate, c.intermediate),
            (&mut self.up, c.intermediate),
        ] {
            // pot10: allow(R3) grows only past the largest prefill seen; one-token steps reuse the buffers
            buf.resize(rows * width, 0.0);
        }
    }

    /// Runs `tokens` at positions `len..len + T` (a prompt, or one token of
    /// decode), appending their keys and values, and returns the logits of
    /// the last position (`vocab` values). A refused call leaves the state
    /// as it was.
    pub fn forward(&mut self, model: &DecodeModel, tokens: &[u32]) -> Result<&[f32], InferError> {
        let c = &model.config;
        let rows = tokens.len();
        if self.layers != model.layers.len()
            || self.last.len() != c.hidden
            || self.logits.len() != c.vocab
        {
            return Err(InferError::StateMismatch(format!(
                "{} layers, hidden {}, vocab {}",
                self.layers,
                self.last.len(),
                self.logits.len()
            )));
        }
        if rows == 0 || self.len + rows > self.capacity {
            return Err(InferError::Capacity {
                new: rows,
                len: self.len,
                capacity: self.capacity,
            });
        }
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= c.vocab) {
            return Err(InferError::Token {
                token,
                vocab: c.vocab,
            });
        }
        if self.x.len() < rows * c.hidden {
            self.grow(model, rows);
        }
        for (t, &token) in tokens.iter().enumerate() {
            model.embed.row_into(
                token as usize,
                &mut self.x[t * c.hidden..(t + 1) * c.hidden],
            );
        }
        for layer in 0..model.layers.len() {
            self.attention_block(model, layer, rows)?;
            self.mlp_block(model, layer, rows)?;
        }
        self.len += rows;
        self.head(model, rows)?;
        Ok(&self.logits)
    }

    /// `x += o_proj(attention(input_layernorm(x)))` for `rows` new tokens.
    fn attention_block(
        &mut self,
        model: &DecodeModel,
        layer: usize,
        rows: usize,
    ) -> Result<(), InferError> {
        let c = &model.config;
        let l = &model.layers[layer];
        let (hid, qd, kvd) = (c.hidden, c.heads * c.head_dim, c.kv_heads * c.head_dim);
        norm_rows(
            &self.x[..rows * hid],
            &l.input_norm,
            c.rms_eps as f32,
            &mut self.normed[..rows * hid],
        )?;
        // q, k and v read the same input: one quantization for the three.
        self.acts
            .quantize_from(&self.normed[..rows * hid], rows, hid)?;
        l.q.matmul_quantized(&self.acts, &mut self.q[..rows * qd])?;
        l.k.matmul_quantized(&self.acts, &mut self.k[..rows * kvd])?;
        l.v.matmul_quantized(&self.acts, &mut self.v[..rows * kvd])?;
        self.rope_and_cache(c, layer, rows);
        self.attend_rows(c, layer, rows)?;
        l.o.matmul_reusing(
            &self.attn[..rows * qd],
            rows,
            &mut self.proj[..rows * hid],
            &mut self.acts,
        )?;
        add_assign(&mut self.x[..rows * hid], &self.proj[..rows * hid]);
        Ok(())
    }

    /// RoPE on q and k of each new row, and k, v into the cache.
    fn rope_and_cache(&mut self, c: &crate::DecodeConfig, layer: usize, rows: usize) {
        let (d, half) = (c.head_dim, c.head_dim / 2);
        let (qd, kvd) = (c.heads * d, c.kv_heads * d);
        for t in 0..rows {
            let pos = self.len + t;
            let (cos, sin) = (
                &self.cos[pos * half..(pos + 1) * half],
                &self.sin[pos * half..(pos + 1) * half],
            );
            for head in self.q[t * qd..(t + 1) * qd].chunks_exact_mut(d) {
                rope_head(head, cos, sin);
            }
            for (kv, head) in self.k[t * kvd..(t + 1) * kvd]
                .chunks_exact_mut(d)
                .enumerate()
            {
                rope_head(head, cos, sin);
                let at = ((layer * c.kv_heads + kv) * self.capacity + pos) * d;
                self.keys[at..at + d].copy_from_slice(head);
                self.values[at..at + d]
                    .copy_from_slice(&self.v[t * kvd + kv * d..t * kvd + (kv + 1) * d]);
            }
        }
    }

    /// Causal GQA attention of each new row over positions `0..=its own`.
    fn attend_rows(
        &mut self,
        c: &crate::DecodeConfig,
        layer: usize,
        rows: usize,
    ) -> Result<(), InferError> {
        let qd = c.heads * c.head_dim;
        let span = c.kv_heads * self.capacity * c.head_dim;
        let shape = AttnShape {
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
            capacity: self.capacity,
        };
        causal_attention(
            shape,
            &self.q[..rows * qd],
            &self.keys[layer * span..(layer + 1) * span],
            &self.values[layer * span..(layer + 1) * span],
            self.len,
            &mut self.attn[..rows * qd],
        )?;
        Ok(())
    }

    /// `x += down(silu(gate(n)) * up(n))`, `n = post_attention_layernorm(x)`.
    fn mlp_block(
        &mut self,
        model: &DecodeModel,
        layer: usize,
        rows: usize,
    ) -> Result<(), InferError> {
        let c = &model.config;
        let l = &model.layers[layer];
        let (hid, f) = (c.hidden, c.intermediate);
        norm_rows(
            &self.x[..rows * hid],
            &l.post_norm,
            c.rms_eps as f32,
            &mut self.normed[..rows * hid],
        )?;
        self.acts
            .quantize_from(&self.normed[..rows * hid], rows, hid)?;
        l.gate
            .matmul_quantized(&self.acts, &mut self.gate[..rows * f])?;
        l.up.matmul_quantized(&self.acts, &mut self.up[..rows * f])?;
        let up = &self.up[..rows * f];
        for_each_chunk_mut(&mut self.gate[..rows * f], ROWS_PER_TASK * f, |at, g| {
            silu_mul(g, &up[at..at + g.len()])
        })?;
        l.down.matmul_reusing(
            &self.gate[..rows * f],
            rows,
            &mut self.proj[..rows * hid],
            &mut self.acts,
        )?;
        add_assign(&mut self.x[..rows * hid], &self.proj[..rows * hid]);
        Ok(())
    }

    /// Final norm and LM head of the last row into `logits`.
    fn head(&mut self, model: &DecodeModel, rows: usize) -> Result<(), InferError> {
        let c = &model.config;
        let hid = c.hidden;
        rms_norm(
            &self.x[(rows - 1) * hid..rows * hid],
            &model.norm,
            c.rms_eps as f32,
            &mut self.last,
        );
        let last = &self.last;
        // The head is the largest matrix of a small model: its rows are
        // split over the kernels' threads like a matmul's.
        match &model.head {
            LmHead::Tied => for_each_chunk_mut(&mut self.logits, HEAD_ROWS_PER_TASK, |r0, out| {
                model.embed.gemv_rows(last, r0, out)
            })?,
            LmHead::Kept(m) => {
                for_each_chunk_mut(&mut self.logits, HEAD_ROWS_PER_TASK, |r0, out| {
                    m.gemv_rows(last, r0, out)
                })?
            }
            LmHead::Ternary(m) => m.matmul_reusing(last, 1, &mut self.logits, &mut self.acts)?,
        }
        Ok(())
    }
}

/// [`rms_norm`] of `x`'s rows into `out`, blocks of rows on the kernels' threads.
fn norm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) -> Result<(), InferError> {
    let n = weight.len();
    for_each_chunk_mut(out, ROWS_PER_TASK * n, |at, dst| {
        rms_norm(&x[at..at + dst.len()], weight, eps, dst)
    })?;
    Ok(())
}
