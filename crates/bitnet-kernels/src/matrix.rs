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
//! Row groups are split into contiguous chunks (several per thread, taken
//! from a shared queue: an atomic index for one token row), run on the
//! kernels' persistent pool (`pool.rs`) with the thread count libtorch uses
//! (`tch::get_num_threads`) so comparisons with libtorch are fair. Inside a
//! chunk the loop is group-outer, token-inner:
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
//!
//! On the AVX-512 VNNI path the prefill order runs a real GEMM instead of
//! the 4 x 4 tile (`matrix/gemm.rs`, `avx512_gemm.rs`): panels of 32 output
//! rows unpacked once per token block into `vpdpbusd` order, 12-token tiles
//! with one accumulator lane per output row, parallel chunks on whole
//! panels. Same integers, same outputs.

use std::sync::Mutex;

use self::epilogue::{BitLinearScale, Epilogue};
use super::pool::{on_threads, DisjointChunks};
use super::quant::{check_buffer_len, QuantizedActivations};
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
    /// Allocates its activation buffer per call; a decode loop uses
    /// [`Self::matmul_reusing`] instead.
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
        let mut acts = QuantizedActivations::new();
        self.matmul_reusing_with(path, x, rows, out, &mut acts)
    }

    /// [`Self::matmul`] quantizing into a caller-owned buffer: once `acts`
    /// has grown to the shape, a single-threaded call allocates nothing.
    pub fn matmul_reusing(
        &self,
        x: &[f32],
        rows: usize,
        out: &mut [f32],
        acts: &mut QuantizedActivations,
    ) -> Result<(), KernelError> {
        self.matmul_reusing_with(KernelPath::selected()?, x, rows, out, acts)
    }

    /// [`Self::matmul_reusing`] on an explicit path.
    pub fn matmul_reusing_with(
        &self,
        path: KernelPath,
        x: &[f32],
        rows: usize,
        out: &mut [f32],
        acts: &mut QuantizedActivations,
    ) -> Result<(), KernelError> {
        acts.quantize_from(x, rows, self.in_features)?;
        // Quantized in this matrix's padded layout, one row per token.
        debug_assert_eq!(acts.rows, rows);
        debug_assert_eq!(acts.chunks_per_row, self.k_blocks * (K_BLOCK / 64));
        self.matmul_quantized_with(path, acts, out, parallel_threads(), MIN_PARALLEL_UNITS)
    }

    /// [`Self::matmul`] of activations already quantized (with
    /// [`QuantizedActivations::quantize_from`] at this matrix's
    /// `in_features`): several matrices reading the same input (q, k, v;
    /// gate, up) share one quantization, as the BitLinear graph computes
    /// the same integers for each. Errors if `acts` has another width.
    pub fn matmul_quantized(
        &self,
        acts: &QuantizedActivations,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        self.matmul_quantized_with(
            KernelPath::selected()?,
            acts,
            out,
            parallel_threads(),
            MIN_PARALLEL_UNITS,
        )
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
        // `from_storage` accepted only a finite positive scale.
        debug_assert!(w_scale.is_finite() && w_scale > 0.0);
        self.run(
            path,
            acts,
            out,
            threads,
            min_parallel_units,
            BitLinearScale::new(w_scale, acts),
        )
    }

    /// Checks the shapes of a `run` call; returns the path to run on.
    fn check_run(
        &self,
        path: KernelPath,
        acts: &QuantizedActivations,
        out_len: usize,
    ) -> Result<KernelPath, KernelError> {
        let path = path.ensure_supported()?;
        check_buffer_len("output buffer", out_len, acts.rows, self.out_features)?;
        if acts.chunks_per_row != self.k_blocks * (K_BLOCK / 64) {
            return Err(KernelError::BufferSize {
                what: "quantized activations (quantize them at this matrix's in_features)",
                rows: acts.rows,
                columns: self.k_blocks * K_BLOCK,
                expected: acts.rows * self.k_blocks * K_BLOCK,
                actual: acts.chunks.len() * 64,
            });
        }
        debug_assert_eq!(acts.chunks.len(), acts.rows * acts.chunks_per_row);
        Ok(path)
    }

    /// How many threads a call of `rows` token rows uses.
    fn run_threads(&self, rows: usize, threads: usize, min_parallel_units: usize) -> usize {
        let units = self.groups * self.k_blocks * ROW_GROUP * rows;
        let threads = if units < min_parallel_units {
            1
        } else {
            threads.clamp(1, self.groups)
        };
        debug_assert!((1..=self.groups).contains(&threads));
        debug_assert!(units > 0 || threads == 1);
        threads
    }

    /// Computes every output through `finish(row, exact_dot)` into `out`
    /// (`[rows, out_features]`), threads splitting the row groups. On one
    /// thread it allocates nothing.
    pub(crate) fn run<T: Send>(
        &self,
        path: KernelPath,
        acts: &QuantizedActivations,
        out: &mut [T],
        threads: usize,
        min_parallel_units: usize,
        finish: impl Epilogue<T>,
    ) -> Result<(), KernelError> {
        let path = self.check_run(path, acts, out.len())?;
        if acts.rows == 0 {
            return Ok(());
        }
        let threads = self.run_threads(acts.rows, threads, min_parallel_units);
        if threads == 1 {
            let mut sink = RowMajor {
                out,
                width: self.out_features,
            };
            self.run_groups(path, acts, 0, self.groups, &mut sink, &finish);
            return Ok(());
        }
        // More chunks than threads, taken from a shared queue: when the
        // machine is busy and one thread is descheduled, the others finish
        // its share instead of the whole call waiting for it.
        let align = chunk_alignment(path, acts.rows);
        let chunks = (threads * CHUNKS_PER_THREAD).min(self.groups.div_ceil(align));
        if acts.rows == 1 {
            self.run_parallel_row(path, acts, out, threads, chunks, &finish)
        } else {
            self.run_parallel_rows(path, acts, out, threads, (chunks, align), &finish)
        }
    }

    /// Row groups `g0..g1` of chunk `i` of `chunks`, the boundaries
    /// multiples of `align` groups (except the matrix's end).
    fn chunk_groups(&self, i: usize, chunks: usize, align: usize) -> (usize, usize) {
        let units = self.groups.div_ceil(align);
        debug_assert!(i < chunks && chunks <= units, "chunk {i} of {chunks}");
        let bound = |j: usize| (units * j / chunks * align).min(self.groups);
        (bound(i), bound(i + 1))
    }

    /// Output columns of row groups `g0..g1`.
    fn group_columns(&self, g0: usize, g1: usize) -> usize {
        debug_assert!(g0 <= g1 && g1 <= self.groups);
        (g1 * ROW_GROUP).min(self.out_features) - (g0 * ROW_GROUP).min(self.out_features)
    }

    /// One token row (decode) on several threads: chunks of whole row
    /// groups handed out by an atomic index, no lock and no task list.
    fn run_parallel_row<T: Send>(
        &self,
        path: KernelPath,
        acts: &QuantizedActivations,
        out: &mut [T],
        threads: usize,
        chunks: usize,
        finish: &impl Epilogue<T>,
    ) -> Result<(), KernelError> {
        debug_assert_eq!(acts.rows, 1);
        debug_assert_eq!(out.len(), self.out_features);
        // Chunk `i` starts at the first column of its first row group (the
        // groups `chunk_groups(i, chunks, 1)` gives it).
        let queue = DisjointChunks::new(out, chunks, |i| {
            (self.groups * i / chunks * ROW_GROUP).min(self.out_features)
        });
        let drain = || {
            for _ in 0..chunks {
                let Some((i, _, mine)) = queue.take() else {
                    return;
                };
                let (g0, g1) = self.chunk_groups(i, chunks, 1);
                debug_assert_eq!(mine.len(), self.group_columns(g0, g1));
                let mut sink = RowMajor {
                    out: mine,
                    width: self.group_columns(g0, g1),
                };
                self.run_groups(path, acts, g0, g1, &mut sink, finish);
            }
        };
        on_threads(threads, &drain)
    }

    /// Several token rows on several threads: each chunk owns disjoint
    /// `&mut` column slices of every row.
    fn run_parallel_rows<T: Send>(
        &self,
        path: KernelPath,
        acts: &QuantizedActivations,
        out: &mut [T],
        threads: usize,
        (chunks, align): (usize, usize),
        finish: &impl Epilogue<T>,
    ) -> Result<(), KernelError> {
        // pot10: allow(R3) prefill and batches only (decode takes `run_parallel_row`): one slice list per chunk, small next to the GEMM it splits
        let mut tasks: Vec<(usize, usize, Vec<&mut [T]>)> = (0..chunks)
            .map(|i| {
                let (g0, g1) = self.chunk_groups(i, chunks, align);
                (g0, g1, Vec::with_capacity(acts.rows))
            })
            .collect();
        for row_out in out.chunks_mut(self.out_features) {
            let mut rest = row_out;
            for task in tasks.iter_mut() {
                let (mine, tail) = rest.split_at_mut(self.group_columns(task.0, task.1));
                task.2.push(mine);
                rest = tail;
            }
        }
        // Every output column belongs to exactly one chunk.
        debug_assert!(tasks
            .iter()
            .all(|(_, _, columns)| columns.len() == acts.rows));
        let queue = Mutex::new(tasks.into_iter());
        let drain = || {
            for _ in 0..chunks {
                let task = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
                let Some((g0, g1, mut columns)) = task else {
                    return;
                };
                self.run_groups(path, acts, g0, g1, &mut columns, finish);
            }
        };
        on_threads(threads, &drain)
    }

    fn run_groups<T>(
        &self,
        path: KernelPath,
        acts: &QuantizedActivations,
        g0: usize,
        g1: usize,
        sink: &mut impl OutputColumns<T>,
        finish: &impl Epilogue<T>,
    ) {
        debug_assert!(g0 <= g1 && g1 <= self.groups, "row groups {g0}..{g1}");
        debug_assert!(acts.rows > 0, "run returns early on zero rows");
        // GEMV and small batches: one block of all tokens (group-outer).
        // Prefill: token blocks that stay in L2 (see the module docs).
        let block = if acts.rows > PREFILL_ROWS {
            token_block_rows(self.in_features)
        } else {
            acts.rows
        };
        for b0 in (0..acts.rows).step_by(block.max(1)) {
            let b1 = (b0 + block).min(acts.rows);
            self.run_block(path, acts, (g0, g1), (b0, b1), sink, finish);
        }
    }

    /// Token rows `b0..b1` of row groups `g0..g1`.
    fn run_block<T>(
        &self,
        path: KernelPath,
        acts: &QuantizedActivations,
        (g0, g1): (usize, usize),
        (b0, b1): (usize, usize),
        sink: &mut impl OutputColumns<T>,
        finish: &impl Epilogue<T>,
    ) {
        debug_assert!(g0 <= g1 && g1 <= self.groups, "row groups {g0}..{g1}");
        debug_assert!(b0 < b1 && b1 <= acts.rows, "token rows {b0}..{b1}");
        #[cfg(target_arch = "x86_64")]
        if uses_gemm(path, acts.rows) {
            return self.run_block_gemm(acts, (g0, g1), (b0, b1), sink, finish);
        }
        let group_len = self.k_blocks * ROW_GROUP;
        let mut acc: TileAcc = [[0; ROW_GROUP]; MAX_TILE_TOKENS];
        for group in g0..g1 {
            let weights = &self.blocks[group * group_len..(group + 1) * group_len];
            for t0 in (b0..b1).step_by(MAX_TILE_TOKENS) {
                let tokens = (b1 - t0).min(MAX_TILE_TOKENS);
                group_dot(path, weights, acts, t0, tokens, &mut acc);
                for (t, acc_row) in acc.iter().enumerate().take(tokens) {
                    let row = t0 + t;
                    let slots = sink.run_mut(row, (group - g0) * ROW_GROUP, ROW_GROUP);
                    finish.finish_run(row, acc_row, slots);
                }
            }
        }
    }
}

/// Whether a call of `rows` token rows on `path` takes the GEMM order
/// (`matrix/gemm.rs`): prefill on the AVX-512 VNNI path.
fn uses_gemm(path: KernelPath, rows: usize) -> bool {
    cfg!(target_arch = "x86_64") && path == KernelPath::Avx512Vnni && rows > PREFILL_ROWS
}

/// Row groups a parallel chunk boundary is a multiple of: whole GEMM panels
/// when the GEMM order runs, so no panel is split between two chunks.
fn chunk_alignment(path: KernelPath, rows: usize) -> usize {
    if uses_gemm(path, rows) {
        crate::avx512_gemm::PANEL_GROUPS
    } else {
        1
    }
}

/// One tile on `path`; `path` must have passed `ensure_supported()`.
#[inline(always)]
fn group_dot(
    path: KernelPath,
    weights: &[Block64],
    acts: &QuantizedActivations,
    t0: usize,
    tokens: usize,
    acc: &mut TileAcc,
) {
    match path {
        KernelPath::Scalar => scalar::group_dot(weights, acts, t0, tokens, acc),
        // SAFETY: `run` checked `path.ensure_supported()`, so the
        // CPU has the features the path is compiled for.
        // pot10: allow(R9) calls the SIMD tile only on a path `run` accepted with `ensure_supported()` (the CPU has the features)
        KernelPath::Avx2 => unsafe { avx2::group_dot(weights, acts, t0, tokens, acc) },
        // SAFETY: as above.
        // pot10: allow(R9) calls the SIMD tile only on a path `run` accepted with `ensure_supported()` (the CPU has the features)
        KernelPath::Avx512Vnni => unsafe { avx512::group_dot(weights, acts, t0, tokens, acc) },
    }
}

/// Where `run_block` writes results: runs of `(token row, columns within
/// the chunk)`; columns past the matrix's `out_features` (the padding rows
/// of the last group) are dropped without computing them.
trait OutputColumns<T> {
    /// The slots of columns `column..column + len` of `row` that exist
    /// (fewer at the end of the chunk): a whole run written in one loop,
    /// which the compiler vectorizes (see `epilogue.rs`).
    fn run_mut(&mut self, row: usize, column: usize, len: usize) -> &mut [T];
}

/// Row-major `[rows, width]` output (one thread, or one row's chunk).
struct RowMajor<'a, T> {
    out: &'a mut [T],
    width: usize,
}

impl<T> OutputColumns<T> for RowMajor<'_, T> {
    #[inline(always)]
    fn run_mut(&mut self, row: usize, column: usize, len: usize) -> &mut [T] {
        let end = (column + len).min(self.width).max(column);
        &mut self.out[row * self.width + column..row * self.width + end]
    }
}

/// One `&mut` column slice per token row (a chunk of a multi-row call).
impl<T> OutputColumns<T> for Vec<&mut [T]> {
    #[inline(always)]
    fn run_mut(&mut self, row: usize, column: usize, len: usize) -> &mut [T] {
        let columns = &mut self[row];
        let end = (column + len).min(columns.len()).max(column);
        &mut columns[column..end]
    }
}

/// Splits `out` into pieces of `chunk` elements (the last may be shorter)
/// and calls `f(start, piece)` for each, on the kernels' threads
/// ([`crate::set_num_threads`]; the calling thread works too): how callers
/// run their own row loops (an LM head) on the same cores as the matmuls.
/// Pieces are handed out by an atomic index: no lock, no task list, no
/// allocation. The pieces run in no fixed order.
pub fn for_each_chunk_mut<T: Send>(
    out: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) -> Result<(), KernelError> {
    let chunk = chunk.max(1);
    let pieces = out.len().div_ceil(chunk);
    let threads = parallel_threads().clamp(1, pieces.max(1));
    if threads == 1 {
        for (i, piece) in out.chunks_mut(chunk).enumerate() {
            f(i * chunk, piece);
        }
        return Ok(());
    }
    debug_assert!(pieces >= 2, "{pieces} pieces on {threads} threads");
    let len = out.len();
    let queue = DisjointChunks::new(out, pieces, |i| (i * chunk).min(len));
    let drain = || {
        for _ in 0..pieces {
            let Some((_, start, piece)) = queue.take() else {
                return;
            };
            f(start, piece);
        }
    };
    on_threads(threads, &drain)
}

/// The thread count set by [`crate::set_num_threads`] (all cores by default).
fn parallel_threads() -> usize {
    crate::num_threads()
}

#[cfg(target_arch = "x86_64")]
mod epilogue;
mod gemm;
#[cfg(test)]
mod tests;
