//! GGUF/GGML constants shared by the GGUF writer (`gguf_writer`) and the GGUF
//! reader (`gguf`): file magic and version, metadata value type ids, and the
//! one table of tensor types ([`GGML_TYPES`]: id, name, block geometry), so
//! that each fact is written once. Values from llama.cpp
//! `ggml/include/ggml.h` (`enum ggml_type`), `ggml-common.h` (block structs)
//! and gguf-py `constants.py` (`GGML_QUANT_SIZES`, `GGUFValueType`); a test
//! pins every size.

/// `"GGUF"` as it appears in the first four bytes of a file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The GGUF version this crate writes (v3: 64-bit counts and dimensions).
pub const GGUF_VERSION: u32 = 3;
/// Default alignment of the tensor data section and of each tensor in it.
pub const GGUF_DEFAULT_ALIGNMENT: u64 = 32;
/// Values per super-block of the K-quants and the ternary TQ types.
pub const QK_K: usize = 256;

/// Metadata value types (`gguf_type` / `GGUFValueType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum GgufValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

/// Tensor types this project writes or reads (`enum ggml_type`; the
/// discriminants are the file format's ids). Variant names follow llama.cpp
/// (`Q4_K`) so they read the same in both codebases; the ternary types keep
/// the spelling the exporter has always used (`Tq1_0`). What each type
/// *is* (name, block geometry) is the one table [`GGML_TYPES`]; which of
/// them the reader can dequantize is the reader's business
/// (`gguf::dequant::can_dequantize`), which the writer can encode the
/// writer's (`gguf_writer`).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q8_0 = 8,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    BF16 = 30,
    /// Ternary, 5 trits per byte (llama.cpp `block_tq1_0`).
    Tq1_0 = 34,
    /// Ternary, 2 bits per value (llama.cpp `block_tq2_0`).
    Tq2_0 = 35,
}

/// One GGML tensor type: its name as llama.cpp prints it and its block
/// geometry (`GGML_QUANT_SIZES` in gguf-py: values and bytes per block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgmlTypeInfo {
    pub ty: GgmlType,
    pub name: &'static str,
    /// Values per block.
    pub block_size: usize,
    /// Bytes per block.
    pub type_size: usize,
}

const fn row(
    ty: GgmlType,
    name: &'static str,
    block_size: usize,
    type_size: usize,
) -> GgmlTypeInfo {
    GgmlTypeInfo {
        ty,
        name,
        block_size,
        type_size,
    }
}

/// Every type of [`GgmlType`], one row each; the byte counts spell out the
/// block structs of `ggml-common.h`.
pub const GGML_TYPES: [GgmlTypeInfo; 11] = [
    row(GgmlType::F32, "F32", 1, 4),
    row(GgmlType::F16, "F16", 1, 2),
    // f16 d + 16 bytes of nibbles
    row(GgmlType::Q4_0, "Q4_0", 32, 2 + 16),
    // f16 d, m + 16 bytes of nibbles
    row(GgmlType::Q4_1, "Q4_1", 32, 2 + 2 + 16),
    // f16 d + 32 int8
    row(GgmlType::Q8_0, "Q8_0", 32, 2 + 32),
    // f16 d, dmin + 12 bytes of scales + 4-bit qs
    row(GgmlType::Q4_K, "Q4_K", QK_K, 2 + 2 + 12 + QK_K / 2),
    // as Q4_K + qh (the fifth bit)
    row(
        GgmlType::Q5_K,
        "Q5_K",
        QK_K,
        2 + 2 + 12 + QK_K / 8 + QK_K / 2,
    ),
    // ql + qh + i8 scales[16] + f16 d
    row(
        GgmlType::Q6_K,
        "Q6_K",
        QK_K,
        QK_K / 2 + QK_K / 4 + QK_K / 16 + 2,
    ),
    row(GgmlType::BF16, "BF16", 1, 2),
    // qs[(256 - 4*256/64) / 5] + qh[256/64] + f16 d
    row(
        GgmlType::Tq1_0,
        "TQ1_0",
        QK_K,
        (QK_K - 4 * QK_K / 64) / 5 + QK_K / 64 + 2,
    ),
    // qs[256/4] + f16 d
    row(GgmlType::Tq2_0, "TQ2_0", QK_K, QK_K / 4 + 2),
];

impl GgmlType {
    /// This type's row of [`GGML_TYPES`].
    pub const fn info(self) -> GgmlTypeInfo {
        let mut i = 0;
        while i < GGML_TYPES.len() {
            if GGML_TYPES[i].ty as u32 == self as u32 {
                return GGML_TYPES[i];
            }
            i += 1;
        }
        panic!("a GgmlType without a row in GGML_TYPES (a bug: add the row)")
    }

    /// Values per block.
    pub const fn block_size(self) -> usize {
        self.info().block_size
    }

    /// Bytes per block.
    pub const fn type_size(self) -> usize {
        self.info().type_size
    }

    /// `(values per block, bytes per block)`.
    pub const fn block(self) -> (usize, usize) {
        (self.block_size(), self.type_size())
    }

    /// Bytes of a row of `n` values (`n` a multiple of the block size).
    pub const fn row_bytes(self, n: usize) -> usize {
        n / self.block_size() * self.type_size()
    }

    /// Bytes needed for `n` values (`n` a multiple of the block size), or `None`
    /// when `n` is not (the tensor's row length does not fit the type) or the
    /// count overflows.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        let (per_block, bytes) = self.block();
        if !n.is_multiple_of(per_block) {
            return None;
        }
        (n / per_block).checked_mul(bytes)
    }

    /// Name as llama.cpp prints it.
    pub const fn name(self) -> &'static str {
        self.info().name
    }

    /// The type with GGUF id `id`, or `None` for an id not in [`GGML_TYPES`].
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GGML_TYPES.iter().map(|r| r.ty).find(|t| *t as u32 == id)
    }
}

/// The name llama.cpp uses for a GGUF type id (for error messages), e.g.
/// `IQ2_XS`: from [`GGML_TYPES`] for the types we know, else from the rest
/// of `enum ggml_type`, else `type <id>`.
pub fn type_name(id: u32) -> String {
    /// The ids of `enum ggml_type` this project neither reads nor writes.
    const OTHER_NAMES: &[(u32, &str)] = &[
        (6, "Q5_0"),
        (7, "Q5_1"),
        (9, "Q8_1"),
        (10, "Q2_K"),
        (11, "Q3_K"),
        (15, "Q8_K"),
        (16, "IQ2_XXS"),
        (17, "IQ2_XS"),
        (18, "IQ3_XXS"),
        (19, "IQ1_S"),
        (20, "IQ4_NL"),
        (21, "IQ3_S"),
        (22, "IQ2_S"),
        (23, "IQ4_XS"),
        (24, "I8"),
        (25, "I16"),
        (26, "I32"),
        (27, "I64"),
        (28, "F64"),
        (29, "IQ1_M"),
        (39, "MXFP4"),
    ];
    if let Some(t) = GgmlType::from_id(id) {
        return t.name().to_string();
    }
    OTHER_NAMES
        .iter()
        .find(|(i, _)| *i == id)
        .map(|(_, n)| n.to_string())
        .unwrap_or_else(|| format!("type {id}"))
}

/// `general.file_type` values (llama.cpp `enum llama_ftype`) for what we write.
pub mod file_type {
    pub const ALL_F32: u32 = 0;
    pub const MOSTLY_F16: u32 = 1;
    pub const MOSTLY_TQ1_0: u32 = 36;
    pub const MOSTLY_TQ2_0: u32 = 37;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_match_ggml_quant_sizes() {
        // gguf-py GGML_QUANT_SIZES: (block_size, type_size)
        let want = [
            (GgmlType::F32, 1, 4),
            (GgmlType::F16, 1, 2),
            (GgmlType::Q4_0, 32, 18),
            (GgmlType::Q8_0, 32, 34),
            (GgmlType::Tq1_0, 256, 54),
            (GgmlType::Tq2_0, 256, 66),
        ];
        for (t, bs, ts) in want {
            assert_eq!((t.block_size(), t.type_size()), (bs, ts), "{}", t.name());
            assert_eq!(GgmlType::from_id(t as u32), Some(t));
        }
        assert_eq!(GgmlType::Tq1_0 as u32, 34);
        assert_eq!(GgmlType::Tq2_0 as u32, 35);
        assert_eq!(GgmlType::from_id(36), None);
    }

    #[test]
    fn one_row_per_type_and_names_for_every_id() {
        // Every row is its own type's (no copy-paste slip), ids are unique.
        for (i, r) in GGML_TYPES.iter().enumerate() {
            assert_eq!(r.ty.info(), *r);
            assert_eq!(GgmlType::from_id(r.ty as u32), Some(r.ty));
            assert!(GGML_TYPES[..i].iter().all(|o| o.ty as u32 != r.ty as u32));
            assert_eq!(type_name(r.ty as u32), r.name);
        }
        assert_eq!(type_name(17), "IQ2_XS");
        assert_eq!(type_name(99), "type 99");
    }
}
