//! How a matmul turns exact integer dot products into its outputs.
//!
//! A closure `Fn(row, dot) -> T` says it per element, but called once per
//! output it re-reads the row's factors for every element (the compiler
//! cannot prove the output stores leave them alone), which kept the GEMM
//! epilogue scalar: a load, a branch and a scalar division per output, a
//! sixth of a demo-model prefill. [`Epilogue::finish_run`] finishes a whole
//! run of one row at once, its factors read once, so the loop vectorizes.

use crate::quant::QuantizedActivations;

/// Turns row `row`'s exact integer dots into outputs of type `T`.
pub(crate) trait Epilogue<T>: Sync {
    /// The output of `row`'s dot `acc`.
    fn finish(&self, row: usize, acc: i32) -> T;

    /// `out[i] = finish(row, acc[i])` for `i < out.len()` (`acc` may be longer).
    #[inline(always)]
    fn finish_run(&self, row: usize, acc: &[i32], out: &mut [T]) {
        for (slot, &value) in out.iter_mut().zip(acc) {
            *slot = self.finish(row, value);
        }
    }
}

/// Any `Fn(row, dot) -> T` (the raw dots of `matmul_i32`, tests).
impl<T, F: Fn(usize, i32) -> T + Sync> Epilogue<T> for F {
    #[inline(always)]
    fn finish(&self, row: usize, acc: i32) -> T {
        self(row, acc)
    }
}

/// The BitLinear output `dot as f32 * w_scale / act_scale[row]`, in that
/// operation order (so every path and the reference agree bit for bit); a
/// row whose input held NaN or infinity (no `act_scale`) comes out NaN.
pub(crate) struct BitLinearScale<'a> {
    pub w_scale: f32,
    pub act_scales: &'a [Option<f32>],
    /// Whether the CPU has AVX-512: the crate is built for baseline x86-64,
    /// where the run loop vectorizes 4 lanes wide and the divisions' latency
    /// shows (a twelfth of a demo-model prefill); the AVX-512 build of the
    /// same loop divides 16 lanes at a time, with the same IEEE results.
    wide: bool,
}

impl<'a> BitLinearScale<'a> {
    /// The epilogue of a matrix with scale `w_scale` over `acts`.
    pub fn new(w_scale: f32, acts: &'a QuantizedActivations) -> Self {
        debug_assert_eq!(acts.act_scales.len(), acts.rows);
        BitLinearScale {
            w_scale,
            act_scales: &acts.act_scales,
            wide: wide_available(),
        }
    }

    #[inline(always)]
    fn row_scale(&self, row: usize) -> f32 {
        self.act_scales[row].unwrap_or(f32::NAN)
    }
}

impl Epilogue<f32> for BitLinearScale<'_> {
    #[inline(always)]
    fn finish(&self, row: usize, acc: i32) -> f32 {
        acc as f32 * self.w_scale / self.row_scale(row)
    }

    #[inline(always)]
    fn finish_run(&self, row: usize, acc: &[i32], out: &mut [f32]) {
        let (w_scale, act_scale) = (self.w_scale, self.row_scale(row));
        #[cfg(target_arch = "x86_64")]
        if self.wide {
            // SAFETY: `wide` is set only where the CPU has avx512f.
            // pot10: allow(R9) the AVX-512 build of the safe loop, only where `wide_available()` said the CPU has it
            return unsafe { scale_run_avx512(acc, out, w_scale, act_scale) };
        }
        scale_run(acc, out, w_scale, act_scale);
    }
}

/// Whether [`scale_run_avx512`] can run here (checked once per matmul).
fn wide_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[i] = acc[i] as f32 * w_scale / act_scale`.
#[inline(always)]
fn scale_run(acc: &[i32], out: &mut [f32], w_scale: f32, act_scale: f32) {
    for (slot, &value) in out.iter_mut().zip(acc) {
        *slot = value as f32 * w_scale / act_scale;
    }
}

/// [`scale_run`] compiled with AVX-512.
// pot10: allow(R9) `#[target_feature]` function, unsafe by language rule: it only calls the safe loop, built with AVX-512
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn scale_run_avx512(acc: &[i32], out: &mut [f32], w_scale: f32, act_scale: f32) {
    scale_run(acc, out, w_scale, act_scale);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_equals_the_element_form_and_a_poisoned_row_is_nan() {
        let acts = QuantizedActivations::from_quantized(&[1, -2, 3, 4], 2, 2).unwrap();
        let mut scale = BitLinearScale::new(0.37, &acts);
        let scales = [Some(3.1f32), None];
        scale.act_scales = &scales;
        let acc = [7, -123_456, 0, i32::MAX, 5];
        let mut out = [0.0f32; 4];
        scale.finish_run(0, &acc, &mut out);
        for (i, &o) in out.iter().enumerate() {
            assert_eq!(o.to_bits(), scale.finish(0, acc[i]).to_bits());
            assert_eq!(o.to_bits(), (acc[i] as f32 * 0.37 / 3.1).to_bits());
        }
        scale.finish_run(1, &acc, &mut out);
        assert!(out.iter().all(|o| o.is_nan()), "{out:?}");
    }
}
