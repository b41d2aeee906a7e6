//! Fused CPU decode of a packed BitNet b1.58 LLaMA: one Rust loop per token,
//! no libtorch.
//!
//! Why it exists: measured on SmolLM2-135M (issue #11), one libtorch decode
//! step cost 21 ms against llama.cpp's 5.4 ms. Some 25 libtorch ops per layer
//! at ~10 us dispatch each, and an fp32 tied head of 113 MB read per token,
//! cost more than the ternary matmuls themselves. Here a step is plain loops
//! over preallocated buffers: RMSNorm, RoPE (HF rotate-half layout, the
//! model's theta), grouped-query attention over a preallocated KV cache,
//! SiLU-GLU, and the ternary GEMVs of [`bitnet_kernels`] with per-token int8
//! activations; the kept layers (embedding, LM head) may be stored compact
//! ([`KeptDtype`]).
//!
//! The arithmetic is the libtorch packed model's (`bitnet-torch`
//! `bitnet/model.rs`): the same int8 quantization and integer accumulations
//! of the same kernels, and the float parts in the same formulas, so logits
//! agree to float rounding (tested there against `forward_cached_last`).
//! After the first step of a given prompt length a step allocates nothing
//! on one or more kernel threads (`tests/no_alloc.rs` counts, at 1 and 2).
//!
//! Layering: this crate knows the model's shape but no tch, no engine and no
//! checkpoint format; `bitnet-torch` builds a [`DecodeModel`] from its packed
//! model with [`DecodeModel::new`].

mod error;
mod kept;
mod model;
pub mod ops;
mod simd;
mod state;

pub use error::InferError;
pub use kept::{KeptDtype, KeptMatrix};
pub use model::{DecodeConfig, DecodeModel, LayerWeights, LmHead};
pub use state::DecodeState;
pub mod testing;

#[cfg(test)]
mod tests {
    use super::testing::{random_model, tiny_config};
    use super::*;

    #[test]
    fn a_prompt_in_one_call_equals_the_same_tokens_one_at_a_time() {
        // Same int8 rows, same kernel integers, same float formulas per row:
        // the batched prefill and the step loop agree bit for bit.
        let model = random_model(&tiny_config(), 2, false, KeptDtype::F32, 5).unwrap();
        let prompt = [3u32, 96, 0, 41, 7, 7, 12];
        let mut whole = DecodeState::new(&model, 16, 1).unwrap();
        let a = whole.forward(&model, &prompt).unwrap().to_vec();
        let mut steps = DecodeState::new(&model, 16, 1).unwrap();
        let mut b = Vec::new();
        for &t in &prompt {
            b = steps.forward(&model, &[t]).unwrap().to_vec();
        }
        assert_eq!(a, b);
        assert_eq!(whole.len(), 7);
        // And the next step from either state is the same too.
        let next_a = whole.forward(&model, &[5]).unwrap().to_vec();
        let next_b = steps.forward(&model, &[5]).unwrap().to_vec();
        assert_eq!(next_a, next_b);
        assert!(next_a.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn refused_steps_leave_the_state_unchanged() {
        let model = random_model(&tiny_config(), 1, true, KeptDtype::F32, 9).unwrap();
        let mut state = DecodeState::new(&model, 3, 1).unwrap();
        state.forward(&model, &[1, 2]).unwrap();
        let err = state.forward(&model, &[1, 2]).unwrap_err();
        assert!(err.to_string().contains("the cache holds 2 of 3"), "{err}");
        let err = state.forward(&model, &[97]).unwrap_err();
        assert!(
            err.to_string()
                .contains("token id 97 is outside the vocabulary of 97"),
            "{err}"
        );
        assert!(state.forward(&model, &[]).is_err());
        assert_eq!(state.len(), 2);
        state.truncate(1);
        assert_eq!(state.len(), 1);
        state.forward(&model, &[4, 5]).unwrap();
        // A state made for another model is refused, not misread.
        let other = random_model(&tiny_config(), 2, true, KeptDtype::F32, 9).unwrap();
        assert!(matches!(
            state.forward(&other, &[1]),
            Err(InferError::StateMismatch(_))
        ));
    }

    #[test]
    fn compact_heads_stay_close_to_fp32_logits() {
        // The same random weights in three dtypes (same seed): bf16 keeps 8
        // mantissa bits (relative error 2^-9 per value), int8 per row a step
        // of max|row|/127. Over 64-wide dot products of O(1) values both
        // stay well inside 5% of the logits' spread; measured values are in
        // docs/perf.md for the real models.
        let cfg = tiny_config();
        let run = |kept| {
            let model = random_model(&cfg, 2, true, kept, 77).unwrap();
            let mut state = DecodeState::new(&model, 8, 1).unwrap();
            state.forward(&model, &[1, 50, 20]).unwrap().to_vec()
        };
        let reference = run(KeptDtype::F32);
        let spread = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (kept, bound) in [(KeptDtype::Bf16, 0.02), (KeptDtype::Int8, 0.05)] {
            let got = run(kept);
            let worst = got
                .iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst <= bound * spread,
                "{kept:?}: max |diff| {worst} vs spread {spread}"
            );
            assert!(
                worst > 0.0,
                "{kept:?} changed nothing: is the dtype applied?"
            );
        }
    }

    #[test]
    fn weights_are_checked_against_the_config() {
        let mut cfg = tiny_config();
        let model = random_model(&cfg, 1, true, KeptDtype::Int8, 1).unwrap();
        assert_eq!(model.head_form(), "tied-int8");
        assert!(model.weight_bytes() > 0);
        cfg.hidden = 65;
        let err = DecodeModel::new(
            cfg,
            model.embed.clone(),
            model.layers.clone(),
            model.norm.clone(),
            LmHead::Tied,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("model.embed_tokens.weight (columns)"),
            "{err}"
        );
        let mut bad = tiny_config();
        bad.kv_heads = 3;
        assert!(matches!(
            random_model(&bad, 1, true, KeptDtype::F32, 1),
            Err(InferError::Config(_))
        ));
    }
}
