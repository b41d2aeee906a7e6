//! The packed CPU kernels as a model-library `TernaryBackend`, so a BitNet
//! inference model built from packed weights computes on them directly
//! (the unpack fallback only serves what the kernels cannot: weight-only
//! quantization or fewer than 8 activation bits, and non-CPU tensors).
use tch::{Device, Kind, Tensor};

use super::{KernelPath, PackedTernaryMatrix, TensorMatmul};
use crate::bitnet::{
    ActQuant, BitnetError, PackedLinear, Result, TernaryBackend, TernaryMatmul, UnpackBackend,
};

/// Packed ternary x int8 CPU kernels, with the unpack fallback.
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelBackend;

/// Whether [`KernelBackend`] runs layers with `act` on `device` on the
/// kernels (rather than its unpack fallback).
pub fn kernel_supports(act: ActQuant, device: Device) -> bool {
    act == ActQuant::INT8 && device == Device::Cpu && KernelPath::selected().is_ok()
}

struct KernelMatmul {
    matrix: PackedTernaryMatrix,
    name: String,
}

fn module_error(e: impl std::fmt::Display) -> BitnetError {
    BitnetError::Module {
        module: "packed ternary kernel".into(),
        message: e.to_string(),
    }
}

impl TernaryMatmul for KernelMatmul {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let kind = x.f_kind()?;
        let x32 = if kind == Kind::Float {
            x.f_contiguous()?
        } else {
            x.f_to_kind(Kind::Float)?.f_contiguous()?
        };
        let y = self.matrix.forward(&x32).map_err(module_error)?;
        Ok(if kind == Kind::Float {
            y
        } else {
            y.f_to_kind(kind)?
        })
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn held_bytes(&self) -> i64 {
        self.matrix.weight_bytes() as i64
    }
}

impl TernaryBackend for KernelBackend {
    fn build(&self, layer: &PackedLinear, act: ActQuant) -> Result<Box<dyn TernaryMatmul>> {
        let kernel_fits = act == ActQuant::INT8
            && layer.packed.device() == Device::Cpu
            && layer.packed.kind() == Kind::Uint8;
        if !kernel_fits {
            return UnpackBackend.build(layer, act);
        }
        let path = KernelPath::selected().map_err(module_error)?;
        let bytes = Vec::<u8>::try_from(layer.packed.f_contiguous()?.f_flatten(0, -1)?)?;
        let matrix = PackedTernaryMatrix::from_storage(
            &bytes,
            layer.out_features as usize,
            layer.in_features as usize,
            layer.w_scale,
        )
        .map_err(module_error)?;
        Ok(Box::new(KernelMatmul {
            matrix,
            name: format!("kernel-{}", path.name()),
        }))
    }

    fn name(&self) -> &str {
        "packed-kernel"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_backend_matches_the_unpack_backend() {
        tch::manual_seed(7);
        let w = Tensor::randn([37, 70], (Kind::Float, Device::Cpu));
        let layer = PackedLinear::from_weight(&w, crate::bitnet::WeightQuant::Ternary).unwrap();
        let x = Tensor::randn([3, 5, 70], (Kind::Float, Device::Cpu));
        let fast = KernelBackend.build(&layer, ActQuant::INT8).unwrap();
        let slow = UnpackBackend.build(&layer, ActQuant::INT8).unwrap();
        assert!(fast.name().starts_with("kernel-"), "{}", fast.name());
        let (a, b) = (fast.forward(&x).unwrap(), slow.forward(&x).unwrap());
        assert_eq!(a.size(), vec![3, 5, 37]);
        // Same integer accumulations; only f32 scale rounding differs.
        let diff = (&a - &b).abs().max().double_value(&[]);
        let scale = b.abs().max().double_value(&[]);
        assert!(diff <= 1e-5 * scale.max(1.0), "diff {diff} scale {scale}");
        // Weight-only quantization falls back to unpacking.
        let off = KernelBackend.build(&layer, ActQuant::Off).unwrap();
        assert_eq!(off.name(), "unpack-f32");
    }
}
