//! bitnet-pipeline: declarative experiment pipelines for compressing language
//! models to BitNet b1.58.
//!
//! Layers, each with strict boundaries (see `shared/design.md` section 2):
//! `pipeline` (YAML spec and validation) -> `engine` (scheduling, caching,
//! child processes) -> `store` (SQLite results DB). `stages` is the only
//! module that joins the engine with the model code.

pub mod cli;
pub mod engine;
pub mod pipeline;
pub mod pot10;
pub mod report;
pub mod stages;
pub mod store;
