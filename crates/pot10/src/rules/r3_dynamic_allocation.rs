//! R3 - no dynamic memory allocation after initialization.
//!
//! Checked exactly (unit: function): every allocation call inside a
//! function that is not initialization code. Initialization code is a
//! function whose name matches `Config::init_function_patterns` (default
//! `main`, `init`, `init_*`, `*_init`, `initialize*`, `setup`, `setup_*`,
//! `new`, `with_capacity`, `from_*`, `load*`, `build*`, `create*`,
//! `__init__`, `__new__`) or that is marked with a `pot10: init` comment on
//! the line above it, plus everything nested in it. Top-level code (Python
//! module import, Rust `static` initializers) is initialization too.
//!
//! Allocation calls, per language:
//! - C: `malloc`, `calloc`, `realloc`, `reallocarray`, `aligned_alloc`,
//!   `posix_memalign`, `memalign`, `valloc`, `pvalloc`, `strdup`, `strndup`,
//!   `alloca`. `free` is not counted (it releases, it does not allocate).
//! - Rust: `Box::new`, `Rc::new`, `Arc::new`, `Vec::with_capacity`,
//!   `String::with_capacity`, `String::from`, `HashMap::with_capacity`,
//!   the macros `vec!` and `format!`, and the growing or copying methods
//!   `.push`, `.push_str`, `.extend`, `.insert`, `.to_vec`, `.to_string`,
//!   `.to_owned`, `.collect`. `Vec::new()`/`String::new()` do not allocate
//!   and are not counted.
//! - Python: `list()`, `dict()`, `set()`, `bytearray()`, `.append`,
//!   `.extend`, `.insert`, `.copy`, `copy.deepcopy`, and array
//!   constructors on `np`/`numpy`/`torch` (`zeros`, `ones`, `empty`,
//!   `full`, `array`, `tensor`, `arange`, `rand`, `randn`, `*_like`).
//!
//! Allocation through wrappers and hooks counts too: a call that resolves
//! (see `callgraph`) to a function that returns a C pointer or a Rust
//! owning heap type (`Vec`, `String`, `Box`, ...) and allocates,
//! directly or through another such function (`cJSON_malloc`,
//! `cJSON_New_Item`), and in C a call through a function-pointer field
//! whose name says it allocates (`hooks->allocate(..)`, `malloc_fn(..)`:
//! a field name containing `alloc`, not `free`/`dealloc`).
//!
//! Approximation: Python and Rust allocate implicitly almost everywhere
//! (temporaries, literals, closures); only the explicit calls above are
//! seen. A method name such as `.insert` is counted whatever the receiver's
//! type. Holzmann forbids allocation after an initialization *phase*; we
//! approximate the phase by function names.

use std::collections::HashMap;

use super::callgraph::{CallGraph, FnRef, Resolver};
use super::{finding, walk_file, Ctx, Outcome, Unit};
use crate::config::Language;
use crate::lang::{self, Receiver};
use crate::report::Severity;
use crate::source::SourceFile;

const C_ALLOC: &[&str] = &[
    "malloc",
    "calloc",
    "realloc",
    "reallocarray",
    "aligned_alloc",
    "posix_memalign",
    "memalign",
    "valloc",
    "pvalloc",
    "strdup",
    "strndup",
    "alloca",
];
const RUST_PATH_ALLOC: &[(&str, &str)] = &[
    ("Box", "new"),
    ("Rc", "new"),
    ("Arc", "new"),
    ("Vec", "with_capacity"),
    ("String", "with_capacity"),
    ("String", "from"),
    ("HashMap", "with_capacity"),
];
const RUST_METHOD_ALLOC: &[&str] = &[
    "push",
    "push_str",
    "extend",
    "insert",
    "to_vec",
    "to_string",
    "to_owned",
    "collect",
];
const RUST_MACRO_ALLOC: &[&str] = &["vec", "format"];
const PY_BUILTIN_ALLOC: &[&str] = &["list", "dict", "set", "bytearray"];
const PY_METHOD_ALLOC: &[&str] = &["append", "extend", "insert", "copy", "deepcopy"];
const PY_ARRAY_MODULES: &[&str] = &["np", "numpy", "torch"];
const PY_ARRAY_ALLOC: &[&str] = &[
    "zeros", "ones", "empty", "full", "array", "tensor", "arange", "rand", "randn",
];

pub fn check(ctx: &Ctx<'_>) -> Outcome {
    let mut out = Outcome {
        unit: "function",
        units: ctx.function_units(),
        ..Outcome::default()
    };
    let resolver = Resolver::new(ctx);
    let wrappers = allocation_wrappers(ctx, &resolver);
    for (fi, file) in ctx.parsed() {
        walk_file(file, |n| {
            let what =
                allocation(file, n).or_else(|| through_wrapper(ctx, &resolver, &wrappers, fi, n));
            let Some(what) = what else {
                return true;
            };
            let Some(func) = file.function_at(n.start_byte()) else {
                return true; // top level: initialization
            };
            if in_init(file, func) {
                return true;
            }
            out.findings.push(finding(
                fi,
                n,
                Severity::Error,
                format!(
                    "dynamic allocation `{what}` in `{}` after initialization; allocate in an init function (or mark it `pot10: init`) and reuse the buffer",
                    file.functions[func].name
                ),
                Unit::Function(func),
            ));
            true
        });
    }
    out
}

/// Functions that hand out freshly allocated memory: they return a
/// pointer (C) or an owning heap type (Rust) and allocate directly or call
/// another such function (a fixed point over
/// the call graph). Maps each to what it allocates with, for messages.
fn allocation_wrappers(ctx: &Ctx<'_>, resolver: &Resolver) -> HashMap<FnRef, String> {
    let mut wrappers: HashMap<FnRef, String> = HashMap::new();
    for (fi, file) in ctx.parsed() {
        walk_file(file, |n| {
            let direct = allocation(file, n).or_else(|| hook_call(file, n));
            if let (Some(what), Some(func)) = (direct, file.function_at(n.start_byte())) {
                if returns_heap(file.language, &file.functions[func].return_type) {
                    wrappers.entry((fi, func)).or_insert(what);
                }
            }
            true
        });
    }
    let graph = CallGraph::build(ctx, resolver);
    // Callers of wrappers that return a value are wrappers too; the graph
    // is finite, so this settles after at most |functions| rounds.
    for _round in 0..graph.graph.node_count() {
        let mut added = false;
        for edge in graph.graph.raw_edges() {
            let caller = graph.graph[edge.source()];
            let callee = graph.graph[edge.target()];
            let caller_file = &ctx.files[caller.0];
            let returns = returns_heap(
                caller_file.language,
                &caller_file.functions[caller.1].return_type,
            );
            if returns && !wrappers.contains_key(&caller) {
                if let Some(via) = wrappers.get(&callee) {
                    let name = &ctx.files[callee.0].functions[callee.1].name;
                    let via = format!("{name}() -> {via}");
                    wrappers.insert(caller, via);
                    added = true;
                }
            }
        }
        if !added {
            break;
        }
    }
    wrappers
}

/// A call to an allocation wrapper, or through an allocation hook (a C
/// function pointer field such as `hooks->allocate` or `malloc_fn`).
fn through_wrapper(
    ctx: &Ctx<'_>,
    resolver: &Resolver,
    wrappers: &HashMap<FnRef, String>,
    fi: usize,
    n: tree_sitter::Node<'_>,
) -> Option<String> {
    let file = &ctx.files[fi];
    if !lang::is(lang::table(file.language).calls, n.kind()) {
        return None;
    }
    if let Some(hook) = hook_call(file, n) {
        return Some(hook);
    }
    let t = lang::call_target(file.language, n, &file.text)?;
    let caller = file.function_at(n.start_byte());
    resolver
        .resolve(ctx, fi, caller, &t)
        .iter()
        .filter(|callee| caller.map(|c| (fi, c)) != Some(**callee))
        .find_map(|callee| wrappers.get(callee))
        .map(|via| format!("{}() (allocates: {via})", t.name))
}

/// Whether a return type can carry memory allocated inside the function:
/// a C pointer, or a Rust owning heap type. Python functions carry no
/// type, so Python wrappers are not followed.
fn returns_heap(lang: Language, ret: &Option<String>) -> bool {
    let Some(t) = ret else {
        return false;
    };
    match lang {
        Language::C => t.contains('*'),
        Language::Rust => [
            "Vec<",
            "String",
            "Box<",
            "Rc<",
            "Arc<",
            "HashMap<",
            "BTreeMap<",
            "VecDeque<",
        ]
        .iter()
        .any(|h| t.contains(h)),
        Language::Python => false,
    }
}

/// A C call through a function-pointer field named for allocation.
fn hook_call(file: &SourceFile, n: tree_sitter::Node<'_>) -> Option<String> {
    if file.language != Language::C || n.kind() != "call_expression" {
        return None;
    }
    let t = lang::call_target(file.language, n, &file.text)?;
    let lower = t.name.to_ascii_lowercase();
    let hook = t.receiver == Receiver::Other
        && lower.contains("alloc")
        && !lower.contains("dealloc")
        && !lower.contains("free");
    hook.then(|| format!("{}() (an allocation hook)", t.name))
}

/// A function is initialization code if it, or a function it is nested
/// in, is marked or named as init.
fn in_init(file: &SourceFile, func: usize) -> bool {
    let target = &file.functions[func];
    file.functions.iter().any(|f| {
        f.is_init
            && f.byte_range.start <= target.byte_range.start
            && target.byte_range.end <= f.byte_range.end
    })
}

/// The allocation a node performs, as printed in the finding.
fn allocation(file: &SourceFile, n: tree_sitter::Node<'_>) -> Option<String> {
    let src = file.text.as_str();
    match (file.language, n.kind()) {
        (Language::Rust, "macro_invocation") => {
            let m = lang::macro_name(n, src);
            RUST_MACRO_ALLOC.contains(&m).then(|| format!("{m}!"))
        }
        (lang, k) if lang::is(lang::table(lang).calls, k) => {
            let t = lang::call_target(lang, n, src)?;
            let name = t.name.as_str();
            let hit = match (lang, &t.receiver) {
                (Language::C, Receiver::None) => C_ALLOC.contains(&name),
                (Language::Rust, Receiver::Path(q)) => {
                    RUST_PATH_ALLOC.contains(&(q.as_str(), name))
                }
                (Language::Rust, Receiver::Other | Receiver::SelfRef) => {
                    RUST_METHOD_ALLOC.contains(&name)
                        && n.child_by_field_name("function")
                            .is_some_and(|f| f.kind() == "field_expression")
                }
                (Language::Python, Receiver::None) => PY_BUILTIN_ALLOC.contains(&name),
                (Language::Python, Receiver::Path(q)) => {
                    (PY_ARRAY_MODULES.contains(&q.as_str())
                        && (PY_ARRAY_ALLOC.contains(&name) || name.ends_with("_like")))
                        || PY_METHOD_ALLOC.contains(&name)
                }
                (Language::Python, _) => PY_METHOD_ALLOC.contains(&name),
                _ => false,
            };
            hit.then(|| match (&t.receiver, n.child_by_field_name("function")) {
                (Receiver::Path(q), _) if lang == Language::Rust => format!("{q}::{name}()"),
                (Receiver::Path(q), _) => format!("{q}.{name}()"),
                (_, Some(f)) if matches!(f.kind(), "field_expression" | "attribute") => {
                    format!(".{name}()")
                }
                _ => format!("{name}()"),
            })
        }
        _ => None,
    }
}
