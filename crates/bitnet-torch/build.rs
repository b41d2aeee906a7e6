//! Link-time set-up for libtorch.
//!
//! torch-sys links libtorch itself; two things it leaves to us:
//! - the linker drops `libtorch_cuda.so` (nothing references it by symbol),
//!   and then CUDA is silently unavailable at run time, so we force it in with
//!   `--no-as-needed` when the CUDA libraries exist;
//! - an rpath to the torch lib folder, so the built binary runs without
//!   `LD_LIBRARY_PATH` (which still overrides it, as on the GPU machine).
use std::path::PathBuf;

fn main() {
    // The rpath and forced CUDA link apply to every target of this crate
    // (cdylib plugin, tests, benches).
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo::rustc-check-cfg=cfg(bitnet_cuda_shim)");
    let Some(lib_dir) = torch_lib_dir() else {
        println!(
            "cargo:warning=LIBTORCH is not set; run scripts/bootstrap-libtorch.sh (or `make setup`)"
        );
        return;
    };
    let has = |name: &str| lib_dir.join(name).exists();
    if has("libtorch_cuda.so") && has("libc10_cuda.so") {
        println!(
            "cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed,-ltorch_cuda,-lc10_cuda,--pop-state"
        );
    }
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    println!("cargo:rustc-env=BITNET_TORCH_LIB_DIR={}", lib_dir.display());
    emit_git_commit();
    build_cuda_memory_shim();
}

/// Compiles `csrc/cuda_memory.cpp` (CUDA caching-allocator statistics, see
/// src/cuda_memory.rs) against the libtorch headers. It needs no CUDA
/// headers, so it builds on CPU-only machines too; at run time it reports
/// "no CUDA allocator" there.
fn build_cuda_memory_shim() {
    println!("cargo:rerun-if-changed=csrc/cuda_memory.cpp");
    println!("cargo:rerun-if-changed=csrc/autocast.cpp");
    let Some(root) = std::env::var_os("LIBTORCH").map(PathBuf::from) else {
        return;
    };
    let include = root.join("include");
    if !include.join("c10/core/CachingDeviceAllocator.h").exists() {
        println!(
            "cargo:warning=libtorch headers lack c10/core/CachingDeviceAllocator.h; CUDA peak memory will be unavailable"
        );
        return;
    }
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    cc::Build::new()
        .cpp(true)
        .file("csrc/cuda_memory.cpp")
        .file("csrc/autocast.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .compile("bitnet_cuda_memory");
    // The shim calls into libc10 (already linked by torch-sys).
    println!("cargo:rustc-link-lib=dylib=c10");
    println!("cargo:rustc-cfg=bitnet_cuda_shim");
}

/// The `lib/` folder of the libtorch we build against.
fn torch_lib_dir() -> Option<PathBuf> {
    let root = PathBuf::from(std::env::var_os("LIBTORCH")?);
    let root = root.canonicalize().unwrap_or(root);
    Some(root.join("lib"))
}

/// The commit the binary was built from, recorded with every run as part of
/// the code version (the working tree's own commit is recorded separately).
fn emit_git_commit() {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=BITNET_BUILD_COMMIT={commit}");
}
