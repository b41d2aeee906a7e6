//! The tch entry point: [`TensorMatmul::forward`] on libtorch tensors.
//!
//! The kernels work on slices; this wrapper validates a tensor (CPU, f32,
//! contiguous, `[..., in_features]`) before reading its memory through
//! `data_ptr`, and allocates the `[..., out_features]` output, so model
//! code can call the kernel like a `Linear` without copying activations.

use tch::{Device, Kind, Tensor};

use bitnet_kernels::{KernelError, KernelPath, PackedTernaryMatrix};

/// Why a tensor could not go through the packed kernel.
#[derive(Debug, thiserror::Error)]
pub enum TensorKernelError {
    /// The tensor given to `forward` is not on the CPU.
    #[error(
        "packed ternary CPU kernel got an input tensor on {device}; move it to the CPU \
         first or use the CUDA kernel for that device"
    )]
    Device { device: String },
    /// The tensor given to `forward` is not f32.
    #[error("packed ternary CPU kernel needs f32 input activations, got {kind}; convert with to_kind(Kind::Float)")]
    Dtype { kind: String },
    /// The tensor given to `forward` is not contiguous.
    #[error("packed ternary CPU kernel needs a contiguous input tensor (shape {shape:?}); call .contiguous() first")]
    NotContiguous { shape: Vec<i64> },
    /// The tensor given to `forward` has the wrong trailing dimension.
    #[error("packed ternary CPU kernel expects input shape [..., {in_features}], got {shape:?}")]
    Shape { shape: Vec<i64>, in_features: usize },
    /// The kernel refused the weights or buffers.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// libtorch refused an operation in the wrapper.
    #[error("libtorch error in the packed ternary kernel wrapper: {0}")]
    Torch(#[from] tch::TchError),
}

/// `PackedTernaryMatrix` applied to tensors, like a `Linear`.
pub trait TensorMatmul {
    /// `y = x W^T` with BitNet quantization, for `x` of shape
    /// `[..., in_features]` (f32, CPU, contiguous); returns `[..., out_features]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor, TensorKernelError>;

    /// [`Self::forward`] on an explicit kernel path.
    fn forward_with(&self, path: KernelPath, x: &Tensor) -> Result<Tensor, TensorKernelError>;
}

impl TensorMatmul for PackedTernaryMatrix {
    fn forward(&self, x: &Tensor) -> Result<Tensor, TensorKernelError> {
        self.forward_with(KernelPath::selected()?, x)
    }

    fn forward_with(&self, path: KernelPath, x: &Tensor) -> Result<Tensor, TensorKernelError> {
        let shape = x.size();
        if x.device() != Device::Cpu {
            return Err(TensorKernelError::Device {
                device: format!("{:?}", x.device()),
            });
        }
        if x.kind() != Kind::Float {
            return Err(TensorKernelError::Dtype {
                kind: format!("{:?}", x.kind()),
            });
        }
        let in_features = self.in_features();
        let (&last, leading) = shape.split_last().ok_or_else(|| TensorKernelError::Shape {
            shape: shape.clone(),
            in_features,
        })?;
        if usize::try_from(last).ok() != Some(in_features) {
            return Err(TensorKernelError::Shape {
                shape: shape.clone(),
                in_features,
            });
        }
        if !x.is_contiguous() {
            return Err(TensorKernelError::NotContiguous { shape });
        }
        let rows: usize = leading.iter().map(|&d| d as usize).product();
        // Checked above: a contiguous (.., in) f32 CPU tensor of rows * in values.
        debug_assert_eq!(x.numel(), rows * in_features);
        let dims = shape.len();
        // `[..., out_features]` in the vector `x.size()` already made: this
        // runs for every packed linear of every forward, so no new one.
        let mut out_shape = shape;
        if let Some(d) = out_shape.last_mut() {
            *d = self.out_features() as i64;
        }
        debug_assert_eq!(out_shape.len(), dims);
        let out = Tensor::f_empty(out_shape.as_slice(), (Kind::Float, Device::Cpu))?;
        if rows == 0 {
            return Ok(out);
        }
        // SAFETY: `x` is a contiguous f32 CPU tensor of rows * in_features
        // elements (checked above), so data_ptr points at that many
        // initialised f32 values; `x` is borrowed for the slice's lifetime
        // and nothing writes to it meanwhile.
        let input =
            // pot10: allow(R9) tch exposes tensor storage only as `data_ptr`; dtype, device, contiguity and element count are checked above
            unsafe { std::slice::from_raw_parts(x.data_ptr().cast::<f32>(), rows * in_features) };
        // SAFETY: `out` was just allocated as a contiguous f32 CPU tensor of
        // rows * out_features elements and is not shared with anyone yet;
        // every element is written by the kernel before it is read (f32 has
        // no invalid bit patterns, so the uninitialised memory is harmless).
        // pot10: allow(R9) tch exposes tensor storage only as `data_ptr`; dtype, device, contiguity and element count are checked above
        let output = unsafe {
            std::slice::from_raw_parts_mut(out.data_ptr().cast::<f32>(), rows * self.out_features())
        };
        // The kernels share the cores with libtorch's intra-op pool: use as
        // many threads as it does, so a comparison with libtorch is fair.
        bitnet_kernels::set_num_threads(usize::try_from(tch::get_num_threads()).unwrap_or(1));
        self.matmul_with(path, input, rows, output)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use bitnet_kernels::storage::pack_storage;
    use bitnet_kernels::testing::SplitMix as Rng;
    use bitnet_kernels::{quantize_activations, KernelPath, PackedTernaryMatrix};
    use tch::{Device, Kind, Tensor};

    use super::{TensorKernelError, TensorMatmul};

    #[test]
    fn f32_outputs_match_the_dequantized_libtorch_reference() {
        let (out, inp, rows) = (24, 200, 5);
        let mut rng = Rng(5);
        let w_q = rng.ternary(out * inp);
        let x = rng.normal_ish(rows * inp);
        let w_scale = 0.037f32;
        let matrix =
            PackedTernaryMatrix::from_storage(&pack_storage(&w_q, out, inp), out, inp, w_scale)
                .unwrap();

        // The BitLinear fake-quant graph in libtorch ops.
        let xt = Tensor::from_slice(&x).view([rows as i64, inp as i64]);
        let wt = Tensor::from_slice(&w_q)
            .to_kind(Kind::Float)
            .view([out as i64, inp as i64]);
        let act_scale = xt
            .abs()
            .amax([-1i64].as_slice(), true)
            .clamp_min(1e-5)
            .reciprocal()
            * 127.0;
        let x_q = (&xt * &act_scale).round().clamp(-128.0, 127.0);
        let reference = (&x_q / &act_scale).matmul(&(wt * w_scale as f64).tr());

        // Same integers as ours (the quantization is bit-exact).
        let ours_q = quantize_activations(&x, rows, inp).unwrap();
        let torch_q: Vec<f32> = Vec::try_from(x_q.flatten(0, -1)).unwrap();
        for r in 0..rows {
            let ours: Vec<f32> = ours_q.row(r)[..inp].iter().map(|&v| v as f32).collect();
            assert_eq!(ours, torch_q[r * inp..(r + 1) * inp], "row {r}");
        }

        let y = matrix.forward_with(KernelPath::detect(), &xt).unwrap();
        assert_eq!(y.size(), vec![rows as i64, out as i64]);
        // Tolerance: the reference sums `inp` rounded f32 products, so its error
        // is at most about inp * 2^-24 * sum|terms| <= 200 * 6e-8 * 128 * inp *
        // w_scale / act_scale; 1e-4 relative to the row's largest |y| covers it
        // with margin while any wrong integer (a step of w_scale/act_scale,
        // ~1e-2 relative here) would fail.
        let diff = (&y - &reference).abs().max().double_value(&[]);
        let scale = reference.abs().max().double_value(&[]);
        assert!(
            diff <= 1e-4 * scale,
            "max |ours - torch| = {diff}, max |torch| = {scale}"
        );
    }

    #[test]
    fn forward_checks_the_tensor_before_reading_it() {
        let matrix = PackedTernaryMatrix::from_storage(&[0b0101_0101; 8], 4, 8, 1.0).unwrap();
        let x = Tensor::ones([2, 8], (Kind::Float, Device::Cpu));
        let err = matrix.forward(&x.to_kind(Kind::Double)).unwrap_err();
        assert!(matches!(err, TensorKernelError::Dtype { .. }), "{err}");
        let err = matrix
            .forward(&Tensor::ones([8, 2], (Kind::Float, Device::Cpu)).tr())
            .unwrap_err();
        assert!(
            matches!(err, TensorKernelError::NotContiguous { .. }),
            "{err}"
        );
        let err = matrix
            .forward(&Tensor::ones([2, 7], (Kind::Float, Device::Cpu)))
            .unwrap_err();
        assert!(matches!(err, TensorKernelError::Shape { .. }), "{err}");
        let err = matrix.forward(&Tensor::from(1.0f32)).unwrap_err();
        assert!(matches!(err, TensorKernelError::Shape { .. }), "{err}");
        if tch::Cuda::is_available() {
            let err = matrix.forward(&x.to_device(Device::Cuda(0))).unwrap_err();
            assert!(matches!(err, TensorKernelError::Device { .. }), "{err}");
        }
        // Leading dimensions are kept; an empty batch gives an empty output.
        let y = matrix
            .forward(&Tensor::ones([2, 3, 8], (Kind::Float, Device::Cpu)))
            .unwrap();
        assert_eq!(y.size(), vec![2, 3, 4]);
        // All weights are 0 (code 1), so every output is exactly 0.
        assert_eq!(y.abs().max().double_value(&[]), 0.0);
        let y = matrix
            .forward(&Tensor::ones([0, 8], (Kind::Float, Device::Cpu)))
            .unwrap();
        assert_eq!(y.size(), vec![0, 4]);
    }

    #[test]
    fn forward_reads_contiguous_views_at_their_storage_offset() {
        let (out, inp) = (6, 40);
        let mut rng = Rng(21);
        let w_q = rng.ternary(out * inp);
        let matrix =
            PackedTernaryMatrix::from_storage(&pack_storage(&w_q, out, inp), out, inp, 0.1)
                .unwrap();
        let big = Tensor::from_slice(&rng.normal_ish(4 * inp)).view([4, inp as i64]);
        let view = big.narrow(0, 1, 2); // contiguous, storage offset = inp
        assert!(view.is_contiguous());
        let y_view = matrix.forward(&view).unwrap();
        let y_copy = matrix.forward(&view.copy()).unwrap();
        assert!(y_view.equal(&y_copy));
        let y_full = matrix.forward(&big).unwrap();
        assert!(y_view.equal(&y_full.narrow(0, 1, 2)));
    }
}
