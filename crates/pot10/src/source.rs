//! Front end: finds source files, parses them with tree-sitter and derives
//! the facts every rule needs (functions, statement lines, test code,
//! `pot10:` comment directives). Rules then only read a `SourceFile`.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use tree_sitter::{Node, Parser, Tree};

use super::config::{Config, Language, RuleId};
use super::error::Pot10Error;
use super::lang::{self, text, walk};
use super::preprocess::{self, Rewrite};

/// A function (or method) found in a file.
#[derive(Debug, Clone)]
pub struct Function {
    pub name: String,
    /// Enclosing `impl`/`trait` type (Rust) or class (Python).
    pub container: Option<String>,
    pub byte_range: Range<usize>,
    /// 0-based row of the function keyword (`fn`, `def`, return type in C).
    pub start_row: usize,
    pub end_row: usize,
    /// 0-based column of the start, for findings.
    pub start_col: usize,
    /// C: declared `static` (file-local linkage).
    pub is_static: bool,
    /// Source text of the declared return type, `None` when there is none
    /// (Rust/Python without annotation) or it is `void` (C).
    pub return_type: Option<String>,
    /// Named or marked as initialization code (R3).
    pub is_init: bool,
    /// Defined inside another function.
    pub nested: bool,
}

/// A part of a file that did not parse.
#[derive(Debug, Clone)]
pub struct UnparsedRegion {
    pub byte_range: Range<usize>,
    /// 0-based, inclusive.
    pub start_row: usize,
    pub end_row: usize,
    pub start_col: usize,
    /// A MISSING token the parser had to invent (zero width): its kind.
    pub missing: Option<String>,
}

/// A `pot10: allow(...)` comment.
#[derive(Debug, Clone)]
pub struct AllowDirective {
    pub row: usize,
    pub rules: Vec<RuleId>,
    pub reason: String,
    /// 0-based rows whose findings it covers.
    pub target_rows: BTreeSet<usize>,
}

/// A `pot10:` comment that could not be honoured, and why.
#[derive(Debug, Clone)]
pub struct BadDirective {
    pub row: usize,
    pub col: usize,
    pub text: String,
    pub problem: String,
}

pub struct SourceFile {
    pub path: PathBuf,
    /// Path as printed in findings (as discovered, relative when given so).
    pub display: String,
    pub language: Language,
    pub text: String,
    pub tree: Tree,
    pub line_count: usize,
    /// Regions the parser could not read (ERROR and MISSING nodes). The
    /// rest of the file is analyzed; these are reported, not scored.
    pub unparsed: Vec<UnparsedRegion>,
    /// Functions lost inside unparsed regions (estimated, see `index`).
    pub lost_functions: usize,
    /// Macro rewrites made before parsing (C only, see `preprocess`).
    pub rewrites: Vec<Rewrite>,
    pub functions: Vec<Function>,
    /// Byte ranges of test code to ignore (`#[cfg(test)]` modules, ...).
    pub skip_ranges: Vec<Range<usize>>,
    pub allows: Vec<AllowDirective>,
    pub bad_directives: Vec<BadDirective>,
    /// prefix[r] = number of code rows in 0..r.
    code_prefix: Vec<u32>,
}

impl SourceFile {
    /// Parses `text`. Never fails on bad source: what does not parse is
    /// recorded in `unparsed` and the rest is analyzed.
    pub fn parse(
        path: PathBuf,
        display: String,
        language: Language,
        text: String,
        config: &Config,
    ) -> Result<SourceFile, Pot10Error> {
        let mut parser = Parser::new();
        parser
            .set_language(&lang::grammar(language))
            .map_err(|e| Pot10Error::Grammar {
                language: language.to_string(),
                message: e.to_string(),
            })?;
        let no_tree = || Pot10Error::Grammar {
            language: language.to_string(),
            message: "parser returned no tree".to_string(),
        };
        let (text, tree, rewrites) = if language == Language::C {
            preprocess::parse_c(&mut parser, text, config).ok_or_else(no_tree)?
        } else {
            let tree = parser.parse(&text, None).ok_or_else(no_tree)?;
            (text, tree, Vec::new())
        };
        let line_count = text.lines().count().max(1);
        let mut file = SourceFile {
            path,
            display,
            language,
            text,
            tree,
            line_count,
            unparsed: Vec::new(),
            lost_functions: 0,
            rewrites,
            functions: Vec::new(),
            skip_ranges: Vec::new(),
            allows: Vec::new(),
            bad_directives: Vec::new(),
            code_prefix: Vec::new(),
        };
        file.index(config);
        Ok(file)
    }

    fn index(&mut self, config: &Config) {
        let table = lang::table(self.language);
        let src = self.text.as_str();
        let root = self.tree.root_node();
        let mut code_rows = vec![false; self.line_count + 1];
        let mut comments: Vec<Node<'_>> = Vec::new();
        let mut functions = Vec::new();
        let mut skip = Vec::new();
        let mut unparsed = Vec::new();
        let mut lost_functions = 0;
        let lang = self.language;
        walk(root, |node| {
            if node.is_error() || node.is_missing() {
                let (a, b) = (node.start_position().row, node.end_position().row);
                for row in code_rows
                    .iter_mut()
                    .take(b.min(self.line_count) + 1)
                    .skip(a)
                {
                    *row = true;
                }
                unparsed.push(UnparsedRegion {
                    byte_range: node.byte_range(),
                    start_row: a,
                    end_row: b,
                    start_col: node.start_position().column,
                    missing: node.is_missing().then(|| node.kind().to_string()),
                });
                lost_functions += lost_in(lang, node);
                return false;
            }
            let kind = node.kind();
            if lang::is(table.comments, kind) {
                comments.push(node);
                return false;
            }
            if lang == Language::Python && is_docstring(node) {
                return false;
            }
            if node.child_count() == 0 {
                let (a, b) = (node.start_position().row, node.end_position().row);
                for row in code_rows
                    .iter_mut()
                    .take(b.min(self.line_count) + 1)
                    .skip(a)
                {
                    *row = true;
                }
                return false;
            }
            if config.skip_tests && is_test_item(lang, node, src) {
                skip.push(node.byte_range());
                return false;
            }
            if lang::is(table.functions, kind) {
                if let Some(f) = read_function(lang, node, src, config) {
                    functions.push(f);
                }
            }
            true
        });
        self.unparsed = unparsed;
        self.lost_functions = lost_functions;
        let mut prefix = Vec::with_capacity(code_rows.len() + 1);
        let mut acc = 0u32;
        prefix.push(0);
        for &c in &code_rows {
            acc += u32::from(c);
            prefix.push(acc);
        }
        self.code_prefix = prefix;

        let mut init_rows = BTreeSet::new();
        let mut allows = Vec::new();
        let mut bad_directives = Vec::new();
        for c in comments {
            match read_directive(src, c, &code_rows) {
                Some(Directive::Allow(a)) => allows.push(a),
                Some(Directive::Init(rows)) => init_rows.extend(rows),
                Some(Directive::Bad(b)) => bad_directives.push(b),
                None => {}
            }
        }
        for f in &mut functions {
            if init_rows.contains(&f.start_row) {
                f.is_init = true;
            }
        }
        self.functions = functions;
        self.skip_ranges = skip;
        self.allows = allows;
        self.bad_directives = bad_directives;
    }

    /// Non-blank, non-comment rows in `rows` (0-based, inclusive range).
    pub fn code_lines(&self, first_row: usize, last_row: usize) -> usize {
        let hi = (last_row + 1).min(self.code_prefix.len() - 1);
        let lo = first_row.min(hi);
        (self.code_prefix[hi] - self.code_prefix[lo]) as usize
    }

    pub fn in_skipped(&self, byte: usize) -> bool {
        self.skip_ranges.iter().any(|r| r.contains(&byte))
    }

    /// Index of the innermost function containing `byte`.
    pub fn function_at(&self, byte: usize) -> Option<usize> {
        // `functions` is in pre-order, so sorted by start; the innermost
        // function containing `byte` is the last one that starts at or
        // before it and has not ended yet.
        let after = self
            .functions
            .partition_point(|f| f.byte_range.start <= byte);
        (0..after)
            .rev()
            .find(|&i| self.functions[i].byte_range.contains(&byte))
    }

    /// The syntax node of function `idx`.
    pub fn function_node(&self, idx: usize) -> Option<Node<'_>> {
        let f = self.functions.get(idx)?;
        let mut n = self
            .tree
            .root_node()
            .descendant_for_byte_range(f.byte_range.start, f.byte_range.end)?;
        let kinds = lang::table(self.language).functions;
        loop {
            if lang::is(kinds, n.kind()) && n.byte_range() == f.byte_range {
                return Some(n);
            }
            n = n.parent()?;
        }
    }

    pub fn node_text(&self, node: Node<'_>) -> &str {
        text(node, &self.text)
    }

    /// Whether `byte` lies in a region that did not parse.
    pub fn in_unparsed(&self, byte: usize) -> bool {
        self.unparsed
            .iter()
            .any(|r| r.missing.is_none() && r.byte_range.contains(&byte))
    }

    /// Number of lines touched by an unparsed region.
    pub fn unparsed_lines(&self) -> usize {
        let rows: BTreeSet<usize> = self
            .unparsed
            .iter()
            .flat_map(|r| r.start_row..=r.end_row)
            .filter(|r| *r < self.line_count)
            .collect();
        rows.len()
    }
}

/// Functions swallowed by an ERROR node, estimated: complete function
/// nodes inside it, plus (C) bodies `{ .. }` directly in it whose header did
/// not parse, or (Rust, Python) `fn`/`def` keywords outside those.
fn lost_in(lang: Language, error: Node<'_>) -> usize {
    let functions = lang::table(lang).functions;
    let mut n = 0;
    walk(error, |x| {
        if lang::is(functions, x.kind()) {
            n += 1;
            return false;
        }
        let header_lost = match lang {
            Language::C => x.kind() == "compound_statement" && x.parent() == Some(error),
            Language::Rust => x.kind() == "fn" && x.child_count() == 0,
            Language::Python => x.kind() == "def" && x.child_count() == 0,
        };
        n += usize::from(header_lost);
        !header_lost
    });
    n
}

enum Directive {
    Allow(AllowDirective),
    Init(BTreeSet<usize>),
    Bad(BadDirective),
}

fn read_directive(src: &str, comment: Node<'_>, code_rows: &[bool]) -> Option<Directive> {
    let raw = text(comment, src);
    // Only a comment that *starts* with `pot10:` (after its markers) is a
    // directive; prose that mentions pot10 is not.
    let stripped = raw.trim_start_matches(['/', '*', '!', '#']).trim_start();
    if !stripped.starts_with("pot10:") {
        return None;
    }
    let pos = raw.len() - stripped.len();
    let row = comment.start_position().row;
    let col = comment.start_position().column;
    let body = raw[pos + "pot10:".len()..]
        .trim()
        .trim_end_matches("*/")
        .trim();
    let targets = target_rows(src, comment, code_rows);
    let bad = |problem: &str| BadDirective {
        row,
        col,
        text: raw.trim().to_string(),
        problem: problem.to_string(),
    };
    if let Some(rest) = body.strip_prefix("allow") {
        let rest = rest.trim_start();
        let Some(inner) = rest.strip_prefix('(') else {
            return Some(Directive::Bad(bad(
                "expected `allow(R<n>) reason`, for example `pot10: allow(R4) generated table`",
            )));
        };
        let Some(close) = inner.find(')') else {
            return Some(Directive::Bad(bad("missing `)` after the rule list")));
        };
        let mut rules = Vec::new();
        for part in inner[..close].split(',').filter(|p| !p.trim().is_empty()) {
            match part.parse::<RuleId>() {
                Ok(r) => rules.push(r),
                Err(e) => {
                    return Some(Directive::Bad(bad(&e)));
                }
            }
        }
        if rules.is_empty() {
            return Some(Directive::Bad(bad("no rule named in `allow()`")));
        }
        let reason = inner[close + 1..]
            .trim()
            .trim_start_matches([':', '-', '\u{2014}'])
            .trim()
            .to_string();
        if reason.is_empty() {
            return Some(Directive::Bad(bad(
                "a suppression needs a reason after the rule list, for example `pot10: allow(R4) generated table`; it is ignored until one is given",
            )));
        }
        Some(Directive::Allow(AllowDirective {
            row,
            rules,
            reason,
            target_rows: targets,
        }))
    } else if body.starts_with("init") {
        Some(Directive::Init(targets))
    } else {
        Some(Directive::Bad(bad(
            "unknown `pot10:` directive; use `pot10: allow(R<n>) reason` or `pot10: init`",
        )))
    }
}

/// Rows a directive comment applies to: its own row when code precedes
/// it there (trailing comment), otherwise the next code row, extended
/// over attribute/decorator rows to the item they decorate.
fn target_rows(src: &str, comment: Node<'_>, code_rows: &[bool]) -> BTreeSet<usize> {
    let row = comment.start_position().row;
    let mut out = BTreeSet::new();
    let line_start = src[..comment.start_byte()].rfind('\n').map_or(0, |i| i + 1);
    if !src[line_start..comment.start_byte()].trim().is_empty() {
        out.insert(row);
        return out;
    }
    let lines: Vec<&str> = src.lines().collect();
    let mut r = comment.end_position().row + 1;
    while r < code_rows.len() && r < lines.len() {
        if code_rows[r] {
            out.insert(r);
            let t = lines[r].trim_start();
            if !(t.starts_with("#[") || t.starts_with('@')) {
                break;
            }
        }
        r += 1;
    }
    out
}

fn is_docstring(node: Node<'_>) -> bool {
    if node.kind() != "expression_statement" {
        return false;
    }
    let only_string =
        node.named_child_count() == 1 && node.named_child(0).is_some_and(|c| c.kind() == "string");
    let first_in_body = node
        .parent()
        .is_some_and(|p| matches!(p.kind(), "block" | "module") && p.named_child(0) == Some(node));
    only_string && first_in_body
}

/// Rust `#[test]` functions and `#[cfg(test)]` modules, Python `test_*`
/// functions. Attributes precede the item as siblings in tree-sitter-rust.
fn is_test_item(lang: Language, node: Node<'_>, src: &str) -> bool {
    match (lang, node.kind()) {
        (Language::Rust, "function_item" | "mod_item") => {
            let mut prev = node.prev_sibling();
            while let Some(p) = prev {
                match p.kind() {
                    "attribute_item" => {
                        let t = text(p, src);
                        let inner = t.trim_start_matches("#[").trim_end_matches(']');
                        let is_test_attr = inner == "test"
                            || inner.ends_with("::test")
                            || (inner.starts_with("cfg(") && has_word(inner, "test"));
                        if is_test_attr {
                            return true;
                        }
                    }
                    "line_comment" | "block_comment" => {}
                    _ => break,
                }
                prev = p.prev_sibling();
            }
            false
        }
        (Language::Python, "function_definition") => node
            .child_by_field_name("name")
            .is_some_and(|n| text(n, src).starts_with("test_")),
        _ => false,
    }
}

fn has_word(haystack: &str, word: &str) -> bool {
    haystack
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .any(|w| w == word)
}

fn read_function(lang: Language, node: Node<'_>, src: &str, config: &Config) -> Option<Function> {
    let start = node.start_position();
    let mut is_static = false;
    let (name, return_type) = match lang {
        Language::C => {
            let mut d = node.child_by_field_name("declarator")?;
            let mut pointer_return = false;
            while d.kind() != "function_declarator" {
                if d.kind() == "pointer_declarator" {
                    pointer_return = true;
                }
                d = d.child_by_field_name("declarator")?;
            }
            let name_node = d.child_by_field_name("declarator")?;
            let mut c = node.walk();
            is_static = node
                .children(&mut c)
                .any(|ch| ch.kind() == "storage_class_specifier" && text(ch, src) == "static");
            let ty = node
                .child_by_field_name("type")
                .map(|t| text(t, src).to_string())
                .unwrap_or_default();
            let ret = if ty == "void" && !pointer_return {
                None
            } else if pointer_return {
                Some(format!("{ty} *"))
            } else {
                Some(ty)
            };
            (text(name_node, src).to_string(), ret)
        }
        Language::Python | Language::Rust => {
            let name = text(node.child_by_field_name("name")?, src).to_string();
            let ret = node
                .child_by_field_name("return_type")
                .map(|t| text(t, src).trim().to_string())
                .filter(|t| t != "()" && t != "None");
            (name, ret)
        }
    };
    let mut container = None;
    let mut nested = false;
    let mut p = node.parent();
    while let Some(n) = p {
        match (lang, n.kind()) {
            (_, k) if lang::is(lang::table(lang).functions, k) => {
                nested = true;
                break;
            }
            (Language::Python, "class_definition") => {
                container = n
                    .child_by_field_name("name")
                    .map(|x| text(x, src).to_string());
                break;
            }
            (Language::Rust, "impl_item") => {
                container = n
                    .child_by_field_name("type")
                    .map(|t| base_type_name(t, src));
                break;
            }
            (Language::Rust, "trait_item") => {
                container = n
                    .child_by_field_name("name")
                    .map(|x| text(x, src).to_string());
                break;
            }
            _ => {}
        }
        p = n.parent();
    }
    let is_init = config.is_init_name(&name);
    Some(Function {
        name,
        container,
        byte_range: node.byte_range(),
        start_row: start.row,
        end_row: node.end_position().row,
        start_col: start.column,
        is_static,
        return_type,
        is_init,
        nested,
    })
}

/// `Foo` for `Foo`, `Foo<T>`, `crate::m::Foo<T>`, `&Foo`.
pub fn base_type_name(ty: Node<'_>, src: &str) -> String {
    let t = text(ty, src);
    let t = t.split('<').next().unwrap_or(t);
    let t = t.rsplit("::").next().unwrap_or(t);
    t.trim_start_matches('&').trim().to_string()
}

/// Files to analyze, in a stable order, each with the language it is read as.
pub fn discover(config: &Config) -> Result<Vec<(PathBuf, String, Language)>, Pot10Error> {
    if config.paths.is_empty() {
        return Err(Pot10Error::NoPaths);
    }
    let mut out: BTreeMap<PathBuf, (String, Language)> = BTreeMap::new();
    for root in &config.paths {
        if !root.exists() {
            return Err(Pot10Error::PathNotFound(root.clone()));
        }
        if root.is_file() {
            // An explicitly named file is analyzed even if it looks like a test.
            if let Some(lang) = Language::from_path(root).filter(|l| config.language_enabled(*l)) {
                out.insert(root.clone(), (root.display().to_string(), lang));
            }
            continue;
        }
        let excluded: Vec<String> = config.exclude_dirs.clone();
        let skip_tests = config.skip_tests;
        let root_for_filter = root.clone();
        let walker = ignore::WalkBuilder::new(root)
            .require_git(false)
            .sort_by_file_name(|a, b| a.cmp(b))
            .filter_entry(move |e| {
                let is_dir = e.file_type().is_some_and(|t| t.is_dir());
                let name = e.file_name().to_string_lossy();
                if is_dir && e.path() != root_for_filter {
                    if excluded.iter().any(|x| x.as_str() == name) {
                        return false;
                    }
                    if skip_tests && matches!(name.as_ref(), "tests" | "test" | "benches") {
                        return false;
                    }
                }
                true
            })
            .build();
        for entry in walker {
            let entry = entry.map_err(|e| Pot10Error::Walk {
                path: root.clone(),
                message: e.to_string(),
            })?;
            let path = entry.path();
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                continue;
            }
            let Some(lang) = Language::from_path(path).filter(|l| config.language_enabled(*l))
            else {
                continue;
            };
            if config.skip_tests && lang == Language::Python && is_python_test_file(path) {
                continue;
            }
            out.insert(path.to_path_buf(), (path.display().to_string(), lang));
        }
    }
    Ok(out.into_iter().map(|(p, (d, l))| (p, d, l)).collect())
}

/// Rust files that are test modules declared elsewhere (`#[cfg(test)] mod
/// tests;` puts the module in `tests.rs` next to its parent, or under the
/// parent's own folder): test code as much as an inline `mod tests { .. }`,
/// so `skip_tests` drops them too. Their own out-of-line submodules follow.
pub fn out_of_line_test_modules(files: &[SourceFile]) -> BTreeSet<PathBuf> {
    let mut test_files: BTreeSet<PathBuf> = BTreeSet::new();
    loop {
        let before = test_files.len();
        for f in files.iter().filter(|f| f.language == Language::Rust) {
            let parent_is_test = test_files.contains(&f.path);
            let src = f.text.as_str();
            walk(f.tree.root_node(), |n| {
                if n.kind() != "mod_item" {
                    return true;
                }
                let declared = n.child_by_field_name("body").is_none();
                if declared && (parent_is_test || is_test_item(Language::Rust, n, src)) {
                    if let Some(name) = n.child_by_field_name("name") {
                        test_files.extend(module_files(&f.path, text(name, src)));
                    }
                }
                false
            });
        }
        if test_files.len() == before {
            return test_files;
        }
    }
}

/// Where `mod name;` declared in `parent` may live.
fn module_files(parent: &Path, name: &str) -> Vec<PathBuf> {
    let Some(dir) = parent.parent() else {
        return Vec::new();
    };
    let stem = parent.file_stem().map(|s| s.to_string_lossy().into_owned());
    let base = match stem.as_deref() {
        Some("mod" | "lib" | "main") | None => dir.to_path_buf(),
        Some(stem) => dir.join(stem),
    };
    vec![
        base.join(format!("{name}.rs")),
        base.join(name).join("mod.rs"),
    ]
}

fn is_python_test_file(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    name.starts_with("test_") || name.ends_with("_test.py") || name == "conftest.py"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lang: Language, src: &str) -> SourceFile {
        SourceFile::parse(
            PathBuf::from("x"),
            "x".to_string(),
            lang,
            src.to_string(),
            &Config::default(),
        )
        .expect("grammar loads")
    }

    #[test]
    fn statement_lines_skip_comments_blanks_and_docstrings() {
        let f = parse(
            Language::Python,
            "def f(x):\n    \"\"\"Doc\n    string.\"\"\"\n\n    # note\n    y = x\n    return y\n",
        );
        let func = &f.functions[0];
        assert_eq!(f.code_lines(func.start_row, func.end_row), 3);
        let r = parse(
            Language::Rust,
            "/// doc\nfn f() {\n    // c\n    let s = \"a\n b\";\n}\n",
        );
        let func = &r.functions[0];
        // `fn f() {`, the two lines of the string literal, `}`.
        assert_eq!(r.code_lines(func.start_row, func.end_row), 4);
    }

    #[test]
    fn allow_comment_above_attributes_reaches_the_item() {
        let f = parse(
            Language::Rust,
            "// pot10: allow(R4, R5) generated code\n#[inline]\n#[must_use]\nfn f() -> u8 {\n    1\n}\n",
        );
        assert_eq!(f.allows.len(), 1);
        let a = &f.allows[0];
        assert_eq!(a.rules, vec![RuleId::R4, RuleId::R5]);
        assert_eq!(a.reason, "generated code");
        assert!(a.target_rows.contains(&3), "{:?}", a.target_rows);
        assert!(!a.target_rows.contains(&4));
    }

    #[test]
    fn bad_directives_are_kept_with_their_problem() {
        let f = parse(
            Language::Python,
            "x = 1  # pot10: allow(R4)\ny = 2  # pot10: allow(R42) why\nz = 3  # pot10: frobnicate\n# mentions pot10: in prose\n",
        );
        assert!(f.allows.is_empty());
        let problems: Vec<&str> = f
            .bad_directives
            .iter()
            .map(|b| b.problem.as_str())
            .collect();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("needs a reason"));
        assert!(problems[1].contains("unknown rule `R42`"));
        assert!(problems[2].contains("unknown `pot10:` directive"));
    }

    #[test]
    fn unparsable_source_is_recorded_not_fatal() {
        let f = parse(Language::C, "int f( {\n");
        assert!(!f.unparsed.is_empty());
        let f = parse(
            Language::C,
            "int ok(int a) { return a; }\n@@@ garbage @@@;\nint ok2(int b) { return b; }\n",
        );
        let names: Vec<&str> = f.functions.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["ok", "ok2"]);
        assert_eq!(f.unparsed_lines(), 1);
    }

    #[test]
    fn function_at_finds_the_innermost_function() {
        let f = parse(
            Language::Python,
            "def outer():\n    def inner():\n        return 1\n    return inner\n",
        );
        let inner_byte = f.text.find("return 1").expect("present");
        let outer_byte = f.text.find("return inner").expect("present");
        assert_eq!(
            f.functions[f.function_at(inner_byte).expect("inner")].name,
            "inner"
        );
        assert_eq!(
            f.functions[f.function_at(outer_byte).expect("outer")].name,
            "outer"
        );
        assert_eq!(f.function_at(0), Some(0));
    }
}
