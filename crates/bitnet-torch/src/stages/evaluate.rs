//! `evaluate`: held-out perplexity of baseline vs BitNet, degradation and
//! next-token top-1 agreement, on the same windows. Both models come from
//! `inference_model::load_model`, the loader the profile stages use, so the
//! model scored is the model timed and weighed; `ppl_*` meta say which file,
//! thoughts, backend and activation quantization that was.
use anyhow::{anyhow, bail, Result};
use bitnet_pipeline::stages::evaluate::EvaluateConfig;
use bitnet_pipeline::stages::profiling::{Dtype, Side};
use bitnet_pipeline::stages::{parse_config, StageContext};
use serde_json::json;
use tch::{Kind, Tensor};

use super::common::load_tokens;
use super::inference_model::{load_model, side_dir};
use crate::bitnet::LlamaModel;
use crate::data::heldout_windows;

/// Sums over the evaluated tokens.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub nll_base: f64,
    pub nll_bit: f64,
    pub hit_base: i64,
    pub hit_bit: i64,
    pub agree: i64,
    pub tokens: i64,
}

/// Adds one batch of `(B, T)` inputs/targets to `tally`.
pub fn tally_batch(
    base: &LlamaModel,
    bit: &LlamaModel,
    x: &Tensor,
    y: &Tensor,
    tally: &mut Tally,
) -> Result<()> {
    tch::no_grad(|| -> Result<()> {
        let lb = base.forward(x)?.f_to_kind(Kind::Float)?;
        let lq = bit.forward(x)?.f_to_kind(Kind::Float)?;
        let v = lb.size()[2];
        let yf = y.f_reshape([-1])?;
        let nll = |l: &Tensor| -> Result<f64> {
            Ok(l.f_reshape([-1, v])?
                .f_cross_entropy_loss::<Tensor>(&yf, None, tch::Reduction::Sum, -100, 0.0)?
                .f_double_value(&[])?)
        };
        tally.nll_base += nll(&lb)?;
        tally.nll_bit += nll(&lq)?;
        let pb = lb.f_argmax(-1, false)?.f_reshape([-1])?;
        let pq = lq.f_argmax(-1, false)?.f_reshape([-1])?;
        let count = |t: Tensor| -> Result<i64> { Ok(t.f_sum(Kind::Int64)?.f_int64_value(&[])?) };
        tally.hit_base += count(pb.f_eq_tensor(&yf)?)?;
        tally.hit_bit += count(pq.f_eq_tensor(&yf)?)?;
        tally.agree += count(pb.f_eq_tensor(&pq)?)?;
        tally.tokens += yf.size()[0];
        Ok(())
    })
}

pub fn run(ctx: &mut StageContext) -> Result<()> {
    let c: EvaluateConfig = parse_config(ctx.config()).map_err(|e| anyhow!(e.message))?;
    let device = super::device::resolve(ctx.invocation.device.as_deref())?;
    // The same loader as profile_speed / profile_memory: the BitNet side is
    // the packed inference form with its thought mixers, on the backend the
    // profiles time.
    let base_dir = side_dir(ctx, &c.baseline, Side::Baseline)?;
    let bit_dir = side_dir(ctx, &c.model, Side::Bitnet)?;
    let base = load_model(&base_dir, Side::Baseline, Dtype::Fp32, c.backend, device)?;
    let bit = load_model(&bit_dir, Side::Bitnet, Dtype::Fp32, c.backend, device)?;
    let vocab = base.model.config.vocab_size;
    if vocab != bit.model.config.vocab_size {
        bail!(
            "{} and {} have different vocab sizes ({} vs {}); they cannot be compared token by token",
            base.file.display(),
            bit.file.display(),
            vocab,
            bit.model.config.vocab_size
        );
    }
    let (_, heldout_tokens) = load_tokens(ctx, &c.data, vocab)?;
    let windows = heldout_windows(
        &heldout_tokens,
        c.seq_len as usize,
        c.batch_size as usize,
        Some((c.tokens / c.seq_len).max(1) as usize),
    )?;
    let n = windows.len() as u64;
    let mut tally = Tally::default();
    for (i, (x, y)) in windows.iter().enumerate() {
        let (x, y) = (x.f_to_device(device)?, y.f_to_device(device)?);
        tally_batch(&base.model, &bit.model, &x, &y, &mut tally)?;
        ctx.progress(i as u64 + 1, Some(n), format!("{} tokens", tally.tokens));
    }
    let tokens = tally.tokens.max(1) as f64;
    let ppl_base = (tally.nll_base / tokens).exp();
    let ppl_bit = (tally.nll_bit / tokens).exp();
    let degradation = ppl_bit / ppl_base - 1.0;
    ctx.metric_full(
        "ppl_baseline",
        None,
        ppl_base,
        None,
        Some(base.method_meta()),
    );
    ctx.metric_full("ppl_bitnet", None, ppl_bit, None, Some(bit.method_meta()));
    ctx.metric("accuracy_degradation", degradation, Some("ratio"));
    ctx.metric("top1_agreement", tally.agree as f64 / tokens, Some("ratio"));
    ctx.metric(
        "top1_accuracy_baseline",
        tally.hit_base as f64 / tokens,
        Some("ratio"),
    );
    ctx.metric(
        "top1_accuracy_bitnet",
        tally.hit_bit as f64 / tokens,
        Some("ratio"),
    );
    ctx.metric("eval_tokens", tally.tokens as f64, Some("tokens"));
    for (side, m) in [(Side::Baseline, &base), (Side::Bitnet, &bit)] {
        let s = side.name();
        ctx.metric(
            &format!("parameters_{s}"),
            m.parameters as f64,
            Some("params"),
        );
        ctx.metric(
            &format!("{s}_weight_bytes"),
            m.weight_bytes_stored as f64,
            Some("bytes"),
        );
    }
    ctx.metric(
        "thought_parameters",
        bit.thought_parameters as f64,
        Some("params"),
    );
    let doc = json!({
        "ppl_baseline": ppl_base,
        "ppl_bitnet": ppl_bit,
        "accuracy_degradation": degradation,
        "top1_agreement": tally.agree as f64 / tokens,
        "eval_tokens": tally.tokens,
        "device": super::device::name(device),
        "baseline": base.method_meta(),
        "bitnet": bit.method_meta(),
    });
    std::fs::write(
        ctx.output_dir().join("eval.json"),
        serde_json::to_vec_pretty(&doc)?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitnet::{convert_to_bitnet, Config, ConvertSpec, UnpackBackend};
    use crate::kernels::KernelBackend;
    use tch::{nn, Device};

    /// Issue #14: perplexity through the packed kernels (what the profiles
    /// time) equals perplexity through the unpack path within 1e-4
    /// relative. Both compute the same integer dot products; only the f32
    /// rounding of the final scaling differs.
    #[test]
    fn kernel_and_unpack_backends_give_the_same_perplexity() {
        tch::manual_seed(11);
        let cfg = Config::tiny();
        let vs = nn::VarStore::new(Device::Cpu);
        let fp = LlamaModel::new(&vs.root(), &cfg).unwrap();
        let bvs = nn::VarStore::new(Device::Cpu);
        let (bit, _) = convert_to_bitnet(&fp, &bvs.root(), &ConvertSpec::default()).unwrap();
        let unpack = bit.to_packed(&UnpackBackend).unwrap();
        let kernel = bit.to_packed(&KernelBackend).unwrap();
        let x = Tensor::randint(cfg.vocab_size, [3, 17], (Kind::Int64, Device::Cpu));
        let y = Tensor::randint(cfg.vocab_size, [3, 17], (Kind::Int64, Device::Cpu));
        let (mut a, mut b) = (Tally::default(), Tally::default());
        tally_batch(&fp, &unpack, &x, &y, &mut a).unwrap();
        tally_batch(&fp, &kernel, &x, &y, &mut b).unwrap();
        assert_eq!(a.tokens, 51);
        let ppl = |t: &Tally| (t.nll_bit / t.tokens as f64).exp();
        let rel = (ppl(&a) - ppl(&b)).abs() / ppl(&a);
        assert!(
            rel <= 1e-4,
            "unpack {} vs kernel {}: {rel}",
            ppl(&a),
            ppl(&b)
        );
        // And the BitNet model is not the baseline.
        assert_ne!(a.nll_bit, a.nll_base);
    }
}
