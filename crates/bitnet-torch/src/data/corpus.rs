//! Corpus loading and the deterministic train / held-out split.
//!
//! Perplexities are only comparable on the same held-out bytes, and the demo
//! model's reported figures were measured by `scripts/demo/demo_common.py`,
//! so the split rule here is the Python one, byte for byte:
//!
//! 1. `cut = floor(len * (1 - heldout_fraction))`, in IEEE f64 (as Python);
//! 2. the held-out part starts right after the first paragraph break
//!    (`"\n\n"`) at or after `cut`, so no paragraph is cut in two;
//! 3. without one, it starts at `cut` moved forward to the next UTF-8
//!    character boundary (or at the end).
//!
//! Train is everything before that point, held-out everything from it: the
//! parts are disjoint and together are the whole file.

use std::path::{Path, PathBuf};

use super::{DataError, Tokenizer};

/// The bundled corpus, relative to the repository root (see its `SOURCE.md`).
pub const BUNDLED_CORPUS: &str = "data/corpus/moby-dick.txt";

/// Held-out share used for the bundled demo model's figures.
pub const DEFAULT_HELDOUT_FRACTION: f64 = 0.05;

const PARAGRAPH_BREAK: &[u8] = b"\n\n";

/// Byte offset where the held-out part starts (rule in the module docs).
pub fn split_point(data: &[u8], heldout_fraction: f64) -> Result<usize, DataError> {
    if !(heldout_fraction > 0.0 && heldout_fraction < 1.0) {
        return Err(DataError::HeldoutFraction {
            value: heldout_fraction,
        });
    }
    let len = data.len();
    // `as` saturates and the product is within [0, len]: this is Python's
    // int(math.floor(len * (1.0 - f))) for any corpus that fits in memory.
    let cut = ((len as f64) * (1.0 - heldout_fraction)).floor() as usize;
    let cut = cut.min(len);
    if let Some(pos) = data[cut..]
        .windows(PARAGRAPH_BREAK.len())
        .position(|w| w == PARAGRAPH_BREAK)
    {
        return Ok(cut + pos + PARAGRAPH_BREAK.len());
    }
    let mut at = cut;
    while at < len && data[at] & 0xC0 == 0x80 {
        at += 1;
    }
    Ok(at)
}

/// A text corpus split into train and held-out bytes.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// The file it came from (or a label for in-memory data), for errors.
    pub source: PathBuf,
    pub train: Vec<u8>,
    pub heldout: Vec<u8>,
}

impl Corpus {
    /// Reads `path` and splits it with [`split_point`].
    pub fn load(path: impl AsRef<Path>, heldout_fraction: f64) -> Result<Self, DataError> {
        let path = path.as_ref();
        let data = std::fs::read(path).map_err(|source| DataError::ReadCorpus {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(path, data, heldout_fraction)
    }

    /// Splits in-memory data; `source` labels it in errors.
    pub fn from_bytes(
        source: impl Into<PathBuf>,
        mut data: Vec<u8>,
        heldout_fraction: f64,
    ) -> Result<Self, DataError> {
        let at = split_point(&data, heldout_fraction)?;
        let heldout = data.split_off(at);
        Ok(Corpus {
            source: source.into(),
            train: data,
            heldout,
        })
    }

    /// Token ids of the train part.
    pub fn train_tokens(&self, tokenizer: &Tokenizer) -> Result<Vec<i64>, DataError> {
        tokenizer.encode_bytes(&self.train, &self.source)
    }

    /// Token ids of the held-out part.
    pub fn heldout_tokens(&self, tokenizer: &Tokenizer) -> Result<Vec<i64>, DataError> {
        tokenizer.encode_bytes(&self.heldout, &self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundled_corpus_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(BUNDLED_CORPUS)
    }

    #[test]
    fn split_is_deterministic_disjoint_and_complete() {
        let data = b"one two.\n\nthree four.\n\nfive six seven.\n\neight nine.\n".to_vec();
        let a = Corpus::from_bytes("mem", data.clone(), 0.3).unwrap();
        let b = Corpus::from_bytes("mem", data.clone(), 0.3).unwrap();
        assert_eq!((&a.train, &a.heldout), (&b.train, &b.heldout));
        let mut joined = a.train.clone();
        joined.extend_from_slice(&a.heldout);
        assert_eq!(joined, data, "train ++ held-out must be the whole corpus");
        // len 52, cut = floor(52 * 0.7) = 36 (inside "five six seven."); the
        // next break ends at 40, so held-out is the last paragraph only.
        assert_eq!(a.heldout, b"eight nine.\n");
        assert!(a.train.ends_with(b"\n\n"));
    }

    #[test]
    fn split_without_paragraph_break_lands_on_a_char_boundary() {
        // "aé" is 61 c3 a9; 10 such = 30 bytes. At 0.05 the cut is
        // floor(28.5) = 28, a c3 lead byte: a boundary, kept. At 0.12 it is
        // floor(26.4) = 26, an a9 continuation byte, so the split moves to 27.
        let data = "aé".repeat(10).into_bytes();
        assert_eq!(split_point(&data, 0.05).unwrap(), 28);
        assert_eq!(split_point(&data, 0.12).unwrap(), 27);
        let c = Corpus::from_bytes("mem", data, 0.12).unwrap();
        assert!(std::str::from_utf8(&c.train).is_ok());
        assert!(std::str::from_utf8(&c.heldout).is_ok());
    }

    #[test]
    fn split_rejects_fractions_outside_the_open_unit_interval() {
        for bad in [0.0, 1.0, -0.1, 2.0, f64::NAN] {
            let err = split_point(b"abc", bad).unwrap_err().to_string();
            assert!(err.contains("held-out fraction"), "{err}");
        }
    }

    /// Pins the Rust split to the Python one on the bundled corpus: the demo
    /// model was trained on exactly 1_155_932 train bytes (printed by
    /// `scripts/demo/train_demo_model.py`, recorded in `data/demo/README.md`).
    #[test]
    fn bundled_corpus_split_matches_the_python_training_script() {
        let corpus = Corpus::load(bundled_corpus_path(), DEFAULT_HELDOUT_FRACTION).unwrap();
        assert_eq!(corpus.train.len(), 1_155_932);
        assert_eq!(corpus.heldout.len(), 60_483);
        // The paragraph rule puts the cut at a paragraph start in chapter 133.
        assert!(corpus.heldout.starts_with(b"A gentle joyousness"));
        assert!(corpus.train.ends_with(b"\n\n"));
    }

    #[test]
    fn missing_corpus_error_names_the_file() {
        let err = Corpus::load("no/such/corpus.txt", 0.05)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`no/such/corpus.txt`"), "{err}");
    }
}
