//! Packed ternary matmul kernels: BitNet b1.58 weights computed on directly.
//!
//! BitNet only pays off at inference when the 2-bit weights are never
//! dequantized: a ternary x int8 product needs no multiplies, and streaming
//! 2 bits per weight instead of 16 or 32 is what makes the decode step
//! (batch 1, memory bound) fast. This crate holds the CPU kernels in plain
//! Rust, with no libtorch and no model: callers hand it slices.
//!
//! * [`storage`]: the HF transformers BitNet storage packing (the checkpoint
//!   format) and reference pack/unpack helpers for tests and tools;
//! * [`PackedTernaryMatrix`]: the weight repacked once at load into the
//!   compute layout documented in [`matrix`], with GEMV / small-batch GEMM
//!   entry points (`matmul`, `matmul_i32`);
//! * [`quant`]: per-token absmax int8 activation quantization, matching the
//!   BitLinear fake-quant graph bit for bit;
//! * [`KernelPath`]: runtime CPU feature detection (AVX-512 VNNI, AVX2,
//!   portable scalar) and the `BITNET_KERNEL` override used by tests;
//! * [`set_num_threads`]: how many cores a matmul may use; the threads are
//!   a persistent pool (`pool.rs`) that spins [`SPIN_ENV_VAR`] microseconds
//!   between parallel regions before parking.
//!
//! All paths produce bit-identical `i32` accumulations; only the final
//! `i32 -> f32` scaling is floating point. The libtorch adapter (tensor
//! checks, the model's `TernaryBackend`) lives in `bitnet-torch`.

mod avx2;
mod avx512;
mod avx512_gemm;
mod dispatch;
mod error;
pub mod matrix;
mod pool;
pub mod quant;
mod scalar;
pub mod storage;
pub mod testing;

pub use dispatch::{num_threads, set_num_threads, KernelPath, KERNEL_ENV_VAR};
pub use error::KernelError;
pub use matrix::{for_each_chunk_mut, PackedTernaryMatrix};
pub use pool::{spin_window, DEFAULT_SPIN_US, SPIN_ENV_VAR};
pub use quant::{quantize_activations, QuantizedActivations};
