//! A random packed model of any shape, for this crate's tests and benches
//! and the allocation-counting test (deterministic: SplitMix seeds).

use bitnet_kernels::storage::pack_storage;
use bitnet_kernels::testing::SplitMix;
use bitnet_kernels::PackedTernaryMatrix;

use crate::{DecodeConfig, DecodeModel, InferError, KeptDtype, KeptMatrix, LayerWeights, LmHead};

/// A tiny GQA config (4 query heads over 2 kv heads, odd intermediate).
pub fn tiny_config() -> DecodeConfig {
    DecodeConfig {
        hidden: 64,
        intermediate: 90,
        heads: 4,
        kv_heads: 2,
        head_dim: 16,
        vocab: 97,
        rope_theta: 10_000.0,
        rms_eps: 1e-5,
    }
}

fn ternary(rng: &mut SplitMix, out: usize, inp: usize) -> Result<PackedTernaryMatrix, InferError> {
    let codes = rng.ternary(out * inp);
    let scale = 0.5 + rng.below(100) as f32 / 100.0;
    Ok(PackedTernaryMatrix::from_storage(
        &pack_storage(&codes, out, inp),
        out,
        inp,
        scale,
    )?)
}

// pot10: init (test data: builds a random model once)
fn norm(rng: &mut SplitMix, n: usize) -> Vec<f32> {
    rng.normal_ish(n).iter().map(|v| 1.0 + 0.2 * v).collect()
}

/// A model of `layers` random layers; the head tied or kept, in `kept`.
// pot10: init (test data: builds a random model once)
pub fn random_model(
    config: &DecodeConfig,
    layers: usize,
    tied: bool,
    kept: KeptDtype,
    seed: u64,
) -> Result<DecodeModel, InferError> {
    let mut rng = SplitMix(seed);
    let c = config;
    let (qd, kvd) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
    let mut all = Vec::with_capacity(layers);
    for _ in 0..layers {
        all.push(LayerWeights {
            input_norm: norm(&mut rng, c.hidden),
            q: ternary(&mut rng, qd, c.hidden)?,
            k: ternary(&mut rng, kvd, c.hidden)?,
            v: ternary(&mut rng, kvd, c.hidden)?,
            o: ternary(&mut rng, c.hidden, qd)?,
            post_norm: norm(&mut rng, c.hidden),
            gate: ternary(&mut rng, c.intermediate, c.hidden)?,
            up: ternary(&mut rng, c.intermediate, c.hidden)?,
            down: ternary(&mut rng, c.hidden, c.intermediate)?,
        });
    }
    let embed = KeptMatrix::new(&rng.normal_ish(c.vocab * c.hidden), c.vocab, c.hidden, kept)?;
    let head = if tied {
        LmHead::Tied
    } else {
        LmHead::Kept(KeptMatrix::new(
            &rng.normal_ish(c.vocab * c.hidden),
            c.vocab,
            c.hidden,
            kept,
        )?)
    };
    DecodeModel::new(config.clone(), embed, all, norm(&mut rng, c.hidden), head)
}
