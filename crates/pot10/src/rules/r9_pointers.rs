//! R9 - restricted pointer use.
//!
//! Checked exactly (unit: scope = function or a file's top level, C and
//! Rust files only):
//! - C: expressions with more than one level of dereference, counting `*p`
//!   and `p->f` as one level each and looking through parentheses (`**p`,
//!   `p->a->b`, `(*p)->f`); one finding per outermost expression. Function
//!   pointers: declarators and abstract declarators of the form `(*f)(..)`
//!   (variables, parameters, fields, typedefs, casts). `typedef`s whose
//!   declarator is a pointer (the pointer is hidden in the type name).
//!   Macros whose body dereferences (`->` or `(*`).
//! - Rust: every `unsafe` block, `unsafe fn` and `unsafe impl`: raw pointer
//!   dereference is only possible inside them, and the compiler cannot
//!   check pointer validity there.
//! - Python: not applicable (no pointers); Python files add no units.
//!
//! Approximation: `p[i]` is not counted as a dereference (arrays are
//! checked by R10's compiler warnings instead); in macros only the
//! textual patterns above are recognised; Rust raw pointer dereferences
//! are reported through their enclosing `unsafe`, not one by one.

use tree_sitter::Node;

use super::{finding, scope_unit, walk_file, Ctx, Outcome};
use crate::config::Language;
use crate::lang::text;
use crate::report::Severity;

pub fn check(ctx: &Ctx<'_>) -> Outcome {
    let mut out = Outcome {
        unit: "scope",
        ..Outcome::default()
    };
    let mut saw_python = false;
    for (fi, file) in ctx.parsed() {
        if file.language == Language::Python {
            saw_python = true;
            continue;
        }
        out.units += file.functions.len() + 1;
        let src = file.text.as_str();
        walk_file(file, |n| {
            let problem = match file.language {
                Language::C => c_problem(n, src),
                _ => rust_problem(n, src),
            };
            if let Some(msg) = problem {
                out.findings.push(finding(
                    fi,
                    n,
                    Severity::Error,
                    msg,
                    scope_unit(file, n.start_byte()),
                ));
            }
            true
        });
    }
    if saw_python {
        out.notes.push(
            "not applicable to Python (no pointers): Python files are not counted".to_string(),
        );
    }
    out.not_applicable = out.units == 0 && saw_python;
    out
}

fn unparen(mut n: Node<'_>) -> Node<'_> {
    while n.kind() == "parenthesized_expression" {
        match n.named_child(0) {
            Some(c) => n = c,
            None => break,
        }
    }
    n
}

/// Number of stacked dereferences at `n`.
fn deref_level(n: Node<'_>, src: &str) -> usize {
    let n = unparen(n);
    let inner = match n.kind() {
        "pointer_expression"
            if n.child_by_field_name("operator")
                .is_some_and(|o| text(o, src) == "*") =>
        {
            n.child_by_field_name("argument")
        }
        "field_expression"
            if n.child_by_field_name("operator")
                .is_some_and(|o| text(o, src) == "->") =>
        {
            n.child_by_field_name("argument")
        }
        _ => return 0,
    };
    1 + inner.map_or(0, |i| deref_level(i, src))
}

fn c_problem(n: Node<'_>, src: &str) -> Option<String> {
    match n.kind() {
        "pointer_expression" | "field_expression" => {
            let level = deref_level(n, src);
            let mut parent = n.parent();
            while let Some(p) = parent.filter(|p| p.kind() == "parenthesized_expression") {
                parent = p.parent();
            }
            let outermost = parent.is_none_or(|p| deref_level(p, src) == 0);
            (level >= 2 && outermost).then(|| {
                format!("`{}` dereferences {level} levels; use one level per expression (copy to a local first)", text(n, src))
            })
        }
        "function_declarator" | "abstract_function_declarator" => {
            let d = n.child_by_field_name("declarator")?;
            if !matches!(
                d.kind(),
                "parenthesized_declarator" | "abstract_parenthesized_declarator"
            ) {
                return None;
            }
            let inner = d.named_child(0)?;
            matches!(
                inner.kind(),
                "pointer_declarator" | "abstract_pointer_declarator"
            )
            .then(|| {
                format!(
                    "function pointer `{}`; call the function directly",
                    text(n, src)
                )
            })
        }
        "type_definition" => {
            let d = n.child_by_field_name("declarator")?;
            (d.kind() == "pointer_declarator").then(|| {
                format!(
                    "typedef `{}` hides a pointer; spell the `*` where the type is used",
                    text(d, src).trim_start_matches('*').trim()
                )
            })
        }
        "preproc_def" | "preproc_function_def" => {
            let body = text(n.child_by_field_name("value")?, src);
            let name = n.child_by_field_name("name").map_or("", |x| text(x, src));
            (body.contains("->") || body.contains("(*")).then(|| {
                format!("macro `{name}` hides a pointer dereference; write it out at the use site")
            })
        }
        _ => None,
    }
}

fn rust_problem(n: Node<'_>, src: &str) -> Option<String> {
    match n.kind() {
        "unsafe_block" => Some("`unsafe` block: raw pointer use is unchecked here; use a safe abstraction or justify it with a `pot10: allow(R9) reason` comment".to_string()),
        "function_item" | "function_signature_item" => {
            let mut c = n.walk();
            let is_unsafe = n.children(&mut c).any(|ch| ch.kind() == "function_modifiers" && text(ch, src).contains("unsafe"));
            is_unsafe.then(|| {
                let name = n.child_by_field_name("name").map_or("", |x| text(x, src));
                format!("`unsafe fn {name}`: callers must uphold pointer invariants the compiler cannot check")
            })
        }
        "impl_item" => {
            let mut c = n.walk();
            let is_unsafe = n.children(&mut c).any(|ch| ch.kind() == "unsafe");
            is_unsafe.then(|| "`unsafe impl`: the compiler cannot check the promised invariants".to_string())
        }
        _ => None,
    }
}
