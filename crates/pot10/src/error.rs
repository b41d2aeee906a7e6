//! Errors that stop an analysis before it can produce a report. Problems
//! inside analyzed files (unparsable code, missing tools) are findings or
//! report notes instead, never errors: one bad file must not hide the rest.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Pot10Error {
    #[error("no paths to analyze: give at least one file or directory")]
    NoPaths,
    #[error("path `{}` does not exist: check the spelling or run from the project root", .0.display())]
    PathNotFound(PathBuf),
    #[error("no C, Python or Rust source files found under {paths} (languages: {languages}): check the paths and the `languages` setting")]
    NoSourceFiles { paths: String, languages: String },
    #[error("every source file under {paths} is test code (out-of-line `#[cfg(test)]` modules), which is skipped: pass `--include-tests` (`skip_tests: false`) to analyze it")]
    OnlyTestCode { paths: String },
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot walk `{}`: {message}", path.display())]
    Walk { path: PathBuf, message: String },
    #[error("invalid pot10 configuration: {0}")]
    InvalidConfig(String),
    #[error("tree-sitter grammar for {language} failed to load ({message}); this is a bug in bitnet-pipeline, please report it")]
    Grammar { language: String, message: String },
}
