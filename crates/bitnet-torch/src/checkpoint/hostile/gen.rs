//! Generators of hostile inputs: byte mutations of valid files, and structured
//! inputs (pickle programs, zip archives that lie, safetensors headers, GGUF files,
//! JSON documents with keys deleted, retyped or contradicting each other).
//!
//! Structured generators matter because random bytes rarely get past a magic number
//! or a JSON parser: the interesting failures are in files that are *almost* right.

use std::io::Write;

use proptest::prelude::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------- byte mutations

/// One edit of a byte buffer; positions are fractions of the length so a mutation
/// applies to any file.
#[derive(Debug, Clone)]
pub(crate) enum Mutation {
    Truncate(f64),
    FlipBit(f64, u8),
    /// Overwrite 4 or 8 little-endian bytes with a value chosen to hit a bound.
    Word(f64, u64, bool),
    Insert(f64, Vec<u8>),
    Delete(f64, usize),
}

fn interesting_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(0x7f),
        Just(0xff),
        Just(0xffff),
        Just(u32::MAX as u64),
        Just(1 << 31),
        Just(1 << 32),
        Just(1 << 62),
        Just(1 << 63),
        Just(u64::MAX),
        Just(u64::MAX - 7),
        any::<u64>(),
        0u64..4096,
    ]
}

pub(crate) fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0.0..1.0f64).prop_map(Mutation::Truncate),
        (0.0..1.0f64, 0u8..8).prop_map(|(p, b)| Mutation::FlipBit(p, b)),
        (0.0..1.0f64, interesting_u64(), any::<bool>())
            .prop_map(|(p, v, w)| Mutation::Word(p, v, w)),
        (0.0..1.0f64, prop::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(p, b)| Mutation::Insert(p, b)),
        (0.0..1.0f64, 1usize..64).prop_map(|(p, n)| Mutation::Delete(p, n)),
    ]
}

pub(crate) fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..6)
}

fn at(len: usize, frac: f64) -> usize {
    ((len as f64) * frac) as usize
}

/// Applies `muts` in order to a copy of `base`.
pub(crate) fn apply(base: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut b = base.to_vec();
    for m in muts {
        let n = b.len();
        match m {
            Mutation::Truncate(p) => b.truncate(at(n, *p)),
            Mutation::FlipBit(p, bit) if n > 0 => b[at(n, *p).min(n - 1)] ^= 1 << bit,
            Mutation::FlipBit(..) => {}
            Mutation::Word(p, v, wide) => {
                let w = if *wide { 8 } else { 4 };
                if n >= w {
                    let i = at(n - w, *p);
                    b[i..i + w].copy_from_slice(&v.to_le_bytes()[..w]);
                }
            }
            Mutation::Insert(p, bytes) => {
                let i = at(n, *p);
                b.splice(i..i, bytes.iter().copied());
            }
            Mutation::Delete(p, k) => {
                let i = at(n, *p);
                let end = (i + k).min(n);
                b.drain(i..end);
            }
        }
    }
    b
}

// ---------------------------------------------------------------- pickle programs

/// A pickle value to serialise: the shapes torch writes, plus what an attacker adds.
#[derive(Debug, Clone)]
pub(crate) enum Pk {
    None,
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Pk>),
    Tuple(Vec<Pk>),
    Dict(Vec<(Pk, Pk)>),
    /// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
    Tensor {
        class: String,
        key: String,
        numel: i64,
        offset: i64,
        size: Vec<i64>,
        stride: Vec<i64>,
    },
    /// `module.name(*args)`: allow-listed or not.
    Call(String, String, Vec<Pk>),
    /// `depth` nested empty lists built with APPEND (a recursion-depth bomb).
    Deep(u32),
    /// A value memoised and fetched `times` times into a list (memo amplification).
    Memo(Box<Pk>, u16),
}

fn small_str() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("model.embed_tokens.weight".to_string()),
        Just("model_state_dict".to_string()),
        Just("generation".to_string()),
        "[a-z._0-9]{0,12}",
    ]
}

fn tensor_pk() -> impl Strategy<Value = Pk> {
    (
        prop_oneof![
            Just("FloatStorage"),
            Just("HalfStorage"),
            Just("BFloat16Storage"),
            Just("LongStorage"),
            Just("BoolStorage"),
            Just("ComplexFloatStorage"),
            Just("Float8_e4m3fnStorage"),
        ],
        prop_oneof![
            Just("0".to_string()),
            Just("1".to_string()),
            "[0-9]{1,3}",
            Just("../x".to_string())
        ],
        prop_oneof![0i64..64, Just(-1i64), Just(i64::MAX), Just(1 << 40)],
        prop_oneof![0i64..8, Just(-3i64), Just(i64::MAX)],
        prop::collection::vec(
            prop_oneof![0i64..9, Just(-1i64), Just(i64::MAX), Just(1 << 33)],
            0..4,
        ),
        prop::collection::vec(prop_oneof![0i64..9, Just(-1i64), Just(i64::MAX)], 0..4),
    )
        .prop_map(|(class, key, numel, offset, size, stride)| Pk::Tensor {
            class: class.to_string(),
            key,
            numel,
            offset,
            size,
            stride,
        })
}

fn call_pk(inner: impl Strategy<Value = Pk> + Clone) -> impl Strategy<Value = Pk> {
    (
        prop_oneof![
            Just(("os", "system")),
            Just(("posix", "system")),
            Just(("builtins", "eval")),
            Just(("__builtin__", "getattr")),
            Just(("torch", "load")),
            Just(("collections", "OrderedDict")),
            Just(("torch._utils", "_rebuild_parameter")),
            Just(("_codecs", "encode")),
            Just(("numpy", "dtype")),
            Just(("torch", "FloatStorage")),
        ],
        prop::collection::vec(inner, 0..3),
    )
        .prop_map(|((m, n), args)| Pk::Call(m.into(), n.into(), args))
}

/// Values nested up to a few levels, with tensors, calls and bombs anywhere.
pub(crate) fn pickle_value() -> impl Strategy<Value = Pk> {
    let leaf = prop_oneof![
        Just(Pk::None),
        any::<i64>().prop_map(Pk::Int),
        any::<f64>().prop_map(Pk::Float),
        small_str().prop_map(Pk::Str),
        tensor_pk(),
        prop_oneof![1u32..80, Just(200u32), Just(5000u32)].prop_map(Pk::Deep),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Pk::List),
            prop::collection::vec(inner.clone(), 0..4).prop_map(Pk::Tuple),
            prop::collection::vec((small_str().prop_map(Pk::Str), inner.clone()), 0..6)
                .prop_map(Pk::Dict),
            call_pk(inner.clone()),
            (inner, prop_oneof![0u16..4, Just(100u16), Just(2000u16)])
                .prop_map(|(v, n)| Pk::Memo(Box::new(v), n)),
        ]
    })
}

/// A top-level dict like `torch.save({"model_state_dict": {...}, "generation": 3})`.
pub(crate) fn state_dict_pickle() -> impl Strategy<Value = Pk> {
    (
        prop::collection::vec((small_str(), tensor_pk()), 0..5),
        prop::collection::vec((small_str(), pickle_value()), 0..3),
        any::<bool>(),
    )
        .prop_map(|(tensors, extra, nested)| {
            let sd = Pk::Dict(tensors.into_iter().map(|(k, v)| (Pk::Str(k), v)).collect());
            let mut top: Vec<(Pk, Pk)> = extra.into_iter().map(|(k, v)| (Pk::Str(k), v)).collect();
            if nested {
                top.push((Pk::Str("model_state_dict".into()), sd));
                Pk::Dict(top)
            } else {
                match sd {
                    Pk::Dict(mut d) => {
                        d.extend(top);
                        Pk::Dict(d)
                    }
                    other => other,
                }
            }
        })
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'X');
    out.extend((s.len() as u32).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_global(out: &mut Vec<u8>, module: &str, name: &str) {
    out.push(b'c');
    out.extend(module.as_bytes());
    out.push(b'\n');
    out.extend(name.as_bytes());
    out.push(b'\n');
}

fn put_ints(out: &mut Vec<u8>, v: &[i64]) {
    out.push(b'(');
    for &i in v {
        put(out, &Pk::Int(i), &mut 0);
    }
    out.push(b't');
}

/// Serialises `v` as protocol-2 opcodes; `memo` is the next free memo slot.
fn put(out: &mut Vec<u8>, v: &Pk, memo: &mut u32) {
    match v {
        Pk::None => out.push(b'N'),
        Pk::Int(i) => {
            if let Ok(x) = i32::try_from(*i) {
                out.push(b'J');
                out.extend(x.to_le_bytes());
            } else {
                out.extend([0x8a, 8]);
                out.extend(i.to_le_bytes());
            }
        }
        Pk::Float(f) => {
            out.push(b'G');
            out.extend(f.to_be_bytes());
        }
        Pk::Str(s) => put_str(out, s),
        Pk::List(items) => {
            out.extend(b"](");
            for i in items {
                put(out, i, memo);
            }
            out.push(b'e');
        }
        Pk::Tuple(items) => {
            out.push(b'(');
            for i in items {
                put(out, i, memo);
            }
            out.push(b't');
        }
        Pk::Dict(items) => {
            out.extend(b"}(");
            for (k, v) in items {
                put(out, k, memo);
                put(out, v, memo);
            }
            out.push(b'u');
        }
        Pk::Tensor {
            class,
            key,
            numel,
            offset,
            size,
            stride,
        } => {
            put_global(out, "torch._utils", "_rebuild_tensor_v2");
            out.push(b'(');
            // persistent id ('storage', torch.<class>, key, 'cpu', numel)
            out.push(b'(');
            put_str(out, "storage");
            put_global(out, "torch", class);
            put_str(out, key);
            put_str(out, "cpu");
            put(out, &Pk::Int(*numel), memo);
            out.extend(b"tQ");
            put(out, &Pk::Int(*offset), memo);
            put_ints(out, size);
            put_ints(out, stride);
            out.push(0x89);
            put_global(out, "collections", "OrderedDict");
            out.extend(b")R");
            out.extend(b"tR");
        }
        Pk::Call(m, n, args) => {
            put_global(out, m, n);
            out.push(b'(');
            for a in args {
                put(out, a, memo);
            }
            out.extend(b"tR");
        }
        Pk::Deep(depth) => {
            for _ in 0..*depth {
                out.push(b']');
            }
            for _ in 1..*depth {
                out.push(b'a');
            }
        }
        Pk::Memo(inner, times) => {
            let slot = *memo;
            *memo += 1;
            put(out, inner, memo);
            out.push(b'r');
            out.extend(slot.to_le_bytes());
            out.extend(b"0](");
            for _ in 0..*times {
                out.push(b'j');
                out.extend(slot.to_le_bytes());
            }
            out.push(b'e');
        }
    }
}

/// The pickle program of `v` (protocol 2, ends with STOP).
pub(crate) fn pickle_bytes(v: &Pk) -> Vec<u8> {
    let mut out = vec![0x80, 2];
    put(&mut out, v, &mut 0);
    out.push(b'.');
    out
}

// ---------------------------------------------------------------- zip archives

/// Which size field of a zip record to falsify.
#[derive(Debug, Clone)]
pub(crate) enum ZipLie {
    None,
    /// Central directory: compressed / uncompressed size of record `i` (mod count).
    CentralSize(usize, bool, u32),
    /// Local header: the same fields.
    LocalSize(usize, bool, u32),
    /// Central directory: the CRC-32 of record `i`.
    Crc(usize, u32),
}

pub(crate) fn zip_lie() -> impl Strategy<Value = ZipLie> {
    let v = prop_oneof![
        Just(0u32),
        Just(1),
        Just(u32::MAX),
        Just(0x7fff_ffff),
        0u32..4096
    ];
    prop_oneof![
        2 => Just(ZipLie::None),
        1 => (0usize..8, any::<bool>(), v.clone()).prop_map(|(i, c, v)| ZipLie::CentralSize(i, c, v)),
        1 => (0usize..8, any::<bool>(), v.clone()).prop_map(|(i, c, v)| ZipLie::LocalSize(i, c, v)),
        1 => (0usize..8, any::<u32>()).prop_map(|(i, v)| ZipLie::Crc(i, v)),
    ]
}

/// A stored (uncompressed) zip, as `torch.save` writes, of `(name, bytes)` records.
pub(crate) fn zip_bytes(records: &[(String, Vec<u8>)], deflate: bool) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let opts = zip::write::FileOptions::default().compression_method(method);
    for (name, data) in records {
        // Writing to memory cannot fail; a duplicate name is refused by the writer,
        // and then the record is left out (the archive stays well-formed).
        if w.start_file(name.as_str(), opts).is_ok() {
            let _ = w.write_all(data);
        }
    }
    w.finish().map(|c| c.into_inner()).unwrap_or_default()
}

fn signature_offsets(b: &[u8], sig: &[u8; 4]) -> Vec<usize> {
    b.windows(4)
        .enumerate()
        .filter(|(_, w)| w == sig)
        .map(|(i, _)| i)
        .collect()
}

/// Falsifies one header field of a zip in place.
pub(crate) fn tell_lie(b: &mut [u8], lie: &ZipLie) {
    let patch = |b: &mut [u8], at: usize, v: u32| {
        if at + 4 <= b.len() {
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
    };
    match lie {
        ZipLie::None => {}
        ZipLie::CentralSize(i, compressed, v) => {
            let offs = signature_offsets(b, b"PK\x01\x02");
            if !offs.is_empty() {
                let o = offs[i % offs.len()];
                patch(b, o + if *compressed { 20 } else { 24 }, *v);
            }
        }
        ZipLie::LocalSize(i, compressed, v) => {
            let offs = signature_offsets(b, b"PK\x03\x04");
            if !offs.is_empty() {
                let o = offs[i % offs.len()];
                patch(b, o + if *compressed { 18 } else { 22 }, *v);
            }
        }
        ZipLie::Crc(i, v) => {
            let offs = signature_offsets(b, b"PK\x01\x02");
            if !offs.is_empty() {
                let o = offs[i % offs.len()];
                patch(b, o + 16, *v);
            }
        }
    }
}

/// A torch-like archive: `archive/data.pkl`, `archive/byteorder`, and storages
/// `archive/data/<key>` of random lengths.
pub(crate) fn pt_archive() -> impl Strategy<Value = (Vec<u8>, ZipLie, bool)> {
    (
        state_dict_pickle(),
        prop::collection::vec(
            (prop_oneof![Just("0"), Just("1"), Just("2")], 0usize..300),
            0..4,
        ),
        prop_oneof![Just("little"), Just("big"), Just("")],
        zip_lie(),
        prop_oneof![4 => Just(false), 1 => Just(true)],
    )
        .prop_map(|(pk, storages, order, lie, deflate)| {
            let mut recs = vec![("archive/data.pkl".to_string(), pickle_bytes(&pk))];
            if !order.is_empty() {
                recs.push(("archive/byteorder".into(), order.as_bytes().to_vec()));
            }
            for (key, len) in storages {
                let data: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
                recs.push((format!("archive/data/{key}"), data));
            }
            (zip_bytes(&recs, deflate), lie, deflate)
        })
}

// ---------------------------------------------------------------- safetensors

/// A header entry: dtype, shape and offsets chosen to hit every check.
#[derive(Debug, Clone)]
pub(crate) struct StEntry {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub offsets: (u64, u64),
}

pub(crate) fn st_entry() -> impl Strategy<Value = StEntry> {
    let off = prop_oneof![0u64..96, Just(u64::MAX), Just(1 << 62), Just(1 << 53)];
    (
        prop_oneof![
            Just("w".to_string()),
            Just("model.norm.weight".to_string()),
            "[a-z.]{0,8}"
        ],
        prop_oneof![
            Just("F32"),
            Just("F16"),
            Just("BF16"),
            Just("I64"),
            Just("BOOL"),
            Just("F8_E4M3"),
            Just("Q4"),
            Just(""),
        ],
        prop::collection::vec(prop_oneof![0u64..6, Just(u64::MAX), Just(1 << 32)], 0..4),
        (off.clone(), off),
    )
        .prop_map(|(name, dtype, shape, offsets)| StEntry {
            name,
            dtype: dtype.to_string(),
            shape,
            offsets,
        })
}

/// The header length field: honest, or a lie.
#[derive(Debug, Clone)]
pub(crate) enum StLen {
    Honest,
    Value(u64),
}

/// A safetensors file from header entries, metadata, a length field and data.
pub(crate) fn safetensors_file() -> impl Strategy<Value = (Vec<u8>, String)> {
    (
        prop::collection::vec(st_entry(), 0..5),
        prop::option::of(prop::collection::vec(("[a-z]{0,6}", prop_oneof![Just(json!("x")), Just(json!(1)), Just(json!({"config": "{"}))]), 0..3)),
        prop_oneof![
            4 => Just(StLen::Honest),
            1 => prop_oneof![Just(1u64 << 63), Just(1 << 62), Just(u64::MAX), Just(0), 0u64..200].prop_map(StLen::Value),
        ],
        0usize..128,
        mutations(),
        any::<bool>(),
    )
        .prop_map(|(entries, meta, len, data_len, muts, mutate)| {
            let mut header = serde_json::Map::new();
            for e in &entries {
                header.insert(
                    e.name.clone(),
                    json!({"dtype": e.dtype, "shape": e.shape, "data_offsets": [e.offsets.0, e.offsets.1]}),
                );
            }
            if let Some(m) = meta {
                let m: serde_json::Map<String, Value> = m.into_iter().collect();
                header.insert("__metadata__".into(), Value::Object(m));
            }
            let text = Value::Object(header).to_string();
            let n = match len {
                StLen::Honest => text.len() as u64,
                StLen::Value(v) => v,
            };
            let mut b = n.to_le_bytes().to_vec();
            b.extend(text.as_bytes());
            b.extend((0..data_len).map(|i| i as u8));
            let b = if mutate { apply(&b, &muts) } else { b };
            (b, text)
        })
}

// ---------------------------------------------------------------- GGUF

/// A GGUF metadata value as written.
#[derive(Debug, Clone)]
pub(crate) enum GMeta {
    U32(u32),
    I64(i64),
    F32(f32),
    Str(String),
    Strs(Vec<String>),
    /// Raw: type id and bytes, for unknown types and lying arrays.
    Raw(u32, Vec<u8>),
}

/// A GGUF tensor directory entry as written, with its data.
#[derive(Debug, Clone)]
pub(crate) struct GTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: u32,
    pub offset: u64,
    pub data: Vec<u8>,
}

/// Serialises a GGUF v3 file (alignment 32; offsets as given, data appended in order).
pub(crate) fn gguf_bytes(meta: &[(String, GMeta)], tensors: &[GTensor]) -> Vec<u8> {
    fn s(out: &mut Vec<u8>, x: &str) {
        out.extend((x.len() as u64).to_le_bytes());
        out.extend(x.as_bytes());
    }
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        s(&mut out, k);
        match v {
            GMeta::U32(x) => {
                out.extend(4u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            GMeta::I64(x) => {
                out.extend(11u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            GMeta::F32(x) => {
                out.extend(6u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            GMeta::Str(x) => {
                out.extend(8u32.to_le_bytes());
                s(&mut out, x);
            }
            GMeta::Strs(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(8u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for i in items {
                    s(&mut out, i);
                }
            }
            GMeta::Raw(ty, bytes) => {
                out.extend(ty.to_le_bytes());
                out.extend(bytes);
            }
        }
    }
    for t in tensors {
        s(&mut out, &t.name);
        out.extend((t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(t.ty.to_le_bytes());
        out.extend(t.offset.to_le_bytes());
    }
    out.resize(out.len().div_ceil(32) * 32, 0);
    for t in tensors {
        out.extend(&t.data);
        out.resize(out.len().div_ceil(32) * 32, 0);
    }
    out
}

/// The honest tensors of a tiny llama GGUF (hidden 8, 2 heads, vocab 4, F32).
pub(crate) fn llama_tensors() -> Vec<GTensor> {
    let mut tensors = Vec::new();
    let mut offset = 0u64;
    for (name, dims) in [
        ("token_embd.weight", vec![8u64, 4]),
        ("blk.0.attn_q.weight", vec![8, 8]),
        ("blk.0.attn_k.weight", vec![8, 8]),
        ("output_norm.weight", vec![8]),
    ] {
        let n: u64 = dims.iter().product();
        let data: Vec<u8> = (0..n)
            .flat_map(|i| (i as f32 * 0.01).to_le_bytes())
            .collect();
        let len = data.len() as u64;
        tensors.push(GTensor {
            name: name.into(),
            dims,
            ty: 0,
            offset,
            data,
        });
        offset += len.div_ceil(32) * 32;
    }
    tensors
}

/// The honest metadata of that GGUF.
pub(crate) fn llama_meta() -> Vec<(String, GMeta)> {
    let strs = |v: &[&str]| GMeta::Strs(v.iter().map(|s| s.to_string()).collect());
    vec![
        ("general.architecture".into(), GMeta::Str("llama".into())),
        ("llama.attention.head_count".into(), GMeta::U32(2)),
        ("llama.attention.head_count_kv".into(), GMeta::U32(2)),
        ("llama.embedding_length".into(), GMeta::U32(8)),
        ("llama.feed_forward_length".into(), GMeta::U32(16)),
        ("llama.block_count".into(), GMeta::U32(1)),
        ("llama.rope.freq_base".into(), GMeta::F32(10000.0)),
        ("tokenizer.ggml.model".into(), GMeta::Str("gpt2".into())),
        ("tokenizer.ggml.tokens".into(), strs(&["a", "b", "c", "ab"])),
        ("tokenizer.ggml.merges".into(), strs(&["a b"])),
    ]
}

/// Structural edits of the tiny llama GGUF: a value replaced, a key dropped, a
/// tensor's dims, type or offset changed.
#[derive(Debug, Clone)]
pub(crate) enum GgufEdit {
    DropKey(usize),
    SetValue(usize, GMeta),
    Dims(usize, Vec<u64>),
    Type(usize, u32),
    Offset(usize, u64),
    DropTensor(usize),
}

fn gmeta() -> impl Strategy<Value = GMeta> {
    prop_oneof![
        prop_oneof![Just(0u32), Just(1), Just(3), Just(u32::MAX), 0u32..64].prop_map(GMeta::U32),
        prop_oneof![Just(i64::MIN), Just(-1i64), Just(0), Just(i64::MAX)].prop_map(GMeta::I64),
        prop_oneof![
            Just(f32::NAN),
            Just(0.0f32),
            Just(-1.0f32),
            Just(f32::INFINITY)
        ]
        .prop_map(GMeta::F32),
        prop_oneof![
            Just("llama".to_string()),
            Just("gpt2".to_string()),
            Just("llama".repeat(50)),
            "[a-z]{0,5}"
        ]
        .prop_map(GMeta::Str),
        prop::collection::vec(
            prop_oneof![
                Just("a".to_string()),
                Just("a b".to_string()),
                Just("".to_string()),
                Just("a b c".to_string())
            ],
            0..5
        )
        .prop_map(GMeta::Strs),
        (
            prop_oneof![Just(9u32), Just(13u32), Just(99u32), Just(u32::MAX)],
            prop::collection::vec(any::<u8>(), 0..24)
        )
            .prop_map(|(t, b)| GMeta::Raw(t, b)),
        // an array claiming 2^60 u8 items
        Just(GMeta::Raw(
            9,
            [
                0u32.to_le_bytes().to_vec(),
                (1u64 << 60).to_le_bytes().to_vec()
            ]
            .concat()
        )),
        // an array of arrays
        Just(GMeta::Raw(
            9,
            [
                9u32.to_le_bytes().to_vec(),
                1u64.to_le_bytes().to_vec(),
                0u32.to_le_bytes().to_vec(),
                0u64.to_le_bytes().to_vec()
            ]
            .concat()
        )),
    ]
}

pub(crate) fn gguf_edit() -> impl Strategy<Value = GgufEdit> {
    let dim = prop_oneof![
        0u64..40,
        Just(256u64),
        Just(u64::MAX),
        Just(1 << 32),
        Just(1 << 62)
    ];
    prop_oneof![
        (0usize..16).prop_map(GgufEdit::DropKey),
        (0usize..16, gmeta()).prop_map(|(i, v)| GgufEdit::SetValue(i, v)),
        (0usize..4, prop::collection::vec(dim, 0..6)).prop_map(|(i, d)| GgufEdit::Dims(i, d)),
        (0usize..4, prop_oneof![0u32..40, Just(u32::MAX)]).prop_map(|(i, t)| GgufEdit::Type(i, t)),
        (
            0usize..4,
            prop_oneof![0u64..2048, Just(u64::MAX), Just(u64::MAX - 31)]
        )
            .prop_map(|(i, o)| GgufEdit::Offset(i, o)),
        (0usize..4).prop_map(GgufEdit::DropTensor),
    ]
}

/// The tiny llama GGUF after `edits`, then byte `muts` (when `mutate`).
pub(crate) fn edited_gguf(edits: &[GgufEdit]) -> Vec<u8> {
    let mut meta = llama_meta();
    let mut tensors = llama_tensors();
    for e in edits {
        match e {
            GgufEdit::DropKey(i) if !meta.is_empty() => {
                meta.remove(i % meta.len());
            }
            GgufEdit::SetValue(i, v) if !meta.is_empty() => {
                let n = meta.len();
                meta[i % n].1 = v.clone();
            }
            GgufEdit::Dims(i, d) if !tensors.is_empty() => {
                let n = tensors.len();
                tensors[i % n].dims = d.clone();
            }
            GgufEdit::Type(i, t) if !tensors.is_empty() => {
                let n = tensors.len();
                tensors[i % n].ty = *t;
            }
            GgufEdit::Offset(i, o) if !tensors.is_empty() => {
                let n = tensors.len();
                tensors[i % n].offset = *o;
            }
            GgufEdit::DropTensor(i) if !tensors.is_empty() => {
                tensors.remove(i % tensors.len());
            }
            _ => {}
        }
    }
    gguf_bytes(&meta, &tensors)
}

// ---------------------------------------------------------------- JSON documents

/// Edits of a JSON document: a key deleted, a value retyped or set to an extreme,
/// a deep nesting, a huge string.
#[derive(Debug, Clone)]
pub(crate) enum JsonEdit {
    Delete(Vec<usize>),
    Set(Vec<usize>, Value),
}

fn extreme_json() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(1)),
        Just(json!(i64::MAX)),
        Just(json!(u64::MAX)),
        Just(json!(1e308)),
        Just(json!(0.5)),
        Just(json!("")),
        Just(json!("x".repeat(100_000))),
        Just(json!([])),
        Just(json!({})),
        Just(json!(true)),
        Just(json!([1, "a", null])),
        (1usize..200).prop_map(|d| {
            let mut v = json!(1);
            for _ in 0..d {
                v = json!([v]);
            }
            v
        }),
    ]
}

pub(crate) fn json_edits() -> impl Strategy<Value = Vec<JsonEdit>> {
    let path = prop::collection::vec(0usize..64, 1..4);
    prop::collection::vec(
        prop_oneof![
            path.clone().prop_map(JsonEdit::Delete),
            (path, extreme_json()).prop_map(|(p, v)| JsonEdit::Set(p, v)),
        ],
        1..5,
    )
}

/// Follows `path` (child indices, modulo the child count) to a container and its
/// key/index, then deletes or replaces that child.
pub(crate) fn apply_json(doc: &mut Value, edit: &JsonEdit) {
    let (path, new) = match edit {
        JsonEdit::Delete(p) => (p, None),
        JsonEdit::Set(p, v) => (p, Some(v)),
    };
    let mut cur = doc;
    for (depth, &i) in path.iter().enumerate() {
        let last = depth + 1 == path.len();
        match cur {
            Value::Object(m) if !m.is_empty() => {
                let key = m.keys().nth(i % m.len()).cloned().unwrap_or_default();
                if last || !matches!(m.get(&key), Some(Value::Object(_) | Value::Array(_))) {
                    match new {
                        None => {
                            m.remove(&key);
                        }
                        Some(v) => {
                            m.insert(key, v.clone());
                        }
                    }
                    return;
                }
                cur = m.get_mut(&key).expect("key taken from the map");
            }
            Value::Array(a) if !a.is_empty() => {
                let k = i % a.len();
                if last || !matches!(a[k], Value::Object(_) | Value::Array(_)) {
                    match new {
                        None => {
                            a.remove(k);
                        }
                        Some(v) => a[k] = v.clone(),
                    }
                    return;
                }
                cur = &mut a[k];
            }
            _ => return,
        }
    }
}

/// A small, valid byte-level BPE `tokenizer.json` (what the GGUF reader writes).
pub(crate) fn tokenizer_doc() -> Value {
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{"id": 4, "content": "<s>", "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "<s>": 4},
                  "merges": ["a b"]}
    })
}
