//! A pickle reader that never runs code, for torch state dicts.
//!
//! A `.pt` file's `data.pkl` is a program for Python's pickle machine; with
//! `torch.load(weights_only=False)` any global it names is imported and called. This
//! interpreter implements the data opcodes of protocols 0-5 and resolves globals
//! against an allow-list: the tensor rebuild functions, the storage classes,
//! `collections.OrderedDict`. Any other global is refused at the `GLOBAL` opcode with
//! an error that names it, before anything could be called; `REDUCE` can only apply
//! allow-listed callables. Persistent ids (torch's storage references) become
//! [`StorageRef`]s; no tensor bytes are read here.
//!
//! Why our own: `serde-pickle` has no persistent-id hook (torch storages are
//! persistent ids) and no allow-list; candle's reader (`candle-core/src/pickle.rs`)
//! handles torch's layout but resolves any global to a value rather than refusing.
//! The memo stores copies, not references, so an object mutated after it was
//! memoised is seen unmutated through a later GET; torch's pickles only re-get
//! immutable values (storages, strings).
//! Resource guards: nesting depth, memo-copy volume and string sizes are bounded, so a
//! hostile pickle ends in an error, not a stack overflow or memory blow-up.

use tch::Kind;

/// A torch storage referenced by a persistent id: `data/<key>` in the zip.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    pub key: String,
    /// `None` for a storage class torch has but we do not load (complex, fp8, ...).
    pub kind: Option<Kind>,
    /// Elements in the storage.
    pub numel: i64,
    /// Name of the storage class, for messages (`torch.FloatStorage`).
    pub class: String,
}

/// A tensor view of a storage (from `torch._utils._rebuild_tensor_v2`).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: i64,
    pub size: Vec<i64>,
    pub stride: Vec<i64>,
}

/// Allow-listed globals.
#[derive(Debug, Clone, PartialEq)]
pub enum Global {
    RebuildTensorV2,
    RebuildTensor,
    RebuildParameter,
    OrderedDict,
    Storage(String, Option<Kind>),
    /// `numpy.dtype`, to describe a numpy scalar (EvoMerge writes `np.float64` scores).
    NumpyDtype,
    /// `numpy.core.multiarray.scalar(dtype, bytes)`: a numpy scalar value.
    NumpyScalar,
    /// `_codecs.encode(str, "latin1")`: how protocol 2 stores bytes; pure.
    CodecsEncode,
}

/// Values of the pickle machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(Global),
    Storage(StorageRef),
    Tensor(TensorRef),
    /// A numpy dtype: type code (`f8`, `i8`, `b1`, ...) and whether it is big-endian.
    NumpyDtype(String, bool),
}

/// Why a pickle was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum PickleError {
    /// A global outside the allow-list (`module.name`).
    Disallowed(String),
    /// Malformed or unsupported input at a byte offset.
    Malformed { offset: usize, detail: String },
}

const MAX_DEPTH: usize = 64;
/// Values copied by memo and DUP operations, in all (a state dict copies a few per tensor).
const MAX_CLONED_NODES: u64 = 2_000_000;
const STORAGES: &[(&str, Kind)] = &[
    ("FloatStorage", Kind::Float),
    ("HalfStorage", Kind::Half),
    ("BFloat16Storage", Kind::BFloat16),
    ("DoubleStorage", Kind::Double),
    ("LongStorage", Kind::Int64),
    ("IntStorage", Kind::Int),
    ("ShortStorage", Kind::Int16),
    ("CharStorage", Kind::Int8),
    ("ByteStorage", Kind::Uint8),
    ("BoolStorage", Kind::Bool),
];

fn resolve_global(module: &str, name: &str) -> Result<Global, PickleError> {
    match (module, name) {
        ("torch._utils", "_rebuild_tensor_v2") => Ok(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_tensor") => Ok(Global::RebuildTensor),
        ("torch._utils", "_rebuild_parameter") => Ok(Global::RebuildParameter),
        ("collections", "OrderedDict") => Ok(Global::OrderedDict),
        ("numpy", "dtype") => Ok(Global::NumpyDtype),
        ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar") => Ok(Global::NumpyScalar),
        ("_codecs", "encode") => Ok(Global::CodecsEncode),
        // Storage classes are inert type tags; ones we cannot load (complex, fp8)
        // are reported as an unsupported dtype of the tensor that uses them.
        ("torch", storage) if storage.ends_with("Storage") => Ok(Global::Storage(
            format!("torch.{storage}"),
            STORAGES
                .iter()
                .find(|(n, _)| *n == storage)
                .map(|(_, k)| *k),
        )),
        _ => Err(PickleError::Disallowed(format!("{module}.{name}"))),
    }
}

/// Depth of nesting, stopping the walk at `MAX_DEPTH`.
fn depth(v: &Value, limit: usize) -> usize {
    if limit == 0 {
        return 0;
    }
    let kids: Box<dyn Iterator<Item = &Value>> = match v {
        Value::Tuple(x) | Value::List(x) => Box::new(x.iter()),
        Value::Dict(x) => Box::new(x.iter().flat_map(|(k, v)| [k, v])),
        _ => return 0,
    };
    1 + kids.map(|c| depth(c, limit - 1)).max().unwrap_or(0)
}

fn count_nodes(v: &Value, budget: &mut u64) -> bool {
    if *budget == 0 {
        return false;
    }
    *budget -= 1;
    match v {
        Value::Tuple(x) | Value::List(x) => x.iter().all(|c| count_nodes(c, budget)),
        Value::Dict(x) => x
            .iter()
            .all(|(k, v)| count_nodes(k, budget) && count_nodes(v, budget)),
        _ => true,
    }
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    op_pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: std::collections::HashMap<u64, Value>,
    clone_budget: u64,
}

/// Runs a pickle program and returns the value it builds.
pub fn load(data: &[u8]) -> Result<Value, PickleError> {
    let mut m = Machine {
        data,
        pos: 0,
        op_pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: Default::default(),
        clone_budget: MAX_CLONED_NODES,
    };
    m.run()
}

impl<'a> Machine<'a> {
    fn err<T>(&self, detail: impl Into<String>) -> Result<T, PickleError> {
        Err(PickleError::Malformed {
            offset: self.op_pos,
            detail: detail.into(),
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        match self.pos.checked_add(n).filter(|&e| e <= self.data.len()) {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => self.err(format!(
                "needs {n} more byte(s) but the pickle ends (truncated)"
            )),
        }
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PickleError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, PickleError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, PickleError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn len(&mut self, n: u64) -> Result<usize, PickleError> {
        let remaining = (self.data.len() - self.pos) as u64;
        if n > remaining {
            return self.err(format!(
                "length {n} exceeds the {remaining} byte(s) left (truncated or corrupt)"
            ));
        }
        Ok(n as usize)
    }
    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.data[self.pos..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return self.err("unterminated text line (truncated)");
        };
        self.pos += end + 1;
        match std::str::from_utf8(&rest[..end]) {
            Ok(s) => Ok(s),
            Err(_) => self.err("text line is not UTF-8"),
        }
    }
    fn string(&mut self, n: usize) -> Result<Value, PickleError> {
        let b = self.take(n)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(Value::Str(s.to_string())),
            Err(_) => self.err("string is not UTF-8"),
        }
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        match self.stack.pop() {
            Some(v) => Ok(v),
            None => self.err("stack underflow"),
        }
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let Some(m) = self.marks.pop() else {
            return self.err("no MARK on the stack");
        };
        if m > self.stack.len() {
            return self.err("MARK above the stack top");
        }
        Ok(self.stack.split_off(m))
    }
    fn push(&mut self, v: Value) -> Result<(), PickleError> {
        if depth(&v, MAX_DEPTH + 1) > MAX_DEPTH {
            return self.err(format!("nesting deeper than {MAX_DEPTH} levels"));
        }
        self.stack.push(v);
        Ok(())
    }
    fn top(&mut self) -> Result<&mut Value, PickleError> {
        let off = self.op_pos;
        self.stack.last_mut().ok_or(PickleError::Malformed {
            offset: off,
            detail: "stack underflow".into(),
        })
    }
    fn memo_get(&mut self, key: u64) -> Result<(), PickleError> {
        let Some(v) = self.memo.get(&key) else {
            return self.err(format!("memo key {key} was never stored"));
        };
        if !count_nodes(v, &mut self.clone_budget) {
            return self.err("memo references copy too much data (hostile pickle?)");
        }
        let v = v.clone();
        self.stack.push(v);
        Ok(())
    }
    fn memo_put(&mut self, key: u64) -> Result<(), PickleError> {
        let Some(v) = self.stack.last() else {
            return self.err("memo store from an empty stack");
        };
        if !count_nodes(v, &mut self.clone_budget) {
            return self.err("memo stores copy too much data (hostile pickle?)");
        }
        self.memo.insert(key, v.clone());
        Ok(())
    }
    fn extend_top(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        let off = self.op_pos;
        for it in &items {
            if depth(it, MAX_DEPTH + 1) >= MAX_DEPTH {
                return self.err(format!("nesting deeper than {MAX_DEPTH} levels"));
            }
        }
        match self.top()? {
            Value::List(l) => {
                l.extend(items);
                Ok(())
            }
            other => Err(PickleError::Malformed {
                offset: off,
                detail: format!("APPEND to a non-list ({})", kind_name(other)),
            }),
        }
    }
    fn set_items(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        let off = self.op_pos;
        if !items.len().is_multiple_of(2) {
            return self.err("SETITEMS with an odd number of values");
        }
        for it in &items {
            if depth(it, MAX_DEPTH + 1) >= MAX_DEPTH {
                return self.err(format!("nesting deeper than {MAX_DEPTH} levels"));
            }
        }
        match self.top()? {
            Value::Dict(d) => {
                let mut it = items.into_iter();
                // Entries are kept in order, duplicates included (linear time on
                // hostile input); readers take the last value of a key, as Python does.
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k, v));
                }
                Ok(())
            }
            other => Err(PickleError::Malformed {
                offset: off,
                detail: format!("SETITEM on a non-dict ({})", kind_name(other)),
            }),
        }
    }

    fn global(&mut self, module: &str, name: &str) -> Result<(), PickleError> {
        let g = resolve_global(module, name)?;
        self.stack.push(Value::Global(g));
        Ok(())
    }

    fn reduce(&mut self, callable: Value, args: Value) -> Result<Value, PickleError> {
        let Value::Global(g) = callable else {
            return self.err(format!(
                "REDUCE on a non-callable ({})",
                kind_name(&callable)
            ));
        };
        let Value::Tuple(args) = args else {
            return self.err("REDUCE arguments are not a tuple");
        };
        match g {
            Global::RebuildTensorV2 | Global::RebuildTensor => {
                let (Some(Value::Storage(s)), Some(Value::Int(offset)), Some(size), Some(stride)) =
                    (args.first(), args.get(1), args.get(2), args.get(3))
                else {
                    return self.err(
                        "_rebuild_tensor arguments are not (storage, offset, size, stride, ...)",
                    );
                };
                let ints = |v: &Value| -> Option<Vec<i64>> {
                    match v {
                        Value::Tuple(x) | Value::List(x) => x
                            .iter()
                            .map(|e| {
                                if let Value::Int(i) = e {
                                    Some(*i)
                                } else {
                                    None
                                }
                            })
                            .collect(),
                        _ => None,
                    }
                };
                let (Some(size), Some(stride)) = (ints(size), ints(stride)) else {
                    return self.err("tensor size/stride are not integer tuples");
                };
                Ok(Value::Tensor(TensorRef {
                    storage: s.clone(),
                    offset: *offset,
                    size,
                    stride,
                }))
            }
            Global::RebuildParameter => match args.into_iter().next() {
                Some(t @ Value::Tensor(_)) => Ok(t),
                _ => self.err("_rebuild_parameter without a tensor"),
            },
            Global::OrderedDict => match args.into_iter().next() {
                None => Ok(Value::Dict(Vec::new())),
                Some(Value::List(pairs)) => {
                    let mut d = Vec::new();
                    for p in pairs {
                        match p {
                            Value::Tuple(kv) | Value::List(kv) if kv.len() == 2 => {
                                let mut it = kv.into_iter();
                                if let (Some(k), Some(v)) = (it.next(), it.next()) {
                                    d.push((k, v));
                                }
                            }
                            _ => return self.err("OrderedDict items are not pairs"),
                        }
                    }
                    Ok(Value::Dict(d))
                }
                Some(_) => self.err("OrderedDict argument is not a list of pairs"),
            },
            Global::Storage(name, _) => self.err(format!("calling {name} is not supported")),
            Global::NumpyDtype => match args.first() {
                Some(Value::Str(code)) => Ok(Value::NumpyDtype(code.clone(), false)),
                _ => self.err("numpy.dtype without a type code"),
            },
            Global::CodecsEncode => match (args.first(), args.get(1)) {
                (Some(Value::Str(s)), Some(Value::Str(enc)))
                    if enc == "latin1" || enc == "latin-1" =>
                {
                    let bytes: Option<Vec<u8>> =
                        s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect();
                    match bytes {
                        Some(b) => Ok(Value::Bytes(b)),
                        None => self.err("_codecs.encode: character outside latin-1"),
                    }
                }
                _ => self.err("_codecs.encode is only allowed as encode(str, 'latin1')"),
            },
            Global::NumpyScalar => match (args.first(), args.get(1)) {
                (Some(Value::NumpyDtype(code, big)), Some(Value::Bytes(b))) => {
                    numpy_scalar(code, *big, b).map_or_else(
                        || {
                            self.err(format!(
                                "numpy scalar of dtype `{code}` with {} byte(s) is not supported",
                                b.len()
                            ))
                        },
                        Ok,
                    )
                }
                _ => self.err("numpy scalar arguments are not (dtype, bytes)"),
            },
        }
    }

    fn persistent(&mut self, pid: Value) -> Result<Value, PickleError> {
        let Value::Tuple(items) = pid else {
            return self.err("persistent id is not a tuple");
        };
        match items.as_slice() {
            [Value::Str(tag), Value::Global(Global::Storage(class, kind)), Value::Str(key), _location, Value::Int(numel)]
                if tag == "storage" =>
            {
                if *numel < 0 {
                    return self.err(format!("storage `{key}` has negative size {numel}"));
                }
                Ok(Value::Storage(StorageRef {
                    key: key.clone(),
                    kind: *kind,
                    numel: *numel,
                    class: class.clone(),
                }))
            }
            _ => self.err("persistent id is not a torch storage reference ('storage', type, key, location, numel)"),
        }
    }

    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            self.op_pos = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let v = self.u8()?;
                    if v > 5 {
                        return self.err(format!("pickle protocol {v} is newer than 5"));
                    }
                }
                0x95 => {
                    self.u64()?;
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    if !count_nodes(&v, &mut self.clone_budget) {
                        return self.err("DUP copies too much data (hostile pickle?)");
                    }
                    self.push(v)?;
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        u64::from(self.u8()?)
                    } else {
                        u64::from(self.u32()?)
                    };
                    let n = self.len(n)?;
                    if n > 8 {
                        return self.err(format!("integer of {n} bytes does not fit 64 bits"));
                    }
                    let b = self.take(n)?;
                    let mut v: i64 = 0;
                    for (i, &byte) in b.iter().enumerate() {
                        v |= i64::from(byte) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.stack.push(Value::Int(v));
                }
                b'I' | b'L' => {
                    let line = self.line()?.trim_end_matches('L');
                    let v = match line {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => match s.parse::<i64>() {
                            Ok(i) => Value::Int(i),
                            Err(_) => return self.err(format!("bad integer literal `{s}`")),
                        },
                    };
                    self.stack.push(v);
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.stack.push(Value::Float(f64::from_be_bytes(a)));
                }
                b'F' => {
                    let line = self.line()?;
                    match line.parse::<f64>() {
                        Ok(f) => self.stack.push(Value::Float(f)),
                        Err(_) => return self.err(format!("bad float literal `{line}`")),
                    }
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => u64::from(self.u32()?),
                        0x8c => u64::from(self.u8()?),
                        _ => self.u64()?,
                    };
                    let n = self.len(n)?;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                b'T' | b'U' => {
                    let n = if op == b'T' {
                        u64::from(self.u32()?)
                    } else {
                        u64::from(self.u8()?)
                    };
                    let n = self.len(n)?;
                    // Python 2 str: bytes, decoded as Latin-1 as Python 3 does by default.
                    let s: String = self.take(n)?.iter().map(|&b| char::from(b)).collect();
                    self.stack.push(Value::Str(s));
                }
                b'B' | b'C' | 0x8e => {
                    let n = match op {
                        b'B' => u64::from(self.u32()?),
                        b'C' => u64::from(self.u8()?),
                        _ => self.u64()?,
                    };
                    let n = self.len(n)?;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b));
                }
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items))?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if self.stack.len() < n {
                        return self.err("stack underflow");
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Value::Tuple(items))?;
                }
                b']' => self.stack.push(Value::List(Vec::new())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(items))?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.extend_top(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.extend_top(items)?;
                }
                0x8f => self.stack.push(Value::List(Vec::new())),
                0x90 => {
                    let items = self.pop_mark()?;
                    self.extend_top(items)?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(items))?;
                }
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Dict(Vec::new()));
                    self.set_items(items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'q' => {
                    let k = u64::from(self.u8()?);
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = u64::from(self.u32()?);
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                b'p' => {
                    let line = self.line()?;
                    let Ok(k) = line.parse::<u64>() else {
                        return self.err(format!("bad memo key `{line}`"));
                    };
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = u64::from(self.u8()?);
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = u64::from(self.u32()?);
                    self.memo_get(k)?;
                }
                b'g' => {
                    let line = self.line()?;
                    let Ok(k) = line.parse::<u64>() else {
                        return self.err(format!("bad memo key `{line}`"));
                    };
                    self.memo_get(k)?;
                }
                b'c' | b'i' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?;
                    if op == b'i' {
                        return self.err("INST opcode (old-style instance) is not supported");
                    }
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return self.err("STACK_GLOBAL needs two strings");
                    };
                    self.global(&module, &name)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.push(v)?;
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    if cls != Value::Global(Global::OrderedDict) {
                        return self.err(format!("NEWOBJ of {} is not supported", kind_name(&cls)));
                    }
                    let v = self.reduce(cls, args)?;
                    self.push(v)?;
                }
                b'b' => {
                    let state = self.pop()?;
                    match self.top()? {
                        // OrderedDict state (`_metadata` of state dicts) and tensor
                        // state (requires_grad hooks) carry nothing we need.
                        Value::Dict(_) | Value::Tensor(_) => {}
                        // numpy dtype state: (version, byte order, ...)
                        Value::NumpyDtype(_, big) => {
                            if let Value::Tuple(t) = &state {
                                *big = matches!(t.get(1), Some(Value::Str(o)) if o == ">");
                            }
                        }
                        other => {
                            let k = kind_name(other);
                            return self.err(format!("BUILD on {k} is not supported"));
                        }
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid)?;
                    self.stack.push(v);
                }
                b'o' => return self.err("OBJ opcode (object construction) is not supported"),
                0x82..=0x84 => {
                    return self.err("EXT opcodes (copyreg extension registry) are not supported")
                }
                other => return self.err(format!("unsupported pickle opcode 0x{other:02x}")),
            }
        }
    }
}

/// Short type name of a value, for messages.
pub fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::Float(_) => "float",
        Value::Str(_) => "str",
        Value::Bytes(_) => "bytes",
        Value::Tuple(_) => "tuple",
        Value::List(_) => "list",
        Value::Dict(_) => "dict",
        Value::Global(_) => "global",
        Value::Storage(_) => "storage",
        Value::Tensor(_) => "tensor",
        Value::NumpyDtype(..) => "numpy dtype",
    }
}

/// Decodes a numpy scalar of a numeric or bool dtype.
fn numpy_scalar(code: &str, big: bool, b: &[u8]) -> Option<Value> {
    fn arr<const N: usize>(b: &[u8], big: bool) -> Option<[u8; N]> {
        let mut a: [u8; N] = b.try_into().ok()?;
        if big {
            a.reverse();
        }
        Some(a)
    }
    Some(match code {
        "f8" => Value::Float(f64::from_le_bytes(arr(b, big)?)),
        "f4" => Value::Float(f64::from(f32::from_le_bytes(arr(b, big)?))),
        "i8" => Value::Int(i64::from_le_bytes(arr(b, big)?)),
        "i4" => Value::Int(i64::from(i32::from_le_bytes(arr(b, big)?))),
        "i2" => Value::Int(i64::from(i16::from_le_bytes(arr(b, big)?))),
        "i1" => Value::Int(i64::from(i8::from_le_bytes(arr(b, big)?))),
        "u4" => Value::Int(i64::from(u32::from_le_bytes(arr(b, big)?))),
        "u2" => Value::Int(i64::from(u16::from_le_bytes(arr(b, big)?))),
        "u1" => Value::Int(i64::from(u8::from_le_bytes(arr(b, big)?))),
        "b1" => Value::Bool(*b.first()? != 0),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_os_system_naming_the_global() {
        // pickle.dumps of an object whose __reduce__ is (os.system, ("echo pwned",)), protocol 2
        let evil = b"\x80\x02cposix\nsystem\nq\x00X\n\x00\x00\x00echo pwnedq\x01\x85q\x02Rq\x03.";
        assert_eq!(
            load(evil),
            Err(PickleError::Disallowed("posix.system".into()))
        );
        // the same through STACK_GLOBAL (protocol 4)
        let evil4 = b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c\x04echo\x85R.";
        assert_eq!(
            load(evil4),
            Err(PickleError::Disallowed("os.system".into()))
        );
        // builtins.eval / exec are refused alike
        assert!(
            matches!(load(b"c__builtin__\neval\n."), Err(PickleError::Disallowed(g)) if g == "__builtin__.eval")
        );
    }

    #[test]
    fn reads_plain_containers_and_scalars() {
        // {"a": 1, "b": [2.5, True, None], "c": (-300, "x")} protocol 2
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x01X\x01\x00\x00\x00b]q\x01(G@\x04\x00\x00\x00\x00\x00\x00\x88Ne\
X\x01\x00\x00\x00cJ\xd4\xfe\xff\xffX\x01\x00\x00\x00x\x86u.";
        let v = load(p).unwrap();
        let Value::Dict(d) = v else { panic!("{v:?}") };
        assert_eq!(d[0], (Value::Str("a".into()), Value::Int(1)));
        assert_eq!(
            d[1].1,
            Value::List(vec![Value::Float(2.5), Value::Bool(true), Value::None])
        );
        assert_eq!(
            d[2].1,
            Value::Tuple(vec![Value::Int(-300), Value::Str("x".into())])
        );
    }

    #[test]
    fn numpy_scalars_become_plain_values() {
        // pickle.dumps({'f': np.float64(0.8731), 'g': np.int64(12), 'b': np.bool_(True)}, protocol=2)
        // as written by numpy 2 (module `numpy._core.multiarray`).
        let p: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00\x00fq\x01cnumpy._core.multiarray\nscalar\nq\x02cnumpy\ndtype\nq\x03X\x02\x00\x00\x00f8q\x04\x89\x88\x87q\x05Rq\x06(K\x03X\x01\x00\x00\x00<q\x07NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x08bc_codecs\nencode\nq\tX\n\x00\x00\x008gDio\xc3\xb0\xc3\xab?q\nX\x06\x00\x00\x00latin1q\x0b\x86q\x0cRq\r\x86q\x0eRq\x0fX\x01\x00\x00\x00gq\x10h\x02h\x03X\x02\x00\x00\x00i8q\x11\x89\x88\x87q\x12Rq\x13(K\x03h\x07NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x14bh\tX\x08\x00\x00\x00\x0c\x00\x00\x00\x00\x00\x00\x00q\x15h\x0b\x86q\x16Rq\x17\x86q\x18Rq\x19X\x01\x00\x00\x00bq\x1ah\x02h\x03X\x02\x00\x00\x00b1q\x1b\x89\x88\x87q\x1cRq\x1d(K\x03X\x01\x00\x00\x00|q\x1eNNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x1fbh\tX\x01\x00\x00\x00\x01q h\x0b\x86q!Rq\"\x86q#Rq$u.";
        let Value::Dict(d) = load(p).unwrap() else {
            panic!()
        };
        assert_eq!(d[0].1, Value::Float(0.8731));
        assert_eq!(d[1].1, Value::Int(12));
        assert_eq!(d[2].1, Value::Bool(true));
    }

    #[test]
    fn hostile_inputs_end_in_errors() {
        // truncated string length
        assert!(matches!(
            load(b"\x80\x02X\xff\xff\xff\x7fab"),
            Err(PickleError::Malformed { .. })
        ));
        // deep nesting: 10_000 nested lists
        let mut deep = b"\x80\x02".to_vec();
        for _ in 0..10_000 {
            deep.extend_from_slice(b"]");
        }
        for _ in 0..9_999 {
            deep.extend_from_slice(b"a");
        }
        deep.push(b'.');
        assert!(
            matches!(load(&deep), Err(PickleError::Malformed { ref detail, .. }) if detail.contains("nesting"))
        );
        // exponential memo copies: l = [l, l] repeated
        let mut bomb = b"\x80\x02]q\x00".to_vec();
        for i in 0..60u8 {
            bomb.extend_from_slice(&[b'(', b'h', i, b'h', i, b'l', b'q', i + 1, b'0']);
        }
        bomb.extend_from_slice(b"h\x3c.");
        assert!(load(&bomb).is_err());
        // empty input, stack underflow, unknown opcode
        assert!(load(b"").is_err());
        assert!(load(b"R.").is_err());
        assert!(load(b"\xff").is_err());
    }
}
