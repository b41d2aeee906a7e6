//! `generate`, the stage and the command: load a model folder the way the
//! measuring stages do (`inference_model`), tokenize the prompt with the
//! model's tokenizer, run the model library's KV-cache generation loop,
//! stream the text as it comes, stop at stop strings or EOS, and report time
//! to first token and prefill/decode tokens/s (options and metric names in
//! the root crate's `stages::generate`).
//!
//! Input problems (no model file, no tokenizer for the vocabulary, a prompt
//! that does not fit the context) are found before any token is generated
//! and are [`Refused`], which the command turns into exit code 2; nothing
//! is written anywhere until a generation has finished.
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use bitnet_pipeline::stages::generate::{
    GenerateConfig, GenerateRequest, GenerationSettings, ModelSide, RECORD_FILE, TEXT_FILE,
};
use bitnet_pipeline::stages::profiling::{Side, PACKED_FILE};
use bitnet_pipeline::stages::StageContext;
use serde_json::{json, Value};

use super::common::{MODEL_FILE, THOUGHTS_FILE};
use super::inference_model::{kind_of, load_model_with, FusedRequest, LoadedModel};
use super::timing_stats::{cores, load_average};
use crate::bitnet::{
    cache_capacity, generate, generate_with, Flow, GenerateOptions, Generation, Sampler,
    SamplingConfig,
};
use crate::data::Tokenizer;
use crate::kernels::fused::FusedDecoder;

/// An input the command refuses (exit 2): the message says what to fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

fn refused(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Refused(msg.into()))
}

/// Which file of `dir` generates.
fn pick_side(dir: &Path, side: ModelSide) -> Result<Side> {
    let has = |f: &str| dir.join(f).is_file();
    let side = match side {
        ModelSide::Auto if has(PACKED_FILE) => Side::Bitnet,
        ModelSide::Auto => Side::Baseline,
        ModelSide::Baseline => Side::Baseline,
        ModelSide::Bitnet => Side::Bitnet,
    };
    if !dir.is_dir() {
        return Err(refused(format!(
            "model folder {} does not exist; give a stage folder (`RUN/STAGE`) or a folder with {MODEL_FILE} or {PACKED_FILE}",
            dir.display()
        )));
    }
    if !has(side.file()) {
        return Err(refused(format!(
            "{} has no {}; a model folder holds {MODEL_FILE} (full precision) or {PACKED_FILE} (BitNet packed), with config.json",
            dir.display(),
            side.file()
        )));
    }
    Ok(side)
}

/// The tokenizer: the given file, else the folder's `tokenizer.json`, else
/// bytes when the vocabulary is the byte vocabulary.
fn pick_tokenizer(dir: &Path, given: Option<&Path>, vocab: i64) -> Result<Tokenizer> {
    let local = dir.join("tokenizer.json");
    let path = given
        .map(Path::to_path_buf)
        .or_else(|| local.is_file().then_some(local));
    let tok = match path {
        Some(p) => Tokenizer::from_file(&p).map_err(|e| refused(e.to_string()))?,
        None if vocab == crate::data::tokenizer::BYTE_VOCAB_SIZE as i64 => Tokenizer::byte_level(),
        None => {
            return Err(refused(format!(
                "the model's vocabulary has {vocab} tokens but {} has no tokenizer.json (byte-level needs 256); give the tokenizer file (`tokenizer:` / `--tokenizer`)",
                dir.display()
            )))
        }
    };
    if tok.vocab_size() as i64 > vocab {
        return Err(refused(format!(
            "tokenizer {} has {} tokens, more than the model's vocabulary of {vocab}; it belongs to another model",
            tok.name(),
            tok.vocab_size()
        )));
    }
    Ok(tok)
}

/// `eos_token_id` of the model config: a number, a list, or absent.
fn eos_ids(model: &LoadedModel) -> Vec<i64> {
    match model.model.config.extra.get("eos_token_id") {
        Some(Value::Number(n)) => n.as_i64().into_iter().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
        _ => Vec::new(),
    }
}

/// Streams generated text, holding back what could still turn into a stop
/// string or complete a multi-byte character, and cuts at a stop string.
struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    stops: &'a [String],
    out: &'a mut dyn Write,
    printed: usize,
    text: String,
}

impl TextStream<'_> {
    /// After a new token: decode everything generated so far, stop at the
    /// first stop string, print what is safe.
    fn update(&mut self, ids: &[i64]) -> Result<Flow> {
        self.text = self.tokenizer.decode(ids)?;
        if let Some((at, s)) = self
            .stops
            .iter()
            .filter_map(|s| self.text.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|(at, _)| *at)
        {
            self.text.truncate(at);
            return Ok(Flow::Stop(format!("stop string {s:?}")));
        }
        let mut safe = self.text.trim_end_matches('\u{fffd}').len();
        for s in self.stops {
            // Longest suffix of the text that begins a stop string.
            for k in (1..s.len()).rev() {
                if s.is_char_boundary(k) && self.text[..safe].ends_with(&s[..k]) {
                    safe = safe.min(self.text.len() - k);
                    break;
                }
            }
        }
        self.emit(safe)?;
        Ok(Flow::Continue)
    }

    fn emit(&mut self, upto: usize) -> Result<()> {
        if upto > self.printed && self.text.is_char_boundary(self.printed) {
            if let Some(new) = self.text.get(self.printed..upto) {
                self.out.write_all(new.as_bytes())?;
                self.out.flush()?;
                self.printed = upto;
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        let end = self.text.len();
        self.emit(end)
    }
}

/// A finished generation and what it ran on.
pub struct Outcome {
    pub generation: Generation,
    pub text: String,
    /// Everything about it, as written to `generation.json`.
    pub record: Value,
}

/// Everything one generation needs, however it was asked for.
pub struct Job<'a> {
    pub dir: &'a Path,
    pub side: ModelSide,
    pub settings: &'a GenerationSettings,
    pub tokenizer: Option<&'a Path>,
    pub dtype: bitnet_pipeline::stages::profiling::Dtype,
    pub backend: bitnet_pipeline::stages::profiling::TernaryBackendChoice,
    pub decode_path: bitnet_pipeline::stages::profiling::DecodePathChoice,
    pub kept_dtype: bitnet_pipeline::stages::profiling::KeptDtypeChoice,
    pub threads: Option<i32>,
    pub device: Option<&'a str>,
}

/// Loads, checks and generates; the text goes to `stream` as it comes.
pub fn run_job(job: &Job<'_>, stream: &mut dyn Write) -> Result<Outcome> {
    let side = pick_side(job.dir, job.side)?;
    let device = super::device::resolve(job.device)?;
    if let Some(t) = job.threads {
        tch::set_num_threads(t);
    }
    // The fused loop's kernels use the threads libtorch uses.
    bitnet_kernels::set_num_threads(usize::try_from(tch::get_num_threads()).unwrap_or(1));
    // Check the prompt before loading the weights when config.json says
    // the vocabulary and context (stage folders and HF folders have one),
    // so a prompt that cannot run is refused without the wait.
    let json = job.dir.join("config.json");
    let early = if json.is_file() {
        let cfg = crate::bitnet::Config::from_json_file(&json)
            .with_context(|| format!("reading the model config {}", json.display()))?;
        Some(check_prompt(job, &cfg)?)
    } else {
        None
    };
    let fused = FusedRequest {
        path: job.decode_path,
        kept: job.kept_dtype,
    };
    let model = load_model_with(job.dir, side, job.dtype, job.backend, device, Some(fused))?;
    let (tokenizer, prompt) = match early {
        Some(t) => t,
        None => check_prompt(job, &model.model.config)?,
    };
    let s = job.settings;
    let context = model.model.config.max_position_embeddings;
    let mut sampler = Sampler::new(SamplingConfig {
        temperature: s.temperature,
        top_k: s.top_k,
        top_p: s.top_p,
        repetition_penalty: s.repetition_penalty,
        seed: s.seed,
    })
    .map_err(|e| refused(e.to_string()))?;
    let eos = if s.stop_at_eos {
        eos_ids(&model)
    } else {
        Vec::new()
    };
    let opts = GenerateOptions {
        max_new_tokens: s.max_new_tokens as usize,
        eos_ids: eos.clone(),
        context,
        kind: kind_of(job.dtype),
    };
    let load_before = load_average();
    let mut text = TextStream {
        tokenizer: &tokenizer,
        stops: &s.stop,
        out: stream,
        printed: 0,
        text: String::new(),
    };
    let mut on_token = |_: i64, ids: &[i64]| {
        text.update(ids)
            .map_err(|e| crate::bitnet::BitnetError::Module {
                module: "generate text stream".into(),
                message: format!("{e:#}"),
            })
    };
    let generation = match &model.fused {
        Some(fused) => {
            let capacity = cache_capacity(&prompt, &opts);
            let mut decoder = FusedDecoder::new(fused, capacity, prompt.len())?;
            generate_with(&mut decoder, &prompt, &opts, &mut sampler, &mut on_token)
        }
        None => generate(&model.model, &prompt, &opts, &mut sampler, &mut on_token),
    }
    .context("generating")?;
    text.finish()?;
    let load_after = load_average();
    let out_text = text.text.clone();
    let record = json!({
        "prompt": s.prompt,
        "prompt_tokens": prompt.len(),
        "text": out_text,
        "ids": generation.ids,
        "generated_tokens": generation.ids.len(),
        "stop_reason": generation.stop.describe(),
        "settings": s,
        "eos_token_ids": eos,
        "tokenizer": tokenizer.name(),
        "side": side.name(),
        "decode_path": model.decode_path["path"],
        "model": model.method_meta(),
        "time_to_first_token_ms": generation.time_to_first_token_ms,
        "prefill_ms": generation.prefill_ms,
        "prefill_tokens_per_s": generation.prefill_tokens_per_s(),
        "decode_ms": generation.decode_ms,
        "decode_steps": generation.decode_steps,
        "decode_tokens_per_s": generation.decode_tokens_per_s(),
        "cache_positions": generation.cache_positions,
        "context": context,
        "threads": tch::get_num_threads(),
        "cores": cores(),
        "device": super::device::name(device),
        "dtype": job.dtype.name(),
        "load_before": load_before,
        "load_after": load_after,
        "method": "batch 1, KV cache preallocated to prompt + max_new_tokens (at most the context); prompt and steps on the path of `decode_path` (fused: bitnet-infer's Rust loop, prompt in one call; libtorch: the model's ops); time to first token = prompt forward + first sampling; decode = forward + sampling of each later token (text streaming not counted); wall clock, one generation (not a benchmark: see profile_speed for medians)",
    });
    Ok(Outcome {
        generation,
        text: out_text,
        record,
    })
}

/// The tokenizer and the prompt's ids, checked against the model's
/// vocabulary and context.
fn check_prompt(job: &Job<'_>, cfg: &crate::bitnet::Config) -> Result<(Tokenizer, Vec<i64>)> {
    let tokenizer = pick_tokenizer(job.dir, job.tokenizer, cfg.vocab_size)?;
    let text = &job.settings.prompt;
    if text.is_empty() {
        return Err(refused("the prompt is empty; give the text to continue"));
    }
    let prompt = tokenizer.encode(text).map_err(|e| refused(e.to_string()))?;
    if prompt.is_empty() {
        return Err(refused(format!(
            "the prompt {text:?} gives no tokens with {}; give some text",
            tokenizer.name()
        )));
    }
    let context = cfg.max_position_embeddings;
    if prompt.len() as i64 >= context {
        return Err(refused(format!(
            "the prompt is {} tokens but the model's context is {context} (max_position_embeddings in its config), leaving no room for a new token; shorten the prompt",
            prompt.len()
        )));
    }
    Ok((tokenizer, prompt))
}

/// The stage: generate from upstream `model`, record metrics and artifacts.
pub fn run(ctx: &mut StageContext) -> Result<()> {
    let c = GenerateConfig::parse(ctx.config()).map_err(|e| anyhow!(e.message))?;
    let dir = std::path::absolute(ctx.upstream_dir(&c.model)?)
        .with_context(|| format!("resolving the folder of upstream stage `{}`", c.model))?;
    let tokenizer: Option<PathBuf> = c.tokenizer.as_deref().map(|p| ctx.resolve(p));
    let device = ctx.invocation.device.clone();
    ctx.progress(0, Some(1), "generating");
    let job = Job {
        dir: &dir,
        side: c.side,
        settings: &c.settings,
        tokenizer: tokenizer.as_deref(),
        dtype: c.dtype,
        backend: c.backend,
        decode_path: c.decode_path,
        kept_dtype: c.kept_dtype,
        threads: c.threads,
        device: device.as_deref(),
    };
    // The text streams into the stage log (stderr); stdout carries events.
    let mut log = std::io::stderr();
    let out = run_job(&job, &mut log)?;
    let _ = writeln!(log);
    let r = &out.record;
    let meta = json!({
        "side": r["side"], "decode_path": r["decode_path"], "model": r["model"], "tokenizer": r["tokenizer"],
        "prompt_tokens": r["prompt_tokens"], "generated_tokens": r["generated_tokens"],
        "stop_reason": r["stop_reason"], "threads": r["threads"], "cores": r["cores"],
        "device": r["device"], "dtype": r["dtype"],
        "load_before": r["load_before"], "load_after": r["load_after"], "method": r["method"],
    });
    let g = &out.generation;
    ctx.metric_full(
        "time_to_first_token_ms",
        None,
        g.time_to_first_token_ms,
        Some("ms"),
        Some(meta.clone()),
    );
    ctx.metric_full(
        "prefill_tokens_per_s",
        None,
        g.prefill_tokens_per_s(),
        Some("tokens/s"),
        Some(meta.clone()),
    );
    if let Some(d) = g.decode_tokens_per_s() {
        ctx.metric_full(
            "decode_tokens_per_s",
            None,
            d,
            Some("tokens/s"),
            Some(meta.clone()),
        );
    }
    ctx.metric("prompt_tokens", g.prompt_tokens as f64, Some("tokens"));
    ctx.metric("generated_tokens", g.ids.len() as f64, Some("tokens"));
    ctx.param("generate.stop_reason", json!(g.stop.describe()));
    if dir.join(THOUGHTS_FILE).is_file() {
        ctx.param("generate.thoughts_attached", json!(true));
    }
    // Artifacts last: a stage that failed above wrote neither file.
    let out_dir = ctx.output_dir();
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    write_atomically(&out_dir.join(RECORD_FILE), &serde_json::to_vec_pretty(r)?)?;
    write_atomically(&out_dir.join(TEXT_FILE), out.text.as_bytes())?;
    ctx.progress(1, Some(1), "done");
    Ok(())
}

/// Writes through a temporary name in the same folder, then renames.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The command (`bitnet-pipeline generate`): text on stdout as it comes (or
/// the record as JSON with `--json`), the figures on stderr. Returns the
/// exit code: 0 done, 2 input refused, 1 failed.
pub fn run_command(req: &GenerateRequest) -> i32 {
    let job = Job {
        dir: &req.dir,
        side: req.side,
        settings: &req.settings,
        tokenizer: req.tokenizer.as_deref(),
        dtype: req.dtype,
        backend: req.backend,
        decode_path: req.decode_path,
        kept_dtype: req.kept_dtype,
        threads: req.threads,
        device: req.device.as_deref(),
    };
    let mut stdout = std::io::stdout();
    let mut sink = std::io::sink();
    let stream: &mut dyn Write = if req.json { &mut sink } else { &mut stdout };
    match run_job(&job, stream) {
        Ok(out) => {
            if req.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&out.record).unwrap_or_default()
                );
            } else {
                println!();
            }
            let g = &out.generation;
            let r = &out.record;
            eprintln!(
                "-- {} prompt tokens, {} generated ({}); time to first token {:.1} ms, prefill {:.1} tokens/s, decode {} ({} path, {}, {} threads, {})",
                g.prompt_tokens,
                g.ids.len(),
                g.stop.describe(),
                g.time_to_first_token_ms,
                g.prefill_tokens_per_s(),
                g.decode_tokens_per_s()
                    .map(|d| format!("{d:.1} tokens/s"))
                    .unwrap_or_else(|| "n/a (one token)".into()),
                r["decode_path"].as_str().unwrap_or("?"),
                r["model"]["backend"].as_str().unwrap_or("?"),
                r["threads"],
                r["device"].as_str().unwrap_or("?"),
            );
            0
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<Refused>().is_some() {
                2
            } else {
                1
            }
        }
    }
}
