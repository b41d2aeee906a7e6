use super::*;
use crate::quant::quantize_activations;
use crate::storage::{pack_storage, unpack_storage};
use crate::testing::SplitMix as Rng;

/// Straight from the definition, on the storage-unpacked matrix.
fn naive_i32(w_q: &[i8], x_q: &[i8], rows: usize, out: usize, inp: usize) -> Vec<i32> {
    let mut acc = vec![0i32; rows * out];
    for r in 0..rows {
        for o in 0..out {
            acc[r * out + o] = (0..inp)
                .map(|k| w_q[o * inp + k] as i32 * x_q[r * inp + k] as i32)
                .sum();
        }
    }
    acc
}

fn supported_paths() -> Vec<KernelPath> {
    KernelPath::ALL
        .into_iter()
        .filter(|p| p.is_supported())
        .collect()
}

// Odd sizes, sizes around the 64/256 vector and block widths, and row
// counts around the 4-token tile.
const SHAPES: [(usize, usize); 9] = [
    (1, 1),
    (3, 5),
    (5, 255),
    (7, 257),
    (4, 256),
    (13, 513),
    (33, 100),
    (64, 64),
    (9, 300),
];
const ROWS: [usize; 7] = [1, 2, 3, 4, 5, 7, 9];

#[test]
fn every_path_equals_the_naive_reference_exactly() {
    let mut rng = Rng(7);
    for (case, &(out, inp)) in SHAPES.iter().enumerate() {
        let w_q = rng.ternary(out * inp);
        let matrix =
            PackedTernaryMatrix::from_storage(&pack_storage(&w_q, out, inp), out, inp, 0.5)
                .unwrap();
        let rows = ROWS[case % ROWS.len()];
        let mut x_q = rng.int8(rows * inp);
        if case % 2 == 0 {
            // Extreme row: the largest possible magnitudes.
            x_q[..inp].fill(-128);
        }
        let expected = naive_i32(&w_q, &x_q, rows, out, inp);
        let acts = QuantizedActivations::from_quantized(&x_q, rows, inp).unwrap();
        for path in supported_paths() {
            // Threads 1, 2 and 3 (uneven group ranges), pool forced on.
            for threads in [1, 2, 3] {
                let mut acc = vec![i32::MIN; rows * out]; // poison: unreachable value
                matrix
                    .run(path, &acts, &mut acc, threads, 0, |_, v| v)
                    .unwrap();
                assert_eq!(
                    acc, expected,
                    "path {path}, shape {out}x{inp}, rows {rows}, threads {threads}"
                );
            }
        }
    }
}

#[test]
fn public_i32_entry_point_matches_on_all_paths_for_batch_32() {
    let (out, inp, rows) = (12, 130, 32);
    let mut rng = Rng(11);
    let w_q = rng.ternary(out * inp);
    let x_q = rng.int8(rows * inp);
    let matrix =
        PackedTernaryMatrix::from_storage(&pack_storage(&w_q, out, inp), out, inp, 1.0).unwrap();
    let expected = naive_i32(&w_q, &x_q, rows, out, inp);
    for path in supported_paths() {
        let mut acc = vec![i32::MIN; rows * out];
        matrix.matmul_i32_with(path, &x_q, rows, &mut acc).unwrap();
        assert_eq!(acc, expected, "path {path}");
    }
}

#[test]
fn f32_outputs_overwrite_a_nan_poisoned_buffer_on_every_path() {
    let (out, inp, rows) = (11, 77, 6);
    let mut rng = Rng(3);
    let w_q = rng.ternary(out * inp);
    let x = rng.normal_ish(rows * inp);
    let matrix =
        PackedTernaryMatrix::from_storage(&pack_storage(&w_q, out, inp), out, inp, 0.25).unwrap();
    let acts = quantize_activations(&x, rows, inp).unwrap();
    let mut reference: Option<Vec<f32>> = None;
    for path in supported_paths() {
        for threads in [1, 2, 5] {
            let mut y = vec![f32::NAN; rows * out];
            matrix
                .matmul_quantized_with(path, &acts, &mut y, threads, 0)
                .unwrap();
            assert!(
                y.iter().all(|v| v.is_finite()),
                "path {path} left poisoned outputs: {y:?}"
            );
            // Identical integers and identical scaling: bit-identical floats.
            match &reference {
                Some(r) => assert_eq!(&y, r, "path {path}, threads {threads}"),
                None => reference = Some(y),
            }
        }
    }
}

#[test]
fn non_finite_input_rows_become_nan_rows() {
    let (out, inp) = (4, 8);
    let matrix =
        PackedTernaryMatrix::from_storage(&pack_storage(&[1; 32], out, inp), out, inp, 1.0)
            .unwrap();
    let mut x = vec![1.0f32; 2 * inp];
    x[3] = f32::INFINITY;
    let mut y = vec![0.0; 2 * out];
    matrix
        .matmul_with(KernelPath::Scalar, &x, 2, &mut y)
        .unwrap();
    assert!(y[..out].iter().all(|v| v.is_nan()));
    // Row 1: x_q = 127 everywhere, act_scale 127, eight +1 weights -> 8.
    assert_eq!(&y[out..], &[8.0; 4]);
}

#[test]
fn from_storage_rejects_bad_weights() {
    let err = PackedTernaryMatrix::from_storage(&[0b11], 1, 1, 1.0).unwrap_err();
    assert!(
        matches!(
            err,
            KernelError::InvalidCode {
                row: 0,
                column: 0,
                ..
            }
        ),
        "{err}"
    );
    let err = PackedTernaryMatrix::from_storage(&[1], 1, 1, f32::NAN).unwrap_err();
    assert!(matches!(err, KernelError::WeightScale { .. }), "{err}");
    let err = PackedTernaryMatrix::from_storage(&[], 0, 1, 1.0).unwrap_err();
    assert!(matches!(err, KernelError::Dimensions { .. }), "{err}");
    let err = PackedTernaryMatrix::from_storage(&[1; 5], 5, 3, 1.0).unwrap_err();
    assert!(
        matches!(err, KernelError::StorageSize { expected: 6, .. }),
        "{err}"
    );
}

#[test]
fn repacking_preserves_every_weight() {
    // Decode the compute layout back and compare with the storage decode.
    let (out, inp) = (10, 300);
    let w_q = Rng(9).ternary(out * inp);
    let packed = pack_storage(&w_q, out, inp);
    let matrix = PackedTernaryMatrix::from_storage(&packed, out, inp, 1.0).unwrap();
    for o in 0..out.div_ceil(ROW_GROUP) * ROW_GROUP {
        for k in 0..matrix.k_blocks * K_BLOCK {
            let block = &matrix.blocks[((o / 4) * matrix.k_blocks + k / K_BLOCK) * 4 + o % 4];
            let within = k % K_BLOCK;
            let q = ((block.0[within % 64] >> (2 * (within / 64))) & 3) as i8 - 1;
            let expected = if o < out && k < inp {
                w_q[o * inp + k]
            } else {
                0
            };
            assert_eq!(q, expected, "row {o}, column {k}");
        }
    }
    assert_eq!(unpack_storage(&packed, out, inp).unwrap(), w_q);
}

#[test]
fn buffer_size_mismatches_are_errors_not_panics() {
    let matrix = PackedTernaryMatrix::from_storage(&[0b01; 3], 2, 3, 1.0).unwrap();
    let mut y = vec![0.0; 3];
    let err = matrix
        .matmul_with(KernelPath::Scalar, &[0.0; 6], 2, &mut y)
        .unwrap_err();
    assert!(
        matches!(
            err,
            KernelError::BufferSize {
                what: "output buffer",
                expected: 4,
                ..
            }
        ),
        "{err}"
    );
    let err = matrix
        .matmul_with(KernelPath::Scalar, &[0.0; 5], 2, &mut [0.0; 4])
        .unwrap_err();
    assert!(
        matches!(
            err,
            KernelError::BufferSize {
                what: "input activations",
                ..
            }
        ),
        "{err}"
    );
    let err = matrix
        .matmul_i32_with(KernelPath::Scalar, &[0; 5], 2, &mut [0; 4])
        .unwrap_err();
    assert!(matches!(err, KernelError::BufferSize { .. }), "{err}");
}

/// Issue #11: the prefill order (more than 32 token rows, token blocks)
/// equals the definition exactly on odd shapes: row counts from 33 to 600
/// that are not multiples of the 4-token tile, several token blocks with a
/// ragged last one, columns that are not a multiple of the vector width;
/// outputs poisoned first, every path, one and three threads.
#[test]
fn prefill_order_equals_the_naive_reference_exactly() {
    let mut rng = Rng(1111);
    // (out, in, rows): blocks of token_block_rows(in) rows.
    for &(out, inp, rows) in &[
        (9, 300, 33),    // one block, a ragged tile
        (13, 2049, 600), // 252-row blocks: 252 + 252 + 96
        (70, 1000, 531), // 524-row blocks: 524 + 7
        (5, 4100, 129),  // 124-row blocks: 124 + 5
    ] {
        let block = token_block_rows(inp);
        assert!(rows > PREFILL_ROWS);
        assert_eq!(block % MAX_TILE_TOKENS, 0);
        let w_q = rng.ternary(out * inp);
        let matrix =
            PackedTernaryMatrix::from_storage(&pack_storage(&w_q, out, inp), out, inp, 0.5)
                .unwrap();
        let mut x_q = rng.int8(rows * inp);
        x_q[(rows - 1) * inp..].fill(-128); // the extreme magnitude, last row
        let expected = naive_i32(&w_q, &x_q, rows, out, inp);
        let acts = QuantizedActivations::from_quantized(&x_q, rows, inp).unwrap();
        for path in supported_paths() {
            for threads in [1, 3] {
                let mut acc = vec![i32::MIN; rows * out];
                matrix
                    .run(path, &acts, &mut acc, threads, 0, |_, v| v)
                    .unwrap();
                assert!(
                    acc == expected,
                    "path {path}, {out}x{inp}, rows {rows} (blocks of {block}), threads {threads}"
                );
            }
        }
        // f32 outputs over a NaN-poisoned buffer: every value written, and
        // bit-identical to the GEMV order row by row.
        let x = rng.normal_ish(rows * inp);
        let acts = quantize_activations(&x, rows, inp).unwrap();
        let mut y = vec![f32::NAN; rows * out];
        matrix
            .matmul_quantized_with(KernelPath::detect(), &acts, &mut y, 2, 0)
            .unwrap();
        assert!(
            y.iter().all(|v| v.is_finite()),
            "{out}x{inp}: poisoned outputs left"
        );
        for r in [0, rows / 2, rows - 1] {
            let mut one = vec![f32::NAN; out];
            matrix
                .matmul_with(
                    KernelPath::detect(),
                    &x[r * inp..(r + 1) * inp],
                    1,
                    &mut one,
                )
                .unwrap();
            assert_eq!(one, y[r * out..(r + 1) * out], "row {r} of {out}x{inp}");
        }
    }
}

#[test]
fn reusing_and_prequantized_entry_points_equal_matmul_bit_for_bit() {
    let mut rng = Rng(23);
    let mut acts = QuantizedActivations::new();
    // A wide call first, so the later narrow ones reuse a larger buffer.
    for &(out, inp, rows) in &[(40, 600, 5), (37, 70, 1), (64, 256, 1), (9, 300, 3)] {
        let w_q = rng.ternary(out * inp);
        let x = rng.normal_ish(rows * inp);
        let matrix =
            PackedTernaryMatrix::from_storage(&pack_storage(&w_q, out, inp), out, inp, 0.75)
                .unwrap();
        let mut expected = vec![f32::NAN; rows * out];
        matrix.matmul(&x, rows, &mut expected).unwrap();
        let mut reused = vec![f32::NAN; rows * out];
        matrix
            .matmul_reusing(&x, rows, &mut reused, &mut acts)
            .unwrap();
        assert_eq!(reused, expected, "{out}x{inp}, rows {rows}");
        let mut shared = vec![f32::NAN; rows * out];
        matrix.matmul_quantized(&acts, &mut shared).unwrap();
        assert_eq!(shared, expected, "{out}x{inp}, rows {rows}");
        for path in supported_paths() {
            // One row on 2 and 4 threads: the decode split (no task list).
            for threads in [2, 4] {
                let mut y = vec![f32::NAN; rows * out];
                matrix
                    .matmul_quantized_with(path, &acts, &mut y, threads, 0)
                    .unwrap();
                assert_eq!(y, expected, "path {path}, threads {threads}");
            }
        }
    }
}

#[test]
fn prequantized_activations_of_another_width_are_refused() {
    let matrix =
        PackedTernaryMatrix::from_storage(&pack_storage(&[1; 300], 1, 300), 1, 300, 1.0).unwrap();
    let acts = quantize_activations(&[1.0; 100], 1, 100).unwrap();
    let mut y = [0.0f32];
    let err = matrix.matmul_quantized(&acts, &mut y).unwrap_err();
    assert!(
        err.to_string()
            .contains("quantize them at this matrix's in_features"),
        "{err}"
    );
}

#[test]
fn for_each_chunk_mut_visits_every_element_once_at_its_offset() {
    for threads in [1, 2, 3] {
        crate::set_num_threads(threads);
        for (len, chunk) in [(0, 4), (1, 4), (10, 3), (64, 8), (97, 16)] {
            let mut out = vec![usize::MAX; len];
            for_each_chunk_mut(&mut out, chunk, |start, piece| {
                for (i, v) in piece.iter_mut().enumerate() {
                    *v = start + i;
                }
            })
            .unwrap();
            assert!(
                out.iter().enumerate().all(|(i, &v)| v == i),
                "{threads} threads, {len}/{chunk}"
            );
        }
    }
    crate::set_num_threads(0);
}

/// Issue #11, item 4: the AVX-512 GEMM order (32-row panels x 12-token
/// tiles, taken beyond `PREFILL_ROWS` rows) equals the definition exactly
/// where its tiling is ragged: `out_features` not a multiple of 16 or 32
/// (a partial last panel), panels split between threads (1..=3), token
/// counts that leave a partial 12-token tile, `in_features` not a multiple
/// of 256, several token blocks; i32 outputs poisoned first.
#[test]
fn gemm_order_equals_the_naive_reference_on_ragged_panels() {
    let mut rng = Rng(2026);
    // (out, in, rows)
    for &(out, inp, rows) in &[
        (33, 100, 33),   // one full panel + 1 row; 2 full tiles + 9 tokens
        (100, 257, 47),  // 3 panels + 4 rows; 2 K blocks
        (250, 513, 77),  // 7 panels + 26 rows; 3 K blocks
        (47, 2600, 250), // 11 K blocks, blocks of 200 tokens + 50
    ] {
        assert!(rows > PREFILL_ROWS);
        let w_q = rng.ternary(out * inp);
        let matrix =
            PackedTernaryMatrix::from_storage(&pack_storage(&w_q, out, inp), out, inp, 0.5)
                .unwrap();
        let mut x_q = rng.int8(rows * inp);
        x_q[..inp].fill(-128); // the extreme magnitude, first row
        x_q[(rows - 1) * inp..].fill(127);
        let expected = naive_i32(&w_q, &x_q, rows, out, inp);
        let acts = QuantizedActivations::from_quantized(&x_q, rows, inp).unwrap();
        for path in supported_paths() {
            for threads in [1, 2, 3] {
                let mut acc = vec![i32::MIN; rows * out];
                matrix
                    .run(path, &acts, &mut acc, threads, 0, |_, v| v)
                    .unwrap();
                assert!(
                    acc == expected,
                    "path {path}, {out}x{inp}, rows {rows}, threads {threads}"
                );
            }
        }
    }
}

/// Parallel chunks of the GEMM order start on whole panels and cover every
/// row group once.
#[test]
fn gemm_chunks_are_panel_aligned_and_cover_every_group() {
    let panel = crate::avx512_gemm::PANEL_GROUPS;
    for out in [33usize, 128, 250, 1536] {
        let matrix =
            PackedTernaryMatrix::from_storage(&vec![0b0101_0101; out.div_ceil(4) * 8], out, 8, 1.0)
                .unwrap();
        let units = matrix.groups.div_ceil(panel);
        for chunks in 1..=units {
            let mut next = 0;
            for i in 0..chunks {
                let (g0, g1) = matrix.chunk_groups(i, chunks, panel);
                assert_eq!(g0, next, "out {out}, chunk {i} of {chunks}");
                assert!(g0.is_multiple_of(panel) && g0 < g1, "out {out}, chunk {i}");
                next = g1;
            }
            assert_eq!(next, matrix.groups, "out {out}, {chunks} chunks");
        }
    }
}
