//! Build facts recorded with every run: the libtorch version this build is
//! paired with (the runner itself never links libtorch; its plugin does) and
//! the commit the binary was built from.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    let version = torch_version().unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BITNET_TORCH_VERSION={version}");
}

/// From the PyTorch wheel's `version.py` or a libtorch zip's `build-version`.
fn torch_version() -> Option<String> {
    let root = PathBuf::from(std::env::var_os("LIBTORCH")?);
    if let Ok(text) = std::fs::read_to_string(root.join("version.py")) {
        println!(
            "cargo:rerun-if-changed={}",
            root.join("version.py").display()
        );
        return text
            .lines()
            .find_map(|l| l.strip_prefix("__version__ = "))
            .map(|v| v.trim().trim_matches('\'').trim_matches('"').to_string());
    }
    std::fs::read_to_string(root.join("build-version"))
        .ok()
        .map(|s| s.trim().to_string())
}
