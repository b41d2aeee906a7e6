//! Runtime choice of the SIMD path.
//!
//! The binary is built for baseline x86-64 so it runs anywhere; the fast
//! paths are compiled with `#[target_feature]` and chosen here from
//! `is_x86_feature_detected!`. `BITNET_KERNEL=scalar|avx2|avx512vnni` forces
//! a path (tests, benchmarks, bug reports); forcing a path the CPU lacks is
//! an error rather than a silent fallback, so a benchmark never reports a
//! path it did not run.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use super::KernelError;

/// Environment variable that overrides the automatic kernel choice.
pub const KERNEL_ENV_VAR: &str = "BITNET_KERNEL";

/// One implementation of the packed ternary inner loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelPath {
    /// Portable Rust, the reference all other paths must equal exactly.
    Scalar,
    /// 256-bit `vpmaddubsw` / `vpmaddwd` (Haswell and later, Zen).
    Avx2,
    /// 512-bit `vpdpbusd` (Ice Lake and later, Zen 4).
    Avx512Vnni,
}

impl KernelPath {
    /// All paths, fastest last.
    pub const ALL: [KernelPath; 3] = [KernelPath::Scalar, KernelPath::Avx2, KernelPath::Avx512Vnni];

    /// The name used in `BITNET_KERNEL` and in benchmark tables.
    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Scalar => "scalar",
            KernelPath::Avx2 => "avx2",
            KernelPath::Avx512Vnni => "avx512vnni",
        }
    }

    fn required_features(self) -> &'static str {
        match self {
            KernelPath::Scalar => "none",
            KernelPath::Avx2 => "avx2",
            KernelPath::Avx512Vnni => "avx512f, avx512bw, avx512vnni",
        }
    }

    /// Whether this CPU can run the path.
    pub fn is_supported(self) -> bool {
        match self {
            KernelPath::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx2 => std::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx512Vnni => {
                std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Errors unless the CPU can run the path.
    pub fn ensure_supported(self) -> Result<Self, KernelError> {
        if self.is_supported() {
            Ok(self)
        } else {
            Err(KernelError::Unsupported {
                path: self.name(),
                needs: self.required_features(),
            })
        }
    }

    /// Parses a `BITNET_KERNEL` value.
    pub fn parse(value: &str) -> Result<Self, KernelError> {
        KernelPath::ALL
            .into_iter()
            .find(|path| path.name() == value.trim())
            .ok_or_else(|| KernelError::UnknownKernel {
                var: KERNEL_ENV_VAR,
                value: value.to_string(),
            })
    }

    /// The fastest path this CPU supports.
    pub fn detect() -> Self {
        // `ALL` is ordered slowest first and its first path runs everywhere.
        debug_assert!(KernelPath::ALL[0].is_supported());
        let path = KernelPath::ALL
            .into_iter()
            .rev()
            .find(|path| path.is_supported())
            .unwrap_or(KernelPath::Scalar);
        debug_assert!(path.is_supported());
        path
    }

    /// The path `matmul` uses: `BITNET_KERNEL` if set (validated), else
    /// [`KernelPath::detect`]. Read once per process.
    pub fn selected() -> Result<Self, KernelError> {
        static SELECTED: OnceLock<Result<KernelPath, (String, bool)>> = OnceLock::new();
        let cached = SELECTED.get_or_init(|| match std::env::var(KERNEL_ENV_VAR) {
            Ok(value) if !value.trim().is_empty() => match KernelPath::parse(&value) {
                Ok(path) if path.is_supported() => Ok(path),
                Ok(path) => Err((path.name().to_string(), true)),
                Err(_) => Err((value, false)),
            },
            _ => Ok(KernelPath::detect()),
        });
        match cached {
            Ok(path) => Ok(*path),
            Err((value, true)) => KernelPath::parse(value)?.ensure_supported(),
            Err((value, false)) => Err(KernelError::UnknownKernel {
                var: KERNEL_ENV_VAR,
                value: value.clone(),
            }),
        }
    }
}

impl fmt::Display for KernelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Threads the kernels use; 0 means one per available core.
static NUM_THREADS: AtomicUsize = AtomicUsize::new(0);

/// Sets how many threads a matmul uses (the caller included); 0 restores the
/// default of one per available core. Callers that share the machine with
/// another thread pool (libtorch's intra-op pool) pass that pool's size, so
/// both sides of a comparison use the same cores.
pub fn set_num_threads(threads: usize) {
    NUM_THREADS.store(threads, Ordering::Relaxed);
}

/// The thread count a matmul uses now (at least 1).
pub fn num_threads() -> usize {
    match NUM_THREADS.load(Ordering::Relaxed) {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_fail() {
        for path in KernelPath::ALL {
            assert_eq!(KernelPath::parse(path.name()).unwrap(), path);
        }
        let err = KernelPath::parse("avx1024").unwrap_err();
        assert!(
            err.to_string().contains("scalar, avx2, avx512vnni"),
            "{err}"
        );
    }

    #[test]
    fn detected_path_is_supported() {
        assert!(KernelPath::detect().is_supported());
        assert!(KernelPath::Scalar.is_supported());
    }
}
