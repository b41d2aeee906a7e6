//! AVX-512 VNNI prefill GEMM: 32 output rows in the accumulator lanes.
//!
//! The GEMV tile (`avx512.rs`) puts 64 *columns* in a register and ends
//! every (token, row) with a horizontal `_mm512_reduce_add_epi32`; at
//! `K = 256` that reduction costs more than the 64 `vpdpbusd`s it finishes,
//! and the 2-bit codes are re-unpacked for every 4 tokens. Prefill has many
//! tokens per weight, so here the classic GEMM layout is used instead:
//!
//! * a *panel* of [`PANEL_ROWS`] = 32 output rows is unpacked once per call
//!   (per token block) into a scratch in `vpdpbusd` order: for each k-quad
//!   (4 consecutive columns), two registers of 16 rows x 4 code bytes
//!   (`q + 1`), built from the compute layout with a shift, a mask and a
//!   16 x 16 dword transpose;
//! * the micro-kernel keeps 2 x [`GEMM_TILE_TOKENS`] accumulators (one lane
//!   per output row, so no horizontal reduction), and for each k-quad
//!   broadcasts each token's 4 activation bytes into
//!   `vpdpbusd(acc, codes, x_broadcast)`;
//! * the per-token `sum x` is subtracted once at the end (codes are `q+1`).
//!
//! Exactness is the GEMV's: every lane sums `(q+1) x` over at most
//! `k_pad` columns, `|.| <= 2 * 128 * k_pad < i32::MAX` by `MAX_IN_FEATURES`.

#[cfg(target_arch = "x86_64")]
use super::matrix::{Block64, K_BLOCK, ROW_GROUP};

/// Output rows of one panel (two 16-lane registers per k-quad).
pub const PANEL_ROWS: usize = 32;
/// Row groups of one panel.
pub const PANEL_GROUPS: usize = PANEL_ROWS / 4;
/// Tokens of one micro-kernel call: 2 x 12 accumulators, two code
/// registers and a broadcast fit the 32 zmm registers. Not yet swept
/// against other sizes by measurement (docs/perf.md says so).
pub const GEMM_TILE_TOKENS: usize = 12;

/// Scratch blocks a panel of `k_blocks` K blocks needs: 64 k-quads per
/// block, two 64-byte registers per k-quad.
pub fn panel_blocks(k_blocks: usize) -> usize {
    k_blocks * (K_BLOCK_QUADS * 2)
}

/// k-quads (4-column groups) per K block.
const K_BLOCK_QUADS: usize = 64;

/// Unpacks row groups `weights` (`groups` x `k_blocks` x 4 blocks, in the
/// compute layout, `groups <= PANEL_GROUPS`) into `panel` in `vpdpbusd`
/// order; rows past `groups * 4` get code 1 (weight 0).
///
/// # Safety
///
/// The CPU must support avx512f (`KernelPath::Avx512Vnni.is_supported()`).
// pot10: allow(R9) `#[target_feature]` SIMD entry point, unsafe by language rule; callers check the path, and it asserts every bound its pointer loop uses
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn unpack_panel(
    weights: &[Block64],
    groups: usize,
    k_blocks: usize,
    panel: &mut [Block64],
) {
    use std::arch::x86_64::*;
    assert!(
        (1..=PANEL_GROUPS).contains(&groups) && weights.len() == groups * k_blocks * ROW_GROUP,
        "avx512 panel: {groups} groups of {k_blocks} blocks do not match {} weight blocks; please report this bug",
        weights.len()
    );
    assert!(
        panel.len() >= panel_blocks(k_blocks),
        "avx512 panel: scratch too small; please report this bug"
    );
    let mask = _mm512_set1_epi8(3);
    let zero_weight = _mm512_set1_epi8(0b0101_0101);
    for b in 0..k_blocks {
        for half in 0..2 {
            let raw: [__m512i; 16] = std::array::from_fn(|i| {
                let row = half * 16 + i;
                let (group, r) = (row / ROW_GROUP, row % ROW_GROUP);
                if group < groups {
                    let block = &weights[(group * k_blocks + b) * ROW_GROUP + r];
                    // SAFETY: a Block64 is 64 aligned bytes.
                    // pot10: allow(R9) aligned load of one borrowed 64-byte block
                    unsafe { _mm512_load_si512(block.0.as_ptr().cast()) }
                } else {
                    zero_weight
                }
            });
            for s in 0..4 {
                let codes = raw.map(|v| _mm512_and_si512(_mm512_srlv_epi16(v, shift(s)), mask));
                let quads = transpose16(codes);
                for (q, quad) in quads.into_iter().enumerate() {
                    let slot = ((b * K_BLOCK_QUADS + s * 16 + q) * 2 + half) * 64;
                    debug_assert!(slot / 64 < panel.len());
                    let dst = &mut panel[slot / 64];
                    // SAFETY: a Block64 is 64 aligned bytes, borrowed mutably.
                    // pot10: allow(R9) aligned store into one borrowed 64-byte block
                    unsafe { _mm512_store_si512(dst.0.as_mut_ptr().cast(), quad) };
                }
            }
        }
    }
    const { assert!(K_BLOCK == K_BLOCK_QUADS * 4) };
}

/// The shift count `2s` in every 16-bit lane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
fn shift(s: usize) -> std::arch::x86_64::__m512i {
    std::arch::x86_64::_mm512_set1_epi16(2 * s as i16)
}

/// 16 x 16 transpose of 32-bit elements: `out[c]` lane `r` = `v[r]` lane `c`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn transpose16(v: [std::arch::x86_64::__m512i; 16]) -> [std::arch::x86_64::__m512i; 16] {
    use std::arch::x86_64::*;
    // Within 128-bit lanes: a[2i], a[2i+1] interleave rows 2i, 2i+1.
    let a: [__m512i; 16] = std::array::from_fn(|n| {
        let (x, y) = (v[n & !1], v[n | 1]);
        if n % 2 == 0 {
            _mm512_unpacklo_epi32(x, y)
        } else {
            _mm512_unpackhi_epi32(x, y)
        }
    });
    // b[4i + j], lane L = rows 4i..4i+4 of column 4L + j.
    let b: [__m512i; 16] = std::array::from_fn(|n| {
        let (i, j) = (n / 4, n % 4);
        let (x, y) = (a[4 * i + j / 2], a[4 * i + j / 2 + 2]);
        if j % 2 == 0 {
            _mm512_unpacklo_epi64(x, y)
        } else {
            _mm512_unpackhi_epi64(x, y)
        }
    });
    // 4 x 4 transpose of 128-bit lanes over b[j], b[4+j], b[8+j], b[12+j].
    let mut out = [_mm512_setzero_si512(); 16];
    for j in 0..4 {
        let (x0, x1, x2, x3) = (b[j], b[4 + j], b[8 + j], b[12 + j]);
        let c0 = _mm512_shuffle_i32x4::<0b01_00_01_00>(x0, x1);
        let c1 = _mm512_shuffle_i32x4::<0b11_10_11_10>(x0, x1);
        let c2 = _mm512_shuffle_i32x4::<0b01_00_01_00>(x2, x3);
        let c3 = _mm512_shuffle_i32x4::<0b11_10_11_10>(x2, x3);
        out[j] = _mm512_shuffle_i32x4::<0b10_00_10_00>(c0, c2);
        out[4 + j] = _mm512_shuffle_i32x4::<0b11_01_11_01>(c0, c2);
        out[8 + j] = _mm512_shuffle_i32x4::<0b10_00_10_00>(c1, c3);
        out[12 + j] = _mm512_shuffle_i32x4::<0b11_01_11_01>(c1, c3);
    }
    out
}

/// `acc[t][row] = sum_k (q[row, k] + 1) * x[t, k]` for the panel's 32 rows
/// and `NT` tokens whose rows start at `x` (`stride` bytes apart), over
/// `quads` k-quads.
///
/// # Safety
///
/// The CPU must support avx512f, avx512bw and avx512vnni; `panel` must hold
/// `2 * quads` blocks and each of the `NT` token rows `4 * quads` bytes.
// pot10: allow(R9) SIMD micro-kernel on raw pointers (broadcast loads have no safe API); `gemm_tile` asserts the bounds first
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn micro<const NT: usize>(
    panel: *const Block64,
    quads: usize,
    x: *const u8,
    stride: usize,
    acc: &mut [[i32; PANEL_ROWS]],
) {
    use std::arch::x86_64::*;
    let mut sums = [[_mm512_setzero_si512(); 2]; NT];
    for kq in 0..quads {
        // SAFETY (loop body): the caller proved 2 * quads panel blocks and
        // NT rows of 4 * quads bytes; unaligned 4-byte reads are allowed.
        // pot10: allow(R9) loads inside the bounds `gemm_tile` asserts (see SAFETY)
        let (w0, w1) = unsafe {
            (
                _mm512_load_si512(panel.add(2 * kq).cast()),
                _mm512_load_si512(panel.add(2 * kq + 1).cast()),
            )
        };
        for (t, sum) in sums.iter_mut().enumerate() {
            // pot10: allow(R9) loads inside the bounds `gemm_tile` asserts (see SAFETY)
            let word = unsafe { x.add(t * stride + 4 * kq).cast::<i32>().read_unaligned() };
            let xb = _mm512_set1_epi32(word);
            sum[0] = _mm512_dpbusd_epi32(sum[0], w0, xb);
            sum[1] = _mm512_dpbusd_epi32(sum[1], w1, xb);
        }
    }
    for (t, sum) in sums.iter().enumerate() {
        let (lo, hi) = acc[t].split_at_mut(16);
        // SAFETY: each half is 16 i32s; unaligned stores are allowed.
        // pot10: allow(R9) stores 16 i32 lanes into a borrowed 16-element slice
        unsafe {
            _mm512_storeu_si512(lo.as_mut_ptr().cast(), sum[0]);
            _mm512_storeu_si512(hi.as_mut_ptr().cast(), sum[1]);
        }
    }
}

/// Exact `acc[t][row] = sum_k q[row, k] x_q[t0 + t, k]` for the panel's 32
/// rows and `tokens <= GEMM_TILE_TOKENS` token rows of `chunks` (rows of
/// `stride_blocks` blocks), `row_sums[t]` being each row's `sum x`.
///
/// # Safety
///
/// The CPU must support avx512f, avx512bw and avx512vnni.
// pot10: allow(R9) `#[target_feature]` SIMD entry point, unsafe by language rule; it asserts every bound the micro-kernel's pointer loop uses
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn gemm_tile(
    panel: &[Block64],
    chunks: &[Block64],
    stride_blocks: usize,
    (t0, tokens): (usize, usize),
    row_sums: &[i32],
    acc: &mut [[i32; PANEL_ROWS]; GEMM_TILE_TOKENS],
) {
    let quads = stride_blocks * 16;
    assert!(
        panel.len() >= 2 * quads,
        "avx512 gemm: panel shorter than the rows; please report this bug"
    );
    assert!(
        (1..=GEMM_TILE_TOKENS).contains(&tokens)
            && (t0 + tokens) * stride_blocks <= chunks.len()
            && t0 + tokens <= row_sums.len(),
        "avx512 gemm: token rows {t0}..{} past the activations; please report this bug",
        t0 + tokens
    );
    // SAFETY: in bounds by the assert.
    // pot10: allow(R9) pointer offset inside the bounds asserted above
    let x = unsafe { chunks.as_ptr().add(t0 * stride_blocks).cast::<u8>() };
    let (p, stride) = (panel.as_ptr(), stride_blocks * 64);
    macro_rules! dispatch {
        ($($n:literal)*) => {
            match tokens {
                // SAFETY: the caller guarantees the features, the asserts the bounds.
                // pot10: allow(R9) the micro-kernel reads only inside the bounds asserted above
                $($n => unsafe { micro::<$n>(p, quads, x, stride, &mut acc[..]) },)*
                _ => unreachable!("tokens checked above"),
            }
        };
    }
    dispatch!(1 2 3 4 5 6 7 8 9 10 11 12);
    for (t, row) in acc.iter_mut().enumerate().take(tokens) {
        let row_sum = row_sums[t0 + t];
        for value in row.iter_mut() {
            // sum (q+1) x - sum x = sum q x, exact in i32.
            *value -= row_sum;
        }
    }
}
