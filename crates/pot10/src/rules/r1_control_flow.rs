//! R1 - simple control flow.
//!
//! Checked exactly:
//! - C: every `goto` statement; every call to `setjmp`, `_setjmp`,
//!   `sigsetjmp`, `longjmp`, `_longjmp`, `siglongjmp`.
//! - All languages: direct and indirect recursion, as cycles (Tarjan
//!   strongly connected components, plus self-loops) in the call graph of
//!   all analyzed files of one language. One finding per cycle, at the
//!   first function of the cycle in file/line order; the message prints the
//!   cycle as a chain `a -> b -> a`.
//!
//! Approximation: the call graph is built by syntactic name resolution
//! (see `callgraph`); calls through function pointers, trait objects,
//! closures, arbitrary receivers (`x.f()`) or inside macro arguments are
//! not followed, so recursion through them is missed. Python and Rust have
//! no `goto`; Python's `try/except` and Rust's `?` are structured and not
//! treated as jumps. Unit: function.

use std::collections::{HashMap, VecDeque};

use petgraph::algo::tarjan_scc;
use petgraph::graph::NodeIndex;

use super::callgraph::{CallGraph, FnRef, Resolver};
use super::{finding, scope_unit, walk_file, Ctx, Outcome, RawFinding, Unit};
use crate::config::Language;
use crate::lang;
use crate::report::Severity;

const JUMP_CALLS: &[&str] = &[
    "setjmp",
    "_setjmp",
    "sigsetjmp",
    "longjmp",
    "_longjmp",
    "siglongjmp",
];

pub fn check(ctx: &Ctx<'_>) -> Outcome {
    let mut out = Outcome {
        unit: "function",
        units: ctx.function_units(),
        ..Outcome::default()
    };
    for (fi, file) in ctx.parsed().filter(|(_, f)| f.language == Language::C) {
        walk_file(file, |n| {
            match n.kind() {
                "goto_statement" => out.findings.push(finding(
                    fi,
                    n,
                    Severity::Error,
                    "`goto` statement: restructure with loops and early returns".to_string(),
                    scope_unit(file, n.start_byte()),
                )),
                "call_expression" => {
                    if let Some(t) = lang::call_target(file.language, n, &file.text) {
                        if JUMP_CALLS.contains(&t.name.as_str()) {
                            out.findings.push(finding(
                                fi,
                                n,
                                Severity::Error,
                                format!("call to `{}`: non-local jumps are not allowed", t.name),
                                scope_unit(file, n.start_byte()),
                            ));
                        }
                    }
                }
                _ => {}
            }
            true
        });
    }
    let resolver = Resolver::new(ctx);
    let cg = CallGraph::build(ctx, &resolver);
    for scc in tarjan_scc(&cg.graph) {
        let recursive = scc.len() > 1 || cg.graph.contains_edge(scc[0], scc[0]);
        if !recursive {
            continue;
        }
        out.findings.push(cycle_finding(ctx, &cg, &scc));
    }
    out
}

fn display_name(ctx: &Ctx<'_>, f: FnRef, with_file: bool) -> String {
    let file = &ctx.files[f.0];
    let func = &file.functions[f.1];
    let name = match &func.container {
        Some(c) => format!("{c}::{}", func.name),
        None => func.name.clone(),
    };
    if with_file {
        format!("{}:{}", file.display, name)
    } else {
        name
    }
}

fn cycle_finding(ctx: &Ctx<'_>, cg: &CallGraph, scc: &[NodeIndex]) -> RawFinding {
    let key = |n: &NodeIndex| {
        let (fi, idx) = cg.graph[*n];
        (
            ctx.files[fi].display.clone(),
            ctx.files[fi].functions[idx].start_row,
        )
    };
    let start = *scc.iter().min_by_key(|n| key(n)).unwrap_or(&scc[0]);
    // Shortest path start -> ... -> start inside the component, for the message.
    let members: std::collections::HashSet<NodeIndex> = scc.iter().copied().collect();
    let mut prev: HashMap<NodeIndex, NodeIndex> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    let mut closing = None;
    'bfs: while let Some(n) = queue.pop_front() {
        for m in cg.graph.neighbors(n) {
            if m == start {
                closing = Some(n);
                break 'bfs;
            }
            if members.contains(&m) && !prev.contains_key(&m) {
                prev.insert(m, n);
                queue.push_back(m);
            }
        }
    }
    let mut chain = vec![start];
    if let Some(mut n) = closing {
        let mut back = Vec::new();
        while n != start {
            back.push(n);
            n = prev.get(&n).copied().unwrap_or(start);
        }
        back.reverse();
        chain.extend(back);
    }
    chain.push(start);
    let files: std::collections::HashSet<usize> = chain.iter().map(|n| cg.graph[*n].0).collect();
    let names: Vec<String> = chain
        .iter()
        .map(|n| display_name(ctx, cg.graph[*n], files.len() > 1))
        .collect();
    let (fi, idx) = cg.graph[start];
    let func = &ctx.files[fi].functions[idx];
    let kind = if chain.len() == 2 {
        "direct"
    } else {
        "indirect"
    };
    RawFinding {
        file: fi,
        row: func.start_row,
        col: func.start_col,
        byte: func.byte_range.start,
        severity: Severity::Error,
        message: format!(
            "{kind} recursion: {}; bound the depth with an explicit loop and stack",
            names.join(" -> ")
        ),
        unit: Unit::Function(idx),
    }
}
