//! Where a fused decode step's time goes (issue #11, "what stands in the
//! way"): times one whole step of a random packed model of SmolLM2-135M's
//! shape at a given context, and each part of it on the same sizes, so the
//! parts can be compared with the whole and with llama.cpp's step.
//!
//!     cargo bench -p bitnet-infer --bench step_parts            # 1 thread, context 128
//!     STEP_THREADS=2 STEP_CONTEXT=512 cargo bench -p bitnet-infer --bench step_parts
//!     STEP_THREADS=1,2 cargo bench -p bitnet-infer --bench step_parts   # interleaved
//!     STEP_SHAPE=demo cargo bench -p bitnet-infer --bench step_parts
//!     STEP_PREFILL=512 cargo bench -p bitnet-infer --bench step_parts   # + a 512-token prefill
//!     STEP_PREFILL=512 STEP_ONLY_PREFILL=1 ...   # the prefill alone (for `perf record`)
//!
//! Parts (per step, all layers): the seven ternary GEMVs of each layer
//! (int8 activations ready), the activation quantizations (4 per layer),
//! attention over the cache (all heads), RMSNorm + RoPE + SiLU-GLU +
//! residual adds, and the LM head per kept dtype. Median of `STEP_ITERS`
//! (default 200) after 20 warm-up runs, wall clock. With several thread
//! counts the whole-step samples alternate between them step by step (the
//! parts run at the first count). The random weights do
//! not change the speed (only the form does).
use std::hint::black_box;
use std::time::Instant;

use bitnet_infer::ops::{add_assign, attend, attend_blocked, rms_norm, rope_head, silu_mul};
use bitnet_infer::testing::random_model;
use bitnet_infer::{DecodeConfig, DecodeState, KeptDtype, KeptMatrix};
use bitnet_kernels::testing::SplitMix;
use bitnet_kernels::QuantizedActivations;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Median milliseconds of `iters` runs of `f` after a warm-up.
fn median_ms(iters: usize, f: impl FnMut()) -> f64 {
    median_ms_after(20, iters, f)
}

/// Median milliseconds of `iters` runs of `f` after `warmup` runs.
fn median_ms_after(warmup: usize, iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    let mut t: Vec<f64> = (0..iters)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn shape() -> (DecodeConfig, usize) {
    if std::env::var("STEP_SHAPE").as_deref() == Ok("demo") {
        let c = DecodeConfig {
            hidden: 256,
            intermediate: 640,
            heads: 4,
            kv_heads: 2,
            head_dim: 64,
            vocab: 256,
            rope_theta: 10_000.0,
            rms_eps: 1e-5,
        };
        return (c, 4);
    }
    // SmolLM2-135M: hidden 576, 9 heads over 3, 30 layers, vocab 49152, tied.
    let c = DecodeConfig {
        hidden: 576,
        intermediate: 1536,
        heads: 9,
        kv_heads: 3,
        head_dim: 64,
        vocab: 49_152,
        rope_theta: 100_000.0,
        rms_eps: 1e-5,
    };
    (c, 30)
}

/// `STEP_THREADS`: one thread count, or several separated by commas
/// (e.g. `1,2`), whose whole-step samples are then interleaved step by step
/// in one process (the A/B a busy machine needs).
fn thread_counts() -> Vec<usize> {
    let list = std::env::var("STEP_THREADS").unwrap_or_else(|_| "1".into());
    let counts: Vec<usize> = list
        .split(',')
        .filter_map(|t| t.trim().parse().ok())
        .collect();
    if counts.is_empty() {
        vec![1]
    } else {
        counts
    }
}

/// Median milliseconds of one decode step per thread count, the counts
/// alternating step by step after a warm-up of each.
fn interleaved_step_ms(counts: &[usize], iters: usize, mut step: impl FnMut()) -> Vec<f64> {
    let mut samples = vec![Vec::with_capacity(iters); counts.len()];
    for &threads in counts {
        bitnet_kernels::set_num_threads(threads);
        (0..20).for_each(|_| step());
    }
    for _ in 0..iters {
        for (i, &threads) in counts.iter().enumerate() {
            bitnet_kernels::set_num_threads(threads);
            let s = Instant::now();
            step();
            samples[i].push(s.elapsed().as_secs_f64() * 1e3);
        }
    }
    samples
        .iter_mut()
        .map(|t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect()
}

fn main() {
    let (c, layers) = shape();
    let (iters, ctx, counts) = (
        env("STEP_ITERS", 200),
        env("STEP_CONTEXT", 128),
        thread_counts(),
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "shape hidden {} x {layers} layers, vocab {}; context {ctx}; thread(s) {counts:?}; kernel path {:?}; load {}",
        c.hidden,
        c.vocab,
        bitnet_kernels::KernelPath::selected().map(|p| p.name()),
        load.split(' ').next().unwrap_or("?")
    );
    let mut rng = SplitMix(7);
    let prompt: Vec<u32> = (0..ctx).map(|_| rng.below(c.vocab as u64) as u32).collect();
    let only_prefill = env("STEP_ONLY_PREFILL", 0) == 1;
    let kept_dtypes = if only_prefill {
        vec![]
    } else {
        vec![KeptDtype::F32, KeptDtype::Bf16, KeptDtype::Int8]
    };
    for kept in kept_dtypes {
        let model = random_model(&c, layers, true, kept, 3).expect("model");
        let mut state = DecodeState::new(&model, ctx + 1, ctx).expect("state");
        state.forward(&model, &prompt).expect("prefill");
        let medians = interleaved_step_ms(&counts, iters, || {
            state.truncate(ctx);
            black_box(state.forward(&model, &[5]).expect("step"));
        });
        for (&threads, &ms) in counts.iter().zip(&medians) {
            println!(
                "whole step, head {:>5}, {threads} thread(s): {ms:8.3} ms ({:7.1} tokens/s; {:.2}x the first count)",
                kept.name(),
                1e3 / ms,
                medians[0] / ms
            );
        }
    }
    bitnet_kernels::set_num_threads(counts[0]);
    let prefill = env("STEP_PREFILL", 0);
    if prefill > 0 {
        let model = random_model(&c, layers, true, KeptDtype::F32, 3).expect("model");
        let prompt: Vec<u32> = (0..prefill)
            .map(|_| rng.below(c.vocab as u64) as u32)
            .collect();
        let mut state = DecodeState::new(&model, prefill, prefill).expect("state");
        let ms = median_ms_after(2, env("STEP_PREFILL_ITERS", 10), || {
            state.truncate(0);
            black_box(state.forward(&model, &prompt).expect("prefill"));
        });
        println!(
            "prefill of {prefill} tokens, head fp32 on the last: {ms:8.3} ms ({:7.1} tokens/s)",
            prefill as f64 * 1e3 / ms
        );
    }
    if !only_prefill {
        parts(&c, layers, ctx, iters);
    }
}

fn parts(c: &DecodeConfig, layers: usize, ctx: usize, iters: usize) {
    // Every layer's own weights, as in a step: 30 layers of SmolLM2 hold
    // 26.5 MB of 2-bit codes, more than the caches, so one layer's hot
    // weights would understate the ternary part.
    let model = random_model(c, layers, true, KeptDtype::F32, 3).expect("model");
    let (hid, f, d) = (c.hidden, c.intermediate, c.head_dim);
    let qd = c.heads * d;
    let mut rng = SplitMix(9);
    let x = rng.normal_ish(hid.max(f));
    let mut acts = QuantizedActivations::new();
    let mut out = vec![0.0f32; f.max(qd)];
    let report = |what: &str, ms: f64| println!("  {what:<44} {ms:8.3} ms per step");
    acts.quantize_from(&x[..hid], 1, hid).unwrap();
    let mut acts_o = QuantizedActivations::new();
    acts_o.quantize_from(&x[..qd], 1, qd).unwrap();
    let mut acts_d = QuantizedActivations::new();
    acts_d.quantize_from(&x[..f], 1, f).unwrap();
    let gemv = median_ms(iters, || {
        for i in 0..layers {
            let l = model.layer(i);
            for m in [&l.q, &l.k, &l.v, &l.gate, &l.up] {
                m.matmul_quantized(&acts, &mut out[..m.out_features()])
                    .unwrap();
            }
            l.o.matmul_quantized(&acts_o, &mut out[..hid]).unwrap();
            l.down.matmul_quantized(&acts_d, &mut out[..hid]).unwrap();
        }
    });
    report("ternary GEMVs (q k v o gate up down)", gemv);
    float_parts(c, layers, ctx, iters, &x, &mut rng);
    for kept in [KeptDtype::F32, KeptDtype::Bf16, KeptDtype::Int8] {
        let emb = rng.normal_ish(c.vocab * hid);
        let head = KeptMatrix::new(&emb, c.vocab, hid, kept).unwrap();
        let mut logits = vec![0.0f32; c.vocab];
        let ms = median_ms(iters.min(50), || head.gemv_rows(&x[..hid], 0, &mut logits));
        report(
            &format!(
                "LM head {} (1 thread, {} MB)",
                kept.name(),
                head.bytes() / 1_000_000
            ),
            ms,
        );
    }
}

/// Quantization, attention and the float ops of one layer, times the layers.
fn float_parts(
    c: &DecodeConfig,
    layers: usize,
    ctx: usize,
    iters: usize,
    x: &[f32],
    rng: &mut SplitMix,
) {
    let (hid, f, d) = (c.hidden, c.intermediate, c.head_dim);
    let (qd, kvd) = (c.heads * d, c.kv_heads * d);
    let layers_f = layers as f64;
    let report = |what: &str, ms: f64| println!("  {what:<44} {ms:8.3} ms per step");
    let mut acts = QuantizedActivations::new();
    let quant = median_ms(iters, || {
        acts.quantize_from(&x[..hid], 1, hid).unwrap();
        acts.quantize_from(&x[..hid], 1, hid).unwrap();
        acts.quantize_from(&x[..qd], 1, qd).unwrap();
        acts.quantize_from(&x[..f], 1, f).unwrap();
    });
    report(
        "int8 activation quantization (4 per layer)",
        quant * layers_f,
    );
    let keys = rng.normal_ish(ctx * d);
    let values = rng.normal_ish(ctx * d);
    let q = rng.normal_ish(qd);
    let mut scores = vec![0.0f32; ctx];
    let mut attn = vec![0.0f32; qd];
    let att = median_ms(iters, || {
        for h in 0..c.heads {
            attend(
                &q[h * d..(h + 1) * d],
                &keys,
                &values,
                ctx,
                &mut scores,
                &mut attn[h * d..(h + 1) * d],
            );
        }
    });
    report(
        &format!("attention over {ctx} cached positions (plain)"),
        att * layers_f,
    );
    let blocked = median_ms(iters, || {
        for h in 0..c.heads {
            attend_blocked(
                &q[h * d..(h + 1) * d],
                &keys,
                &values,
                ctx,
                &mut attn[h * d..(h + 1) * d],
            );
        }
    });
    report(
        &format!("attention over {ctx} cached positions (blocked)"),
        blocked * layers_f,
    );
    let w = vec![1.0f32; hid];
    let (cos, sin) = (vec![0.6f32; d / 2], vec![0.8f32; d / 2]);
    let (mut normed, mut resid) = (vec![0.0f32; hid], x[..hid].to_vec());
    let (mut gate, up) = (x[..f].to_vec(), x[..f].to_vec());
    let mut qk = vec![0.5f32; qd + kvd];
    let float = median_ms(iters, || {
        rms_norm(&resid, &w, 1e-5, &mut normed);
        rms_norm(&resid, &w, 1e-5, &mut normed);
        for head in qk.chunks_exact_mut(d) {
            rope_head(head, &cos, &sin);
        }
        gate.copy_from_slice(&up);
        silu_mul(&mut gate, &up);
        add_assign(&mut resid, &normed);
        add_assign(&mut resid, &normed);
    });
    report(
        "RMSNorm x2, RoPE, SiLU-GLU, residual adds",
        float * layers_f,
    );
}
