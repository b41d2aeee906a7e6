//! AVX-512 dot products for the decode step's float loops: the LM head's
//! rows (fp32, bf16 or int8 weights against an f32 hidden state) and
//! attention's query-key products.
//!
//! Why: the crate is built for baseline x86-64 (SSE2), where these loops
//! vectorize 4 lanes wide with two accumulators; the head of a small model
//! (SmolLM2-135M: 49,152 x 576) was the largest single cost of a fused
//! step (docs/perf.md, "What stands in the way"). Here each row runs with
//! four 16-lane FMA accumulators, the weights widened in registers (bf16:
//! shift into the high half; int8: sign-extend and convert), so the loop is
//! bound by memory bandwidth, not by add latency. Numerics: f32 products
//! summed in a different order than the portable code (64 partial sums, then
//! a tree), within float rounding of it (tested).
//!
//! Callers check [`available`] once per call and fall back to the portable
//! loops; every function here asserts the lengths its pointer loads use.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Whether this module's code runs: the CPU has avx512f and avx512bw, and
/// `BITNET_KERNEL` (the kernels' override) does not ask for a narrower path
/// (`scalar` or `avx2`: then the portable loops run, for A/B timing).
#[inline]
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

// pot10: init (runs once per process, cached by `available`)
fn detect() -> bool {
    let narrowed = matches!(
        std::env::var("BITNET_KERNEL").as_deref(),
        Ok("scalar") | Ok("avx2")
    );
    #[cfg(target_arch = "x86_64")]
    {
        !narrowed
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = narrowed;
        false
    }
}

/// How a row of weights is widened to 16 f32 lanes.
#[cfg(target_arch = "x86_64")]
trait Widen {
    type Elem: Copy;
    /// One element as f32 (the tail past the last 16-wide step).
    fn scalar(e: Self::Elem) -> f32;
    /// 16 elements at `p` as f32.
    ///
    /// # Safety
    ///
    /// `p..p + 16` is readable and the CPU has avx512f/bw.
    unsafe fn load16(p: *const Self::Elem) -> __m512;
}

#[cfg(target_arch = "x86_64")]
struct F32s;
#[cfg(target_arch = "x86_64")]
struct Bf16s;
#[cfg(target_arch = "x86_64")]
struct I8s;

#[cfg(target_arch = "x86_64")]
impl Widen for F32s {
    type Elem = f32;
    fn scalar(e: f32) -> f32 {
        e
    }
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> __m512 {
        // SAFETY: the caller guarantees 16 readable values.
        // pot10: allow(R9) unaligned 64-byte load of 16 f32 the caller bounds-checked
        unsafe { _mm512_loadu_ps(p) }
    }
}

#[cfg(target_arch = "x86_64")]
impl Widen for Bf16s {
    type Elem = u16;
    fn scalar(e: u16) -> f32 {
        f32::from_bits(u32::from(e) << 16)
    }
    #[inline(always)]
    unsafe fn load16(p: *const u16) -> __m512 {
        // SAFETY: the caller guarantees 16 readable values (32 bytes).
        // pot10: allow(R9) unaligned 32-byte load of 16 bf16 the caller bounds-checked
        let h = unsafe { _mm256_loadu_si256(p.cast()) };
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }
}

#[cfg(target_arch = "x86_64")]
impl Widen for I8s {
    type Elem = i8;
    fn scalar(e: i8) -> f32 {
        f32::from(e)
    }
    #[inline(always)]
    unsafe fn load16(p: *const i8) -> __m512 {
        // SAFETY: the caller guarantees 16 readable values (16 bytes).
        // pot10: allow(R9) unaligned 16-byte load of 16 int8 the caller bounds-checked
        let b = unsafe { _mm_loadu_si128(p.cast()) };
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b))
    }
}

/// `sum x[k] * w[k]`: four 16-lane accumulators over 64-wide steps, then
/// 16-wide steps, then a scalar tail.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn dot_wide<W: Widen>(x: &[f32], w: &[W::Elem]) -> f32 {
    assert_eq!(
        x.len(),
        w.len(),
        "simd dot: lengths differ; please report this bug"
    );
    let n = x.len();
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut k = 0;
    // SAFETY: every load below reads `k..k + 16` with `k + 16 <= n`, and
    // both slices hold `n` values (asserted above).
    // pot10: allow(R9) pointer loads bounded by the loop conditions against the asserted common length
    unsafe {
        while k + 64 <= n {
            for (j, a) in acc.iter_mut().enumerate() {
                let at = k + 16 * j;
                *a = _mm512_fmadd_ps(_mm512_loadu_ps(xp.add(at)), W::load16(wp.add(at)), *a);
            }
            k += 64;
        }
        while k + 16 <= n {
            acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(xp.add(k)), W::load16(wp.add(k)), acc[0]);
            k += 16;
        }
    }
    let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    let mut total = _mm512_reduce_add_ps(sum);
    for i in k..n {
        total += x[i] * W::scalar(w[i]);
    }
    total
}

macro_rules! row_kernel {
    ($name:ident, $widen:ident, $elem:ty) => {
        /// `out[i] = scale(r0 + i) * (W[r0 + i] . x)` for the rows of a
        /// row-major `[rows, x.len()]` matrix `w` (`scale` is 1 except for
        /// int8 rows).
        ///
        /// # Safety
        ///
        /// [`available`] must be true.
        // pot10: allow(R9) `#[target_feature]` entry point, unsafe by language rule; callers check `available()` first and it asserts every bound its loads use
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512bw,fma")]
        pub unsafe fn $name(
            w: &[$elem],
            x: &[f32],
            r0: usize,
            out: &mut [f32],
            scale: impl Fn(usize) -> f32,
        ) {
            let n = x.len();
            assert!(
                (r0 + out.len()) * n <= w.len(),
                "simd head rows {r0}..{} of a {}-value matrix; please report this bug",
                r0 + out.len(),
                w.len()
            );
            for (i, o) in out.iter_mut().enumerate() {
                let r = r0 + i;
                // SAFETY: `available()` was checked by the caller; the row is in bounds (asserted).
                // pot10: allow(R9) calls the bounded SIMD dot on an in-bounds row slice
                *o = unsafe { dot_wide::<$widen>(x, &w[r * n..(r + 1) * n]) } * scale(r);
            }
        }
    };
}

row_kernel!(rows_f32, F32s, f32);
row_kernel!(rows_bf16, Bf16s, u16);
row_kernel!(rows_i8, I8s, i8);

/// `q . k` for attention (f32 both).
///
/// # Safety
///
/// [`available`] must be true.
// pot10: allow(R9) `#[target_feature]` entry point, unsafe by language rule; callers check `available()` first and `dot_wide` asserts the lengths
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,fma")]
pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: the caller checked `available()`.
    // pot10: allow(R9) the bounded SIMD dot, under the caller's feature check
    unsafe { dot_wide::<F32s>(a, b) }
}

/// `e^x` in 16 lanes (Cephes `expf`: `x = n ln2 + r`, a degree-5
/// polynomial in `r`, `2^n` by `scalef`), within 2 ulp of `f32::exp` on
/// `[-87, 88]`; inputs are clamped to that range (below it the result is
/// ~1e-38, not 0: callers mask lanes that must be 0).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn exp16(x: __m512) -> __m512 {
    let x = _mm512_max_ps(
        _mm512_min_ps(x, _mm512_set1_ps(88.376_26)),
        _mm512_set1_ps(-87.336_55),
    );
    let n =
        _mm512_roundscale_ps::<0x08>(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)));
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let y = _mm512_fmadd_ps(
        _mm512_mul_ps(p, r),
        r,
        _mm512_add_ps(r, _mm512_set1_ps(1.0)),
    );
    _mm512_scalef_ps(y, n)
}

/// The 16 sums of `acc[j]`'s lanes, as lane `j` of one vector (a transpose
/// by unpack and 128-bit shuffles: 15 adds instead of 16 reductions).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn sum16(acc: &[__m512; 16]) -> __m512 {
    let mut two = [_mm512_setzero_ps(); 8];
    for (i, t) in two.iter_mut().enumerate() {
        let (a, b) = (acc[2 * i], acc[2 * i + 1]);
        // Per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3].
        *t = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    }
    let mut four = [_mm512_setzero_ps(); 4];
    for (i, f) in four.iter_mut().enumerate() {
        let (c, d) = (
            _mm512_castps_pd(two[2 * i]),
            _mm512_castps_pd(two[2 * i + 1]),
        );
        // Per 128-bit lane: keys 4i..4i+4, that lane's partial sums.
        *f = _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(c, d)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(c, d)),
        );
    }
    let pair = |x: __m512, y: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y),
        )
    };
    pair(pair(four[0], four[1]), pair(four[2], four[3]))
}

/// `q . k_j` for the `n <= 16` keys of `keys` (`[n, D]`), in lanes `0..n`
/// (the rest 0).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn block_dots(q: &[f32], keys: &[f32], n: usize) -> __m512 {
    let d = q.len();
    let mut acc = [_mm512_setzero_ps(); 16];
    // SAFETY: the caller asserted `d % 16 == 0` and `keys.len() >= n * d`;
    // every load reads `c..c + 16 <= d` of a row `j < n`.
    // pot10: allow(R9) pointer loads inside the rows the caller asserted
    unsafe {
        for (j, a) in acc.iter_mut().enumerate().take(n) {
            let k = keys.as_ptr().add(j * d);
            for c in (0..d).step_by(16) {
                *a = _mm512_fmadd_ps(
                    _mm512_loadu_ps(q.as_ptr().add(c)),
                    _mm512_loadu_ps(k.add(c)),
                    *a,
                );
            }
        }
        sum16(&acc)
    }
}

/// [`crate::ops::attend`] of one query head in 16-key blocks with an
/// online softmax (running max and sum, the output rescaled when the max
/// grows), so it needs no scratch: 16 dot products per block reduced
/// together, a vector `exp`, and the value rows added 16 lanes at a time.
/// Equal to the plain form up to float rounding (tested in `ops`).
///
/// # Safety
///
/// [`available`] must be true.
// pot10: allow(R9) `#[target_feature]` entry point, unsafe by language rule; callers check `available()` first and it asserts every bound its loads use
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,fma")]
pub unsafe fn attend_online(q: &[f32], keys: &[f32], values: &[f32], seen: usize, out: &mut [f32]) {
    let d = q.len();
    assert!(
        d > 0
            && d.is_multiple_of(16)
            && out.len() == d
            && seen >= 1
            && keys.len() >= seen * d
            && values.len() >= seen * d,
        "simd attention: head_dim {d}, {seen} positions; please report this bug"
    );
    // SAFETY: the bounds each form's loads use are asserted above.
    // pot10: allow(R9) the fixed-width forms under the same feature check and bounds
    unsafe {
        match d {
            64 => return attend_fixed::<4>(q, keys, values, seen, out),
            128 => return attend_fixed::<8>(q, keys, values, seen, out),
            _ => {}
        }
    }
    let scale = _mm512_set1_ps(1.0 / (d as f32).sqrt());
    let (mut max, mut total) = (f32::NEG_INFINITY, 0.0f32);
    let mut probs = [0.0f32; 16];
    out.fill(0.0);
    let mut s0 = 0;
    while s0 < seen {
        let n = (seen - s0).min(16);
        let valid: __mmask16 = if n == 16 { 0xffff } else { (1u16 << n) - 1 };
        // SAFETY: rows s0..s0 + n < seen are inside `keys` (asserted).
        // pot10: allow(R9) the bounded block dot under the caller's feature check
        let scores = _mm512_mul_ps(unsafe { block_dots(q, &keys[s0 * d..], n) }, scale);
        let new_max = max.max(_mm512_mask_reduce_max_ps(valid, scores));
        // SAFETY: register-only arithmetic.
        // pot10: allow(R9) the vector exp, registers only
        let p = _mm512_maskz_mov_ps(valid, unsafe {
            exp16(_mm512_sub_ps(scores, _mm512_set1_ps(new_max)))
        });
        let corr = (max - new_max).exp();
        total = total * corr + _mm512_reduce_add_ps(p);
        // SAFETY: `probs` holds 16 f32.
        // pot10: allow(R9) stores 16 lanes into a 16-value stack array
        unsafe { _mm512_storeu_ps(probs.as_mut_ptr(), p) };
        let vals = &values[s0 * d..(s0 + n) * d];
        for c in (0..d).step_by(16) {
            // SAFETY: `c + 16 <= d = out.len()`, and row j < n of `vals` holds `d` values.
            // pot10: allow(R9) loads and stores inside the asserted rows
            unsafe {
                let mut acc =
                    _mm512_mul_ps(_mm512_loadu_ps(out.as_ptr().add(c)), _mm512_set1_ps(corr));
                for (j, &pj) in probs.iter().enumerate().take(n) {
                    acc = _mm512_fmadd_ps(
                        _mm512_set1_ps(pj),
                        _mm512_loadu_ps(vals.as_ptr().add(j * d + c)),
                        acc,
                    );
                }
                _mm512_storeu_ps(out.as_mut_ptr().add(c), acc);
            }
        }
        max = new_max;
        s0 += n;
    }
    let inv = 1.0 / total;
    for o in out.iter_mut() {
        *o *= inv;
    }
}

/// [`attend_online`] for a head of `C * 16` values known at compile time
/// (64 and 128, every model this project runs): the query and the output
/// accumulators stay in registers and every loop unrolls. Why it is 2-3x the
/// generic form (docs/perf.md, "Fused prefill"): there the output
/// accumulation ran `C` chains of 16 dependent FMAs per block and the 16
/// per-key partial sums lived on the stack (a runtime key count); here the
/// value rows are added key-outer into `C` accumulators per parity of the
/// key (2C independent chains), and a partial block reads its missing keys
/// as copies of the last one (in bounds, then masked out), so the dot
/// products always run the 16-key form.
///
/// # Safety
///
/// The CPU has avx512f/bw; `q` and `out` hold `C * 16` values and `keys`,
/// `values` at least `seen * C * 16`, `seen >= 1` (what [`attend_online`] asserts).
#[cfg(target_arch = "x86_64")]
// Index loops: the register arrays are indexed by chunk `c` and head `g`
// alongside pointer offsets of the same indices.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,fma")]
unsafe fn attend_fixed<const C: usize>(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    seen: usize,
    out: &mut [f32],
) {
    let d = C * 16;
    debug_assert!(q.len() == d && out.len() == d && seen >= 1);
    debug_assert!(keys.len() >= seen * d && values.len() >= seen * d);
    let scale = _mm512_set1_ps(1.0 / (d as f32).sqrt());
    // SAFETY: every load and store below reads `c * 16..c * 16 + 16 <= d`
    // of `q`/`out` or of a key/value row `< seen` (the caller's bounds).
    // pot10: allow(R9) loads and stores inside the rows the caller asserted
    unsafe {
        let mut qv = [_mm512_setzero_ps(); C];
        for (c, v) in qv.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(q.as_ptr().add(c * 16));
        }
        let (mut even, mut odd) = ([_mm512_setzero_ps(); C], [_mm512_setzero_ps(); C]);
        let (mut max, mut total) = (f32::NEG_INFINITY, 0.0f32);
        let mut probs = [0.0f32; 16];
        let mut s0 = 0;
        while s0 < seen {
            let n = (seen - s0).min(16);
            let valid: __mmask16 = if n == 16 { 0xffff } else { (1u16 << n) - 1 };
            let mut part = [_mm512_setzero_ps(); 16];
            for (j, a) in part.iter_mut().enumerate() {
                let k = keys.as_ptr().add((s0 + j.min(n - 1)) * d);
                let mut acc = _mm512_mul_ps(qv[0], _mm512_loadu_ps(k));
                for (c, &qc) in qv.iter().enumerate().skip(1) {
                    acc = _mm512_fmadd_ps(qc, _mm512_loadu_ps(k.add(c * 16)), acc);
                }
                *a = acc;
            }
            let scores = _mm512_mul_ps(sum16(&part), scale);
            let new_max = max.max(_mm512_mask_reduce_max_ps(valid, scores));
            let p =
                _mm512_maskz_mov_ps(valid, exp16(_mm512_sub_ps(scores, _mm512_set1_ps(new_max))));
            let corr = (max - new_max).exp();
            total = total * corr + _mm512_reduce_add_ps(p);
            _mm512_storeu_ps(probs.as_mut_ptr(), p);
            if corr != 1.0 {
                let cv = _mm512_set1_ps(corr);
                for c in 0..C {
                    even[c] = _mm512_mul_ps(even[c], cv);
                    odd[c] = _mm512_mul_ps(odd[c], cv);
                }
            }
            let rows = values.as_ptr().add(s0 * d);
            let mut j = 0;
            while j + 2 <= n {
                let (pe, po) = (_mm512_set1_ps(probs[j]), _mm512_set1_ps(probs[j + 1]));
                let (ve, vo) = (rows.add(j * d), rows.add((j + 1) * d));
                for c in 0..C {
                    even[c] = _mm512_fmadd_ps(pe, _mm512_loadu_ps(ve.add(c * 16)), even[c]);
                    odd[c] = _mm512_fmadd_ps(po, _mm512_loadu_ps(vo.add(c * 16)), odd[c]);
                }
                j += 2;
            }
            if j < n {
                let pe = _mm512_set1_ps(probs[j]);
                for c in 0..C {
                    even[c] =
                        _mm512_fmadd_ps(pe, _mm512_loadu_ps(rows.add(j * d + c * 16)), even[c]);
                }
            }
            max = new_max;
            s0 += n;
        }
        let inv = _mm512_set1_ps(1.0 / total);
        for c in 0..C {
            _mm512_storeu_ps(
                out.as_mut_ptr().add(c * 16),
                _mm512_mul_ps(_mm512_add_ps(even[c], odd[c]), inv),
            );
        }
    }
}

/// [`attend_online`] of the `G` query heads that share one kv head (GQA),
/// one row: `qs` and `out` hold `G` heads of `C * 16` values back to back,
/// all over the same `seen` keys. Each block of keys and values is read
/// once for the `G` heads, and their softmax chains (a reduction, the
/// vector `exp`, a scalar `exp` per block) interleave instead of running
/// one after another; equal to [`attend_online`] per head up to float
/// rounding (tested in `ops`).
///
/// # Safety
///
/// The CPU has avx512f/bw; `qs` and `out` hold `G * C * 16` values, `keys`
/// and `values` at least `seen * C * 16`, `seen >= 1`.
// pot10: allow(R9) `#[target_feature]` entry point, unsafe by language rule; `ops::causal_attention` calls it after `available()` and it asserts every bound its loads use
#[cfg(target_arch = "x86_64")]
// Index loops: the register arrays are indexed by chunk `c` and head `g`
// alongside pointer offsets of the same indices.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,fma")]
pub unsafe fn attend_group<const C: usize, const G: usize>(
    qs: &[f32],
    keys: &[f32],
    values: &[f32],
    seen: usize,
    out: &mut [f32],
) {
    let d = C * 16;
    assert!(
        qs.len() == G * d
            && out.len() == G * d
            && seen >= 1
            && keys.len() >= seen * d
            && values.len() >= seen * d,
        "simd group attention: {G} heads of {d}, {seen} positions; please report this bug"
    );
    let scale = _mm512_set1_ps(1.0 / (d as f32).sqrt());
    let mut acc = [[_mm512_setzero_ps(); C]; G];
    let (mut max, mut total) = ([f32::NEG_INFINITY; G], [0.0f32; G]);
    let mut probs = [[0.0f32; 16]; G];
    let mut s0 = 0;
    // SAFETY: every load reads `c * 16..c * 16 + 16 <= d` of a query head
    // `g < G` or of a key/value row `< seen`; the stores write the `G * d`
    // outputs (all asserted above).
    // pot10: allow(R9) loads and stores inside the asserted rows
    unsafe {
        while s0 < seen {
            let n = (seen - s0).min(16);
            let valid: __mmask16 = if n == 16 { 0xffff } else { (1u16 << n) - 1 };
            for g in 0..G {
                let q = qs.as_ptr().add(g * d);
                let mut part = [_mm512_setzero_ps(); 16];
                for (j, a) in part.iter_mut().enumerate() {
                    let k = keys.as_ptr().add((s0 + j.min(n - 1)) * d);
                    let mut dot = _mm512_mul_ps(_mm512_loadu_ps(q), _mm512_loadu_ps(k));
                    for c in 1..C {
                        dot = _mm512_fmadd_ps(
                            _mm512_loadu_ps(q.add(c * 16)),
                            _mm512_loadu_ps(k.add(c * 16)),
                            dot,
                        );
                    }
                    *a = dot;
                }
                let scores = _mm512_mul_ps(sum16(&part), scale);
                let new_max = max[g].max(_mm512_mask_reduce_max_ps(valid, scores));
                let p = _mm512_maskz_mov_ps(
                    valid,
                    exp16(_mm512_sub_ps(scores, _mm512_set1_ps(new_max))),
                );
                let corr = (max[g] - new_max).exp();
                total[g] = total[g] * corr + _mm512_reduce_add_ps(p);
                _mm512_storeu_ps(probs[g].as_mut_ptr(), p);
                if corr != 1.0 {
                    let cv = _mm512_set1_ps(corr);
                    for a in acc[g].iter_mut() {
                        *a = _mm512_mul_ps(*a, cv);
                    }
                }
                max[g] = new_max;
            }
            let rows = values.as_ptr().add(s0 * d);
            for j in 0..n {
                let v = rows.add(j * d);
                for c in 0..C {
                    let vc = _mm512_loadu_ps(v.add(c * 16));
                    for g in 0..G {
                        acc[g][c] = _mm512_fmadd_ps(_mm512_set1_ps(probs[g][j]), vc, acc[g][c]);
                    }
                }
            }
            s0 += n;
        }
        for g in 0..G {
            let inv = _mm512_set1_ps(1.0 / total[g]);
            for c in 0..C {
                _mm512_storeu_ps(
                    out.as_mut_ptr().add(g * d + c * 16),
                    _mm512_mul_ps(acc[g][c], inv),
                );
            }
        }
    }
}

/// `gate = silu(gate) * up` with the vector `exp` (see [`crate::ops::silu_mul`]).
///
/// # Safety
///
/// [`available`] must be true.
// pot10: allow(R9) `#[target_feature]` entry point, unsafe by language rule; callers check `available()` first and it asserts the lengths
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,fma")]
pub unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) {
    assert_eq!(
        gate.len(),
        up.len(),
        "simd silu: lengths differ; please report this bug"
    );
    let n = gate.len();
    let one = _mm512_set1_ps(1.0);
    let mut i = 0;
    // SAFETY: every access reads/writes `i..i + 16 <= n` of both slices.
    // pot10: allow(R9) loads and stores bounded by the loop condition on the asserted common length
    unsafe {
        while i + 16 <= n {
            let g = _mm512_loadu_ps(gate.as_ptr().add(i));
            let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
            let s = _mm512_div_ps(g, _mm512_add_ps(one, e));
            _mm512_storeu_ps(
                gate.as_mut_ptr().add(i),
                _mm512_mul_ps(s, _mm512_loadu_ps(up.as_ptr().add(i))),
            );
            i += 16;
        }
    }
    for k in i..n {
        gate[k] = gate[k] / (1.0 + (-gate[k]).exp()) * up[k];
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    fn plain(x: &[f32], w: &[f32]) -> f64 {
        x.iter()
            .zip(w)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum()
    }

    #[test]
    fn simd_rows_equal_plain_dot_products_on_odd_widths() {
        if !available() {
            eprintln!("skipped: no avx512f/bw on this CPU");
            return;
        }
        for n in [1usize, 15, 16, 17, 63, 64, 65, 100, 576] {
            let rows = 3;
            let w: Vec<f32> = (0..rows * n)
                .map(|i| ((i * 7) % 13) as f32 * 0.25 - 1.5)
                .collect();
            let x: Vec<f32> = (0..n).map(|i| ((i * 5) % 11) as f32 * 0.5 - 2.0).collect();
            let wb: Vec<u16> = w.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
            let wi: Vec<i8> = (0..rows * n).map(|i| ((i * 7) % 13) as i8 - 6).collect();
            let (mut a, mut b, mut c) = (vec![f32::NAN; 2], vec![f32::NAN; 2], vec![f32::NAN; 2]);
            // SAFETY: `available()` checked above.
            unsafe {
                rows_f32(&w, &x, 1, &mut a, |_| 1.0);
                rows_bf16(&wb, &x, 1, &mut b, |_| 1.0);
                rows_i8(&wi, &x, 1, &mut c, |r| r as f32);
            }
            for i in 0..2 {
                let r = i + 1;
                let row = &w[r * n..(r + 1) * n];
                // Quarter and half steps: every product and sum is exact in f32.
                assert_eq!(f64::from(a[i]), plain(&x, row), "f32 n={n}");
                assert_eq!(
                    f64::from(b[i]),
                    plain(&x, row),
                    "bf16 n={n} (values exact in bf16)"
                );
                let wf: Vec<f32> = wi[r * n..(r + 1) * n]
                    .iter()
                    .map(|&v| f32::from(v))
                    .collect();
                assert_eq!(f64::from(c[i]), plain(&x, &wf) * r as f64, "i8 n={n}");
            }
            // SAFETY: `available()` checked above.
            assert_eq!(
                f64::from(unsafe { dot_f32(&x, &w[..n]) }),
                plain(&x, &w[..n])
            );
        }
    }

    #[test]
    fn vector_exp_is_within_two_ulp_of_std() {
        if !available() {
            eprintln!("skipped: no avx512f/bw on this CPU");
            return;
        }
        let xs: Vec<f32> = (0..4000).map(|i| -87.0 + i as f32 * 0.04373).collect();
        for chunk in xs.chunks_exact(16) {
            let mut got = [0.0f32; 16];
            // SAFETY: `available()` checked above; 16 values each way.
            unsafe {
                #[target_feature(enable = "avx512f,avx512bw,fma")]
                unsafe fn run(x: &[f32], out: &mut [f32; 16]) {
                    unsafe {
                        _mm512_storeu_ps(out.as_mut_ptr(), exp16(_mm512_loadu_ps(x.as_ptr())))
                    }
                }
                run(chunk, &mut got);
            }
            for (x, g) in chunk.iter().zip(got) {
                let want = x.exp();
                let ulp = (want.to_bits() as i64 - g.to_bits() as i64).abs();
                assert!(ulp <= 2, "exp({x}) = {g}, std {want}: {ulp} ulp");
            }
        }
    }
}
