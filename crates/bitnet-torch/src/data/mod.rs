//! Training and evaluation data: tokenizers, the corpus split and batching.
//!
//! The `train` and `evaluate` stages must see the same held-out tokens as the
//! script that trained the bundled demo model (`scripts/demo/demo_common.py`),
//! otherwise the perplexities they report could not be compared with the ones
//! written in `data/demo/README.md`. This module is the Rust side of that
//! contract: the byte-level tokenizer (vocab 256, no special tokens), the
//! paragraph-aligned train/held-out split, seeded random training windows and
//! fixed held-out evaluation windows. A Hugging Face `tokenizer.json` can be
//! used instead of bytes for models that come with one.

pub mod batch;
pub mod corpus;
pub mod tokenizer;

use std::path::PathBuf;

pub use batch::{batches, heldout_windows, Batches};
pub use corpus::{split_point, Corpus, BUNDLED_CORPUS, DEFAULT_HELDOUT_FRACTION};
pub use tokenizer::Tokenizer;

/// Errors of the data module; each names the file or the value at fault and
/// what to change.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read corpus `{path}`: {source} (check the path; the bundled corpus is `{bundled}`)", bundled = BUNDLED_CORPUS)]
    ReadCorpus {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corpus `{path}` is not valid UTF-8 at byte {offset}; the `{tokenizer}` tokenizer needs text (the byte-level tokenizer accepts any bytes)")]
    NotUtf8 {
        path: PathBuf,
        offset: usize,
        tokenizer: String,
    },
    #[error("held-out fraction {value} is outside (0, 1); use e.g. 0.05 for the last 5%")]
    HeldoutFraction { value: f64 },
    #[error("cannot load tokenizer `{path}`: {message} (expected a Hugging Face `tokenizer.json`; leave `tokenizer` unset for the byte-level default)")]
    LoadTokenizer { path: PathBuf, message: String },
    #[error("tokenizer `{tokenizer}` failed to {action}: {message}")]
    Tokenize {
        tokenizer: String,
        action: &'static str,
        message: String,
    },
    #[error("token id {id} is outside the vocabulary of `{tokenizer}` (size {vocab_size})")]
    TokenOutOfRange {
        tokenizer: String,
        id: i64,
        vocab_size: usize,
    },
    #[error("{what} has {tokens} tokens, but a window of seq_len {seq_len} needs at least {needed}; lower `seq_len` or use more text")]
    TooFewTokens {
        what: &'static str,
        tokens: usize,
        seq_len: usize,
        needed: usize,
    },
    #[error("`{name}` must be at least 1, got 0")]
    Zero { name: &'static str },
    #[error("libtorch failed while building a batch: {0}")]
    Torch(#[from] tch::TchError),
}
