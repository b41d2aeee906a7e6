//! AVX-512 VNNI kernel: `vpdpbusd` on 64 unsigned 2-bit codes per register.
//!
//! Per 64-byte weight block, `(v >> 2s) & 3` gives 64 codes `q + 1` for
//! columns `64s..64s+64`, and `vpdpbusd` multiplies them with 64 int8
//! activations, summing groups of four products into 16 i32 lanes without
//! saturation. A tile is 4 output rows x up to 4 tokens (16 accumulators,
//! well inside the 32 zmm registers), so each unpacked code vector feeds
//! up to 4 dot products. Exactness: lanes hold at most `2 * 128 * k_pad`
//! in magnitude, below `i32::MAX` by the `MAX_IN_FEATURES` check.

#[cfg(target_arch = "x86_64")]
use super::matrix::{Block64, MAX_TILE_TOKENS};
use super::matrix::{TileAcc, ROW_GROUP};
use super::quant::QuantizedActivations;

/// Exact `sum_k q[4g + r, k] * x_q[t0 + t, k]` for one row group.
///
/// # Safety
///
/// The CPU must support avx512f, avx512bw and avx512vnni
/// (`KernelPath::Avx512Vnni.is_supported()`).
// pot10: allow(R9) `#[target_feature]` SIMD entry point, unsafe by language rule; `run_groups` calls it only on a path `ensure_supported()` accepted, and it asserts every bound its pointer loop uses
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn group_dot(
    weights: &[Block64],
    acts: &QuantizedActivations,
    t0: usize,
    tokens: usize,
    acc: &mut TileAcc,
) {
    let k_blocks = acts.chunks_per_row / 4;
    // Bounds for the raw-pointer loop below; cheap, once per tile.
    assert_eq!(
        weights.len(),
        k_blocks * ROW_GROUP,
        "avx512 tile: weight blocks do not match the activation row length; please report this bug"
    );
    assert!(
        (1..=MAX_TILE_TOKENS).contains(&tokens),
        "avx512 tile: {tokens} tokens, expected 1..={MAX_TILE_TOKENS}; please report this bug"
    );
    assert!(
        (t0 + tokens) * acts.chunks_per_row <= acts.chunks.len(),
        "avx512 tile: token rows {t0}..{} past the activations; please report this bug",
        t0 + tokens
    );
    let w = weights.as_ptr();
    // SAFETY: t0 * chunks_per_row <= chunks.len() by the assert.
    // pot10: allow(R9) pointer offsets and SIMD loads stay inside the bounds `group_dot` asserts before the call (see SAFETY)
    let x = unsafe { acts.chunks.as_ptr().add(t0 * acts.chunks_per_row) };
    let stride = acts.chunks_per_row;
    // SAFETY: the caller guarantees the CPU features; the assert proves
    // every block the tile reads (k_blocks * 4 weight blocks, tokens rows of
    // stride chunks) lies inside the borrowed slices.
    // pot10: allow(R9) pointer offsets and SIMD loads stay inside the bounds `group_dot` asserts before the call (see SAFETY)
    unsafe {
        match tokens {
            1 => tile::<1>(w, k_blocks, x, stride, acc),
            2 => tile::<2>(w, k_blocks, x, stride, acc),
            3 => tile::<3>(w, k_blocks, x, stride, acc),
            _ => tile::<4>(w, k_blocks, x, stride, acc),
        }
    }
    for (t, acc_row) in acc.iter_mut().enumerate().take(tokens) {
        let row_sum = acts.row_sums[t0 + t];
        for value in acc_row.iter_mut() {
            // sum (q+1) x - sum x = sum q x, exact in i32.
            *value -= row_sum;
        }
    }
}

// pot10: allow(R9) stub with the x86_64 signature so the dispatch compiles everywhere; its body is `unreachable!` and touches no pointer
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn group_dot(
    _weights: &[super::matrix::Block64],
    _acts: &QuantizedActivations,
    _t0: usize,
    _tokens: usize,
    _acc: &mut TileAcc,
) {
    unreachable!("KernelPath::Avx512Vnni is never supported off x86_64");
}

// pot10: allow(R9) aligned SIMD loads need raw pointers (std has no safe API for them); `group_dot` asserts the block and chunk bounds first
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile<const NT: usize>(
    w: *const Block64,
    k_blocks: usize,
    x: *const Block64,
    stride: usize,
    acc: &mut TileAcc,
) {
    use std::arch::x86_64::*;
    // `_mm512_load_si512` is an aligned load: both streams must be Block64s,
    // and a token row holds the four 64-byte chunks of every k block.
    debug_assert!(
        !w.is_null() && w.is_aligned(),
        "avx512 tile: bad weight pointer"
    );
    debug_assert!(
        !x.is_null() && x.is_aligned(),
        "avx512 tile: bad activation pointer"
    );
    debug_assert_eq!(stride, k_blocks * 4, "avx512 tile: row stride");
    let mask = _mm512_set1_epi8(3);
    // With one or two tokens, alternate two accumulator sets by shift parity
    // so the dpbusd dependency chains are short enough to keep the port busy.
    let split = NT <= 2;
    let mut sums = [[_mm512_setzero_si512(); ROW_GROUP]; 8];
    for b in 0..k_blocks {
        // SAFETY (whole loop body): `group_dot` checked that blocks
        // b * 4 .. b * 4 + 4 of `w` and chunks t * stride + 4b + s (s < 4)
        // of `x` are in bounds; Block64 is 64-byte aligned.
        // pot10: allow(R9) pointer offsets and SIMD loads stay inside the bounds `group_dot` asserts before the call (see SAFETY)
        let wb = unsafe { w.add(b * ROW_GROUP) };
        let raw: [__m512i; ROW_GROUP] =
            // pot10: allow(R9) pointer offsets and SIMD loads stay inside the bounds `group_dot` asserts before the call (see SAFETY)
            std::array::from_fn(|r| unsafe { _mm512_load_si512(wb.add(r).cast()) });
        macro_rules! step {
            ($s:expr, $codes:expr) => {{
                let codes: [__m512i; ROW_GROUP] = $codes;
                for t in 0..NT {
                    let xv = unsafe { _mm512_load_si512(x.add(t * stride + b * 4 + $s).cast()) };
                    let set = if split { t * 2 + ($s & 1) } else { t };
                    for r in 0..ROW_GROUP {
                        sums[set][r] = _mm512_dpbusd_epi32(sums[set][r], codes[r], xv);
                    }
                }
            }};
        }
        step!(0, raw.map(|v| _mm512_and_si512(v, mask)));
        step!(
            1,
            raw.map(|v| _mm512_and_si512(_mm512_srli_epi16::<2>(v), mask))
        );
        step!(
            2,
            raw.map(|v| _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask))
        );
        step!(
            3,
            raw.map(|v| _mm512_and_si512(_mm512_srli_epi16::<6>(v), mask))
        );
    }
    reduce_tile::<NT>(&sums, split, acc);
}

/// Horizontal sums of a tile's accumulators into `acc[t][r]` (with two
/// accumulator sets per token when `split`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn reduce_tile<const NT: usize>(
    sums: &[[std::arch::x86_64::__m512i; ROW_GROUP]; 8],
    split: bool,
    acc: &mut TileAcc,
) {
    use std::arch::x86_64::*;
    debug_assert!((1..=MAX_TILE_TOKENS).contains(&NT), "{NT} tokens");
    debug_assert!(
        !split || NT <= 2,
        "two sets per token fit 8 only up to 2 tokens"
    );
    for t in 0..NT {
        for r in 0..ROW_GROUP {
            let total = if split {
                _mm512_add_epi32(sums[t * 2][r], sums[t * 2 + 1][r])
            } else {
                sums[t][r]
            };
            acc[t][r] = _mm512_reduce_add_epi32(total);
        }
    }
}
