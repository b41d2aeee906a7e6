//! The BitNet model library: a LLaMA-family transformer in `tch`, BitNet b1.58
//! quantizers with the straight-through estimator, BitLinear, conversion of a
//! full-precision model, and the 2-bit packed inference form.
//!
//! Stage code builds models here and never the other way round: this module does
//! not know about the engine or the results store.

pub mod bitlinear;
pub mod config;
pub mod convert;
pub mod error;
pub mod generation;
pub mod kept;
pub mod model;
pub mod packing;
pub mod quant;
pub mod recompute;

pub use bitlinear::{BitLinear, Linear};
pub use config::Config;
pub use convert::{convert_to_bitnet, ConversionReport, ConvertSpec, SPEC_METADATA_KEY};
pub use error::{BitnetError, Result};
pub use generation::{
    cache_capacity, generate, generate_with, Decoder, Flow, GenerateOptions, Generation, Sampler,
    SamplingConfig, StopReason, TorchDecoder,
};
pub use kept::KeptStorage;
pub use model::{
    check_state_dict, expected_tensor_shapes, AttnOutputMixer, ForwardOptions, KvCache, LayerCache,
    LlamaModel, ModelOutput,
};
pub use packing::{
    pack_ternary, pack_ternary_slice, unpack_ternary, unpack_ternary_slice, PackedBitLinear,
    PackedLinear, ScaleConvention, TernaryBackend, TernaryMatmul, UnpackBackend,
};
pub use quant::{ActQuant, QuantConfig, WeightQuant};
pub use recompute::BlockCheckpoints;

#[cfg(test)]
mod tests;
