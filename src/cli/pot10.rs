//! `bitnet-pipeline pot10 PATH...`: the Power-of-Ten analyzer on its own,
//! outside any pipeline. Exit code 0 when the score reaches the threshold
//! and the analyzed share of the code reaches `--min-coverage`, 1 otherwise,
//! 2 for unusable input (bad paths, flags or config file).

use std::path::PathBuf;
use std::process::ExitCode;

use ::pot10::{self, Config, Language, Pot10Error, RuleId};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
    Sarif,
}

#[derive(clap::Args, Debug)]
pub struct Pot10Args {
    /// Files or directories to analyze (C, Python, Rust).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
    /// Minimum compliance score to pass (0..=1); default 0.92.
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Rules to check, comma-separated (e.g. `R1,R4`); default all.
    #[arg(long, value_delimiter = ',')]
    pub rules: Vec<RuleId>,
    /// Languages to analyze, comma-separated (`c,python,rust`); default all.
    #[arg(long, value_delimiter = ',')]
    pub languages: Vec<Language>,
    /// Minimum share (0..=1) of lines and of functions that must parse;
    /// below it the run fails whatever the score. Default 0.95.
    #[arg(long)]
    pub min_coverage: Option<f64>,
    /// R4: maximum statement lines per function; default 60.
    #[arg(long)]
    pub max_function_lines: Option<usize>,
    /// Do not run external compilers/linters for R10.
    #[arg(long)]
    pub no_external: bool,
    /// Do not run `cargo clippy` for R10 (it builds the package).
    #[arg(long)]
    pub no_clippy: bool,
    /// Analyze test code too (`#[test]`, `#[cfg(test)]`, `tests/`, `test_*.py`).
    #[arg(long)]
    pub include_tests: bool,
    /// YAML or JSON file holding a full `pot10::Config`; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Builds the configuration from an optional config file and the flags.
pub fn config_from_args(args: &Pot10Args) -> Result<Config, Pot10Error> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| Pot10Error::Io {
                path: path.clone(),
                source,
            })?;
            serde_yaml::from_str::<Config>(&text)
                .map_err(|e| Pot10Error::InvalidConfig(format!("{}: {e}", path.display())))?
        }
        None => Config::default(),
    };
    config.paths = args.paths.clone();
    if let Some(t) = args.threshold {
        config.threshold = t;
    }
    if !args.rules.is_empty() {
        config.rules = args.rules.clone();
    }
    if !args.languages.is_empty() {
        config.languages = args.languages.clone();
    }
    if let Some(m) = args.min_coverage {
        config.min_coverage = m;
    }
    if let Some(m) = args.max_function_lines {
        config.max_function_lines = m;
    }
    if args.no_external {
        config.run_external_tools = false;
    }
    if args.no_clippy {
        config.run_clippy = false;
    }
    if args.include_tests {
        config.skip_tests = false;
    }
    Ok(config)
}

/// Runs the analyzer and prints the report on stdout (errors on stderr).
pub fn run(args: &Pot10Args) -> anyhow::Result<ExitCode> {
    let report = match config_from_args(args).and_then(|c| pot10::analyze(&c)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let rendered = match args.format {
        OutputFormat::Text => report.render_text(),
        OutputFormat::Json => serde_json::to_string_pretty(&report)? + "\n",
        OutputFormat::Sarif => serde_json::to_string_pretty(&report.to_sarif())? + "\n",
    };
    print!("{rendered}");
    Ok(ExitCode::from(if report.passed { 0 } else { 1 }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: Pot10Args,
    }

    fn parse(argv: &[&str]) -> Pot10Args {
        Cli::try_parse_from(std::iter::once("pot10").chain(argv.iter().copied()))
            .expect("arguments parse")
            .args
    }

    #[test]
    fn flags_override_defaults() {
        let a = parse(&[
            "src",
            "--rules",
            "R1,r4",
            "--languages",
            "rust",
            "--threshold",
            "0.5",
            "--min-coverage",
            "0.8",
            "--no-external",
        ]);
        let c = config_from_args(&a).expect("config");
        assert_eq!(c.rules, vec![RuleId::R1, RuleId::R4]);
        assert_eq!(c.languages, vec![Language::Rust]);
        assert_eq!(c.threshold, 0.5);
        assert_eq!(c.min_coverage, 0.8);
        assert!(!c.run_external_tools);
        assert!(c.run_clippy);
    }

    #[test]
    fn bad_input_exits_2() {
        let a = parse(&["/nonexistent/pot10/path"]);
        assert_eq!(run(&a).expect("run"), ExitCode::from(2));
        let a = parse(&["src", "--threshold", "1.5"]);
        assert_eq!(run(&a).expect("run"), ExitCode::from(2));
    }

    #[test]
    fn unknown_rule_is_rejected_by_clap() {
        let r = Cli::try_parse_from(["pot10", "src", "--rules", "R12"]);
        assert!(r.is_err());
    }

    #[test]
    fn exit_code_follows_threshold() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("ok.rs");
        std::fs::write(
            &file,
            "fn f(a: u32) -> u32 {\n    assert!(a > 0);\n    assert!(a < 9);\n    a\n}\n",
        )
        .expect("write");
        let p = file.to_str().expect("utf8");
        let pass = parse(&[p, "--no-external", "--format", "json"]);
        assert_eq!(run(&pass).expect("run"), ExitCode::from(0));
        std::fs::write(&file, "fn f(a: u32) -> u32 {\n    loop {}\n}\n").expect("write");
        let fail = parse(&[p, "--no-external", "--threshold", "1.0"]);
        assert_eq!(run(&fail).expect("run"), ExitCode::from(1));
    }
}
