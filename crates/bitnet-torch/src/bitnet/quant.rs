//! The BitNet b1.58 quantizers and their straight-through estimators.
//!
//! Conventions (shared with the kernels and export code, do not change one side
//! alone), matching HF transformers' BitNet integration:
//!
//! - weights, ternary (b1.58, Ma et al. 2024, eq. 1-3): `w_scale = max(mean|W|, 1e-5)`
//!   per tensor in f32, `W_q = clamp(round_half_even(W / w_scale), -1, 1)`;
//! - weights, binary (the Phase 4 guide's `sign` mode): `W_q = sign(W)` with `0 -> +1`,
//!   same `w_scale`;
//! - activations, per token absmax (BitNet, Wang et al. 2023, eq. 4):
//!   `act_scale = Qp / max(max_j |x_j|, 1e-5)` per row, `x_q = clamp(round_half_even(x *
//!   act_scale), -Qp-1, Qp)` with `Qp = 2^(bits-1) - 1` (127 for int8);
//! - a BitLinear output dequantizes as `y = (W_q . x_q) * w_scale / act_scale`.
//!
//! The training graph uses fake quantization with the straight-through estimator
//! `x + (q(x) - x).detach()`, so the forward value is `q(x)` and the gradient flows to
//! the latent full-precision tensor unchanged. `torch.round` rounds half to even, so
//! the slice versions use `f32::round_ties_even`.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::error::{BitnetError, Result};

/// Guard for all-zero weight tensors and activation rows (HF uses the same 1e-5).
pub const QUANT_EPS: f32 = 1e-5;

/// Gradual quantization: the strength `lambda` in `x + lambda * (q(x) - x).detach()`.
///
/// Ternarizing a *pretrained* model in one step destroys it (SmolLM2-135M: perplexity
/// 119 -> 3.7e7), and QAT then starts from noise. Ramping `lambda` from 0 (full
/// precision) to 1 (BitNet) over the first training steps keeps the network working
/// while its weights move towards ternary-friendly values (the "lambda warm-up" of the
/// HF 1.58-bit fine-tuning recipe). Process-wide on purpose: every stage runs in its own
/// process, the only `BitLinear`s in a `train` process belong to the student, and the
/// packed inference form never reads it. Stored as f64 bits; 1.0 (plain BitNet) unless
/// `train` sets it.
static QUANT_STRENGTH_BITS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0x3FF0_0000_0000_0000);

/// Sets the gradual-quantization strength (clamped to [0, 1]).
pub fn set_quantization_strength(lambda: f64) {
    QUANT_STRENGTH_BITS.store(
        lambda.clamp(0.0, 1.0).to_bits(),
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// The current gradual-quantization strength (1.0 = full BitNet).
pub fn quantization_strength() -> f64 {
    f64::from_bits(QUANT_STRENGTH_BITS.load(std::sync::atomic::Ordering::Relaxed))
}

/// `x + lambda * (q - x).detach()` at the current strength.
fn ste_mix(x: &Tensor, q: &Tensor) -> Result<Tensor> {
    ste_mix_with(x, q, quantization_strength())
}

/// `x + lambda * (q - x).detach()`: forward moves from `x` (0) to `q` (1), the
/// gradient reaches `x` unchanged; exactly the plain STE when lambda is 1.
pub fn ste_mix_with(x: &Tensor, q: &Tensor, lambda: f64) -> Result<Tensor> {
    let delta = q.f_sub(x)?.detach();
    if lambda == 1.0 {
        Ok(x.f_add(&delta)?)
    } else {
        Ok(x.f_add(&delta.f_mul_scalar(lambda)?)?)
    }
}

/// How weights are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WeightQuant {
    /// b1.58: {-1, 0, +1} by absmean round-clip.
    #[default]
    Ternary,
    /// {-1, +1} by sign (zero maps to +1), scaled by mean|W|.
    Binary,
}

/// How activations entering a BitLinear are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ActQuant {
    /// Per-token absmax to signed `bits`-bit integers (2..=8; BitNet uses 8).
    PerTokenAbsmax { bits: u8 },
    /// Activations stay full precision (weight-only quantization).
    Off,
}

impl Default for ActQuant {
    fn default() -> Self {
        ActQuant::PerTokenAbsmax { bits: 8 }
    }
}

impl ActQuant {
    /// The int8 default.
    pub const INT8: ActQuant = ActQuant::PerTokenAbsmax { bits: 8 };

    /// `(Qp, Qn)`: the largest positive code and the magnitude of the most negative.
    pub fn range(self) -> Result<Option<(f64, f64)>> {
        match self {
            ActQuant::Off => Ok(None),
            ActQuant::PerTokenAbsmax { bits } => {
                if !(2..=8).contains(&bits) {
                    return Err(BitnetError::invalid(
                        "activation quantization",
                        format!("bits must be 2..=8, got {bits}"),
                    ));
                }
                let qp = f64::from((1u16 << (bits - 1)) - 1);
                // Two's complement: [-(Qp + 1), Qp], Qp >= 1 for bits >= 2.
                debug_assert!(qp >= 1.0);
                debug_assert!(qp <= 127.0);
                Ok(Some((qp, qp + 1.0)))
            }
        }
    }
}

/// Weight and activation quantization of a BitLinear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct QuantConfig {
    #[serde(default)]
    pub weight: WeightQuant,
    #[serde(default)]
    pub act: ActQuant,
}

/// `max(mean|W|, eps)` as a 0-dim f32 tensor (kept on the weight's device).
pub fn weight_scale(w: &Tensor) -> Result<Tensor> {
    let scale = w
        .f_to_kind(Kind::Float)?
        .f_abs()?
        .f_mean(Kind::Float)?
        .f_clamp_min(f64::from(QUANT_EPS))?;
    // One scale per tensor, on the weight's device.
    debug_assert_eq!(scale.dim(), 0);
    debug_assert_eq!(scale.device(), w.device());
    Ok(scale)
}

/// Integer codes of `w` as float values in `w`'s dtype: {-1,0,1} or {-1,1}.
fn weight_codes(w: &Tensor, scale: &Tensor, mode: WeightQuant) -> Result<Tensor> {
    let wf = w.f_to_kind(Kind::Float)?;
    let codes = match mode {
        WeightQuant::Ternary => wf.f_div(scale)?.f_round()?.f_clamp(-1.0, 1.0)?,
        // sign with 0 -> +1: (w >= 0) * 2 - 1
        WeightQuant::Binary => wf
            .f_ge(0.0)?
            .f_to_kind(Kind::Float)?
            .f_mul_scalar(2.0)?
            .f_sub_scalar(1.0)?,
    };
    // One code per weight; the scale is the per-tensor 0-dim value.
    debug_assert_eq!(codes.size(), w.size());
    debug_assert_eq!(scale.dim(), 0);
    Ok(codes)
}

/// Quantized weights: i8 codes and the per-tensor scale.
#[derive(Debug)]
pub struct QuantizedWeight {
    /// (out, in) i8 in {-1, 0, 1} (binary mode: {-1, 1}).
    pub codes: Tensor,
    /// `max(mean|W|, 1e-5)`.
    pub w_scale: f32,
}

/// Quantizes a weight tensor (any float dtype) to i8 codes and an f32 scale.
pub fn quantize_weight(w: &Tensor, mode: WeightQuant) -> Result<QuantizedWeight> {
    let scale = weight_scale(w)?;
    let codes = weight_codes(w, &scale, mode)?.f_to_kind(Kind::Int8)?;
    let w_scale = scale.f_double_value(&[])? as f32;
    // One code per weight, and the clamp to QUANT_EPS keeps the scale
    // positive (NaN weights give a NaN scale, caught when packing).
    debug_assert_eq!(codes.size(), w.size());
    debug_assert!(
        w_scale.is_nan() || w_scale >= QUANT_EPS,
        "w_scale {w_scale}"
    );
    Ok(QuantizedWeight { codes, w_scale })
}

/// `W_q * w_scale` in `w`'s dtype, without gradient semantics.
pub fn fake_quant_weight(w: &Tensor, mode: WeightQuant) -> Result<Tensor> {
    let scale = weight_scale(w)?;
    let q = weight_codes(w, &scale, mode)?
        .f_mul(&scale)?
        .f_to_kind(w.f_kind()?)?;
    // Same shape and dtype as the latent weight it stands in for.
    debug_assert_eq!(q.size(), w.size());
    debug_assert_eq!(q.f_kind()?, w.f_kind()?);
    Ok(q)
}

/// Straight-through weight quantization: forward `W_q * w_scale`, gradient identity.
pub fn ste_weight(w: &Tensor, mode: WeightQuant) -> Result<Tensor> {
    let q = fake_quant_weight(w, mode)?;
    debug_assert_eq!(q.size(), w.size());
    debug_assert_eq!(q.f_kind()?, w.f_kind()?);
    ste_mix(w, &q)
}

/// Per-token activation quantization along the last dim.
///
/// Returns `(codes, act_scale)`: `codes` are integer values in f32 with `x`'s shape,
/// `act_scale` is (.., 1) f32. `None` when `act` is [`ActQuant::Off`].
pub fn quantize_activations(x: &Tensor, act: ActQuant) -> Result<Option<(Tensor, Tensor)>> {
    let Some((qp, qn)) = act.range()? else {
        return Ok(None);
    };
    let xf = x.f_to_kind(Kind::Float)?;
    let absmax = xf
        .f_abs()?
        .f_amax(-1, true)?
        .f_clamp_min(f64::from(QUANT_EPS))?;
    // Qp / absmax as one division, like HF (`127 / max`), so codes match bit for bit.
    let scale = absmax.f_full_like(qp)?.f_div(&absmax)?; // (.., 1)
    let codes = xf.f_mul(&scale)?.f_round()?.f_clamp(-qn, qp)?;
    // Codes keep x's shape; one scale per token row (.., 1).
    debug_assert_eq!(codes.size(), x.size());
    debug_assert_eq!(scale.size().last(), Some(&1));
    Ok(Some((codes, scale)))
}

/// `x_q / act_scale` in `x`'s dtype (identity when `act` is off).
pub fn fake_quant_activations(x: &Tensor, act: ActQuant) -> Result<Tensor> {
    match quantize_activations(x, act)? {
        None => Ok(x.shallow_clone()),
        Some((codes, scale)) => {
            let q = codes.f_div(&scale)?.f_to_kind(x.f_kind()?)?;
            debug_assert_eq!(q.size(), x.size());
            debug_assert_eq!(q.f_kind()?, x.f_kind()?);
            Ok(q)
        }
    }
}

/// Straight-through activation quantization.
pub fn ste_activations(x: &Tensor, act: ActQuant) -> Result<Tensor> {
    if act == ActQuant::Off {
        return Ok(x.shallow_clone());
    }
    let q = fake_quant_activations(x, act)?;
    debug_assert_eq!(q.size(), x.size());
    debug_assert_eq!(q.f_kind()?, x.f_kind()?);
    ste_mix(x, &q)
}

/// Slice version of [`quantize_weight`] for kernels: `(codes, w_scale)`.
///
/// The mean is accumulated in f64, so `w_scale` can differ from libtorch's f32
/// reduction in the last bit; codes then differ only for values within an ulp
/// of a rounding boundary.
pub fn quantize_weight_slice(w: &[f32], mode: WeightQuant) -> (Vec<i8>, f32) {
    let mean = if w.is_empty() {
        0.0
    } else {
        (w.iter().map(|v| f64::from(v.abs())).sum::<f64>() / w.len() as f64) as f32
    };
    let scale = mean.max(QUANT_EPS);
    debug_assert!(scale.is_nan() || scale >= QUANT_EPS);
    let codes: Vec<i8> = w
        .iter()
        .map(|&v| match mode {
            WeightQuant::Ternary => (v / scale).round_ties_even().clamp(-1.0, 1.0) as i8,
            WeightQuant::Binary => {
                if v >= 0.0 {
                    1
                } else {
                    -1
                }
            }
        })
        .collect();
    debug_assert_eq!(codes.len(), w.len());
    (codes, scale)
}

/// Slice version of int8 per-token quantization of one row: `(codes, act_scale)`.
/// Bit-exact with [`quantize_activations`] for `bits = 8`.
pub fn quantize_activation_row_i8(x: &[f32]) -> (Vec<i8>, f32) {
    let absmax = x.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(QUANT_EPS);
    let scale = 127.0 / absmax;
    debug_assert!(scale.is_nan() || scale > 0.0, "act_scale {scale}");
    let codes: Vec<i8> = x
        .iter()
        .map(|&v| (v * scale).round_ties_even().clamp(-128.0, 127.0) as i8)
        .collect();
    debug_assert_eq!(codes.len(), x.len());
    (codes, scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t2(rows: &[&[f32]]) -> Tensor {
        let n = rows[0].len() as i64;
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).reshape([rows.len() as i64, n])
    }

    fn to_vec_f32(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap()
    }

    /// Gradual quantization (issue #15): lambda 0 is the latent weight, 1 the
    /// ternary weight, in between the straight line; the gradient is the
    /// identity at every lambda.
    #[test]
    fn ste_mix_moves_from_latent_to_quantized_with_identity_gradient() {
        let w = t2(&[&[0.2, -0.5, 1.0], &[0.0, 0.3, -2.0]]).set_requires_grad(true);
        let q = fake_quant_weight(&w.detach(), WeightQuant::Ternary).unwrap();
        for lambda in [0.0, 0.25, 1.0] {
            let m = ste_mix_with(&w, &q, lambda).unwrap();
            let want = &w.detach() + (&q - &w.detach()) * lambda;
            assert_eq!(to_vec_f32(&m), to_vec_f32(&want), "lambda {lambda}");
            let g = tch::Tensor::run_backward(&[m.sum(Kind::Float)], &[&w], false, false);
            assert_eq!(to_vec_f32(&g[0]), vec![1.0; 6]);
        }
        assert_eq!(
            to_vec_f32(&ste_mix_with(&w, &q, 0.0).unwrap()),
            to_vec_f32(&w)
        );
        assert_eq!(quantization_strength(), 1.0, "default is plain BitNet");
    }

    #[test]
    fn ternary_weight_exact_values() {
        // mean|W| = (0.2+0.5+1.0+0.0+0.3+2.0)/6 = 0.6666..
        let w = t2(&[&[0.2, -0.5, 1.0], &[0.0, 0.3, -2.0]]);
        let q = quantize_weight(&w, WeightQuant::Ternary).unwrap();
        assert!((q.w_scale - 4.0 / 6.0).abs() < 1e-7);
        // 0.2/0.667=0.3->0, -0.75->-1, 1.5->2->1 (clamped), 0, 0.45->0, -3->-1
        let codes = Vec::<i8>::try_from(q.codes.flatten(0, -1)).unwrap();
        assert_eq!(codes, vec![0, -1, 1, 0, 0, -1]);
        let (sc, ss) = quantize_weight_slice(&to_vec_f32(&w), WeightQuant::Ternary);
        assert_eq!(sc, codes);
        assert!((ss - q.w_scale).abs() <= f32::EPSILON * ss);
    }

    #[test]
    fn ternary_rounds_half_to_even() {
        // mean|W| = 1.0 exactly; 0.5 -> 0 and -0.5 -> 0 (ties to even), 1.5 -> 2 -> 1.
        let w = t2(&[&[0.5, -0.5, 1.5, 1.5]]);
        let q = quantize_weight(&w, WeightQuant::Ternary).unwrap();
        assert_eq!(q.w_scale, 1.0);
        let codes = Vec::<i8>::try_from(q.codes.flatten(0, -1)).unwrap();
        assert_eq!(codes, vec![0, 0, 1, 1]);
    }

    #[test]
    fn all_zero_and_single_element_weights() {
        let z = Tensor::zeros([2, 3], (Kind::Float, tch::Device::Cpu));
        for mode in [WeightQuant::Ternary, WeightQuant::Binary] {
            let q = quantize_weight(&z, mode).unwrap();
            assert_eq!(q.w_scale, QUANT_EPS);
            let codes = Vec::<i8>::try_from(q.codes.flatten(0, -1)).unwrap();
            let want = if mode == WeightQuant::Ternary { 0 } else { 1 };
            assert!(codes.iter().all(|&c| c == want), "{mode:?}: {codes:?}");
            assert!(!to_vec_f32(&fake_quant_weight(&z, mode).unwrap())
                .iter()
                .any(|v| v.is_nan()));
        }
        let one = t2(&[&[-3.0]]);
        let q = quantize_weight(&one, WeightQuant::Ternary).unwrap();
        assert_eq!(q.w_scale, 3.0);
        assert_eq!(
            Vec::<i8>::try_from(q.codes.flatten(0, -1)).unwrap(),
            vec![-1]
        );
    }

    #[test]
    fn binary_weight_exact_values() {
        let w = t2(&[&[0.0, -0.25, 0.75, -1.0]]);
        let q = quantize_weight(&w, WeightQuant::Binary).unwrap();
        assert_eq!(q.w_scale, 0.5);
        let codes = Vec::<i8>::try_from(q.codes.flatten(0, -1)).unwrap();
        assert_eq!(codes, vec![1, -1, 1, -1]);
        assert_eq!(
            to_vec_f32(&fake_quant_weight(&w, WeightQuant::Binary).unwrap()),
            vec![0.5, -0.5, 0.5, -0.5]
        );
    }

    #[test]
    fn activation_exact_values_including_zero_and_single_element_rows() {
        let x = t2(&[
            &[1.0, -0.5, 0.25, 0.0],
            &[0.0, 0.0, 0.0, 0.0],
            &[-2.0, 1.0, 0.0, 2.0],
        ]);
        let (codes, scale) = quantize_activations(&x, ActQuant::INT8).unwrap().unwrap();
        // row 0: scale 127; 127, -63.5 -> -64 (even), 31.75 -> 32, 0
        // row 1: all zero -> scale 127/1e-5, codes 0
        // row 2: scale 63.5; -127, 63.5 -> 64 (even), 0, 127
        assert_eq!(
            to_vec_f32(&codes),
            vec![127., -64., 32., 0., 0., 0., 0., 0., -127., 64., 0., 127.]
        );
        let s = to_vec_f32(&scale);
        assert_eq!(s[0], 127.0);
        assert_eq!(s[1], 127.0 / 1e-5f32);
        assert_eq!(s[2], 63.5);
        for (r, row) in [[1.0f32, -0.5, 0.25, 0.0], [0.0; 4], [-2.0, 1.0, 0.0, 2.0]]
            .iter()
            .enumerate()
        {
            let (c, sc) = quantize_activation_row_i8(row);
            let want: Vec<i8> = to_vec_f32(&codes)[r * 4..r * 4 + 4]
                .iter()
                .map(|&v| v as i8)
                .collect();
            assert_eq!(c, want);
            assert_eq!(sc, s[r]);
        }
        // single-element row
        let (c1, s1) = quantize_activations(&t2(&[&[-0.3]]), ActQuant::INT8)
            .unwrap()
            .unwrap();
        assert_eq!(to_vec_f32(&c1), vec![-127.0]);
        assert!((to_vec_f32(&s1)[0] - 127.0 / 0.3).abs() < 1e-3);
        // clamp reaches -128 only through rounding of values below -absmax: impossible,
        // so the most negative code of a symmetric row is -127.
        assert!(quantize_activations(&x, ActQuant::Off).unwrap().is_none());
        assert!(ActQuant::PerTokenAbsmax { bits: 9 }.range().is_err());
    }

    #[test]
    fn ste_passes_gradient_through_for_both_modes() {
        for mode in [WeightQuant::Ternary, WeightQuant::Binary] {
            tch::manual_seed(3);
            let w = Tensor::randn([5, 7], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
            let x = Tensor::randn([3, 7], (Kind::Float, tch::Device::Cpu));
            let g = Tensor::randn([3, 5], (Kind::Float, tch::Device::Cpu));
            // latent path
            let y = ste_activations(&x, ActQuant::INT8)
                .unwrap()
                .matmul(&ste_weight(&w, mode).unwrap().tr());
            (&y * &g).sum(Kind::Float).backward();
            let grad_latent = w.grad();
            // reference: the quantized weight itself as the leaf
            let wq = fake_quant_weight(&w.detach(), mode)
                .unwrap()
                .set_requires_grad(true);
            let yq = fake_quant_activations(&x, ActQuant::INT8)
                .unwrap()
                .matmul(&wq.tr());
            // forward value is the quantized one, up to the f32 rounding of w + (q - w)
            assert!(f64::try_from((&y - &yq).abs().max()).unwrap() < 1e-6);
            (&yq * &g).sum(Kind::Float).backward();
            let diff = f64::try_from((grad_latent - wq.grad()).abs().max()).unwrap();
            assert_eq!(diff, 0.0, "{mode:?}");
        }
        // activations: gradient wrt x passes through too
        let x = Tensor::randn([2, 4], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        ste_activations(&x, ActQuant::INT8)
            .unwrap()
            .sum(Kind::Float)
            .backward();
        assert_eq!(f64::try_from((x.grad() - 1.0).abs().max()).unwrap(), 0.0);
    }
}
