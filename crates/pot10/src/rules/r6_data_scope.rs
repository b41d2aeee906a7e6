//! R6 - declare data at the smallest possible scope.
//!
//! Checked exactly (unit: scope = a function, or a file's top level):
//! - Mutable global state.
//!   C: file-scope variable definitions that are not `const` and not
//!   `extern` declarations. Rust: `static mut`, `static` items whose type
//!   holds interior mutability (`Mutex`, `RwLock`, `RefCell`, `Cell`,
//!   `UnsafeCell`, `Atomic*`), and `thread_local!`. Python: module-level
//!   assignments of a mutable value (list/dict/set displays or
//!   comprehensions, or `list()`, `dict()`, `set()`, `defaultdict()`,
//!   `OrderedDict()`, `deque()`, `Counter()`), except dunder names such as
//!   `__all__`; and every `global` statement inside a function.
//! - Locals declared wider than used (C and Rust; Python has no block
//!   scope): a declaration directly in a function body whose every use lies
//!   inside one single nested `if`, `switch`/`match`, loop or plain block
//!   statement that follows it; reported as a warning. Not for a loop
//!   that carries the value across iterations or in from before the loop
//!   (its first mention in the loop is not a plain `=` assignment):
//!   moving the declaration in would reset it every iteration. Only
//!   declarations without initializer or with a literal initializer are
//!   considered, so that moving them can never change evaluation order.
//!
//! Approximation: uses are matched by name, so shadowing can hide or
//! invent a use; "smallest possible scope" for globals is not computed
//! (a global used by one function only is still reported as a global).

use tree_sitter::Node;

use super::{finding, scope_unit, walk_file, Ctx, Outcome, Unit};
use crate::config::Language;
use crate::lang::{self, text};
use crate::report::Severity;
use crate::source::SourceFile;

const RUST_INTERIOR: &[&str] = &[
    "Mutex",
    "RwLock",
    "RefCell",
    "Cell<",
    "UnsafeCell",
    "Atomic",
];
const PY_MUTABLE_LITERALS: &[&str] = &[
    "list",
    "dictionary",
    "set",
    "list_comprehension",
    "dictionary_comprehension",
    "set_comprehension",
];
const PY_MUTABLE_CALLS: &[&str] = &[
    "list",
    "dict",
    "set",
    "defaultdict",
    "OrderedDict",
    "deque",
    "Counter",
];

pub fn check(ctx: &Ctx<'_>) -> Outcome {
    let mut out = Outcome {
        unit: "scope",
        units: ctx.scope_units(),
        ..Outcome::default()
    };
    for (fi, file) in ctx.parsed() {
        let src = file.text.as_str();
        walk_file(file, |n| {
            let kind = n.kind();
            let relevant = matches!(kind, "declaration" | "assignment" | "global_statement");
            let in_function = relevant && file.function_at(n.start_byte()).is_some();
            let global = match (file.language, n.kind()) {
                (Language::C, "declaration") if !in_function => c_mutable_global(n, src),
                (Language::Rust, "static_item") => rust_mutable_static(n, src),
                (Language::Rust, "macro_invocation")
                    if lang::macro_name(n, src) == "thread_local" =>
                {
                    Some("thread_local!".to_string())
                }
                (Language::Python, "assignment") if !in_function && python_module_level(n) => {
                    python_mutable_global(n, src)
                }
                (Language::Python, "global_statement") if in_function => {
                    out.findings.push(finding(
                        fi,
                        n,
                        Severity::Error,
                        format!("`{}` rebinds module-level state; pass the value in and return the result instead", text(n, src)),
                        scope_unit(file, n.start_byte()),
                    ));
                    None
                }
                _ => None,
            };
            if let Some(name) = global {
                out.findings.push(finding(
                    fi,
                    n,
                    Severity::Error,
                    format!("mutable global state `{name}`; declare it in the function that uses it and pass it down, or make it constant"),
                    Unit::FileScope,
                ));
                return false;
            }
            true
        });
        if file.language != Language::Python {
            wide_locals(fi, file, &mut out);
        }
    }
    out
}

fn c_mutable_global(n: Node<'_>, src: &str) -> Option<String> {
    let mut c = n.walk();
    let mut names = Vec::new();
    for ch in n.children(&mut c) {
        match ch.kind() {
            "storage_class_specifier" if text(ch, src) == "extern" => return None,
            "type_qualifier" if text(ch, src) == "const" => return None,
            _ => {}
        }
    }
    let mut c = n.walk();
    for d in n.children_by_field_name("declarator", &mut c) {
        if let Some(name) = declared_name(d, src, true) {
            names.push(name);
        }
    }
    (!names.is_empty()).then(|| names.join(", "))
}

/// Identifier declared by a C declarator, `None` for function prototypes.
fn declared_name(d: Node<'_>, src: &str, skip_functions: bool) -> Option<String> {
    let mut d = d;
    loop {
        match d.kind() {
            "identifier" => return Some(text(d, src).to_string()),
            "function_declarator" if skip_functions => return None,
            "init_declarator"
            | "pointer_declarator"
            | "array_declarator"
            | "function_declarator"
            | "attributed_declarator" => d = d.child_by_field_name("declarator")?,
            "parenthesized_declarator" => d = d.named_child(0)?,
            _ => return None,
        }
    }
}

fn rust_mutable_static(n: Node<'_>, src: &str) -> Option<String> {
    let name = text(n.child_by_field_name("name")?, src).to_string();
    let mut c = n.walk();
    if n.children(&mut c)
        .any(|ch| ch.kind() == "mutable_specifier")
    {
        return Some(format!("static mut {name}"));
    }
    let ty = text(n.child_by_field_name("type")?, src);
    RUST_INTERIOR
        .iter()
        .any(|m| ty.contains(m))
        .then(|| format!("static {name}: {ty}"))
}

/// An assignment statement at module level (possibly under `if`/`try`).
fn python_module_level(n: Node<'_>) -> bool {
    let mut p = n.parent();
    while let Some(x) = p {
        match x.kind() {
            "module" => return true,
            "class_definition" | "function_definition" | "lambda" => return false,
            _ => p = x.parent(),
        }
    }
    false
}

fn python_mutable_global(n: Node<'_>, src: &str) -> Option<String> {
    let left = n.child_by_field_name("left")?;
    let right = n.child_by_field_name("right")?;
    let name = text(left, src);
    if name.starts_with("__") && name.ends_with("__") {
        return None;
    }
    let mutable = PY_MUTABLE_LITERALS.contains(&right.kind())
        || (right.kind() == "call"
            && lang::call_target(Language::Python, right, src)
                .is_some_and(|t| PY_MUTABLE_CALLS.contains(&t.name.as_str())));
    mutable.then(|| name.to_string())
}

/// Locals declared at function-body level but used only inside one nested
/// block statement.
fn wide_locals(fi: usize, file: &SourceFile, out: &mut Outcome) {
    let src = file.text.as_str();
    for (idx, f) in file.functions.iter().enumerate() {
        let Some(node) = file.function_node(idx) else {
            continue;
        };
        let Some(body) = node.child_by_field_name("body") else {
            continue;
        };
        let mut c = body.walk();
        let stmts: Vec<Node<'_>> = body.named_children(&mut c).collect();
        for (i, stmt) in stmts.iter().enumerate() {
            let Some(name) = simple_local(file.language, *stmt, src) else {
                continue;
            };
            let users: Vec<usize> = stmts[i + 1..]
                .iter()
                .enumerate()
                .filter(|(_, s)| uses_name(**s, &name, src))
                .map(|(j, _)| i + 1 + j)
                .collect();
            let [only] = users.as_slice() else {
                continue;
            };
            let user = unwrap_statement(stmts[*only]);
            let is_loop = matches!(
                user.kind(),
                "for_statement"
                    | "while_statement"
                    | "do_statement"
                    | "for_expression"
                    | "while_expression"
                    | "loop_expression"
            );
            let narrow = match file.language {
                Language::C => matches!(
                    user.kind(),
                    "compound_statement" | "if_statement" | "switch_statement"
                ),
                _ => matches!(user.kind(), "block" | "if_expression" | "match_expression"),
            } || (is_loop && !carried_across_iterations(user, &name, src));
            if narrow {
                out.findings.push(finding(
                    fi,
                    *stmt,
                    Severity::Warning,
                    format!(
                        "`{name}` is declared at the top of `{}` but only used inside the {} at line {}; declare it there",
                        f.name,
                        user.kind().replace('_', " "),
                        user.start_position().row + 1
                    ),
                    Unit::Function(idx),
                ));
            }
        }
    }
}

/// Whether a loop may read a value of `name` from before the loop or from
/// an earlier iteration: unless the first mention of `name` in the loop is
/// the target of a plain `=` (`for (i = 0; ..)`, `n = read(..)`), moving
/// the declaration into the loop would change what the loop computes.
fn carried_across_iterations(lp: Node<'_>, name: &str, src: &str) -> bool {
    let mut first: Option<Node<'_>> = None;
    lang::walk(lp, |x| {
        if first.is_none() && x.kind() == "identifier" && text(x, src) == name {
            first = Some(x);
        }
        first.is_none()
    });
    let Some(id) = first else {
        return true;
    };
    let assigned = id.parent().is_some_and(|p| {
        matches!(p.kind(), "assignment_expression" | "assignment")
            && p.child_by_field_name("left") == Some(id)
            && p.child_by_field_name("operator")
                .is_none_or(|o| text(o, src) == "=")
            && !p
                .child_by_field_name("right")
                .is_some_and(|r| uses_name(r, name, src))
    });
    !assigned
}

fn unwrap_statement(n: Node<'_>) -> Node<'_> {
    if n.kind() == "expression_statement" && n.named_child_count() == 1 {
        n.named_child(0).unwrap_or(n)
    } else {
        n
    }
}

/// Name of a local declaration with no or a literal initializer.
fn simple_local(lang: Language, n: Node<'_>, src: &str) -> Option<String> {
    let literal = |v: Node<'_>| {
        v.kind().ends_with("_literal")
            || matches!(
                v.kind(),
                "true" | "false" | "null" | "string" | "char_literal"
            )
    };
    match (lang, n.kind()) {
        (Language::C, "declaration") => {
            let mut c = n.walk();
            let decls: Vec<Node<'_>> = n.children_by_field_name("declarator", &mut c).collect();
            let [d] = decls.as_slice() else {
                return None;
            };
            if d.kind() == "init_declarator" {
                let v = d.child_by_field_name("value")?;
                if !literal(v) {
                    return None;
                }
            }
            declared_name(*d, src, true)
        }
        (Language::Rust, "let_declaration") => {
            let pat = n.child_by_field_name("pattern")?;
            if pat.kind() != "identifier" {
                return None;
            }
            if let Some(v) = n.child_by_field_name("value") {
                if !literal(v) {
                    return None;
                }
            }
            Some(text(pat, src).to_string())
        }
        _ => None,
    }
}

fn uses_name(n: Node<'_>, name: &str, src: &str) -> bool {
    let mut found = false;
    lang::walk(n, |x| {
        if x.kind() == "identifier" && text(x, src) == name {
            found = true;
        }
        !found
    });
    found
}
