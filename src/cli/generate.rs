//! `bitnet-pipeline generate TARGET --prompt TEXT`: text from the model of a
//! finished stage (`RUN/STAGE`) or of a model folder, streamed to stdout,
//! with time to first token and prefill/decode tokens/s on stderr.
//!
//! This side checks what it can without libtorch (the settings, that the
//! target resolves to a folder with a model) and exits 2 naming the fix;
//! the libtorch plugin (`bitnet_torch_generate`) does the rest and refuses
//! a prompt that does not fit the model's context with exit 2 as well.
//! The command writes nothing: no DB row, no file.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{Cli, EXIT_INVALID, EXIT_STAGE_FAILED};
use crate::stages::generate::{
    check_decode_path, GenerateRequest, GenerationSettings, ModelSide, GENERATE_SYMBOL,
};
use crate::stages::profiling::{
    DecodePathChoice, Dtype, KeptDtypeChoice, TernaryBackendChoice, BASELINE_FILE, PACKED_FILE,
};
use crate::store::Store;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    bitnet-pipeline generate 3/train --prompt \"Call me Ishmael.\" --max-new-tokens 64\n  \
    bitnet-pipeline generate 3/load --prompt \"Call me\" --temperature 0.8 --top-p 0.95 --seed 7\n  \
    bitnet-pipeline generate path/to/hf-folder --prompt \"Hello\" --stop \"\\n\\n\"\n\n\
    Exit codes: 0 done, 1 generation failed, 2 invalid input (nothing generated).")]
pub struct GenerateArgs {
    /// `RUN/STAGE` (a stage of a recorded run) or a model folder
    /// (model.safetensors or packed.safetensors, with config.json).
    pub target: String,
    /// Text to continue.
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: u32,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// 1.0 = off.
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f64,
    /// Same seed and prompt, same text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when the text contains this (repeatable); the text is cut there.
    #[arg(long = "stop", value_name = "TEXT")]
    pub stop: Vec<String>,
    /// Do not stop at the model's eos_token_id.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Which model of the folder: auto (packed when present), baseline, bitnet.
    #[arg(long, value_enum, default_value = "auto")]
    pub side: SideArg,
    /// tokenizer.json (default: the folder's, else byte-level).
    #[arg(long, value_name = "PATH")]
    pub tokenizer: Option<PathBuf>,
    /// dtype of the full-precision parts: fp32, fp16, bf16.
    #[arg(long, default_value = "fp32")]
    pub dtype: String,
    /// Ternary matmul of a packed model: auto, kernel, unpack.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// How a packed model runs: auto (fused Rust loop on the CPU, libtorch on
    /// CUDA), fused, libtorch.
    #[arg(long, default_value = "auto")]
    pub decode_path: String,
    /// Embedding / LM head on the fused path: fp32, bf16, int8.
    #[arg(long, default_value = "fp32")]
    pub kept_dtype: String,
    /// CPU threads (default: libtorch's).
    #[arg(long)]
    pub threads: Option<i32>,
    /// auto, cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Print the generation record (text, ids, timings) as JSON instead of the text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SideArg {
    Auto,
    Baseline,
    Bitnet,
}

fn invalid(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(EXIT_INVALID)
}

/// `RUN/STAGE` -> the stage's output folder, from the results DB.
fn stage_folder(cli: &Cli, target: &str) -> Result<Option<PathBuf>, String> {
    let Some((run, stage)) = target.split_once('/') else {
        return Ok(None);
    };
    let Ok(run_id) = run.parse::<i64>() else {
        return Ok(None);
    };
    let store = Store::open_existing(&cli.db).map_err(|_| {
        format!(
            "`{target}` is not a folder, and there is no results DB at `{}` to look up run {run_id}; pass --db or a model folder",
            cli.db.display()
        )
    })?;
    let stages = store
        .stages(run_id)
        .map_err(|e| format!("reading run {run_id} from {}: {e}", cli.db.display()))?;
    if stages.is_empty() {
        return Err(format!(
            "run {run_id} is not in {} (see `bitnet-pipeline runs list`)",
            cli.db.display()
        ));
    }
    let Some(rec) = stages.iter().find(|s| s.stage == stage) else {
        let names: Vec<&str> = stages.iter().map(|s| s.stage.as_str()).collect();
        return Err(format!(
            "run {run_id} has no stage `{stage}`; its stages: {}",
            names.join(", ")
        ));
    };
    if !matches!(rec.status.as_str(), "completed" | "cached") {
        return Err(format!(
            "stage `{stage}` of run {run_id} is {}, so it has no model to generate from; `bitnet-pipeline resume {run_id}` first",
            rec.status
        ));
    }
    Ok(Some(match &rec.output_dir {
        Some(d) => PathBuf::from(d),
        None => cli.runs_dir.join(run_id.to_string()).join(stage),
    }))
}

fn parse_enum<T: serde::de::DeserializeOwned>(flag: &str, value: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(value.to_string()))
        .map_err(|_| format!("--{flag} `{value}` is not one of the accepted values (see --help)"))
}

pub fn run(cli: &Cli, a: &GenerateArgs) -> ExitCode {
    let settings = GenerationSettings {
        prompt: a.prompt.clone(),
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        repetition_penalty: a.repetition_penalty,
        seed: a.seed,
        stop: a.stop.clone(),
        stop_at_eos: !a.ignore_eos,
    };
    if let Err(issue) = settings.check() {
        let flag = issue.path.first().map(|k| k.replace('_', "-"));
        return invalid(format_args!(
            "--{}: {}",
            flag.unwrap_or_default(),
            issue.message
        ));
    }
    let (dtype, backend) = match (
        parse_enum::<Dtype>("dtype", &a.dtype),
        parse_enum::<TernaryBackendChoice>("backend", &a.backend),
    ) {
        (Ok(d), Ok(b)) => (d, b),
        (Err(e), _) | (_, Err(e)) => return invalid(e),
    };
    let (decode_path, kept_dtype) = match (
        parse_enum::<DecodePathChoice>("decode-path", &a.decode_path),
        parse_enum::<KeptDtypeChoice>("kept-dtype", &a.kept_dtype),
    ) {
        (Ok(d), Ok(k)) => (d, k),
        (Err(e), _) | (_, Err(e)) => return invalid(e),
    };
    if let Err(issue) = check_decode_path(decode_path, backend) {
        return invalid(format_args!("--decode-path: {}", issue.message));
    }
    if a.threads.is_some_and(|t| t < 1) {
        return invalid("--threads must be at least 1");
    }
    let dir = if Path::new(&a.target).is_dir() {
        PathBuf::from(&a.target)
    } else {
        match stage_folder(cli, &a.target) {
            Ok(Some(d)) => d,
            Ok(None) => {
                return invalid(format_args!(
                    "model folder `{}` does not exist; give a folder with {BASELINE_FILE} or {PACKED_FILE}, or RUN/STAGE of a recorded run",
                    a.target
                ))
            }
            Err(e) => return invalid(e),
        }
    };
    if !dir.join(BASELINE_FILE).is_file() && !dir.join(PACKED_FILE).is_file() {
        return invalid(format_args!(
            "{} has neither {BASELINE_FILE} nor {PACKED_FILE}; generate from a stage that writes a model (load_checkpoint, convert_bitnet, attach_thoughts, train) or a model folder",
            dir.display()
        ));
    }
    if let Some(t) = &a.tokenizer {
        if !t.is_file() {
            return invalid(format_args!("--tokenizer {}: no such file", t.display()));
        }
    }
    let request = GenerateRequest {
        dir,
        side: match a.side {
            SideArg::Auto => ModelSide::Auto,
            SideArg::Baseline => ModelSide::Baseline,
            SideArg::Bitnet => ModelSide::Bitnet,
        },
        settings,
        tokenizer: a.tokenizer.clone(),
        dtype,
        backend,
        decode_path,
        kept_dtype,
        threads: a.threads,
        device: Some(a.device.clone()),
        json: a.json,
    };
    let json = match serde_json::to_vec(&request) {
        Ok(j) => j,
        Err(e) => {
            return invalid(format_args!(
                "encoding the request (a bug; please report it): {e}"
            ))
        }
    };
    match crate::stages::exec::call_plugin(GENERATE_SYMBOL, &json) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(2) => ExitCode::from(EXIT_INVALID),
        Ok(_) => ExitCode::from(EXIT_STAGE_FAILED),
        Err(e) => super::report_error(&e, EXIT_STAGE_FAILED),
    }
}
