//! R10 - zero warnings from the compiler and static analyzers.
//!
//! Checked exactly (unit: file):
//! - Code that tree-sitter cannot parse is not an R10 finding: it is an
//!   unparsed region of its own kind, outside the score (see `coverage`).
//! - C: `cc -Wall -Wextra -pedantic -fsyntax-only` over all `.c` files in
//!   one invocation (`Config::c_compiler`). Each `warning:`, `error:` and
//!   `fatal error:` line (a missing `#include` is one) is a finding at its
//!   file:line:col. A compiler that fails without a single diagnostic we
//!   can place is reported as FAILED, never as clean. Headers are compiled through the
//!   `.c` files that include them (compiling a header alone gives spurious
//!   warnings such as `#pragma once in main file`).
//! - Python: the same compilation `python3 -m py_compile` performs
//!   (`compile(source, path, "exec")`), run in one interpreter for all
//!   files with every warning enabled, without writing `__pycache__`.
//!   Syntax errors and warnings (`SyntaxWarning`, `DeprecationWarning`)
//!   are findings.
//! - Rust: `cargo clippy --message-format=json` once per cargo package
//!   containing analyzed files, when `Config::run_clippy` is set (it builds
//!   the package, so it is slow). Primary spans of warnings and errors in
//!   analyzed files are findings.
//!
//! A tool that cannot be started is reported as `tool unavailable` and its
//! files are *not* counted as units (so never as passes); the same holds
//! when external tools or clippy are switched off. If no file could be
//! checked the rule is reported as not evaluated.
//!
//! Approximation: Holzmann also asks for daily runs of several static
//! analyzers; we run the compiler (and clippy for Rust) only. For Rust,
//! all analyzed files inside the package count as checked, even ones
//! clippy does not compile (such as test fixtures).

use std::collections::{BTreeMap, HashMap};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Ctx, Outcome, RawFinding, Unit};
use crate::config::Language;
use crate::report::{Severity, ToolRun, ToolStatus};

const PY_CHECK: &str = r#"
import sys, warnings
def clean(s):
    return str(s).replace("\n", " ").replace("\x1f", " ")
for p in sys.argv[1:]:
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        try:
            with open(p, "rb") as fh:
                src = fh.read()
            compile(src, p, "exec", dont_inherit=True)
        except SyntaxError as e:
            print("E\x1f%s\x1f%d\x1f%d\x1f%s: %s" % (p, e.lineno or 1, e.offset or 1, type(e).__name__, clean(e.msg)))
        except (ValueError, OSError) as e:
            print("E\x1f%s\x1f1\x1f1\x1f%s" % (p, clean(e)))
    for w in ws:
        print("W\x1f%s\x1f%d\x1f1\x1f%s: %s" % (p, w.lineno or 1, w.category.__name__, clean(w.message)))
"#;

pub fn check(ctx: &Ctx<'_>) -> Outcome {
    let mut out = Outcome {
        unit: "file",
        ..Outcome::default()
    };
    let parsed: Vec<(usize, Language)> = ctx.parsed().map(|(i, f)| (i, f.language)).collect();
    let of = |lang: Language| {
        parsed
            .iter()
            .filter(|(_, l)| *l == lang)
            .map(|(i, _)| *i)
            .collect::<Vec<_>>()
    };
    let tools_enabled = ctx.config.run_external_tools;
    for lang in Language::ALL {
        let files = of(lang);
        if files.is_empty() {
            continue;
        }
        let run = if !tools_enabled {
            ToolRun {
                language: lang,
                tool: tool_name(ctx, lang),
                status: ToolStatus::Skipped,
                files: files.len(),
                detail: "external tools disabled".to_string(),
            }
        } else {
            match lang {
                Language::C => run_cc(ctx, &files, &mut out),
                Language::Python => run_python(ctx, &files, &mut out),
                Language::Rust => run_clippy(ctx, &files, &mut out),
            }
        };
        if run.status != ToolStatus::Ran {
            out.notes.push(format!(
                "{} ({}) {}: {} {} file(s) not checked{}",
                run.tool,
                lang,
                match run.status {
                    ToolStatus::Unavailable => "TOOL UNAVAILABLE",
                    ToolStatus::Skipped => "skipped",
                    _ => "FAILED",
                },
                run.files,
                lang,
                if run.detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", run.detail)
                }
            ));
        }
        out.tools.push(run);
    }
    out.tool_unavailable = out.units == 0 && out.tools.iter().any(|t| t.status != ToolStatus::Ran);
    out
}

fn tool_name(ctx: &Ctx<'_>, lang: Language) -> String {
    match lang {
        Language::C => format!(
            "{} -Wall -Wextra -pedantic -fsyntax-only",
            ctx.config.c_compiler
        ),
        Language::Python => format!("{} compile()", ctx.config.python),
        Language::Rust => "cargo clippy".to_string(),
    }
}

fn spawn_failure(tool: String, lang: Language, files: usize, e: &std::io::Error) -> ToolRun {
    let status = if e.kind() == ErrorKind::NotFound {
        ToolStatus::Unavailable
    } else {
        ToolStatus::Failed
    };
    ToolRun {
        language: lang,
        tool,
        status,
        files,
        detail: e.to_string(),
    }
}

/// Map from the path string a tool prints to the file index.
fn path_index(ctx: &Ctx<'_>, files: &[usize]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for &i in files {
        let f = &ctx.files[i];
        m.insert(f.path.display().to_string(), i);
        if let Ok(c) = f.path.canonicalize() {
            m.insert(c.display().to_string(), i);
        }
    }
    m
}

fn push_tool_finding(
    out: &mut Outcome,
    file: usize,
    line: usize,
    col: usize,
    severity: Severity,
    message: String,
) {
    out.findings.push(RawFinding {
        file,
        row: line.saturating_sub(1),
        col: col.saturating_sub(1),
        byte: usize::MAX,
        severity,
        message,
        unit: Unit::File,
    });
}

fn run_cc(ctx: &Ctx<'_>, files: &[usize], out: &mut Outcome) -> ToolRun {
    let tool = tool_name(ctx, Language::C);
    let sources: Vec<&PathBuf> = files
        .iter()
        .map(|&i| &ctx.files[i].path)
        .filter(|p| p.extension().is_some_and(|e| e == "c"))
        .collect();
    if sources.is_empty() {
        return ToolRun {
            language: Language::C,
            tool,
            status: ToolStatus::Skipped,
            files: files.len(),
            detail: "only headers; they are compiled through .c files".to_string(),
        };
    }
    let result = Command::new(&ctx.config.c_compiler)
        .args([
            "-Wall",
            "-Wextra",
            "-pedantic",
            "-fsyntax-only",
            "-fno-diagnostics-color",
        ])
        .args(&sources)
        .env("LC_ALL", "C")
        .output();
    let output = match result {
        Ok(o) => o,
        Err(e) => return spawn_failure(tool, Language::C, files.len(), &e),
    };
    let index = path_index(ctx, files);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let before = out.findings.len();
    for line in stderr.lines() {
        let (sev, split) = if let Some(p) = line.find(": warning: ") {
            (Severity::Warning, (p, ": warning: ".len(), "warning"))
        } else if let Some(p) = line.find(": fatal error: ") {
            (Severity::Error, (p, ": fatal error: ".len(), "fatal error"))
        } else if let Some(p) = line.find(": error: ") {
            (Severity::Error, (p, ": error: ".len(), "error"))
        } else {
            continue;
        };
        let (pos, skip, kind) = split;
        let mut loc = line[..pos].rsplitn(3, ':');
        let col = loc
            .next()
            .and_then(|c| c.parse::<usize>().ok())
            .unwrap_or(1);
        let ln = loc
            .next()
            .and_then(|c| c.parse::<usize>().ok())
            .unwrap_or(1);
        let Some(path) = loc.next() else { continue };
        let Some(&fi) = index.get(path).or_else(|| {
            Path::new(path)
                .canonicalize()
                .ok()
                .and_then(|c| index.get(&c.display().to_string()))
        }) else {
            continue;
        };
        push_tool_finding(
            out,
            fi,
            ln,
            col,
            sev,
            format!("{} {kind}: {}", ctx.config.c_compiler, &line[pos + skip..]),
        );
    }
    if !output.status.success() && out.findings.len() == before {
        return ToolRun {
            language: Language::C,
            tool,
            status: ToolStatus::Failed,
            files: files.len(),
            detail: stderr
                .lines()
                .last()
                .unwrap_or("the compiler failed without a message")
                .to_string(),
        };
    }
    out.units += files.len();
    ToolRun {
        language: Language::C,
        tool,
        status: ToolStatus::Ran,
        files: files.len(),
        detail: String::new(),
    }
}

fn run_python(ctx: &Ctx<'_>, files: &[usize], out: &mut Outcome) -> ToolRun {
    let tool = tool_name(ctx, Language::Python);
    let paths: Vec<&PathBuf> = files.iter().map(|&i| &ctx.files[i].path).collect();
    let result = Command::new(&ctx.config.python)
        .args(["-X", "utf8", "-c", PY_CHECK])
        .args(&paths)
        .output();
    let output = match result {
        Ok(o) => o,
        Err(e) => return spawn_failure(tool, Language::Python, files.len(), &e),
    };
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        return ToolRun {
            language: Language::Python,
            tool,
            status: ToolStatus::Failed,
            files: files.len(),
            detail: err.lines().last().unwrap_or("").to_string(),
        };
    }
    let index = path_index(ctx, files);
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let parts: Vec<&str> = line.splitn(5, '\x1f').collect();
        let [kind, path, ln, col, msg] = parts.as_slice() else {
            continue;
        };
        let Some(&fi) = index.get(*path) else {
            continue;
        };
        let what = if *kind == "E" { "error" } else { "warning" };
        push_tool_finding(
            out,
            fi,
            ln.parse().unwrap_or(1),
            col.parse().unwrap_or(1),
            if *kind == "E" {
                Severity::Error
            } else {
                Severity::Warning
            },
            format!("python compile {what}: {msg}"),
        );
    }
    out.units += files.len();
    ToolRun {
        language: Language::Python,
        tool,
        status: ToolStatus::Ran,
        files: files.len(),
        detail: String::new(),
    }
}

/// `name` from the `[package]` table of a manifest (line-based: enough for
/// the `name = "..."` form cargo itself writes), `None` for a virtual
/// workspace manifest.
fn package_name(manifest: &Path) -> Option<String> {
    let text = std::fs::read_to_string(manifest).ok()?;
    let mut in_package = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
            continue;
        }
        if let Some(rest) = line.strip_prefix("name").map(str::trim_start) {
            if in_package && rest.starts_with('=') {
                return Some(rest[1..].trim().trim_matches('"').to_string());
            }
        }
    }
    None
}

/// Nearest directory at or above `path` holding a `Cargo.toml`.
fn cargo_root(path: &Path) -> Option<PathBuf> {
    let abs = path.canonicalize().ok()?;
    abs.ancestors()
        .skip(1)
        .find(|d| d.join("Cargo.toml").is_file())
        .map(Path::to_path_buf)
}

fn run_clippy(ctx: &Ctx<'_>, files: &[usize], out: &mut Outcome) -> ToolRun {
    let tool = tool_name(ctx, Language::Rust);
    if !ctx.config.run_clippy {
        return ToolRun {
            language: Language::Rust,
            tool,
            status: ToolStatus::Skipped,
            files: files.len(),
            detail: "clippy disabled (slow: it builds the package)".to_string(),
        };
    }
    let mut packages: BTreeMap<PathBuf, Vec<usize>> = BTreeMap::new();
    let mut outside = 0;
    for &i in files {
        match cargo_root(&ctx.files[i].path) {
            Some(root) => packages.entry(root).or_default().push(i),
            None => outside += 1,
        }
    }
    if packages.is_empty() {
        return ToolRun {
            language: Language::Rust,
            tool,
            status: ToolStatus::Skipped,
            files: files.len(),
            detail: "no file is inside a cargo package".to_string(),
        };
    }
    let mut failures = Vec::new();
    let mut checked = 0;
    for (root, members) in &packages {
        let manifest = root.join("Cargo.toml");
        let mut cmd = Command::new("cargo");
        cmd.args([
            "clippy",
            "--quiet",
            "--message-format=json",
            "--manifest-path",
        ])
        .arg(&manifest);
        // A workspace root that is also a package would otherwise check all
        // default members; only this package holds the analyzed files.
        if let Some(name) = package_name(&manifest) {
            cmd.args(["-p", &name]);
        }
        let result = cmd.output();
        let output = match result {
            Ok(o) => o,
            Err(e) => return spawn_failure(tool, Language::Rust, files.len(), &e),
        };
        let index = path_index(ctx, members);
        let mut messages = 0;
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["reason"] != "compiler-message" {
                continue;
            }
            let msg = &v["message"];
            let level = msg["level"].as_str().unwrap_or("");
            if level != "warning" && level != "error" {
                continue;
            }
            messages += 1;
            let Some(spans) = msg["spans"].as_array() else {
                continue;
            };
            let Some(span) = spans.iter().find(|s| s["is_primary"] == true) else {
                continue;
            };
            let rel = span["file_name"].as_str().unwrap_or("");
            let fi = root
                .ancestors()
                .filter_map(|d| d.join(rel).canonicalize().ok())
                .find_map(|p| index.get(&p.display().to_string()).copied());
            let Some(fi) = fi else { continue };
            let code = msg["code"]["code"]
                .as_str()
                .map(|c| format!(" [{c}]"))
                .unwrap_or_default();
            push_tool_finding(
                out,
                fi,
                span["line_start"].as_u64().unwrap_or(1) as usize,
                span["column_start"].as_u64().unwrap_or(1) as usize,
                if level == "error" {
                    Severity::Error
                } else {
                    Severity::Warning
                },
                format!(
                    "clippy {level}: {}{code}",
                    msg["message"].as_str().unwrap_or("")
                ),
            );
        }
        if !output.status.success() && messages == 0 {
            let err = String::from_utf8_lossy(&output.stderr);
            failures.push(format!(
                "{}: {}",
                root.display(),
                err.lines().last().unwrap_or("cargo failed")
            ));
            continue;
        }
        checked += members.len();
    }
    out.units += checked;
    let mut detail = failures.join("; ");
    if outside > 0 {
        if !detail.is_empty() {
            detail.push_str("; ");
        }
        detail.push_str(&format!(
            "{outside} file(s) outside any cargo package not checked"
        ));
    }
    let status = if checked == 0 {
        ToolStatus::Failed
    } else {
        ToolStatus::Ran
    };
    ToolRun {
        language: Language::Rust,
        tool,
        status,
        files: checked,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_name_reads_the_package_table_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = dir.path().join("Cargo.toml");
        std::fs::write(&m, "[workspace]\nmembers = [\"a\"]\n\n[package]\nname = \"root-pkg\"\nversion = \"0.1.0\"\n[dependencies]\nname = \"x\"\n").expect("write");
        assert_eq!(package_name(&m).as_deref(), Some("root-pkg"));
        std::fs::write(&m, "[workspace]\nmembers = [\"a\"]\n").expect("write");
        assert_eq!(package_name(&m), None);
    }
}
