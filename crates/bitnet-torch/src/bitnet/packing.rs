//! 2-bit packing of ternary weights and the packed inference linear layer.
//!
//! # Bit layout (HF transformers BitNet layout)
//!
//! A ternary weight `W_q` of shape `[out, in]` (i8 in {-1, 0, 1}) packs into a u8
//! tensor of shape `[row_dim, in]` with `row_dim = ceil(out / 4)`. Output row
//! `r = i * row_dim + j` (`i` in `0..4`, `j` in `0..row_dim`) is stored in byte
//! row `j`, bits `2*i .. 2*i+1`, as the code `q + 1` in {0, 1, 2}:
//!
//! ```text
//! packed[j][c] = (W_q[j][c] + 1)
//!              | (W_q[row_dim + j][c] + 1) << 2
//!              | (W_q[2*row_dim + j][c] + 1) << 4
//!              | (W_q[3*row_dim + j][c] + 1) << 6
//! ```
//!
//! Slots for rows `r >= out` (when `out` is not a multiple of 4) hold 0. This is
//! exactly `transformers.integrations.bitnet.pack_weights` / `unpack_weights`, so an
//! export to HF needs no repacking (HF's `weight_scale` buffer is `1 / w_scale`).
//!
//! The packed layer's matmul is pluggable ([`TernaryMatmul`], built per layer by a
//! [`TernaryBackend`]) so that the fast kernels in `crate::kernels` can replace the
//! default [`UnpackBackend`], which unpacks once and computes the dequantized math.

use tch::{Device, Kind, Tensor};

use super::error::{BitnetError, Result};
use super::quant::{quantize_activations, quantize_weight, ActQuant, WeightQuant};

/// Number of packed byte rows for `out_features` ternary rows.
pub fn packed_rows(out_features: usize) -> usize {
    out_features.div_ceil(4)
}

/// Packs row-major `[out, in]` ternary codes into `[ceil(out/4), in]` bytes.
pub fn pack_ternary_slice(
    codes: &[i8],
    out_features: usize,
    in_features: usize,
) -> Result<Vec<u8>> {
    let expected = out_features.checked_mul(in_features);
    if expected != Some(codes.len()) {
        return Err(BitnetError::invalid(
            "pack_ternary",
            format!(
                "{} codes do not form a [{out_features}, {in_features}] matrix",
                codes.len()
            ),
        ));
    }
    let row_dim = packed_rows(out_features);
    let mut packed = vec![0u8; row_dim * in_features];
    for (r, row) in codes.chunks_exact(in_features.max(1)).enumerate() {
        if in_features == 0 {
            break;
        }
        let (i, j) = (r / row_dim, r % row_dim);
        let dst = &mut packed[j * in_features..(j + 1) * in_features];
        for (c, (&q, d)) in row.iter().zip(dst.iter_mut()).enumerate() {
            if !(-1..=1).contains(&q) {
                return Err(BitnetError::invalid(
                    "pack_ternary",
                    format!("value {q} at [{r}, {c}] is not ternary (-1, 0, 1)"),
                ));
            }
            *d |= ((q + 1) as u8) << (2 * i);
        }
    }
    Ok(packed)
}

/// Inverse of [`pack_ternary_slice`]; rejects the unused code 3 in used slots.
pub fn unpack_ternary_slice(
    packed: &[u8],
    out_features: usize,
    in_features: usize,
) -> Result<Vec<i8>> {
    let row_dim = packed_rows(out_features);
    if row_dim.checked_mul(in_features) != Some(packed.len()) {
        return Err(BitnetError::invalid(
            "unpack_ternary",
            format!(
                "{} bytes do not hold [{out_features}, {in_features}] packed as [{row_dim}, {in_features}]",
                packed.len()
            ),
        ));
    }
    let mut codes = vec![0i8; out_features * in_features];
    for (r, row) in codes.chunks_exact_mut(in_features.max(1)).enumerate() {
        if in_features == 0 {
            break;
        }
        let (i, j) = (r / row_dim, r % row_dim);
        let src = &packed[j * in_features..(j + 1) * in_features];
        for (c, (&b, d)) in src.iter().zip(row.iter_mut()).enumerate() {
            let code = (b >> (2 * i)) & 3;
            if code == 3 {
                return Err(BitnetError::invalid(
                    "unpack_ternary",
                    format!(
                        "code 3 at packed [{j}, {c}] bits {}: not a ternary value",
                        2 * i
                    ),
                ));
            }
            *d = code as i8 - 1;
        }
    }
    Ok(codes)
}

fn dims2(t: &Tensor, what: &str) -> Result<(usize, usize)> {
    match t.size().as_slice() {
        [a, b] => Ok((*a as usize, *b as usize)),
        other => Err(BitnetError::invalid(
            what,
            format!("expected a 2-D tensor, got shape {other:?}"),
        )),
    }
}

/// Packs an i8 `[out, in]` ternary tensor into u8 `[ceil(out/4), in]` (same device).
pub fn pack_ternary(codes: &Tensor) -> Result<Tensor> {
    if codes.f_kind()? != Kind::Int8 {
        return Err(BitnetError::Dtype {
            name: "pack_ternary input".into(),
            expected: "Int8".into(),
            found: format!("{:?}", codes.f_kind()?),
        });
    }
    let (out, inf) = dims2(codes, "pack_ternary")?;
    let device = codes.device();
    let host: Vec<i8> = Vec::<i8>::try_from(
        codes
            .f_to_device(Device::Cpu)?
            .f_contiguous()?
            .f_flatten(0, -1)?,
    )?;
    let packed = pack_ternary_slice(&host, out, inf)?;
    Ok(Tensor::f_from_slice(&packed)?
        .f_reshape([packed_rows(out) as i64, inf as i64])?
        .f_to_device(device)?)
}

/// Unpacks u8 `[ceil(out/4), in]` into i8 `[out, in]` (same device).
pub fn unpack_ternary(packed: &Tensor, out_features: i64) -> Result<Tensor> {
    if packed.f_kind()? != Kind::Uint8 {
        return Err(BitnetError::Dtype {
            name: "unpack_ternary input".into(),
            expected: "Uint8".into(),
            found: format!("{:?}", packed.f_kind()?),
        });
    }
    let (rows, inf) = dims2(packed, "unpack_ternary")?;
    let out = usize::try_from(out_features)
        .map_err(|_| BitnetError::invalid("unpack_ternary", "negative out_features"))?;
    if packed_rows(out) != rows {
        return Err(BitnetError::invalid(
            "unpack_ternary",
            format!(
                "{rows} packed rows cannot hold {out} output rows (need {})",
                packed_rows(out)
            ),
        ));
    }
    let device = packed.device();
    let host = Vec::<u8>::try_from(
        packed
            .f_to_device(Device::Cpu)?
            .f_contiguous()?
            .f_flatten(0, -1)?,
    )?;
    let codes = unpack_ternary_slice(&host, out, inf)?;
    Ok(Tensor::f_from_slice(&codes)?
        .f_reshape([out as i64, inf as i64])?
        .f_to_device(device)?)
}

/// A ternary linear layer in storage form: packed codes plus one scale.
#[derive(Debug)]
pub struct PackedLinear {
    /// u8 `[ceil(out/4), in]`, layout in the module docs.
    pub packed: Tensor,
    /// `max(mean|W|, 1e-5)` of the latent weight (the dequantized weight is `W_q * w_scale`).
    pub w_scale: f32,
    pub out_features: i64,
    pub in_features: i64,
}

impl PackedLinear {
    /// Quantizes a latent weight `[out, in]` and packs it.
    pub fn from_weight(w: &Tensor, mode: WeightQuant) -> Result<Self> {
        let q = quantize_weight(w, mode)?;
        Self::from_codes(&q.codes, q.w_scale)
    }

    /// Packs i8 codes `[out, in]` with their scale.
    pub fn from_codes(codes: &Tensor, w_scale: f32) -> Result<Self> {
        let (out, inf) = dims2(codes, "PackedLinear codes")?;
        Ok(PackedLinear {
            packed: pack_ternary(codes)?,
            w_scale,
            out_features: out as i64,
            in_features: inf as i64,
        })
    }

    /// Checks a stored packed tensor against the layer shape.
    pub fn new(packed: Tensor, w_scale: f32, out_features: i64, in_features: i64) -> Result<Self> {
        let want = [
            packed_rows(out_features.max(0) as usize) as i64,
            in_features,
        ];
        if packed.size() != want || packed.f_kind()? != Kind::Uint8 || !w_scale.is_finite() {
            return Err(BitnetError::invalid(
                "PackedLinear",
                format!(
                    "packed tensor {:?} {:?} (scale {w_scale}) does not fit [{out_features}, {in_features}]: need u8 {want:?} and a finite scale",
                    packed.size(),
                    packed.f_kind()?
                ),
            ));
        }
        Ok(PackedLinear {
            packed,
            w_scale,
            out_features,
            in_features,
        })
    }

    /// i8 codes `[out, in]`.
    pub fn unpack(&self) -> Result<Tensor> {
        unpack_ternary(&self.packed, self.out_features)
    }

    /// `W_q * w_scale` as f32 `[out, in]`.
    pub fn dequantized(&self) -> Result<Tensor> {
        Ok(self
            .unpack()?
            .f_to_kind(Kind::Float)?
            .f_mul_scalar(f64::from(self.w_scale))?)
    }

    /// Exact bytes of the stored form (packed codes + one f32 scale), from
    /// the layer's shape, so it stays right after the codes were released.
    pub fn weight_bytes(&self) -> i64 {
        packed_rows(self.out_features.max(0) as usize) as i64 * self.in_features + 4
    }
}

/// The matmul of a packed BitLinear: `x (.., in)` float -> `(.., out)` in `x`'s dtype,
/// including the layer's activation quantization, i.e.
/// `y = (W_q . x_q) * w_scale / act_scale`.
///
/// `Send` only (not `Sync`): `tch::Tensor` is not `Sync`, and implementations hold tensors.
pub trait TernaryMatmul: Send {
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
    /// Short name for reports (`unpack-f32`, `avx2-packed`, ...).
    fn name(&self) -> &str;
    /// Bytes of weight data this matmul holds of its own (a repacked or
    /// unpacked copy), on top of the layer's stored codes: what makes the
    /// resident size of a model differ from its stored size.
    fn held_bytes(&self) -> i64;
}

/// Builds a [`TernaryMatmul`] for one packed layer; one per model (CPU SIMD, CUDA, ...).
pub trait TernaryBackend {
    fn build(&self, layer: &PackedLinear, act: ActQuant) -> Result<Box<dyn TernaryMatmul>>;
    fn name(&self) -> &str;
}

/// Default backend: unpack once to f32 codes, then compute the dequantized math.
///
/// Integer codes and int8 activation codes are exact in f32 and their dot products
/// are exact up to 2^24, so the result differs from the fake-quant training graph
/// only by f32 rounding of the scale multiplications (measured in the tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct UnpackBackend;

struct UnpackedMatmul {
    codes_t: Tensor, // (in, out) f32
    w_scale: f64,
    act: ActQuant,
}

impl TernaryMatmul for UnpackedMatmul {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let kind = x.f_kind()?;
        let y = match quantize_activations(x, self.act)? {
            Some((codes, act_scale)) => codes
                .f_matmul(&self.codes_t)?
                .f_mul_scalar(self.w_scale)?
                .f_div(&act_scale)?,
            None => x
                .f_to_kind(Kind::Float)?
                .f_matmul(&self.codes_t)?
                .f_mul_scalar(self.w_scale)?,
        };
        Ok(y.f_to_kind(kind)?)
    }
    fn name(&self) -> &str {
        "unpack-f32"
    }
    fn held_bytes(&self) -> i64 {
        self.codes_t.numel() as i64 * 4
    }
}

impl TernaryBackend for UnpackBackend {
    fn build(&self, layer: &PackedLinear, act: ActQuant) -> Result<Box<dyn TernaryMatmul>> {
        act.range()?;
        Ok(Box::new(UnpackedMatmul {
            codes_t: layer
                .unpack()?
                .f_to_kind(Kind::Float)?
                .f_tr()?
                .f_contiguous()?,
            w_scale: f64::from(layer.w_scale),
            act,
        }))
    }
    fn name(&self) -> &str {
        "unpack-f32"
    }
}

/// A packed layer with its activation quantization and built matmul.
pub struct PackedBitLinear {
    pub weights: PackedLinear,
    pub act: ActQuant,
    matmul: Box<dyn TernaryMatmul>,
    /// True once [`Self::release_stored_codes`] dropped `weights.packed`.
    codes_released: bool,
}

impl std::fmt::Debug for PackedBitLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedBitLinear")
            .field("weights", &self.weights)
            .field("act", &self.act)
            .field("matmul", &self.matmul.name())
            .finish()
    }
}

impl PackedBitLinear {
    pub fn new(weights: PackedLinear, act: ActQuant, backend: &dyn TernaryBackend) -> Result<Self> {
        let matmul = backend.build(&weights, act)?;
        Ok(PackedBitLinear {
            weights,
            act,
            matmul,
            codes_released: false,
        })
    }

    /// Rebuilds the matmul with another backend (e.g. the fast kernels).
    pub fn set_backend(&mut self, backend: &dyn TernaryBackend) -> Result<()> {
        self.check_codes_held("set_backend")?;
        self.matmul = backend.build(&self.weights, self.act)?;
        Ok(())
    }

    /// Drops the stored u8 codes: every backend builds its own copy of the
    /// weights (kernel layout or unpacked codes), so an inference-only model
    /// does not need them, and holding both would count the weights twice
    /// in its memory. Afterwards the layer can still run `forward`, but not
    /// be saved, repacked or given another backend.
    pub fn release_stored_codes(&mut self) -> Result<()> {
        let device = self.weights.packed.device();
        self.weights.packed = Tensor::f_empty([0], (Kind::Uint8, device))?;
        self.codes_released = true;
        Ok(())
    }

    /// Whether the stored codes were released (inference-only layer).
    pub fn codes_released(&self) -> bool {
        self.codes_released
    }

    /// An error for `what` on a layer whose codes were released.
    pub fn check_codes_held(&self, what: &str) -> Result<()> {
        if self.codes_released {
            return Err(BitnetError::invalid(
                what,
                "the layer's stored ternary codes were released for inference (release_stored_codes); reload the model to save, repack or change its backend",
            ));
        }
        Ok(())
    }

    /// Bytes this layer holds for its weights now: the stored codes (unless
    /// released), the scale, and the backend's own copy.
    pub fn resident_bytes(&self) -> i64 {
        let codes = if self.codes_released {
            0
        } else {
            self.weights.packed.numel() as i64
        };
        codes + 4 + self.matmul.held_bytes()
    }

    pub fn backend_name(&self) -> &str {
        self.matmul.name()
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.matmul.forward(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tiny deterministic generator so the test needs no extra crate.
    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    }

    #[test]
    fn round_trip_random_shapes_including_non_multiples_of_four() {
        let mut seed = 7u64;
        for (out, inf) in [
            (1, 1),
            (3, 5),
            (4, 4),
            (5, 3),
            (6, 7),
            (13, 2),
            (64, 33),
            (2, 0),
        ] {
            let codes: Vec<i8> = (0..out * inf)
                .map(|_| (lcg(&mut seed) % 3) as i8 - 1)
                .collect();
            let packed = pack_ternary_slice(&codes, out, inf).unwrap();
            assert_eq!(packed.len(), out.div_ceil(4) * inf);
            assert_eq!(
                unpack_ternary_slice(&packed, out, inf).unwrap(),
                codes,
                "[{out},{inf}]"
            );
            // tensor versions agree with the slice versions
            let t = Tensor::from_slice(&codes).reshape([out as i64, inf as i64]);
            let p = pack_ternary(&t).unwrap();
            assert_eq!(Vec::<u8>::try_from(p.flatten(0, -1)).unwrap(), packed);
            let back = unpack_ternary(&p, out as i64).unwrap();
            assert_eq!(back.size(), t.size());
            assert!(back.equal(&t));
        }
    }

    #[test]
    fn layout_matches_hf_transformers() {
        // out = 8, in = 1: rows 0..2 in bits 0-1, rows 2..4 in bits 2-3, ...
        let codes = [-1i8, 0, 1, -1, 0, 1, 1, 0];
        let packed = pack_ternary_slice(&codes, 8, 1).unwrap();
        // byte j = sum_i (codes[i*2 + j] + 1) << 2i
        let b0 = (2 << 2) | (1 << 4) | (2 << 6); // row 0 is -1 -> code 0
        let b1 = 1 | (2 << 4) | (1 << 6); // row 3 is -1 -> code 0
        assert_eq!(packed, vec![b0 as u8, b1 as u8]);
        // out = 5: row_dim 2, row 4 goes to byte 0 bits 4-5, the unused slots stay 0
        let packed = pack_ternary_slice(&[1, 1, 1, 1, 1], 5, 1).unwrap();
        assert_eq!(packed, vec![2 | (2 << 2) | (2 << 4), 2 | (2 << 2)]);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(pack_ternary_slice(&[2], 1, 1).is_err());
        assert!(pack_ternary_slice(&[1, 1], 1, 1).is_err());
        assert!(unpack_ternary_slice(&[3], 1, 1).is_err());
        assert!(unpack_ternary_slice(&[0, 0], 1, 1).is_err());
        let f = Tensor::zeros([2, 2], (Kind::Float, Device::Cpu));
        assert!(pack_ternary(&f).is_err());
    }
}
