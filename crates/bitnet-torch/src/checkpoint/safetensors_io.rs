//! Reading and writing `.safetensors` files with the `safetensors` crate.
//!
//! The crate validates the header (JSON, offsets contiguous, sizes consistent with
//! shape x dtype, no overflow) before we touch tensor bytes; when it refuses a
//! file, [`diagnose`] re-reads the header to name the tensor that is at fault.
//! Files are read whole into memory (no mmap, so no `unsafe`); peak memory while
//! loading is about twice the file size.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::{Dtype, SafeTensorError, SafeTensors};
use tch::{Device, Kind, Tensor};

use super::error::{CheckpointError, Result, TchContext};

/// Tensors in file order plus the `__metadata__` strings.
pub type RawTensors = (Vec<(String, Tensor)>, BTreeMap<String, String>);

pub(crate) fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

/// Reads every tensor of a safetensors file onto the CPU.
pub fn read_safetensors(path: &Path) -> Result<RawTensors> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        action: "read",
        source,
    })?;
    read_safetensors_bytes(path, &bytes)
}

/// Parses safetensors bytes; `path` is only used in errors.
pub fn read_safetensors_bytes(path: &Path, bytes: &[u8]) -> Result<RawTensors> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| diagnose(path, bytes, e))?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| diagnose(path, bytes, e))?;
    let metadata: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let kind = kind_of(view.dtype()).ok_or_else(|| CheckpointError::UnsupportedDtype {
            path: path.to_path_buf(),
            tensor: name.clone(),
            dtype: format!("{:?}", view.dtype()),
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind).at(path)?;
        out.push((name, t));
    }
    Ok((out, metadata))
}

/// Turns a refusal of the `safetensors` crate into an error that names the tensor.
fn diagnose(path: &Path, bytes: &[u8], e: SafeTensorError) -> CheckpointError {
    let corrupt = |detail: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let header_detail = || -> Option<CheckpointError> {
        let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
        let header: serde_json::Value =
            serde_json::from_slice(bytes.get(8..8usize.checked_add(n)?)?).ok()?;
        let data_len = bytes.len() - 8 - n;
        for (name, info) in header.as_object()? {
            if name == "__metadata__" {
                continue;
            }
            let offs: Vec<u64> = info
                .get("data_offsets")?
                .as_array()?
                .iter()
                .filter_map(|v| v.as_u64())
                .collect();
            let shape: Vec<u64> = info
                .get("shape")?
                .as_array()?
                .iter()
                .filter_map(|v| v.as_u64())
                .collect();
            let dtype: Dtype = serde_json::from_value(info.get("dtype")?.clone()).ok()?;
            let (s, end) = (*offs.first()?, *offs.get(1)?);
            let bad = |detail: String| {
                Some(CheckpointError::BadTensor {
                    path: path.to_path_buf(),
                    tensor: name.clone(),
                    detail,
                })
            };
            if end > data_len as u64 || s > end {
                return bad(format!(
                    "data offsets [{s}, {end}) overrun the file's {data_len}-byte data section (truncated file or bad header)"
                ));
            }
            let need = shape
                .iter()
                .try_fold(dtype.size() as u64, |a, &d| a.checked_mul(d));
            if need != Some(end - s) {
                return bad(format!(
                    "shape {shape:?} of {dtype:?} needs {need:?} bytes but the offsets give {}",
                    end - s
                ));
            }
        }
        None
    };
    match e {
        SafeTensorError::InvalidOffset(name) => CheckpointError::BadTensor {
            path: path.to_path_buf(),
            tensor: name,
            detail: "data offsets overlap or leave a gap".into(),
        },
        SafeTensorError::HeaderTooSmall | SafeTensorError::InvalidHeaderLength => {
            corrupt("the header length runs past the end of the file (truncated?)".into())
        }
        SafeTensorError::InvalidHeader
        | SafeTensorError::InvalidHeaderStart
        | SafeTensorError::InvalidHeaderDeserialization
        | SafeTensorError::JsonError(_) => unknown_dtype(path, bytes)
            .unwrap_or_else(|| corrupt("the header is not valid safetensors JSON".into())),
        SafeTensorError::HeaderTooLarge => corrupt("the header is larger than 100 MB".into()),
        other => header_detail().unwrap_or_else(|| corrupt(format!("{other:?}"))),
    }
}

/// A header that fails only because a tensor has a dtype the crate does not know
/// (F8_E4M3, ...): name that tensor.
fn unknown_dtype(path: &Path, bytes: &[u8]) -> Option<CheckpointError> {
    let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header: serde_json::Value =
        serde_json::from_slice(bytes.get(8..8usize.checked_add(n)?)?).ok()?;
    for (name, info) in header.as_object()? {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info.get("dtype")?;
        if serde_json::from_value::<Dtype>(dtype.clone()).is_err() {
            return Some(CheckpointError::UnsupportedDtype {
                path: path.to_path_buf(),
                tensor: name.clone(),
                dtype: dtype.to_string(),
            });
        }
    }
    None
}

/// Writes tensors (any device, any supported dtype) with `__metadata__` strings.
///
/// Written to a temporary file in the same folder and renamed, so an interrupted
/// save never leaves a truncated checkpoint under the final name.
pub fn save_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in tensors {
        let kind = t.f_kind().at(path)?;
        let dtype = dtype_of(kind).ok_or_else(|| CheckpointError::UnsupportedDtype {
            path: path.to_path_buf(),
            tensor: name.clone(),
            dtype: format!("{kind:?}"),
        })?;
        let t = t
            .f_detach()
            .and_then(|t| t.f_to_device(Device::Cpu))
            .and_then(|t| t.f_contiguous())
            .at(path)?;
        let numel = t.numel();
        let mut data = vec![0u8; numel * kind.elt_size_in_bytes()];
        t.f_copy_data_u8(&mut data, numel).at(path)?;
        let shape = t.size().iter().map(|&d| d as usize).collect();
        buffers.push((name.clone(), dtype, shape, data));
    }
    let mut views = Vec::new();
    for (name, dtype, shape, data) in &buffers {
        let v = safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).map_err(|e| {
            CheckpointError::BadTensor {
                path: path.to_path_buf(),
                tensor: name.clone(),
                detail: format!("{e:?}"),
            }
        })?;
        views.push((name.as_str(), v));
    }
    let meta: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let meta = if meta.is_empty() { None } else { Some(meta) };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    safetensors::serialize_to_file(views, &meta, &tmp).map_err(|e| match e {
        SafeTensorError::IoError(source) => CheckpointError::Io {
            path: tmp.clone(),
            action: "write",
            source,
        },
        other => CheckpointError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("cannot serialise: {other:?}"),
        },
    })?;
    std::fs::rename(&tmp, path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        CheckpointError::Io {
            path: path.to_path_buf(),
            action: "rename the written file to",
            source,
        }
    })
}
