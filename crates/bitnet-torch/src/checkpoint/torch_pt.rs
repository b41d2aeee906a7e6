//! Torch `.pt` / `.bin` checkpoints: the zip format of `torch.save` (torch >= 1.6).
//!
//! Layout: `<prefix>/data.pkl` (the pickle, read by our safe [`super::pickle`]
//! reader), `<prefix>/data/<key>` (raw storage bytes, little-endian), optionally
//! `<prefix>/byteorder`. Tensors are rebuilt from storage + offset/size/stride with
//! bounds checks; nothing in the file is executed.
//!
//! Every zip record that is read (`data.pkl`, `byteorder`, each `data/<key>`) is
//! checked against the CRC-32 its central-directory entry carries, so flipped bits
//! in a downloaded file are refused with the record's name instead of flowing into
//! training as corrupted weights (`torch.load` itself does not check). Reads are
//! bounded by the size the directory declares, so a record that lies about its size
//! (a deflate bomb, a short record) ends in an error, not a large allocation.
//!
//! The pickle may be a state dict or a dict holding one, such as EvoMerge's
//! `{"model_state_dict": {...}, "generation": 12, "fitness_score": 0.87, "is_final": true}`:
//! scalar entries become metadata, other entries (optimizer state, ...) are ignored
//! and listed.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use tch::Tensor;
use zip::ZipArchive;

use super::error::{CheckpointError, Result, TchContext};
use super::pickle::{self, PickleError, TensorRef, Value};

/// Tensors, scalar metadata and the names of ignored top-level entries.
#[derive(Debug)]
pub struct PtContents {
    pub tensors: Vec<(String, Tensor)>,
    pub metadata: BTreeMap<String, serde_json::Value>,
    pub ignored: Vec<String>,
}

const MAX_PICKLE_BYTES: u64 = 1 << 30;
/// What a `byteorder` record may hold (`little` or `big`, perhaps a newline).
const MAX_BYTEORDER_BYTES: u64 = 16;

/// Reads one zip record whole, at most `limit` bytes, and checks its length against
/// the directory's size and its CRC-32 against the directory's checksum. `record` is
/// the record's name, used in every error.
fn read_record(
    crc: Crc,
    path: &Path,
    f: &mut zip::read::ZipFile<'_>,
    record: &str,
    limit: u64,
    what: &str,
) -> Result<Vec<u8>> {
    let corrupt = |detail: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let declared = f.size();
    if declared > limit {
        return Err(corrupt(format!(
            "record `{record}` declares {declared} bytes, more than the {limit} a {what} may take"
        )));
    }
    // The declared size is untrusted: grow the buffer with the bytes actually read.
    let mut buf = Vec::new();
    f.by_ref()
        .take(declared)
        .read_to_end(&mut buf)
        .map_err(|e| corrupt(format!("record `{record}`: {e}")))?;
    if buf.len() as u64 != declared {
        return Err(corrupt(format!(
            "record `{record}` is truncated ({} of {declared} bytes)",
            buf.len()
        )));
    }
    if crc == Crc::Verify {
        let (expected, found) = (f.crc32(), crc32fast::hash(&buf));
        if expected != found {
            return Err(CheckpointError::Checksum {
                path: path.to_path_buf(),
                record: record.to_string(),
                expected,
                found,
            });
        }
    }
    Ok(buf)
}

const STATE_DICT_KEYS: &[&str] = &["model_state_dict", "state_dict", "model", "module"];

/// Whether [`read_record`] checks CRC-32s. Always `Verify` for users; `Skip`
/// exists only so the check's cost can be measured against the same reader
/// (`checkpoint::hostile::crc_cost`, docs/perf.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Crc {
    Verify,
    #[cfg_attr(not(test), allow(dead_code))]
    Skip,
}

/// Reads a torch zip checkpoint.
pub fn read_pt(path: &Path) -> Result<PtContents> {
    read_pt_checked(path, Crc::Verify)
}

/// [`read_pt`], with the CRC-32 check chosen by the caller (for measuring it).
pub(crate) fn read_pt_checked(path: &Path, crc: Crc) -> Result<PtContents> {
    let io = |action: &'static str| {
        let p = path.to_path_buf();
        move |source| CheckpointError::Io {
            path: p,
            action,
            source,
        }
    };
    let mut file = File::open(path).map_err(io("open"))?;
    let mut magic = [0u8; 4];
    let got = file.read(&mut magic).map_err(io("read"))?;
    if got < 4 || &magic != b"PK\x03\x04" {
        let reason = if got >= 2 && magic[0] == 0x80 && magic[1] <= 5 {
            "this is the legacy (pre-1.6, non-zip) torch.save format; re-save it with a current torch (`torch.save(torch.load(f, weights_only=True), f2)`) or convert it to safetensors".to_string()
        } else {
            "not a zip archive, so not a torch.save file (expected .pt/.bin from torch >= 1.6, or .safetensors)".to_string()
        };
        return Err(CheckpointError::UnknownFormat {
            path: path.to_path_buf(),
            reason,
        });
    }
    let file = File::open(path).map_err(io("open"))?;
    let corrupt = |detail: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let mut zip =
        ZipArchive::new(BufReader::new(file)).map_err(|e| corrupt(format!("zip: {e}")))?;
    let pkl_name = zip
        .file_names()
        .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .min_by_key(|n| n.len())
        .map(str::to_string)
        .ok_or_else(|| corrupt("the zip has no data.pkl (not a torch.save archive)".into()))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let bo_name = format!("{prefix}byteorder");
    if let Ok(mut bo) = zip.by_name(&bo_name) {
        let bytes = read_record(
            crc,
            path,
            &mut bo,
            &bo_name,
            MAX_BYTEORDER_BYTES,
            "byteorder",
        )?;
        let s = String::from_utf8_lossy(&bytes);
        if s.trim() != "little" {
            return Err(corrupt(format!(
                "byte order `{}` is not supported (only little-endian)",
                s.trim()
            )));
        }
    }
    let pkl = {
        let mut f = zip
            .by_name(&pkl_name)
            .map_err(|e| corrupt(format!("{pkl_name}: {e}")))?;
        read_record(
            crc,
            path,
            &mut f,
            &pkl_name,
            MAX_PICKLE_BYTES,
            "state dict pickle",
        )?
    };
    let value = pickle::load(&pkl).map_err(|e| match e {
        PickleError::Disallowed(global) => CheckpointError::DisallowedGlobal {
            path: path.to_path_buf(),
            global,
        },
        PickleError::Malformed { offset, detail } => CheckpointError::Pickle {
            path: path.to_path_buf(),
            offset,
            detail,
        },
    })?;
    let (state, metadata, ignored) = split_state_dict(path, value)?;
    let mut storages: HashMap<String, Tensor> = HashMap::new();
    let mut tensors = Vec::with_capacity(state.len());
    for (name, tref) in state {
        let t = materialize(crc, path, &mut zip, &prefix, &name, &tref, &mut storages)?;
        tensors.push((name, t));
    }
    Ok(PtContents {
        tensors,
        metadata,
        ignored,
    })
}

type Split = (
    Vec<(String, TensorRef)>,
    BTreeMap<String, serde_json::Value>,
    Vec<String>,
);

/// The entries of a dict of tensors (None values skipped; a repeated key keeps its
/// last value, as in Python), or `None` if it holds anything else.
fn tensor_entries(d: &[(Value, Value)]) -> Option<Vec<(String, TensorRef)>> {
    let mut out: Vec<(String, TensorRef)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (k, v) in d {
        match (k, v) {
            (Value::Str(k), Value::Tensor(t)) => match index.get(k) {
                Some(&i) => out[i].1 = t.clone(),
                None => {
                    index.insert(k.clone(), out.len());
                    out.push((k.clone(), t.clone()));
                }
            },
            (Value::Str(_), Value::None) => {}
            _ => return None,
        }
    }
    (!out.is_empty()).then_some(out)
}

fn scalar(v: &Value) -> Option<serde_json::Value> {
    Some(match v {
        Value::None => serde_json::Value::Null,
        Value::Bool(b) => (*b).into(),
        Value::Int(i) => (*i).into(),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Value::Str(s) => s.clone().into(),
        _ => return None,
    })
}

/// Finds the state dict inside the unpickled value; scalars become metadata.
fn split_state_dict(path: &Path, value: Value) -> Result<Split> {
    let not_sd = |detail: String| CheckpointError::NotAStateDict {
        path: path.to_path_buf(),
        detail,
    };
    let Value::Dict(top) = value else {
        return Err(not_sd(format!(
            "the pickle holds a {}, not a dict of tensors",
            pickle::kind_name(&value)
        )));
    };
    if let Some(sd) = tensor_entries(&top) {
        return Ok((sd, BTreeMap::new(), Vec::new()));
    }
    let (mut metadata, mut ignored, mut loose, mut nested) =
        (BTreeMap::new(), Vec::new(), Vec::new(), Vec::new());
    for (k, v) in &top {
        let Value::Str(key) = k else {
            ignored.push(format!("{k:?}"));
            continue;
        };
        match v {
            Value::Tensor(t) => loose.push((key.clone(), t.clone())),
            Value::Dict(inner) => match tensor_entries(inner) {
                Some(sd) => nested.push((key.clone(), sd)),
                None => ignored.push(key.clone()),
            },
            other => match scalar(other) {
                Some(s) => {
                    metadata.insert(key.clone(), s);
                }
                None => ignored.push(key.clone()),
            },
        }
    }
    let chosen = match nested.len() {
        0 if !loose.is_empty() => loose,
        0 => {
            let keys: Vec<String> = top
                .iter()
                .map(|(k, _)| match k {
                    Value::Str(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .collect();
            return Err(not_sd(format!(
                "no dict of tensors among its entries {keys:?}"
            )));
        }
        1 => nested.remove(0).1,
        _ => {
            let pos = nested
                .iter()
                .position(|(k, _)| STATE_DICT_KEYS.contains(&k.as_str()));
            match pos {
                Some(i) => {
                    let (_, sd) = nested.remove(i);
                    ignored.extend(nested.into_iter().map(|(k, _)| k));
                    sd
                }
                None => {
                    let names: Vec<&String> = nested.iter().map(|(k, _)| k).collect();
                    return Err(not_sd(format!("several dicts of tensors {names:?}; name the model's one `model_state_dict`")));
                }
            }
        }
    };
    Ok((chosen, metadata, ignored))
}

fn materialize<R: Read + std::io::Seek>(
    crc: Crc,
    path: &Path,
    zip: &mut ZipArchive<R>,
    prefix: &str,
    name: &str,
    tref: &TensorRef,
    storages: &mut HashMap<String, Tensor>,
) -> Result<Tensor> {
    let bad = |detail: String| CheckpointError::BadTensor {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        detail,
    };
    let s = &tref.storage;
    let Some(kind) = s.kind else {
        return Err(CheckpointError::UnsupportedDtype {
            path: path.to_path_buf(),
            tensor: name.to_string(),
            dtype: s.class.clone(),
        });
    };
    if !storages.contains_key(&s.key) {
        let entry = format!("{prefix}data/{}", s.key);
        let elt = kind.elt_size_in_bytes() as u64;
        let want = (s.numel as u64)
            .checked_mul(elt)
            .ok_or_else(|| bad(format!("storage `{}` size overflows", s.key)))?;
        let mut f = zip
            .by_name(&entry)
            .map_err(|e| bad(format!("storage `{entry}`: {e} (truncated archive?)")))?;
        if f.size() != want {
            return Err(bad(format!(
                "storage `{entry}` has {} bytes but {} x {} needs {want}",
                f.size(),
                s.numel,
                s.class
            )));
        }
        let buf = read_record(crc, path, &mut f, &entry, want, "tensor storage")?;
        let t = Tensor::f_from_data_size(&buf, &[s.numel], kind).at(path)?;
        storages.insert(s.key.clone(), t);
    }
    let storage = &storages[&s.key];
    if tref.size.len() != tref.stride.len()
        || tref.offset < 0
        || tref.size.iter().chain(&tref.stride).any(|&d| d < 0)
    {
        return Err(bad(format!(
            "invalid view: size {:?}, stride {:?}, offset {}",
            tref.size, tref.stride, tref.offset
        )));
    }
    let empty = tref.size.contains(&0);
    if !empty {
        let last = tref
            .size
            .iter()
            .zip(&tref.stride)
            .try_fold(tref.offset, |acc, (&n, &st)| {
                (n - 1).checked_mul(st).and_then(|x| acc.checked_add(x))
            });
        match last {
            Some(l) if l < s.numel => {}
            _ => {
                return Err(bad(format!(
                    "view (offset {}, size {:?}, stride {:?}) overruns its storage of {} elements",
                    tref.offset, tref.size, tref.stride, s.numel
                )))
            }
        }
    }
    storage
        .f_as_strided(tref.size.as_slice(), tref.stride.as_slice(), tref.offset)
        .and_then(|t| t.f_contiguous())
        .and_then(|t| t.f_detach())
        .at(path)
}
