//! Errors of the model library.
//!
//! One enum for everything `bitnet` can refuse, so stage code can map it to a
//! stage failure with a message that names the tensor, layer or config key.

use tch::TchError;

/// Result alias used throughout `bitnet`.
pub type Result<T, E = BitnetError> = std::result::Result<T, E>;

/// What the model library can refuse.
#[derive(Debug, thiserror::Error)]
pub enum BitnetError {
    /// A config value that the transformer cannot be built from.
    #[error("invalid model config: `{key}` {reason}")]
    Config { key: String, reason: String },
    /// A required tensor is absent from the weights handed to the model.
    #[error("missing tensor `{name}` ({missing} tensor(s) missing in all); check the checkpoint or add a `name_map` rename")]
    MissingTensor { name: String, missing: usize },
    /// A tensor's shape disagrees with the config.
    #[error("tensor `{name}` has shape {found:?} but the config needs {expected:?}; is this the right config.json?")]
    ShapeMismatch {
        name: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },
    /// A tensor has a dtype this operation does not accept.
    #[error("tensor `{name}` has dtype {found}, expected {expected}")]
    Dtype {
        name: String,
        expected: String,
        found: String,
    },
    /// Bad input to a quantizer, packer or layer (values out of range, wrong length).
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    /// A glob pattern in a conversion spec that cannot be used.
    #[error("conversion pattern `{pattern}`: {reason}")]
    Pattern { pattern: String, reason: String },
    /// An error raised by a plugged-in module (attention mixer, matmul backend).
    #[error("{module}: {message}")]
    Module { module: String, message: String },
    /// libtorch refused an operation (shape/device/dtype errors inside ops).
    #[error("libtorch: {0}")]
    Torch(#[from] TchError),
}

impl BitnetError {
    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        BitnetError::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }
}
