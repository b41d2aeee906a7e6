//! How `packed.safetensors` stores the layers a BitNet model keeps in full
//! precision (the embedding and an untied float LM head): fp32 as trained,
//! bf16, or int8 with one absmax scale per row (issue #15, item 4).
//!
//! On a small model these layers are most of the file: SmolLM2-135M's tied
//! 49152 x 576 embedding is 113 MB in fp32 against about 21 MB of 2-bit
//! ternary weights. The arithmetic is `bitnet_infer::KeptMatrix`'s (one
//! implementation: the file holds exactly the codes and scales the fused
//! decode path computes with, so it never quantizes twice).
//!
//! On disk: bf16 is a `BF16` tensor under the usual name; int8 is an `I8`
//! tensor `NAME` (`[rows, cols]`) plus an `F32` tensor `NAME_row_scale`
//! (`[rows]`), `W[r] ~ NAME[r] * NAME_row_scale[r]`. A file from before this
//! change (fp32 kept layers) reads exactly as it did. Readers that need
//! floats (the libtorch model) dequantize with [`kept_to_float`].
use std::collections::BTreeMap;

use bitnet_infer::{KeptDtype, KeptMatrix};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::error::{BitnetError, Result};

/// Suffix of the per-row scale tensor of an int8 kept layer.
pub const ROW_SCALE_SUFFIX: &str = "_row_scale";

/// The kept layers' storage dtype, as written in the conversion spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeptStorage {
    /// As trained: 4 bytes a value (files from before this option).
    #[default]
    Fp32,
    /// bfloat16, round to nearest even: 2 bytes a value.
    Bf16,
    /// int8 codes with a per-row absmax scale: 1 byte a value + 4 a row.
    Int8,
}

impl KeptStorage {
    pub fn is_fp32(&self) -> bool {
        *self == KeptStorage::Fp32
    }

    /// The fused decode crate's name for the same dtype.
    pub fn infer_dtype(self) -> KeptDtype {
        match self {
            KeptStorage::Fp32 => KeptDtype::F32,
            KeptStorage::Bf16 => KeptDtype::Bf16,
            KeptStorage::Int8 => KeptDtype::Int8,
        }
    }

    pub fn name(self) -> &'static str {
        self.infer_dtype().name()
    }
}

/// Whether checkpoint tensor `name` is a kept layer this module compacts.
pub fn is_kept_name(name: &str) -> bool {
    name == "model.embed_tokens.weight" || name == "lm_head.weight"
}

fn shape2(name: &str, t: &Tensor) -> Result<(usize, usize)> {
    match t.size().as_slice() {
        [r, c] if *r > 0 && *c > 0 => Ok((*r as usize, *c as usize)),
        other => Err(BitnetError::invalid(
            name,
            format!("a kept layer must be a non-empty 2-D matrix, found shape {other:?}"),
        )),
    }
}

fn f32_values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(Vec::<f32>::try_from(
        t.f_to_kind(Kind::Float)?.f_contiguous()?.f_flatten(0, -1)?,
    )?)
}

/// `tensors` (a packed model's named tensors) with its float kept layers
/// stored as `dtype`; everything else, packed layers included, unchanged.
pub fn compact_kept(
    tensors: Vec<(String, Tensor)>,
    dtype: KeptStorage,
) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::with_capacity(tensors.len() + 2);
    for (name, t) in tensors {
        let float = super::model::is_float_kind(t.f_kind()?);
        if !is_kept_name(&name) || !float || dtype == KeptStorage::Fp32 {
            out.push((name, t));
            continue;
        }
        let (rows, cols) = shape2(&name, &t)?;
        let m = KeptMatrix::new(&f32_values(&t)?, rows, cols, dtype.infer_dtype())
            .map_err(|e| BitnetError::invalid(&name, e.to_string()))?;
        if let Some((codes, scales)) = m.int8_parts() {
            let codes = Tensor::from_slice(codes).f_view([rows as i64, cols as i64])?;
            out.push((
                format!("{name}{ROW_SCALE_SUFFIX}"),
                Tensor::from_slice(scales),
            ));
            out.push((name, codes));
        } else {
            out.push((name, t.f_to_kind(Kind::BFloat16)?));
        }
    }
    Ok(out)
}

/// Tensor `name` of a state dict, or the missing-tensor error naming it.
fn named<'a>(tensors: &'a BTreeMap<String, Tensor>, name: &str) -> Result<&'a Tensor> {
    tensors.get(name).ok_or_else(|| BitnetError::MissingTensor {
        name: name.to_string(),
        missing: 1,
    })
}

/// The kept layer `name` of a state dict in its stored form: int8 codes with
/// their row scales, bf16 bits, or f32 values (stored as `if_float` then).
// pot10: init (runs once per load)
pub fn kept_matrix(
    tensors: &BTreeMap<String, Tensor>,
    name: &str,
    if_float: KeptDtype,
) -> Result<KeptMatrix> {
    let t = named(tensors, name)?;
    let (rows, cols) = shape2(name, t)?;
    let bad = |e: bitnet_infer::InferError| BitnetError::invalid(name, e.to_string());
    match t.f_kind()? {
        Kind::Int8 => {
            let scale_name = format!("{name}{ROW_SCALE_SUFFIX}");
            let s = tensors.get(&scale_name).ok_or_else(|| {
                BitnetError::invalid(
                    name,
                    format!("int8 kept layer without its per-row scales `{scale_name}`; rewrite the file with convert_bitnet"),
                )
            })?;
            let codes = Vec::<i8>::try_from(t.f_contiguous()?.f_flatten(0, -1)?)?;
            KeptMatrix::from_int8(codes, f32_values(s)?, rows, cols).map_err(bad)
        }
        Kind::BFloat16 => {
            let bits = t
                .f_contiguous()?
                .f_view_dtype(Kind::Int16)?
                .f_flatten(0, -1)?;
            let bits: Vec<u16> = Vec::<i16>::try_from(bits)?
                .into_iter()
                .map(|b| b as u16)
                .collect();
            KeptMatrix::from_bf16_bits(bits, rows, cols).map_err(bad)
        }
        _ if if_float == KeptDtype::F32 => {
            KeptMatrix::from_f32(f32_values(t)?, rows, cols).map_err(bad)
        }
        _ => KeptMatrix::new(&f32_values(t)?, rows, cols, if_float).map_err(bad),
    }
}

/// Kept layer `name` as a float tensor of `kind` for libtorch (int8
/// dequantized with its row scales; float layers cast), on `t`'s device.
pub fn kept_to_float(tensors: &BTreeMap<String, Tensor>, name: &str, kind: Kind) -> Result<Tensor> {
    let t = named(tensors, name)?;
    if t.f_kind()? != Kind::Int8 {
        return Ok(t.f_to_kind(kind)?);
    }
    let m = kept_matrix(tensors, name, KeptDtype::F32)?;
    let values = Tensor::from_slice(&m.to_f32())
        .f_view([m.rows() as i64, m.cols() as i64])?
        .f_to_device(t.device())?;
    Ok(values.f_to_kind(kind)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: i64, cols: i64) -> Tensor {
        Tensor::arange(rows * cols, (Kind::Float, tch::Device::Cpu))
            .f_mul_scalar(0.37)
            .unwrap()
            .sin()
            .view([rows, cols])
    }

    fn map(v: Vec<(String, Tensor)>) -> BTreeMap<String, Tensor> {
        v.into_iter().collect()
    }

    /// Each dtype's stored form gives back the fused crate's own matrix
    /// (same bytes, no second quantization), and libtorch's float view of it.
    #[test]
    fn kept_layers_round_trip_in_every_dtype() {
        let w = matrix(6, 10);
        let values = f32_values(&w).unwrap();
        let other = Tensor::from_slice(&[1u8, 2, 3]);
        for dtype in [KeptStorage::Fp32, KeptStorage::Bf16, KeptStorage::Int8] {
            let named = vec![
                ("model.embed_tokens.weight".to_string(), w.shallow_clone()),
                (
                    "model.layers.0.mlp.up_proj.weight".to_string(),
                    other.shallow_clone(),
                ),
            ];
            let stored = map(compact_kept(named, dtype).unwrap());
            let expected = KeptMatrix::new(&values, 6, 10, dtype.infer_dtype()).unwrap();
            let got = kept_matrix(&stored, "model.embed_tokens.weight", KeptDtype::F32).unwrap();
            assert_eq!(got.dtype(), dtype.infer_dtype());
            assert_eq!(got.to_f32(), expected.to_f32(), "{dtype:?}");
            assert_eq!(got.bytes(), expected.bytes());
            let float = kept_to_float(&stored, "model.embed_tokens.weight", Kind::Float).unwrap();
            assert_eq!(f32_values(&float).unwrap(), expected.to_f32(), "{dtype:?}");
            assert_eq!(float.size(), vec![6, 10]);
            // Packed layers are never touched.
            assert_eq!(
                stored["model.layers.0.mlp.up_proj.weight"]
                    .f_kind()
                    .unwrap(),
                Kind::Uint8
            );
        }
        let int8 = map(compact_kept(
            vec![("lm_head.weight".to_string(), w.shallow_clone())],
            KeptStorage::Int8,
        )
        .unwrap());
        assert_eq!(int8["lm_head.weight"].f_kind().unwrap(), Kind::Int8);
        assert_eq!(int8["lm_head.weight_row_scale"].size(), vec![6]);
    }

    #[test]
    fn int8_without_its_scales_is_refused_with_the_fix() {
        let t = Tensor::zeros([2, 3], (Kind::Int8, tch::Device::Cpu));
        let tensors = map(vec![("model.embed_tokens.weight".to_string(), t)]);
        let e = kept_matrix(&tensors, "model.embed_tokens.weight", KeptDtype::F32)
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.embed_tokens.weight_row_scale"), "{e}");
    }

    /// Files from before this option have no `kept_dtype` in their spec.
    #[test]
    fn spec_without_kept_dtype_reads_as_fp32() {
        let spec: super::super::ConvertSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec.kept_dtype, KeptStorage::Fp32);
        // ... and an fp32 spec writes no new key, so older readers still read it.
        assert!(!serde_json::to_string(&spec).unwrap().contains("kept_dtype"));
    }
}
