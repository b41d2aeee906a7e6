//! `export`: writes the upstream BitNet model as an HF folder or a GGUF file
//! (`checkpoint::export`), reads an HF export back with our own loader (the
//! round trip must give identical logits), and with `verify` runs the export
//! in the engine it is for and compares: transformers' logits on the prompt
//! tokens (HF); gguf-py's dequantized tensors against the HF form and its
//! vocabulary against the tokenizer.json, then llama.cpp itself (through
//! node-llama-cpp, `scripts/export/llama-cpp-check.mjs`): its perplexity on
//! held-out windows against ours on the same predictions, and its token ids
//! for the prompt against ours (GGUF). Everything lands in `export.json` and
//! the stage's metrics.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use bitnet_pipeline::stages::export::{
    ExportConfig, ExportFormat, FallbackType, KeptType, LinearClass, TernaryType, Verify,
    DEFAULT_PROMPT,
};
use bitnet_pipeline::stages::{parse_config, StageContext};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use super::common::{pick_upstream, read_model_dir, THOUGHTS_FILE};
use crate::bitnet::{ActQuant, LlamaModel, ScaleConvention, UnpackBackend};
use crate::checkpoint::export::gguf::{write_gguf, GgufExportOptions, GgufTokenizer};
use crate::checkpoint::export::hf::{side_files_in, write_hf_folder, HfExportOptions};
use crate::checkpoint::export::ExportReport;
use crate::checkpoint::ggml_types::GgmlType;
use crate::checkpoint::{load_checkpoint, LoadOptions};
use crate::data::Tokenizer;

/// The transformers check, in the repo and compiled into the plugin.
const VERIFY_HF_PY: &str = include_str!("../../../../scripts/export/verify_hf.py");
/// The gguf-py check.
const CHECK_GGUF_PY: &str = include_str!("../../../../scripts/export/check_gguf.py");
/// The llama.cpp check (Node, through node-llama-cpp).
const LLAMA_CPP_CHECK_MJS: &str = include_str!("../../../../scripts/export/llama-cpp-check.mjs");
/// The node-llama-cpp release `scripts/bootstrap-llama-cpp.sh` installs.
const LLAMA_CPP_NPM_VERSION: &str = "3.21.1";
/// llama.cpp runs the perplexity check on one thread: the check is about
/// agreement, not speed, and ggml's worker threads spin at every barrier,
/// which on a machine busier than its cores slowed SmolLM2-135M from 28 to
/// 1.4 tokens/s at 2 threads (load average 10 on 2 cores).
const LLAMA_CPP_THREADS: usize = 1;
/// Largest relative perplexity difference accepted between llama.cpp and our
/// model on the same predictions (the bound). Both run the same
/// ternary codes (llama.cpp's TQ/Q4_0 blocks hold them exactly; only the f16
/// block scale rounds, 2^-11 relative), but llama.cpp quantizes activations
/// to int8 per block (256 values, Q8_K, for TQ2_0/TQ1_0; 32 values, Q8_0, for
/// the Q4_0/Q8_0 fallbacks) where we quantize per token (absmax over the
/// whole row): finer blocks round each activation with a smaller step. For a
/// hidden size of 256 a TQ block is exactly one token row, so only the
/// fallback rows differ. Measured: demo model -0.016 % (docs/perf.md).
pub const LLAMA_CPP_PPL_TOLERANCE_REL: f64 = 0.02;
/// Exit status of the scripts when their engine is not installed.
const ENGINE_MISSING: i32 = 3;

/// Largest |logit difference| accepted between transformers and our model,
/// as a fraction of our largest |logit| on the prompt.
///
/// Both run the same ternary weights and per-token int8 activations but order
/// their f32 operations differently (transformers' `AutoBitLinear` divides each
/// activation code by its scale before the matmul, `BitLinear` divides by
/// `weight_scale * act_scale` after it; we scale the exact integer dot
/// products by `w_scale / act_scale`): relative 1e-7 per layer. That matters
/// only when an activation lands within that distance of a rounding boundary
/// `k + 0.5` of the int8 grid: then one code differs by 1, which moves the
/// layer's outputs by `w_scale * absmax / 127` per nonzero weight of that
/// input column, about 1/127 of one input's share, and later layers carry it to
/// the logits. Measured noise floor of that effect in our own model: reading
/// the `bitlinear` export back (a 1-ulp change of some layer scales, from
/// `1 / (1 / w)`) moves the demo model's logits by 0.025 (max |logit| 15.7);
/// transformers differs by 0.07. A wrong scale convention, layout or RoPE
/// permutation moves logits by O(1)-O(10), a hundred times the tolerance.
pub const LOGITS_TOLERANCE_REL: f64 = 0.02;

fn convention(c: LinearClass) -> ScaleConvention {
    match c {
        LinearClass::Autobitlinear => ScaleConvention::Direct,
        LinearClass::Bitlinear => ScaleConvention::Inverse,
    }
}

pub fn run(ctx: &mut StageContext) -> Result<()> {
    let c: ExportConfig = parse_config(ctx.config()).map_err(|e| anyhow!(e.message))?;
    let src = pick_upstream(ctx, c.model.as_deref(), "model", &[])?;
    let target = match &c.path {
        Some(p) => ctx.resolve(p),
        None => ctx.output_dir().join(c.format.default_name()),
    };
    if target.exists() && !c.overwrite {
        bail!(
            "{}: already exists; set `overwrite: true` to replace it, or choose another `path`",
            target.display()
        );
    }
    let files = read_model_dir(&src, Device::Cpu)?;
    let Some(spec) = files.spec.clone() else {
        bail!(
            "{}: is a full-precision model (it has no BitNet conversion spec); export writes BitNet models: export the output of a convert_bitnet, attach_thoughts or train stage",
            files.path.display()
        );
    };
    if spec.quant.act != ActQuant::INT8 {
        bail!(
            "{}: activations are quantized as {:?}, but transformers and llama.cpp quantize them to int8 per token/block; export a model converted with `activation_bits: 8`",
            files.path.display(),
            spec.quant.act
        );
    }
    let thoughts = src.join(THOUGHTS_FILE);
    let mut dropped = Vec::new();
    if thoughts.is_file() {
        if !c.drop_thoughts {
            bail!(
                "{}: the model has Quiet-STaR thought mixers, which neither transformers nor llama.cpp can run; set `drop_thoughts: true` to export it without them (the report says so), or export a stage before `attach_thoughts`",
                thoughts.display()
            );
        }
        dropped.push(THOUGHTS_FILE.to_string());
        let t = load_checkpoint(&thoughts, &LoadOptions::default())?;
        let n: i64 = t.tensors.values().map(|t| t.numel() as i64).sum();
        ctx.metric("dropped_thought_parameters", n as f64, Some("params"));
    }
    let model = files.build_frozen(Device::Cpu)?;
    let tok_path = c.tokenizer.as_deref().map(|p| ctx.resolve(p));
    let tokenizer = Tokenizer::from_option(tok_path.as_deref())?;
    let prompt = c.prompt.as_deref().unwrap_or(DEFAULT_PROMPT);
    let mut ids = tokenizer.encode(prompt)?;
    ids.truncate(model.config.max_position_embeddings.max(1) as usize);
    if ids.is_empty() {
        bail!("`prompt` encodes to no tokens; give some text");
    }
    ctx.progress(1, Some(3), format!("writing {}", target.display()));

    let mut doc = json!({
        "format": match c.format { ExportFormat::Hf => "hf", ExportFormat::Gguf => "gguf" },
        "source": files.path,
        "dropped": dropped,
        "prompt_tokens": ids.len(),
    });
    let mut llama_windows: Option<EvalWindows> = None;
    let report = match c.format {
        ExportFormat::Hf => {
            let side = tok_path
                .as_deref()
                .and_then(Path::parent)
                .map(side_files_in)
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| side_files_in(&src));
            let opts = HfExportOptions {
                convention: convention(c.linear_class),
                side_files: side,
                overwrite: c.overwrite,
            };
            let report = write_hf_folder(&model, &opts, &target)?;
            doc["linear_class"] = json!(c.linear_class.as_str());
            let diff = roundtrip_hf(&model, &target, &ids)?;
            doc["roundtrip_max_abs_diff"] = json!(diff);
            ctx.metric("roundtrip_max_abs_diff", diff, None);
            // Exact for autobitlinear; bitlinear stores 1/w, and 1/(1/w) is w
            // only for ~88% of f32 values (a 1-ulp scale change, see
            // LOGITS_TOLERANCE_REL), so its round trip is reported, not required.
            if diff != 0.0 && c.linear_class == LinearClass::Autobitlinear {
                bail!(
                    "{}: our own loader reads the export back with logits {diff} away from the model's; the export is wrong (please report this bug)",
                    target.display()
                );
            }
            report
        }
        ExportFormat::Gguf => {
            let tokenizer = match &tok_path {
                Some(p) => GgufTokenizer::from_hf_file(p)?,
                None => GgufTokenizer::Bytes,
            };
            let opts = GgufExportOptions {
                ternary: match c.ternary_type {
                    TernaryType::Tq2_0 => GgmlType::Tq2_0,
                    TernaryType::Tq1_0 => GgmlType::Tq1_0,
                },
                fallback: match c.fallback_type {
                    FallbackType::Q4_0 => GgmlType::Q4_0,
                    FallbackType::Q8_0 => GgmlType::Q8_0,
                },
                kept: match c.kept_type {
                    KeptType::F16 => GgmlType::F16,
                    KeptType::F32 => GgmlType::F32,
                },
                tokenizer,
                name: ctx.invocation.stage.clone(),
                overwrite: c.overwrite,
            };
            let (pre, known) = opts.tokenizer.pre_tokenizer();
            doc["pre_tokenizer"] = json!({"name": pre, "recognised": known});
            if !known {
                eprintln!(
                    "warning: the tokenizer's pre-tokenizer is not one llama.cpp names (known: gpt-2, smollm, llama-bpe, qwen2); written as `default`, so llama.cpp may split text differently (`verify` compares the token ids)"
                );
            }
            doc["ternary_type"] = json!(opts.ternary.name());
            doc["fallback_type"] = json!(opts.fallback.name());
            let report = write_gguf(&model, &opts, &target)?;
            if c.eval_data.is_some() || c.verify != Verify::Off {
                let windows = held_out_windows(ctx, &model, &c, prompt, &ids)?;
                let request = windows.write_request(ctx, &target)?;
                doc["llama_cpp_request"] = json!(request);
                doc["llama_cpp_windows"] = json!({
                    "source": windows.source,
                    "windows": windows.windows.len(),
                    "tokens_scored": windows.tokens_scored(),
                    "ppl_ours": windows.ppl_ours,
                });
                llama_windows = Some(windows);
            }
            report
        }
    };
    record_report(ctx, &report, &mut doc);
    ctx.progress(2, Some(3), "verifying");
    if c.verify != Verify::Off {
        let python = find_python(ctx, c.python.as_deref());
        let python_fix = "run `scripts/setup.sh` to install transformers and gguf into the project's venv, or set `python`";
        let outcome = match c.format {
            ExportFormat::Hf => verify_hf(ctx, &python, &model, &target, &ids),
            ExportFormat::Gguf => verify_gguf(ctx, &python, &model, &target, tok_path.as_deref()),
        };
        engine_verdict(
            ctx,
            c.verify,
            &mut doc,
            "verify",
            "engine_verified",
            python_fix,
            outcome,
        )?;
        if let (ExportFormat::Gguf, Some(windows)) = (c.format, &llama_windows) {
            let outcome = verify_llama_cpp(ctx, &target, windows);
            let fix = "run `scripts/setup.sh` (it installs node-llama-cpp into ~/.cache/bitnet-pipeline and links it as `.llama-cpp`), or set BITNET_LLAMA_CPP to a folder with node_modules/node-llama-cpp";
            engine_verdict(
                ctx,
                c.verify,
                &mut doc,
                "verify_llama_cpp",
                "llama_cpp_verified",
                fix,
                outcome,
            )?;
        }
    }
    write_doc(ctx, &doc)?;
    ctx.progress(3, Some(3), "done");
    Ok(())
}

/// Records one engine check in `doc[key]` and `metric`: its result, or
/// "not installed" (a warning, or an error under `verify: required`), or its
/// failure. `export.json` is written before an error is returned, so a failed
/// stage still says what was measured.
fn engine_verdict(
    ctx: &mut StageContext,
    mode: Verify,
    doc: &mut Value,
    key: &str,
    metric: &str,
    fix: &str,
    outcome: Result<Value, VerifyError>,
) -> Result<()> {
    match outcome {
        Ok(v) => {
            doc[key] = v;
            Ok(())
        }
        Err(VerifyError::Missing(why)) => {
            let msg = format!("verify: the engine is not installed ({why}); {fix}");
            doc[key] = json!({"status": "not installed", "detail": why});
            ctx.metric(metric, 0.0, None);
            if mode == Verify::Required {
                write_doc(ctx, doc)?;
                bail!("{msg} (`verify: required`)");
            }
            eprintln!("warning: {msg}");
            Ok(())
        }
        Err(VerifyError::Failed(e)) => {
            write_doc(ctx, doc)?;
            Err(e)
        }
    }
}

fn write_doc(ctx: &StageContext, doc: &Value) -> Result<()> {
    let p = ctx.output_dir().join("export.json");
    std::fs::write(&p, serde_json::to_vec_pretty(doc)?)
        .with_context(|| format!("{}: cannot write", p.display()))
}

fn record_report(ctx: &mut StageContext, r: &ExportReport, doc: &mut Value) {
    ctx.metric("export_bytes", r.total_bytes as f64, Some("bytes"));
    ctx.metric("export_tensors", r.tensors.len() as f64, None);
    ctx.metric(
        "export_fallback_tensors",
        r.fallback_tensors.len() as f64,
        None,
    );
    doc["path"] = json!(r.path);
    doc["total_bytes"] = json!(r.total_bytes);
    doc["tensors"] = json!(r.tensors);
    doc["copied_files"] = json!(r.copied_files);
    doc["fallback_tensors"] = json!(r.fallback_tensors);
}

/// Logits `(T, V)` of our model on `ids`.
fn our_logits(model: &LlamaModel, ids: &[i64]) -> Result<Tensor> {
    let x = Tensor::f_from_slice(ids)?.f_unsqueeze(0)?;
    let l = tch::no_grad(|| model.forward(&x))?;
    Ok(l.f_squeeze_dim(0)?.f_to_kind(Kind::Float)?)
}

/// Max |logit difference| between `model` and the HF export read back by our own loader.
fn roundtrip_hf(model: &LlamaModel, dir: &Path, ids: &[i64]) -> Result<f64> {
    let ckpt = load_checkpoint(dir, &LoadOptions::default())?;
    let cfg = ckpt
        .config
        .clone()
        .ok_or_else(|| anyhow!("{}: has no config.json", dir.display()))?;
    let back = LlamaModel::from_state_dict(
        &cfg,
        &ckpt.tensors,
        ActQuant::INT8,
        &UnpackBackend,
        Device::Cpu,
    )
    .with_context(|| {
        format!(
            "{}: our own loader cannot read the export back",
            dir.display()
        )
    })?;
    let a = our_logits(model, ids)?;
    let b = our_logits(&back, ids)?;
    Ok(a.f_sub(&b)?.f_abs()?.f_max()?.f_double_value(&[])?)
}

enum VerifyError {
    /// The engine is not installed (why).
    Missing(String),
    /// The engine ran and disagreed, or broke.
    Failed(anyhow::Error),
}

macro_rules! failed_from {
    ($($t:ty),*) => {$(
        impl From<$t> for VerifyError {
            fn from(e: $t) -> Self {
                VerifyError::Failed(e.into())
            }
        }
    )*};
}
failed_from!(
    anyhow::Error,
    std::io::Error,
    serde_json::Error,
    tch::TchError,
    crate::checkpoint::CheckpointError,
    crate::checkpoint::export::ExportError
);

/// The Python to run the engine checks with: `python`, `$BITNET_PYTHON`, a
/// `.venv/bin/python` above the pipeline folder or above this binary (the
/// project's venv, made by `scripts/setup.sh`), else `python3`.
fn find_python(ctx: &StageContext, configured: Option<&str>) -> PathBuf {
    if let Some(p) = configured {
        return ctx.resolve(p);
    }
    if let Some(p) = std::env::var_os("BITNET_PYTHON") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let roots = ctx
        .invocation
        .pipeline_dir
        .ancestors()
        .chain(exe.ancestors());
    for dir in roots {
        let c = dir.join(".venv/bin/python");
        if c.is_file() {
            return c;
        }
    }
    PathBuf::from("python3")
}

/// Runs `script` with `args` by `interpreter` (Python or Node) in a scratch
/// folder and returns its stdout; `Missing` when the interpreter or the
/// engine is absent.
fn run_script(
    ctx: &StageContext,
    interpreter: &Path,
    name: &str,
    script: &str,
    args: &[&Path],
    envs: &[(&str, &Path)],
) -> Result<String, VerifyError> {
    let scratch = ctx.output_dir().join(".verify");
    std::fs::create_dir_all(&scratch)?;
    let path = scratch.join(name);
    std::fs::write(&path, script)?;
    let mut cmd = Command::new(interpreter);
    cmd.arg(&path)
        .args(args)
        .env("TORCHDYNAMO_DISABLE", "1")
        .env("TOKENIZERS_PARALLELISM", "false");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) => {
            return Err(VerifyError::Missing(format!(
                "{}: {e}",
                interpreter.display()
            )))
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Some(ENGINE_MISSING) => Err(VerifyError::Missing(format!(
            "{}: {}",
            interpreter.display(),
            stderr.trim()
        ))),
        _ => {
            let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err(VerifyError::Failed(anyhow!(
                "verify: {} {name} failed ({}):\n{}",
                interpreter.display(),
                out.status,
                tail.join("\n")
            )))
        }
    }
}

/// transformers loads the HF export; its logits on `ids` against ours.
fn verify_hf(
    ctx: &mut StageContext,
    python: &Path,
    model: &LlamaModel,
    dir: &Path,
    ids: &[i64],
) -> Result<Value, VerifyError> {
    let scratch = ctx.output_dir().join(".verify");
    std::fs::create_dir_all(&scratch)?;
    let tokens = scratch.join("tokens.json");
    std::fs::write(&tokens, serde_json::to_vec(ids)?)?;
    let out = scratch.join("hf_logits.safetensors");
    run_script(
        ctx,
        python,
        "verify_hf.py",
        VERIFY_HF_PY,
        &[dir, &tokens, &out],
        &[],
    )?;
    let (tensors, meta) = crate::checkpoint::safetensors_io::read_safetensors(&out)?;
    let theirs = tensors
        .into_iter()
        .find(|(n, _)| n == "logits")
        .map(|(_, t)| t)
        .ok_or_else(|| anyhow!("{}: no `logits` tensor", out.display()))?;
    let ours = our_logits(model, ids)?;
    crate::checkpoint::save_safetensors(
        &scratch.join("our_logits.safetensors"),
        &[("logits".to_string(), ours.shallow_clone())],
        &Default::default(),
    )?;
    if theirs.size() != ours.size() {
        return Err(anyhow!(
            "transformers gave logits of shape {:?}, ours are {:?}",
            theirs.size(),
            ours.size()
        )
        .into());
    }
    let max_abs = ours.f_sub(&theirs)?.f_abs()?.f_max()?.f_double_value(&[])?;
    let logit_max = ours.f_abs()?.f_max()?.f_double_value(&[])?;
    let tolerance = LOGITS_TOLERANCE_REL * logit_max;
    let same = ours
        .f_argmax(-1, false)?
        .f_eq_tensor(&theirs.f_argmax(-1, false)?)?;
    let agree = same
        .f_to_kind(Kind::Float)?
        .f_mean(Kind::Float)?
        .f_double_value(&[])?;
    // A position whose top two logits (ours) are closer than the tolerance is
    // a tie that arithmetic noise may break either way; the others must agree.
    let top2 = ours.f_topk(2, -1, true, true)?.0; // (T, 2)
    let margin = top2.f_select(1, 0)?.f_sub(&top2.f_select(1, 1)?)?;
    let decisive = margin.f_gt(2.0 * tolerance)?;
    let n_decisive = decisive.f_sum(Kind::Int64)?.f_int64_value(&[])?;
    let decisive_disagree = decisive
        .f_logical_and(&same.f_logical_not()?)?
        .f_sum(Kind::Int64)?
        .f_int64_value(&[])?;
    let classes: Value = meta
        .get("module_classes")
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(Value::Null);
    let bitnet_layers =
        classes["AutoBitLinear"].as_i64().unwrap_or(0) + classes["BitLinear"].as_i64().unwrap_or(0);
    let ternary = crate::checkpoint::export::split_linears(model)?.0.len() as i64;
    ctx.metric("engine_max_abs_diff", max_abs, None);
    ctx.metric("engine_top1_agreement", agree, Some("ratio"));
    ctx.metric("engine_verified", 1.0, None);
    ctx.metric("engine_max_abs_logit", logit_max, None);
    let v = json!({
        "engine": "transformers",
        "version": meta.get("transformers"),
        "torch": meta.get("torch"),
        "model_class": meta.get("model_class"),
        "bitnet_layers": bitnet_layers,
        "tokens": ids.len(),
        "max_abs_diff": max_abs,
        "top1_agreement": agree,
        "max_abs_logit": logit_max,
        "tolerance": tolerance,
        "tolerance_rule": format!("{LOGITS_TOLERANCE_REL} x max |logit| (int8 activation rounding; see LOGITS_TOLERANCE_REL)"),
        "decisive_positions": n_decisive,
        "decisive_disagreements": decisive_disagree,
        "method": "AutoModelForCausalLM.from_pretrained(dtype=float32), eager (TORCHDYNAMO_DISABLE=1), CPU; our packed model (unpack backend) on the same token ids",
    });
    if bitnet_layers != ternary {
        return Err(anyhow!(
            "transformers built {bitnet_layers} BitNet layers but the model has {ternary} ternary linears; the export's quantization_config is not applied"
        )
        .into());
    }
    if max_abs > tolerance || decisive_disagree > 0 {
        return Err(anyhow!(
            "transformers disagrees with our model on {} tokens: max |logit diff| {max_abs:.3e} (tolerance {tolerance:.3e} = {LOGITS_TOLERANCE_REL} x max |logit| {logit_max:.3}), top-1 agreement {:.2}% ({decisive_disagree} of {n_decisive} positions with a clear winner differ)",
            ids.len(),
            100.0 * agree
        )
        .into());
    }
    Ok(v)
}

/// gguf-py reads the GGUF; every tensor against the HF form of the same model.
fn verify_gguf(
    ctx: &mut StageContext,
    python: &Path,
    model: &LlamaModel,
    file: &Path,
    tokenizer: Option<&Path>,
) -> Result<Value, VerifyError> {
    let scratch = ctx.output_dir().join(".verify");
    let hf = scratch.join("hf-reference");
    if hf.exists() {
        std::fs::remove_dir_all(&hf)?;
    }
    std::fs::create_dir_all(&scratch)?;
    write_hf_folder(
        model,
        &HfExportOptions {
            convention: ScaleConvention::Direct,
            side_files: Vec::new(),
            overwrite: true,
        },
        &hf,
    )?;
    let out = scratch.join("gguf_check.json");
    let mut args = vec![file, hf.as_path(), out.as_path()];
    args.extend(tokenizer);
    run_script(ctx, python, "check_gguf.py", CHECK_GGUF_PY, &args, &[])?;
    let text = std::fs::read_to_string(&out)?;
    let v: Value = serde_json::from_str(&text)?;
    let _ = std::fs::remove_dir_all(&hf);
    let ok = v["ok"].as_bool().unwrap_or(false);
    let max_abs = v["tensors"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .filter_map(|t| t["max_abs_diff"].as_f64())
                .fold(0.0, f64::max)
        })
        .unwrap_or(f64::NAN);
    ctx.metric("gguf_max_abs_weight_diff", max_abs, None);
    ctx.metric("engine_verified", if ok { 1.0 } else { 0.0 }, None);
    if !ok {
        let bad: Vec<String> = v["tensors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["problem"].is_string() || t["within_f16_rounding"] == json!(false))
            .map(|t| {
                format!(
                    "{} ({})",
                    t["name"].as_str().unwrap_or("?"),
                    t["problem"].as_str().unwrap_or("values differ")
                )
            })
            .chain(
                v["missing"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| format!("{} (missing)", m.as_str().unwrap_or("?"))),
            )
            .chain((v["tokenizer"]["ok"] == json!(false)).then(|| {
                format!(
                    "tokenizer ({} tokens differ from the tokenizer.json, first ids {}; merges equal: {})",
                    v["tokenizer"]["tokens_differing"],
                    v["tokenizer"]["first_differing"],
                    v["tokenizer"]["merges_equal"]
                )
            }))
            .collect();
        return Err(anyhow!(
            "gguf-py reads {} differently from the model: {}",
            file.display(),
            bad.join(", ")
        )
        .into());
    }
    Ok(json!({
        "engine": "gguf-py",
        "version": v["gguf_version"],
        "fields": v["fields"],
        "tensors_checked": v["tensors"].as_array().map(|a| a.len()).unwrap_or(0),
        "tokenizer": v["tokenizer"],
        "max_abs_weight_diff": max_abs,
        "method": "gguf.GGUFReader + gguf.quants.dequantize vs the HF export unpacked and Q/K-permuted in Python; bound 2^-11 relative (f16 scale)",
    }))
}

/// llama.cpp runs the GGUF (`scripts/export/llama-cpp-check.mjs` through
/// node-llama-cpp) on the held-out windows; its perplexity against ours on
/// the same predictions must agree within `LLAMA_CPP_PPL_TOLERANCE_REL`.
fn verify_llama_cpp(
    ctx: &mut StageContext,
    gguf: &Path,
    windows: &EvalWindows,
) -> Result<Value, VerifyError> {
    let (node, prefix) = find_llama_cpp(ctx).map_err(VerifyError::Missing)?;
    let request = ctx.output_dir().join("llama_cpp_request.json");
    if !request.is_file() {
        windows.write_request(ctx, gguf)?;
    }
    let stdout = run_script(
        ctx,
        &node,
        "llama-cpp-check.mjs",
        LLAMA_CPP_CHECK_MJS,
        &[&request],
        &[("BITNET_LLAMA_CPP", &prefix)],
    )?;
    let v: Value = serde_json::from_str(stdout.trim())
        .map_err(|e| anyhow!("verify: llama-cpp-check.mjs printed no JSON ({e}): {stdout}"))?;
    // llama.cpp's tokenizer, rebuilt from the GGUF metadata, on the prompt.
    let their_ids: Vec<i64> = v["tokenized"][0]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default();
    let n = windows.prompt_ids.len();
    let same_ids = their_ids.len() >= n && their_ids[..n] == windows.prompt_ids[..];
    ctx.metric(
        "llama_cpp_tokenizer_agrees",
        if same_ids { 1.0 } else { 0.0 },
        None,
    );
    let theirs = v["ppl_llama_cpp"].as_f64().unwrap_or(f64::NAN);
    let rel = theirs / windows.ppl_ours - 1.0;
    ctx.metric("llama_cpp_ppl", theirs, None);
    ctx.metric("ppl_ours_same_windows", windows.ppl_ours, None);
    ctx.metric("llama_cpp_ppl_rel_diff", rel, Some("ratio"));
    ctx.metric("llama_cpp_verified", 1.0, None);
    let result = json!({
        "engine": "llama.cpp",
        "via": format!("node-llama-cpp {LLAMA_CPP_NPM_VERSION} (prebuilt CPU libraries)"),
        "llama_cpp_release": v["llama_cpp_release"],
        "threads": v["threads"],
        "windows": v["windows"],
        "windows_from": windows.source,
        "tokens_scored": v["tokens_scored"],
        "ppl_llama_cpp": theirs,
        "ppl_ours_same_windows": windows.ppl_ours,
        "relative_diff": rel,
        "tolerance_rel": LLAMA_CPP_PPL_TOLERANCE_REL,
        "min_probability_mass": v["min_probability_mass"],
        "tokenizer_agrees": same_ids,
        "prompt_tokens_ours": n,
        "prompt_tokens_llama_cpp": their_ids.len(),
        "seconds": v["ppl_seconds"],
        "method": "each window scored token by token from llama.cpp's full softmax (top-k off), no BOS; ours: the packed model on the same windows. llama.cpp quantizes activations per 256-value block (Q8_K) for TQ1_0/TQ2_0 and per 32 (Q8_0) for Q4_0/Q8_0 fallbacks, we per token (int8 absmax): see LLAMA_CPP_PPL_TOLERANCE_REL",
    });
    if !same_ids {
        let first = (0..n.min(their_ids.len()))
            .find(|&i| their_ids[i] != windows.prompt_ids[i])
            .unwrap_or(n.min(their_ids.len()));
        return Err(anyhow!(
            "llama.cpp tokenizes the prompt differently from the model's tokenizer ({} ids vs our {n}; first difference at token {first}: {:?} vs our {:?}); the GGUF's tokenizer metadata does not reproduce it (see `pre_tokenizer` in export.json)",
            their_ids.len(),
            their_ids.get(first),
            windows.prompt_ids.get(first),
        )
        .into());
    }
    if !rel.is_finite() || rel.abs() > LLAMA_CPP_PPL_TOLERANCE_REL {
        return Err(anyhow!(
            "llama.cpp disagrees with our model on {}: perplexity {theirs:.4} vs ours {:.4} on the same {} predictions ({:+.3}% relative, tolerance {}%)",
            gguf.display(),
            windows.ppl_ours,
            windows.tokens_scored(),
            100.0 * rel,
            100.0 * LLAMA_CPP_PPL_TOLERANCE_REL
        )
        .into());
    }
    Ok(result)
}

/// `(node, folder holding node_modules/node-llama-cpp)`: `$BITNET_LLAMA_CPP`,
/// a `.llama-cpp` link above the pipeline folder or this binary (made by
/// `scripts/bootstrap-llama-cpp.sh`), or the per-user cache it installs into.
/// The node is that folder's `node` link (Node >= 20, chosen by the
/// bootstrap), else `node` on PATH.
fn find_llama_cpp(ctx: &StageContext) -> Result<(PathBuf, PathBuf), String> {
    let has = |d: &Path| d.join("node_modules/node-llama-cpp/package.json").is_file();
    let exe = std::env::current_exe().unwrap_or_default();
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|c| {
            c.join("bitnet-pipeline")
                .join(format!("node-llama-cpp-{LLAMA_CPP_NPM_VERSION}"))
        });
    let prefix = match std::env::var_os("BITNET_LLAMA_CPP").map(PathBuf::from) {
        Some(p) if has(&p) => Ok(p),
        Some(p) => Err(format!(
            "node-llama-cpp: BITNET_LLAMA_CPP={} has no node_modules/node-llama-cpp",
            p.display()
        )),
        None => ctx
            .invocation
            .pipeline_dir
            .ancestors()
            .chain(exe.ancestors())
            .map(|d| d.join(".llama-cpp"))
            .chain(cache)
            .find(|d| has(d))
            .ok_or_else(|| "node-llama-cpp: no `.llama-cpp` above the pipeline folder or this binary and none in ~/.cache/bitnet-pipeline".to_string()),
    }?;
    let node = prefix.join("node");
    let node = if node.exists() {
        node
    } else {
        PathBuf::from("node")
    };
    Ok((node, prefix))
}

/// Token windows the GGUF is scored on by llama.cpp and by us: held-out
/// windows of `eval_seq_len + 1` tokens from `eval_data`, or else the
/// comparison prompt as one window. Each window of `n` tokens gives `n - 1`
/// predictions (token `i + 1` given tokens `0..=i`, no BOS), as `evaluate`
/// scores.
struct EvalWindows {
    /// `eval_data` or `prompt`.
    source: &'static str,
    windows: Vec<Vec<i64>>,
    /// Our model's perplexity on exactly these predictions.
    ppl_ours: f64,
    /// The comparison prompt and our tokenizer's ids for it, which
    /// llama.cpp's tokenizer (from the GGUF metadata) must reproduce.
    prompt: String,
    prompt_ids: Vec<i64>,
}

impl EvalWindows {
    fn tokens_scored(&self) -> usize {
        self.windows.iter().map(|w| w.len() - 1).sum()
    }

    /// `llama_cpp_request.json` for `scripts/export/llama-cpp-check.mjs`,
    /// which the stage runs for `verify` and a user can run by hand.
    fn write_request(&self, ctx: &StageContext, gguf: &Path) -> Result<PathBuf> {
        let path = ctx.output_dir().join("llama_cpp_request.json");
        let request = json!({
            "model": gguf,
            "threads": LLAMA_CPP_THREADS,
            "windows": self.windows,
            "ppl_ours": self.ppl_ours,
            "tokenize": [self.prompt],
        });
        std::fs::write(&path, serde_json::to_vec(&request)?)
            .with_context(|| format!("{}: cannot write", path.display()))?;
        Ok(path)
    }
}

fn held_out_windows(
    ctx: &mut StageContext,
    model: &LlamaModel,
    c: &ExportConfig,
    prompt: &str,
    prompt_ids: &[i64],
) -> Result<EvalWindows> {
    let (source, windows) = match &c.eval_data {
        Some(data) => {
            let (_, heldout) = super::common::load_tokens(ctx, data, model.config.vocab_size)?;
            let t = c.eval_seq_len as usize;
            let n = ((c.eval_tokens / c.eval_seq_len).max(1) as usize)
                .min(heldout.len().saturating_sub(1) / t);
            if n == 0 {
                bail!(
                    "the held-out part of `eval_data` has {} tokens, fewer than one window of {}",
                    heldout.len(),
                    c.eval_seq_len
                );
            }
            let w = (0..n).map(|i| heldout[i * t..i * t + t + 1].to_vec());
            ("eval_data", w.collect::<Vec<_>>())
        }
        None if prompt_ids.len() >= 2 => ("prompt", vec![prompt_ids.to_vec()]),
        None => bail!(
            "`prompt` encodes to {} token; the llama.cpp perplexity check needs at least 2: give a longer prompt or `eval_data`",
            prompt_ids.len()
        ),
    };
    let (mut nll, mut count) = (0.0, 0usize);
    for w in &windows {
        let t = w.len() - 1;
        let x = Tensor::f_from_slice(&w[..t])?.f_unsqueeze(0)?; // (1, T)
        let y = Tensor::f_from_slice(&w[1..])?; // (T,)
        let logits = tch::no_grad(|| model.forward(&x))?
            .f_squeeze_dim(0)?
            .f_to_kind(Kind::Float)?; // (T, V)
        nll += logits
            .f_cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Sum, -100, 0.0)?
            .f_double_value(&[])?;
        count += t;
    }
    let ppl_ours = (nll / count as f64).exp();
    ctx.metric("ppl_exported_model", ppl_ours, None);
    Ok(EvalWindows {
        source,
        windows,
        ppl_ours,
        prompt: prompt.to_string(),
        prompt_ids: prompt_ids.to_vec(),
    })
}
