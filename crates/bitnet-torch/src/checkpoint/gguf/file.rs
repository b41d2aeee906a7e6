//! The GGUF container: header, metadata key/values and tensor directory.
//!
//! Parsed from an in-memory byte buffer with every length and offset checked
//! against the buffer, so a truncated or corrupt file is an error that says
//! what was being read, never a panic or an out-of-bounds read. Layout
//! (`gguf.md` in ggml, `gguf_reader.py` in gguf-py), all little-endian:
//!
//! ```text
//! "GGUF" u32 version(2|3) u64 n_tensors u64 n_kv
//! n_kv x   { string key; u32 value_type; value }
//! n_tensors x { string name; u32 n_dims; u64 ne[n_dims]; u32 ggml_type; u64 offset }
//! padding to `general.alignment` (default 32); tensor data (offsets relative to here)
//! ```
//!
//! Strings are `u64 length + UTF-8 bytes`; arrays `u32 item_type + u64 count + items`.

use std::collections::BTreeMap;

use crate::checkpoint::ggml_types::{self, GgufValueType};

/// `general.alignment` when the file does not set it.
pub use ggml_types::GGUF_DEFAULT_ALIGNMENT;
/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: &[u8; 4] = &ggml_types::GGUF_MAGIC;

/// Metadata value type ids, as `u32` constants to match on (the ids are
/// [`GgufValueType`]'s, shared with the writer).
pub mod value_type {
    use super::GgufValueType as T;
    pub const UINT8: u32 = T::U8 as u32;
    pub const INT8: u32 = T::I8 as u32;
    pub const UINT16: u32 = T::U16 as u32;
    pub const INT16: u32 = T::I16 as u32;
    pub const UINT32: u32 = T::U32 as u32;
    pub const INT32: u32 = T::I32 as u32;
    pub const FLOAT32: u32 = T::F32 as u32;
    pub const BOOL: u32 = T::Bool as u32;
    pub const STRING: u32 = T::String as u32;
    pub const ARRAY: u32 = T::Array as u32;
    pub const UINT64: u32 = T::U64 as u32;
    pub const INT64: u32 = T::I64 as u32;
    pub const FLOAT64: u32 = T::F64 as u32;
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// Any integer type, widened (u64 values above `i64::MAX` do not occur in practice
    /// and are refused as corrupt).
    Int(i64),
    Float(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            GgufValue::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            GgufValue::Float(f) => Some(*f),
            GgufValue::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// As JSON (for recording metadata as run params).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            GgufValue::Int(i) => serde_json::json!(i),
            GgufValue::Float(f) => serde_json::json!(f),
            GgufValue::Bool(b) => serde_json::json!(b),
            GgufValue::String(s) => serde_json::json!(s),
            GgufValue::Array(a) => {
                serde_json::Value::Array(a.iter().map(|v| v.to_json()).collect())
            }
        }
    }
}

/// A tensor's directory entry.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// GGML order: `dims[0]` is the innermost (row length); the torch shape is reversed.
    pub dims: Vec<u64>,
    pub type_id: u32,
    /// Byte offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Shape in torch/numpy order (outermost first).
    pub fn shape(&self) -> Vec<i64> {
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }
    pub fn numel(&self) -> Option<usize> {
        self.dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(usize::try_from(d).ok()?))
    }
}

/// A parsed GGUF file: metadata, tensor directory and where the data starts.
#[derive(Debug)]
pub struct GgufFile {
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<TensorInfo>,
    /// Absolute byte offset of the data section in the buffer.
    pub data_start: usize,
}

/// What went wrong while parsing (the caller adds the file name).
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError(pub String);

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ParseError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(ParseError(format!(
                "file ends at byte {} while reading {what} ({n} bytes at offset {})",
                self.buf.len(),
                self.pos
            ))),
        }
    }
    fn u32(&mut self, what: &str) -> Result<u32, ParseError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64, ParseError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// A count that must fit in what is left of the file at `min_item` bytes each
    /// (so a corrupt count cannot make us allocate terabytes).
    fn count(&mut self, what: &str, min_item: usize) -> Result<usize, ParseError> {
        let n = self.u64(what)?;
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_item as u64) > left {
            return Err(ParseError(format!(
                "{what} is {n}, more than the {left} bytes left in the file can hold; the file is truncated"
            )));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> Result<String, ParseError> {
        let n = self.count(&format!("length of {what}"), 1)?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|e| {
            ParseError(format!(
                "{what} at offset {} is not UTF-8: {e}",
                self.pos - n
            ))
        })
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<GgufValue, ParseError> {
        use value_type::*;
        let what = || format!("value of `{key}`");
        Ok(match ty {
            UINT8 => GgufValue::Int(i64::from(self.take(1, &what())?[0])),
            INT8 => GgufValue::Int(i64::from(self.take(1, &what())?[0] as i8)),
            UINT16 => {
                let b = self.take(2, &what())?;
                GgufValue::Int(i64::from(u16::from_le_bytes([b[0], b[1]])))
            }
            INT16 => {
                let b = self.take(2, &what())?;
                GgufValue::Int(i64::from(i16::from_le_bytes([b[0], b[1]])))
            }
            UINT32 => GgufValue::Int(i64::from(self.u32(&what())?)),
            INT32 => GgufValue::Int(i64::from(self.u32(&what())? as i32)),
            FLOAT32 => GgufValue::Float(f64::from(f32::from_bits(self.u32(&what())?))),
            BOOL => GgufValue::Bool(self.take(1, &what())?[0] != 0),
            STRING => GgufValue::String(self.string(&what())?),
            UINT64 => {
                let v = self.u64(&what())?;
                GgufValue::Int(i64::try_from(v).map_err(|_| {
                    ParseError(format!("`{key}` = {v} does not fit in a signed 64-bit integer"))
                })?)
            }
            INT64 => GgufValue::Int(self.u64(&what())? as i64),
            FLOAT64 => GgufValue::Float(f64::from_bits(self.u64(&what())?)),
            ARRAY => {
                if depth > 0 {
                    return Err(ParseError(format!(
                        "`{key}` is an array of arrays, which GGUF readers do not support"
                    )));
                }
                let item = self.u32(&format!("item type of `{key}`"))?;
                let n = self.count(&format!("length of array `{key}`"), 1)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            other => {
                return Err(ParseError(format!(
                    "`{key}` has unknown value type {other} (the file is corrupt or from a newer GGUF version)"
                )))
            }
        })
    }
}

/// Parses the header, metadata and tensor directory of `buf`. Tensor data is not
/// touched here; [`GgufFile::tensor_bytes`] checks each tensor's extent.
pub fn parse(buf: &[u8]) -> Result<GgufFile, ParseError> {
    let mut c = Cursor { buf, pos: 0 };
    let magic = c.take(4, "the magic number")?;
    if magic != GGUF_MAGIC {
        return Err(ParseError(format!(
            "does not start with `GGUF` (found {magic:02x?}); not a GGUF file"
        )));
    }
    let version = c.u32("the version")?;
    if !(2..=3).contains(&version) {
        return Err(ParseError(format!(
            "GGUF version {version} is not supported (versions 2 and 3 are); re-convert it with a current llama.cpp"
        )));
    }
    // 8 bytes is the least a tensor entry or key/value can take.
    let n_tensors = c.count("the tensor count", 8)?;
    let n_kv = c.count("the metadata count", 8)?;
    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = c.string(&format!("metadata key {i}"))?;
        let ty = c.u32(&format!("value type of `{key}`"))?;
        let value = c.value(ty, &key, 0)?;
        metadata.insert(key, value);
    }
    let mut tensors = Vec::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = c.string(&format!("name of tensor {i}"))?;
        let n_dims = c.u32(&format!("rank of `{name}`"))?;
        if n_dims > 4 {
            return Err(ParseError(format!(
                "tensor `{name}` has {n_dims} dimensions; GGML tensors have at most 4"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64(&format!("shape of `{name}`"))?);
        }
        let type_id = c.u32(&format!("type of `{name}`"))?;
        let offset = c.u64(&format!("data offset of `{name}`"))?;
        tensors.push(TensorInfo {
            name,
            dims,
            type_id,
            offset,
        });
    }
    let alignment = match metadata.get("general.alignment") {
        None => GGUF_DEFAULT_ALIGNMENT,
        Some(v) => match v.as_i64() {
            Some(a) if a > 0 && (a as u64).is_power_of_two() => a as u64,
            _ => {
                return Err(ParseError(format!(
                    "`general.alignment` = {v:?} is not a positive power of two"
                )))
            }
        },
    };
    let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
    Ok(GgufFile {
        version,
        metadata,
        tensors,
        data_start: data_start as usize,
    })
}

impl GgufFile {
    /// The bytes of tensor `t`, whose type takes `nbytes` for its values; an error
    /// when they lie outside the buffer (truncated file).
    pub fn tensor_bytes<'a>(
        &self,
        buf: &'a [u8],
        t: &TensorInfo,
        nbytes: usize,
    ) -> Result<&'a [u8], ParseError> {
        let start = (self.data_start as u64).checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(nbytes as u64));
        match (start, end) {
            (Some(s), Some(e)) if e <= buf.len() as u64 => Ok(&buf[s as usize..e as usize]),
            // The offset comes from the file: report it without arithmetic that
            // could overflow (a hostile offset near 2^64 once panicked here; issue #16).
            _ => Err(ParseError(format!(
                "data of tensor `{}` ({nbytes} bytes at offset {} of the data section, which starts at byte {}) lies beyond the end of the file ({} bytes); the file is truncated or its tensor directory is corrupt",
                t.name,
                t.offset,
                self.data_start,
                buf.len()
            ))),
        }
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid header: version 3, no tensors, one u32 key.
    fn tiny() -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(3u64.to_le_bytes());
        b.extend(b"k.x");
        b.extend(value_type::UINT32.to_le_bytes());
        b.extend(7u32.to_le_bytes());
        b
    }

    #[test]
    fn parses_a_minimal_header() {
        let f = parse(&tiny()).unwrap();
        assert_eq!(f.version, 3);
        assert_eq!(f.get("k.x"), Some(&GgufValue::Int(7)));
        assert_eq!(f.data_start % 32, 0);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let b = tiny();
        for n in 0..b.len() {
            assert!(parse(&b[..n]).is_err(), "prefix of {n} bytes parsed");
        }
    }

    #[test]
    fn huge_counts_are_refused_before_allocating() {
        let mut b = tiny();
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = parse(&b).unwrap_err();
        assert!(e.0.contains("tensor count"), "{}", e.0);
    }

    #[test]
    fn wrong_magic_and_version_are_named() {
        let mut b = tiny();
        b[0] = b'X';
        assert!(parse(&b).unwrap_err().0.contains("not a GGUF file"));
        let mut b = tiny();
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        assert!(parse(&b).unwrap_err().0.contains("version 1"));
    }
}
