//! R2 - every loop has a fixed upper bound.
//!
//! Checked exactly (unit: loop):
//! - A `while` loop (C `while`/`do ... while`, Python `while`, Rust
//!   `while`) is bounded when its condition is one comparison with `<`,
//!   `<=`, `>`, `>=` or `!=` (or a conjunction `&&`/`and` containing such
//!   comparisons) and the loop body *steps* a compared operand or a name
//!   inside one (`i++`, `i += 1`, `i = i + 1`, `self.i -= 1`; `i` also
//!   counts in `i + 1 < n`), i.e. it is a counter loop. Everything else is
//!   flagged: `while (1)`, `while True`, `while !done`, `while (*s)`, Rust
//!   `while let`, and pointer chasing `while (p != NULL) p = p->next;`
//!   (a plain assignment is not a step).
//! - C `for`: flagged when the condition is missing (`for (;;)`) or is not
//!   such a comparison (`a == b`, `*s`), or when neither the update clause
//!   nor the body steps a compared operand (`p != NULL; p = p->next`).
//! - Rust `loop`: flagged unless it contains `if <counter comparison> {
//!   ... break ... }` on an operand the body also assigns.
//! - Python `for x in it` and Rust `for x in it` count as bounded (they
//!   iterate a finite collection or range), except over the known infinite
//!   iterators: Python `count()`, `cycle()`, one-argument `repeat()`,
//!   two-argument `iter(f, sentinel)`; Rust open ranges `a..`, `repeat`,
//!   `repeat_with`, `cycle`, `from_fn`, `successors`.
//!
//! Approximation of Holzmann: he asks that a tool can *prove* the bound; we
//! only recognise the counter pattern syntactically and do not check that
//! the counter moves towards the bound or that the bound is constant.
//! Iterator-based loops are trusted to be finite.

use std::collections::HashSet;

use tree_sitter::Node;

use super::{finding, walk_file, Ctx, Outcome, Unit};
use crate::config::Language;
use crate::lang::{self, text};
use crate::report::Severity;

const RELATIONAL: &[&str] = &["<", "<=", ">", ">=", "!="];
const PY_INFINITE: &[&str] = &["count", "cycle"];
const RUST_INFINITE: &[&str] = &["repeat", "repeat_with", "cycle", "from_fn", "successors"];

pub fn check(ctx: &Ctx<'_>) -> Outcome {
    let mut out = Outcome {
        unit: "loop",
        ..Outcome::default()
    };
    for (fi, file) in ctx.parsed() {
        let loops = lang::table(file.language).loops;
        let src = file.text.as_str();
        walk_file(file, |n| {
            if lang::is(loops, n.kind()) {
                out.units += 1;
                if let Some(problem) = unbounded(file.language, n, src) {
                    out.findings.push(finding(
                        fi,
                        n,
                        Severity::Error,
                        format!("{problem}; give the loop a counter with a fixed upper bound"),
                        Unit::Loop(n.start_byte()),
                    ));
                }
            }
            true
        });
    }
    out
}

/// Why a loop is unbounded, or `None` when a bound is visible.
fn unbounded(lang: Language, n: Node<'_>, src: &str) -> Option<String> {
    let body = n.child_by_field_name("body");
    match (lang, n.kind()) {
        (Language::C, "for_statement") => {
            let Some(cond) = n.child_by_field_name("condition") else {
                return Some("`for` loop without a condition".to_string());
            };
            let Some(operands) = comparison_operands(lang, cond, src) else {
                return Some(format!(
                    "`for` condition `{}` is not a counter comparison (<, <=, >, >=, !=)",
                    text(cond, src)
                ));
            };
            let mut assigned = assigned_operands(lang, n.child_by_field_name("update"), src);
            assigned.extend(assigned_operands(lang, body, src));
            if counts_with(&operands, &assigned) {
                None
            } else {
                Some(format!(
                    "`for` condition `{}` has no counter updated by the loop",
                    text(cond, src)
                ))
            }
        }
        (Language::Python, "for_statement") => {
            let iter = n.child_by_field_name("right")?;
            infinite_python_iterator(iter, src)
                .map(|what| format!("`for` over the infinite iterator `{what}`"))
        }
        (Language::Rust, "for_expression") => {
            let value = n.child_by_field_name("value")?;
            infinite_rust_iterator(value, src)
                .map(|what| format!("`for` over the unbounded iterator `{what}`"))
        }
        (Language::Rust, "loop_expression") => {
            if loop_has_counter_break(n, src) {
                None
            } else {
                Some("`loop` without a counter-bounded `break`".to_string())
            }
        }
        (_, "while_statement" | "while_expression" | "do_statement") => {
            let cond = n.child_by_field_name("condition")?;
            let cond_text = text(cond, src);
            if cond.kind() == "let_condition" {
                return Some(format!("`while {cond_text}` has no counter bound"));
            }
            match comparison_operands(lang, cond, src) {
                Some(ops) if counts_with(&ops, &assigned_operands(lang, body, src)) => None,
                Some(_) => Some(format!(
                    "`while` condition `{cond_text}` compares no counter the loop updates"
                )),
                None => Some(format!("`while` on a non-counter condition `{cond_text}`")),
            }
        }
        _ => None,
    }
}

/// Operand texts of a single relational comparison, seen through
/// parentheses; `None` when `cond` is not one.
fn comparison_operands(lang: Language, cond: Node<'_>, src: &str) -> Option<Vec<String>> {
    let mut c = cond;
    while matches!(c.kind(), "parenthesized_expression") && c.named_child_count() == 1 {
        c = c.named_child(0)?;
    }
    match (lang, c.kind()) {
        // `i < n && ok`, `i < n and ok`: bounded if one conjunct is a
        // counter comparison (the loop stops at least when it fails).
        (Language::C | Language::Rust, "binary_expression")
            if c.child_by_field_name("operator")
                .is_some_and(|o| text(o, src) == "&&") =>
        {
            conjunct_operands(lang, c, src)
        }
        (Language::Python, "boolean_operator")
            if c.child_by_field_name("operator")
                .is_some_and(|o| text(o, src) == "and") =>
        {
            conjunct_operands(lang, c, src)
        }
        (Language::C | Language::Rust, "binary_expression") => {
            let op = c.child_by_field_name("operator")?;
            if !RELATIONAL.contains(&text(op, src)) {
                return None;
            }
            let l = c.child_by_field_name("left")?;
            let r = c.child_by_field_name("right")?;
            Some(operand_parts(&[l, r], src))
        }
        (Language::Python, "comparison_operator") => {
            let mut w = c.walk();
            let ops: Vec<_> = c.children_by_field_name("operators", &mut w).collect();
            if ops.len() != 1 || !RELATIONAL.contains(&text(ops[0], src)) {
                return None;
            }
            let mut w = c.walk();
            let sides: Vec<Node<'_>> = c.named_children(&mut w).collect();
            Some(operand_parts(&sides, src))
        }
        _ => None,
    }
}

fn conjunct_operands(lang: Language, c: Node<'_>, src: &str) -> Option<Vec<String>> {
    let mut ops = Vec::new();
    for side in [
        c.child_by_field_name("left"),
        c.child_by_field_name("right"),
    ]
    .into_iter()
    .flatten()
    {
        if let Some(o) = comparison_operands(lang, side, src) {
            ops.extend(o);
        }
    }
    (!ops.is_empty()).then_some(ops)
}

/// The texts a counter may hide in, per compared operand: the operand
/// itself and every name or field path inside it (`i` in `i + 1 < n`,
/// `b->offset` in `b->offset + 4 <= b->length`).
fn operand_parts(sides: &[Node<'_>], src: &str) -> Vec<String> {
    let mut out = Vec::new();
    for side in sides {
        lang::walk(*side, |x| {
            let part = matches!(
                x.kind(),
                "identifier" | "field_expression" | "attribute" | "self"
            ) || x == *side;
            if part {
                out.push(text(x, src).to_string());
            }
            // Inside a call or index the value is not the counter itself.
            !matches!(
                x.kind(),
                "call_expression"
                    | "call"
                    | "subscript_expression"
                    | "index_expression"
                    | "subscript"
            )
        });
    }
    out
}

/// Whether a compared operand (or a part of it) is a counter the loop
/// steps (see `assigned_operands`).
fn counts_with(operands: &[String], stepped: &HashSet<String>) -> bool {
    operands.iter().any(|o| stepped.contains(o))
}

/// Texts of every lvalue the loop *steps* inside `node` (`i++`, `i += k`,
/// `i = i + k`, `i >>= 1`), not descending into nested functions. A plain
/// assignment from anything else, such as `p = p->next` or `n = read()`,
/// is not a step: pointer chasing and re-reading have no static bound.
fn assigned_operands(lang: Language, node: Option<Node<'_>>, src: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    let Some(node) = node else {
        return out;
    };
    let nested = lang::table(lang).nested_scopes;
    lang::walk(node, |n| {
        if n != node && lang::is(nested, n.kind()) {
            return false;
        }
        let target = match n.kind() {
            "update_expression" => n.child_by_field_name("argument"),
            "augmented_assignment" | "compound_assignment_expr" => n.child_by_field_name("left"),
            "assignment_expression" | "assignment" => {
                let op = n
                    .child_by_field_name("operator")
                    .map_or("=", |o| text(o, src));
                let left = n.child_by_field_name("left");
                let right = n.child_by_field_name("right");
                match (op, left, right) {
                    ("=", Some(l), Some(r)) if arithmetic_step(r, text(l, src), src) => Some(l),
                    ("=", _, _) => None,
                    // C compound assignment: `+=`, `-=`, `<<=`, ...
                    (_, l, _) => l,
                }
            }
            _ => None,
        };
        if let Some(t) = target {
            out.insert(text(t, src).to_string());
        }
        true
    });
    out
}

/// `i + 1`, `i - step`, `i * 2`, `i >> 1` where `i` is `target`.
fn arithmetic_step(right: Node<'_>, target: &str, src: &str) -> bool {
    let mut r = right;
    while r.kind() == "parenthesized_expression" && r.named_child_count() == 1 {
        match r.named_child(0) {
            Some(x) => r = x,
            None => return false,
        }
    }
    if !matches!(r.kind(), "binary_expression" | "binary_operator") {
        return false;
    }
    let op = r
        .child_by_field_name("operator")
        .map_or("", |o| text(o, src));
    let sides = [
        r.child_by_field_name("left"),
        r.child_by_field_name("right"),
    ];
    matches!(op, "+" | "-" | "*" | "/" | "<<" | ">>" | "//")
        && sides.iter().flatten().any(|s| text(*s, src) == target)
}

/// `loop { if i >= n { break; } ...; i += 1; }`
fn loop_has_counter_break(n: Node<'_>, src: &str) -> bool {
    let Some(body) = n.child_by_field_name("body") else {
        return false;
    };
    let assigned = assigned_operands(Language::Rust, Some(body), src);
    let mut found = false;
    lang::walk(body, |x| {
        if found
            || matches!(
                x.kind(),
                "loop_expression"
                    | "while_expression"
                    | "for_expression"
                    | "closure_expression"
                    | "function_item"
            )
        {
            return false;
        }
        if x.kind() == "if_expression" {
            let counter = x
                .child_by_field_name("condition")
                .and_then(|c| comparison_operands(Language::Rust, c, src))
                .is_some_and(|ops| counts_with(&ops, &assigned));
            let breaks = x.child_by_field_name("consequence").is_some_and(|c| {
                let mut b = false;
                lang::walk(c, |y| {
                    b |= matches!(y.kind(), "break_expression" | "return_expression");
                    !b
                });
                b
            });
            found = counter && breaks;
        }
        !found
    });
    found
}

fn infinite_python_iterator(iter: Node<'_>, src: &str) -> Option<String> {
    if iter.kind() != "call" {
        return None;
    }
    let t = lang::call_target(Language::Python, iter, src)?;
    let nargs = iter
        .child_by_field_name("arguments")
        .map_or(0, |a| a.named_child_count());
    let infinite = PY_INFINITE.contains(&t.name.as_str())
        || (t.name == "repeat" && nargs == 1)
        || (t.name == "iter" && nargs == 2);
    infinite.then(|| text(iter, src).to_string())
}

fn infinite_rust_iterator(value: Node<'_>, src: &str) -> Option<String> {
    let mut found = None;
    lang::walk(value, |x| {
        if found.is_some() || x.kind() == "closure_expression" {
            return false;
        }
        match x.kind() {
            // `a..` has a start and no end operand.
            "range_expression"
                if x.named_child_count() == 1 && text(x, src).trim_end().ends_with("..") =>
            {
                found = Some(text(x, src).to_string());
            }
            "call_expression" => {
                if let Some(t) = lang::call_target(Language::Rust, x, src) {
                    if RUST_INFINITE.contains(&t.name.as_str()) {
                        found = Some(text(value, src).to_string());
                    }
                }
            }
            _ => {}
        }
        found.is_none()
    });
    found
}
