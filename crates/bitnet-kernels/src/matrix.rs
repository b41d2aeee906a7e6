//! The compute layout of a ternary weight and the threaded matmul driver.
//!
//! # Compute layout
//!
//! The storage packing (see [`super::storage`]) puts rows four apart into one
//! byte, which no SIMD loop can use directly. At load the weight is repacked
//! once into an "I2 interleaved" layout in the spirit of bitnet.cpp's I2_S:
//!
//! * output rows are grouped by [`ROW_GROUP`] = 4 (padded with zero weights),
//!   the input dimension is cut into blocks of [`K_BLOCK`] = 256 (padded with
//!   zero weights);
//! * each (group, block, row) is one 64-byte, 64-byte-aligned [`Block64`],
//!   stored group-major then block then row: `blocks[(g * k_blocks + b) * 4 + r]`,
//!   so a kernel streams the four rows of a group through memory contiguously;
//! * byte `j` of a block holds the codes `q + 1` in `{0, 1, 2}` of columns
//!   `b * 256 + 64 * s + j` at bits `2s..2s+1`, `s` in `0..4`.
//!
//! One `(v >> 2s) & 3` on a 64-byte (AVX-512) or 32-byte (AVX2) register
//! then yields 64 (or 32) unsigned codes for *consecutive* columns, which
//! meet the int8 activations in natural order in `vpdpbusd` (u8 x i8, summing
//! into i32) or `vpmaddubsw` (u8 x i8 -> i16 pairs). Because the codes are
//! `q + 1`, the kernels compute `sum (q+1) x = sum q x + sum x` and subtract
//! the per-token `sum x` once: exact, with no sign handling in the loop. The
//! padded weight size is 2 bits per weight, the same as storage.
//!
//! # Threading and tiling
//!
//! Row groups are split into contiguous ranges, one per thread, with the
//! thread count libtorch uses (`tch::get_num_threads`) so comparisons with
//! libtorch are fair. Inside a range the loop is group-outer, token-inner:
//! a group's weights (4 x in/4 bytes) stay in L1 across token tiles, so
//! batch 32 reads the weights from memory once.
//!
//! Prefill (more than [`PREFILL_ROWS`] token rows) is a GEMM, and there the
//! group-outer order re-reads every token's int8 activations once per row
//! group: 512 tokens of 2048 columns are 1 MiB, streamed from L3 for each of
//! `out/4` groups. So beyond that the tokens are cut into blocks of about
//! [`TOKEN_BLOCK_BYTES`] of activations (they stay in L2) and the loop is
//! token-block-outer, group-middle, 4-token-tile-inner: each block's
//! activations are read from L2 by every group of the range, and each
//! group's weights (a few KiB) are read once per block. The inner kernels
//! and their integer arithmetic are the same, so the result is bit-identical
//! to the GEMV order.

use std::sync::{Arc, Mutex};

use super::quant::{check_buffer_len, quantize_activations, QuantizedActivations};
use super::storage::{check_storage_size, storage_rows};
use super::{avx2, avx512, scalar, KernelError, KernelPath};

/// Input columns per compute block (64 bytes of 2-bit codes).
pub const K_BLOCK: usize = 256;
/// Output rows processed together and interleaved in the layout.
pub const ROW_GROUP: usize = 4;
/// Largest number of token rows one kernel call processes together.
pub const MAX_TILE_TOKENS: usize = 4;
/// Largest supported `in_features`: the SIMD paths accumulate
/// `sum (q+1) x` with `|.| <= 2 * 128 * k_pad`, which must fit an `i32`.
pub const MAX_IN_FEATURES: usize = (i32::MAX as usize / 256) / K_BLOCK * K_BLOCK;
/// Above this many token rows the cache-blocked prefill order is used.
pub const PREFILL_ROWS: usize = 32;
/// Activation bytes per token block of the prefill order: half of a 1 MiB
/// L2 (Zen 4, Sapphire Rapids: 1-2 MiB per core), leaving room for weights.
pub const TOKEN_BLOCK_BYTES: usize = 512 * 1024;

/// Token rows per block of the prefill order for `in_features` columns:
/// a multiple of the 4-token tile, at least one tile.
pub fn token_block_rows(in_features: usize) -> usize {
    let rows = TOKEN_BLOCK_BYTES / in_features.max(1);
    (rows / MAX_TILE_TOKENS).max(1) * MAX_TILE_TOKENS
}

/// Below this many (64-byte block x token) units a call runs on the calling
/// thread: waking the pool (a few microseconds) would cost more than the work.
const MIN_PARALLEL_UNITS: usize = 2048;
/// Work chunks per thread (dynamic load balancing on a shared machine).
const CHUNKS_PER_THREAD: usize = 8;

/// 64 bytes, 64-byte aligned: one cache line and one AVX-512 register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct Block64(pub [u8; 64]);

/// The bytes of a run of blocks.
pub(crate) fn blocks_as_bytes(blocks: &[Block64]) -> &[u8] {
    // SAFETY: Block64 is repr(C) around [u8; 64] with size 64 (no padding),
    // so a slice of n blocks is n * 64 initialised bytes, borrowed immutably.
    // pot10: allow(R9) views repr(C, align(64)) `[u8; 64]` blocks as their bytes; std has no safe cast for it and the length is `size_of_val`
    unsafe {
        std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), std::mem::size_of_val(blocks))
    }
}

/// The bytes of a run of blocks, mutably.
pub(crate) fn blocks_as_bytes_mut(blocks: &mut [Block64]) -> &mut [u8] {
    // SAFETY: as in `blocks_as_bytes`; the unique borrow is passed on, and
    // every byte pattern is a valid Block64.
    // pot10: allow(R9) views repr(C, align(64)) `[u8; 64]` blocks as their bytes; std has no safe cast for it and the length is `size_of_val`
    unsafe {
        std::slice::from_raw_parts_mut(
            blocks.as_mut_ptr().cast::<u8>(),
            std::mem::size_of_val(blocks),
        )
    }
}

/// Accumulators of one kernel call: `[token][row in group]`.
pub(crate) type TileAcc = [[i32; ROW_GROUP]; MAX_TILE_TOKENS];

/// A ternary weight `[out_features, in_features]` in the compute layout.
#[derive(Debug, Clone)]
pub struct PackedTernaryMatrix {
    blocks: Vec<Block64>,
    out_features: usize,
    in_features: usize,
    k_blocks: usize,
    groups: usize,
    w_scale: f32,
}

impl PackedTernaryMatrix {
    /// Repacks an HF BitNet storage tensor (`u8 [ceil(out/4), in]`) into the
    /// compute layout, validating its size, codes and scale.
    pub fn from_storage(
        packed: &[u8],
        out_features: usize,
        in_features: usize,
        w_scale: f32,
    ) -> Result<Self, KernelError> {
        if out_features == 0 || in_features == 0 || in_features > MAX_IN_FEATURES {
            return Err(KernelError::Dimensions {
                out_features,
                in_features,
                max_in_features: MAX_IN_FEATURES,
            });
        }
        if !(w_scale.is_finite() && w_scale > 0.0) {
            return Err(KernelError::WeightScale { w_scale });
        }
        check_storage_size(packed, out_features, in_features)?;
        let k_blocks = in_features.div_ceil(K_BLOCK);
        let groups = out_features.div_ceil(ROW_GROUP);
        // The layout pads; it never truncates.
        debug_assert!(k_blocks * K_BLOCK >= in_features);
        debug_assert!(groups * ROW_GROUP >= out_features);
        // Code 1 is weight 0: padding rows and columns contribute nothing.
        let mut blocks = vec![Block64([0b0101_0101; 64]); groups * k_blocks * ROW_GROUP];
        let row_dim = storage_rows(out_features);
        for row in 0..out_features {
            let (slot, packed_row) = (row / row_dim, row % row_dim);
            let source = &packed[packed_row * in_features..(packed_row + 1) * in_features];
            let (group, row_in_group) = (row / ROW_GROUP, row % ROW_GROUP);
            for (column, &byte) in source.iter().enumerate() {
                let code = (byte >> (2 * slot)) & 3;
                if code == 3 {
                    return Err(KernelError::InvalidCode {
                        byte_index: packed_row * in_features + column,
                        row,
                        column,
                    });
                }
                let (block, within) = (column / K_BLOCK, column % K_BLOCK);
                let (shift, byte_index) = (within / 64, within % 64);
                let target = &mut blocks[(group * k_blocks + block) * ROW_GROUP + row_in_group];
                let cleared = target.0[byte_index] & !(3 << (2 * shift));
                target.0[byte_index] = cleared | (code << (2 * shift));
            }
        }
        Ok(PackedTernaryMatrix {
            blocks,
            out_features,
            in_features,
            k_blocks,
            groups,
            w_scale,
        })
    }

    /// Output features (rows of `W`).
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// Input features (columns of `W`).
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// The per-tensor weight scale.
    pub fn w_scale(&self) -> f32 {
        self.w_scale
    }

    /// Bytes of packed weights a matmul streams (the compute layout,
    /// including padding): the numerator of "achieved weight bandwidth".
    pub fn weight_bytes(&self) -> usize {
        self.blocks.len() * std::mem::size_of::<Block64>()
    }

    /// `out[r, o] = (sum_k W_q[o, k] x_q[r, k]) * w_scale / act_scale[r]`
    /// for `x` `[rows, in_features]`, `out` `[rows, out_features]`, using the
    /// path selected by [`KernelPath::selected`]. Rows whose input holds NaN
    /// or infinity produce NaN. Any row count: up to [`PREFILL_ROWS`] a GEMV
    /// order, beyond it the cache-blocked prefill order (same results).
    pub fn matmul(&self, x: &[f32], rows: usize, out: &mut [f32]) -> Result<(), KernelError> {
        self.matmul_with(KernelPath::selected()?, x, rows, out)
    }

    /// [`Self::matmul`] on an explicit path.
    pub fn matmul_with(
        &self,
        path: KernelPath,
        x: &[f32],
        rows: usize,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        let acts = quantize_activations(x, rows, self.in_features)?;
        // Quantized in this matrix's padded layout, one row per token.
        debug_assert_eq!(acts.rows, rows);
        debug_assert_eq!(acts.chunks_per_row, self.k_blocks * (K_BLOCK / 64));
        self.matmul_quantized_with(path, &acts, out, parallel_threads(), MIN_PARALLEL_UNITS)
    }

    /// Integer accumulations `acc[r, o] = sum_k W_q[o, k] x_q[r, k]` on the
    /// selected path; all paths agree exactly, which the tests rely on.
    pub fn matmul_i32(&self, x_q: &[i8], rows: usize, acc: &mut [i32]) -> Result<(), KernelError> {
        self.matmul_i32_with(KernelPath::selected()?, x_q, rows, acc)
    }

    /// [`Self::matmul_i32`] on an explicit path.
    pub fn matmul_i32_with(
        &self,
        path: KernelPath,
        x_q: &[i8],
        rows: usize,
        acc: &mut [i32],
    ) -> Result<(), KernelError> {
        let acts = QuantizedActivations::from_quantized(x_q, rows, self.in_features)?;
        debug_assert_eq!(acts.rows, rows);
        debug_assert_eq!(acts.chunks_per_row, self.k_blocks * (K_BLOCK / 64));
        self.run(
            path,
            &acts,
            acc,
            parallel_threads(),
            MIN_PARALLEL_UNITS,
            |_, v| v,
        )
    }

    pub(crate) fn matmul_quantized_with(
        &self,
        path: KernelPath,
        acts: &QuantizedActivations,
        out: &mut [f32],
        threads: usize,
        min_parallel_units: usize,
    ) -> Result<(), KernelError> {
        let w_scale = self.w_scale;
        let scales = &acts.act_scales;
        // `from_storage` accepted only a finite positive scale, and the
        // activations carry one scale per row.
        debug_assert!(w_scale.is_finite() && w_scale > 0.0);
        debug_assert_eq!(scales.len(), acts.rows);
        self.run(path, acts, out, threads, min_parallel_units, |row, acc| {
            match scales[row] {
                // The BitLinear formula, in its operation order.
                Some(act_scale) => acc as f32 * w_scale / act_scale,
                None => f32::NAN,
            }
        })
    }

    /// Computes every output through `finish(row, exact_dot)` into `out`
    /// (`[rows, out_features]`), threads splitting the row groups.
    pub(crate) fn run<T: Send>(
        &self,
        path: KernelPath,
        acts: &QuantizedActivations,
        out: &mut [T],
        threads: usize,
        min_parallel_units: usize,
        finish: impl Fn(usize, i32) -> T + Sync,
    ) -> Result<(), KernelError> {
        let path = path.ensure_supported()?;
        let rows = acts.rows;
        check_buffer_len("output buffer", out.len(), rows, self.out_features)?;
        if acts.chunks_per_row != self.k_blocks * (K_BLOCK / 64) {
            // Only reachable through a crate-internal misuse.
            return Err(KernelError::BufferSize {
                what: "quantized activations (internal: please report this bug)",
                rows,
                columns: self.k_blocks * K_BLOCK,
                expected: rows * self.k_blocks * K_BLOCK,
                actual: acts.chunks.len() * 64,
            });
        }
        if rows == 0 {
            return Ok(());
        }
        let units = self.groups * self.k_blocks * ROW_GROUP * rows;
        let threads = if units < min_parallel_units {
            1
        } else {
            threads.clamp(1, self.groups)
        };
        debug_assert!((1..=self.groups).contains(&threads));

        // More chunks than threads, taken from a shared queue: when the
        // machine is busy and one thread is descheduled, the others finish
        // its share instead of the whole call waiting for it.
        let chunks = if threads == 1 {
            1
        } else {
            (threads * CHUNKS_PER_THREAD).min(self.groups)
        };
        let ranges: Vec<(usize, usize)> = (0..chunks)
            .map(|i| (self.groups * i / chunks, self.groups * (i + 1) / chunks))
            .collect();
        // Split each output row at the chunk boundaries so every chunk owns
        // disjoint `&mut` column slices of all rows.
        let mut tasks: Vec<(usize, usize, Vec<&mut [T]>)> = ranges
            .iter()
            .map(|&(g0, g1)| (g0, g1, Vec::with_capacity(rows)))
            .collect();
        for row_out in out.chunks_mut(self.out_features) {
            let mut rest = row_out;
            for (task, &(g0, g1)) in tasks.iter_mut().zip(&ranges) {
                let columns = (g1 * ROW_GROUP).min(self.out_features)
                    - (g0 * ROW_GROUP).min(self.out_features);
                let (mine, tail) = rest.split_at_mut(columns);
                task.2.push(mine);
                rest = tail;
            }
        }

        // Every output column belongs to exactly one chunk.
        debug_assert!(tasks.iter().all(|(_, _, columns)| columns.len() == rows));
        let work = |(g0, g1, mut columns): (usize, usize, Vec<&mut [T]>)| {
            self.run_groups(path, acts, g0, g1, &mut columns, &finish)
        };
        if threads == 1 {
            tasks.into_iter().for_each(work);
            return Ok(());
        }
        let queue = Mutex::new(tasks.into_iter());
        let drain = || loop {
            let task = queue
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .next();
            match task {
                Some(task) => work(task),
                None => break,
            }
        };
        let pool = worker_pool(threads - 1)?;
        pool.in_place_scope(|scope| {
            for _ in 1..threads {
                scope.spawn(|_| drain());
            }
            drain();
        });
        Ok(())
    }

    fn run_groups<T>(
        &self,
        path: KernelPath,
        acts: &QuantizedActivations,
        g0: usize,
        g1: usize,
        columns: &mut [&mut [T]],
        finish: &(impl Fn(usize, i32) -> T + Sync),
    ) {
        debug_assert!(g0 <= g1 && g1 <= self.groups, "row groups {g0}..{g1}");
        debug_assert_eq!(columns.len(), acts.rows, "one column slice per token row");
        // GEMV and small batches: one block of all tokens (group-outer).
        // Prefill: token blocks that stay in L2 (see the module docs).
        let block = if acts.rows > PREFILL_ROWS {
            token_block_rows(self.in_features)
        } else {
            acts.rows
        };
        for b0 in (0..acts.rows).step_by(block.max(1)) {
            let b1 = (b0 + block).min(acts.rows);
            self.run_block(path, acts, g0, g1, b0, b1, columns, finish);
        }
    }

    /// Token rows `b0..b1` of row groups `g0..g1`.
    #[allow(clippy::too_many_arguments)]
    fn run_block<T>(
        &self,
        path: KernelPath,
        acts: &QuantizedActivations,
        g0: usize,
        g1: usize,
        b0: usize,
        b1: usize,
        columns: &mut [&mut [T]],
        finish: &(impl Fn(usize, i32) -> T + Sync),
    ) {
        let group_len = self.k_blocks * ROW_GROUP;
        let mut acc: TileAcc = [[0; ROW_GROUP]; MAX_TILE_TOKENS];
        for group in g0..g1 {
            let weights = &self.blocks[group * group_len..(group + 1) * group_len];
            for t0 in (b0..b1).step_by(MAX_TILE_TOKENS) {
                let tokens = (b1 - t0).min(MAX_TILE_TOKENS);
                match path {
                    KernelPath::Scalar => scalar::group_dot(weights, acts, t0, tokens, &mut acc),
                    // SAFETY: `run` checked `path.ensure_supported()`, so the
                    // CPU has the features the path is compiled for.
                    // pot10: allow(R9) calls the SIMD tile only on a path `run` accepted with `ensure_supported()` (the CPU has the features)
                    KernelPath::Avx2 => unsafe {
                        avx2::group_dot(weights, acts, t0, tokens, &mut acc)
                    },
                    // SAFETY: as above.
                    // pot10: allow(R9) calls the SIMD tile only on a path `run` accepted with `ensure_supported()` (the CPU has the features)
                    KernelPath::Avx512Vnni => unsafe {
                        avx512::group_dot(weights, acts, t0, tokens, &mut acc)
                    },
                }
                for (t, acc_row) in acc.iter().enumerate().take(tokens) {
                    let row = t0 + t;
                    for (r, &value) in acc_row.iter().enumerate() {
                        let column = (group - g0) * ROW_GROUP + r;
                        if let Some(slot) = columns[row].get_mut(column) {
                            *slot = finish(row, value);
                        }
                    }
                }
            }
        }
    }
}

/// The thread count set by [`crate::set_num_threads`] (all cores by default).
fn parallel_threads() -> usize {
    crate::num_threads()
}

/// A process-wide pool of `workers` threads, rebuilt when the count changes
/// (e.g. after [`crate::set_num_threads`]). The calling thread is the extra one.
// pot10: init (builds the process-wide pool on first use or after a thread-count change; later calls only clone the Arc)
fn worker_pool(workers: usize) -> Result<Arc<rayon::ThreadPool>, KernelError> {
    // `run` asks for a pool only when it splits the work over 2+ threads.
    debug_assert!(workers >= 1);
    static POOL: Mutex<Option<(usize, Arc<rayon::ThreadPool>)>> = Mutex::new(None);
    let mut guard = POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((count, pool)) = guard.as_ref() {
        if *count == workers {
            return Ok(Arc::clone(pool));
        }
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .thread_name(|i| format!("bitnet-kernel-{i}"))
        .build()
        .map_err(|err| KernelError::ThreadPool {
            threads: workers + 1,
            message: err.to_string(),
        })?;
    debug_assert_eq!(pool.current_num_threads(), workers);
    let pool = Arc::new(pool);
    *guard = Some((workers, Arc::clone(&pool)));
    Ok(pool)
}

#[cfg(test)]
mod tests;
