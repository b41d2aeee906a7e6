//! The float parts of a decoder step, written as HF `modeling_llama.py`
//! computes them (in f32), over slices: RMSNorm, rotate-half RoPE, causal
//! grouped-query attention over the cache, SiLU-GLU.

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

/// `gate = silu(gate) * up`, elementwise (SwiGLU), `silu(x) = x / (1 + e^-x)`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    debug_assert_eq!(gate.len(), up.len());
    debug_assert!(!gate.is_empty());
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
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
}
