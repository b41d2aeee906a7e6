//! GGUF/GGML constants shared by the GGUF writer (`gguf_writer`) and any GGUF
//! reader: file magic and version, metadata value type ids, tensor type ids
//! with their block sizes. Kept apart from both so neither owns the other's
//! facts. Values from llama.cpp `ggml/include/ggml.h` (`enum ggml_type`),
//! `ggml-common.h` (block structs) and gguf-py `constants.py`
//! (`GGML_QUANT_SIZES`, `GGUFValueType`); a test pins every size.

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

/// Tensor types this project writes or reads (`enum ggml_type`; ids are file format).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q8_0 = 8,
    /// Ternary, 5 trits per byte (llama.cpp `block_tq1_0`).
    Tq1_0 = 34,
    /// Ternary, 2 bits per value (llama.cpp `block_tq2_0`).
    Tq2_0 = 35,
}

impl GgmlType {
    /// Values per block.
    pub const fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 => 1,
            GgmlType::Q4_0 | GgmlType::Q8_0 => 32,
            GgmlType::Tq1_0 | GgmlType::Tq2_0 => QK_K,
        }
    }

    /// Bytes per block.
    pub const fn type_size(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 => 2,
            // f16 d + 16 bytes of nibbles
            GgmlType::Q4_0 => 2 + 16,
            // f16 d + 32 int8
            GgmlType::Q8_0 => 2 + 32,
            // qs[(256 - 4*256/64) / 5] + qh[256/64] + f16 d
            GgmlType::Tq1_0 => (QK_K - 4 * QK_K / 64) / 5 + QK_K / 64 + 2,
            // qs[256/4] + f16 d
            GgmlType::Tq2_0 => QK_K / 4 + 2,
        }
    }

    /// Bytes of a row of `n` values (`n` a multiple of the block size).
    pub const fn row_bytes(self, n: usize) -> usize {
        n / self.block_size() * self.type_size()
    }

    /// Name as llama.cpp prints it.
    pub const fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Tq1_0 => "TQ1_0",
            GgmlType::Tq2_0 => "TQ2_0",
        }
    }

    pub fn from_id(id: u32) -> Option<GgmlType> {
        [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::Q4_0,
            GgmlType::Q8_0,
            GgmlType::Tq1_0,
            GgmlType::Tq2_0,
        ]
        .into_iter()
        .find(|t| *t as u32 == id)
    }
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
}
