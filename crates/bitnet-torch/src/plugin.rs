//! The C entry point the `bitnet-pipeline` binary calls after dlopen-ing
//! this crate's cdylib in an `exec-stage` child (see
//! `bitnet_pipeline::stages::exec`). The boundary is a JSON invocation in,
//! an exit code out; events go to stdout exactly as native stages send
//! them. Panics and errors are caught here so nothing unwinds across FFI.
use bitnet_pipeline::engine::protocol::Invocation;
use bitnet_pipeline::stages::StageContext;

/// Runs one torch stage. Returns 0 on success, 1 on failure (the reason is
/// sent as an error event), 2 when the invocation itself is unreadable.
///
/// # Safety
/// `ptr` must point to `len` readable bytes for the duration of the call.
#[no_mangle]
pub unsafe extern "C" fn bitnet_torch_run_stage(ptr: *const u8, len: usize) -> i32 {
    if ptr.is_null() {
        eprintln!("error: bitnet_torch_run_stage called with a null invocation");
        return 2;
    }
    // SAFETY: guaranteed by the caller (see the function's contract).
    let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
    let invocation: Invocation = match serde_json::from_slice(bytes) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: invalid stage invocation: {e}");
            return 2;
        }
    };
    let mut ctx = StageContext::new(invocation);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::stages::run(&mut ctx)
    }));
    match result {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            ctx.error(format!("{e:#}"));
            1
        }
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            ctx.error(format!(
                "internal error (a bug; please report it): stage panicked: {msg}"
            ));
            1
        }
    }
}

/// Runs the `generate` command: a JSON `GenerateRequest` in, text on
/// stdout, figures and errors on stderr. Returns 0 when done, 2 when the
/// input was refused (or the request is unreadable), 1 when generation
/// failed.
///
/// # Safety
/// `ptr` must point to `len` readable bytes for the duration of the call.
#[no_mangle]
pub unsafe extern "C" fn bitnet_torch_generate(ptr: *const u8, len: usize) -> i32 {
    if ptr.is_null() {
        eprintln!("error: bitnet_torch_generate called with a null request");
        return 2;
    }
    // SAFETY: guaranteed by the caller (see the function's contract).
    let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
    let request: bitnet_pipeline::stages::generate::GenerateRequest =
        match serde_json::from_slice(bytes) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: invalid generate request (plugin older than the binary?): {e}");
                return 2;
            }
        };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::stages::generate::run_command(&request)
    }));
    match result {
        Ok(code) => code,
        Err(_) => {
            eprintln!("error: internal error (a bug; please report it): generate panicked");
            1
        }
    }
}
