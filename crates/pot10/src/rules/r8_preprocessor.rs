//! R8 - limited use of the preprocessor (and its analogues).
//!
//! Checked exactly (unit: file):
//! - C: token pasting (`##` in a macro body), variadic macros (`...` in
//!   the parameter list), recursive macros (a macro whose body names
//!   itself, directly or through other macros of the same file: cycles in
//!   the macro reference graph), and conditional compilation nested deeper
//!   than `Config::max_conditional_depth` (default 1; the include guard
//!   `#ifndef X / #define X` around a header does not count). One finding
//!   per offending macro or per `#if` that first exceeds the depth.
//! - Python (runtime code generation and loading): calls of `exec`,
//!   `eval`, `compile`, `__import__`, `importlib.import_module`.
//! - Rust: `macro_rules!` whose matcher nests `$( ... )` repetitions
//!   deeper than `Config::max_macro_repetition_depth` (default 1), and
//!   `macro_rules!` that invoke themselves (recursive macros).
//!
//! Approximation: Holzmann also requires that macros expand into complete
//! syntactic units; that is not checked. Stringizing (`#x`) is allowed.
//! Procedural macros and Python decorators/metaclasses are not considered
//! metaprogramming here.

use std::collections::HashMap;

use petgraph::algo::tarjan_scc;
use petgraph::graph::DiGraph;
use tree_sitter::Node;

use super::{finding, walk_file, Ctx, Outcome, Unit};
use crate::config::Language;
use crate::lang::{self, text, Receiver};
use crate::report::Severity;
use crate::source::SourceFile;

pub fn check(ctx: &Ctx<'_>) -> Outcome {
    let mut out = Outcome {
        unit: "file",
        units: ctx.parsed().count(),
        ..Outcome::default()
    };
    for (fi, file) in ctx.parsed() {
        match file.language {
            Language::C => check_c(ctx, fi, file, &mut out),
            Language::Python => check_python(fi, file, &mut out),
            Language::Rust => check_rust(ctx, fi, file, &mut out),
        }
    }
    out
}

fn push(out: &mut Outcome, fi: usize, n: Node<'_>, msg: String) {
    out.findings
        .push(finding(fi, n, Severity::Error, msg, Unit::File));
}

fn check_c(ctx: &Ctx<'_>, fi: usize, file: &SourceFile, out: &mut Outcome) {
    let src = file.text.as_str();
    let max_depth = ctx.config.max_conditional_depth;
    let mut macros: Vec<(String, Node<'_>, String)> = Vec::new();
    walk_file(file, |n| {
        match n.kind() {
            "preproc_def" | "preproc_function_def" => {
                let name = n
                    .child_by_field_name("name")
                    .map_or("", |x| text(x, src))
                    .to_string();
                let body = n
                    .child_by_field_name("value")
                    .map_or("", |x| text(x, src))
                    .to_string();
                if body.contains("##") {
                    push(
                        out,
                        fi,
                        n,
                        format!(
                            "macro `{name}` uses token pasting `##`; write the identifiers out"
                        ),
                    );
                }
                let variadic = n.child_by_field_name("parameters").is_some_and(|p| {
                    let mut c = p.walk();
                    let v = p.children(&mut c).any(|x| x.kind() == "...");
                    v
                });
                if variadic {
                    push(out, fi, n, format!("macro `{name}` is variadic (`...`); use a function with a fixed parameter list"));
                }
                macros.push((name, n, body));
            }
            "preproc_if" | "preproc_ifdef" => {
                let depth = conditional_depth(n, src);
                if depth == max_depth + 1 {
                    push(out, fi, n, format!(
                        "conditional compilation nested {depth} deep (max {max_depth}); flatten the configuration logic"
                    ));
                }
            }
            _ => {}
        }
        true
    });
    // Macro reference graph; cycles are recursive macros.
    let mut graph = DiGraph::<usize, ()>::new();
    let idx: Vec<_> = (0..macros.len()).map(|i| graph.add_node(i)).collect();
    let by_name: HashMap<&str, usize> = macros
        .iter()
        .enumerate()
        .map(|(i, m)| (m.0.as_str(), i))
        .collect();
    for (i, (_, _, body)) in macros.iter().enumerate() {
        for word in body.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
            if let Some(&j) = by_name.get(word) {
                graph.update_edge(idx[i], idx[j], ());
            }
        }
    }
    for scc in tarjan_scc(&graph) {
        if scc.len() > 1 || graph.contains_edge(scc[0], scc[0]) {
            let mut members: Vec<usize> = scc.iter().map(|n| graph[*n]).collect();
            members.sort_unstable();
            let names: Vec<&str> = members.iter().map(|&m| macros[m].0.as_str()).collect();
            push(
                out,
                fi,
                macros[members[0]].1,
                format!(
                    "recursive macro definition ({}); expand it by hand",
                    names.join(", ")
                ),
            );
        }
    }
}

/// Nesting depth of a conditional directive, not counting include guards.
fn conditional_depth(n: Node<'_>, src: &str) -> usize {
    let mut depth = 0;
    let mut cur = Some(n);
    while let Some(x) = cur {
        if matches!(x.kind(), "preproc_if" | "preproc_ifdef") && !is_include_guard(x, src) {
            depth += 1;
        }
        cur = x.parent();
    }
    depth
}

fn is_include_guard(n: Node<'_>, src: &str) -> bool {
    if n.kind() != "preproc_ifdef" || !text(n, src).starts_with("#ifndef") {
        return false;
    }
    let guard = n.child_by_field_name("name").map(|x| text(x, src));
    let first_def = {
        let mut c = n.walk();
        let found = n
            .named_children(&mut c)
            .find(|x| x.kind() != "identifier" && x.kind() != "comment");
        found
    };
    first_def.is_some_and(|d| {
        d.kind() == "preproc_def" && d.child_by_field_name("name").map(|x| text(x, src)) == guard
    }) && n.parent().is_some_and(|p| p.kind() == "translation_unit")
}

fn check_python(fi: usize, file: &SourceFile, out: &mut Outcome) {
    let src = file.text.as_str();
    walk_file(file, |n| {
        if n.kind() == "call" {
            if let Some(t) = lang::call_target(Language::Python, n, src) {
                let dynamic = match (&t.receiver, t.name.as_str()) {
                    (
                        Receiver::None,
                        "exec" | "eval" | "compile" | "__import__" | "import_module",
                    ) => true,
                    (Receiver::Path(q), "import_module" | "__import__") => q == "importlib",
                    _ => false,
                };
                if dynamic {
                    push(
                        out,
                        fi,
                        n,
                        format!(
                            "`{}` runs or loads code chosen at run time; import statically",
                            t.name
                        ),
                    );
                }
            }
        }
        true
    });
}

fn check_rust(ctx: &Ctx<'_>, fi: usize, file: &SourceFile, out: &mut Outcome) {
    let src = file.text.as_str();
    let max = ctx.config.max_macro_repetition_depth;
    walk_file(file, |n| {
        if n.kind() != "macro_definition" {
            return true;
        }
        let name = n
            .child_by_field_name("name")
            .map_or("", |x| text(x, src))
            .to_string();
        let mut deepest = 0;
        let mut recursive = false;
        let mut c = n.walk();
        for rule in n
            .named_children(&mut c)
            .filter(|r| r.kind() == "macro_rule")
        {
            if let Some(left) = rule.child_by_field_name("left") {
                deepest = deepest.max(repetition_depth(left));
            }
            if let Some(right) = rule.child_by_field_name("right") {
                recursive |= invokes(right, &name, src);
            }
        }
        if deepest > max {
            push(out, fi, n, format!(
                "`macro_rules! {name}` nests repetitions {deepest} deep (max {max}); split the macro or use a function"
            ));
        }
        if recursive {
            push(out, fi, n, format!("`macro_rules! {name}` invokes itself (recursive macro); expand it without recursion"));
        }
        false
    });
}

fn repetition_depth(n: Node<'_>) -> usize {
    let mut c = n.walk();
    let inner = n
        .named_children(&mut c)
        .map(repetition_depth)
        .max()
        .unwrap_or(0);
    inner + usize::from(n.kind() == "token_repetition_pattern")
}

/// Whether a macro body contains `name!`.
fn invokes(body: Node<'_>, name: &str, src: &str) -> bool {
    let mut found = false;
    lang::walk(body, |x| {
        if x.kind() == "identifier" && text(x, src) == name {
            found |= x.next_sibling().is_some_and(|s| s.kind() == "!");
        }
        if x.kind() == "macro_invocation" && lang::macro_name(x, src) == name {
            found = true;
        }
        !found
    });
    found
}
