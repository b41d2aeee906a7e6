//! A GGUF v3 writer and the block encoders llama.cpp needs for BitNet models.
//!
//! Why our own: no well-kept Rust crate writes the ternary TQ1_0/TQ2_0 types,
//! and the format is small. Plain Rust over slices (no tch), so every byte
//! layout is unit-tested against the reference layouts of llama.cpp
//! (`ggml-common.h` block structs, `ggml-quants.c` reference quantizers) and
//! gguf-py (`quants.py`), and checked end to end by gguf-py itself in the
//! `export` stage's `verify`.
//!
//! Ternary matrices keep their codes exactly: every block's scale `d` is the
//! tensor's `mean|W|` rounded to f16 (the only loss, relative 2^-11 at most),
//! and the codes are written as they are. Rows whose length is not a multiple
//! of 256 cannot be TQ1_0/TQ2_0; [`encode_ternary`] writes them as Q4_0
//! (`x = d * (q - 8)`) or Q8_0 (`x = d * q`) with `d` the same scale, which hold
//! the codes exactly too.
//!
//! Files are written to `<path>.partial` and renamed at the end, so a failed
//! export leaves nothing that looks finished.

use std::io::Write;
use std::path::{Path, PathBuf};

use half::f16;

use super::ggml_types::{
    GgmlType, GgufValueType, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION,
};

/// What went wrong while encoding or writing a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufWriteError {
    #[error("tensor `{name}`: {detail}")]
    Tensor { name: String, detail: String },
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, GgufWriteError>;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Strings(Vec<String>),
    I32s(Vec<i32>),
}

/// One tensor: GGML dimension order (`dims[0]` is the row length, i.e. a
/// PyTorch `(out, in)` weight has `dims = [in, out]`) and encoded bytes.
#[derive(Debug, Clone)]
pub struct GgufTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub data: Vec<u8>,
}

/// Metadata and tensors of one GGUF file, in insertion order.
#[derive(Debug, Default)]
pub struct GgufWriter {
    pub metadata: Vec<(String, MetaValue)>,
    pub tensors: Vec<GgufTensor>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_type(out: &mut Vec<u8>, t: GgufValueType) {
    out.extend_from_slice(&(t as u32).to_le_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U32(x) => {
            put_type(out, GgufValueType::U32);
            out.extend_from_slice(&x.to_le_bytes());
        }
        MetaValue::I32(x) => {
            put_type(out, GgufValueType::I32);
            out.extend_from_slice(&x.to_le_bytes());
        }
        MetaValue::F32(x) => {
            put_type(out, GgufValueType::F32);
            out.extend_from_slice(&x.to_le_bytes());
        }
        MetaValue::Bool(x) => {
            put_type(out, GgufValueType::Bool);
            out.push(u8::from(*x));
        }
        MetaValue::String(s) => {
            put_type(out, GgufValueType::String);
            put_str(out, s);
        }
        MetaValue::Strings(items) => {
            put_type(out, GgufValueType::Array);
            put_type(out, GgufValueType::String);
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for s in items {
                put_str(out, s);
            }
        }
        MetaValue::I32s(items) => {
            put_type(out, GgufValueType::Array);
            put_type(out, GgufValueType::I32);
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for x in items {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
    }
}

fn align(n: u64) -> u64 {
    n.div_ceil(GGUF_DEFAULT_ALIGNMENT) * GGUF_DEFAULT_ALIGNMENT
}

impl GgufWriter {
    pub fn meta(&mut self, key: &str, value: MetaValue) {
        self.metadata.push((key.to_string(), value));
    }

    /// Adds a tensor after checking that its bytes fit its type and dims.
    pub fn tensor(&mut self, t: GgufTensor) -> Result<()> {
        let row = t.dims.first().copied().unwrap_or(1) as usize;
        let rows: u64 = t.dims.iter().skip(1).product();
        let bad = |detail: String| GgufWriteError::Tensor {
            name: t.name.clone(),
            detail,
        };
        if !row.is_multiple_of(t.ty.block_size()) {
            return Err(bad(format!(
                "rows of {row} values do not split into {} blocks of {}",
                t.ty.name(),
                t.ty.block_size()
            )));
        }
        let want = t.ty.row_bytes(row) as u64 * rows;
        if t.data.len() as u64 != want {
            return Err(bad(format!(
                "{} bytes for {:?} {}, expected {want}",
                t.data.len(),
                t.dims,
                t.ty.name()
            )));
        }
        if self.tensors.iter().any(|o| o.name == t.name) {
            return Err(bad("added twice".into()));
        }
        self.tensors.push(t);
        Ok(())
    }

    /// The whole file as bytes (header, metadata, tensor infos, aligned data).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&GGUF_MAGIC);
        out.extend_from_slice(&GGUF_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            put_value(&mut out, v);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&(t.ty as u32).to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset = align(offset + t.data.len() as u64);
        }
        out.resize(align(out.len() as u64) as usize, 0);
        for t in &self.tensors {
            out.extend_from_slice(&t.data);
            out.resize(align(out.len() as u64) as usize, 0);
        }
        out
    }

    /// Writes the file through `<path>.partial` + rename. Returns its size.
    pub fn write_file(&self, path: &Path) -> Result<u64> {
        let bytes = self.to_bytes();
        let partial = partial_path(path);
        let io = |action: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |source| GgufWriteError::Io {
                path: p,
                action,
                source,
            }
        };
        let mut f = std::fs::File::create(&partial).map_err(io("create", &partial))?;
        f.write_all(&bytes).map_err(io("write", &partial))?;
        f.sync_all().map_err(io("sync", &partial))?;
        drop(f);
        std::fs::rename(&partial, path).map_err(io("rename into place", path))?;
        Ok(bytes.len() as u64)
    }
}

/// `<path>.partial`: where a file is written before it is renamed into place.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

/// F32 values, little-endian.
pub fn encode_f32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// F16 values (round to nearest even), little-endian.
pub fn encode_f16(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| f16::from_f32(*v).to_le_bytes())
        .collect()
}

/// `(q + 1)` for a ternary code, checked.
fn trit(q: i8, at: usize) -> std::result::Result<u8, String> {
    if (-1..=1).contains(&q) {
        Ok((q + 1) as u8)
    } else {
        Err(format!("value {q} at {at} is not ternary (-1, 0, 1)"))
    }
}

/// A run of bytes of a block, each holding `per_byte` values: byte `m` of
/// the run holds values `first + len * n + m` for `n` in `0..per_byte` (the
/// strided order every ggml layout below uses).
struct ByteRun {
    first: usize,
    len: usize,
    per_byte: usize,
}

/// How one ternary-capable GGML type lays out a block: its runs of code
/// bytes, how a byte is made from its values' trits `q + 1` (in `n`
/// order), and whether the f16 scale `d` comes first or last. One table
/// row per type instead of one encoder function per type.
struct BlockLayout {
    ty: GgmlType,
    runs: &'static [ByteRun],
    pack: fn(&[u8]) -> u8,
    scale_first: bool,
}

const fn run(first: usize, len: usize, per_byte: usize) -> ByteRun {
    ByteRun {
        first,
        len,
        per_byte,
    }
}

/// The block layouts (`ggml-common.h` block structs; the byte orders are
/// those of `quantize_row_*_ref` in `ggml-quants.c`).
const LAYOUTS: [BlockLayout; 4] = [
    // `block_tq2_0 { uint8_t qs[64]; ggml_half d; }`: value `128*j + 32*n + m`
    // sits in `qs[32*j + m]` bits `2n..2n+1` as `q + 1`.
    BlockLayout {
        ty: GgmlType::Tq2_0,
        runs: &[run(0, 32, 4), run(128, 32, 4)],
        pack: pack_2bit,
        scale_first: false,
    },
    // `block_tq1_0 { uint8_t qs[48]; uint8_t qh[4]; ggml_half d; }`: values
    // 0..160 as 32 bytes of 5 trits (value `32n + m` is trit n of byte m),
    // 160..240 as 16 bytes (value `160 + 16n + m`), 240..256 in `qh` as 4
    // trits per byte (value `240 + 4n + m`).
    BlockLayout {
        ty: GgmlType::Tq1_0,
        runs: &[run(0, 32, 5), run(160, 16, 5), run(240, 4, 4)],
        pack: tq1_0_byte,
        scale_first: false,
    },
    // `block_q4_0 { ggml_half d; uint8_t qs[16]; }`: value `j` in the low
    // nibble of `qs[j]`, value `j + 16` in its high nibble, as `q + 8`.
    BlockLayout {
        ty: GgmlType::Q4_0,
        runs: &[run(0, 16, 2)],
        pack: pack_nibbles,
        scale_first: true,
    },
    // `block_q8_0 { ggml_half d; int8_t qs[32]; }`: the codes as int8.
    BlockLayout {
        ty: GgmlType::Q8_0,
        runs: &[run(0, 32, 1)],
        pack: pack_i8,
        scale_first: true,
    },
];

/// TQ2_0: trit `n` in bits `2n..2n+1`.
fn pack_2bit(trits: &[u8]) -> u8 {
    trits
        .iter()
        .enumerate()
        .fold(0, |byte, (n, t)| byte | (t << (2 * n)))
}

/// Q4_0: `q + 8` = trit + 7, value 0 in the low nibble, value 1 in the high.
fn pack_nibbles(trits: &[u8]) -> u8 {
    (trits[0] + 7) | ((trits[1] + 7) << 4)
}

/// Q8_0: the code itself as int8.
fn pack_i8(trits: &[u8]) -> u8 {
    (trits[0] as i8 - 1) as u8
}

/// Five (or four) trits as one byte of TQ1_0: the base-3 number
/// `sum t_n 3^(4-n)` scaled to `ceil(v * 256 / 243)`, as `quantize_row_tq1_0_ref`.
fn tq1_0_byte(trits: &[u8]) -> u8 {
    let mut v = 0u16;
    for &t in trits {
        v = v * 3 + u16::from(t);
    }
    for _ in trits.len()..5 {
        v *= 3;
    }
    (v * 256).div_ceil(243) as u8
}

/// Encodes one block of codes with scale `d` as `layout`; `base` is the
/// block's first index (for errors).
fn encode_block(
    layout: &BlockLayout,
    codes: &[i8],
    d: f16,
    base: usize,
    out: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    if layout.scale_first {
        out.extend_from_slice(&d.to_le_bytes());
    }
    let mut trits = [0u8; 5];
    for r in layout.runs {
        for m in 0..r.len {
            for (n, t) in trits[..r.per_byte].iter_mut().enumerate() {
                let i = r.first + r.len * n + m;
                *t = trit(codes[i], base + i)?;
            }
            out.push((layout.pack)(&trits[..r.per_byte]));
        }
    }
    if !layout.scale_first {
        out.extend_from_slice(&d.to_le_bytes());
    }
    Ok(())
}

/// Encodes row-major ternary codes (rows of `row_len`) with one scale as `ty`
/// (TQ1_0, TQ2_0, Q4_0 or Q8_0); every value dequantizes to `code * f16(scale)`.
pub fn encode_ternary(
    name: &str,
    codes: &[i8],
    row_len: usize,
    scale: f32,
    ty: GgmlType,
) -> Result<Vec<u8>> {
    let bad = |detail: String| GgufWriteError::Tensor {
        name: name.to_string(),
        detail,
    };
    let block = ty.block_size();
    if row_len == 0 || !row_len.is_multiple_of(block) || !codes.len().is_multiple_of(row_len) {
        return Err(bad(format!(
            "rows of {row_len} values ({} values in all) cannot be {} (blocks of {block})",
            codes.len(),
            ty.name()
        )));
    }
    if !(scale.is_finite() && scale >= 0.0) {
        return Err(bad(format!(
            "scale {scale} is not a finite non-negative number"
        )));
    }
    let d = f16::from_f32(scale);
    let Some(layout) = LAYOUTS.iter().find(|l| l.ty == ty) else {
        return Err(bad(format!("{} is not a ternary type", ty.name())));
    };
    let mut out = Vec::with_capacity(codes.len() / block * ty.type_size());
    for (b, chunk) in codes.chunks_exact(block).enumerate() {
        encode_block(layout, chunk, d, b * block, &mut out).map_err(bad)?;
    }
    debug_assert_eq!(out.len(), ty.row_bytes(codes.len()));
    Ok(out)
}

/// The type a ternary matrix with rows of `row_len` gets: `preferred` (a TQ type)
/// when the rows split into 256-value blocks, else `fallback` (Q4_0/Q8_0) when they
/// split into 32-value blocks, else F16 (`code * scale` in f16, also exact).
pub fn ternary_type_for(row_len: usize, preferred: GgmlType, fallback: GgmlType) -> GgmlType {
    if row_len.is_multiple_of(preferred.block_size()) {
        preferred
    } else if row_len.is_multiple_of(fallback.block_size()) {
        fallback
    } else {
        GgmlType::F16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(n: usize, seed: u64) -> Vec<i8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) % 3) as i8 - 1
            })
            .collect()
    }

    /// gguf-py `TQ2_0.dequantize_blocks`, transcribed: `qs` as (2, 1, 32) >> [0,2,4,6].
    fn dequant_tq2_0(block: &[u8]) -> Vec<f32> {
        let d = f16::from_le_bytes([block[64], block[65]]).to_f32();
        let mut out = vec![0.0; 256];
        for j in 0..2 {
            for n in 0..4 {
                for m in 0..32 {
                    let q = (block[32 * j + m] >> (2 * n)) & 3;
                    out[128 * j + 32 * n + m] = d * (q as f32 - 1.0);
                }
            }
        }
        out
    }

    /// gguf-py `TQ1_0.dequantize_blocks`, transcribed: multiply by 3^n (mod 256),
    /// then `(q * 3) >> 8` gives the leading trit.
    fn dequant_tq1_0(block: &[u8]) -> Vec<f32> {
        let d = f16::from_le_bytes([block[52], block[53]]).to_f32();
        let pow3 = [1u8, 3, 9, 27, 81];
        let trit = |b: u8, n: usize| -> f32 {
            let q = b.wrapping_mul(pow3[n]);
            ((u16::from(q) * 3) >> 8) as f32 - 1.0
        };
        let mut out = vec![0.0; 256];
        for n in 0..5 {
            for m in 0..32 {
                out[32 * n + m] = d * trit(block[m], n);
            }
            for m in 0..16 {
                out[160 + 16 * n + m] = d * trit(block[32 + m], n);
            }
        }
        for n in 0..4 {
            for m in 0..4 {
                out[240 + 4 * n + m] = d * trit(block[48 + m], n);
            }
        }
        out
    }

    #[test]
    fn tq2_0_matches_the_reference_layout() {
        let c = codes(512, 1);
        let bytes = encode_ternary("w", &c, 512, 0.25, GgmlType::Tq2_0).unwrap();
        assert_eq!(bytes.len(), 2 * 66);
        for b in 0..2 {
            let got = dequant_tq2_0(&bytes[b * 66..(b + 1) * 66]);
            let want: Vec<f32> = c[b * 256..(b + 1) * 256]
                .iter()
                .map(|&q| 0.25 * q as f32)
                .collect();
            assert_eq!(got, want);
        }
        // Spot check one byte by hand: values 0, 32, 64, 96 share qs[0].
        let manual = (c[0] + 1) as u8
            | ((c[32] + 1) as u8) << 2
            | ((c[64] + 1) as u8) << 4
            | ((c[96] + 1) as u8) << 6;
        assert_eq!(bytes[0], manual);
        assert_eq!(&bytes[64..66], &f16::from_f32(0.25).to_le_bytes());
    }

    #[test]
    fn tq1_0_matches_the_reference_layout() {
        let c = codes(256, 7);
        let bytes = encode_ternary("w", &c, 256, 0.5, GgmlType::Tq1_0).unwrap();
        assert_eq!(bytes.len(), 54);
        let want: Vec<f32> = c.iter().map(|&q| 0.5 * q as f32).collect();
        assert_eq!(dequant_tq1_0(&bytes), want);
        // all +1: five trits of 2 = 242 -> ceil(242*256/243) = 255; four trits: 240 -> 253
        let ones = encode_ternary("w", &[1; 256], 256, 1.0, GgmlType::Tq1_0).unwrap();
        assert!(ones[..48].iter().all(|&b| b == 255));
        assert!(ones[48..52].iter().all(|&b| b == 253));
        let zeros_code = encode_ternary("w", &[-1; 256], 256, 1.0, GgmlType::Tq1_0).unwrap();
        assert!(zeros_code[..52].iter().all(|&b| b == 0));
    }

    #[test]
    fn q4_0_and_q8_0_hold_ternary_codes_exactly() {
        let c = codes(64, 3);
        let q4 = encode_ternary("w", &c, 64, 0.125, GgmlType::Q4_0).unwrap();
        assert_eq!(q4.len(), 2 * 18);
        for b in 0..2 {
            let blk = &q4[b * 18..(b + 1) * 18];
            let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
            for j in 0..32 {
                let nib = if j < 16 {
                    blk[2 + j] & 15
                } else {
                    blk[2 + j - 16] >> 4
                };
                assert_eq!(d * (nib as f32 - 8.0), 0.125 * c[b * 32 + j] as f32);
            }
        }
        let q8 = encode_ternary("w", &c, 64, 0.125, GgmlType::Q8_0).unwrap();
        assert_eq!(q8.len(), 2 * 34);
        for b in 0..2 {
            let blk = &q8[b * 34..(b + 1) * 34];
            assert_eq!(&blk[..2], &f16::from_f32(0.125).to_le_bytes());
            let got: Vec<i8> = blk[2..].iter().map(|&x| x as i8).collect();
            assert_eq!(got, c[b * 32..(b + 1) * 32]);
        }
    }

    #[test]
    fn bad_codes_and_rows_are_errors_naming_the_tensor() {
        let err = encode_ternary(
            "blk.0.ffn_down.weight",
            &[0; 640],
            640,
            1.0,
            GgmlType::Tq2_0,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("blk.0.ffn_down.weight") && err.to_string().contains("640"),
            "{err}"
        );
        let mut c = vec![0i8; 256];
        c[17] = 2;
        let err = encode_ternary("w", &c, 256, 1.0, GgmlType::Tq2_0).unwrap_err();
        assert!(err.to_string().contains("value 2 at 17"), "{err}");
        assert!(encode_ternary("w", &[0; 256], 256, f32::NAN, GgmlType::Tq1_0).is_err());
        assert_eq!(
            ternary_type_for(640, GgmlType::Tq2_0, GgmlType::Q4_0),
            GgmlType::Q4_0
        );
        assert_eq!(
            ternary_type_for(512, GgmlType::Tq1_0, GgmlType::Q8_0),
            GgmlType::Tq1_0
        );
        assert_eq!(
            ternary_type_for(40, GgmlType::Tq2_0, GgmlType::Q8_0),
            GgmlType::F16
        );
    }

    #[test]
    fn file_layout_header_metadata_infos_and_aligned_data() {
        let mut w = GgufWriter::default();
        w.meta("general.architecture", MetaValue::String("llama".into()));
        w.meta("llama.block_count", MetaValue::U32(2));
        w.meta(
            "tokenizer.ggml.tokens",
            MetaValue::Strings(vec!["a".into(), "b".into()]),
        );
        w.tensor(GgufTensor {
            name: "norm".into(),
            dims: vec![3],
            ty: GgmlType::F32,
            data: encode_f32(&[1.0, 2.0, 3.0]),
        })
        .unwrap();
        w.tensor(GgufTensor {
            name: "w".into(),
            dims: vec![256, 1],
            ty: GgmlType::Tq2_0,
            data: encode_ternary("w", &[0; 256], 256, 1.0, GgmlType::Tq2_0).unwrap(),
        })
        .unwrap();
        // wrong byte count and duplicate names are refused
        assert!(w
            .tensor(GgufTensor {
                name: "x".into(),
                dims: vec![2],
                ty: GgmlType::F32,
                data: vec![0; 4]
            })
            .is_err());
        assert!(w
            .tensor(GgufTensor {
                name: "norm".into(),
                dims: vec![1],
                ty: GgmlType::F32,
                data: vec![0; 4]
            })
            .is_err());
        let b = w.to_bytes();
        assert_eq!(&b[..4], b"GGUF");
        assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 3);
        assert_eq!(u64::from_le_bytes(b[8..16].try_into().unwrap()), 2);
        assert_eq!(u64::from_le_bytes(b[16..24].try_into().unwrap()), 3);
        // first key: u64 length 20 + "general.architecture" + type 8 (string)
        assert_eq!(u64::from_le_bytes(b[24..32].try_into().unwrap()), 20);
        assert_eq!(&b[32..52], b"general.architecture");
        assert_eq!(u32::from_le_bytes(b[52..56].try_into().unwrap()), 8);
        // data: 12 bytes of norm padded to 32, then the 66-byte block, padded
        let data_len = 32 + 96;
        assert_eq!(b.len() % 32, 0);
        let data = &b[b.len() - data_len..];
        assert_eq!(&data[..12], &encode_f32(&[1.0, 2.0, 3.0])[..]);
        assert_eq!(&data[96..98], &f16::from_f32(1.0).to_le_bytes());
        assert_eq!(data[32], 0b0101_0101);
    }
}
