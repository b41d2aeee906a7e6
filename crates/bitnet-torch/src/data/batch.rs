//! Training batches and held-out evaluation windows as tch tensors.
//!
//! Training draws random windows so that a short run sees the whole corpus
//! rather than its first pages. The offsets of batch `k` are a pure function
//! of `(seed, k)` (SplitMix64 keyed by both), not of a running RNG state:
//! a resumed run continues from step `k` with exactly the batches an
//! uninterrupted run would have used, and two runs with one seed agree.
//!
//! Evaluation uses fixed, non-overlapping windows with stride `seq_len`, the
//! same ones as `heldout_windows` in `scripts/demo/demo_common.py`, so every
//! held-out token but the first is predicted exactly once and perplexities are
//! comparable across stages, runs and the Python training script.

use tch::Tensor;

use super::DataError;

/// SplitMix64 finaliser (Steele, Lea, Flood 2014): a bijective mix with good
/// avalanche, enough to turn (seed, step, row) into independent offsets.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Uniform integer in `0..n` by Lemire's multiply-shift (bias below 2^-40
/// for any corpus that fits in memory).
fn below(x: u64, n: u64) -> u64 {
    ((u128::from(x) * u128::from(n)) >> 64) as u64
}

/// Seeded random training windows: item `k` is `(inputs, targets)`, both
/// `(batch_size, seq_len)` int64 on the CPU, where `targets` are `inputs`
/// shifted by one token. The iterator never ends; take as many steps as the
/// schedule needs.
#[derive(Debug, Clone)]
pub struct Batches<'a> {
    tokens: &'a [i64],
    seq_len: usize,
    batch_size: usize,
    seed: u64,
    step: u64,
}

/// Random training batches over `tokens`, deterministic for a `seed`.
pub fn batches(
    tokens: &[i64],
    seq_len: usize,
    batch_size: usize,
    seed: u64,
) -> Result<Batches<'_>, DataError> {
    check_sizes(tokens, seq_len, batch_size, "training split")?;
    Ok(Batches {
        tokens,
        seq_len,
        batch_size,
        seed,
        step: 0,
    })
}

fn check_sizes(
    tokens: &[i64],
    seq_len: usize,
    batch_size: usize,
    what: &'static str,
) -> Result<(), DataError> {
    if seq_len == 0 {
        return Err(DataError::Zero { name: "seq_len" });
    }
    if batch_size == 0 {
        return Err(DataError::Zero { name: "batch_size" });
    }
    if tokens.len() <= seq_len {
        return Err(DataError::TooFewTokens {
            what,
            tokens: tokens.len(),
            seq_len,
            needed: seq_len + 1,
        });
    }
    Ok(())
}

impl Batches<'_> {
    /// Continue from `step` (0-based), e.g. when resuming from a checkpoint.
    pub fn starting_at(mut self, step: u64) -> Self {
        self.step = step;
        self
    }

    /// The next step this iterator will yield.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Start offsets of the windows of batch `step`.
    pub fn offsets(&self, step: u64) -> Vec<usize> {
        // Windows span seq_len + 1 tokens; check_sizes guarantees at least one.
        let starts = (self.tokens.len() - self.seq_len) as u64;
        let key = splitmix64(self.seed ^ splitmix64(step));
        (0..self.batch_size as u64)
            .map(|row| {
                below(
                    splitmix64(key ^ row.wrapping_mul(0xD6E8_FEB8_6659_FD93)),
                    starts,
                ) as usize
            })
            .collect()
    }

    /// Batch `step` as `(inputs, targets)`, each `(B, T)` int64.
    pub fn batch(&self, step: u64) -> Result<(Tensor, Tensor), DataError> {
        let offsets = self.offsets(step);
        windows_to_tensors(self.tokens, &offsets, self.seq_len)
    }
}

impl Iterator for Batches<'_> {
    type Item = Result<(Tensor, Tensor), DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.batch(self.step);
        self.step += 1;
        Some(item)
    }
}

/// Gathers windows `tokens[o .. o + seq_len + 1]` into `(inputs, targets)`.
fn windows_to_tensors(
    tokens: &[i64],
    offsets: &[usize],
    seq_len: usize,
) -> Result<(Tensor, Tensor), DataError> {
    let mut inputs = Vec::with_capacity(offsets.len() * seq_len);
    let mut targets = Vec::with_capacity(offsets.len() * seq_len);
    for &o in offsets {
        inputs.extend_from_slice(&tokens[o..o + seq_len]);
        targets.extend_from_slice(&tokens[o + 1..o + seq_len + 1]);
    }
    let shape = [offsets.len() as i64, seq_len as i64];
    let inputs = Tensor::f_from_slice(&inputs)?.f_view(shape)?; // (B, T)
    let targets = Tensor::f_from_slice(&targets)?.f_view(shape)?; // (B, T)
    Ok((inputs, targets))
}

/// Fixed held-out evaluation windows, grouped into batches of at most
/// `batch_size` windows, in corpus order.
///
/// Window `k` covers `tokens[k * seq_len ..= k * seq_len + seq_len]`; the
/// trailing partial window is dropped. `max_windows` keeps only the first
/// windows (for quick runs); `None` uses all of them, as the demo figures do.
pub fn heldout_windows(
    tokens: &[i64],
    seq_len: usize,
    batch_size: usize,
    max_windows: Option<usize>,
) -> Result<Vec<(Tensor, Tensor)>, DataError> {
    check_sizes(tokens, seq_len, batch_size, "held-out split")?;
    let mut count = (tokens.len() - 1) / seq_len;
    if let Some(max) = max_windows {
        if max == 0 {
            return Err(DataError::Zero {
                name: "max_windows",
            });
        }
        count = count.min(max);
    }
    let offsets: Vec<usize> = (0..count).map(|k| k * seq_len).collect();
    offsets
        .chunks(batch_size)
        .map(|chunk| windows_to_tensors(tokens, chunk, seq_len))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Token value = its position, so a window's values reveal its offset.
    fn positions(n: i64) -> Vec<i64> {
        (0..n).collect()
    }

    fn to_vec2(t: &Tensor) -> Vec<Vec<i64>> {
        Vec::<Vec<i64>>::try_from(t).unwrap()
    }

    #[test]
    fn batch_shapes_and_targets_shifted_by_one() {
        let tokens = positions(1000);
        let mut it = batches(&tokens, 16, 4, 7).unwrap();
        for _ in 0..3 {
            let (x, y) = it.next().unwrap().unwrap();
            assert_eq!(x.size(), vec![4, 16]);
            assert_eq!(y.size(), vec![4, 16]);
            assert_eq!(x.kind(), tch::Kind::Int64);
            for (xr, yr) in to_vec2(&x).iter().zip(to_vec2(&y).iter()) {
                // Contiguous window of the corpus...
                assert!(xr.windows(2).all(|w| w[1] == w[0] + 1), "{xr:?}");
                // ...and targets are the next tokens.
                assert!(
                    xr.iter().zip(yr).all(|(a, b)| *b == *a + 1),
                    "{xr:?} {yr:?}"
                );
                assert!(*yr.last().unwrap() < 1000);
            }
        }
    }

    #[test]
    fn batches_are_deterministic_for_a_seed_and_differ_across_seeds() {
        let tokens = positions(10_000);
        let a: Vec<Vec<usize>> = (0..5)
            .map(|k| batches(&tokens, 8, 6, 42).unwrap().offsets(k))
            .collect();
        let b: Vec<Vec<usize>> = (0..5)
            .map(|k| batches(&tokens, 8, 6, 42).unwrap().offsets(k))
            .collect();
        let c: Vec<Vec<usize>> = (0..5)
            .map(|k| batches(&tokens, 8, 6, 43).unwrap().offsets(k))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a[0], a[1], "consecutive steps draw different windows");
        // Every offset leaves room for seq_len + 1 tokens.
        assert!(a.iter().flatten().all(|&o| o + 9 <= tokens.len()));
    }

    #[test]
    fn resuming_at_a_step_yields_the_same_batches_as_an_uninterrupted_run() {
        let tokens = positions(500);
        let full: Vec<Vec<Vec<i64>>> = batches(&tokens, 10, 3, 1)
            .unwrap()
            .take(6)
            .map(|r| to_vec2(&r.unwrap().0))
            .collect();
        let resumed: Vec<Vec<Vec<i64>>> = batches(&tokens, 10, 3, 1)
            .unwrap()
            .starting_at(4)
            .take(2)
            .map(|r| to_vec2(&r.unwrap().0))
            .collect();
        assert_eq!(&full[4..], &resumed[..]);
    }

    #[test]
    fn offsets_cover_the_whole_range() {
        // 20 tokens, seq_len 4: starts 0..=15. 200 draws must reach both ends.
        let tokens = positions(20);
        let it = batches(&tokens, 4, 200, 3).unwrap();
        let offs = it.offsets(0);
        assert!(offs.iter().all(|&o| o <= 15));
        assert!(offs.contains(&0) && offs.contains(&15), "{offs:?}");
    }

    #[test]
    fn too_few_tokens_and_zero_sizes_are_errors() {
        let tokens = positions(8);
        let err = batches(&tokens, 8, 1, 0).unwrap_err().to_string();
        assert!(err.contains("needs at least 9"), "{err}");
        assert!(batches(&tokens, 0, 1, 0).is_err());
        assert!(batches(&tokens, 4, 0, 0).is_err());
        assert!(heldout_windows(&tokens, 4, 2, Some(0)).is_err());
    }

    #[test]
    fn heldout_windows_are_fixed_non_overlapping_and_drop_the_partial_tail() {
        // 23 tokens, seq_len 5: (23 - 1) / 5 = 4 windows at 0, 5, 10, 15.
        let tokens = positions(23);
        let w = heldout_windows(&tokens, 5, 3, None).unwrap();
        assert_eq!(w.len(), 2, "4 windows in batches of 3 -> 3 + 1");
        assert_eq!(w[0].0.size(), vec![3, 5]);
        assert_eq!(w[1].0.size(), vec![1, 5]);
        let firsts: Vec<i64> = w
            .iter()
            .flat_map(|(x, _)| to_vec2(x).into_iter().map(|r| r[0]))
            .collect();
        assert_eq!(firsts, vec![0, 5, 10, 15]);
        let (_, y_last) = &w[1];
        assert_eq!(to_vec2(y_last)[0], vec![16, 17, 18, 19, 20]);

        let limited = heldout_windows(&tokens, 5, 3, Some(2)).unwrap();
        assert_eq!(limited.len(), 1);
        assert_eq!(limited[0].0.size(), vec![2, 5]);
    }
}
