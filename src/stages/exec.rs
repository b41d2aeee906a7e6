//! The child side of a stage: `bitnet-pipeline exec-stage INVOCATION`.
//!
//! Native kinds run right here. Kinds that need libtorch run in the
//! `bitnet-torch` plugin (`libbitnet_torch.so`, built next to this binary),
//! loaded with dlopen only in this child, so a pipeline of light stages
//! never pays libtorch's start-up.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};

use super::{registry, Backend, StageContext};
use crate::engine::protocol::Invocation;

/// The symbol the plugin exports:
/// `extern "C" fn(invocation_json: *const u8, len: usize) -> i32`
/// (0 = success; the plugin reports errors as events itself).
pub const PLUGIN_SYMBOL: &[u8] = b"bitnet_torch_run_stage\0";
pub const PLUGIN_FILE: &str = "libbitnet_torch.so";
pub type PluginEntry = unsafe extern "C" fn(*const u8, usize) -> i32;

/// Where the libtorch plugin is: `$BITNET_TORCH_PLUGIN`, else next to the
/// running binary.
pub fn plugin_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("BITNET_TORCH_PLUGIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("cannot locate the running binary")?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    for candidate in [dir.join(PLUGIN_FILE), dir.join("..").join(PLUGIN_FILE)] {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    Err(anyhow!(
        "the libtorch plugin `{PLUGIN_FILE}` is not next to {}; build it with `cargo build --workspace` (or set BITNET_TORCH_PLUGIN)",
        exe.display()
    ))
}

fn run_in_plugin(invocation_json: &[u8]) -> Result<i32> {
    call_plugin(PLUGIN_SYMBOL, invocation_json)
}

/// Loads the libtorch plugin and calls its entry point `symbol` (a
/// [`PluginEntry`]) with `json`; returns what it returns.
pub fn call_plugin(symbol: &[u8], json: &[u8]) -> Result<i32> {
    let path = plugin_path()?;
    // SAFETY: loading our own plugin, built from this workspace; its
    // initialisers are libtorch's and Rust's.
    let lib = unsafe { libloading::Library::new(&path) }
        .with_context(|| format!("cannot load the libtorch plugin {}", path.display()))?;
    // SAFETY: every entry point the plugin exports has the `PluginEntry`
    // signature by contract (crates/bitnet-torch/src/plugin.rs).
    let entry: libloading::Symbol<PluginEntry> = unsafe { lib.get(symbol) }.with_context(|| {
        format!(
            "{} has no entry point `{}`; rebuild it with `cargo build --workspace`",
            path.display(),
            String::from_utf8_lossy(symbol.strip_suffix(b"\0").unwrap_or(symbol))
        )
    })?;
    // SAFETY: pointer and length describe a live byte slice for the call.
    let code = unsafe { entry(json.as_ptr(), json.len()) };
    // The process exits right after; unloading libtorch is never worth it.
    std::mem::forget(lib);
    Ok(code)
}

/// Runs one stage from its invocation file; the exit code tells the runner
/// whether it succeeded.
pub fn exec_stage(invocation_path: &Path) -> ExitCode {
    let bytes = match std::fs::read(invocation_path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!(
                "error: cannot read stage invocation {}: {e}",
                invocation_path.display()
            );
            return ExitCode::from(2);
        }
    };
    let invocation: Invocation = match serde_json::from_slice(&bytes) {
        Ok(i) => i,
        Err(e) => {
            eprintln!(
                "error: invalid stage invocation {}: {e}",
                invocation_path.display()
            );
            return ExitCode::from(2);
        }
    };
    let reg = registry();
    let Some(kind) = reg.get(&invocation.kind) else {
        let mut ctx = StageContext::new(invocation.clone());
        ctx.error(format!(
            "unknown stage kind `{}` (this binary is older than the pipeline?)",
            invocation.kind
        ));
        return ExitCode::FAILURE;
    };
    match kind.backend() {
        Backend::Native => {
            let mut ctx = StageContext::new(invocation);
            match kind.run(&mut ctx) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    ctx.error(format!("{e:#}"));
                    ExitCode::FAILURE
                }
            }
        }
        Backend::Torch => match run_in_plugin(&bytes) {
            Ok(0) => ExitCode::SUCCESS,
            Ok(_) => ExitCode::FAILURE,
            Err(e) => {
                StageContext::new(invocation).error(format!("{e:#}"));
                ExitCode::FAILURE
            }
        },
    }
}
