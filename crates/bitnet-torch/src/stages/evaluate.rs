//! `evaluate`: held-out perplexity of baseline vs BitNet, degradation and
//! next-token top-1 agreement, on the same windows.
use anyhow::{anyhow, bail, Result};
use bitnet_pipeline::stages::evaluate::EvaluateConfig;
use bitnet_pipeline::stages::{parse_config, StageContext};
use serde_json::json;
use tch::{Kind, Tensor};

use super::common::{load_tokens, read_model_dir, THOUGHTS_FILE};
use super::thoughts::ThoughtSet;
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
    let base_dir = ctx.upstream_dir(&c.baseline)?.to_path_buf();
    let bit_dir = ctx.upstream_dir(&c.model)?.to_path_buf();
    let base_files = read_model_dir(&base_dir, device)?;
    let bit_files = read_model_dir(&bit_dir, device)?;
    if base_files.config.vocab_size != bit_files.config.vocab_size {
        bail!(
            "{} and {} have different vocab sizes ({} vs {}); they cannot be compared token by token",
            base_files.path.display(),
            bit_files.path.display(),
            base_files.config.vocab_size,
            bit_files.config.vocab_size
        );
    }
    let base = base_files.build_frozen(device)?;
    let mut bit = bit_files.build_frozen(device)?;
    let thoughts_path = bit_dir.join(THOUGHTS_FILE);
    let mut thought_params = 0;
    if thoughts_path.is_file() {
        let t = ThoughtSet::load(
            &thoughts_path,
            bit_files.config.hidden_size,
            bit_files.config.num_hidden_layers,
            device,
        )?;
        thought_params = t.num_parameters();
        t.attach(&mut bit)?;
    }
    let (_, heldout_tokens) = load_tokens(ctx, &c.data, base_files.config.vocab_size)?;
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
        tally_batch(&base, &bit, &x, &y, &mut tally)?;
        ctx.progress(i as u64 + 1, Some(n), format!("{} tokens", tally.tokens));
    }
    let tokens = tally.tokens.max(1) as f64;
    let ppl_base = (tally.nll_base / tokens).exp();
    let ppl_bit = (tally.nll_bit / tokens).exp();
    let degradation = ppl_bit / ppl_base - 1.0;
    ctx.metric("ppl_baseline", ppl_base, None);
    ctx.metric("ppl_bitnet", ppl_bit, None);
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
    ctx.metric(
        "baseline_weight_bytes",
        base.weight_bytes()? as f64,
        Some("bytes"),
    );
    ctx.metric(
        "bitnet_weight_bytes",
        bit.weight_bytes()? as f64,
        Some("bytes"),
    );
    ctx.metric("thought_parameters", thought_params as f64, Some("params"));
    let doc = json!({
        "ppl_baseline": ppl_base,
        "ppl_bitnet": ppl_bit,
        "accuracy_degradation": degradation,
        "top1_agreement": tally.agree as f64 / tokens,
        "eval_tokens": tally.tokens,
        "device": super::device::name(device),
    });
    std::fs::write(
        ctx.output_dir().join("eval.json"),
        serde_json::to_vec_pretty(&doc)?,
    )?;
    Ok(())
}
