//! Per-token absmax int8 activation quantization (BitNet b1.58, eq. 4-5).
//!
//! BitLinear quantizes each token's activations to int8 with its own scale
//! `act_scale = 127 / max(max_j |x_j|, 1e-5)` and
//! `x_q = clamp(round(x * act_scale), -128, 127)`, where `round` is
//! ties-to-even like `torch.round`. The kernels must reproduce the
//! fake-quant graph's integers exactly, so the arithmetic here is written
//! in the same f32 operation order as the PyTorch reference.
//!
//! The quantized rows are stored in the kernels' activation layout: each row
//! padded with zeros to a multiple of [`K_BLOCK`] and 64-byte aligned, so the
//! SIMD loops need no tail handling (zero activations contribute nothing).

use super::matrix::{blocks_as_bytes, blocks_as_bytes_mut, for_each_chunk_mut, Block64, K_BLOCK};
use super::KernelError;

/// Smallest absmax used for the scale, as in the BitNet reference code.
pub const ACT_ABSMAX_FLOOR: f32 = 1e-5;

/// Rows from which [`QuantizedActivations::quantize_from`] runs on the
/// kernels' threads (a prefill; decode and small batches stay serial).
const PARALLEL_ROWS: usize = 64;

/// Rows per task of the threaded quantization.
const ROWS_PER_TASK: usize = 16;

/// Quantizes one token row; returns `act_scale`, or `None` when the row holds
/// a NaN or infinity (the caller then propagates NaN, as torch would).
///
/// `x_q` must be at least as long as `x`; extra entries are left untouched.
pub fn quantize_row(x: &[f32], x_q: &mut [i8]) -> Option<f32> {
    debug_assert!(
        x_q.len() >= x.len(),
        "quantize_row: output shorter than input"
    );
    let act_scale = row_scale_fast(x)?;
    quantize_with_scale_fast(x, act_scale, x_q);
    Some(act_scale)
}

/// [`row_scale`] on the AVX2 build where the CPU has it.
fn row_scale_fast(x: &[f32]) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports avx2 (checked on the line above).
        // pot10: allow(R9) runs the AVX2 build of the same safe code, only after `is_x86_feature_detected!("avx2")`
        return unsafe { row_scale_avx2(x) };
    }
    row_scale(x)
}

/// [`quantize_with_scale`] with AVX-512 (or the AVX2 build) where the CPU has it.
fn quantize_with_scale_fast(x: &[f32], act_scale: f32, x_q: &mut [i8]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports avx512f (checked on the line above).
        // pot10: allow(R9) the AVX-512 quantizer only after `is_x86_feature_detected!("avx512f")`; it asserts the lengths
        return unsafe { quantize_with_scale_avx512(x, act_scale, x_q) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports avx2 (checked on the line above).
        // pot10: allow(R9) runs the AVX2 build of the same safe code, only after `is_x86_feature_detected!("avx2")`
        return unsafe { quantize_with_scale_avx2(x, act_scale, x_q) };
    }
    quantize_with_scale(x, act_scale, x_q)
}

/// [`quantize_with_scale`] 16 lanes at a time: the same f32 product,
/// `vrndscaleps` to nearest-even (what `round_ties_even` is), the same
/// clamp, then an exact conversion of the integral value and a narrowing
/// store. The AVX2 build of the portable loop converts element by element
/// (a scalar `cvttss2si` and byte insert each), which made quantization a
/// tenth of a demo-model prefill. Inputs are finite (`row_scale` refused
/// the others), so no NaN reaches the clamp.
///
/// # Safety
///
/// The CPU has avx512f.
// pot10: allow(R9) `#[target_feature]` SIMD entry point, unsafe by language rule; callers check the feature and it asserts the lengths its loads use
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn quantize_with_scale_avx512(x: &[f32], act_scale: f32, x_q: &mut [i8]) {
    use std::arch::x86_64::*;
    assert!(
        x_q.len() >= x.len(),
        "quantize: output shorter than input; please report this bug"
    );
    let n = x.len();
    let (scale, lo, hi) = (
        _mm512_set1_ps(act_scale),
        _mm512_set1_ps(-128.0),
        _mm512_set1_ps(127.0),
    );
    let mut i = 0;
    // SAFETY: every load reads `x[i..i + 16]` and every store writes
    // `x_q[i..i + 16]`, `i + 16 <= n <= x_q.len()`.
    // pot10: allow(R9) loads and stores bounded by the loop condition on the asserted lengths
    unsafe {
        while i + 16 <= n {
            let v = _mm512_mul_ps(_mm512_loadu_ps(x.as_ptr().add(i)), scale);
            let r = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
            let c = _mm512_min_ps(_mm512_max_ps(r, lo), hi);
            let q = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(c));
            _mm_storeu_si128(x_q.as_mut_ptr().add(i).cast(), q);
            i += 16;
        }
    }
    quantize_with_scale(&x[i..], act_scale, &mut x_q[i..]);
}

// pot10: allow(R9) `#[target_feature]` function, unsafe by language rule: it only calls the safe portable code, built with AVX2
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_scale_avx2(x: &[f32]) -> Option<f32> {
    row_scale(x)
}

// pot10: allow(R9) `#[target_feature]` function, unsafe by language rule: it only calls the safe portable code, built with AVX2
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_with_scale_avx2(x: &[f32], act_scale: f32, x_q: &mut [i8]) {
    quantize_with_scale(x, act_scale, x_q)
}

/// The reference the fast forms are tested against: scale, then codes.
#[cfg(test)]
fn quantize_row_portable(x: &[f32], x_q: &mut [i8]) -> Option<f32> {
    debug_assert!(
        x_q.len() >= x.len(),
        "quantize_row: output shorter than input"
    );
    let act_scale = row_scale(x)?;
    quantize_with_scale(x, act_scale, x_q);
    Some(act_scale)
}

/// A row's `act_scale = 127 / max(absmax, floor)`, `None` when it holds a
/// NaN or infinity (the first half of [`quantize_row`]).
#[inline(always)]
fn row_scale(x: &[f32]) -> Option<f32> {
    // For finite floats the order of |v| equals the unsigned order of the
    // sign-cleared bits, and non-finite values are exactly those at or above
    // the infinity pattern; an integer max vectorizes where f32::max does not.
    let max_bits = x.iter().fold(0u32, |m, v| m.max(v.to_bits() & 0x7fff_ffff));
    if max_bits >= f32::INFINITY.to_bits() {
        return None;
    }
    let absmax = f32::from_bits(max_bits);
    let act_scale = 127.0 / absmax.max(ACT_ABSMAX_FLOOR);
    // Finite absmax and the floor keep the scale finite and positive.
    debug_assert!(act_scale.is_finite() && act_scale > 0.0);
    Some(act_scale)
}

/// `x_q = clamp(round(x * act_scale), -128, 127)` (the second half of
/// [`quantize_row`]).
#[inline(always)]
fn quantize_with_scale(x: &[f32], act_scale: f32, x_q: &mut [i8]) {
    for (q, &v) in x_q.iter_mut().zip(x) {
        *q = (v * act_scale).round_ties_even().clamp(-128.0, 127.0) as i8;
    }
}

/// The bytes of an activation row as the int8 codes they hold.
fn codes_mut(bytes: &mut [u8]) -> &mut [i8] {
    // SAFETY: same size/alignment and all bit patterns valid for u8 and i8;
    // the unique borrow is passed on, only reinterpreted.
    // pot10: allow(R9) views the same bytes as i8 (same size and alignment, every bit pattern valid); std has no safe cast
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<i8>(), bytes.len()) }
}

/// `sum_k x_q[k]` of one row's blocks (the codes as i8).
fn code_sum(blocks: &[Block64]) -> i32 {
    blocks_as_bytes(blocks)
        .iter()
        .map(|&b| b as i8 as i32)
        .sum()
}

/// Quantized activations of `rows` tokens in the kernels' padded layout.
#[derive(Debug, Clone)]
pub struct QuantizedActivations {
    /// `rows * blocks_per_row` 64-byte chunks; row `t` occupies chunks
    /// `t * blocks_per_row ..`, holding `x_q[t, 0..k_pad]` in natural order.
    pub(crate) chunks: Vec<Block64>,
    /// 64-byte chunks per row (`k_pad / 64`).
    pub(crate) chunks_per_row: usize,
    /// Per-row `act_scale`; `None` marks a row with non-finite input.
    pub(crate) act_scales: Vec<Option<f32>>,
    /// Per-row `sum_k x_q[t, k]`: the SIMD paths compute `sum (q + 1) x`
    /// with unsigned codes and subtract this to get `sum q x` exactly.
    pub(crate) row_sums: Vec<i32>,
    pub(crate) rows: usize,
}

impl Default for QuantizedActivations {
    fn default() -> Self {
        Self::new()
    }
}

impl QuantizedActivations {
    /// An empty buffer to quantize into with [`Self::quantize_from`]; it
    /// grows to the largest shape it is given and is then reused without
    /// allocating (the decode loop keeps one per model).
    // pot10: init (an empty buffer: `Vec::new` does not allocate)
    pub fn new() -> Self {
        QuantizedActivations {
            chunks: Vec::new(),
            chunks_per_row: 0,
            act_scales: Vec::new(),
            row_sums: Vec::new(),
            rows: 0,
        }
    }

    fn zeroed(rows: usize, in_features: usize) -> Self {
        let mut acts = Self::new();
        acts.reset(rows, in_features);
        acts
    }

    /// Reshapes the buffer to `rows` zeroed rows of `in_features` padded
    /// columns, reusing its capacity (it allocates only to grow).
    fn reset(&mut self, rows: usize, in_features: usize) {
        let chunks_per_row = in_features.div_ceil(K_BLOCK) * (K_BLOCK / 64);
        // Whole K blocks per row, never fewer bytes than features.
        debug_assert!(chunks_per_row * 64 >= in_features);
        debug_assert!(chunks_per_row.is_multiple_of(K_BLOCK / 64));
        self.chunks.clear();
        // pot10: allow(R3) grows only past the largest shape seen so far; a decode loop reuses the same capacity every step
        self.chunks.resize(rows * chunks_per_row, Block64([0; 64]));
        self.act_scales.clear();
        // pot10: allow(R3) grows only past the largest shape seen so far; a decode loop reuses the same capacity every step
        self.act_scales.resize(rows, Some(1.0));
        self.row_sums.clear();
        // pot10: allow(R3) grows only past the largest shape seen so far; a decode loop reuses the same capacity every step
        self.row_sums.resize(rows, 0);
        self.chunks_per_row = chunks_per_row;
        self.rows = rows;
    }

    /// Quantizes `x` (`[rows, in_features]`, row-major) per token into this
    /// buffer, replacing what it held: [`quantize_activations`] without the
    /// allocation once the buffer has grown to the shape.
    pub fn quantize_from(
        &mut self,
        x: &[f32],
        rows: usize,
        in_features: usize,
    ) -> Result<(), KernelError> {
        check_buffer_len("input activations", x.len(), rows, in_features)?;
        self.reset(rows, in_features);
        debug_assert_eq!(self.act_scales.len(), rows);
        if rows >= PARALLEL_ROWS && crate::num_threads() > 1 {
            return self.quantize_rows_parallel(x, in_features);
        }
        for row in 0..rows {
            let src = &x[row * in_features..(row + 1) * in_features];
            let dst = codes_mut(self.row_bytes_mut(row));
            // The padded row holds the whole input row (quantize_row's contract).
            debug_assert!(dst.len() >= src.len());
            let scale = quantize_row(src, dst);
            if scale.is_none() {
                dst.fill(0);
            }
            self.act_scales[row] = scale;
        }
        self.finish_row_sums();
        Ok(())
    }

    /// Padded columns per row (a multiple of [`K_BLOCK`]); 0 when empty.
    pub fn padded_columns(&self) -> usize {
        debug_assert_eq!(self.chunks.len(), self.rows * self.chunks_per_row);
        debug_assert!(self.chunks_per_row.is_multiple_of(K_BLOCK / 64));
        self.chunks_per_row * 64
    }

    fn row_bytes_mut(&mut self, row: usize) -> &mut [u8] {
        debug_assert!(row < self.rows, "row {row} of {}", self.rows);
        debug_assert_eq!(self.chunks.len(), self.rows * self.chunks_per_row);
        let chunks = &mut self.chunks[row * self.chunks_per_row..(row + 1) * self.chunks_per_row];
        blocks_as_bytes_mut(chunks)
    }

    /// [`Self::quantize_from`] of a prefill on the kernels' threads, in
    /// three passes over blocks of rows (scales, codes, row sums), each
    /// writing one array: the same per-row arithmetic as the serial loop, so
    /// the same bytes. Serial, the quantization was a tenth of a demo-model
    /// prefill on one thread and more of it on two.
    fn quantize_rows_parallel(&mut self, x: &[f32], in_features: usize) -> Result<(), KernelError> {
        let width = self.chunks_per_row;
        let input = |row: usize| &x[row * in_features..(row + 1) * in_features];
        for_each_chunk_mut(&mut self.act_scales, ROWS_PER_TASK, |r0, scales| {
            for (i, scale) in scales.iter_mut().enumerate() {
                *scale = row_scale_fast(input(r0 + i));
            }
        })?;
        let scales = &self.act_scales;
        for_each_chunk_mut(&mut self.chunks, ROWS_PER_TASK * width, |at, rows| {
            for (i, row) in rows.chunks_exact_mut(width).enumerate() {
                let r = at / width + i;
                if let Some(scale) = scales[r] {
                    let dst = codes_mut(blocks_as_bytes_mut(row));
                    quantize_with_scale_fast(input(r), scale, dst);
                }
            }
        })?;
        let chunks = &self.chunks;
        for_each_chunk_mut(&mut self.row_sums, ROWS_PER_TASK, |r0, sums| {
            for (i, sum) in sums.iter_mut().enumerate() {
                let start = (r0 + i) * width;
                *sum = code_sum(&chunks[start..start + width]);
            }
        })?;
        Ok(())
    }

    fn finish_row_sums(&mut self) {
        debug_assert_eq!(self.row_sums.len(), self.rows);
        debug_assert_eq!(self.chunks.len(), self.rows * self.chunks_per_row);
        for row in 0..self.rows {
            let start = row * self.chunks_per_row;
            self.row_sums[row] = code_sum(&self.chunks[start..start + self.chunks_per_row]);
        }
    }

    /// Copies already-quantized `x_q` (`[rows, in_features]`) into the layout.
    pub(crate) fn from_quantized(
        x_q: &[i8],
        rows: usize,
        in_features: usize,
    ) -> Result<Self, KernelError> {
        check_buffer_len("quantized activations", x_q.len(), rows, in_features)?;
        let mut acts = Self::zeroed(rows, in_features);
        debug_assert_eq!(acts.rows, rows);
        for row in 0..rows {
            let src = &x_q[row * in_features..(row + 1) * in_features];
            for (dst, &q) in acts.row_bytes_mut(row).iter_mut().zip(src) {
                *dst = q as u8;
            }
        }
        acts.finish_row_sums();
        debug_assert_eq!(acts.row_sums.len(), rows);
        Ok(acts)
    }

    /// Number of token rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// `act_scale` of a row, `None` when that row held NaN or infinity.
    pub fn act_scale(&self, row: usize) -> Option<f32> {
        self.act_scales.get(row).copied().flatten()
    }

    /// The quantized values of a row, including the zero padding.
    pub fn row(&self, row: usize) -> &[i8] {
        debug_assert!(row < self.rows, "row {row} of {}", self.rows);
        let bytes = blocks_as_bytes(
            &self.chunks[row * self.chunks_per_row..(row + 1) * self.chunks_per_row],
        );
        debug_assert_eq!(bytes.len(), self.chunks_per_row * 64);
        // SAFETY: u8 and i8 have the same size and alignment and every bit
        // pattern is valid for both; the slice borrows `self` immutably.
        // pot10: allow(R9) views the same bytes as i8 (same size and alignment, every bit pattern valid); std has no safe cast
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<i8>(), bytes.len()) }
    }
}

pub(crate) fn check_buffer_len(
    what: &'static str,
    len: usize,
    rows: usize,
    columns: usize,
) -> Result<(), KernelError> {
    let expected = rows.checked_mul(columns);
    if expected != Some(len) {
        return Err(KernelError::BufferSize {
            what,
            rows,
            columns,
            expected: expected.unwrap_or(usize::MAX),
            actual: len,
        });
    }
    Ok(())
}

/// Quantizes `x` (`[rows, in_features]`, row-major) per token into a new
/// buffer (a decode loop reuses one with [`QuantizedActivations::quantize_from`]).
pub fn quantize_activations(
    x: &[f32],
    rows: usize,
    in_features: usize,
) -> Result<QuantizedActivations, KernelError> {
    let mut acts = QuantizedActivations::new();
    acts.quantize_from(x, rows, in_features)?;
    debug_assert_eq!(acts.rows, rows);
    debug_assert_eq!(acts.act_scales.len(), rows);
    Ok(acts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_row_matches_torch_rounding_and_clamping() {
        // absmax 127 -> scale 1.0, so the products are exact and only the
        // rounding mode decides: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2 (ties to even).
        let x = [127.0f32, 0.5, 1.5, 2.5, -0.5, -1.5];
        let mut q = [0i8; 6];
        let scale = quantize_row(&x, &mut q).unwrap();
        assert_eq!(scale, 1.0);
        assert_eq!(q, [127, 0, 2, 2, 0, -2]);
    }

    #[test]
    fn simd_and_portable_quantization_agree_bit_for_bit() {
        let x: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0 + (i as f32) * 1e-4)
            .collect();
        let (mut fast, mut portable) = (vec![0i8; 1000], vec![0i8; 1000]);
        let scale = quantize_row(&x, &mut fast);
        assert_eq!(scale, quantize_row_portable(&x, &mut portable));
        assert_eq!(fast, portable);
        // And the portable path against the formula, element by element.
        let scale = scale.unwrap();
        let absmax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert_eq!(scale, 127.0 / absmax);
        for (q, v) in portable.iter().zip(&x) {
            assert_eq!(
                *q as f32,
                (v * scale).round_ties_even().clamp(-128.0, 127.0)
            );
        }
    }

    /// The AVX-512 quantizer gives the portable loop's bytes on ties,
    /// clamping and odd lengths.
    #[test]
    fn avx512_quantization_equals_the_portable_loop() {
        #[cfg(target_arch = "x86_64")]
        {
            if !std::is_x86_feature_detected!("avx512f") {
                eprintln!("skipped: no avx512f on this CPU");
                return;
            }
            for n in [1usize, 15, 16, 17, 100, 257, 640] {
                // Ties (k + 0.5) both signs, values past the clamp, tiny ones.
                let x: Vec<f32> = (0..n)
                    .map(|i| match i % 5 {
                        0 => (i as f32 % 40.0) - 20.5,
                        1 => -(i as f32) * 3.0,
                        2 => 1e-7 * i as f32,
                        3 => 200.0 - i as f32,
                        _ => (i as f32 * 0.37).sin() * 130.0,
                    })
                    .collect();
                for scale in [1.0f32, 0.5, 1.7] {
                    let (mut fast, mut plain) = (vec![9i8; n + 3], vec![9i8; n + 3]);
                    // SAFETY: the CPU has avx512f (checked above).
                    unsafe { quantize_with_scale_avx512(&x, scale, &mut fast) };
                    quantize_with_scale(&x, scale, &mut plain);
                    assert_eq!(fast, plain, "n {n}, scale {scale}");
                    assert_eq!(&fast[n..], &[9, 9, 9], "wrote past the row");
                }
            }
        }
    }

    #[test]
    fn all_zero_row_uses_the_absmax_floor() {
        let mut q = [5i8; 3];
        assert_eq!(
            quantize_row(&[0.0; 3], &mut q),
            Some(127.0 / ACT_ABSMAX_FLOOR)
        );
        assert_eq!(q, [0; 3]);
    }

    #[test]
    fn non_finite_rows_are_flagged_and_zeroed() {
        let acts = quantize_activations(&[1.0, f32::NAN, 1.0, 2.0], 2, 2).unwrap();
        assert_eq!(acts.act_scale(0), None);
        assert_eq!(acts.act_scale(1), Some(63.5));
        assert_eq!(&acts.row(0)[..2], &[0, 0]);
        assert_eq!(&acts.row(1)[..2], &[64, 127]);
        assert_eq!(acts.row_sums, vec![0, 191]);
    }

    /// A prefill's rows on the kernels' threads give the bytes, scales and
    /// row sums of the serial loop (rows 64-203, odd widths, a NaN row and an
    /// infinite one, a buffer that held a wider shape before).
    #[test]
    fn threaded_rows_equal_the_serial_loop() {
        for (rows, width) in [(64, 100), (129, 257), (203, 640)] {
            let mut x: Vec<f32> = (0..rows * width)
                .map(|i| ((i * 7919) % 2003) as f32 / 97.0 - 10.0)
                .collect();
            x[5 * width + 3] = f32::NAN;
            x[(rows - 1) * width] = f32::NEG_INFINITY;
            let mut serial = QuantizedActivations::new();
            serial.reset(rows, width);
            for row in 0..rows {
                let dst = serial.row_bytes_mut(row);
                let mut q = vec![0i8; dst.len()];
                let scale = quantize_row(&x[row * width..(row + 1) * width], &mut q);
                if scale.is_some() {
                    for (d, v) in dst.iter_mut().zip(&q) {
                        *d = *v as u8;
                    }
                }
                serial.act_scales[row] = scale;
            }
            serial.finish_row_sums();
            let mut threaded = QuantizedActivations::new();
            threaded
                .quantize_from(&vec![1.5; 300 * 700], 300, 700)
                .unwrap();
            threaded.quantize_from(&x, rows, width).unwrap();
            assert_eq!(threaded.rows, rows);
            assert_eq!(threaded.act_scales, serial.act_scales, "{rows}x{width}");
            assert_eq!(threaded.row_sums, serial.row_sums, "{rows}x{width}");
            for row in 0..rows {
                assert_eq!(
                    threaded.row(row),
                    serial.row(row),
                    "row {row} of {rows}x{width}"
                );
            }
            assert_eq!(threaded.act_scale(5), None);
            assert!(threaded.row(5).iter().all(|&v| v == 0));
        }
    }

    #[test]
    fn rows_are_padded_with_zeros() {
        let acts = quantize_activations(&[1.0; 3], 1, 3).unwrap();
        assert_eq!(acts.row(0).len(), K_BLOCK);
        assert!(acts.row(0)[3..].iter().all(|&v| v == 0));
        let err = quantize_activations(&[1.0; 3], 2, 3).unwrap_err();
        assert!(matches!(
            err,
            KernelError::BufferSize {
                expected: 6,
                actual: 3,
                ..
            }
        ));
    }

    #[test]
    fn a_reused_buffer_equals_a_fresh_one_and_keeps_its_capacity() {
        let big: Vec<f32> = (0..3 * 300).map(|i| (i % 17) as f32 - 8.0).collect();
        let small: Vec<f32> = (0..70).map(|i| (i % 5) as f32 * 0.25).collect();
        let mut reused = QuantizedActivations::new();
        reused.quantize_from(&big, 3, 300).unwrap();
        let capacity = reused.chunks.capacity();
        reused.quantize_from(&small, 1, 70).unwrap();
        let fresh = quantize_activations(&small, 1, 70).unwrap();
        // The smaller shape leaves no stale bytes of the larger one behind.
        assert_eq!(reused.rows(), 1);
        assert_eq!(reused.row(0), fresh.row(0));
        assert_eq!(reused.act_scale(0), fresh.act_scale(0));
        assert_eq!(reused.row_sums, fresh.row_sums);
        assert_eq!(reused.padded_columns(), K_BLOCK);
        reused.quantize_from(&big, 3, 300).unwrap();
        assert_eq!(reused.chunks.capacity(), capacity);
        assert_eq!(
            reused.row(2),
            quantize_activations(&big, 3, 300).unwrap().row(2)
        );
    }
}
