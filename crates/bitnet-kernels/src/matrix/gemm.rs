//! The prefill GEMM order: panels of 32 output rows x tiles of 12 tokens.
//!
//! Used for more than [`super::PREFILL_ROWS`] token rows on the AVX-512
//! VNNI path (see `avx512_gemm.rs` for why the GEMV tile is slow there).
//! Each panel is unpacked once per token block into a thread-local scratch
//! (a few KiB to tens of KiB, kept for the thread's life, so a call
//! allocates only the first time a thread sees a wider matrix), then every
//! token tile of the block runs over it. The integers equal the GEMV
//! order's exactly, so the outputs are bit-identical.

use std::cell::RefCell;

use super::epilogue::Epilogue;
use super::{Block64, OutputColumns, PackedTernaryMatrix, ROW_GROUP};
use crate::avx512_gemm::{
    gemm_tile, panel_blocks, unpack_panel, GEMM_TILE_TOKENS, PANEL_GROUPS, PANEL_ROWS,
};
use crate::quant::QuantizedActivations;

thread_local! {
    /// The unpacked panel of the matrix this thread is working on.
    static PANEL: RefCell<Vec<Block64>> = const { RefCell::new(Vec::new()) };
}

impl PackedTernaryMatrix {
    /// Token rows `b0..b1` of row groups `g0..g1` in the GEMM order; `path`
    /// must be `Avx512Vnni` and have passed `ensure_supported()`.
    pub(super) fn run_block_gemm<T>(
        &self,
        acts: &QuantizedActivations,
        (g0, g1): (usize, usize),
        (b0, b1): (usize, usize),
        sink: &mut impl OutputColumns<T>,
        finish: &impl Epilogue<T>,
    ) {
        debug_assert!(g0 <= g1 && g1 <= self.groups, "row groups {g0}..{g1}");
        debug_assert!(b0 < b1 && b1 <= acts.rows, "token rows {b0}..{b1}");
        PANEL.with_borrow_mut(|panel| {
            let needed = panel_blocks(self.k_blocks);
            if panel.len() < needed {
                // pot10: allow(R3) grows once per thread to the widest matrix it runs; later calls reuse it
                panel.resize(needed, Block64([0; 64]));
            }
            let group_len = self.k_blocks * ROW_GROUP;
            let mut acc = [[0i32; PANEL_ROWS]; GEMM_TILE_TOKENS];
            for p0 in (g0..g1).step_by(PANEL_GROUPS) {
                let p1 = (p0 + PANEL_GROUPS).min(g1);
                let weights = &self.blocks[p0 * group_len..p1 * group_len];
                // SAFETY: the caller checked the path, so the CPU has avx512.
                // pot10: allow(R9) SIMD unpack on a path `run` accepted with `ensure_supported()`
                unsafe { unpack_panel(weights, p1 - p0, self.k_blocks, panel) };
                let columns = (p1 - p0) * ROW_GROUP;
                for t0 in (b0..b1).step_by(GEMM_TILE_TOKENS) {
                    let tokens = (b1 - t0).min(GEMM_TILE_TOKENS);
                    // SAFETY: as above.
                    // pot10: allow(R9) SIMD tile on a path `run` accepted with `ensure_supported()`
                    unsafe {
                        gemm_tile(
                            panel,
                            &acts.chunks,
                            acts.chunks_per_row,
                            (t0, tokens),
                            &acts.row_sums,
                            &mut acc,
                        )
                    };
                    for (t, values) in acc.iter().enumerate().take(tokens) {
                        let row = t0 + t;
                        let base = (p0 - g0) * ROW_GROUP;
                        let slots = sink.run_mut(row, base, columns);
                        finish.finish_run(row, values, slots);
                    }
                }
            }
        });
    }
}
