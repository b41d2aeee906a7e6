//! GGML tensor types and their dequantization to f32, in plain Rust over byte slices.
//!
//! GGUF files from llama.cpp store most matrices block-quantized. To train or convert
//! such a model we need the real values back, and they must be *exactly* the values
//! llama.cpp's own reference code gives, or a perplexity measured on the dequantized
//! model would not be the model's. Each function below mirrors gguf-py's
//! `quants.py` (`dequantize_blocks`), itself a transcription of ggml's
//! `dequantize_row_*` in `ggml-quants.c`, including the order of the f32 operations,
//! so results are bit-identical (checked against gguf-py in `tests.rs`).
//!
//! Block layouts (`ggml-common.h`; `QK_K` = 256):
//! - Q8_0: `f16 d; i8 q[32]`; x = q * d.
//! - Q4_0: `f16 d; u8 q[16]` (low nibbles = values 0..16, high = 16..32); x = d * (q - 8).
//! - Q4_1: `f16 d, m; u8 q[16]`; x = d * q + m.
//! - Q4_K: `f16 d, dmin; u8 scales[12]` (8 six-bit scales and mins); `u8 qs[128]`;
//!   x = d*sc * q - dmin*m per 32-value sub-block.
//! - Q5_K: as Q4_K plus `u8 qh[32]` (the fifth bit) before `qs`.
//! - Q6_K: `u8 ql[128], qh[64]; i8 scales[16]; f16 d`; x = d*scale * (q - 32) per 16 values.

use half::{bf16, f16};

// The type table (ids, names, block geometry) is shared with the writer.
pub use crate::checkpoint::ggml_types::{type_name, GgmlType, QK_K};

/// Whether [`dequantize`] reads `ty` (the ternary TQ types it does not: this
/// reader takes llama.cpp models in, our own exports are checked by gguf-py).
pub fn can_dequantize(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16 | BF16 | Q8_0 | Q4_0 | Q4_1 | Q4_K | Q5_K | Q6_K
    )
}

/// The type with GGUF id `id` when this reader can dequantize it, else `None`.
pub fn readable_type(id: u32) -> Option<GgmlType> {
    GgmlType::from_id(id).filter(|t| can_dequantize(*t))
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Dequantizes `data` (exactly `ty.bytes_for(out.len())` bytes) into `out`.
///
/// Panics if the lengths disagree or `ty` is not [`can_dequantize`]: the caller
/// checks both against the file and reports a corrupt or unsupported file instead.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) {
    assert!(can_dequantize(ty), "dequantize: {ty:?} has no dequantizer");
    let (per_block, bytes) = ty.block();
    assert_eq!(
        Some(data.len()),
        ty.bytes_for(out.len()),
        "dequantize: {ty:?} needs {bytes} bytes per {per_block} values"
    );
    let blocks = data
        .chunks_exact(bytes)
        .zip(out.chunks_exact_mut(per_block));
    match ty {
        GgmlType::F32 => {
            for (b, o) in blocks {
                o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (b, o) in blocks {
                o[0] = f16_at(b, 0);
            }
        }
        GgmlType::BF16 => {
            for (b, o) in blocks {
                o[0] = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        GgmlType::Q8_0 => blocks.for_each(|(b, o)| q8_0(b, o)),
        GgmlType::Q4_0 => blocks.for_each(|(b, o)| q4_0(b, o)),
        GgmlType::Q4_1 => blocks.for_each(|(b, o)| q4_1(b, o)),
        GgmlType::Q4_K => blocks.for_each(|(b, o)| q4_k(b, o)),
        GgmlType::Q5_K => blocks.for_each(|(b, o)| q5_k(b, o)),
        GgmlType::Q6_K => blocks.for_each(|(b, o)| q6_k(b, o)),
        GgmlType::Tq1_0 | GgmlType::Tq2_0 => unreachable!("refused by `can_dequantize` above"),
    }
}

fn q8_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for (x, &q) in o.iter_mut().zip(&b[2..34]) {
        *x = f32::from(q as i8) * d;
    }
}

fn q4_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        o[j] = d * f32::from((qs[j] & 0x0F) as i8 - 8);
        o[j + 16] = d * f32::from((qs[j] >> 4) as i8 - 8);
    }
}

fn q4_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qs = &b[4..20];
    for j in 0..16 {
        o[j] = d * f32::from(qs[j] & 0x0F) + m;
        o[j + 16] = d * f32::from(qs[j] >> 4) + m;
    }
}

/// The eight 6-bit scales and mins of Q4_K/Q5_K (`get_scale_min_k4` in ggml).
fn scale_min_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = s[j] & 0x3F;
        mn[j] = s[j + 4] & 0x3F;
        sc[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 2) & 0x30);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 2) & 0x30);
    }
    (sc, mn)
}

fn q4_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, mn) = scale_min_k4(&b[4..16]);
    let qs = &b[16..144];
    for k in 0..8 {
        let (dk, mk) = (d * f32::from(sc[k]), dmin * f32::from(mn[k]));
        // Sub-block k: nibble k % 2 of the 32 bytes of chunk k / 2.
        let chunk = &qs[(k / 2) * 32..(k / 2) * 32 + 32];
        let shift = 4 * (k % 2);
        for (j, &q) in chunk.iter().enumerate() {
            o[k * 32 + j] = dk * f32::from((q >> shift) & 0x0F) - mk;
        }
    }
}

fn q5_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, mn) = scale_min_k4(&b[4..16]);
    let qh = &b[16..48];
    let qs = &b[48..176];
    for k in 0..8 {
        let (dk, mk) = (d * f32::from(sc[k]), dmin * f32::from(mn[k]));
        let chunk = &qs[(k / 2) * 32..(k / 2) * 32 + 32];
        let shift = 4 * (k % 2);
        for j in 0..32 {
            // The fifth bit of sub-block k is bit k of qh[j].
            let q = ((chunk[j] >> shift) & 0x0F) | (((qh[j] >> k) & 1) << 4);
            o[k * 32 + j] = dk * f32::from(q) - mk;
        }
    }
}

fn q6_k(b: &[u8], o: &mut [f32]) {
    let ql = &b[0..128];
    let qh = &b[128..192];
    let scales = &b[192..208];
    let d = f16_at(b, 208);
    for (i, x) in o.iter_mut().enumerate() {
        // Two halves of 128 values; in each, ql holds 64 bytes (low nibbles for
        // values 0..64, high nibbles for 64..128) and qh 32 bytes (2 bits each for
        // the four 32-value quarters).
        let (h, r) = (i / 128, i % 128);
        let low = (ql[h * 64 + r % 64] >> (4 * (r / 64))) & 0x0F;
        let high = (qh[h * 32 + r % 32] >> (2 * (r / 32))) & 0x03;
        let q = (low | (high << 4)) as i8 - 32;
        let dl = d * f32::from(scales[i / 16] as i8);
        *x = dl * f32::from(q);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_match_ggml() {
        // GGML_QUANT_SIZES in gguf-py constants.py.
        assert_eq!(GgmlType::Q4_K.block(), (256, 144));
        assert_eq!(GgmlType::Q5_K.block(), (256, 176));
        assert_eq!(GgmlType::Q6_K.block(), (256, 210));
        assert_eq!(GgmlType::Q8_0.bytes_for(64), Some(68));
        assert_eq!(GgmlType::Q8_0.bytes_for(48), None);
    }

    #[test]
    fn q4_0_reference_block() {
        // d = 0.5 (f16 0x3800); q bytes 0x98: value j = 8 -> 0, value j+16 = 9 -> +0.5.
        let mut b = vec![0x00, 0x38];
        b.extend([0x98u8; 16]);
        let mut o = [0f32; 32];
        dequantize(GgmlType::Q4_0, &b, &mut o);
        assert_eq!(&o[..16], &[0.0; 16]);
        assert_eq!(&o[16..], &[0.5; 16]);
    }

    #[test]
    fn unknown_ids_are_none_and_named() {
        assert_eq!(readable_type(35), None);
        assert_eq!(type_name(35), "TQ2_0");
        assert_eq!(type_name(99), "type 99");
    }
}
