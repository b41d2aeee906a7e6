//! AVX2 kernel: `vpmaddubsw` on 32 unsigned 2-bit codes per register.
//!
//! For CPUs without AVX-512 VNNI. Each 64-byte weight block is two 32-byte
//! halves; `(v >> 2s) & 3` gives 32 codes `q + 1` for columns
//! `64s + 32h ..`, `vpmaddubsw` multiplies them with int8 activations into
//! i16 pair sums (|.| <= 2 * 2 * 128 = 512, so never saturating), the eight
//! products of a block are added in i16 (|.| <= 4096) and widened once per
//! block with `vpmaddwd` by ones. One token per call (16 ymm registers hold
//! the 8 activation vectors of a block, 4 accumulators and temporaries).

#[cfg(target_arch = "x86_64")]
use super::matrix::{Block64, MAX_TILE_TOKENS};
use super::matrix::{TileAcc, ROW_GROUP};
use super::quant::QuantizedActivations;

/// Exact `sum_k q[4g + r, k] * x_q[t0 + t, k]` for one row group.
///
/// # Safety
///
/// The CPU must support avx2 (`KernelPath::Avx2.is_supported()`).
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
    assert_eq!(
        weights.len(),
        k_blocks * ROW_GROUP,
        "avx2 tile: weight blocks do not match the activation row length; please report this bug"
    );
    assert!(
        (1..=MAX_TILE_TOKENS).contains(&tokens),
        "avx2 tile: {tokens} tokens, expected 1..={MAX_TILE_TOKENS}; please report this bug"
    );
    assert!(
        (t0 + tokens) * acts.chunks_per_row <= acts.chunks.len(),
        "avx2 tile: token rows {t0}..{} past the activations; please report this bug",
        t0 + tokens
    );
    for (t, acc_row) in acc.iter_mut().enumerate().take(tokens) {
        let row = t0 + t;
        // SAFETY: row < rows by the assert, so the offset is in bounds.
        // pot10: allow(R9) pointer offsets and SIMD loads stay inside the bounds `group_dot` asserts before the call (see SAFETY)
        let x = unsafe { acts.chunks.as_ptr().add(row * acts.chunks_per_row) };
        // SAFETY: the caller guarantees avx2; the assert proves the
        // k_blocks * 4 weight blocks and k_blocks * 4 chunks of row `row` exist.
        // pot10: allow(R9) pointer offsets and SIMD loads stay inside the bounds `group_dot` asserts before the call (see SAFETY)
        *acc_row = unsafe { tile(weights.as_ptr(), k_blocks, x) };
        for value in acc_row.iter_mut() {
            // sum (q+1) x - sum x = sum q x, exact in i32.
            *value -= acts.row_sums[row];
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
    unreachable!("KernelPath::Avx2 is never supported off x86_64");
}

// pot10: allow(R9) aligned SIMD loads need raw pointers (std has no safe API for them); `group_dot` asserts the block and chunk bounds first
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn tile(w: *const Block64, k_blocks: usize, x: *const Block64) -> [i32; ROW_GROUP] {
    use std::arch::x86_64::*;
    // `_mm256_load_si256` is an aligned load: both streams must be Block64s.
    debug_assert!(
        !w.is_null() && w.is_aligned(),
        "avx2 tile: bad weight pointer"
    );
    debug_assert!(
        !x.is_null() && x.is_aligned(),
        "avx2 tile: bad activation pointer"
    );
    let mask = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    let mut sums = [_mm256_setzero_si256(); ROW_GROUP];
    for b in 0..k_blocks {
        // SAFETY (loop body): `group_dot` checked that weight blocks
        // 4b..4b+4 and activation chunks 4b..4b+4 are in bounds; each
        // Block64 is 64 bytes, so offsets 0 and 32 stay inside it.
        // pot10: allow(R9) pointer offsets and SIMD loads stay inside the bounds `group_dot` asserts before the call (see SAFETY)
        let xs: [__m256i; 8] = std::array::from_fn(|i| unsafe {
            let chunk = x.add(b * 4 + i / 2).cast::<u8>();
            _mm256_load_si256(chunk.add(32 * (i % 2)).cast())
        });
        for (r, sum) in sums.iter_mut().enumerate() {
            // pot10: allow(R9) pointer offsets and SIMD loads stay inside the bounds `group_dot` asserts before the call (see SAFETY)
            let block = unsafe { w.add(b * ROW_GROUP + r).cast::<u8>() };
            // pot10: allow(R9) pointer offsets and SIMD loads stay inside the bounds `group_dot` asserts before the call (see SAFETY)
            let lo = unsafe { _mm256_load_si256(block.cast()) };
            // pot10: allow(R9) pointer offsets and SIMD loads stay inside the bounds `group_dot` asserts before the call (see SAFETY)
            let hi = unsafe { _mm256_load_si256(block.add(32).cast()) };
            let dot = |codes_lo: __m256i, codes_hi: __m256i, s: usize| {
                _mm256_add_epi16(
                    _mm256_maddubs_epi16(_mm256_and_si256(codes_lo, mask), xs[2 * s]),
                    _mm256_maddubs_epi16(_mm256_and_si256(codes_hi, mask), xs[2 * s + 1]),
                )
            };
            let p0 = dot(lo, hi, 0);
            let p1 = dot(_mm256_srli_epi16::<2>(lo), _mm256_srli_epi16::<2>(hi), 1);
            let p2 = dot(_mm256_srli_epi16::<4>(lo), _mm256_srli_epi16::<4>(hi), 2);
            let p3 = dot(_mm256_srli_epi16::<6>(lo), _mm256_srli_epi16::<6>(hi), 3);
            let block_sum = _mm256_add_epi16(_mm256_add_epi16(p0, p1), _mm256_add_epi16(p2, p3));
            *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(block_sum, ones));
        }
    }
    sums.map(|v| {
        let folded = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let folded = _mm_add_epi32(folded, _mm_shuffle_epi32::<0b01_00_11_10>(folded));
        let folded = _mm_add_epi32(folded, _mm_shuffle_epi32::<0b10_11_00_01>(folded));
        _mm_cvtsi128_si32(folded)
    })
}
