//! The packed ternary kernels (crate `bitnet-kernels`) on libtorch tensors.
//!
//! The kernels are plain Rust over slices and know no tch; this module is
//! their adapter: [`TensorMatmul`] checks a tensor (CPU, f32, contiguous,
//! `[..., in_features]`) before reading its memory, and [`KernelBackend`]
//! offers them to the model library as a `TernaryBackend`. Everything the
//! kernels crate exports is re-exported here so model code has one path.

pub mod backend;
pub mod fused;
mod torch;

pub use backend::KernelBackend;
pub use bitnet_kernels::*;
pub use torch::{TensorKernelError, TensorMatmul};
