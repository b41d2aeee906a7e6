//! Implementations of the stage kinds that need libtorch. Their configs,
//! options and metadata live in the root crate's `stages` registry (so
//! `validate`/`plan` work without libtorch); the work happens here.
mod attach_thoughts;
pub mod common;
mod convert_bitnet;
pub mod device;
mod device_info;
mod evaluate;
mod export;
pub mod generate;
pub mod inference_model;
mod link_or_copy;
mod load_checkpoint;
mod memory_probe;
mod profile_memory;
mod profile_speed;
pub mod thoughts;
pub mod timing_stats;
pub mod train;
mod train_step;

use anyhow::bail;
use bitnet_pipeline::stages::StageContext;

/// Dispatches to the kind named in the invocation.
pub fn run(ctx: &mut StageContext) -> anyhow::Result<()> {
    let kind = ctx.invocation.kind.clone();
    match kind.as_str() {
        "device_info" => device_info::run(ctx),
        "profile_memory" => profile_memory::run(ctx),
        "memory_probe" => memory_probe::run(ctx),
        "profile_speed" => profile_speed::run(ctx),
        "load_checkpoint" => load_checkpoint::run(ctx),
        "convert_bitnet" => convert_bitnet::run(ctx),
        "attach_thoughts" => attach_thoughts::run(ctx),
        "train" => train::run(ctx),
        "evaluate" => evaluate::run(ctx),
        "export" => export::run(ctx),
        "generate" => generate::run(ctx),
        other => bail!(
            "stage kind `{other}` has no libtorch implementation in this plugin (is the plugin older than the binary? rebuild with `cargo build --workspace`)"
        ),
    }
}
