//! Why a decode model could not be built or a step could not run.

use bitnet_kernels::KernelError;

/// Errors of the fused decode path.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// A weight has the wrong number of elements for the config.
    #[error("{what} has {actual} values, the config needs {expected}; the weights do not belong to this config")]
    Shape {
        what: String,
        expected: usize,
        actual: usize,
    },
    /// The config itself is inconsistent.
    #[error("decode config: {0}")]
    Config(String),
    /// A token id outside the vocabulary.
    #[error("token id {token} is outside the vocabulary of {vocab}")]
    Token { token: u32, vocab: usize },
    /// The KV cache is full.
    #[error("{new} more positions do not fit: the cache holds {len} of {capacity}; make the state with a larger capacity")]
    Capacity {
        new: usize,
        len: usize,
        capacity: usize,
    },
    /// The state was made for another model shape.
    #[error("the decode state was made for another model ({0}); make one with DecodeState::new(&model, ..)")]
    StateMismatch(String),
    /// The ternary kernels refused a call.
    #[error(transparent)]
    Kernel(#[from] KernelError),
}
