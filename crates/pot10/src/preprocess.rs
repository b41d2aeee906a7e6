//! C text preparation before parsing, so that a file is analyzed around
//! the macros a compiler would expand instead of being lost to them.
//!
//! tree-sitter parses C without running the preprocessor. Real libraries
//! put export, visibility and calling-convention macros in front of
//! declarations (`JSMN_API int jsmn_parse(..)`, `static void * CJSON_CDECL
//! f(..)`, `void *(CJSON_CDECL *malloc_fn)(size_t)`) and wrap headers in
//! `#ifdef __cplusplus extern "C" { #endif` guards whose braces the parser
//! cannot pair. Each of these used to make the whole file unanalyzable.
//! Three passes, all of which keep every byte offset and line of the file
//! (replacements are padded with spaces and keep newlines), so findings
//! still point at the real source:
//!
//! 1. `Config::macros`: user-defined expansions, applied everywhere in code
//!    (not in comments, strings or preprocessor lines).
//! 2. `extern "C"` guards: an `#ifdef __cplusplus` (or `#if
//!    defined(__cplusplus)`) block holding only `extern "C" {` or only `}`
//!    is blanked; C never compiles it anyway.
//! 3. Inferred attribute macros: when the parse has errors, an all-caps
//!    identifier that is the error (or stands right before it) outside any
//!    function body is taken for an attribute-like macro and removed
//!    (a function-like one, `NAME(args)`, keeps its arguments). The file
//!    is re-parsed and the change is kept only if the error region shrank.
//!
//! Every rewrite is reported (`Rewrite`), so a reader can see what was
//! assumed. What still does not parse becomes an unparsed region of its
//! own, never a silent skip.

use std::collections::BTreeMap;

use tree_sitter::{Node, Parser, Tree};

use super::config::Config;

/// A configured macro: `NAME` or `NAME(a, b)` with its replacement.
#[derive(Debug, Clone)]
pub struct MacroDef {
    pub name: String,
    pub params: Option<Vec<String>>,
    pub body: String,
}

impl MacroDef {
    /// Reads a `macros:` key; `None` when it is not `NAME` / `NAME(a, ..)`.
    pub fn parse(key: &str, body: &str) -> Option<MacroDef> {
        let key = key.trim();
        let (name, params) = match key.find('(') {
            None => (key, None),
            Some(open) => {
                let inner = key[open + 1..].strip_suffix(')')?;
                let params: Vec<String> = inner
                    .split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect();
                if !params.iter().all(|p| is_identifier(p)) {
                    return None;
                }
                (key[..open].trim(), Some(params))
            }
        };
        is_identifier(name).then(|| MacroDef {
            name: name.to_string(),
            params,
            body: body.to_string(),
        })
    }
}

/// How a rewrite came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RewriteKind {
    /// From `Config::macros`.
    Configured,
    /// An `extern "C"` guard for C++ compilers.
    CppGuard,
    /// An all-caps name in front of a declaration that did not parse.
    InferredAttributeMacro,
}

/// One kind of rewrite of one name in one file, with how often it applied.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rewrite {
    pub name: String,
    pub kind: RewriteKind,
    pub count: usize,
    /// Occurrences left alone (expansion longer than the invocation).
    pub not_applied: usize,
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `JSMN_API`, `CJSON_CDECL`: upper case, digits and `_`, with a letter.
fn is_macro_like(s: &str) -> bool {
    s.len() >= 2
        && is_identifier(s)
        && s.bytes().any(|b| b.is_ascii_uppercase())
        && !s.bytes().any(|b| b.is_ascii_lowercase())
}

/// For every byte: is it C code (not a comment, string or character
/// literal, and not on a preprocessor line)?
pub fn code_mask(src: &[u8]) -> Vec<bool> {
    let mut mask = vec![true; src.len()];
    let mut i = 0;
    let mut line_start = true;
    while i < src.len() {
        let c = src[i];
        if line_start && c == b'#' {
            // Preprocessor line, with backslash continuations.
            while i < src.len() && !(src[i] == b'\n' && (i == 0 || src[i - 1] != b'\\')) {
                mask[i] = false;
                i += 1;
            }
            continue;
        }
        if c == b'\n' {
            line_start = true;
            i += 1;
            continue;
        }
        if !c.is_ascii_whitespace() {
            line_start = false;
        }
        let rest = &src[i..];
        let end = if rest.starts_with(b"//") {
            rest.iter()
                .position(|&b| b == b'\n')
                .map_or(src.len(), |p| i + p)
        } else if rest.starts_with(b"/*") {
            find(rest, b"*/", 2).map_or(src.len(), |p| i + p + 2)
        } else if c == b'"' || c == b'\'' {
            let mut j = i + 1;
            while j < src.len() && src[j] != c && src[j] != b'\n' {
                j += if src[j] == b'\\' { 2 } else { 1 };
            }
            (j + 1).min(src.len())
        } else {
            i += 1;
            continue;
        };
        for m in &mut mask[i..end] {
            *m = false;
        }
        i = end;
    }
    mask
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    (from..=hay.len().checked_sub(needle.len())?).find(|&p| hay[p..].starts_with(needle))
}

/// Identifier tokens in code: (start, end).
fn identifiers(src: &[u8], mask: &[bool]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < src.len() {
        let b = src[i];
        if mask[i] && (b.is_ascii_alphabetic() || b == b'_') {
            let start = i;
            while i < src.len() && mask[i] && (src[i].is_ascii_alphanumeric() || src[i] == b'_') {
                i += 1;
            }
            let glued =
                start > 0 && (src[start - 1].is_ascii_alphanumeric() || src[start - 1] == b'_');
            if !glued {
                out.push((start, i));
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Byte ranges of the arguments of a macro call.
type ArgSpans = Vec<(usize, usize)>;

/// The `(..)` right after `pos` (whitespace allowed): (open, close, args).
fn call_args(src: &[u8], mask: &[bool], pos: usize) -> Option<(usize, usize, ArgSpans)> {
    let open = pos + src[pos..].iter().position(|b| !b.is_ascii_whitespace())?;
    if src[open] != b'(' || !mask[open] {
        return None;
    }
    let (mut depth, mut arg_start, mut args) = (0usize, open + 1, Vec::new());
    for (j, &b) in src.iter().enumerate().skip(open) {
        if !mask[j] {
            continue;
        }
        match b {
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    args.push((arg_start, j));
                    return Some((open, j, args));
                }
            }
            b',' if depth == 1 => {
                args.push((arg_start, j));
                arg_start = j + 1;
            }
            _ => {}
        }
    }
    None
}

/// Overwrites `src[start..end]` with `with`, padding with spaces and
/// keeping newlines; `false` (nothing written) when it does not fit.
fn overwrite(src: &mut [u8], start: usize, end: usize, with: &[u8]) -> bool {
    let first_newline = src[start..end].iter().position(|&b| b == b'\n');
    if with.len() > end - start || first_newline.is_some_and(|p| p < with.len()) {
        return false;
    }
    src[start..start + with.len()].copy_from_slice(with);
    for b in &mut src[start + with.len()..end] {
        if *b != b'\n' {
            *b = b' ';
        }
    }
    true
}

fn expand_configured(src: &mut [u8], defs: &[MacroDef], out: &mut Vec<Rewrite>) {
    if defs.is_empty() {
        return;
    }
    let mask = code_mask(src);
    let mut counts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut edits = Vec::new();
    for (s, e) in identifiers(src, &mask) {
        let Some(def) = defs.iter().find(|d| d.name.as_bytes() == &src[s..e]) else {
            continue;
        };
        let (end, replacement) = match &def.params {
            None => (e, def.body.clone()),
            Some(params) => {
                let Some((_, close, args)) = call_args(src, &mask, e) else {
                    continue;
                };
                let args: Vec<String> = args
                    .iter()
                    .map(|&(a, b)| String::from_utf8_lossy(&src[a..b]).trim().to_string())
                    .filter(|a| !a.is_empty() || !params.is_empty())
                    .collect();
                if args.len() != params.len() {
                    continue;
                }
                (close + 1, substitute(&def.body, params, &args))
            }
        };
        edits.push((s, end, replacement, def.name.as_str()));
    }
    for (s, end, replacement, name) in edits.into_iter().rev() {
        let slot = counts.entry(name).or_default();
        if overwrite(src, s, end, replacement.as_bytes()) {
            slot.0 += 1;
        } else {
            slot.1 += 1;
        }
    }
    for (name, (count, not_applied)) in counts {
        out.push(Rewrite {
            name: name.to_string(),
            kind: RewriteKind::Configured,
            count,
            not_applied,
        });
    }
}

/// Replaces whole-word parameter names in `body` by the arguments.
fn substitute(body: &str, params: &[String], args: &[String]) -> String {
    let mut out = String::with_capacity(body.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        match params.iter().position(|p| p == word) {
            Some(i) => out.push_str(&args[i]),
            None => out.push_str(word),
        }
        word.clear();
    };
    for c in body.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// Blanks `#ifdef __cplusplus` blocks that hold only `extern "C" {` or `}`.
fn blank_cpp_guards(src: &mut [u8], out: &mut Vec<Rewrite>) {
    let text = String::from_utf8_lossy(src).into_owned();
    let mut offsets = Vec::new();
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        offsets.push((pos, line));
        pos += line.len();
    }
    let squash = |s: &str| s.split_whitespace().collect::<String>();
    let mut count = 0;
    let mut i = 0;
    while i < offsets.len() {
        let head = squash(offsets[i].1);
        let opens = matches!(
            head.as_str(),
            "#ifdef__cplusplus" | "#ifdefined(__cplusplus)" | "#ifdefined__cplusplus"
        );
        if !opens {
            i += 1;
            continue;
        }
        let Some(end) =
            (i + 1..offsets.len()).find(|&j| offsets[j].1.trim_start().starts_with('#'))
        else {
            break;
        };
        let body: String = offsets[i + 1..end].iter().map(|(_, l)| squash(l)).collect();
        if squash(offsets[end].1) == "#endif" && (body == "extern\"C\"{" || body == "}") {
            for &(start, line) in &offsets[i + 1..end] {
                let len = line.trim_end_matches('\n').len();
                overwrite(src, start, start + len, b"");
            }
            count += 1;
        }
        i = end + 1;
    }
    if count > 0 {
        out.push(Rewrite {
            name: "extern \"C\" guard".to_string(),
            kind: RewriteKind::CppGuard,
            count,
            not_applied: 0,
        });
    }
}

/// Total size of what did not parse: bytes in ERROR nodes plus one per
/// MISSING node.
pub fn error_weight(tree: &Tree) -> usize {
    let mut w = 0;
    super::lang::walk(tree.root_node(), |n| {
        if n.is_error() {
            w += n.byte_range().len().max(1);
            return false;
        }
        if n.is_missing() {
            w += 1;
        }
        n.has_error()
    });
    w
}

/// All-caps names that are, or stand right before, an ERROR node outside
/// any function body.
fn inferred_candidates(tree: &Tree, src: &[u8]) -> Vec<String> {
    let text = |n: Node<'_>| String::from_utf8_lossy(&src[n.byte_range()]).into_owned();
    let leaf_name = |n: Node<'_>| {
        let mut x = n;
        while x.child_count() == 1 {
            x = x.child(0)?;
        }
        (x.child_count() == 0 && x.kind().ends_with("identifier"))
            .then(|| text(x))
            .filter(|t| is_macro_like(t))
    };
    let mut out: Vec<String> = Vec::new();
    super::lang::walk(tree.root_node(), |n| {
        if !n.has_error() || n.kind() == "compound_statement" {
            return false;
        }
        if n.is_error() {
            let first_leaf = n.child(0).and_then(leaf_name);
            let before = n.prev_sibling().and_then(leaf_name);
            out.extend(first_leaf.into_iter().chain(before));
            return false;
        }
        true
    });
    out.sort();
    out.dedup();
    out
}

/// Removes `name` (and the parentheses of `name(args)`) outside function
/// bodies; returns how many occurrences were removed.
fn blank_name(src: &mut [u8], tree: &Tree, name: &str) -> usize {
    let mask = code_mask(src);
    let mut edits = Vec::new();
    for (s, e) in identifiers(src, &mask) {
        if &src[s..e] != name.as_bytes() {
            continue;
        }
        let in_body = tree
            .root_node()
            .descendant_for_byte_range(s, e)
            .is_some_and(|mut n| loop {
                if n.kind() == "compound_statement" {
                    break true;
                }
                match n.parent() {
                    Some(p) => n = p,
                    None => break false,
                }
            });
        if !in_body {
            edits.push((s, e, call_args(src, &mask, e).map(|(o, c, _)| (o, c))));
        }
    }
    for &(s, e, parens) in &edits {
        overwrite(src, s, e, b"");
        if let Some((open, close)) = parens {
            src[open] = b' ';
            src[close] = b' ';
        }
    }
    edits.len()
}

/// Prepares and parses a C file: configured macros, `extern "C"` guards,
/// then inferred attribute macros while they make the parse better.
pub fn parse_c(
    parser: &mut Parser,
    text: String,
    config: &Config,
) -> Option<(String, Tree, Vec<Rewrite>)> {
    let mut rewrites = Vec::new();
    let defs: Vec<MacroDef> = config
        .macros
        .iter()
        .filter_map(|(k, v)| MacroDef::parse(k, v))
        .collect();
    let mut bytes = text.into_bytes();
    expand_configured(&mut bytes, &defs, &mut rewrites);
    blank_cpp_guards(&mut bytes, &mut rewrites);
    let mut tree = parser.parse(&bytes, None)?;
    let mut weight = error_weight(&tree);
    let mut tried: Vec<String> = Vec::new();
    // Each round removes at least one new name; a handful of rounds covers
    // the export + calling-convention pairs seen in real headers.
    for _round in 0..4 {
        if weight == 0 {
            break;
        }
        let fresh: Vec<String> = inferred_candidates(&tree, &bytes)
            .into_iter()
            .filter(|c| !tried.contains(c))
            .collect();
        if fresh.is_empty() {
            break;
        }
        let mut trial = bytes.clone();
        let counts: Vec<(String, usize)> = fresh
            .iter()
            .map(|name| (name.clone(), blank_name(&mut trial, &tree, name)))
            .collect();
        tried.extend(fresh);
        let Some(next) = parser.parse(&trial, None) else {
            break;
        };
        let next_weight = error_weight(&next);
        if next_weight >= weight {
            continue;
        }
        bytes = trial;
        tree = next;
        weight = next_weight;
        for (name, count) in counts.into_iter().filter(|(_, c)| *c > 0) {
            rewrites.push(Rewrite {
                name,
                kind: RewriteKind::InferredAttributeMacro,
                count,
                not_applied: 0,
            });
        }
    }
    // Only ASCII bytes were written over whole characters, so this holds.
    let text = String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    Some((text, tree, rewrites))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str, config: &Config) -> (String, Tree, Vec<Rewrite>) {
        let mut p = Parser::new();
        p.set_language(&tree_sitter_c::LANGUAGE.into())
            .expect("grammar");
        parse_c(&mut p, src.to_string(), config).expect("tree")
    }

    #[test]
    fn export_and_calling_convention_macros_are_inferred() {
        let src = "#define JSMN_API extern\n#define CDECL\nJSMN_API int parse(int *p) {\n  return *p;\n}\nstatic void * CDECL grab(int n)\n{\n  return 0;\n}\ntypedef struct h { void *(CDECL *alloc)(int n); } h;\n";
        let (text, tree, rw) = parse(src, &Config::default());
        assert_eq!(error_weight(&tree), 0, "{text}");
        assert_eq!(text.len(), src.len());
        assert_eq!(text.lines().count(), src.lines().count());
        assert!(text.starts_with("#define JSMN_API extern\n"), "{text}");
        let names: Vec<&str> = rw.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["CDECL", "JSMN_API"], "{rw:?}");
        assert!(rw
            .iter()
            .all(|r| r.kind == RewriteKind::InferredAttributeMacro));
    }

    #[test]
    fn extern_c_guards_are_blanked() {
        let src = "#ifdef __cplusplus\nextern \"C\"\n{\n#endif\nint f(int a) { return a; }\n#ifdef __cplusplus\n}\n#endif\n";
        let (text, tree, rw) = parse(src, &Config::default());
        assert_eq!(error_weight(&tree), 0, "{text}");
        assert_eq!(rw[0].kind, RewriteKind::CppGuard);
        assert_eq!(rw[0].count, 2);
        assert!(!text.contains("extern"));
    }

    #[test]
    fn configured_macros_expand_in_place_and_only_when_they_fit() {
        let mut c = Config::default();
        c.macros.insert("API(t)".into(), "t".into());
        c.macros
            .insert("LONGER".into(), "something much longer".into());
        let src = "API(int *) f(void) { return 0; } /* API(x) */\nint LONGER;\n";
        let (text, _, rw) = parse(src, &c);
        assert!(text.starts_with("int *      f(void)"), "{text}");
        assert!(text.contains("/* API(x) */"), "comments are left alone");
        let api = rw.iter().find(|r| r.name == "API").expect("API");
        assert_eq!((api.count, api.not_applied), (1, 0));
        let long = rw.iter().find(|r| r.name == "LONGER").expect("LONGER");
        assert_eq!((long.count, long.not_applied), (0, 1));
        assert!(MacroDef::parse("9x", "").is_none());
        assert!(MacroDef::parse("F(a, 1)", "").is_none());
    }

    #[test]
    fn names_inside_function_bodies_are_not_touched() {
        let src = "int f(void) {\n  return LIMIT + 1;\n}\n";
        let (text, _, rw) = parse(src, &Config::default());
        assert_eq!(text, src);
        assert!(rw.is_empty());
    }
}
