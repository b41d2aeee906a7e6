//! The tch entry point: `PackedTernaryMatrix::forward` on libtorch tensors.
//!
//! The kernels work on slices; this wrapper validates a tensor (CPU, f32,
//! contiguous, `[..., in_features]`) before reading its memory through
//! `data_ptr`, and allocates the `[..., out_features]` output, so model
//! code can call the kernel like a `Linear` without copying activations.

use tch::{Device, Kind, Tensor};

use super::{KernelError, KernelPath, PackedTernaryMatrix};

impl PackedTernaryMatrix {
    /// `y = x W^T` with BitNet quantization, for `x` of shape
    /// `[..., in_features]` (f32, CPU, contiguous); returns `[..., out_features]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, KernelError> {
        self.forward_with(KernelPath::selected()?, x)
    }

    /// [`Self::forward`] on an explicit kernel path.
    pub fn forward_with(&self, path: KernelPath, x: &Tensor) -> Result<Tensor, KernelError> {
        let shape = x.size();
        if x.device() != Device::Cpu {
            return Err(KernelError::Device {
                device: format!("{:?}", x.device()),
            });
        }
        if x.kind() != Kind::Float {
            return Err(KernelError::Dtype {
                kind: format!("{:?}", x.kind()),
            });
        }
        let in_features = self.in_features();
        let (&last, leading) = shape.split_last().ok_or_else(|| KernelError::Shape {
            shape: shape.clone(),
            in_features,
        })?;
        if usize::try_from(last).ok() != Some(in_features) {
            return Err(KernelError::Shape {
                shape: shape.clone(),
                in_features,
            });
        }
        if !x.is_contiguous() {
            return Err(KernelError::NotContiguous { shape });
        }
        let rows: usize = leading.iter().map(|&d| d as usize).product();
        let mut out_shape = leading.to_vec();
        out_shape.push(self.out_features() as i64);
        let out = Tensor::f_empty(out_shape.as_slice(), (Kind::Float, Device::Cpu))?;
        if rows == 0 {
            return Ok(out);
        }
        // SAFETY: `x` is a contiguous f32 CPU tensor of rows * in_features
        // elements (checked above), so data_ptr points at that many
        // initialised f32 values; `x` is borrowed for the slice's lifetime
        // and nothing writes to it meanwhile.
        let input =
            unsafe { std::slice::from_raw_parts(x.data_ptr().cast::<f32>(), rows * in_features) };
        // SAFETY: `out` was just allocated as a contiguous f32 CPU tensor of
        // rows * out_features elements and is not shared with anyone yet;
        // every element is written by the kernel before it is read (f32 has
        // no invalid bit patterns, so the uninitialised memory is harmless).
        let output = unsafe {
            std::slice::from_raw_parts_mut(out.data_ptr().cast::<f32>(), rows * self.out_features())
        };
        self.matmul_with(path, input, rows, output)?;
        Ok(out)
    }
}
