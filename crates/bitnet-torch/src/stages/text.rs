//! Text for training and evaluation: a UTF-8 corpus, byte-tokenized, split
//! deterministically into train and held-out parts by the rule the demo
//! scripts use (`scripts/demo/demo_common.py::split_point`), so Python and
//! Rust evaluate the same held-out bytes; batches are drawn from a seeded
//! generator keyed by step, so a resumed run sees the same batches.
use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::{Device, Tensor};

use super::common::byte_tokens;

/// Byte offset where the held-out part starts: the first paragraph break
/// (`\n\n`) at or after `floor(len * (1 - fraction))`, else that cut moved to
/// the next UTF-8 character boundary.
pub fn split_point(data: &[u8], heldout_fraction: f64) -> usize {
    let n = data.len();
    let cut = ((n as f64) * (1.0 - heldout_fraction)).floor().max(0.0) as usize;
    let mut cut = cut.min(n);
    if let Some(pos) = data[cut..].windows(2).position(|w| w == b"\n\n") {
        return cut + pos + 2;
    }
    while cut < n && (data[cut] & 0xC0) == 0x80 {
        cut += 1;
    }
    cut
}

/// Train and held-out tokens of a corpus.
pub struct Corpus {
    pub train: Tensor,
    pub heldout: Tensor,
}

impl Corpus {
    pub fn read(path: &Path, heldout_fraction: f64, need: i64) -> Result<Corpus> {
        let data = std::fs::read(path)
            .with_context(|| format!("{}: cannot read the corpus", path.display()))?;
        let at = split_point(&data, heldout_fraction);
        let (train, held) = data.split_at(at);
        for (part, bytes) in [("train", train), ("held-out", held)] {
            if (bytes.len() as i64) <= need {
                bail!(
                    "{}: the {part} part has {} bytes, need more than {need} (seq_len + 1); use a larger corpus or a smaller seq_len",
                    path.display(),
                    bytes.len()
                );
            }
        }
        Ok(Corpus {
            train: byte_tokens(train),
            heldout: byte_tokens(held),
        })
    }
}

/// SplitMix64: a tiny, seedable, stable generator for batch offsets.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `(inputs, targets)`, each `(batch, seq_len)`, of random windows of
/// `tokens`, a pure function of `(seed, step)`.
pub fn random_batch(
    tokens: &Tensor,
    batch: i64,
    seq_len: i64,
    seed: u64,
    step: u64,
    device: Device,
) -> Result<(Tensor, Tensor)> {
    let n = tokens.size()[0];
    let span = (n - seq_len - 1).max(1) as u64;
    let mut rows = Vec::new();
    let mut state = splitmix(seed ^ splitmix(step));
    for _ in 0..batch {
        state = splitmix(state);
        let start = (state % span) as i64;
        rows.push(tokens.f_narrow(0, start, seq_len + 1)?);
    }
    let w = Tensor::f_stack(&rows, 0)?.f_to_device(device)?;
    Ok((w.f_narrow(1, 0, seq_len)?, w.f_narrow(1, 1, seq_len)?))
}

/// Non-overlapping evaluation windows over at most `max_tokens` tokens:
/// `(inputs, targets)` each `(N, seq_len)` (stride `seq_len`, the trailing
/// partial window dropped, as the demo scripts' `heldout_windows`).
pub fn windows(tokens: &Tensor, seq_len: i64, max_tokens: i64) -> Result<(Tensor, Tensor)> {
    let n = tokens.size()[0].min(max_tokens.max(seq_len + 1));
    let count = (n - 1) / seq_len;
    if count < 1 {
        bail!("held-out part has {n} tokens, need more than seq_len = {seq_len}");
    }
    let rows: Vec<Tensor> = (0..count)
        .map(|k| tokens.f_narrow(0, k * seq_len, seq_len + 1))
        .collect::<std::result::Result<_, _>>()?;
    let w = Tensor::f_stack(&rows, 0)?;
    Ok((w.f_narrow(1, 0, seq_len)?, w.f_narrow(1, 1, seq_len)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_prefers_paragraph_breaks_and_batches_are_reproducible() {
        let text = b"aaaa\n\nbbbb\n\ncccc";
        assert_eq!(split_point(text, 0.5), 12);
        assert_eq!(split_point(b"abcdef", 0.5), 3);
        let t = byte_tokens(b"0123456789abcdefghij");
        let (x1, y1) = random_batch(&t, 3, 4, 7, 5, Device::Cpu).unwrap();
        let (x2, _) = random_batch(&t, 3, 4, 7, 5, Device::Cpu).unwrap();
        let (x3, _) = random_batch(&t, 3, 4, 7, 6, Device::Cpu).unwrap();
        assert!(x1.equal(&x2));
        assert!(!x1.equal(&x3));
        // targets are inputs shifted by one
        assert!(x1.narrow(1, 1, 3).equal(&y1.narrow(1, 0, 3)));
        let (wx, wy) = windows(&t, 4, 100).unwrap();
        assert_eq!(wx.size(), vec![4, 4]);
        assert_eq!(wy.int64_value(&[0, 0]), i64::from(b'1'));
    }
}
