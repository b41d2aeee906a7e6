//! `memory_probe` (internal): loads one side of `profile_memory` in this
//! isolated process, runs its work and reports its peak memory.
//!
//! The work is the same on both sides: full forward passes over every
//! `(batch, seq)` input, or, when the BitNet side runs the fused decode
//! form (`fused`: loaded straight from `packed.safetensors`, as a user's
//! CPU inference runs), a prompt of each `seq_len` and a fixed number of
//! greedy decode steps at batch 1 (the baseline on libtorch with a KV
//! cache).
//!
//! CPU: the kernel's peak RSS counter (`VmHWM`) is reset to the current RSS
//! through `/proc/self/clear_refs` just before loading, then
//! `peak = VmHWM - VmRSS(before load)`. If the reset is refused (old kernel,
//! restricted /proc) the peak since process start is used instead, which can
//! only overstate, and the meta says so. Approximate: RSS also counts
//! libtorch code pages first touched while loading or running (a few MB,
//! about the same for both sides) and memory the allocator keeps after
//! `free`; `settle` touches the allocator and thread pool first. CUDA: the c10 caching allocator's
//! peak allocated bytes (reset before loading) minus the bytes allocated
//! before loading, read through the C++ shim in `crate::cuda_memory`.
//!
//! The peak is taken in two windows, loading and then the forward passes
//! (the counter is reset in between), so the meta can say which dominated:
//! `peak_bytes = max(load_peak_bytes, forward_peak_bytes)`, all relative to
//! the same before-load baseline.
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use bitnet_infer::DecodeState;
use bitnet_pipeline::stages::profile_memory::{MemoryProbeConfig, ProbeWork};
use bitnet_pipeline::stages::profiling::KeptDtypeChoice;
use bitnet_pipeline::stages::StageContext;
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use super::inference_model::{
    kind_of, load_fused_only, load_model, random_tokens, FusedOnly, LoadedModel,
};
use crate::bitnet::KvCache;

/// `VmRSS` and `VmHWM` of this process, in bytes.
fn proc_status_bytes() -> Result<(i64, i64)> {
    let text = std::fs::read_to_string("/proc/self/status")
        .context("reading /proc/self/status (the CPU memory probe needs Linux /proc)")?;
    let field = |name: &str| -> Result<i64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| anyhow!("/proc/self/status has no `{name}` line"))?;
        let kb: i64 = line
            .trim_start_matches(name)
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("cannot parse `{line}` in /proc/self/status"))?;
        Ok(kb * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Resets `VmHWM` to the current RSS (Linux >= 4.0); false when refused.
fn reset_peak_rss() -> bool {
    std::fs::write(Path::new("/proc/self/clear_refs"), "5").is_ok()
}

/// Memory counters of one device.
enum Probe {
    Cpu { before: i64, reset: bool },
    Cuda { index: i32, before: i64 },
}

impl Probe {
    fn start(device: Device) -> Result<Probe> {
        match device {
            Device::Cuda(i) => {
                let index = i as i32;
                tch::Cuda::synchronize(i as i64);
                crate::cuda_memory::reset_peak(index)?;
                let stats = crate::cuda_memory::stats(index)?;
                Ok(Probe::Cuda {
                    index,
                    before: stats.allocated_current,
                })
            }
            _ => {
                let reset = reset_peak_rss();
                let (rss, _) = proc_status_bytes()?;
                Ok(Probe::Cpu { before: rss, reset })
            }
        }
    }

    /// Starts a second peak window (after loading) and returns the bytes in
    /// use now, above the start. The overall peak is kept by the caller.
    fn restart_peak(&self) -> Result<(i64, i64)> {
        let peak_so_far = self.peak()?.0;
        match self {
            Probe::Cpu { .. } => {
                reset_peak_rss();
            }
            Probe::Cuda { index, .. } => crate::cuda_memory::reset_peak(*index)?,
        }
        Ok((self.current()?, peak_so_far))
    }

    /// Bytes in use now, above the start.
    fn current(&self) -> Result<i64> {
        match self {
            Probe::Cpu { before, .. } => Ok(proc_status_bytes()?.0 - before),
            Probe::Cuda { index, before } => {
                tch::Cuda::synchronize(*index as i64);
                Ok(crate::cuda_memory::stats(*index)?.allocated_current - before)
            }
        }
    }

    /// Peak bytes above the start, and a description of the method.
    fn peak(&self) -> Result<(i64, serde_json::Value)> {
        match self {
            Probe::Cpu { before, reset } => {
                let (_, hwm) = proc_status_bytes()?;
                Ok((
                    hwm - before,
                    json!({
                        "method": if *reset {
                            "cpu peak RSS of an isolated process: VmHWM (reset via /proc/self/clear_refs before loading) - VmRSS before loading"
                        } else {
                            "cpu peak RSS of an isolated process: VmHWM since process start (reset refused, may overstate) - VmRSS before loading"
                        },
                        "rss_before_bytes": before,
                        "peak_rss_bytes": hwm,
                    }),
                ))
            }
            Probe::Cuda { index, before } => {
                tch::Cuda::synchronize(*index as i64);
                let s = crate::cuda_memory::stats(*index)?;
                Ok((
                    s.allocated_peak - before,
                    json!({
                        "method": "c10 CUDA caching allocator: peak allocated_bytes (reset before loading) - allocated before loading",
                        "allocated_before_bytes": before,
                        "reserved_peak_bytes": s.reserved_peak,
                    }),
                ))
            }
        }
    }
}

/// Touches the allocator and the intra-op thread pool so that their one-off
/// set-up is not charged to the model.
fn settle(device: Device) -> Result<()> {
    let a = Tensor::f_ones([64, 64], (Kind::Float, device))?;
    let _ = a.f_matmul(&a)?.f_sum(Kind::Float)?.f_double_value(&[])?;
    Ok(())
}

/// What a probe loaded: the libtorch model, or the fused decode form.
enum Loaded {
    Torch(Box<LoadedModel>),
    Fused(Box<FusedOnly>),
}

impl Loaded {
    fn vocab(&self) -> i64 {
        match self {
            Loaded::Torch(m) => m.model.config.vocab_size,
            Loaded::Fused(f) => f.config.vocab_size,
        }
    }

    fn weight_bytes_resident(&self) -> i64 {
        match self {
            Loaded::Torch(m) => m.weight_bytes_resident,
            Loaded::Fused(f) => f.fused.weight_bytes() as i64,
        }
    }

    fn method_meta(&self) -> Value {
        match self {
            Loaded::Torch(m) => m.method_meta(),
            Loaded::Fused(f) => f.meta.clone(),
        }
    }

    fn packed_layers(&self) -> usize {
        match self {
            Loaded::Torch(m) => m.packed_layers,
            Loaded::Fused(f) => 7 * f.fused.num_layers(),
        }
    }
}

use crate::bitnet::generation::argmax;

/// Batch 1: prefill `prompt`, then `steps` greedy decode steps, on the
/// libtorch model (KV cache) or the fused form; returns the last token.
fn decode_work(
    loaded: &Loaded,
    prompt: &[i64],
    steps: usize,
    kind: Kind,
    device: Device,
) -> Result<i64> {
    let capacity = prompt.len() + steps;
    match loaded {
        Loaded::Torch(m) => tch::no_grad(|| -> Result<i64> {
            let mut cache = KvCache::new(&m.model, 1, capacity as i64, kind)?;
            let mut ids = Tensor::from_slice(prompt)
                .f_view([1, -1])?
                .f_to_device(device)?;
            let mut next = 0i64;
            for _ in 0..=steps {
                let logits = m.model.forward_cached_last(&ids, &mut cache)?;
                next = logits
                    .f_flatten(0, -1)?
                    .f_argmax(0, false)?
                    .f_int64_value(&[])?;
                ids = Tensor::from_slice(&[next])
                    .f_view([1, 1])?
                    .f_to_device(device)?;
            }
            Ok(next)
        }),
        Loaded::Fused(f) => {
            let mut state = DecodeState::new(&f.fused, capacity, prompt.len())?;
            let ids: Vec<u32> = prompt.iter().map(|&t| t as u32).collect();
            let mut next = argmax(state.forward(&f.fused, &ids)?);
            for _ in 0..steps {
                next = argmax(state.forward(&f.fused, &[next as u32])?);
            }
            Ok(next as i64)
        }
    }
}

/// The configured work on `loaded`: the same on both sides of a profile.
fn run_work(
    ctx: &mut StageContext,
    c: &MemoryProbeConfig,
    loaded: &Loaded,
    device: Device,
) -> Result<()> {
    let vocab = loaded.vocab();
    let total = (c.batch_sizes.len() * c.seq_lens.len()) as u64;
    let mut done = 0u64;
    for &b in &c.batch_sizes {
        for &s in &c.seq_lens {
            ctx.progress(done, Some(total), format!("{} b={b} s={s}", c.side.name()));
            let tokens = random_tokens(vocab, b, s, device)?;
            match (c.work, loaded) {
                (ProbeWork::Decode { tokens: steps }, _) => {
                    let prompt =
                        Vec::<i64>::try_from(tokens.f_to_device(Device::Cpu)?.f_flatten(0, -1)?)?;
                    decode_work(loaded, &prompt, steps as usize, kind_of(c.dtype), device)?;
                }
                (ProbeWork::Forward, Loaded::Torch(m)) => tch::no_grad(|| -> Result<()> {
                    let logits = m.model.forward(&tokens)?; // (B, T, V)
                                                            // Read one value so the pass has certainly run (CUDA is async).
                    let _ = logits.f_sum(Kind::Float)?.f_double_value(&[])?;
                    Ok(())
                })?,
                (ProbeWork::Forward, Loaded::Fused(_)) => {
                    bail!("internal: the fused form runs decode work, not full forward passes")
                }
            }
            done += 1;
        }
    }
    Ok(())
}

pub fn run(ctx: &mut StageContext) -> Result<()> {
    let c: MemoryProbeConfig = serde_json::from_value(ctx.config().clone())
        .context("invalid memory_probe invocation (internal kind; use profile_memory)")?;
    let device = super::device::resolve(ctx.invocation.device.as_deref())?;
    settle(device)?;
    let probe = Probe::start(device)?;
    let loaded = if c.fused {
        Loaded::Fused(Box::new(load_fused_only(
            &c.stage_dir,
            KeptDtypeChoice::Fp32,
        )?))
    } else {
        Loaded::Torch(Box::new(load_model(
            &c.stage_dir,
            c.side,
            c.dtype,
            c.backend,
            device,
        )?))
    };
    // Peak of loading, then a fresh window for the work alone.
    let (after_load, load_peak) = probe.restart_peak()?;
    run_work(ctx, &c, &loaded, device)?;
    let (forward_peak, mut meta) = probe.peak()?;
    let peak = load_peak.max(forward_peak);
    meta["after_load_bytes"] = json!(after_load);
    meta["load_peak_bytes"] = json!(load_peak);
    meta["forward_peak_bytes"] = json!(forward_peak);
    meta["work"] = json!(c.work.describe());
    meta["device"] = json!(super::device::name(device));
    meta["threads"] = json!(tch::get_num_threads());
    meta["packed_layers"] = json!(loaded.packed_layers());
    // What the peak is made of: the weights as held in memory, and the rest
    // (activations of the largest input, libtorch workspaces and thread
    // pools, allocator retention, code pages first touched).
    let resident = loaded.weight_bytes_resident();
    meta["composition"] = json!({
        "weights_resident_bytes": resident,
        "rest_bytes": peak - resident,
        "rest_is": "activations and KV cache, libtorch workspaces and allocator retention, code pages first touched",
    });
    if let (Some(m), Some(model)) = (meta.as_object_mut(), loaded.method_meta().as_object()) {
        for (k, v) in model {
            m.insert(k.clone(), v.clone());
        }
    }
    ctx.metric_full("peak_bytes", None, peak as f64, Some("bytes"), Some(meta));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counters parse, holding a large touched allocation shows in both,
    /// and a reset brings the peak down below it once it is freed (so
    /// `peak - before` measures only what happens after the reset).
    ///
    /// Other tests run in this process at the same time and allocate or free
    /// memory of their own, so nothing here compares against an RSS read
    /// before the allocation (that made this test flaky): only against what
    /// this test itself holds, 256 MiB, far more than the others move.
    #[test]
    fn proc_counters_and_peak_reset() {
        const HELD: i64 = 256 << 20;
        let (rss, hwm) = proc_status_bytes().unwrap();
        assert!(rss > 0 && hwm >= rss, "rss {rss} hwm {hwm}");
        let big = vec![1u8; HELD as usize];
        let touched = big.iter().step_by(4096).map(|&b| b as usize).sum::<usize>();
        assert_eq!(touched, (HELD as usize) / 4096);
        let (rss_holding, hwm_holding) = proc_status_bytes().unwrap();
        assert!(
            rss_holding >= HELD,
            "rss {rss_holding} while holding {HELD} bytes"
        );
        assert!(
            hwm_holding >= rss_holding,
            "peak {hwm_holding} below rss {rss_holding}"
        );
        drop(big);
        if reset_peak_rss() {
            let (rss2, hwm2) = proc_status_bytes().unwrap();
            assert!(
                hwm2 < hwm_holding,
                "reset kept the peak {hwm2} >= {hwm_holding} (rss now {rss2})"
            );
        }
    }
}
