//! Configuration of one analysis run. It mirrors what a user writes in a
//! pipeline stage (`paths`, `languages`, `rules`, `threshold`, ...) so the
//! `pot10_check` stage can deserialize its parameters straight into it, and
//! it rejects unknown keys so a typo never silently disables a check.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A source language the analyzer has a tree-sitter front end for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    C,
    Python,
    Rust,
}

impl Language {
    pub const ALL: [Language; 3] = [Language::C, Language::Python, Language::Rust];

    /// The language of a file, decided by its extension only (`.c`/`.h`,
    /// `.py`, `.rs`); `None` for files the analyzer does not read.
    pub fn from_path(path: &std::path::Path) -> Option<Language> {
        match path.extension()?.to_str()? {
            "c" | "h" => Some(Language::C),
            "py" => Some(Language::Python),
            "rs" => Some(Language::Rust),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Language::C => "c",
            Language::Python => "python",
            Language::Rust => "rust",
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Language {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "c" => Ok(Language::C),
            "python" | "py" => Ok(Language::Python),
            "rust" | "rs" => Ok(Language::Rust),
            other => Err(format!(
                "unknown language `{other}` (expected one of `c`, `python`, `rust`)"
            )),
        }
    }
}

/// One of Holzmann's ten rules, numbered as in the paper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RuleId {
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R8,
    R9,
    R10,
}

impl RuleId {
    pub const ALL: [RuleId; 10] = [
        RuleId::R1,
        RuleId::R2,
        RuleId::R3,
        RuleId::R4,
        RuleId::R5,
        RuleId::R6,
        RuleId::R7,
        RuleId::R8,
        RuleId::R9,
        RuleId::R10,
    ];

    pub fn number(self) -> usize {
        self as usize + 1
    }

    pub fn code(self) -> &'static str {
        ["R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8", "R9", "R10"][self as usize]
    }

    /// Short title, used in text output and as the SARIF rule name.
    pub fn title(self) -> &'static str {
        match self {
            RuleId::R1 => "simple control flow",
            RuleId::R2 => "fixed loop bounds",
            RuleId::R3 => "no dynamic allocation after initialization",
            RuleId::R4 => "short functions",
            RuleId::R5 => "assertion density",
            RuleId::R6 => "smallest data scope",
            RuleId::R7 => "check return values and parameters",
            RuleId::R8 => "limited preprocessor / metaprogramming",
            RuleId::R9 => "restricted pointer use",
            RuleId::R10 => "zero compiler and linter warnings",
        }
    }

    /// Holzmann's wording, abridged, for SARIF `fullDescription`.
    pub fn holzmann(self) -> &'static str {
        match self {
            RuleId::R1 => "Restrict all code to very simple control flow constructs: do not use goto statements, setjmp or longjmp constructs, and direct or indirect recursion.",
            RuleId::R2 => "All loops must have a fixed upper bound that a checking tool can prove statically.",
            RuleId::R3 => "Do not use dynamic memory allocation after initialization.",
            RuleId::R4 => "No function should be longer than what can be printed on a single sheet of paper: about 60 lines of code per function.",
            RuleId::R5 => "The assertion density of the code should average a minimum of two assertions per function; assertions must be side-effect free Boolean tests.",
            RuleId::R6 => "Data objects must be declared at the smallest possible level of scope.",
            RuleId::R7 => "The return value of non-void functions must be checked by each calling function, and the validity of parameters must be checked inside each function.",
            RuleId::R8 => "The use of the preprocessor must be limited to the inclusion of header files and simple macro definitions; token pasting, variable argument lists and recursive macro calls are not allowed; conditional compilation should be kept to a minimum.",
            RuleId::R9 => "The use of pointers should be restricted: no more than one level of dereferencing, no dereferences hidden in macros or typedefs, no function pointers.",
            RuleId::R10 => "All code must compile with all warnings enabled at the most pedantic setting, with zero warnings, and be checked daily by static analyzers with zero warnings.",
        }
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for RuleId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let digits = t
            .strip_prefix('R')
            .or_else(|| t.strip_prefix('r'))
            .unwrap_or(t);
        match digits.parse::<usize>() {
            Ok(n @ 1..=10) => Ok(RuleId::ALL[n - 1]),
            _ => Err(format!("unknown rule `{t}` (expected `R1` ... `R10`)")),
        }
    }
}

impl Serialize for RuleId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for RuleId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Everything one run needs. Every field has a default, so a stage or a
/// test only states what it changes; `paths` is the only field without a
/// useful default and must be non-empty.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Files or directories to analyze. Directories are walked, honouring
    /// `.gitignore` and skipping hidden entries and `exclude_dirs`.
    pub paths: Vec<PathBuf>,
    /// Languages to analyze; empty means all of C, Python and Rust.
    pub languages: Vec<Language>,
    /// Rules to check; empty means all ten.
    pub rules: Vec<RuleId>,
    /// Minimum compliance score (0..=1) for `Report::passed`.
    pub threshold: f64,
    /// R4: maximum statement lines per function (Holzmann: about 60).
    pub max_function_lines: usize,
    /// R5: minimum number of counted assertions per function.
    pub min_assertions_per_function: usize,
    /// R5: extra assertion call or macro names (without `!`), added to the
    /// built-in `assert`, `static_assert`, `assert!`, `debug_assert!`, ...
    pub assertion_names: Vec<String>,
    /// R3: functions whose name matches one of these patterns are
    /// initialization code and may allocate. `*` matches any run of
    /// characters; matching is on the bare function name.
    pub init_function_patterns: Vec<String>,
    /// R8 (C): deepest allowed nesting of `#if`/`#ifdef` blocks; include
    /// guards do not count.
    pub max_conditional_depth: usize,
    /// R8 (Rust): deepest allowed nesting of `$( ... )*` repetitions in a
    /// `macro_rules!` matcher.
    pub max_macro_repetition_depth: usize,
    /// Skip test code: Rust `#[test]` functions and `#[cfg(test)]` modules
    /// (inline, or in their own file declared by `#[cfg(test)] mod x;`),
    /// Python `test_*.py`/`*_test.py`/`conftest.py` files and `test_*`
    /// functions, and `tests`/`benches` directories below a walked path.
    pub skip_tests: bool,
    /// Directory names never descended into while walking.
    pub exclude_dirs: Vec<String>,
    /// R10: run external compilers/linters at all.
    pub run_external_tools: bool,
    /// R10: run `cargo clippy` for Rust files inside a cargo project. Slow
    /// (it builds the project), hence separately switchable.
    pub run_clippy: bool,
    /// C compiler used for R10 (`cc -Wall -Wextra -pedantic -fsyntax-only`).
    pub c_compiler: String,
    /// Python interpreter used for R10.
    pub python: String,
    /// Per-rule score weights overriding the defaults (see `score`).
    pub weights: BTreeMap<RuleId, f64>,
    /// Minimum share (0..=1) of lines and of functions that must have been
    /// analyzed (parsed) for `Report::passed`; code that did not parse is
    /// not scored, so a high score over little code must not pass.
    pub min_coverage: f64,
    /// C macros to expand before parsing, for macros the parser cannot
    /// read and the automatic handling (see `preprocess`) does not catch:
    /// `NAME: ""` removes `NAME`, `"NAME(t)": "t"` replaces `NAME(int *)`
    /// by `int *`. An expansion longer than the text it replaces is not
    /// applied (positions must stay those of the file) and is reported.
    pub macros: BTreeMap<String, String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            paths: Vec::new(),
            languages: Vec::new(),
            rules: Vec::new(),
            threshold: 0.92,
            max_function_lines: 60,
            min_assertions_per_function: 2,
            assertion_names: Vec::new(),
            init_function_patterns: [
                "main",
                "init",
                "init_*",
                "*_init",
                "initialize*",
                "setup",
                "setup_*",
                "new",
                "with_capacity",
                "from_*",
                "load*",
                "build*",
                "create*",
                "__init__",
                "__new__",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            max_conditional_depth: 1,
            max_macro_repetition_depth: 1,
            skip_tests: true,
            exclude_dirs: ["target", "node_modules", "__pycache__"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            run_external_tools: true,
            run_clippy: true,
            c_compiler: "cc".to_string(),
            python: "python3".to_string(),
            weights: BTreeMap::new(),
            min_coverage: 0.95,
            macros: BTreeMap::new(),
        }
    }
}

impl Config {
    /// A default configuration over the given paths.
    pub fn for_paths<I, P>(paths: I) -> Config
    where
        I: IntoIterator<Item = P>,
        P: Into<PathBuf>,
    {
        Config {
            paths: paths.into_iter().map(Into::into).collect(),
            ..Config::default()
        }
    }

    pub fn language_enabled(&self, lang: Language) -> bool {
        self.languages.is_empty() || self.languages.contains(&lang)
    }

    pub fn rule_enabled(&self, rule: RuleId) -> bool {
        self.rules.is_empty() || self.rules.contains(&rule)
    }

    /// Whether `name` matches one of `init_function_patterns`.
    pub fn is_init_name(&self, name: &str) -> bool {
        self.init_function_patterns
            .iter()
            .any(|p| glob_match(p.as_bytes(), name.as_bytes()))
    }
}

/// `*`-only glob matching (no `?`, no classes): enough for name patterns
/// and keeps the dependency list short.
pub(crate) fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob_match(rest, &text[i..])),
        Some((c, rest)) => text.first() == Some(c) && glob_match(rest, &text[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_ids_parse_and_round_trip() {
        assert_eq!("r4".parse::<RuleId>(), Ok(RuleId::R4));
        assert_eq!("R10".parse::<RuleId>(), Ok(RuleId::R10));
        assert!("R11".parse::<RuleId>().is_err());
        let json = serde_json::to_string(&RuleId::R7).unwrap();
        assert_eq!(json, "\"R7\"");
    }

    #[test]
    fn config_rejects_unknown_keys() {
        let err = serde_json::from_str::<Config>(r#"{"paths": ["x"], "treshold": 0.5}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("treshold"), "{err}");
        let ok: Config = serde_json::from_str(r#"{"paths": ["x"], "rules": ["R1"]}"#).unwrap();
        assert_eq!(ok.rules, vec![RuleId::R1]);
        assert_eq!(ok.threshold, 0.92);
    }

    #[test]
    fn stage_style_yaml_deserializes() {
        let yaml = "paths: [src, crates/bitnet-torch/src]\nlanguages: [rust]\nrules: [R1, R4, R10]\nthreshold: 0.9\nrun_clippy: false\nweights: {R4: 3}\n";
        let c: Config = serde_yaml::from_str(yaml).expect("valid stage params");
        assert_eq!(c.paths.len(), 2);
        assert_eq!(c.languages, vec![Language::Rust]);
        assert_eq!(c.rules, vec![RuleId::R1, RuleId::R4, RuleId::R10]);
        assert_eq!(c.weights.get(&RuleId::R4), Some(&3.0));
        assert!(!c.run_clippy && c.run_external_tools);
        let bad = serde_yaml::from_str::<Config>("paths: [src]\nrules: [R0]\n").unwrap_err();
        assert!(bad.to_string().contains("unknown rule `R0`"), "{bad}");
    }

    #[test]
    fn init_patterns_glob() {
        let c = Config::default();
        assert!(c.is_init_name("init_buffers"));
        assert!(c.is_init_name("pool_init"));
        assert!(c.is_init_name("new"));
        assert!(!c.is_init_name("renew_lease"));
        assert!(!c.is_init_name("step"));
    }
}
