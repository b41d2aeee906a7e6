//! Gradient checkpointing per decoder block: a training forward that keeps
//! only each block's input, and a backward that recomputes one block at a
//! time.
//!
//! Why: a training step's autograd graph holds every block's activations
//! (the inputs of 7 linears, their fake-quantized copies, attention and the
//! SwiGLU intermediates) until the backward, on top of the vocabulary-wide
//! logit tensors. `tch` has no `torch.utils.checkpoint`, so this is the
//! recipe written out (Chen et al. 2016, "Training Deep Nets with Sublinear
//! Memory Cost"):
//!
//! 1. a no-grad forward that saves the detached input `x_i` of every block;
//! 2. the block stack's output `x_L` as a leaf that requires a gradient: the
//!    caller runs the final norm and head on it with a graph (whole, or in
//!    row chunks), computes its losses and calls `backward()`, which leaves
//!    `x_L.grad`;
//! 3. for `i = L-1..0`: `x_i` as a leaf, `y = block_i(x_i)` recomputed with a
//!    graph, and `backward()` of `sum(y * grad_y)` (whose gradient in `y` is
//!    exactly `grad_y`) plus the caller's own term on `y` (hidden-state
//!    distillation), so block `i`'s parameter gradients accumulate and
//!    `x_i.grad` feeds block `i-1`;
//! 4. the embedding from `x_0.grad` (a tied head accumulates into the same
//!    weight).
//!
//! The recomputed forward runs the same ops on the same inputs as the no-grad
//! one (no dropout; quantization strength, bf16 matmuls and autocast are the
//! caller's settings, unchanged within a step), so the gradients equal those
//! of one graph up to float reassociation of the sums. Cost: one more forward
//! of the blocks per step.

use tch::{Kind, Tensor};

use super::error::{BitnetError, Result};
use super::model::LlamaModel;

/// What a checkpointed forward keeps for its backward.
#[derive(Debug)]
pub struct BlockCheckpoints {
    /// `(B, T)` token ids (the embedding's gradient is recomputed from them).
    tokens: Tensor,
    /// Detached input of each block, `(B, T, C)`; `inputs[0]` is the embedding output.
    inputs: Vec<Tensor>,
    /// Output of the last block, a leaf that requires a gradient, `(B, T, C)`.
    last: Tensor,
}

/// Runs `f` under libtorch autocast when `on` (CUDA bf16), as a plain call otherwise.
fn maybe_autocast<T>(on: bool, f: impl FnOnce() -> T) -> T {
    if on {
        tch::autocast(true, f)
    } else {
        f()
    }
}

impl BlockCheckpoints {
    /// The blocks' output `(B, T, C)`: a leaf that requires a gradient, for
    /// the caller's final norm, head and losses (whole, or in row chunks
    /// through the model's `head`).
    pub fn last(&self) -> &Tensor {
        &self.last
    }
}

impl LlamaModel {
    /// The residual stream of `(B, T)` token ids without the head and
    /// without a graph: `[embeddings, after block 0, ..., after block L-1]`,
    /// each `(B, T, C)` (the `hidden_states` of a forward with hidden states).
    pub fn block_states(&self, tokens: &Tensor, autocast: bool) -> Result<Vec<Tensor>> {
        let t = match tokens.size().as_slice() {
            [_, t] => *t,
            other => {
                return Err(BitnetError::invalid(
                    "block_states",
                    format!("tokens must be (B, T), got {other:?}"),
                ))
            }
        };
        tch::no_grad(|| {
            maybe_autocast(autocast, || -> Result<Vec<Tensor>> {
                let x = self.embed(tokens)?; // (B, T, C)
                let (cos, sin) = self.rotary.cos_sin(0, t, x.f_kind()?)?;
                let mut states = Vec::with_capacity(self.layers.len() + 1);
                states.push(x);
                for layer in &self.layers {
                    let y = layer.forward(&states[states.len() - 1], &cos, &sin)?;
                    states.push(y);
                }
                Ok(states)
            })
        })
    }

    /// Steps 1 and 2: the blocks run without a graph, keeping their inputs;
    /// their output [`BlockCheckpoints::last`] is a leaf for the caller's
    /// head and losses. Backpropagate a loss of it, then call
    /// [`Self::backward_checkpointed`].
    pub fn forward_checkpointed(
        &self,
        tokens: &Tensor,
        autocast: bool,
    ) -> Result<BlockCheckpoints> {
        let mut inputs = self.block_states(tokens, autocast)?;
        let out = inputs.pop().ok_or_else(|| {
            BitnetError::invalid("forward_checkpointed", "no embeddings; this is a bug")
        })?;
        let last = out.f_detach()?.f_set_requires_grad(true)?; // (B, T, C)
        Ok(BlockCheckpoints {
            tokens: tokens.shallow_clone(),
            inputs,
            last,
        })
    }

    /// Steps 3 and 4, after the caller's `backward()` of its loss on
    /// [`BlockCheckpoints::last`]. `block_loss(i, y)` may
    /// return a scalar term on block `i`'s output `y` (with its graph) that
    /// is backpropagated with the block; its value is the caller's to record.
    pub fn backward_checkpointed(
        &self,
        ck: BlockCheckpoints,
        autocast: bool,
        mut block_loss: impl FnMut(usize, &Tensor) -> Result<Option<Tensor>>,
    ) -> Result<()> {
        let BlockCheckpoints {
            tokens,
            mut inputs,
            last,
        } = ck;
        // (The logits' graph ended at `last`; the caller's backward filled its gradient.)
        if inputs.len() != self.layers.len() {
            return Err(BitnetError::invalid(
                "backward_checkpointed",
                format!(
                    "checkpoints of {} blocks for a model of {}; this is a bug, please report it",
                    inputs.len(),
                    self.layers.len()
                ),
            ));
        }
        let mut grad = last.f_grad()?; // (B, T, C)
        drop(last);
        let embed_trains = self.embed_tokens.requires_grad();
        for i in (0..self.layers.len()).rev() {
            // With frozen embeddings nothing needs the gradient of block 0's input.
            let needs_input_grad = i > 0 || embed_trains;
            let x = inputs
                .pop()
                .ok_or_else(|| {
                    BitnetError::invalid("backward_checkpointed", "missing block input")
                })?
                .f_set_requires_grad(needs_input_grad)?; // (B, T, C)
            self.backward_block(i, &x, &grad, autocast, &mut block_loss)?;
            if !needs_input_grad {
                return Ok(());
            }
            grad = x.f_grad()?;
        }
        let embeds = maybe_autocast(autocast, || self.embed(&tokens))?; // (B, T, C)
        debug_assert_eq!(embeds.size(), grad.size());
        Ok(embeds.f_mul(&grad)?.f_sum(Kind::Float)?.f_backward()?)
    }

    /// Recomputes block `i` on the leaf `x` with a graph and backpropagates
    /// `sum(y * grad_y)` plus the caller's term on `y`.
    fn backward_block(
        &self,
        i: usize,
        x: &Tensor,
        grad_y: &Tensor,
        autocast: bool,
        block_loss: &mut impl FnMut(usize, &Tensor) -> Result<Option<Tensor>>,
    ) -> Result<()> {
        if !grad_y.defined() {
            return Err(BitnetError::invalid(
                "backward_checkpointed",
                format!("no gradient reached the output of block {i}; call backward() on a loss of the logits first"),
            ));
        }
        let t = x.size()[1];
        let y = maybe_autocast(autocast, || -> Result<Tensor> {
            let (cos, sin) = self.rotary.cos_sin(0, t, x.f_kind()?)?;
            self.layers[i].forward(x, &cos, &sin)
        })?; // (B, T, C)
        debug_assert_eq!(y.size(), grad_y.size());
        let mut total = y.f_mul(grad_y)?.f_sum(Kind::Float)?;
        if let Some(extra) = block_loss(i, &y)? {
            total = total.f_add(&extra)?;
        }
        Ok(total.f_backward()?)
    }
}
