//! Portable reference kernel: the definition the SIMD paths must equal.
//!
//! It decodes each code as `q = code - 1` and sums `q * x` directly (no
//! `+1` offset trick), so an error in the SIMD paths' offset correction
//! cannot hide behind the same mistake here.

use super::matrix::{Block64, TileAcc, ROW_GROUP};
use super::quant::QuantizedActivations;

/// Exact `sum_k q[4g + r, k] * x_q[t0 + t, k]` for one row group.
///
/// `weights` is the group's `k_blocks * ROW_GROUP` blocks; results for
/// `t < tokens` land in `acc[t][r]`.
pub(crate) fn group_dot(
    weights: &[Block64],
    acts: &QuantizedActivations,
    t0: usize,
    tokens: usize,
    acc: &mut TileAcc,
) {
    debug_assert!(
        weights.len().is_multiple_of(ROW_GROUP),
        "scalar tile: a row group has {ROW_GROUP} rows of blocks"
    );
    debug_assert!(
        tokens <= acc.len() && t0 + tokens <= acts.rows,
        "scalar tile: token rows {t0}..{} past the activations",
        t0 + tokens
    );
    for (t, acc_row) in acc.iter_mut().enumerate().take(tokens) {
        let x = acts.row(t0 + t);
        for (r, slot) in acc_row.iter_mut().enumerate() {
            let mut sum = 0i32;
            for (block, x_block) in weights
                .iter()
                .skip(r)
                .step_by(ROW_GROUP)
                .zip(x.chunks_exact(256))
            {
                for (j, &byte) in block.0.iter().enumerate() {
                    for shift in 0..4 {
                        let q = ((byte >> (2 * shift)) & 3) as i32 - 1;
                        sum += q * x_block[64 * shift + j] as i32;
                    }
                }
            }
            *slot = sum;
        }
    }
}
