//! `profile_speed`: interleaved latency measurement of the baseline and the
//! BitNet packed form in this process (metric names and method in the root
//! crate's `stages::profile_speed`).
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use bitnet_pipeline::stages::profile_speed::ProfileSpeedConfig;
use bitnet_pipeline::stages::profiling::Side;
use bitnet_pipeline::stages::StageContext;
use serde_json::json;
use tch::{Device, Tensor};

use super::profile_models::{load_side, random_tokens, side_file, LoadedModel};

/// Order statistics of one side on one shape, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyStats {
    pub median_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
}

/// Nearest-rank percentile (`q` in 0..=1) of sorted samples.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let rank = (q * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// Median (mean of the two middle samples for even counts), p95, p99, mean.
pub fn latency_stats(samples_ms: &[f64]) -> Option<LatencyStats> {
    if samples_ms.is_empty() || samples_ms.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let mut s = samples_ms.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Some(LatencyStats {
        median_ms: median,
        p95_ms: percentile(&s, 0.95),
        p99_ms: percentile(&s, 0.99),
        mean_ms: s.iter().sum::<f64>() / n as f64,
    })
}

/// Geometric mean of positive ratios.
pub fn geometric_mean(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() || xs.iter().any(|&x| !(x.is_finite() && x > 0.0)) {
        return None;
    }
    Some((xs.iter().map(|x| x.ln()).sum::<f64>() / xs.len() as f64).exp())
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// One timed forward, in milliseconds; the device is synchronised before
/// the clock starts and before it is read.
fn time_forward(model: &LoadedModel, tokens: &Tensor, device: Device) -> Result<f64> {
    sync(device);
    let t0 = Instant::now();
    let logits = model.model.forward(tokens)?; // (B, T, V)
    sync(device);
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    drop(logits);
    Ok(ms)
}

pub fn run(ctx: &mut StageContext) -> Result<()> {
    let c = ProfileSpeedConfig::parse(ctx.config()).map_err(|e| anyhow!(e.message))?;
    let device = super::device::resolve(ctx.invocation.device.as_deref())?;
    let baseline_file = side_file(ctx, &c.baseline, Side::Baseline)?;
    let bitnet_file = side_file(ctx, &c.bitnet, Side::Bitnet)?;
    if let Some(t) = c.threads {
        tch::set_num_threads(t);
    }
    let threads = tch::get_num_threads();
    let base = load_side(&baseline_file, Side::Baseline, c.dtype, c.backend, device)?;
    let bit = load_side(&bitnet_file, Side::Bitnet, c.dtype, c.backend, device)?;
    if base.model.config.vocab_size != bit.model.config.vocab_size {
        bail!(
            "the baseline ({}) and BitNet ({}) models have different vocabularies ({} vs {}); profile two forms of the same model",
            baseline_file.display(),
            bitnet_file.display(),
            base.model.config.vocab_size,
            bit.model.config.vocab_size
        );
    }
    let vocab = base.model.config.vocab_size;
    let dev = super::device::name(device);
    let shapes = c.shapes();
    let total = shapes.len() as u64 * u64::from(c.warmup + c.iters);
    let mut pos = 0u64;
    let mut speedups = Vec::new();
    let mut decode_speedup = None;
    let mut table = Vec::new();
    for (step, &(mode, batch, seq)) in shapes.iter().enumerate() {
        let tokens = random_tokens(vocab, batch, seq, device)?;
        let mut samples: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        tch::no_grad(|| -> Result<()> {
            for _ in 0..c.warmup {
                time_forward(&base, &tokens, device)?;
                time_forward(&bit, &tokens, device)?;
                pos += 1;
            }
            ctx.progress(
                pos,
                Some(total),
                format!("{mode} b={batch} s={seq}: timing"),
            );
            for i in 0..c.iters {
                // A B, then B A: neither side always runs right after the other.
                let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
                for side in order {
                    let m = if side == 0 { &base } else { &bit };
                    samples[side].push(time_forward(m, &tokens, device)?);
                }
                pos += 1;
                if (i + 1) % 10 == 0 {
                    ctx.progress(
                        pos,
                        Some(total),
                        format!("{mode} b={batch} s={seq}: {}/{} iterations", i + 1, c.iters),
                    );
                }
            }
            Ok(())
        })
        .with_context(|| format!("timing {mode} batch {batch} seq {seq}"))?;
        let mut medians = [0.0; 2];
        let mut row = json!({"mode": mode, "batch": batch, "seq": seq});
        for (i, (side, model)) in [(Side::Baseline, &base), (Side::Bitnet, &bit)]
            .into_iter()
            .enumerate()
        {
            let st = latency_stats(&samples[i]).ok_or_else(|| {
                anyhow!(
                    "no finite timings for {} (a bug; please report it)",
                    side.name()
                )
            })?;
            let secs = st.median_ms / 1e3;
            let samples_per_s = batch as f64 / secs;
            let tokens_per_s = (batch * seq) as f64 / secs;
            let meta = json!({
                "side": side.name(), "mode": mode, "batch": batch, "seq": seq,
                "median_ms": st.median_ms, "p95_ms": st.p95_ms, "p99_ms": st.p99_ms, "mean_ms": st.mean_ms,
                "samples_per_s": samples_per_s, "tokens_per_s": tokens_per_s,
                "iters": c.iters, "warmup": c.warmup,
                "backend": model.backend, "threads": threads, "device": dev, "dtype": c.dtype.name(),
            });
            let s = side.name();
            let step = Some(step as i64);
            for (key, value, unit) in [
                (format!("latency_ms_median_{s}"), st.median_ms, "ms"),
                (format!("latency_ms_p95_{s}"), st.p95_ms, "ms"),
                (format!("latency_ms_p99_{s}"), st.p99_ms, "ms"),
                (format!("samples_per_s_{s}"), samples_per_s, "samples/s"),
                (format!("tokens_per_s_{s}"), tokens_per_s, "tokens/s"),
            ] {
                ctx.metric_full(&key, step, value, Some(unit), Some(meta.clone()));
            }
            medians[i] = st.median_ms;
            row[s] = meta;
        }
        let speedup = medians[0] / medians[1];
        ctx.metric_full(
            "shape_speedup",
            Some(step as i64),
            speedup,
            Some("x"),
            Some(json!({"mode": mode, "batch": batch, "seq": seq, "definition": "median baseline / median bitnet"})),
        );
        row["speedup"] = json!(speedup);
        table.push(row);
        speedups.push(speedup);
        if mode == "decode" {
            decode_speedup = Some(speedup);
        }
    }
    let overall = geometric_mean(&speedups).ok_or_else(|| {
        anyhow!("speedups {speedups:?} are not all positive and finite; cannot summarise")
    })?;
    let common = json!({
        "device": dev, "threads": threads, "dtype": c.dtype.name(),
        "bitnet_backend": bit.backend, "iters": c.iters, "warmup": c.warmup,
        "method": "interleaved A B / B A per iteration after warm-up, same token ids and threads; CUDA synchronised before each clock read",
    });
    let mut meta = common.clone();
    meta["definition"] = json!("geometric mean over shapes of median baseline / median bitnet");
    meta["shapes"] = json!(shapes.len());
    ctx.metric_full("speedup", None, overall, Some("x"), Some(meta));
    if let Some(d) = decode_speedup {
        let mut meta = common.clone();
        meta["definition"] =
            json!("median baseline / median bitnet of the batch-1 one-token forward");
        ctx.metric_full("speedup_decode", None, d, Some("x"), Some(meta));
    }
    let report = json!({"shapes": table, "speedup": overall, "speedup_decode": decode_speedup, "method": common});
    let path = ctx.output_dir().join("speed.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_statistics() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        let st = latency_stats(&s).unwrap();
        assert_eq!(st.median_ms, 50.5);
        assert_eq!(st.p95_ms, 95.0);
        assert_eq!(st.p99_ms, 99.0);
        let st = latency_stats(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((st.median_ms, st.p99_ms), (2.0, 3.0));
        assert!(latency_stats(&[]).is_none());
        assert!(latency_stats(&[f64::NAN]).is_none());
    }

    #[test]
    fn geometric_mean_of_ratios() {
        let g = geometric_mean(&[2.0, 8.0]).unwrap();
        assert!((g - 4.0).abs() < 1e-12);
        assert!(geometric_mean(&[1.0, 0.0]).is_none());
        assert!(geometric_mean(&[]).is_none());
    }
}
