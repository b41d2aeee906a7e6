//! Errors of the packed ternary kernels.
//!
//! Kernels sit below the model library, which knows tensor names; these
//! errors therefore describe the buffer or tensor role ("packed weight",
//! "input activations") and the expected shape, and the caller adds the
//! checkpoint key.

/// Why a packed ternary kernel refused its inputs.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The packed weight buffer length disagrees with `[ceil(out/4), in]`.
    #[error(
        "packed ternary weight has {actual} bytes but shape [{out_features}, {in_features}] \
         needs {expected} (= ceil({out_features}/4) * {in_features}); check that the tensor \
         uses the HF BitNet uint8 packing and that out/in features are not swapped"
    )]
    StorageSize {
        out_features: usize,
        in_features: usize,
        expected: usize,
        actual: usize,
    },
    /// A used 2-bit slot holds code 3, which no ternary value maps to.
    #[error(
        "packed ternary weight byte {byte_index} holds code 3 for weight row {row}, column \
         {column}; valid codes are 0, 1, 2 (= q + 1), so the tensor is not in the HF BitNet \
         packing or is corrupt"
    )]
    InvalidCode {
        byte_index: usize,
        row: usize,
        column: usize,
    },
    /// A zero dimension or one so large that the `i32` accumulator could overflow.
    #[error(
        "packed ternary weight shape [{out_features}, {in_features}] is unsupported: both \
         dimensions must be at least 1 and in_features at most {max_in_features} so that \
         the i32 accumulation cannot overflow"
    )]
    Dimensions {
        out_features: usize,
        in_features: usize,
        max_in_features: usize,
    },
    /// The weight scale is not a finite positive number.
    #[error(
        "packed ternary weight scale is {w_scale}; it must be finite and positive \
         (BitNet stores max(mean|W|, 1e-5))"
    )]
    WeightScale { w_scale: f32 },
    /// An input or output buffer has the wrong number of elements.
    #[error("{what} has {actual} elements but {rows} rows x {columns} columns needs {expected}")]
    BufferSize {
        what: &'static str,
        rows: usize,
        columns: usize,
        expected: usize,
        actual: usize,
    },
    /// `BITNET_KERNEL` names no known path.
    #[error("{var}={value:?} is not a kernel path; use one of scalar, avx2, avx512vnni (or unset it for automatic selection)")]
    UnknownKernel { var: &'static str, value: String },
    /// The requested path needs CPU features this machine lacks.
    #[error("kernel path {path} needs CPU features {needs} that this CPU lacks; choose scalar or unset BITNET_KERNEL")]
    Unsupported {
        path: &'static str,
        needs: &'static str,
    },
    /// The worker thread pool could not be created.
    #[error("could not start the packed-kernel thread pool with {threads} threads: {message}")]
    ThreadPool { threads: usize, message: String },
    /// A task of a parallel region panicked (on the calling thread or a
    /// worker); the region finished on the other threads and the pool
    /// stays usable, but the output is incomplete.
    #[error("a packed-kernel task panicked: {message}; this is a bug, please report it")]
    TaskPanicked { message: String },
}
