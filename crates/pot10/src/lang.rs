//! Per-language node tables: the tree-sitter node kinds that play the same
//! role in C, Python and Rust (function, call, loop, comment, ...), and the
//! few helpers that read a call's target. Rules ask these tables instead of
//! hard-coding kinds, so adding a language means adding a table here.

use tree_sitter::Node;

use super::config::Language;

/// Node kinds with the same meaning across grammars.
pub struct NodeTable {
    pub functions: &'static [&'static str],
    pub comments: &'static [&'static str],
    pub calls: &'static [&'static str],
    pub loops: &'static [&'static str],
    pub identifiers: &'static [&'static str],
    /// Nodes whose body opens a nested block scope (used by R6).
    pub block_statements: &'static [&'static str],
    /// Kinds that start a new function-like scope we do not descend into
    /// when attributing code to the enclosing function.
    pub nested_scopes: &'static [&'static str],
}

const C_TABLE: NodeTable = NodeTable {
    functions: &["function_definition"],
    comments: &["comment"],
    calls: &["call_expression"],
    loops: &["for_statement", "while_statement", "do_statement"],
    identifiers: &["identifier"],
    block_statements: &[
        "compound_statement",
        "if_statement",
        "for_statement",
        "while_statement",
        "do_statement",
        "switch_statement",
    ],
    nested_scopes: &["function_definition"],
};

const PYTHON_TABLE: NodeTable = NodeTable {
    functions: &["function_definition"],
    comments: &["comment"],
    calls: &["call"],
    loops: &["for_statement", "while_statement"],
    identifiers: &["identifier"],
    block_statements: &[],
    nested_scopes: &["function_definition", "class_definition", "lambda"],
};

const RUST_TABLE: NodeTable = NodeTable {
    functions: &["function_item"],
    comments: &["line_comment", "block_comment"],
    calls: &["call_expression"],
    loops: &["loop_expression", "while_expression", "for_expression"],
    identifiers: &["identifier"],
    block_statements: &[
        "block",
        "if_expression",
        "for_expression",
        "while_expression",
        "loop_expression",
        "match_expression",
    ],
    nested_scopes: &["function_item", "closure_expression"],
};

pub fn table(lang: Language) -> &'static NodeTable {
    match lang {
        Language::C => &C_TABLE,
        Language::Python => &PYTHON_TABLE,
        Language::Rust => &RUST_TABLE,
    }
}

pub fn grammar(lang: Language) -> tree_sitter::Language {
    match lang {
        Language::C => tree_sitter_c::LANGUAGE.into(),
        Language::Python => tree_sitter_python::LANGUAGE.into(),
        Language::Rust => tree_sitter_rust::LANGUAGE.into(),
    }
}

/// Who a call is made on, as far as syntax tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receiver {
    /// A plain name: `f()`.
    None,
    /// `self.f()`, `Self::f()`, `cls.f()`.
    SelfRef,
    /// A path or module-like qualifier: `util::f()`, `np.f()`, `Vec::new()`;
    /// holds the last qualifier segment (`util`, `np`, `Vec`).
    Path(String),
    /// Anything else (`x.f()`, `a->f()`, `(g())()`): the callee cannot be
    /// resolved syntactically.
    Other,
}

/// The syntactic target of a call: callee name and receiver.
#[derive(Debug, Clone)]
pub struct CallTarget {
    pub name: String,
    pub receiver: Receiver,
}

pub fn text<'s>(node: Node<'_>, src: &'s str) -> &'s str {
    src.get(node.byte_range()).unwrap_or("")
}

/// Reads the callee of a call node (`call_expression` / `call`).
pub fn call_target(lang: Language, call: Node<'_>, src: &str) -> Option<CallTarget> {
    let mut func = call.child_by_field_name("function")?;
    if func.kind() == "generic_function" {
        func = func.child_by_field_name("function")?;
    }
    let plain = |name: &str, receiver: Receiver| {
        Some(CallTarget {
            name: name.to_string(),
            receiver,
        })
    };
    match (lang, func.kind()) {
        (_, "identifier") => plain(text(func, src), Receiver::None),
        (Language::C, "field_expression") => {
            let field = func.child_by_field_name("field")?;
            plain(text(field, src), Receiver::Other)
        }
        (Language::Python, "attribute") => {
            let attr = func.child_by_field_name("attribute")?;
            let object = func.child_by_field_name("object")?;
            let recv = match (object.kind(), text(object, src)) {
                ("identifier", "self" | "cls") => Receiver::SelfRef,
                ("identifier", name) => Receiver::Path(name.to_string()),
                ("attribute", _) => {
                    // `a.b.f()`: keep the last qualifier segment, like `b`.
                    let last = object
                        .child_by_field_name("attribute")
                        .map(|n| text(n, src).to_string())
                        .unwrap_or_default();
                    Receiver::Path(last)
                }
                _ => Receiver::Other,
            };
            plain(text(attr, src), recv)
        }
        (Language::Rust, "scoped_identifier") => {
            let name = func.child_by_field_name("name")?;
            let recv = match func.child_by_field_name("path") {
                Some(p) if text(p, src) == "Self" => Receiver::SelfRef,
                Some(p) => {
                    let path_text = text(p, src);
                    let last = path_text.rsplit("::").next().unwrap_or(path_text);
                    // Strip generics such as `Vec::<u8>`.
                    let last = last.split('<').next().unwrap_or(last);
                    Receiver::Path(last.to_string())
                }
                None => Receiver::Other,
            };
            plain(text(name, src), recv)
        }
        (Language::Rust, "field_expression") => {
            let field = func.child_by_field_name("field")?;
            let recv = match func.child_by_field_name("value") {
                Some(v) if v.kind() == "self" => Receiver::SelfRef,
                _ => Receiver::Other,
            };
            plain(text(field, src), recv)
        }
        _ => None,
    }
}

/// The name of a Rust macro invocation without `!` (`assert` for
/// `assert!(..)`, `vec` for `std::vec![..]`).
pub fn macro_name<'s>(node: Node<'_>, src: &'s str) -> &'s str {
    let Some(m) = node.child_by_field_name("macro") else {
        return "";
    };
    let t = text(m, src);
    t.rsplit("::").next().unwrap_or(t)
}

/// Depth-first pre-order walk. `visit` returns whether to descend into the
/// node's children. Iterative (tree cursor), so deep trees cannot overflow
/// the stack.
pub fn walk<'t>(root: Node<'t>, mut visit: impl FnMut(Node<'t>) -> bool) {
    let mut cursor = root.walk();
    let mut descend = visit(cursor.node());
    loop {
        if descend && cursor.goto_first_child() {
            descend = visit(cursor.node());
            continue;
        }
        loop {
            if cursor.node() == root {
                return;
            }
            if cursor.goto_next_sibling() {
                descend = visit(cursor.node());
                break;
            }
            if !cursor.goto_parent() {
                return;
            }
        }
    }
}

/// Whether `kind` is in `kinds`.
pub fn is(kinds: &[&str], kind: &str) -> bool {
    kinds.contains(&kind)
}
