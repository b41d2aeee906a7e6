//! The libtorch side of bitnet-pipeline.
//!
//! Everything that links libtorch lives in this crate so the `bitnet-pipeline`
//! binary (scheduler, CLI, lightweight stages) starts in milliseconds: loading
//! libtorch costs about 0.35 s of static initialisation per process, which a
//! pipeline of many small stages would pay once per stage. The binary loads
//! this crate's cdylib only in `exec-stage` children that run a torch kind.

pub mod autocast;
pub mod bitnet;
pub mod checkpoint;
pub mod cuda_memory;
pub mod data;
pub mod kernels;
pub mod plugin;
pub mod stages;
