//! The generated report opens in a real browser (issue #5): headless
//! Chromium takes a screenshot, dumps the DOM, and logs no console errors.
//!
//! Needs Debian's `chromium` (installed by `scripts/setup.sh`, which CI
//! runs). Without it the test fails rather than passing silently: a report
//! nobody can open is the bug this test exists to catch. `BP_CHROMIUM`
//! names another binary.
mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const PIPELINE: &str = r#"version: 1
name: chromium-check
stages:
  "<script>alert(1)</script>":
    uses: command
    with:
      cmd: >-
        echo '{"weight_bytes_baseline": 4000000, "weight_bytes_bitnet": 450000,
        "memory_reduction": 7.5, "loss": [3.0, 2.4, 2.0],
        "latency_ms": [{"value": 2.0, "meta": {"batch": 1, "seq": 16, "side": "baseline"}},
                       {"value": 1.0, "meta": {"batch": 1, "seq": 16, "side": "bitnet"}},
                       {"value": 5.0, "meta": {"batch": 8, "seq": 16, "side": "baseline"}},
                       {"value": 2.0, "meta": {"batch": 8, "seq": 16, "side": "bitnet"}}],
        "speedup": 2.2}' > $BP_OUT/metrics.json
  validate:
    uses: validate
    needs: ["<script>alert(1)</script>"]
    with: { targets: { memory_reduction: ">= 8", speedup: ">= 2" } }
"#;

fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("BP_CHROMIUM") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "BP_CHROMIUM={} is not a file; unset it to use `chromium` from PATH (scripts/setup.sh installs it)",
            p.display()
        );
        return p;
    }
    for name in ["chromium", "chromium-browser"] {
        if let Some(dir) = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .find(|d| d.join(name).is_file())
        {
            return dir.join(name);
        }
    }
    panic!(
        "headless Chromium is required for this test and was not found on PATH; \
         run scripts/setup.sh (it installs Debian's `chromium`; CI runs it), or set BP_CHROMIUM"
    );
}

/// Runs Chromium headless on `page` with `args`; kills it after 120 s.
fn headless(profile: &Path, page: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(format!("file://{}", page.display()))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = cmd.spawn().expect("chromium starts");
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    let watchdog = std::thread::spawn(move || {
        let start = Instant::now();
        while !flag.load(std::sync::atomic::Ordering::SeqCst) {
            if start.elapsed() > Duration::from_secs(120) {
                // SAFETY: signals the chromium process this test started.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let out = child.wait_with_output().expect("chromium runs");
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = watchdog.join();
    assert!(
        out.status.success(),
        "chromium failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Lines of Chromium's log that report page console messages or errors.
fn console_errors(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
        .collect()
}

#[test]
fn report_renders_in_headless_chromium_without_console_errors() {
    chromium(); // fail first, with the set-up hint, when it is missing
    let ws = Workspace::new();
    ws.write("p.yaml", PIPELINE);
    let o = ws.run(&["run", "p.yaml", "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let page = ws.path().join("runs/1/report.html");
    assert!(page.is_file());

    // The console check can fail: a page with a script error is caught.
    let bad = ws.write(
        "bad.html",
        "<html><body><script>undefined_fn()</script></body></html>",
    );
    let bad_png = ws.path().join("bad.png");
    let o = headless(
        &ws.path().join("profile-bad"),
        &bad,
        &[
            "--enable-logging=stderr",
            "--v=0",
            &format!("--screenshot={}", bad_png.display()),
            "--window-size=1280,2000",
        ],
    );
    assert!(
        !console_errors(&String::from_utf8_lossy(&o.stderr)).is_empty(),
        "the console check must see a script error:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Screenshot of the report: exists, is a PNG, and has far more in it
    // than the (blank) page above.
    let png = ws.path().join("report.png");
    let o = headless(
        &ws.path().join("profile"),
        &page,
        &[
            "--enable-logging=stderr",
            "--v=0",
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,2000",
        ],
    );
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(console_errors(&log), Vec::<&str>::new(), "{log}");
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let blank = std::fs::metadata(&bad_png).expect("blank screenshot").len();
    assert!(
        bytes.len() as u64 > 4 * blank,
        "report screenshot ({} bytes) is not much more than a blank page ({blank} bytes)",
        bytes.len()
    );

    // The DOM after parsing: key elements present, the stage name is text.
    let o = headless(&ws.path().join("profile-dom"), &page, &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "id=\"verdict\"",
        "Verdict: FAILED: 1 of 2 targets met",
        "id=\"targets\"",
        "id=\"memory-chart\"",
        "id=\"latency-chart\"",
        "id=\"curve-loss\"",
        "id=\"provenance\"",
        "&lt;script&gt;alert(1)&lt;/script&gt;",
    ] {
        assert!(dom.contains(needle), "{needle} missing from the DOM");
    }
    assert_eq!(
        dom.matches("<svg").count(),
        3,
        "memory, latency, loss charts"
    );
    assert!(!dom.contains("<script"), "no script element in the DOM");
}
