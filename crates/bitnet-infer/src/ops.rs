//! The float parts of a decoder step, written as HF `modeling_llama.py`
//! computes them (in f32), over slices: RMSNorm, rotate-half RoPE, causal
//! grouped-query attention over the cache, SiLU-GLU.
//!
//! Prefill runs these over hundreds of rows, so the row loops that cost
//! (attention, SiLU) have AVX-512 forms in `simd` and [`causal_attention`]
//! splits (row, head) pairs over the kernels' threads; the plain forms stay
//! as the reference the tests hold them to.

use bitnet_kernels::{for_each_chunk_mut, KernelError};

/// HF `LlamaRMSNorm` of each `weight.len()`-wide row of `x` into `out`:
/// `w * (x * rsqrt(mean(x^2) + eps))`. The mean is summed in f64 (libtorch
/// sums f32 with cascaded partial sums; both are within an ulp of exact).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = weight.len();
    debug_assert!(n > 0 && x.len().is_multiple_of(n), "rows of {n}");
    debug_assert_eq!(x.len(), out.len());
    for (row, dst) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let sum_sq: f64 = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        let var = (sum_sq / n as f64) as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((d, &v), &w) in dst.iter_mut().zip(row).zip(weight) {
            *d = w * (v * inv);
        }
    }
}

/// HF default RoPE `inv_freq[i] = 1 / theta^(2i / D)`, in f32 as HF does.
// pot10: init (runs once while the model is built at load; a decode step never calls it)
pub fn inv_freq(head_dim: usize, theta: f64) -> Vec<f32> {
    debug_assert!(head_dim >= 2, "head_dim {head_dim}");
    (0..head_dim / 2)
        .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
        .collect()
}

/// Rotates one head `x` (`D` values) at a position whose `cos`/`sin` rows
/// (`D/2` values: HF's table repeats them for both halves) are given:
/// `x * cos + rotate_half(x) * sin`, `rotate_half(x) = [-x2, x1]`.
#[inline]
pub fn rope_head(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    debug_assert_eq!(cos.len(), half);
    debug_assert_eq!(sin.len(), half);
    let (x1, x2) = x.split_at_mut(half);
    for i in 0..half {
        let (a, b) = (x1[i], x2[i]);
        x1[i] = a * cos[i] + (-b) * sin[i];
        x2[i] = b * cos[i] + a * sin[i];
    }
}

/// `sum a[i] * b[i]` in 8 independent partial sums: a strict left-to-right
/// f32 sum cannot be vectorized, and attention's dot products are the decode
/// step's largest float loop at long contexts.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if crate::simd::available() {
        // SAFETY: the CPU has avx512f/bw (checked on the line above).
        // pot10: allow(R9) the AVX-512 dot only after `simd::available()`; it asserts the lengths
        return unsafe { crate::simd::dot_f32(a, b) };
    }
    dot_portable(a, b)
}

/// [`dot`] in portable code: 8 partial sums.
pub fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut partial = [0.0f32; 8];
    let (a8, a_tail) = a.split_at(a.len() / 8 * 8);
    let (b8, b_tail) = b.split_at(a8.len());
    for (x, y) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for ((p, &xv), &yv) in partial.iter_mut().zip(x).zip(y) {
            *p += xv * yv;
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(x, y)| x * y).sum();
    partial.iter().sum::<f32>() + tail
}

/// One query head `q` (`D`) over cached keys/values `0..seen` of its kv head
/// (`[capacity, D]` rows, `keys`/`values`), softmax(q k^T / sqrt(D)) v into
/// `out` (`D`). `scores` is scratch of at least `seen` values.
pub fn attend(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    seen: usize,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let d = q.len();
    debug_assert!(seen >= 1 && scores.len() >= seen);
    debug_assert!(keys.len() >= seen * d && values.len() >= seen * d);
    let scale = 1.0 / (d as f32).sqrt();
    let mut max = f32::NEG_INFINITY;
    for (s, score) in scores.iter_mut().enumerate().take(seen) {
        let k = &keys[s * d..(s + 1) * d];
        let dot = dot(q, k);
        *score = dot * scale;
        max = max.max(*score);
    }
    let mut total = 0.0f32;
    for score in scores.iter_mut().take(seen) {
        *score = (*score - max).exp();
        total += *score;
    }
    out.fill(0.0);
    for (s, &p) in scores.iter().enumerate().take(seen) {
        let w = p / total;
        for (o, &v) in out.iter_mut().zip(&values[s * d..(s + 1) * d]) {
            *o += w * v;
        }
    }
}

/// `gate = silu(gate) * up`, elementwise (SwiGLU), `silu(x) = x / (1 + e^-x)`
/// (16 lanes at a time with a vector `exp` on AVX-512, within 2 ulp of it).
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    debug_assert_eq!(gate.len(), up.len());
    debug_assert!(!gate.is_empty());
    #[cfg(target_arch = "x86_64")]
    if crate::simd::available() {
        // SAFETY: the CPU has avx512f/bw (checked on the line above).
        // pot10: allow(R9) the AVX-512 SiLU only after `simd::available()`; it asserts the lengths
        return unsafe { crate::simd::silu_mul(gate, up) };
    }
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// [`attend`] without scratch: an online softmax over 16-key blocks (the
/// AVX-512 form when the CPU has it and `D` is a multiple of 16, else the
/// same blocks in portable code). Equal to [`attend`] up to float rounding.
#[inline]
pub fn attend_blocked(q: &[f32], keys: &[f32], values: &[f32], seen: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::available() && q.len().is_multiple_of(16) {
        // SAFETY: the CPU has avx512f/bw (checked on the line above).
        // pot10: allow(R9) the AVX-512 attention only after `simd::available()`; it asserts every bound
        return unsafe { crate::simd::attend_online(q, keys, values, seen, out) };
    }
    attend_blocked_portable(q, keys, values, seen, out);
}

/// [`attend_blocked`] in portable code.
pub fn attend_blocked_portable(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    seen: usize,
    out: &mut [f32],
) {
    let d = q.len();
    debug_assert!(seen >= 1 && out.len() == d);
    let scale = 1.0 / (d as f32).sqrt();
    let (mut max, mut total) = (f32::NEG_INFINITY, 0.0f32);
    let mut probs = [0.0f32; 16];
    out.fill(0.0);
    for s0 in (0..seen).step_by(16) {
        let n = (seen - s0).min(16);
        for (j, p) in probs.iter_mut().enumerate().take(n) {
            *p = dot_portable(q, &keys[(s0 + j) * d..(s0 + j + 1) * d]) * scale;
        }
        let new_max = probs[..n].iter().fold(max, |m, &v| m.max(v));
        let corr = (max - new_max).exp();
        total *= corr;
        for p in probs.iter_mut().take(n) {
            *p = (*p - new_max).exp();
            total += *p;
        }
        for o in out.iter_mut() {
            *o *= corr;
        }
        for (j, &p) in probs.iter().enumerate().take(n) {
            let row = &values[(s0 + j) * d..(s0 + j + 1) * d];
            for (o, &v) in out.iter_mut().zip(row) {
                *o += p * v;
            }
        }
        max = new_max;
    }
    let inv = 1.0 / total;
    for o in out.iter_mut() {
        *o *= inv;
    }
}

/// One layer's attention shape for [`causal_attention`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Positions per kv head in the cache slices.
    pub capacity: usize,
}

/// (row, head) pairs per task of a many-row attention: some 30 head
/// attentions over a few hundred positions amortise taking a task.
const PAIRS_PER_TASK: usize = 32;

/// Causal GQA attention of `q` (`[rows, heads, D]`, positions
/// `start..start + rows`) over one layer's cache `keys`/`values`
/// (`[kv_heads, capacity, D]`, holding positions `0..start + rows`): row
/// `t` sees positions `0..=start + t`. Into `out` (`[rows, heads, D]`).
/// The (row, head) pairs are split over the kernels' threads; one row
/// (a decode step) is one task.
pub fn causal_attention(
    shape: AttnShape,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    start: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let AttnShape {
        heads,
        kv_heads,
        head_dim: d,
        capacity,
    } = shape;
    let span = capacity * d;
    let rows = q.len() / (heads * d);
    assert!(
        q.len() == out.len()
            && q.len() == rows * heads * d
            && keys.len() >= kv_heads * span
            && values.len() >= kv_heads * span
            && start + rows <= capacity,
        "attention of {rows} rows at {start} over {capacity} positions: buffers do not match {shape:?}; please report this bug"
    );
    let group = heads / kv_heads;
    if let Some(kernel) = group_kernel(d, group) {
        // One task = (row, kv head) groups: the `group` query heads of a kv
        // head are adjacent in `q` and `out`.
        let width = group * d;
        let per_task = if rows == 1 {
            kv_heads
        } else {
            PAIRS_PER_TASK.div_ceil(group)
        };
        return for_each_chunk_mut(out, per_task * width, |at, piece| {
            for (i, o) in piece.chunks_exact_mut(width).enumerate() {
                let unit = at / width + i;
                let (t, kv) = (unit / kv_heads, unit % kv_heads);
                let base = kv * span;
                kernel(
                    &q[unit * width..(unit + 1) * width],
                    &keys[base..base + span],
                    &values[base..base + span],
                    start + t + 1,
                    o,
                );
            }
        });
    }
    let per_task = if rows == 1 { heads } else { PAIRS_PER_TASK };
    for_each_chunk_mut(out, per_task * d, |at, piece| {
        for (i, o) in piece.chunks_exact_mut(d).enumerate() {
            let pair = at / d + i;
            let (t, h) = (pair / heads, pair % heads);
            let base = (h / group) * span;
            attend_blocked(
                &q[pair * d..(pair + 1) * d],
                &keys[base..base + span],
                &values[base..base + span],
                start + t + 1,
                o,
            );
        }
    })
}

/// The attention of a whole GQA group at once ([`crate::simd::attend_group`])
/// for the head sizes and group sizes it is built for (64 or 128; 2 or 3
/// heads per kv head: the demo model and SmolLM2), when the CPU runs it.
type GroupKernel = fn(&[f32], &[f32], &[f32], usize, &mut [f32]);

fn group_kernel(head_dim: usize, group: usize) -> Option<GroupKernel> {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::available() {
        use crate::simd::attend_group;
        // SAFETY (each): the CPU has avx512f/bw (checked above); the kernel
        // asserts the lengths of every slice it reads.
        // pot10: allow(R9) the AVX-512 group attention only after `simd::available()`; it asserts every bound
        let kernel: GroupKernel = match (head_dim, group) {
            (64, 2) => |q, k, v, s, o| unsafe { attend_group::<4, 2>(q, k, v, s, o) },
            (64, 3) => |q, k, v, s, o| unsafe { attend_group::<4, 3>(q, k, v, s, o) },
            (128, 2) => |q, k, v, s, o| unsafe { attend_group::<8, 2>(q, k, v, s, o) },
            (128, 3) => |q, k, v, s, o| unsafe { attend_group::<8, 3>(q, k, v, s, o) },
            _ => return None,
        };
        return Some(kernel);
    }
    let _ = (head_dim, group);
    None
}

/// `x += y`, elementwise (the residual stream).
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    debug_assert_eq!(x.len(), y.len());
    debug_assert!(!x.is_empty());
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_normalises_each_row() {
        let x = [3.0f32, 4.0, 0.0, 0.0];
        let mut out = [9.0; 4];
        rms_norm(&x, &[1.0, 2.0], 1e-6, &mut out);
        // Row 1: rms = sqrt(12.5 + eps); an all-zero row stays zero (eps).
        let r = (12.5f32 + 1e-6).sqrt();
        assert!((out[0] - 3.0 / r).abs() < 1e-6 && (out[1] - 8.0 / r).abs() < 1e-6);
        assert_eq!(out[2..], [0.0, 0.0]);
    }

    #[test]
    fn rope_at_position_zero_is_the_identity_and_rotates_pairs() {
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        rope_head(&mut x, &[1.0, 1.0], &[0.0, 0.0]);
        assert_eq!(x, [1.0, 2.0, 3.0, 4.0]);
        // A quarter turn maps (x1, x2) -> (-x2, x1) pairwise.
        rope_head(&mut x, &[0.0, 0.0], &[1.0, 1.0]);
        assert_eq!(x, [-3.0, -4.0, 1.0, 2.0]);
    }

    #[test]
    fn attention_weights_sum_to_one() {
        let q = [1.0f32, 0.0];
        let keys = [1.0f32, 0.0, 0.0, 1.0, 9.0, 9.0];
        let values = [1.0f32, 0.0, 0.0, 1.0, 5.0, 5.0];
        let mut scores = [0.0; 3];
        let mut out = [0.0; 2];
        // Only the first two positions are seen; the third must be ignored.
        attend(&q, &keys, &values, 2, &mut scores, &mut out);
        let p = 1.0 / (1.0 + (-1.0f32 / 2f32.sqrt()).exp());
        assert!(
            (out[0] - p).abs() < 1e-6 && (out[1] - (1.0 - p)).abs() < 1e-6,
            "{out:?}"
        );
    }

    #[test]
    fn dot_equals_the_plain_sum_on_exact_values() {
        // Small integers: every partial sum is exact, so any order agrees.
        let a: Vec<f32> = (0..19).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..19).map(|i| (i % 5) as f32).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert_eq!(dot(&a, &b), plain);
        assert_eq!(dot_portable(&a, &b), plain);
        assert_eq!(dot(&[], &[]), 0.0);
    }

    #[test]
    fn silu_mul_matches_the_formula() {
        let mut g = [0.0f32, 1.0, -2.0];
        silu_mul(&mut g, &[1.0, 2.0, 3.0]);
        assert_eq!(g[0], 0.0);
        assert!((g[1] - 2.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-6);
        assert!((g[2] - 3.0 * -2.0 / (1.0 + 2.0f32.exp())).abs() < 1e-6);
    }

    /// The plain per-row form: [`attend`] for every (row, head) pair.
    fn plain_attention(
        shape: AttnShape,
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        start: usize,
    ) -> Vec<f32> {
        let d = shape.head_dim;
        let span = shape.capacity * d;
        let group = shape.heads / shape.kv_heads;
        let mut scores = vec![0.0; shape.capacity];
        let mut out = vec![0.0; q.len()];
        for (pair, o) in out.chunks_exact_mut(d).enumerate() {
            let (t, h) = (pair / shape.heads, pair % shape.heads);
            let base = (h / group) * span;
            let qh = &q[pair * d..(pair + 1) * d];
            let (k, v) = (&keys[base..base + span], &values[base..base + span]);
            attend(qh, k, v, start + t + 1, &mut scores, o);
        }
        out
    }

    #[test]
    fn many_row_attention_equals_the_plain_form_on_odd_shapes() {
        use bitnet_kernels::testing::SplitMix;
        let mut rng = SplitMix(11);
        // head_dim 16/64/80 run the AVX-512 blocks (where the CPU has them),
        // 6 and 18 the portable ones; GQA groups 1 and 3; prompts of 1..37
        // rows on an empty cache and appended after 3..20 cached positions.
        // (64, 4, 2), (64, 9, 3), (128, 6, 2): whole GQA groups at once.
        for (d, heads, kv_heads) in [
            (16, 2, 2),
            (64, 6, 2),
            (80, 3, 1),
            (6, 3, 3),
            (18, 4, 2),
            (64, 4, 2),
            (64, 9, 3),
            (128, 6, 2),
            (128, 2, 1),
        ] {
            for (rows, start) in [(1, 0), (1, 20), (5, 3), (17, 0), (37, 16)] {
                let capacity = start + rows + 2;
                let shape = AttnShape {
                    heads,
                    kv_heads,
                    head_dim: d,
                    capacity,
                };
                let q: Vec<f32> = rng.normal_ish(rows * heads * d);
                // Scaled keys: scores of a few units, so the softmax is peaked.
                let keys: Vec<f32> = rng
                    .normal_ish(kv_heads * capacity * d)
                    .iter()
                    .map(|v| 3.0 * v)
                    .collect();
                let values = rng.normal_ish(kv_heads * capacity * d);
                let want = plain_attention(shape, &q, &keys, &values, start);
                let mut got = vec![f32::NAN; q.len()];
                causal_attention(shape, &q, &keys, &values, start, &mut got).unwrap();
                let mut portable = vec![f32::NAN; d];
                attend_blocked_portable(&q[..d], &keys, &values, start + 1, &mut portable);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                        "d={d} rows={rows} start={start} [{i}]: {g} vs {w}"
                    );
                }
                for (g, w) in portable.iter().zip(&want[..d]) {
                    assert!(
                        (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                        "portable d={d}: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn long_silu_rows_match_the_formula() {
        // 37 values: the 16-lane blocks and the scalar tail.
        let g0: Vec<f32> = (0..37).map(|i| i as f32 * 0.7 - 12.0).collect();
        let up: Vec<f32> = (0..37).map(|i| 1.0 + i as f32 * 0.1).collect();
        let mut g = g0.clone();
        silu_mul(&mut g, &up);
        for ((got, &x), &u) in g.iter().zip(&g0).zip(&up) {
            let want = x / (1.0 + (-x).exp()) * u;
            assert!(
                (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "{x}: {got} vs {want}"
            );
        }
    }
}
