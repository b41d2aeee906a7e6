//! Autoregressive generation: the sampler (repetition penalty, temperature,
//! top-k, top-p), the decode loop and its timings, over any [`Decoder`]
//! (the libtorch model with its [`KvCache`], or the fused CPU loop).
//!
//! Why here and not in a stage: generation is what the model is for, and
//! the same loop serves the `generate` stage, the `generate` command and
//! decode profiling. Text (tokenizers, stop strings, streaming) stays with
//! the caller, which sees every new token through a callback and may stop
//! the loop; this module only deals in token ids.
//!
//! Sampling follows HF `generate`'s logits-processor order: repetition
//! penalty (CTRL, Keskar et al. 2019: a seen token's logit is divided by
//! the penalty when positive, multiplied when negative), then temperature,
//! top-k, top-p (nucleus, Holtzman et al. 2020: the smallest set of most
//! likely tokens whose probability reaches `p`), then one draw from a
//! seeded generator of our own, so the same seed and prompt give the same
//! ids on every machine. Temperature 0 is greedy (arg max, first index on
//! ties).
use std::time::Instant;

use tch::{Kind, Tensor};

use super::error::{BitnetError, Result};
use super::model::{KvCache, LlamaModel};

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    /// 0 = greedy; otherwise logits are divided by it before sampling.
    pub temperature: f64,
    /// Keep only the `k` most likely tokens (`None`: all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability
    /// reaches `top_p` (1.0: all).
    pub top_p: f64,
    /// 1.0 = off; > 1 discourages tokens already in the context.
    pub repetition_penalty: f64,
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            temperature: 0.0,
            top_k: None,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

impl SamplingConfig {
    /// Checks the ranges, naming the setting that is out of range.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, msg: String| Err(BitnetError::invalid(what, msg));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(
                "temperature",
                format!("{} must be 0 (greedy) or positive", self.temperature),
            );
        }
        if self.top_k == Some(0) {
            return bad("top_k", "0 keeps no token; use at least 1".into());
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("{} must be in (0, 1]", self.top_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(
                "repetition_penalty",
                format!("{} must be positive (1.0 = off)", self.repetition_penalty),
            );
        }
        Ok(())
    }
}

/// SplitMix64 (Steele, Lea & Flood 2014): tiny, fast, and the same stream
/// everywhere, which is all a sampler needs.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Chooses tokens from logits; holds the seeded generator and scratch space.
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: SamplingConfig,
    rng: SplitMix64,
    order: Vec<usize>,
    probs: Vec<f64>,
    /// The distinct context tokens (repetition penalty), reused per step.
    seen: Vec<i64>,
}

impl Sampler {
    pub fn new(cfg: SamplingConfig) -> Result<Self> {
        cfg.validate()?;
        let rng = SplitMix64(cfg.seed);
        Ok(Sampler {
            cfg,
            rng,
            order: Vec::new(),
            probs: Vec::new(),
            seen: Vec::new(),
        })
    }

    pub fn config(&self) -> &SamplingConfig {
        &self.cfg
    }

    /// The next token from one position's logits; `context` is every token
    /// so far (prompt and generated), for the repetition penalty. `logits`
    /// is rewritten in place. Allocation-free once the scratch vectors have
    /// grown to the vocabulary and context sizes (it runs once per token).
    pub fn sample(&mut self, logits: &mut [f32], context: &[i64]) -> Result<i64> {
        check_logits(logits)?;
        self.penalize_repeats(logits, context);
        if self.cfg.temperature == 0.0 || self.cfg.top_k == Some(1) {
            return Ok(argmax(logits) as i64);
        }
        self.top_k_candidates(logits);
        if self.cfg.top_p < 1.0 {
            self.keep_nucleus();
        }
        Ok(self.draw())
    }

    /// CTRL's repetition penalty on every distinct token of `context`, once
    /// each, as HF's gather/scatter does.
    fn penalize_repeats(&mut self, logits: &mut [f32], context: &[i64]) {
        let penalty = self.cfg.repetition_penalty as f32;
        if penalty == 1.0 {
            return;
        }
        debug_assert!(penalty > 0.0, "validated positive");
        self.seen.clear();
        self.seen.extend_from_slice(context);
        self.seen.sort_unstable();
        self.seen.dedup();
        debug_assert!(self.seen.windows(2).all(|w| w[0] < w[1]), "each token once");
        for &t in &self.seen {
            if let Some(l) = usize::try_from(t).ok().and_then(|t| logits.get_mut(t)) {
                *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
            }
        }
    }

    /// Fills `order` with the `top_k` most likely token ids, most likely
    /// first (stable: lower id first on ties), and `probs` with their
    /// unnormalised probabilities at the configured temperature.
    fn top_k_candidates(&mut self, logits: &[f32]) {
        debug_assert!(!logits.is_empty(), "checked by `check_logits`");
        debug_assert!(self.cfg.temperature > 0.0, "greedy returns before");
        let inv_t = 1.0 / self.cfg.temperature;
        self.order.clear();
        self.order.extend(0..logits.len());
        self.order
            .sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        let k = self.cfg.top_k.unwrap_or(logits.len()).min(logits.len());
        self.order.truncate(k);
        let max = f64::from(logits[self.order[0]]) * inv_t;
        self.probs.clear();
        self.probs.extend(
            self.order
                .iter()
                .map(|&i| (f64::from(logits[i]) * inv_t - max).exp()),
        );
    }

    /// Top-p: keeps the smallest prefix of the candidates whose probability
    /// reaches `top_p`.
    fn keep_nucleus(&mut self) {
        debug_assert_eq!(self.order.len(), self.probs.len());
        let total: f64 = self.probs.iter().sum();
        let mut cumulative = 0.0;
        let mut keep = self.probs.len();
        for (n, p) in self.probs.iter().enumerate() {
            cumulative += p / total;
            if cumulative >= self.cfg.top_p {
                keep = n + 1;
                break;
            }
        }
        debug_assert!(keep >= 1, "the most likely candidate always stays");
        self.probs.truncate(keep);
        self.order.truncate(keep);
    }

    /// One draw from the candidates in proportion to `probs`.
    fn draw(&mut self) -> i64 {
        debug_assert_eq!(self.order.len(), self.probs.len());
        debug_assert!(!self.order.is_empty(), "top_k >= 1 keeps a candidate");
        let total: f64 = self.probs.iter().sum();
        let mut u = self.rng.next_f64() * total;
        for (n, p) in self.probs.iter().enumerate() {
            if u < *p {
                return self.order[n] as i64;
            }
            u -= p;
        }
        // Rounding left u just above the last bucket.
        *self.order.last().unwrap_or(&0) as i64
    }
}

/// Logits a distribution can be drawn from: some, and none NaN.
fn check_logits(logits: &[f32]) -> Result<()> {
    if logits.is_empty() {
        return Err(BitnetError::invalid("sample", "empty logits"));
    }
    if let Some(i) = logits.iter().position(|x| x.is_nan()) {
        return Err(BitnetError::invalid(
            "sample",
            format!("logit {i} is NaN: the model produced no usable distribution"),
        ));
    }
    Ok(())
}

/// Index of the largest value, the first one on ties (the greedy token;
/// the stages' fused-vs-libtorch checks use it too).
pub(crate) fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

/// Why generation stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// `max_new_tokens` were generated.
    MaxNewTokens,
    /// An end-of-sequence id was sampled (it is not part of the output).
    Eos,
    /// The caller stopped it (a stop string); carries the caller's reason.
    Caller(String),
    /// The model's context (`max_position_embeddings`) is full.
    ContextFull,
}

impl StopReason {
    pub fn describe(&self) -> String {
        match self {
            StopReason::MaxNewTokens => "max_new_tokens reached".into(),
            StopReason::Eos => "end-of-sequence token".into(),
            StopReason::Caller(why) => why.clone(),
            StopReason::ContextFull => "context full (max_position_embeddings)".into(),
        }
    }
}

/// What the caller's callback says after each new token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop(String),
}

/// What one generation did, with its timings (milliseconds, wall clock;
/// the caller synchronises nothing: CPU, or CUDA where reading the logits
/// to the host synchronises anyway).
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated ids (EOS excluded).
    pub ids: Vec<i64>,
    pub stop: StopReason,
    pub prompt_tokens: usize,
    /// Forward of the prompt (logits on the host).
    pub prefill_ms: f64,
    /// Prompt in to first token chosen (prefill + sampling).
    pub time_to_first_token_ms: f64,
    /// Forward + sampling of every token after the first.
    pub decode_ms: f64,
    /// Number of those steps.
    pub decode_steps: usize,
    /// Capacity the cache was allocated with.
    pub cache_positions: i64,
}

impl Generation {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / (self.prefill_ms / 1e3)
    }

    /// `None` when fewer than two tokens were generated.
    pub fn decode_tokens_per_s(&self) -> Option<f64> {
        (self.decode_steps > 0).then(|| self.decode_steps as f64 / (self.decode_ms / 1e3))
    }
}

/// Settings of one generation besides sampling.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// Ids that end the sequence (the model's `eos_token_id`).
    pub eos_ids: Vec<i64>,
    /// Positions the model supports (`max_position_embeddings`).
    pub context: i64,
    /// dtype of the activations and the cache.
    pub kind: Kind,
}

/// The forward passes generation needs from a model, batch 1: the prompt,
/// then one token at a time, each leaving the last position's logits (host
/// f32, `vocab` values) in `logits`. One sampling and decode loop
/// ([`generate_with`]) drives either implementation: the libtorch model
/// with its [`KvCache`] ([`TorchDecoder`]) or the fused Rust loop of
/// `bitnet-infer` (`kernels::fused::FusedDecoder`), so both paths sample,
/// stop and time alike.
pub trait Decoder {
    /// Vocabulary size (prompt ids are checked against it).
    fn vocab(&self) -> i64;
    /// Positions the cache holds.
    fn capacity(&self) -> i64;
    /// Runs the whole prompt; `logits` receives its last position's logits.
    fn prefill(&mut self, prompt: &[i64], logits: &mut Vec<f32>) -> Result<()>;
    /// Runs one token after what is cached; `logits` receives its logits.
    fn step(&mut self, token: i64, logits: &mut Vec<f32>) -> Result<()>;
}

/// The libtorch model over its preallocated [`KvCache`].
pub struct TorchDecoder<'a> {
    model: &'a LlamaModel,
    cache: KvCache,
}

impl<'a> TorchDecoder<'a> {
    /// A cache of `capacity` positions in `kind` for `model`.
    pub fn new(model: &'a LlamaModel, capacity: i64, kind: Kind) -> Result<Self> {
        Ok(TorchDecoder {
            cache: KvCache::new(model, 1, capacity, kind)?,
            model,
        })
    }

    fn forward(&mut self, ids: &[i64], logits: &mut Vec<f32>) -> Result<()> {
        let device = self.model.embed_tokens.device();
        let input = Tensor::f_from_slice(ids)?
            .f_view([1, ids.len() as i64])?
            .f_to_device(device)?; // (1, T)
        let out = tch::no_grad(|| self.model.forward_cached_last(&input, &mut self.cache))?;
        host_logits_into(&out, logits)
    }
}

impl Decoder for TorchDecoder<'_> {
    fn vocab(&self) -> i64 {
        self.model.config.vocab_size
    }

    fn capacity(&self) -> i64 {
        self.cache.capacity()
    }

    fn prefill(&mut self, prompt: &[i64], logits: &mut Vec<f32>) -> Result<()> {
        self.forward(prompt, logits)
    }

    fn step(&mut self, token: i64, logits: &mut Vec<f32>) -> Result<()> {
        self.forward(&[token], logits)
    }
}

/// The last position's logits `(1, 1, V)` as host f32, into `out` (resized
/// to V; after the first step this reuses its memory instead of allocating
/// a vocabulary-sized vector per token).
fn host_logits_into(logits: &Tensor, out: &mut Vec<f32>) -> Result<()> {
    let flat = logits
        .f_to_kind(Kind::Float)?
        .f_to_device(tch::Device::Cpu)?
        .f_flatten(0, -1)?;
    let n = flat.numel();
    out.resize(n, 0.0);
    flat.f_copy_data(out, n)?;
    Ok(())
}

/// Refuses, before any work, an empty prompt, one that leaves no room for a
/// new token in the context, and ids outside the vocabulary of `vocab`.
pub fn check_prompt(vocab: i64, prompt: &[i64], opts: &GenerateOptions) -> Result<()> {
    if prompt.is_empty() {
        return Err(BitnetError::invalid(
            "generate",
            "the prompt is empty; give at least one token",
        ));
    }
    let n = prompt.len() as i64;
    if n >= opts.context {
        return Err(BitnetError::invalid(
            "generate",
            format!(
                "the prompt is {n} tokens, the model's context is {} (max_position_embeddings): no room for a new token; shorten the prompt",
                opts.context
            ),
        ));
    }
    if let Some(bad) = prompt.iter().find(|&&t| !(0..vocab).contains(&t)) {
        return Err(BitnetError::invalid(
            "generate",
            format!("prompt token id {bad} is outside the model's vocabulary of {vocab}; the tokenizer does not match the model"),
        ));
    }
    Ok(())
}

/// Positions a generation's cache needs: the prompt and every new token,
/// at most the context.
pub fn cache_capacity(prompt: &[i64], opts: &GenerateOptions) -> i64 {
    (prompt.len() as i64 + opts.max_new_tokens as i64).min(opts.context)
}

/// Generates up to `opts.max_new_tokens` after `prompt` (batch 1) on the
/// libtorch model with a preallocated KV cache, calling
/// `on_token(id, generated_so_far)` after each one. Errors before any work
/// when the prompt is empty or does not leave room for one new token in
/// the context.
pub fn generate(
    model: &LlamaModel,
    prompt: &[i64],
    opts: &GenerateOptions,
    sampler: &mut Sampler,
    on_token: &mut dyn FnMut(i64, &[i64]) -> Result<Flow>,
) -> Result<Generation> {
    check_prompt(model.config.vocab_size, prompt, opts)?;
    let mut decoder = TorchDecoder::new(model, cache_capacity(prompt, opts), opts.kind)?;
    generate_with(&mut decoder, prompt, opts, sampler, on_token)
}

/// [`generate`] on any [`Decoder`] whose cache has room for
/// [`cache_capacity`] positions (checked here as well).
pub fn generate_with(
    decoder: &mut dyn Decoder,
    prompt: &[i64],
    opts: &GenerateOptions,
    sampler: &mut Sampler,
    on_token: &mut dyn FnMut(i64, &[i64]) -> Result<Flow>,
) -> Result<Generation> {
    check_prompt(decoder.vocab(), prompt, opts)?;
    let capacity = cache_capacity(prompt, opts);
    if decoder.capacity() < capacity {
        return Err(BitnetError::invalid(
            "generate",
            format!(
                "the decoder's cache holds {} positions, this generation needs {capacity} (a bug; please report it)",
                decoder.capacity()
            ),
        ));
    }
    let mut run = Generation {
        // Sized once: the decode loop only pushes into reserved space.
        ids: Vec::with_capacity(opts.max_new_tokens),
        stop: StopReason::MaxNewTokens,
        prompt_tokens: prompt.len(),
        prefill_ms: 0.0,
        time_to_first_token_ms: 0.0,
        decode_ms: 0.0,
        decode_steps: 0,
        cache_positions: capacity,
    };
    decode(decoder, prompt, opts, sampler, on_token, &mut run)?;
    Ok(run)
}

/// The prefill and decode loop of [`generate_with`], recording into `run`.
fn decode(
    decoder: &mut dyn Decoder,
    prompt: &[i64],
    opts: &GenerateOptions,
    sampler: &mut Sampler,
    on_token: &mut dyn FnMut(i64, &[i64]) -> Result<Flow>,
    run: &mut Generation,
) -> Result<()> {
    debug_assert!(!prompt.is_empty(), "checked by `check_prompt`");
    debug_assert!(run.ids.is_empty() && run.ids.capacity() >= opts.max_new_tokens);
    let mut context: Vec<i64> = Vec::with_capacity(run.cache_positions.max(0) as usize);
    context.extend_from_slice(prompt);
    let mut logits: Vec<f32> = Vec::new();
    let t0 = Instant::now();
    decoder.prefill(prompt, &mut logits)?;
    run.prefill_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut step_start = t0;
    for i in 0..opts.max_new_tokens {
        let next = sampler.sample(&mut logits, &context)?;
        let now = Instant::now();
        if i == 0 {
            run.time_to_first_token_ms = now.duration_since(t0).as_secs_f64() * 1e3;
        } else {
            run.decode_ms += now.duration_since(step_start).as_secs_f64() * 1e3;
            run.decode_steps += 1;
        }
        if opts.eos_ids.contains(&next) {
            run.stop = StopReason::Eos;
            break;
        }
        run.ids.push(next);
        context.push(next);
        if let Flow::Stop(why) = on_token(next, &run.ids)? {
            run.stop = StopReason::Caller(why);
            break;
        }
        if i + 1 == opts.max_new_tokens {
            break;
        }
        if context.len() as i64 >= opts.context {
            // The next token would sit at position `context`.
            run.stop = StopReason::ContextFull;
            break;
        }
        // Callback time (printing) is the caller's, not the model's.
        step_start = Instant::now();
        decoder.step(next, &mut logits)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitnet::Config;
    use tch::{nn, Device};

    fn model(vs: &nn::VarStore) -> LlamaModel {
        tch::manual_seed(3);
        LlamaModel::new(&vs.root(), &Config::tiny()).unwrap()
    }

    fn opts(max_new_tokens: usize) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens,
            eos_ids: Vec::new(),
            context: 512,
            kind: Kind::Float,
        }
    }

    fn run(m: &LlamaModel, cfg: SamplingConfig, o: &GenerateOptions) -> Generation {
        let mut s = Sampler::new(cfg).unwrap();
        generate(m, &[72, 101, 108, 108, 111], o, &mut s, &mut |_, _| {
            Ok(Flow::Continue)
        })
        .unwrap()
    }

    fn sampled(seed: u64) -> SamplingConfig {
        SamplingConfig {
            temperature: 1.5,
            top_k: Some(50),
            top_p: 0.95,
            repetition_penalty: 1.1,
            seed,
        }
    }

    #[test]
    fn same_seed_same_ids_and_another_seed_differs() {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = model(&vs);
        let a = run(&m, sampled(7), &opts(24));
        let b = run(&m, sampled(7), &opts(24));
        assert_eq!(a.ids, b.ids);
        assert_eq!(a.ids.len(), 24);
        assert_eq!(a.stop, StopReason::MaxNewTokens);
        assert_eq!(a.decode_steps, 23);
        let c = run(&m, sampled(8), &opts(24));
        assert_ne!(a.ids, c.ids, "a random tiny model at temperature 1.5");
    }

    /// Temperature 0 is greedy: each id is the arg max of the full
    /// forward's logits over the sequence so far (no cache involved).
    #[test]
    fn temperature_zero_equals_greedy_over_full_forwards() {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = model(&vs);
        let g = run(
            &m,
            SamplingConfig {
                temperature: 0.0,
                seed: 99,
                ..sampled(1)
            },
            &opts(12),
        );
        let mut seq = vec![72i64, 101, 108, 108, 111];
        for &id in &g.ids {
            let logits = m
                .forward(&Tensor::from_slice(&seq).view([1, seq.len() as i64]))
                .unwrap();
            let last = logits.narrow(1, seq.len() as i64 - 1, 1).flatten(0, -1);
            let mut v = Vec::<f32>::try_from(last).unwrap();
            // the same repetition penalty the sampler applied
            let mut seen = seq.clone();
            seen.sort_unstable();
            seen.dedup();
            for &t in &seen {
                let l = &mut v[t as usize];
                *l = if *l > 0.0 { *l / 1.1 } else { *l * 1.1 };
            }
            assert_eq!(id, argmax(&v) as i64);
            seq.push(id);
        }
        // top_k = 1 is greedy too, whatever the temperature.
        let k1 = run(
            &m,
            SamplingConfig {
                top_k: Some(1),
                ..sampled(5)
            },
            &opts(12),
        );
        assert_eq!(k1.ids, g.ids);
    }

    #[test]
    fn eos_stop_callback_and_full_context_end_the_loop() {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = model(&vs);
        let greedy = run(&m, SamplingConfig::default(), &opts(8));
        let mut o = opts(8);
        o.eos_ids = vec![greedy.ids[3]];
        let first = greedy.ids.iter().position(|&t| t == greedy.ids[3]).unwrap();
        let e = run(&m, SamplingConfig::default(), &o);
        assert_eq!(e.stop, StopReason::Eos);
        assert_eq!(e.ids, greedy.ids[..first]);
        let mut s = Sampler::new(SamplingConfig::default()).unwrap();
        let c = generate(&m, &[1, 2, 3], &opts(8), &mut s, &mut |_, so_far| {
            Ok(if so_far.len() == 2 {
                Flow::Stop("stop string".into())
            } else {
                Flow::Continue
            })
        })
        .unwrap();
        assert_eq!(c.ids.len(), 2);
        assert_eq!(c.stop, StopReason::Caller("stop string".into()));
        let mut o = opts(100);
        o.context = 9;
        let f = run(&m, SamplingConfig::default(), &o);
        assert_eq!(f.stop, StopReason::ContextFull);
        assert_eq!(f.ids.len(), 4, "5 prompt tokens + 4 fill 9 positions");
    }

    #[test]
    fn bad_prompts_and_settings_are_refused() {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = model(&vs);
        let mut s = Sampler::new(SamplingConfig::default()).unwrap();
        let mut cont = |_: i64, _: &[i64]| Ok(Flow::Continue);
        let e = generate(&m, &[], &opts(4), &mut s, &mut cont).unwrap_err();
        assert!(e.to_string().contains("prompt is empty"), "{e}");
        let mut o = opts(4);
        o.context = 3;
        let e = generate(&m, &[1, 2, 3], &o, &mut s, &mut cont).unwrap_err();
        assert!(e.to_string().contains("context is 3"), "{e}");
        let e = generate(&m, &[1, 256], &opts(4), &mut s, &mut cont).unwrap_err();
        assert!(e.to_string().contains("token id 256"), "{e}");
        for bad in [
            SamplingConfig {
                temperature: -1.0,
                ..Default::default()
            },
            SamplingConfig {
                top_p: 0.0,
                ..Default::default()
            },
            SamplingConfig {
                top_k: Some(0),
                ..Default::default()
            },
            SamplingConfig {
                repetition_penalty: 0.0,
                ..Default::default()
            },
        ] {
            assert!(Sampler::new(bad).is_err());
        }
    }

    #[test]
    fn sampler_respects_top_k_and_top_p() {
        // Probabilities after softmax at temperature 1: token 3 ~0.64,
        // token 1 ~0.24, token 0 ~0.09, token 2 ~0.03.
        let logits = [1.0f32, 2.0, 0.0, 3.0];
        let draw = |cfg: SamplingConfig| -> Vec<i64> {
            let mut s = Sampler::new(cfg).unwrap();
            (0..400)
                .map(|_| s.sample(&mut logits.clone(), &[]).unwrap())
                .collect()
        };
        let base = SamplingConfig {
            temperature: 1.0,
            ..Default::default()
        };
        let all = draw(base.clone());
        assert!([0, 1, 2, 3].iter().all(|t| all.contains(t)));
        let k2 = draw(SamplingConfig {
            top_k: Some(2),
            ..base.clone()
        });
        assert!(k2.iter().all(|t| [1, 3].contains(t)) && k2.contains(&1));
        // 0.64 < 0.8 <= 0.64 + 0.24: the nucleus is {3, 1}.
        let p = draw(SamplingConfig {
            top_p: 0.8,
            ..base.clone()
        });
        assert!(p.iter().all(|t| [1, 3].contains(t)) && p.contains(&1));
        // A strong repetition penalty moves the choice off a seen token.
        let mut s = Sampler::new(SamplingConfig {
            repetition_penalty: 10.0,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.sample(&mut logits.clone(), &[3]).unwrap(), 1);
        let mut nan = [0.0f32, f32::NAN];
        assert!(s.sample(&mut nan, &[]).is_err());
    }
}
