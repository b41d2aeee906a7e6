//! `profile_speed`: interleaved latency measurement of the baseline and the
//! BitNet packed form in this process (metric names and method in the root
//! crate's `stages::profile_speed`; statistics in `timing_stats`). Prefill
//! shapes time the time to first token (the prompt on an empty KV cache, LM
//! head on the last position only, on both sides); decode shapes time one
//! step with the KV cache, filled once to the context length and cut back
//! to it before every sample. The BitNet side runs both on the fused Rust
//! loop where it applies (`decode_path`), else on the libtorch model.
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use bitnet_pipeline::stages::profile_speed::ProfileSpeedConfig;
use bitnet_pipeline::stages::profiling::{KeptDtypeChoice, Side};
use bitnet_pipeline::stages::StageContext;
use serde_json::{json, Value};
use tch::{Device, Tensor};

use super::inference_model::{
    fused_logit_difference, kind_of, load_model, load_model_with, random_tokens, side_dir,
    FusedRequest, LoadedModel,
};
use super::timing_stats::{
    bootstrap_ratio_interval, cores, geometric_mean, latency_stats, load_average, PairedSamples,
};
use crate::bitnet::KvCache;
use bitnet_infer::DecodeState;

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// One timed libtorch step: `tokens` `(B, T)` at positions `context..`
/// over the `context` cached positions (the cache is cut back to them
/// first, so every sample is the same work), logits of the last position
/// only, as generation computes them. A prefill is the step with
/// `context` 0 and the prompt as `tokens` (time to first token); a decode
/// step has one token.
fn time_torch_step(
    model: &LoadedModel,
    cache: &mut KvCache,
    tokens: &Tensor,
    context: i64,
    device: Device,
) -> Result<f64> {
    cache.truncate(context);
    sync(device);
    let t0 = Instant::now();
    let logits = model.model.forward_cached_last(tokens, cache)?; // (B, 1, V)
    sync(device);
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    drop(logits);
    Ok(ms)
}

/// The same step as [`time_torch_step`] on the fused Rust loop: the state
/// is cut back to `context` first (its buffers are sized for `ids` already,
/// so the timed call allocates nothing).
fn time_fused_step(
    model: &LoadedModel,
    state: &mut DecodeState,
    ids: &[u32],
    context: i64,
) -> Result<f64> {
    let fused = model.fused.as_ref().ok_or_else(|| {
        anyhow!("a fused decode state without a fused model (a bug; please report it)")
    })?;
    state.truncate(context as usize);
    let t0 = Instant::now();
    let logits = state.forward(fused, ids)?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    std::hint::black_box(logits);
    Ok(ms)
}

/// A side's cache: libtorch's, or the fused loop's state.
enum SideCache {
    Torch(KvCache),
    /// Boxed: the state (a dozen buffers) is much larger than a KvCache handle.
    Fused(Box<DecodeState>),
}

/// What one shape times on each side: `tokens` at positions `context..`
/// over a cache holding `context` positions, LM head on the last position.
/// Prefill: the `seq`-token prompt on an empty cache (`context` 0). Decode:
/// one token over a cache filled once, untimed, to `context` = `seq`.
struct Work {
    caches: [SideCache; 2],
    /// `(B, T)` ids for the libtorch sides.
    tokens: Tensor,
    /// The same ids for the fused side (batch 1).
    ids: Vec<u32>,
    context: i64,
}

/// Whether `model` runs this shape on the fused path (batch 1 only).
fn runs_fused(model: &LoadedModel, batch: i64) -> bool {
    model.fused.is_some() && batch == 1
}

/// The ids of a `(B, T)` tensor, flattened, as the fused path takes them.
fn ids_of(tokens: &Tensor) -> Result<Vec<u32>> {
    let ids = Vec::<i64>::try_from(tokens.f_flatten(0, -1)?.f_to_device(Device::Cpu)?)?;
    Ok(ids.iter().map(|&v| v as u32).collect())
}

impl Work {
    fn new(
        mode: &str,
        models: [&LoadedModel; 2],
        batch: i64,
        seq: i64,
        device: Device,
        dtype: bitnet_pipeline::stages::profiling::Dtype,
    ) -> Result<Work> {
        let vocab = models[0].model.config.vocab_size;
        let prompt = random_tokens(vocab, batch, seq, device)?;
        let decode = mode == "decode";
        // A prefill needs room for its prompt; a decode step for one more.
        let capacity = if decode { seq + 1 } else { seq };
        let prompt_ids = ids_of(&prompt)?;
        let fill = |m: &LoadedModel| -> Result<SideCache> {
            if let (true, Some(fused)) = (runs_fused(m, batch), m.fused.as_ref()) {
                let mut state = DecodeState::new(fused, capacity as usize, prompt_ids.len())?;
                if decode {
                    state.forward(fused, &prompt_ids)?;
                }
                return Ok(SideCache::Fused(Box::new(state)));
            }
            let mut cache = KvCache::new(&m.model, batch, capacity, kind_of(dtype))?;
            if decode {
                let _logits = tch::no_grad(|| m.model.forward_cached_last(&prompt, &mut cache))?;
            }
            Ok(SideCache::Torch(cache))
        };
        let caches = [fill(models[0])?, fill(models[1])?];
        let (tokens, context) = if decode {
            (random_tokens(vocab, batch, 1, device)?, seq)
        } else {
            (prompt, 0)
        };
        Ok(Work {
            caches,
            ids: ids_of(&tokens)?,
            tokens,
            context,
        })
    }

    fn time(&mut self, side: usize, model: &LoadedModel, device: Device) -> Result<f64> {
        match &mut self.caches[side] {
            SideCache::Torch(cache) => {
                time_torch_step(model, cache, &self.tokens, self.context, device)
            }
            SideCache::Fused(state) => time_fused_step(model, state, &self.ids, self.context),
        }
    }
}

/// One shape's result, kept for the overall figures.
struct ShapeResult {
    mode: &'static str,
    batch: i64,
    seq: i64,
    samples: [Vec<f64>; 2],
    speedup: f64,
}

fn shape_meta(r: &ShapeResult) -> Value {
    json!({"mode": r.mode, "batch": r.batch, "seq": r.seq})
}

pub fn run(ctx: &mut StageContext) -> Result<()> {
    let c = ProfileSpeedConfig::parse(ctx.config()).map_err(|e| anyhow!(e.message))?;
    let device = super::device::resolve(ctx.invocation.device.as_deref())?;
    let baseline_dir = side_dir(ctx, &c.baseline, Side::Baseline)?;
    let bitnet_dir = side_dir(ctx, &c.bitnet, Side::Bitnet)?;
    if let Some(t) = c.threads {
        tch::set_num_threads(t);
    }
    let threads = tch::get_num_threads();
    let cores = cores();
    let load_at_start = load_average();
    let base = load_model(&baseline_dir, Side::Baseline, c.dtype, c.backend, device)?;
    let request = FusedRequest {
        path: c.decode_path,
        kept: c.kept_dtype,
    };
    let mut bit = load_model_with(
        &bitnet_dir,
        Side::Bitnet,
        c.dtype,
        c.backend,
        device,
        Some(request),
    )?;
    check_fused(&mut bit, c.dtype, c.kept_dtype)?;
    // The fused loop's kernels use the threads libtorch uses.
    bitnet_kernels::set_num_threads(usize::try_from(threads).unwrap_or(1));
    if base.model.config.vocab_size != bit.model.config.vocab_size {
        bail!(
            "the baseline ({}) and BitNet ({}) models have different vocabularies ({} vs {}); profile two forms of the same model",
            base.file.display(),
            bit.file.display(),
            base.model.config.vocab_size,
            bit.model.config.vocab_size
        );
    }
    let dev = super::device::name(device);
    let shapes = c.shapes();
    let total = shapes.len() as u64 * u64::from(c.warmup + c.iters);
    let mut pos = 0u64;
    let mut results: Vec<ShapeResult> = Vec::new();
    let mut table = Vec::new();
    let mut max_load = load_at_start.unwrap_or(0.0);
    for (step, &(mode, batch, seq)) in shapes.iter().enumerate() {
        let mut work = Work::new(mode, [&base, &bit], batch, seq, device, c.dtype)
            .with_context(|| format!("preparing {mode} batch {batch} seq {seq}"))?;
        let mut samples: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        let load_before = load_average();
        tch::no_grad(|| -> Result<()> {
            for _ in 0..c.warmup {
                work.time(0, &base, device)?;
                work.time(1, &bit, device)?;
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
                    samples[side].push(work.time(side, m, device)?);
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
        let load_after = load_average();
        for l in [load_before, load_after].into_iter().flatten() {
            max_load = max_load.max(l);
        }
        let (ci_low, ci_high) = bootstrap_ratio_interval(&[PairedSamples {
            baseline: &samples[0],
            bitnet: &samples[1],
        }])
        .ok_or_else(|| {
            anyhow!("no paired timings for {mode} b={batch} s={seq} (a bug; please report it)")
        })?;
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
            // A decode step makes one token per sequence; a prefill processes seq.
            let new_tokens = if mode == "decode" { batch } else { batch * seq };
            let tokens_per_s = new_tokens as f64 / secs;
            let meta = json!({
                "side": side.name(), "mode": mode, "batch": batch, "seq": seq,
                "median_ms": st.median_ms, "p25_ms": st.p25_ms, "p75_ms": st.p75_ms,
                "p95_ms": st.p95_ms, "min_ms": st.min_ms, "max_ms": st.max_ms, "mean_ms": st.mean_ms,
                "samples_per_s": samples_per_s, "tokens_per_s": tokens_per_s,
                "iters": c.iters, "warmup": c.warmup,
                "backend": model.backend, "matmul": model.matmul, "threads": threads,
                "decode_path": if runs_fused(model, batch) { "fused" } else { "libtorch" },
                "head": "last position only",
                "context": if mode == "decode" { json!(seq) } else { Value::Null },
                "beyond_trained_context": seq > model.model.config.max_position_embeddings,
                "device": dev, "dtype": c.dtype.name(),
                "load_before": load_before, "load_after": load_after, "cores": cores,
            });
            let s = side.name();
            let step = Some(step as i64);
            for (key, value, unit) in [
                (format!("latency_ms_median_{s}"), st.median_ms, "ms"),
                (format!("latency_ms_p95_{s}"), st.p95_ms, "ms"),
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
            Some(json!({"mode": mode, "batch": batch, "seq": seq,
                "ci95_low": ci_low, "ci95_high": ci_high,
                "definition": "median baseline / median bitnet; 95% paired-bootstrap interval"})),
        );
        row["speedup"] = json!(speedup);
        row["ci95"] = json!([ci_low, ci_high]);
        table.push(row);
        results.push(ShapeResult {
            mode,
            batch,
            seq,
            samples,
            speedup,
        });
    }
    let busy = max_load > cores as f64;
    let common = json!({
        "device": dev, "threads": threads, "cores": cores, "dtype": c.dtype.name(),
        "baseline_backend": base.backend, "bitnet_backend": bit.backend, "bitnet_matmul": bit.matmul,
        "act_quant": bit.act_quant, "iters": c.iters, "warmup": c.warmup,
        "bitnet_decode_path": bit.decode_path,
        "parameters": bit.parameters,
        "load_at_start": load_at_start, "load_max": max_load,
        "method": "interleaved A B / B A per iteration after warm-up, same token ids and threads; CUDA synchronised before each clock read; ratio of medians with a 95% paired-bootstrap interval (2000 resamples of iterations)",
    });
    let mut overall = serde_json::Map::new();
    for (key, mode, definition) in [
        ("speedup_prefill", "prefill", "geometric mean over the prefill shapes of median baseline / median bitnet of the time to first token: a forward of seq prompt tokens on an empty KV cache, LM head on the last position only (both sides)"),
        ("speedup_decode", "decode", "geometric mean over the decode shapes of median baseline / median bitnet of one autoregressive step with the KV cache: one new token per sequence over `seq` (= context) cached positions, LM head on that position only"),
    ] {
        let of_mode: Vec<&ShapeResult> = results.iter().filter(|r| r.mode == mode).collect();
        if of_mode.is_empty() {
            continue;
        }
        let ratios: Vec<f64> = of_mode.iter().map(|r| r.speedup).collect();
        let value = geometric_mean(&ratios).ok_or_else(|| {
            anyhow!("speedups {ratios:?} are not all positive and finite; cannot summarise")
        })?;
        let paired: Vec<PairedSamples<'_>> = of_mode
            .iter()
            .map(|r| PairedSamples {
                baseline: &r.samples[0],
                bitnet: &r.samples[1],
            })
            .collect();
        let (lo, hi) = bootstrap_ratio_interval(&paired)
            .ok_or_else(|| anyhow!("no paired timings for `{key}` (a bug; please report it)"))?;
        let mut warnings = Vec::new();
        if busy {
            warnings.push(format!(
                "the machine was busier than its {cores} cores (1-minute load average up to {max_load:.2}, this stage's {threads} threads included): timings are unreliable, rerun on an idle machine"
            ));
        }
        if lo <= 1.0 && hi >= 1.0 {
            warnings.push(format!(
                "the 95% interval of the ratio ({lo:.3}x to {hi:.3}x) contains 1.0: the difference is not distinguishable from noise"
            ));
        }
        let mut meta = common.clone();
        meta["definition"] = json!(definition);
        meta["shapes"] = json!(of_mode.iter().map(|r| shape_meta(r)).collect::<Vec<_>>());
        meta["ci95_low"] = json!(lo);
        meta["ci95_high"] = json!(hi);
        if !warnings.is_empty() {
            meta["warning"] = json!(warnings.join("; "));
        }
        ctx.metric_full(key, None, value, Some("x"), Some(meta.clone()));
        overall.insert(key.to_string(), meta_with_value(meta, value));
    }
    for (side, m) in [(Side::Baseline, &base), (Side::Bitnet, &bit)] {
        ctx.metric_full(
            &format!("parameters_{}", side.name()),
            None,
            m.parameters as f64,
            Some("params"),
            Some(m.method_meta()),
        );
    }
    let report = json!({"shapes": table, "overall": overall, "method": common,
        "baseline": base.method_meta(), "bitnet": bit.method_meta()});
    let path = ctx.output_dir().join("speed.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn meta_with_value(mut meta: Value, value: f64) -> Value {
    meta["value"] = json!(value);
    meta
}

/// Largest relative logit difference between the fused path and the
/// libtorch model that the stage accepts. Both compute the same int8 codes
/// and integer sums from the same inputs, and floats up to summation order
/// (~1e-7 relative; the unit tests hold a few layers to 1e-5). In a deep
/// model an activation within an ulp of a rounding boundary can quantize
/// one code apart on the two paths, and such flips compound over the layers
/// (SmolLM2-135M, 30 layers, converted without training: 1.6e-2). A wrong
/// weight, layout or RoPE gives differences of order 1; so this bound
/// catches those without failing on flips.
const FUSED_CHECK_MAX_REL_DIFF: f64 = 0.1;

/// Checks the fused model against the libtorch model it was built from on a
/// 7-token prompt and records the difference and whether both pick the same
/// next token. With fp32 everywhere (the libtorch model and the fused path's
/// kept layers) a difference beyond [`FUSED_CHECK_MAX_REL_DIFF`] is a bug
/// and the stage fails rather than time a wrong model. Otherwise the
/// difference also holds what the compact kept layers (bf16, int8) or
/// libtorch's bf16/fp16 activations change: recorded, not enforced.
fn check_fused(
    bit: &mut LoadedModel,
    dtype: bitnet_pipeline::stages::profiling::Dtype,
    kept: KeptDtypeChoice,
) -> Result<()> {
    let Some(fused) = bit.fused.as_ref() else {
        return Ok(());
    };
    let vocab = bit.model.config.vocab_size;
    let ids: Vec<i64> = (0..7i64).map(|i| (i * 7919 + 13) % vocab).collect();
    let check = fused_logit_difference(&bit.model, fused, &ids, kind_of(dtype))?;
    let enforced = dtype.name() == "fp32" && kept == KeptDtypeChoice::Fp32;
    if enforced && (check.max_rel_diff.is_nan() || check.max_rel_diff > FUSED_CHECK_MAX_REL_DIFF) {
        bail!(
            "the fused decode path's logits differ from the libtorch model's by {:.3e} of their scale (more than {FUSED_CHECK_MAX_REL_DIFF}): a bug, please report it; `decode_path: libtorch` avoids it meanwhile",
            check.max_rel_diff
        );
    }
    bit.decode_path["fused_check_max_rel_diff"] = json!(check.max_rel_diff);
    bit.decode_path["fused_check_same_argmax"] = json!(check.same_argmax);
    bit.decode_path["fused_check"] = json!(format!(
        "last-position logits of a 7-token prompt, fused (kept {}) vs libtorch ({}): max |diff| / max |logit| and whether both argmaxes agree{}",
        kept.name(),
        dtype.name(),
        if enforced {
            format!("; fails the stage above {FUSED_CHECK_MAX_REL_DIFF}")
        } else {
            "; includes what the compact kept layers / libtorch's rounded activations change, so recorded, not enforced".to_string()
        }
    ));
    Ok(())
}
