//! R7 - check return values and parameters.
//!
//! Checked exactly (unit: scope = function or a file's top level):
//! - C, ignored return values: a call used as a whole expression statement
//!   (not cast to `(void)`) whose callee is known to return a value: a
//!   function defined or declared in the analyzed files with a non-`void`
//!   return type, or one of the libc functions in `C_MUST_CHECK` (I/O,
//!   allocation, conversion, locking). `printf`, `memcpy`, `strcpy` and
//!   friends are not listed: Holzmann accepts ignoring them when an error
//!   would be handled no differently, and casting to `(void)` documents it.
//! - C, parameter validity: every pointer parameter must be *tested* in an
//!   `if` / `while` / `?:` condition or an assertion of its function: the
//!   condition is the pointer, its negation, or a `==`/`!=` comparison of
//!   it, possibly joined with `&&`/`||` (`if (!p || !q)`, `assert(p !=
//!   NULL)`). Merely appearing in a condition (`if (strlen(s) > 0)`) is
//!   not a check (`main` is exempt). Reported as a warning.
//! - Rust: `let _ = <expression with a call>;` and `_ = <call>;` (a
//!   discarded value, typically a `Result`); `<expr>.ok();` as a statement
//!   (an error turned into nothing); and bare call statements whose callee
//!   resolves (see `callgraph`) to a function of the analyzed files with a
//!   return type other than `()`/`Self`/`&Self`/`&mut Self`.
//! - Python: bare call statements whose callee resolves to a function of
//!   the analyzed files that contains `return <value>`; and bare calls of
//!   pure builtins (`sorted`, `len`, `map`, ...), whose result is all they do.
//!
//! Approximation: callee types are only known for functions in the
//! analyzed files and the listed libc functions; method calls on arbitrary
//! receivers are not resolved. Parameter validity is only checked for C
//! pointers (Rust and Python parameters are typed or duck-typed and their
//! validation cannot be recognised syntactically).

use std::collections::{HashMap, HashSet};

use tree_sitter::Node;

use super::callgraph::Resolver;
use super::{finding, scope_unit, walk_file, Ctx, Outcome, Unit};
use crate::config::Language;
use crate::lang::{self, text, Receiver};
use crate::report::Severity;
use crate::source::SourceFile;

const C_MUST_CHECK: &[&str] = &[
    "malloc",
    "calloc",
    "realloc",
    "fopen",
    "fclose",
    "fread",
    "fwrite",
    "fgets",
    "fputs",
    "fseek",
    "ftell",
    "fflush",
    "scanf",
    "sscanf",
    "fscanf",
    "read",
    "write",
    "open",
    "close",
    "strtol",
    "strtoul",
    "strtod",
    "remove",
    "rename",
    "pthread_create",
    "pthread_join",
    "pthread_mutex_lock",
    "pthread_mutex_unlock",
    "setvbuf",
    "fsync",
    "mkdir",
];
const PY_PURE_BUILTINS: &[&str] = &[
    "sorted",
    "len",
    "abs",
    "min",
    "max",
    "map",
    "filter",
    "reversed",
    "round",
    "sum",
    "any",
    "all",
    "repr",
    "tuple",
    "frozenset",
];

pub fn check(ctx: &Ctx<'_>) -> Outcome {
    let mut out = Outcome {
        unit: "scope",
        units: ctx.scope_units(),
        ..Outcome::default()
    };
    let resolver = Resolver::new(ctx);
    let c_returns = c_return_table(ctx);
    let py_returns = python_value_returning(ctx);
    for (fi, file) in ctx.parsed() {
        let src = file.text.as_str();
        walk_file(file, |n| {
            let unit = || scope_unit(file, n.start_byte());
            match (file.language, n.kind()) {
                (Language::Rust, "let_declaration") => {
                    let discards = n
                        .child_by_field_name("pattern")
                        .is_some_and(|p| p.kind() == "_");
                    if let (true, Some(v)) = (discards, n.child_by_field_name("value")) {
                        if has_call(v) {
                            out.findings.push(finding(fi, n, Severity::Error, format!(
                                "`let _ = {}` discards the result; handle it or propagate the error with `?`",
                                short(text(v, src))), unit()));
                        }
                    }
                }
                (_, "expression_statement") => {
                    if let Some(msg) =
                        ignored_return(ctx, &resolver, &c_returns, &py_returns, fi, file, n)
                    {
                        out.findings
                            .push(finding(fi, n, Severity::Error, msg, unit()));
                    }
                }
                (Language::C, "function_definition") => {
                    unchecked_pointer_params(fi, file, n, &mut out);
                }
                _ => {}
            }
            true
        });
    }
    out
}

fn short(s: &str) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 60 {
        format!("{}...", one_line.chars().take(57).collect::<String>())
    } else {
        one_line
    }
}

fn has_call(n: Node<'_>) -> bool {
    let mut found = false;
    lang::walk(n, |x| {
        found |= matches!(
            x.kind(),
            "call_expression" | "macro_invocation" | "await_expression"
        );
        !found && x.kind() != "closure_expression"
    });
    found
}

/// C: name -> returns a value, from definitions and prototypes.
fn c_return_table(ctx: &Ctx<'_>) -> HashMap<String, bool> {
    let mut table: HashMap<String, bool> =
        C_MUST_CHECK.iter().map(|n| (n.to_string(), true)).collect();
    for (_, file) in ctx.parsed().filter(|(_, f)| f.language == Language::C) {
        for f in &file.functions {
            table.insert(f.name.clone(), f.return_type.is_some());
        }
        let src = file.text.as_str();
        walk_file(file, |n| {
            if n.kind() == "function_definition" {
                return false;
            }
            if n.kind() == "declaration" {
                let ty = n.child_by_field_name("type").map_or("", |t| text(t, src));
                let mut c = n.walk();
                for d in n.children_by_field_name("declarator", &mut c) {
                    let mut x = d;
                    let mut pointer = false;
                    while x.kind() == "pointer_declarator" {
                        pointer = true;
                        match x.child_by_field_name("declarator") {
                            Some(y) => x = y,
                            None => break,
                        }
                    }
                    if x.kind() == "function_declarator" {
                        if let Some(name) = x
                            .child_by_field_name("declarator")
                            .filter(|y| y.kind() == "identifier")
                        {
                            table.insert(text(name, src).to_string(), pointer || ty != "void");
                        }
                    }
                }
                return false;
            }
            true
        });
    }
    table
}

/// Python functions (file, index) whose own body has `return <value>`.
fn python_value_returning(ctx: &Ctx<'_>) -> HashSet<(usize, usize)> {
    let mut out = HashSet::new();
    for (fi, file) in ctx.parsed().filter(|(_, f)| f.language == Language::Python) {
        walk_file(file, |n| {
            if n.kind() == "return_statement" && n.named_child_count() > 0 {
                if let Some(func) = file.function_at(n.start_byte()) {
                    out.insert((fi, func));
                }
            }
            true
        });
    }
    out
}

fn ignored_return(
    ctx: &Ctx<'_>,
    resolver: &Resolver,
    c_returns: &HashMap<String, bool>,
    py_returns: &HashSet<(usize, usize)>,
    fi: usize,
    file: &SourceFile,
    stmt: Node<'_>,
) -> Option<String> {
    let src = file.text.as_str();
    let expr = stmt.named_child(0)?;
    let lang = file.language;
    if lang == Language::Rust && expr.kind() == "assignment_expression" {
        let left = expr.child_by_field_name("left")?;
        let right = expr.child_by_field_name("right")?;
        return (text(left, src) == "_" && has_call(right)).then(|| {
            format!(
                "`_ = {}` discards the result; handle it or propagate the error with `?`",
                short(text(right, src))
            )
        });
    }
    if !lang::is(lang::table(lang).calls, expr.kind()) {
        return None;
    }
    let target = lang::call_target(lang, expr, src)?;
    let caller = file.function_at(stmt.start_byte());
    match lang {
        Language::C => {
            if target.receiver == Receiver::None
                && c_returns.get(&target.name).copied().unwrap_or(false)
            {
                Some(format!(
                    "return value of `{}` ignored; check it, or cast the call to `(void)` if failure truly does not matter",
                    target.name
                ))
            } else {
                None
            }
        }
        Language::Rust => {
            let args_empty = expr
                .child_by_field_name("arguments")
                .is_some_and(|a| a.named_child_count() == 0);
            if target.name == "ok"
                && args_empty
                && matches!(target.receiver, Receiver::Other | Receiver::SelfRef)
            {
                return Some(format!(
                    "`{}` throws the error away; handle or propagate it",
                    short(text(expr, src))
                ));
            }
            let callees = resolver.resolve(ctx, fi, caller, &target);
            let ret = callees.iter().find_map(|&(f, i)| {
                ctx.files[f].functions[i]
                    .return_type
                    .clone()
                    .filter(|t| !matches!(t.as_str(), "Self" | "&Self" | "&mut Self"))
            })?;
            Some(format!(
                "return value of `{}` (`{ret}`) ignored; use it or handle it",
                target.name
            ))
        }
        Language::Python => {
            let callees = resolver.resolve(ctx, fi, caller, &target);
            if callees.iter().any(|c| py_returns.contains(c)) {
                return Some(format!(
                    "return value of `{}` ignored; use it or assign it",
                    target.name
                ));
            }
            if callees.is_empty()
                && target.receiver == Receiver::None
                && PY_PURE_BUILTINS.contains(&target.name.as_str())
            {
                return Some(format!(
                    "result of `{}` discarded; the call has no other effect",
                    target.name
                ));
            }
            None
        }
    }
}

/// Names a condition actually tests: the whole condition (`if (p)`), a
/// negation (`!p`), a side of `==`/`!=` (`p != NULL`), and the same
/// through parentheses, `&&`, `||` and the argument list of an assertion.
/// A name used for something else inside the condition, as in
/// `if (strlen(s) > 0)` or `if (p->len)`, is not a check of it.
fn tested_names(cond: Node<'_>, src: &str, out: &mut HashSet<String>) {
    match cond.kind() {
        "identifier" => {
            out.insert(text(cond, src).to_string());
        }
        "parenthesized_expression" | "argument_list" | "comma_expression" => {
            let mut c = cond.walk();
            for child in cond.named_children(&mut c) {
                tested_names(child, src, out);
            }
        }
        "unary_expression" => {
            let negation = cond
                .child_by_field_name("operator")
                .is_some_and(|o| text(o, src) == "!");
            if let (true, Some(arg)) = (negation, cond.child_by_field_name("argument")) {
                tested_names(arg, src, out);
            }
        }
        "binary_expression" => {
            let op = cond
                .child_by_field_name("operator")
                .map_or("", |o| text(o, src));
            if matches!(op, "&&" | "||" | "==" | "!=") {
                for side in [
                    cond.child_by_field_name("left"),
                    cond.child_by_field_name("right"),
                ]
                .into_iter()
                .flatten()
                {
                    tested_names(side, src, out);
                }
            }
        }
        _ => {}
    }
}

/// C pointer parameters never tested in a condition or assertion.
fn unchecked_pointer_params(fi: usize, file: &SourceFile, func: Node<'_>, out: &mut Outcome) {
    let src = file.text.as_str();
    let Some(idx) = file
        .functions
        .iter()
        .position(|f| f.byte_range == func.byte_range())
    else {
        return;
    };
    if file.functions[idx].name == "main" {
        return;
    }
    let mut d = func.child_by_field_name("declarator");
    while let Some(x) = d {
        if x.kind() == "function_declarator" {
            break;
        }
        d = x.child_by_field_name("declarator");
    }
    let Some(params) = d.and_then(|x| x.child_by_field_name("parameters")) else {
        return;
    };
    let mut pointer_params = Vec::new();
    let mut c = params.walk();
    for p in params.named_children(&mut c) {
        let Some(decl) = p.child_by_field_name("declarator") else {
            continue;
        };
        if decl.kind() == "pointer_declarator" {
            let mut x = decl;
            while let Some(y) = x.child_by_field_name("declarator") {
                x = y;
            }
            if x.kind() == "identifier" {
                pointer_params.push((text(x, src).to_string(), p));
            }
        }
    }
    if pointer_params.is_empty() {
        return;
    }
    let Some(body) = func.child_by_field_name("body") else {
        return;
    };
    let mut checked: HashSet<String> = HashSet::new();
    lang::walk(body, |n| {
        let cond = match n.kind() {
            "if_statement" | "while_statement" | "conditional_expression" | "do_statement" => {
                n.child_by_field_name("condition")
            }
            "call_expression" => lang::call_target(Language::C, n, src)
                .filter(|t| t.name == "assert" || t.name.to_ascii_lowercase().contains("assert"))
                .and_then(|_| n.child_by_field_name("arguments")),
            _ => None,
        };
        if let Some(c) = cond {
            tested_names(c, src, &mut checked);
        }
        true
    });
    for (name, p) in pointer_params {
        if !checked.contains(&name) {
            out.findings.push(finding(
                fi,
                p,
                Severity::Warning,
                format!(
                    "pointer parameter `{name}` of `{}` is never checked; test it (for example against NULL) or assert it",
                    file.functions[idx].name
                ),
                Unit::Function(idx),
            ));
        }
    }
}
