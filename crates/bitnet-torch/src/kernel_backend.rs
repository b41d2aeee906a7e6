//! A [`TernaryBackend`] backed by the packed CPU kernels in [`crate::kernels`],
//! so a packed model computes on its 2-bit weights directly instead of the
//! model library's default [`crate::bitnet::UnpackBackend`] (which holds
//! every ternary layer as dense f32 codes).
//!
//! The kernels implement BitNet b1.58's per-token int8 activations on CPU
//! f32 inputs; other activation modes or devices are errors here (callers
//! choose the unpack fallback for them, see `stages::profile_models`).
use tch::{Device, Kind, Tensor};

use crate::bitnet::{ActQuant, BitnetError, PackedLinear, Result, TernaryBackend, TernaryMatmul};
use crate::kernels::matrix::{K_BLOCK, ROW_GROUP};
use crate::kernels::{KernelPath, PackedTernaryMatrix};

/// Builds kernel-backed matmuls (CPU, int8 activations).
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelBackend;

/// Whether [`KernelBackend`] can run layers with `act` on `device`.
pub fn kernel_supports(act: ActQuant, device: Device) -> bool {
    act == ActQuant::INT8 && device == Device::Cpu && KernelPath::selected().is_ok()
}

/// Bytes of the kernels' compute layout for an `[out, in]` weight (2-bit
/// codes padded to whole row groups and 256-column blocks): what the
/// backend holds on top of the stored packed tensor.
pub fn compute_layout_bytes(out_features: i64, in_features: i64) -> i64 {
    let groups = (out_features.max(0) as usize).div_ceil(ROW_GROUP);
    let blocks = (in_features.max(0) as usize).div_ceil(K_BLOCK);
    (groups * ROW_GROUP * blocks * 64) as i64
}

struct KernelMatmul {
    matrix: PackedTernaryMatrix,
    name: String,
}

fn kernel_error(e: crate::kernels::KernelError) -> BitnetError {
    BitnetError::invalid("packed ternary kernel", e.to_string())
}

impl TernaryMatmul for KernelMatmul {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let kind = x.f_kind()?;
        // The kernels read f32 contiguous rows; other dtypes are cast in and out.
        let xf = x.f_to_kind(Kind::Float)?.f_contiguous()?; // (.., in)
        let y = self.matrix.forward(&xf).map_err(kernel_error)?; // (.., out) f32
        if kind == Kind::Float {
            Ok(y)
        } else {
            Ok(y.f_to_kind(kind)?)
        }
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl TernaryBackend for KernelBackend {
    fn build(&self, layer: &PackedLinear, act: ActQuant) -> Result<Box<dyn TernaryMatmul>> {
        if act != ActQuant::INT8 {
            return Err(BitnetError::invalid(
                "kernel backend",
                format!("the CPU kernels implement per-token int8 activations, not {act:?}; use the unpack backend"),
            ));
        }
        if layer.packed.device() != Device::Cpu {
            return Err(BitnetError::invalid(
                "kernel backend",
                format!(
                    "the packed kernels run on CPU, the layer is on {:?}; use the unpack backend",
                    layer.packed.device()
                ),
            ));
        }
        let bytes = Vec::<u8>::try_from(layer.packed.f_contiguous()?.f_flatten(0, -1)?)?;
        let matrix = PackedTernaryMatrix::from_storage(
            &bytes,
            layer.out_features as usize,
            layer.in_features as usize,
            layer.w_scale,
        )
        .map_err(kernel_error)?;
        let path = KernelPath::selected().map_err(kernel_error)?;
        Ok(Box::new(KernelMatmul {
            matrix,
            name: format!("kernel-{}", path.name()),
        }))
    }

    fn name(&self) -> &str {
        "kernel"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitnet::{UnpackBackend, WeightQuant};

    /// The kernel and the unpack fallback compute the same layer: integer
    /// dot products are exact in both, so only the final f32 scaling may
    /// differ (a few ulp; 1e-5 relative).
    #[test]
    fn kernel_matches_unpack_fallback() {
        tch::manual_seed(3);
        let w = Tensor::randn([37, 300], (Kind::Float, Device::Cpu));
        let layer = PackedLinear::from_weight(&w, WeightQuant::Ternary).unwrap();
        let x = Tensor::randn([2, 5, 300], (Kind::Float, Device::Cpu));
        let k = KernelBackend.build(&layer, ActQuant::INT8).unwrap();
        let u = UnpackBackend.build(&layer, ActQuant::INT8).unwrap();
        let (yk, yu) = (k.forward(&x).unwrap(), u.forward(&x).unwrap());
        assert_eq!(yk.size(), vec![2, 5, 37]);
        let err = (&yk - &yu).abs().max().double_value(&[]);
        let scale = yu.abs().max().double_value(&[]);
        assert!(err <= 1e-5 * scale, "max diff {err} vs scale {scale}");
        assert!(k.name().starts_with("kernel-"));
        assert!(KernelBackend.build(&layer, ActQuant::Off).is_err());
        // 10 row groups of 4 rows x 2 column blocks x 64 bytes, as the kernels count it.
        let bytes = Vec::<u8>::try_from(layer.packed.flatten(0, -1)).unwrap();
        let m = PackedTernaryMatrix::from_storage(&bytes, 37, 300, layer.w_scale).unwrap();
        assert_eq!(compute_layout_bytes(37, 300), 5120);
        assert_eq!(compute_layout_bytes(37, 300) as usize, m.weight_bytes());
    }
}
