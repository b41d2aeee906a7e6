//! Errors of checkpoint I/O; every variant names the file and, where there is one,
//! the tensor, so a user can tell which of many shards is broken and what to do.

use std::path::PathBuf;

/// Result alias of the checkpoint module.
pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;

/// What loading or saving a checkpoint can refuse. A load that fails returns no
/// tensors at all (never a partial model).
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a checkpoint we can read: {reason}", path.display())]
    UnknownFormat { path: PathBuf, reason: String },
    #[error("{}: file is truncated or corrupt: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
    #[error("{}: zip record `{record}` fails its CRC-32 check (stored {expected:08x}, computed {found:08x}): the file is corrupt; download or copy it again (compare its sha256 with the source's)", path.display())]
    Checksum {
        path: PathBuf,
        record: String,
        expected: u32,
        found: u32,
    },
    #[error("{}: tensor `{tensor}`: {detail}", path.display())]
    BadTensor {
        path: PathBuf,
        tensor: String,
        detail: String,
    },
    #[error("{}: tensor `{tensor}` has unsupported dtype {dtype}; convert it to f32, f16 or bf16", path.display())]
    UnsupportedDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    #[error("{}: tensor `{tensor}` has {count} NaN/Inf value(s); the checkpoint is corrupt or diverged", path.display())]
    NonFinite {
        path: PathBuf,
        tensor: String,
        count: i64,
    },
    #[error("{}: missing tensor `{tensor}` ({missing} missing in all); add a `name_map` rename if the checkpoint names it differently", path.display())]
    MissingTensor {
        path: PathBuf,
        tensor: String,
        missing: usize,
    },
    #[error("{}: tensor `{tensor}` has shape {found:?} but the config needs {expected:?}", path.display())]
    ShapeMismatch {
        path: PathBuf,
        tensor: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },
    #[error("{}: tensor `{tensor}` appears twice (after name_map: `{renamed}`)", path.display())]
    DuplicateTensor {
        path: PathBuf,
        tensor: String,
        renamed: String,
    },
    #[error("{}: the pickle references `{global}`, which is not allowed in a state dict; loading never runs code. Re-save the checkpoint with plain tensors (e.g. `torch.save(model.state_dict(), ...)`) or as safetensors", path.display())]
    DisallowedGlobal { path: PathBuf, global: String },
    #[error("{}: pickle error at byte {offset}: {detail}", path.display())]
    Pickle {
        path: PathBuf,
        offset: usize,
        detail: String,
    },
    #[error("{}: not a state dict: {detail}", path.display())]
    NotAStateDict { path: PathBuf, detail: String },
    #[error("{}: GGUF: {detail}", path.display())]
    Gguf { path: PathBuf, detail: String },
    #[error("{}: tensor `{tensor}` is stored as GGML type {type_name}, which this reader cannot dequantize (it reads F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K); re-quantize the model with llama.cpp's llama-quantize to one of those", path.display())]
    UnsupportedGgufType {
        path: PathBuf,
        tensor: String,
        type_name: String,
    },
    #[error("{}: invalid config: {detail}", path.display())]
    Config { path: PathBuf, detail: String },
    #[error("name_map pattern `{pattern}`: {detail}")]
    NameMap { pattern: String, detail: String },
    #[error("{}: libtorch: {source}", path.display())]
    Torch {
        path: PathBuf,
        #[source]
        source: tch::TchError,
    },
}

/// Attaches a path to tch errors.
pub(crate) trait TchContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> TchContext<T> for std::result::Result<T, tch::TchError> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| CheckpointError::Torch {
            path: path.to_path_buf(),
            source,
        })
    }
}
