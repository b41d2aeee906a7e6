//! Runs a parser property: bounded and deterministic in `cargo test`, timed and
//! random in the soak.
//!
//! In `cargo test` each property runs its own fixed number of cases from a fixed
//! seed, so CI is reproducible and all properties together stay well under the 60 s
//! budget of issue #16. With `HOSTILE_SOAK_SECS=N` in the environment the same
//! property runs batches with fresh random seeds until N seconds have passed and
//! prints one `soak:` line (cases, cases/s, failures, slowest case), which
//! `scripts/soak-parsers.sh` collects. `HOSTILE_CASES=N` overrides the case count
//! of a bounded run (to reproduce a CI run with more cases).
//!
//! Each case runs under `catch_unwind`: a panic is a failure of the property, and
//! proptest shrinks it to a small input to put in the regression corpus.

use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

/// Cases of one soak batch (a fresh random seed per batch).
const SOAK_BATCH: u32 = 64;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        // No files written next to the sources; regressions are kept by hand in
        // `regressions.rs`, where a failing input gets a name and an issue link.
        failure_persistence: None,
        max_shrink_iters: 512,
        ..Config::default()
    }
}

/// The text of a caught panic.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".into())
}

/// Runs `property` once under `catch_unwind`; `Err` says why the property failed.
pub(crate) fn guarded<T>(
    input: T,
    property: &impl Fn(T) -> Result<(), String>,
) -> Result<(), String> {
    match catch_unwind(AssertUnwindSafe(|| property(input))) {
        Ok(r) => r,
        Err(p) => Err(format!("panicked: {}", panic_text(&*p))),
    }
}

/// Checks `property` on inputs from `strategy` (see the module docs for the modes).
pub(crate) fn check<S>(
    name: &str,
    default_cases: u32,
    strategy: S,
    property: impl Fn(S::Value) -> Result<(), String>,
) where
    S: Strategy,
    S::Value: Debug,
{
    let slowest_us = AtomicU64::new(0);
    let cases_run = AtomicU64::new(0);
    let case = |v: S::Value| -> Result<(), TestCaseError> {
        let t0 = Instant::now();
        let r = guarded(v, &property);
        slowest_us.fetch_max(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
        cases_run.fetch_add(1, Ordering::Relaxed);
        r.map_err(TestCaseError::fail)
    };
    match env_u64("HOSTILE_SOAK_SECS") {
        None => {
            let cases = env_u64("HOSTILE_CASES").map_or(default_cases, |c| c as u32);
            let mut runner = TestRunner::new_with_rng(
                config(cases),
                TestRng::deterministic_rng(RngAlgorithm::ChaCha),
            );
            if let Err(e) = runner.run(&strategy, case) {
                panic!("property `{name}` failed: {e}");
            }
        }
        Some(secs) => {
            let deadline = Instant::now() + Duration::from_secs(secs);
            let t0 = Instant::now();
            let mut failures = Vec::new();
            while Instant::now() < deadline {
                let mut runner = TestRunner::new(config(SOAK_BATCH));
                if let Err(e) = runner.run(&strategy, case) {
                    eprintln!("soak: `{name}` FAILED: {e}");
                    failures.push(e.to_string());
                }
            }
            let elapsed = t0.elapsed().as_secs_f64();
            let n = cases_run.load(Ordering::Relaxed);
            // The runner counts shrinking steps as cases too; with no failures
            // (the expected outcome) every case is a generated input.
            println!(
                "soak: {name} cases={n} secs={elapsed:.1} cases_per_s={:.1} failures={} slowest_case_ms={:.1}",
                n as f64 / elapsed,
                failures.len(),
                slowest_us.load(Ordering::Relaxed) as f64 / 1000.0
            );
            assert!(
                failures.is_empty(),
                "soak of `{name}` found {} failure(s)",
                failures.len()
            );
        }
    }
}

/// The property shared by the file parsers: `Ok`, or an error whose text names the
/// file (`needle` is its file name).
pub(crate) fn ok_or_names_file<T, E: std::fmt::Display>(
    r: Result<T, E>,
    needle: &str,
) -> Result<(), String> {
    match r {
        Ok(_) => Ok(()),
        Err(e) => {
            let text = e.to_string();
            if text.contains(needle) {
                Ok(())
            } else {
                Err(format!("error does not name the file `{needle}`: {text}"))
            }
        }
    }
}
