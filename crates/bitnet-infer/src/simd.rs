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
}
