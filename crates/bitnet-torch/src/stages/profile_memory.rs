//! `profile_memory`: runs one `memory_probe` child per side and turns their
//! numbers into the comparison metrics (see the root crate's
//! `stages::profile_memory` for the metric names and the method).
//!
//! Each child is the running `bitnet-pipeline` binary (`exec-stage` of a
//! probe invocation written under `.probe/`, a dot folder, so not an
//! artifact): a fresh process per side, so one side's allocations, freed
//! pages kept by the allocator, or libtorch caches never count for the other.
use std::path::Path;
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use bitnet_pipeline::engine::protocol::{Event, Invocation};
use bitnet_pipeline::stages::profile_memory::{MemoryProbeConfig, ProfileMemoryConfig};
use bitnet_pipeline::stages::profiling::Side;
use bitnet_pipeline::stages::StageContext;
use bitnet_pipeline::store::Metric;
use serde_json::{json, Value};

use super::profile_models::side_file;

/// What one probe child reported.
struct SideResult {
    weight_bytes: f64,
    peak_bytes: f64,
    meta: Value,
}

fn run_probe(ctx: &StageContext, probe: &MemoryProbeConfig) -> Result<SideResult> {
    let side = probe.side.name();
    let dir = ctx.output_dir().join(".probe").join(side);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the probe folder {}", dir.display()))?;
    let inv = Invocation {
        run_id: ctx.invocation.run_id,
        stage: format!("{}.probe-{side}", ctx.invocation.stage),
        kind: "memory_probe".into(),
        config: serde_json::to_value(probe)?,
        output_dir: dir.clone(),
        pipeline_dir: ctx.invocation.pipeline_dir.clone(),
        upstream: Default::default(),
        device: ctx.invocation.device.clone(),
        seed: ctx.invocation.seed,
        params: Value::Null,
        attempt: 0,
    };
    let inv_path = dir.join("invocation.json");
    std::fs::write(&inv_path, serde_json::to_vec_pretty(&inv)?)
        .with_context(|| format!("writing {}", inv_path.display()))?;
    let exe =
        std::env::current_exe().context("cannot locate the running bitnet-pipeline binary")?;
    let out = Command::new(&exe)
        .arg("exec-stage")
        .arg(&inv_path)
        .output()
        .with_context(|| format!("starting the {side} memory probe {}", exe.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut metrics: Vec<Metric> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    for line in stdout.lines() {
        match Event::from_line(line) {
            Some(Ok(Event::Metric(m))) => metrics.push(m),
            Some(Ok(Event::Error { message })) => errors.push(message),
            Some(Err(e)) => bail!("the {side} memory probe sent an unreadable event ({e}): {line}"),
            _ => {}
        }
    }
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(10).collect();
        let detail = if errors.is_empty() {
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        } else {
            errors.join("; ")
        };
        bail!("the {side} memory probe failed ({}): {detail}", out.status);
    }
    let get = |key: &str| -> Result<&Metric> {
        metrics.iter().find(|m| m.key == key).ok_or_else(|| {
            anyhow!("the {side} memory probe reported no `{key}` (a bug; please report it)")
        })
    };
    let peak = get("peak_bytes")?;
    Ok(SideResult {
        weight_bytes: get("weight_bytes")?.value,
        peak_bytes: peak.value,
        meta: peak.meta.clone().unwrap_or(Value::Null),
    })
}

fn ratio(num: f64, den: f64, what: &str) -> Result<f64> {
    if !(num.is_finite() && den.is_finite() && num > 0.0 && den > 0.0) {
        bail!("cannot compute `{what}` from {num} / {den}: both sides must have measured a positive amount");
    }
    Ok(num / den)
}

pub fn run(ctx: &mut StageContext) -> Result<()> {
    let c = ProfileMemoryConfig::parse(ctx.config()).map_err(|e| anyhow!(e.message))?;
    let device = super::device::resolve(ctx.invocation.device.as_deref())?;
    let baseline_file = side_file(ctx, &c.baseline, Side::Baseline)?;
    let bitnet_file = side_file(ctx, &c.bitnet, Side::Bitnet)?;
    let mut results = Vec::new();
    for (i, (side, file)) in [
        (Side::Baseline, &baseline_file),
        (Side::Bitnet, &bitnet_file),
    ]
    .into_iter()
    .enumerate()
    {
        ctx.progress(
            i as u64,
            Some(2),
            format!("measuring {} in an isolated process", side.name()),
        );
        let probe = MemoryProbeConfig {
            side,
            model: absolute(file),
            dtype: c.dtype,
            batch_sizes: c.batch_sizes.clone(),
            seq_lens: c.seq_lens.clone(),
            backend: c.backend,
        };
        results.push(run_probe(ctx, &probe)?);
    }
    ctx.progress(2, Some(2), "done");
    let (base, bit) = (&results[0], &results[1]);
    let inputs = json!({"batch_sizes": c.batch_sizes, "seq_lens": c.seq_lens});
    let dev = super::device::name(device);
    let common = |side: Side, file: &Path| {
        json!({
            "side": side.name(),
            "file": file.display().to_string(),
            "dtype": c.dtype.name(),
            "device": dev,
            "inputs": inputs,
        })
    };
    let merge = |mut a: Value, b: &Value| {
        if let (Some(a), Some(b)) = (a.as_object_mut(), b.as_object()) {
            for (k, v) in b {
                a.insert(k.clone(), v.clone());
            }
        }
        a
    };
    let weights_counted = "exact bytes of the stored tensors: numel x dtype size; packed layers count u8 codes + one f32 scale; tied embeddings once";
    for (side, file, r) in [
        (Side::Baseline, &baseline_file, base),
        (Side::Bitnet, &bitnet_file, bit),
    ] {
        let mut wmeta = common(side, file);
        wmeta["counted"] = json!(weights_counted);
        ctx.metric_full(
            &format!("weight_bytes_{}", side.name()),
            None,
            r.weight_bytes,
            Some("bytes"),
            Some(wmeta),
        );
        ctx.metric_full(
            &format!("peak_bytes_{}", side.name()),
            None,
            r.peak_bytes,
            Some("bytes"),
            Some(merge(common(side, file), &r.meta)),
        );
    }
    let memory_reduction = ratio(base.peak_bytes, bit.peak_bytes, "memory_reduction")?;
    let weight_reduction = ratio(
        base.weight_bytes,
        bit.weight_bytes,
        "weight_memory_reduction",
    )?;
    let method = base.meta.get("method").cloned().unwrap_or(Value::Null);
    let backend = bit.meta.get("backend").cloned().unwrap_or(Value::Null);
    ctx.metric_full(
        "memory_reduction",
        None,
        memory_reduction,
        Some("x"),
        Some(json!({
            "definition": "peak_bytes_baseline / peak_bytes_bitnet",
            "method": method,
            "device": dev,
            "dtype": c.dtype.name(),
            "inputs": inputs,
            "bitnet_backend": backend,
        })),
    );
    ctx.metric_full(
        "weight_memory_reduction",
        None,
        weight_reduction,
        Some("x"),
        Some(json!({
            "definition": "weight_bytes_baseline / weight_bytes_bitnet",
            "counted": weights_counted,
            "dtype": c.dtype.name(),
        })),
    );
    let report = json!({
        "baseline": {"weight_bytes": base.weight_bytes, "peak_bytes": base.peak_bytes, "meta": base.meta},
        "bitnet": {"weight_bytes": bit.weight_bytes, "peak_bytes": bit.peak_bytes, "meta": bit.meta},
        "memory_reduction": memory_reduction,
        "weight_memory_reduction": weight_reduction,
        "dtype": c.dtype.name(),
        "device": dev,
        "inputs": inputs,
    });
    let path = ctx.output_dir().join("memory.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn absolute(p: &Path) -> std::path::PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
