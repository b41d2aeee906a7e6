//! Name resolution for calls and the call graph over all analyzed files,
//! shared by R1 (recursion) and R7 (ignored return values).
//!
//! Resolution is syntactic and deliberately conservative, so that shared
//! names in different files do not create false cycles:
//! - a plain call `f()` goes to a function `f` in the same file when there
//!   is one; otherwise to `f` in other files only when it can come from
//!   there (C: non-`static` definitions; Python: `from m import f`, resolved
//!   to files named `m.py`; Rust: `f` named in a `use` declaration or a glob
//!   `use`);
//! - `self.f()` / `Self::f()` / `cls.f()` go to methods of the caller's own
//!   class / impl type (Rust: any `impl` of that type in any file);
//! - `q::f()` / `q.f()` go to methods of a type `q` or to free functions in
//!   a file (module) whose stem is `q`;
//! - anything else (`x.f()` on an arbitrary receiver, function pointers,
//!   calls inside macro token trees) is unresolved. Recursion through those
//!   is therefore missed: an approximation of Holzmann's "direct or indirect
//!   recursion".

use std::collections::{HashMap, HashSet};

use petgraph::graph::{DiGraph, NodeIndex};

use super::{walk_file, Ctx};
use crate::config::Language;
use crate::lang::{self, CallTarget, Receiver};
use crate::source::SourceFile;

/// A function by (file index, index in `SourceFile::functions`).
pub type FnRef = (usize, usize);

/// Lookup tables for resolving calls in one analysis.
pub struct Resolver {
    /// (file, name) -> free functions in that file.
    local: HashMap<(usize, String), Vec<usize>>,
    /// name -> free functions visible from other files (language-filtered).
    exported: HashMap<(Language, String), Vec<FnRef>>,
    /// (language, container, name) -> methods.
    methods: HashMap<(Language, String, String), Vec<FnRef>>,
    /// (language, file stem) -> files.
    stems: HashMap<(Language, String), Vec<usize>>,
    /// Per file: names it imports from elsewhere (Python: name -> module
    /// stem; Rust: name -> "" for `use`d names).
    imports: Vec<HashMap<String, String>>,
    /// Per file (Rust): has a glob `use ...::*`.
    glob_use: Vec<bool>,
}

impl Resolver {
    pub fn new(ctx: &Ctx<'_>) -> Resolver {
        let mut r = Resolver {
            local: HashMap::new(),
            exported: HashMap::new(),
            methods: HashMap::new(),
            stems: HashMap::new(),
            imports: vec![HashMap::new(); ctx.files.len()],
            glob_use: vec![false; ctx.files.len()],
        };
        for (fi, file) in ctx.parsed() {
            let lang = file.language;
            if let Some(stem) = module_stem(file) {
                r.stems.entry((lang, stem)).or_default().push(fi);
            }
            for (idx, f) in file.functions.iter().enumerate() {
                match &f.container {
                    None => {
                        r.local.entry((fi, f.name.clone())).or_default().push(idx);
                        if !(f.nested || lang == Language::C && f.is_static) {
                            r.exported
                                .entry((lang, f.name.clone()))
                                .or_default()
                                .push((fi, idx));
                        }
                    }
                    Some(c) => {
                        r.methods
                            .entry((lang, c.clone(), f.name.clone()))
                            .or_default()
                            .push((fi, idx));
                    }
                }
            }
            r.read_imports(fi, file);
        }
        r
    }

    fn read_imports(&mut self, fi: usize, file: &SourceFile) {
        let src = file.text.as_str();
        let mut imports = HashMap::new();
        let mut glob = false;
        walk_file(file, |n| match (file.language, n.kind()) {
            (Language::Python, "import_from_statement") => {
                let module = n
                    .child_by_field_name("module_name")
                    .map(|m| lang::text(m, src))
                    .unwrap_or("");
                let stem = module.rsplit('.').next().unwrap_or(module).to_string();
                let mut c = n.walk();
                for name in n.children_by_field_name("name", &mut c) {
                    let imported = match name.kind() {
                        "aliased_import" => name.child_by_field_name("name"),
                        _ => Some(name),
                    };
                    if let Some(i) = imported {
                        imports.insert(lang::text(i, src).to_string(), stem.clone());
                    }
                }
                false
            }
            (Language::Rust, "use_declaration") => {
                let t = lang::text(n, src);
                glob |= t.contains('*');
                for word in t.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
                    if !word.is_empty() {
                        imports.insert(word.to_string(), String::new());
                    }
                }
                false
            }
            _ => true,
        });
        self.imports[fi] = imports;
        self.glob_use[fi] = glob;
    }

    /// Functions a call may reach (empty when unresolved).
    pub fn resolve(
        &self,
        ctx: &Ctx<'_>,
        fi: usize,
        caller: Option<usize>,
        target: &CallTarget,
    ) -> Vec<FnRef> {
        let file = &ctx.files[fi];
        let lang = file.language;
        let name = &target.name;
        let caller_container = caller.and_then(|c| file.functions[c].container.clone());
        match &target.receiver {
            Receiver::None => {
                if let Some(local) = self.local.get(&(fi, name.clone())) {
                    return local.iter().map(|&i| (fi, i)).collect();
                }
                let others = || -> Vec<FnRef> {
                    self.exported
                        .get(&(lang, name.clone()))
                        .map(|v| v.iter().copied().filter(|(f, _)| *f != fi).collect())
                        .unwrap_or_default()
                };
                match lang {
                    Language::C => others(),
                    Language::Python => match self.imports[fi].get(name) {
                        Some(stem) => {
                            let in_module = self.free_in_stem(lang, stem, name);
                            if in_module.is_empty() {
                                others()
                            } else {
                                in_module
                            }
                        }
                        None => Vec::new(),
                    },
                    Language::Rust => {
                        if self.imports[fi].contains_key(name) || self.glob_use[fi] {
                            others()
                        } else {
                            Vec::new()
                        }
                    }
                }
            }
            Receiver::SelfRef => {
                let Some(container) = caller_container else {
                    return Vec::new();
                };
                let found = self
                    .methods
                    .get(&(lang, container, name.clone()))
                    .cloned()
                    .unwrap_or_default();
                if lang == Language::Python {
                    // Python classes are per module: same file only.
                    found.into_iter().filter(|(f, _)| *f == fi).collect()
                } else {
                    found
                }
            }
            Receiver::Path(q) => {
                if lang == Language::Rust && matches!(q.as_str(), "self" | "super" | "crate") {
                    let target = CallTarget {
                        name: name.clone(),
                        receiver: Receiver::None,
                    };
                    return self.resolve(ctx, fi, caller, &target);
                }
                if let Some(m) = self.methods.get(&(lang, q.clone(), name.clone())) {
                    return if lang == Language::Python {
                        m.iter().copied().filter(|(f, _)| *f == fi).collect()
                    } else {
                        m.clone()
                    };
                }
                self.free_in_stem(lang, q, name)
            }
            Receiver::Other => Vec::new(),
        }
    }

    fn free_in_stem(&self, lang: Language, stem: &str, name: &str) -> Vec<FnRef> {
        let Some(files) = self.stems.get(&(lang, stem.to_string())) else {
            return Vec::new();
        };
        files
            .iter()
            .flat_map(|&f| {
                self.local
                    .get(&(f, name.to_string()))
                    .into_iter()
                    .flatten()
                    .map(move |&i| (f, i))
            })
            .collect()
    }
}

/// `util` for `src/util.rs`, `src/util/mod.rs`, `pkg/util.py`,
/// `pkg/util/__init__.py`.
fn module_stem(file: &SourceFile) -> Option<String> {
    let stem = file.path.file_stem()?.to_string_lossy().to_string();
    if stem == "mod" || stem == "__init__" {
        return file
            .path
            .parent()?
            .file_name()
            .map(|n| n.to_string_lossy().to_string());
    }
    Some(stem)
}

/// The resolved call graph: one node per function of every parsed file.
pub struct CallGraph {
    pub graph: DiGraph<FnRef, ()>,
    pub nodes: HashMap<FnRef, NodeIndex>,
}

impl CallGraph {
    pub fn build(ctx: &Ctx<'_>, resolver: &Resolver) -> CallGraph {
        let mut graph = DiGraph::new();
        let mut nodes = HashMap::new();
        for (fi, file) in ctx.parsed() {
            for idx in 0..file.functions.len() {
                nodes.insert((fi, idx), graph.add_node((fi, idx)));
            }
        }
        let mut edges = HashSet::new();
        for (fi, file) in ctx.parsed() {
            let calls = lang::table(file.language).calls;
            walk_file(file, |n| {
                if lang::is(calls, n.kind()) {
                    if let (Some(caller), Some(t)) = (
                        file.function_at(n.start_byte()),
                        lang::call_target(file.language, n, &file.text),
                    ) {
                        for callee in resolver.resolve(ctx, fi, Some(caller), &t) {
                            edges.insert(((fi, caller), callee));
                        }
                    }
                }
                true
            });
        }
        let mut edges: Vec<_> = edges.into_iter().collect();
        edges.sort_unstable();
        for (a, b) in edges {
            if let (Some(&x), Some(&y)) = (nodes.get(&a), nodes.get(&b)) {
                graph.add_edge(x, y, ());
            }
        }
        CallGraph { graph, nodes }
    }
}
