//! BitLinear: the linear layer of BitNet b1.58, and the [`Linear`] enum that lets one
//! transformer hold full-precision, fake-quant training and packed inference layers.

use std::cell::Cell;

use tch::{nn, Kind, Tensor};

use super::error::Result;
use super::packing::{PackedBitLinear, PackedLinear, TernaryBackend};
use super::quant::{quantize_weight, ste_activations, ste_weight, QuantConfig, QuantizedWeight};

thread_local! {
    /// Whether float linears compute their matmul in bf16 on this thread
    /// (inputs rounded to bf16, the product cast back to the input's dtype).
    /// A training option: bf16 matmuls run about twice as fast as fp32 on
    /// CPUs with AVX512-BF16 (measured in docs/perf.md), while the latent
    /// weights, the residual stream, norms, softmax and losses stay fp32.
    /// Ternary codes and int8 activation codes are exact in bf16; their
    /// scales round to 8 bits of mantissa. Per thread, so a stage's setting
    /// never leaks into another thread's model (tests run in parallel).
    static BF16_MATMUL: Cell<bool> = const { Cell::new(false) };
}

/// Switches bf16 matmuls of float linears on or off for this thread.
pub fn set_bf16_matmul(on: bool) {
    BF16_MATMUL.with(|c| c.set(on));
}

/// Whether bf16 matmuls are on for this thread.
pub fn bf16_matmul() -> bool {
    BF16_MATMUL.with(|c| c.get())
}

/// `x @ w^T`: in `w`'s dtype when an fp32 `x` meets a bf16/f16 weight (a
/// frozen teacher stored in bf16), in bf16 when [`set_bf16_matmul`] is on and
/// both are fp32, else as given (CUDA autocast casts inside the matmul); the
/// result has `x`'s dtype.
fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (xk, wk) = (x.f_kind()?, w.f_kind()?);
    let kind = if xk == Kind::Float && matches!(wk, Kind::BFloat16 | Kind::Half) {
        wk
    } else if bf16_matmul() && xk == Kind::Float && wk == Kind::Float {
        Kind::BFloat16
    } else {
        return Ok(x.f_matmul(&w.f_tr()?)?);
    };
    Ok(x.f_to_kind(kind)?
        .f_matmul(&w.f_to_kind(kind)?.f_tr()?)?
        .f_to_kind(xk)?)
}

/// Training form of a BitNet linear layer: a latent full-precision weight quantized
/// on the fly with the straight-through estimator (weights and activations).
#[derive(Debug)]
pub struct BitLinear {
    /// Latent weight `(out, in)`; the variable the optimizer updates.
    pub weight: Tensor,
    pub quant: QuantConfig,
}

impl BitLinear {
    /// `y = ste(q_a(x)) @ ste(q_w(W))^T`; gradients reach `weight` unchanged.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = ste_weight(&self.weight, self.quant.weight)?; // (out, in)
        let xq = ste_activations(x, self.quant.act)?; // (.., in)
                                                      // Fake quantization keeps shapes: the STE only swaps values.
        debug_assert_eq!(w.size(), self.weight.size());
        debug_assert_eq!(xq.size(), x.size());
        matmul_t(&xq, &w)
    }

    /// Codes and scale of the current latent weight.
    pub fn quantized(&self) -> Result<QuantizedWeight> {
        quantize_weight(&self.weight.detach(), self.quant.weight)
    }

    /// The packed inference form of this layer.
    pub fn to_packed(&self, backend: &dyn TernaryBackend) -> Result<PackedBitLinear> {
        let packed = PackedLinear::from_weight(&self.weight.detach(), self.quant.weight)?;
        // The packed form keeps the logical (out, in) shape of the latent weight.
        debug_assert_eq!(
            [packed.out_features, packed.in_features].as_slice(),
            self.weight.size().as_slice()
        );
        debug_assert!(packed.w_scale.is_nan() || packed.w_scale > 0.0);
        PackedBitLinear::new(packed, self.quant.act, backend)
    }
}

/// A projection of the transformer in one of its three forms.
#[derive(Debug)]
pub enum Linear {
    /// Plain `x @ W^T`, weight `(out, in)`.
    Full { weight: Tensor },
    /// Fake-quant training form.
    Bit(BitLinear),
    /// Packed inference form.
    Packed(PackedBitLinear),
}

impl Linear {
    /// A full-precision `(out, in)` weight variable named `weight` under `p`.
    /// Allocation failures (a config too large for the device) are errors, not panics.
    pub(crate) fn full_var(p: &nn::Path, out: i64, inf: i64) -> Result<Tensor> {
        // HF LLaMA init: normal(0, initializer_range = 0.02).
        Ok(p.f_var(
            "weight",
            &[out, inf],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        )?)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match self {
            Linear::Full { weight } => matmul_t(x, weight)?,
            Linear::Bit(b) => b.forward(x)?,
            Linear::Packed(p) => p.forward(x)?,
        };
        // (.., in) -> (.., out): every form keeps the leading dimensions.
        debug_assert_eq!(y.dim(), x.dim());
        debug_assert_eq!(
            y.size()[..y.dim().saturating_sub(1)],
            x.size()[..x.dim().saturating_sub(1)]
        );
        Ok(y)
    }

    /// `full`, `bitlinear` or `packed:<backend>`.
    pub fn form(&self) -> String {
        match self {
            Linear::Full { .. } => "full".into(),
            Linear::Bit(_) => "bitlinear".into(),
            Linear::Packed(p) => format!("packed:{}", p.backend_name()),
        }
    }

    /// Tensors as stored in a checkpoint, relative names (`weight`, `weight_scale`).
    ///
    /// Packed layers store HF's layout: u8 `weight` and `weight_scale = 1 / w_scale`
    /// (HF divides by it), as a 1-element f32 tensor.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        match self {
            Linear::Full { weight } => vec![("weight".into(), weight.shallow_clone())],
            Linear::Bit(b) => vec![("weight".into(), b.weight.shallow_clone())],
            Linear::Packed(p) => vec![
                ("weight".into(), p.weights.packed.shallow_clone()),
                (
                    "weight_scale".into(),
                    Tensor::from_slice(&[1.0 / p.weights.w_scale])
                        .to_device(p.weights.packed.device()),
                ),
            ],
        }
    }

    /// Parameter count of the layer in its logical (unpacked) shape.
    pub fn num_parameters(&self) -> i64 {
        match self {
            Linear::Full { weight } => weight.numel() as i64,
            Linear::Bit(b) => b.weight.numel() as i64,
            Linear::Packed(p) => p.weights.out_features * p.weights.in_features,
        }
    }
}
