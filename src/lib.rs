//! bitnet-pipeline: declarative experiment pipelines for compressing language
//! models to BitNet b1.58.
//!
//! Layers, lowest first (docs/architecture.md draws them): `format` and
//! `liveness` (leaf utilities) -> `pipeline` (YAML spec and validation) and
//! `store` (SQLite results DB) -> `engine` (scheduling, caching, child
//! processes) -> `stages` (stage-kind contracts; the only module that joins
//! the engine with work) -> `report` -> `cli`. A module never imports one
//! above it. The analyzer (`pot10`), the kernels (`bitnet-kernels`) and
//! everything that links libtorch (`bitnet-torch`) are crates of their own.

pub mod cli;
pub mod engine;
pub mod format;
pub mod liveness;
pub mod pipeline;
pub mod report;
pub mod stages;
pub mod store;
