//! User-facing errors about pipeline files: a message, where it happened and
//! what to do next, rendered like just/ruff do:
//!
//! ```text
//! error: unknown key `nedds` in stage `train` (did you mean `needs`?)
//!   --> pipelines/phase4.yaml:14:5
//!   = help: ...
//! ```
use std::fmt;
use std::path::PathBuf;

/// A place in a source file; line and column are 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

/// One problem found in a pipeline file or its overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub message: String,
    pub location: Option<Location>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>) -> Self {
        Diagnostic {
            message: message.into(),
            location: None,
            help: None,
        }
    }

    pub fn at(mut self, location: Option<Location>) -> Self {
        self.location = location;
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.message)?;
        if let Some(loc) = &self.location {
            write!(
                f,
                "\n  --> {}:{}:{}",
                loc.file.display(),
                loc.line,
                loc.column
            )?;
        }
        if let Some(help) = &self.help {
            write!(f, "\n  = help: {help}")?;
        }
        Ok(())
    }
}

/// All problems found in one pipeline; validation collects every one of
/// them before giving up, so a user fixes a file in one pass.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            writeln!(f, "{d}")?;
        }
        if self.0.len() > 1 {
            write!(f, "{} errors", self.0.len())?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// "did you mean `x`?" for a misspelt name, when one candidate is close:
/// within a small edit distance (transpositions count once) or very
/// similar by Jaro-Winkler.
pub fn did_you_mean<'a>(
    wrong: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let max_edits = (wrong.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .filter_map(|c| {
            let edits = strsim::osa_distance(wrong, c);
            let jw = strsim::jaro_winkler(wrong, c);
            (edits <= max_edits || jw >= 0.85).then_some((edits, -jw, c))
        })
        .min_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)))
        .map(|(_, _, c)| format!("did you mean `{c}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            did_you_mean("nedds", ["uses", "needs", "with"]).as_deref(),
            Some("did you mean `needs`?")
        );
        assert_eq!(did_you_mean("zzz", ["uses", "needs", "with"]), None);
        assert_eq!(
            did_you_mean("rl", ["lr", "steps"]).as_deref(),
            Some("did you mean `lr`?")
        );
    }

    #[test]
    fn renders_location_and_help() {
        let d = Diagnostic::new("unknown key `nedds`")
            .at(Some(Location {
                file: "p.yaml".into(),
                line: 3,
                column: 5,
            }))
            .help("fix it");
        assert_eq!(
            d.to_string(),
            "error: unknown key `nedds`\n  --> p.yaml:3:5\n  = help: fix it"
        );
    }
}
