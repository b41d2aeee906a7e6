//! The layers a BitNet model keeps in full precision (embedding, LM head),
//! stored as fp32, bf16 or int8 with one absmax scale per row.
//!
//! On a small model these dominate decode traffic: SmolLM2-135M's tied
//! 49152 x 576 head is 113 MB in fp32, read once per token, against about
//! 21 MB of 2-bit ternary weights. bf16 halves it (the values round to 8
//! mantissa bits, as `torch.bfloat16` does); int8 per row quarters it (each
//! row `W[r] ~ codes[r] * scale[r]`, `scale = max|W[r]| / 127`). Both change
//! the logits slightly; the tests bound how much.

use crate::InferError;

/// How a kept layer is stored for inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeptDtype {
    /// As trained: 4 bytes a value.
    F32,
    /// bfloat16, round-to-nearest-even: 2 bytes a value.
    Bf16,
    /// int8 codes with a per-row absmax scale: 1 byte a value + 4 a row.
    Int8,
}

impl KeptDtype {
    /// The option value (`fp32`, `bf16`, `int8`).
    pub fn name(self) -> &'static str {
        match self {
            KeptDtype::F32 => "fp32",
            KeptDtype::Bf16 => "bf16",
            KeptDtype::Int8 => "int8",
        }
    }

    /// Parses an option value.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "fp32" | "f32" => Some(KeptDtype::F32),
            "bf16" => Some(KeptDtype::Bf16),
            "int8" => Some(KeptDtype::Int8),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
enum Storage {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
    Int8 { codes: Vec<i8>, scales: Vec<f32> },
}

/// A `[rows, cols]` full-precision matrix in a [`KeptDtype`].
#[derive(Debug, Clone)]
pub struct KeptMatrix {
    storage: Storage,
    rows: usize,
    cols: usize,
}

/// `torch.Tensor.to(torch.bfloat16)` of one value: round to nearest even.
fn f32_to_bf16(v: f32) -> u16 {
    if v.is_nan() {
        return 0x7fc0;
    }
    let bits = v.to_bits();
    let rounding = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding) >> 16) as u16
}

fn bf16_to_f32(v: u16) -> f32 {
    f32::from_bits(u32::from(v) << 16)
}

/// Per-row absmax int8 codes and scales of a row-major matrix.
// pot10: init (runs once while the model is built at load; a decode step never calls it)
fn quantize_rows_int8(values: &[f32], cols: usize) -> (Vec<i8>, Vec<f32>) {
    let mut codes = Vec::with_capacity(values.len());
    let mut scales = Vec::with_capacity(values.len() / cols.max(1));
    for row in values.chunks_exact(cols) {
        let absmax = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = absmax / 127.0;
        scales.push(scale);
        for &v in row {
            let q = if scale > 0.0 {
                (v / scale).round_ties_even().clamp(-127.0, 127.0)
            } else {
                0.0
            };
            codes.push(q as i8);
        }
    }
    (codes, scales)
}

/// `len == rows * cols` (and `cols > 0`), else a shape error naming `what`.
fn check_len(what: &str, rows: usize, cols: usize, len: usize) -> Result<(), InferError> {
    if rows.checked_mul(cols) != Some(len) || cols == 0 {
        return Err(InferError::Shape {
            what: format!("{what} a kept [{rows}, {cols}] matrix"),
            expected: rows.saturating_mul(cols),
            actual: len,
        });
    }
    Ok(())
}

/// `sum a[i] * b[i]` with 8 independent partial sums (vectorizes; and
/// closer to the exact sum than one running total).
#[inline(always)]
fn dot_with(a: &[f32], n: usize, b: impl Fn(usize) -> f32) -> f32 {
    let mut partial = [0.0f32; 8];
    let whole = n / 8 * 8;
    for i in (0..whole).step_by(8) {
        for (l, p) in partial.iter_mut().enumerate() {
            *p += a[i + l] * b(i + l);
        }
    }
    let mut total = partial.iter().sum::<f32>();
    for (i, &v) in a.iter().enumerate().take(n).skip(whole) {
        total += v * b(i);
    }
    total
}

impl KeptMatrix {
    /// Stores a row-major `[rows, cols]` fp32 matrix in `dtype`.
    // pot10: init (runs once while the model is built at load; a decode step never calls it)
    pub fn new(
        values: &[f32],
        rows: usize,
        cols: usize,
        dtype: KeptDtype,
    ) -> Result<Self, InferError> {
        if rows.checked_mul(cols) != Some(values.len()) || cols == 0 {
            return Err(InferError::Shape {
                what: format!("a kept [{rows}, {cols}] matrix"),
                expected: rows.saturating_mul(cols),
                actual: values.len(),
            });
        }
        let storage = match dtype {
            KeptDtype::F32 => Storage::F32(values.to_vec()),
            KeptDtype::Bf16 => Storage::Bf16(values.iter().map(|&v| f32_to_bf16(v)).collect()),
            KeptDtype::Int8 => {
                let (codes, scales) = quantize_rows_int8(values, cols);
                Storage::Int8 { codes, scales }
            }
        };
        Ok(KeptMatrix {
            storage,
            rows,
            cols,
        })
    }

    /// An int8 matrix from its stored parts (codes row-major, one scale a
    /// row), as [`KeptMatrix::new`] with [`KeptDtype::Int8`] makes them and
    /// [`KeptMatrix::int8_parts`] hands them out: what a file holds is used
    /// as is, never quantized twice.
    pub fn from_int8(
        codes: Vec<i8>,
        scales: Vec<f32>,
        rows: usize,
        cols: usize,
    ) -> Result<Self, InferError> {
        check_len("int8 codes of", rows, cols, codes.len())?;
        check_len("int8 row scales of", rows, 1, scales.len())?;
        Ok(KeptMatrix {
            storage: Storage::Int8 { codes, scales },
            rows,
            cols,
        })
    }

    /// A bf16 matrix from its raw bits (row-major).
    pub fn from_bf16_bits(bits: Vec<u16>, rows: usize, cols: usize) -> Result<Self, InferError> {
        check_len("bf16 values of", rows, cols, bits.len())?;
        Ok(KeptMatrix {
            storage: Storage::Bf16(bits),
            rows,
            cols,
        })
    }

    /// An fp32 matrix that takes `values` (row-major) without copying.
    pub fn from_f32(values: Vec<f32>, rows: usize, cols: usize) -> Result<Self, InferError> {
        check_len("f32 values of", rows, cols, values.len())?;
        Ok(KeptMatrix {
            storage: Storage::F32(values),
            rows,
            cols,
        })
    }

    /// The int8 codes and per-row scales, when stored as int8.
    pub fn int8_parts(&self) -> Option<(&[i8], &[f32])> {
        match &self.storage {
            Storage::Int8 { codes, scales } => Some((codes, scales)),
            _ => None,
        }
    }

    /// The raw bf16 bits, when stored as bf16.
    pub fn bf16_bits(&self) -> Option<&[u16]> {
        match &self.storage {
            Storage::Bf16(v) => Some(v),
            _ => None,
        }
    }

    /// Every value as f32, row-major (what libtorch computes with).
    // pot10: init (runs once at load; a decode step never calls it)
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.rows * self.cols];
        for (r, row) in out.chunks_exact_mut(self.cols).enumerate() {
            self.row_into(r, row);
        }
        out
    }

    /// Rows (vocabulary entries).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (hidden size).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The storage dtype.
    pub fn dtype(&self) -> KeptDtype {
        match self.storage {
            Storage::F32(_) => KeptDtype::F32,
            Storage::Bf16(_) => KeptDtype::Bf16,
            Storage::Int8 { .. } => KeptDtype::Int8,
        }
    }

    /// Bytes held (values and scales): stored = resident for this form.
    pub fn bytes(&self) -> usize {
        match &self.storage {
            Storage::F32(v) => v.len() * 4,
            Storage::Bf16(v) => v.len() * 2,
            Storage::Int8 { codes, scales } => codes.len() + scales.len() * 4,
        }
    }

    /// Row `row` as f32 into `out` (`cols` values): an embedding lookup.
    pub fn row_into(&self, row: usize, out: &mut [f32]) {
        debug_assert!(row < self.rows, "row {row} of {}", self.rows);
        debug_assert_eq!(out.len(), self.cols);
        let span = row * self.cols..(row + 1) * self.cols;
        match &self.storage {
            Storage::F32(v) => out.copy_from_slice(&v[span]),
            Storage::Bf16(v) => {
                for (o, &b) in out.iter_mut().zip(&v[span]) {
                    *o = bf16_to_f32(b);
                }
            }
            Storage::Int8 { codes, scales } => {
                let scale = scales[row];
                for (o, &q) in out.iter_mut().zip(&codes[span]) {
                    *o = f32::from(q) * scale;
                }
            }
        }
    }

    /// `out[r - r0] = W[r] . x` for rows `r0..r0 + out.len()`: the LM head
    /// (one token), in slices so callers can split the rows over threads.
    /// AVX-512 where the CPU has it ([`crate::simd`]), else portable loops.
    pub fn gemv_rows(&self, x: &[f32], r0: usize, out: &mut [f32]) {
        debug_assert_eq!(x.len(), self.cols);
        debug_assert!(r0 + out.len() <= self.rows);
        #[cfg(target_arch = "x86_64")]
        if crate::simd::available() {
            // SAFETY: the CPU has avx512f/bw (checked on the line above).
            // pot10: allow(R9) runs the AVX-512 row kernels only after `simd::available()`; they assert their bounds
            unsafe {
                match &self.storage {
                    Storage::F32(v) => crate::simd::rows_f32(v, x, r0, out, |_| 1.0),
                    Storage::Bf16(v) => crate::simd::rows_bf16(v, x, r0, out, |_| 1.0),
                    Storage::Int8 { codes, scales } => {
                        crate::simd::rows_i8(codes, x, r0, out, |r| scales[r])
                    }
                }
            }
            return;
        }
        self.gemv_rows_portable(x, r0, out);
    }

    /// [`KeptMatrix::gemv_rows`] in portable code (and the reference its
    /// AVX-512 form is tested against).
    pub fn gemv_rows_portable(&self, x: &[f32], r0: usize, out: &mut [f32]) {
        let n = self.cols;
        for (i, o) in out.iter_mut().enumerate() {
            let r = r0 + i;
            let span = r * n..(r + 1) * n;
            *o = match &self.storage {
                Storage::F32(v) => {
                    let w = &v[span];
                    dot_with(x, n, |k| w[k])
                }
                Storage::Bf16(v) => {
                    let w = &v[span];
                    dot_with(x, n, |k| bf16_to_f32(w[k]))
                }
                Storage::Int8 { codes, scales } => {
                    let w = &codes[span];
                    dot_with(x, n, |k| f32::from(w[k])) * scales[r]
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even_like_torch() {
        // 1 + 2^-8 is halfway between two bf16 values: ties to the even one (1.0).
        assert_eq!(bf16_to_f32(f32_to_bf16(1.0 + 1.0 / 256.0)), 1.0);
        // 1 + 3 * 2^-8 is halfway too: ties to 1 + 2^-6 (even mantissa).
        assert_eq!(
            bf16_to_f32(f32_to_bf16(1.0 + 3.0 / 256.0)),
            1.0 + 1.0 / 64.0
        );
        assert_eq!(bf16_to_f32(f32_to_bf16(-2.5)), -2.5);
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
    }

    #[test]
    fn int8_rows_reconstruct_within_half_a_step() {
        let values: Vec<f32> = (0..3 * 40)
            .map(|i| ((i * 37) % 23) as f32 * 0.1 - 1.1)
            .collect();
        let m = KeptMatrix::new(&values, 3, 40, KeptDtype::Int8).unwrap();
        let mut row = vec![0.0; 40];
        for r in 0..3 {
            m.row_into(r, &mut row);
            let original = &values[r * 40..(r + 1) * 40];
            let step = original.iter().fold(0.0f32, |a, v| a.max(v.abs())) / 127.0;
            for (a, b) in row.iter().zip(original) {
                assert!((a - b).abs() <= step * 0.5 + 1e-6, "{a} vs {b}");
            }
        }
        assert_eq!(m.bytes(), 120 + 12);
        // An all-zero row has scale 0 and decodes to zeros, not NaN.
        let z = KeptMatrix::new(&[0.0; 4], 1, 4, KeptDtype::Int8).unwrap();
        let mut out = [1.0; 4];
        z.row_into(0, &mut out);
        assert_eq!(out, [0.0; 4]);
    }

    #[test]
    fn stored_parts_rebuild_the_same_matrix() {
        let (rows, cols) = (4, 9);
        let values: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.7).cos()).collect();
        let q = KeptMatrix::new(&values, rows, cols, KeptDtype::Int8).unwrap();
        let (codes, scales) = q.int8_parts().unwrap();
        let back = KeptMatrix::from_int8(codes.to_vec(), scales.to_vec(), rows, cols).unwrap();
        assert_eq!(back.to_f32(), q.to_f32());
        assert_eq!(back.bytes(), q.bytes());
        let b = KeptMatrix::new(&values, rows, cols, KeptDtype::Bf16).unwrap();
        let back = KeptMatrix::from_bf16_bits(b.bf16_bits().unwrap().to_vec(), rows, cols).unwrap();
        assert_eq!(back.to_f32(), b.to_f32());
        let f = KeptMatrix::from_f32(values.clone(), rows, cols).unwrap();
        assert_eq!(f.to_f32(), values);
        assert!(f.int8_parts().is_none() && f.bf16_bits().is_none());
        assert!(KeptMatrix::from_int8(vec![0; 36], vec![1.0; 3], rows, cols).is_err());
        assert!(KeptMatrix::from_bf16_bits(vec![0; 35], rows, cols).is_err());
    }

    #[test]
    fn gemv_equals_row_dot_products_in_every_dtype() {
        let (rows, cols) = (5, 19);
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 13) % 11) as f32 * 0.2 - 1.0)
            .collect();
        let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.3).sin()).collect();
        for dtype in [KeptDtype::F32, KeptDtype::Bf16, KeptDtype::Int8] {
            let m = KeptMatrix::new(&values, rows, cols, dtype).unwrap();
            let mut out = vec![f32::NAN; rows];
            m.gemv_rows(&x, 0, &mut out);
            let mut row = vec![0.0; cols];
            for (r, &o) in out.iter().enumerate() {
                m.row_into(r, &mut row);
                let expected: f64 = row
                    .iter()
                    .zip(&x)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum();
                assert!(
                    (f64::from(o) - expected).abs() < 1e-5,
                    "{dtype:?} row {r}: {o} vs {expected}"
                );
            }
            // Split rows give the same values as one call.
            let mut tail = vec![f32::NAN; 2];
            m.gemv_rows(&x, 3, &mut tail);
            assert_eq!(tail, out[3..]);
            // The SIMD and portable forms agree to float rounding.
            let mut portable = vec![f32::NAN; rows];
            m.gemv_rows_portable(&x, 0, &mut portable);
            for (a, b) in out.iter().zip(&portable) {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{dtype:?}: {a} vs {b}"
                );
            }
        }
        assert!(KeptMatrix::new(&values, rows, cols + 1, KeptDtype::F32).is_err());
    }
}
