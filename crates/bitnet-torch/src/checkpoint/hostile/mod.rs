//! Hostile and corrupt inputs for every checkpoint-side parser (issue #16).
//!
//! Users load files from the internet: `.pt` zip pickles, safetensors, GGUF,
//! `config.json`, `tokenizer.json`. The property checked here, on generated and
//! mutated inputs: every input gives `Ok` or a typed error that names the file.
//! Never a panic (each case runs under `catch_unwind`), never an allocation a header
//! asked for before it was checked against the file (the parsers cap counts and sizes
//! by the bytes present), never a hang (work is bounded per byte).
//!
//! - [`harness`]: runs a property a bounded number of times in `cargo test`
//!   (deterministic seed), or for `HOSTILE_SOAK_SECS` seconds with random seeds in
//!   the soak (`scripts/soak-parsers.sh`), and reports cases/s and failures;
//! - [`gen`]: the generators: byte-level mutations, pickle streams, zip records,
//!   safetensors headers, GGUF files, JSON mutations;
//! - [`props`]: the properties, one test per parser;
//! - [`regressions`]: every input that ever failed, as a test;
//! - `crc_cost`: what the `.pt` CRC-32 check costs (ignored; `scripts/bench-pt-crc.sh`).

mod crc_cost;
pub(crate) mod gen;
pub(crate) mod harness;
mod props;
mod regressions;
