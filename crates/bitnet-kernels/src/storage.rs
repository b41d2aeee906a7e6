//! The HF transformers BitNet storage packing of ternary weights.
//!
//! Checkpoints store an `i8` ternary weight `W_q` of shape `[out, in]` as a
//! `u8` tensor of shape `[ceil(out/4), in]`: weight row `r = i * row_dim + j`
//! (with `row_dim = ceil(out/4)`, `i` in `0..4`) lives in packed row `j`,
//! bits `2i..2i+1`, as the code `q + 1` in `{0, 1, 2}`; slots past `out` are 0.
//! This is the layout of `transformers.integrations.bitnet.pack_weights`.
//! Kernels never compute on it directly (rows four apart share a byte); it
//! is repacked once by [`crate::PackedTernaryMatrix::from_storage`].
//! The helpers here are the plain reference conversions, used by tests,
//! benches and tools that need to build or inspect storage tensors.

use super::KernelError;

/// Number of packed storage rows for `out_features` weight rows.
pub fn storage_rows(out_features: usize) -> usize {
    out_features.div_ceil(4)
}

/// Checks that `packed` has the `[ceil(out/4), in]` size.
pub(crate) fn check_storage_size(
    packed: &[u8],
    out_features: usize,
    in_features: usize,
) -> Result<(), KernelError> {
    let expected = storage_rows(out_features) * in_features;
    if packed.len() != expected {
        return Err(KernelError::StorageSize {
            out_features,
            in_features,
            expected,
            actual: packed.len(),
        });
    }
    Ok(())
}

/// Reads the 2-bit code (`q + 1`) of weight `(row, column)` from storage.
///
/// The caller guarantees the indices are in range (checked sizes).
#[inline]
pub(crate) fn storage_code(
    packed: &[u8],
    out_features: usize,
    in_features: usize,
    row: usize,
    column: usize,
) -> (u8, usize) {
    debug_assert!(
        row < out_features && column < in_features,
        "weight ({row}, {column})"
    );
    let row_dim = storage_rows(out_features);
    let (slot, packed_row) = (row / row_dim, row % row_dim);
    let byte_index = packed_row * in_features + column;
    debug_assert!(
        slot < 4 && byte_index < packed.len(),
        "storage byte {byte_index}"
    );
    ((packed[byte_index] >> (2 * slot)) & 3, byte_index)
}

/// Unpacks storage into the ternary `i8` matrix `[out, in]` (row-major).
///
/// Fails on a size mismatch or on code 3 in a used slot.
pub fn unpack_storage(
    packed: &[u8],
    out_features: usize,
    in_features: usize,
) -> Result<Vec<i8>, KernelError> {
    check_storage_size(packed, out_features, in_features)?;
    let mut w_q = vec![0i8; out_features * in_features];
    for row in 0..out_features {
        for column in 0..in_features {
            let (code, byte_index) = storage_code(packed, out_features, in_features, row, column);
            if code == 3 {
                return Err(KernelError::InvalidCode {
                    byte_index,
                    row,
                    column,
                });
            }
            w_q[row * in_features + column] = code as i8 - 1;
        }
    }
    // Codes 0..=2 decode to the ternary values only.
    debug_assert_eq!(w_q.len(), out_features * in_features);
    debug_assert!(w_q.iter().all(|q| (-1..=1).contains(q)));
    Ok(w_q)
}

/// Packs a ternary `i8` matrix `[out, in]` (values in `{-1, 0, 1}`) into storage.
///
/// Values outside `{-1, 0, 1}` are clamped, as `round().clamp(-1, 1)` would
/// have produced them; this helper is for tests and tools, not for user data.
pub fn pack_storage(w_q: &[i8], out_features: usize, in_features: usize) -> Vec<u8> {
    let row_dim = storage_rows(out_features);
    let mut packed = vec![0u8; row_dim * in_features];
    for (row, weights) in w_q.chunks_exact(in_features).take(out_features).enumerate() {
        let (slot, packed_row) = (row / row_dim, row % row_dim);
        for (column, &q) in weights.iter().enumerate() {
            let code = (q.clamp(-1, 1) + 1) as u8;
            packed[packed_row * in_features + column] |= code << (2 * slot);
        }
    }
    packed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_then_unpack_round_trips_odd_shapes() {
        for (out, inp) in [(1, 1), (3, 5), (4, 7), (5, 3), (9, 2), (13, 33)] {
            let w: Vec<i8> = (0..out * inp)
                .map(|i| ((i * 7 + 3) % 3) as i8 - 1)
                .collect();
            let packed = pack_storage(&w, out, inp);
            assert_eq!(packed.len(), out.div_ceil(4) * inp);
            assert_eq!(unpack_storage(&packed, out, inp).unwrap(), w);
        }
    }

    #[test]
    fn storage_layout_matches_hf_pack_weights() {
        // out = 5 -> row_dim = 2: row 0 -> (j=0, i=0), row 1 -> (j=1, i=0),
        // row 2 -> (j=0, i=1), row 4 -> (j=0, i=2); hand-computed bytes.
        let w: Vec<i8> = vec![1, 0, -1, 0, -1]; // [5, 1]
        let packed = pack_storage(&w, 5, 1);
        // packed[0] = code(row0)=2 | code(row2)=0 << 2 | code(row4)=0 << 4
        // packed[1] = code(row1)=1 | code(row3)=1 << 2
        assert_eq!(packed, vec![0b00_00_00_10, 0b00_00_01_01]);
    }

    #[test]
    fn code_three_and_wrong_sizes_are_rejected() {
        let err = unpack_storage(&[0b11], 1, 1).unwrap_err();
        assert!(matches!(
            err,
            KernelError::InvalidCode {
                row: 0,
                column: 0,
                ..
            }
        ));
        // Code 3 in an unused slot (out = 1 uses only slot 0) is ignored.
        assert_eq!(unpack_storage(&[0b1100_0001], 1, 1).unwrap(), vec![0]);
        let err = unpack_storage(&[0; 3], 5, 2).unwrap_err();
        assert!(matches!(err, KernelError::StorageSize { expected: 4, .. }));
    }
}
