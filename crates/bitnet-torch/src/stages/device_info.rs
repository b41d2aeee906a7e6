//! `device_info`: what libtorch sees in this stage's process.
use bitnet_pipeline::stages::StageContext;
use serde_json::json;

pub fn run(ctx: &mut StageContext) -> anyhow::Result<()> {
    let device = super::device::resolve(ctx.invocation.device.as_deref())?;
    let cuda = tch::Cuda::is_available();
    let count = if cuda { tch::Cuda::device_count() } else { 0 };
    let threads = tch::get_num_threads();
    ctx.metric("cuda_available", if cuda { 1.0 } else { 0.0 }, None);
    ctx.metric("cuda_device_count", count as f64, None);
    ctx.metric("cpu_threads", threads as f64, Some("threads"));
    ctx.param("runtime.device", json!(super::device::name(device)));
    let report = json!({
        "device": super::device::name(device),
        "cuda_available": cuda,
        "cuda_device_count": count,
        "cpu_threads": threads,
    });
    std::fs::write(
        ctx.output_dir().join("device.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    Ok(())
}
