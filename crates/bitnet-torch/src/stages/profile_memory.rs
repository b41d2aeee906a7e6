//! `profile_memory`: runs `repeats` `memory_probe` children per side,
//! interleaved, and turns their numbers into the comparison metrics (see the root crate's
//! `stages::profile_memory` for the metric names and the method).
//!
//! Each child is the running `bitnet-pipeline` binary (`exec-stage` of a
//! probe invocation written under `.probe/`, a dot folder, so not an
//! artifact): a fresh process per side, so one side's allocations, freed
//! pages kept by the allocator, or libtorch caches never count for the other.
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use bitnet_pipeline::engine::protocol::{Event, Invocation};
use bitnet_pipeline::stages::profile_memory::{MemoryProbeConfig, ProbeWork, ProfileMemoryConfig};
use bitnet_pipeline::stages::profiling::{DecodePathChoice, Side, TernaryBackendChoice};
use bitnet_pipeline::stages::StageContext;
use bitnet_pipeline::store::Metric;
use serde_json::{json, Value};

use super::inference_model::side_dir;

/// What one probe child reported.
struct SideResult {
    peak_bytes: f64,
    meta: Value,
}

fn run_probe(ctx: &StageContext, probe: &MemoryProbeConfig, repeat: u32) -> Result<SideResult> {
    let side = probe.side.name();
    let dir = ctx
        .output_dir()
        .join(".probe")
        .join(format!("{side}-{repeat}"));
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

/// Median of a non-empty list (mean of the two middle values when even).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    super::timing_stats::quantile(&v, 0.5)
}

/// One side over all its repeats.
struct SideSummary {
    side: Side,
    dir: std::path::PathBuf,
    peaks: Vec<f64>,
    /// The meta of the first repeat: the model facts, the same every time.
    first: Value,
}

impl SideSummary {
    fn number(&self, key: &str) -> Result<f64> {
        self.first.get(key).and_then(Value::as_f64).ok_or_else(|| {
            anyhow!(
                "the {} memory probe reported no `{key}` (a bug; please report it)",
                self.side.name()
            )
        })
    }
}

/// Whether the BitNet side runs the fused decode form, and why: `auto`
/// takes it where it applies (CPU, not the unpack backend, batch 1, no
/// thought mixers), `fused` demands it, `libtorch` never takes it.
fn resolve_decode_path(
    c: &ProfileMemoryConfig,
    device: tch::Device,
    bitnet_dir: &std::path::Path,
) -> Result<(bool, String)> {
    let refusal = if c.decode_path == DecodePathChoice::Libtorch {
        Some("`decode_path: libtorch`".to_string())
    } else if device != tch::Device::Cpu {
        Some(format!(
            "the fused path runs on the CPU, not {}",
            super::device::name(device)
        ))
    } else if c.backend == TernaryBackendChoice::Unpack {
        Some("`backend: unpack` (the fused path runs on the kernels)".to_string())
    } else if c.batch_sizes != [1] {
        Some(format!(
            "batch_sizes {:?}: the fused path decodes one sequence (batch_sizes: [1])",
            c.batch_sizes
        ))
    } else if bitnet_dir.join(super::common::THOUGHTS_FILE).is_file() {
        Some("the BitNet model has Quiet-STaR thought mixers; the fused path has none".to_string())
    } else {
        None
    };
    match (refusal, c.decode_path) {
        (None, p) => Ok((true, format!("decode_path: {}", p.name()))),
        (Some(r), DecodePathChoice::Fused) => {
            bail!(
                "`decode_path: fused` cannot run here: {r}; use `decode_path: auto` or `libtorch`"
            )
        }
        (Some(r), _) => Ok((false, r)),
    }
}

/// What the probe of `side` runs: both sides get the same inputs and work;
/// only the BitNet side runs the fused form when `fused`.
fn probe_config(
    c: &ProfileMemoryConfig,
    side: Side,
    dir: &std::path::Path,
    work: ProbeWork,
    fused: bool,
) -> MemoryProbeConfig {
    MemoryProbeConfig {
        side,
        stage_dir: dir.to_path_buf(),
        dtype: c.dtype,
        batch_sizes: c.batch_sizes.clone(),
        seq_lens: c.seq_lens.clone(),
        backend: c.backend,
        work,
        fused: fused && side == Side::Bitnet,
    }
}

pub fn run(ctx: &mut StageContext) -> Result<()> {
    let c = ProfileMemoryConfig::parse(ctx.config()).map_err(|e| anyhow!(e.message))?;
    let device = super::device::resolve(ctx.invocation.device.as_deref())?;
    let mut sides = [
        SideSummary {
            side: Side::Baseline,
            dir: side_dir(ctx, &c.baseline, Side::Baseline)?,
            peaks: Vec::new(),
            first: Value::Null,
        },
        SideSummary {
            side: Side::Bitnet,
            dir: side_dir(ctx, &c.bitnet, Side::Bitnet)?,
            peaks: Vec::new(),
            first: Value::Null,
        },
    ];
    let (fused, decode_reason) = resolve_decode_path(&c, device, &sides[1].dir)?;
    let work = if fused {
        ProbeWork::Decode {
            tokens: c.decode_tokens,
        }
    } else {
        ProbeWork::Forward
    };
    let total = u64::from(c.repeats) * 2;
    for repeat in 0..c.repeats {
        // Interleaved, and the order flips each round, so drift in the
        // machine's state hits both sides alike.
        let order = if repeat % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let s = &mut sides[i];
            ctx.progress(
                u64::from(repeat) * 2 + u64::from(i as u8),
                Some(total),
                format!(
                    "{} in an isolated process ({}/{})",
                    s.side.name(),
                    repeat + 1,
                    c.repeats
                ),
            );
            let probe = probe_config(&c, s.side, &s.dir, work, fused);
            let r = run_probe(ctx, &probe, repeat)?;
            s.peaks.push(r.peak_bytes);
            if s.first.is_null() {
                s.first = r.meta;
            }
        }
    }
    ctx.progress(total, Some(total), "done");
    let inputs = json!({"batch_sizes": c.batch_sizes, "seq_lens": c.seq_lens,
        "work": work.describe(), "bitnet_decode_path": if fused { "fused" } else { "libtorch" },
        "decode_path_reason": decode_reason});
    let dev = super::device::name(device);
    let stored_counted = "exact bytes of the weights in their stored form: numel x dtype size; packed layers count u8 codes + one f32 scale; thought mixers included; tied embeddings once";
    let resident_counted = "every byte the inference model holds for its weights while it runs, all copies: packed layers count the backend's own copy (kernel layout or unpacked f32 codes) after the stored u8 codes are released; thought mixers included";
    let mut medians = [0.0; 2];
    let mut summary = serde_json::Map::new();
    for (i, s) in sides.iter().enumerate() {
        let name = s.side.name();
        let stored = s.number("weight_bytes_stored")?;
        let resident = s.number("weight_bytes_resident")?;
        let parameters = s.number("parameters")?;
        let peak = median(&s.peaks);
        medians[i] = peak;
        let min = s.peaks.iter().copied().fold(f64::INFINITY, f64::min);
        let max = s.peaks.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let model = |counted: &str| {
            json!({
                "side": name, "dir": s.dir.display().to_string(), "dtype": c.dtype.name(),
                "device": dev, "backend": s.first.get("backend"), "matmul": s.first.get("matmul"),
                "thoughts_file": s.first.get("thoughts_file"), "counted": counted,
            })
        };
        ctx.metric_full(
            &format!("weight_bytes_stored_{name}"),
            None,
            stored,
            Some("bytes"),
            Some(model(stored_counted)),
        );
        ctx.metric_full(
            &format!("weight_bytes_resident_{name}"),
            None,
            resident,
            Some("bytes"),
            Some(model(resident_counted)),
        );
        ctx.metric_full(
            &format!("parameters_{name}"),
            None,
            parameters,
            Some("params"),
            Some(model(
                "logical weights of every layer, embeddings, norms and attached mixers",
            )),
        );
        let mut peak_meta = s.first.clone();
        peak_meta["side"] = json!(name);
        peak_meta["inputs"] = inputs.clone();
        peak_meta["repeats"] = json!(c.repeats);
        peak_meta["peaks_bytes"] = json!(s.peaks);
        peak_meta["min_bytes"] = json!(min);
        peak_meta["max_bytes"] = json!(max);
        peak_meta["statistic"] = json!("median over isolated processes");
        ctx.metric_full(
            &format!("peak_bytes_{name}"),
            None,
            peak,
            Some("bytes"),
            Some(peak_meta.clone()),
        );
        summary.insert(
            name.to_string(),
            json!({"weight_bytes_stored": stored, "weight_bytes_resident": resident,
                "parameters": parameters, "peak_bytes": peak, "peaks_bytes": s.peaks, "meta": peak_meta}),
        );
    }
    let memory_reduction = ratio(medians[0], medians[1], "memory_reduction")?;
    let resident = [
        sides[0].number("weight_bytes_resident")?,
        sides[1].number("weight_bytes_resident")?,
    ];
    let stored = [
        sides[0].number("weight_bytes_stored")?,
        sides[1].number("weight_bytes_stored")?,
    ];
    let weight_reduction = ratio(resident[0], resident[1], "weight_memory_reduction")?;
    let stored_reduction = ratio(stored[0], stored[1], "weight_memory_reduction_stored")?;
    let method = sides[0].first.get("method").cloned().unwrap_or(Value::Null);
    let spread = |s: &SideSummary| {
        json!({"min": s.peaks.iter().copied().fold(f64::INFINITY, f64::min),
               "max": s.peaks.iter().copied().fold(f64::NEG_INFINITY, f64::max)})
    };
    ctx.metric_full(
        "memory_reduction",
        None,
        memory_reduction,
        Some("x"),
        Some(json!({
            "definition": "median peak_bytes_baseline / median peak_bytes_bitnet",
            "method": method,
            "repeats": c.repeats,
            "spread_baseline_bytes": spread(&sides[0]),
            "spread_bitnet_bytes": spread(&sides[1]),
            "device": dev,
            "dtype": c.dtype.name(),
            "inputs": inputs,
            "bitnet_backend": sides[1].first.get("backend"),
        })),
    );
    ctx.metric_full(
        "weight_memory_reduction",
        None,
        weight_reduction,
        Some("x"),
        Some(json!({
            "definition": "weight_bytes_resident_baseline / weight_bytes_resident_bitnet",
            "counted": resident_counted,
            "dtype": c.dtype.name(),
            "bitnet_backend": sides[1].first.get("backend"),
        })),
    );
    ctx.metric_full(
        "weight_memory_reduction_stored",
        None,
        stored_reduction,
        Some("x"),
        Some(json!({
            "definition": "weight_bytes_stored_baseline / weight_bytes_stored_bitnet",
            "counted": stored_counted,
            "dtype": c.dtype.name(),
        })),
    );
    let report = json!({
        "sides": summary,
        "memory_reduction": memory_reduction,
        "weight_memory_reduction": weight_reduction,
        "weight_memory_reduction_stored": stored_reduction,
        "repeats": c.repeats,
        "dtype": c.dtype.name(),
        "device": dev,
        "inputs": inputs,
    });
    let path = ctx.output_dir().join("memory.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: Value) -> ProfileMemoryConfig {
        let mut v = json!({"baseline": "load", "bitnet": "convert"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        ProfileMemoryConfig::parse(&v).unwrap()
    }

    /// Issue #15: `auto` takes the fused form only where it applies, says
    /// why not otherwise, and `fused` refuses what it cannot run.
    #[test]
    fn decode_path_resolution() {
        let dir = tempfile::tempdir().unwrap();
        let cpu = tch::Device::Cpu;
        let one = config(json!({"batch_sizes": [1]}));
        assert!(resolve_decode_path(&one, cpu, dir.path()).unwrap().0);
        let (f, why) = resolve_decode_path(&config(json!({})), cpu, dir.path()).unwrap();
        assert!(!f && why.contains("batch_sizes [1, 8]"), "{why}");
        let lt = config(json!({"batch_sizes": [1], "decode_path": "libtorch"}));
        assert!(!resolve_decode_path(&lt, cpu, dir.path()).unwrap().0);
        let (f, why) = resolve_decode_path(&one, tch::Device::Cuda(0), dir.path()).unwrap();
        assert!(!f && why.contains("CPU"), "{why}");
        std::fs::write(dir.path().join(super::super::common::THOUGHTS_FILE), b"x").unwrap();
        let (f, why) = resolve_decode_path(&one, cpu, dir.path()).unwrap();
        assert!(!f && why.contains("thought mixers"), "{why}");
        let forced = config(json!({"batch_sizes": [1], "decode_path": "fused"}));
        let e = resolve_decode_path(&forced, cpu, dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("`decode_path: fused` cannot run here"), "{e}");
    }

    /// Both sides of a profile run the same inputs and the same work; only
    /// the BitNet side may run the fused form.
    #[test]
    fn both_probes_do_the_same_work() {
        let c = config(json!({"batch_sizes": [1], "seq_lens": [16, 32]}));
        let work = ProbeWork::Decode { tokens: 16 };
        let dir = std::path::Path::new("/x");
        let base = probe_config(&c, Side::Baseline, dir, work, true);
        let bit = probe_config(&c, Side::Bitnet, dir, work, true);
        assert!(!base.fused && bit.fused);
        let strip = |p: &MemoryProbeConfig| {
            let mut v = serde_json::to_value(p).unwrap();
            for k in ["side", "fused"] {
                v.as_object_mut().unwrap().remove(k);
            }
            v
        };
        assert_eq!(strip(&base), strip(&bit));
        assert_eq!(base.work, work);
    }
}
