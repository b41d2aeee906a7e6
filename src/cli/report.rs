//! `bitnet-pipeline report RUN`: (re)render a run's HTML report, e.g. after
//! upgrading bitnet-pipeline or to write it somewhere else.
use std::path::PathBuf;
use std::process::ExitCode;

use super::{Cli, EXIT_INVALID};
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Run id (`bitnet-pipeline runs list`).
    pub run: i64,
    /// Where to write the page (default: `<runs-dir>/<run>/report.html`).
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
}

pub fn run(cli: &Cli, args: &ReportArgs) -> ExitCode {
    let store = match Store::open_existing(&cli.db) {
        Ok(s) => s,
        Err(_) if !cli.db.exists() => {
            eprintln!(
                "error: no results DB at `{}`; run a pipeline first (`bitnet-pipeline run FILE`) or pass --db",
                cli.db.display()
            );
            return ExitCode::from(EXIT_INVALID);
        }
        // A DB that exists but cannot be used (newer schema, read-only, corrupt)
        // says why, not that it is missing (issue #16).
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    match crate::report::write_run_report(&store, args.run, args.out.as_deref()) {
        Ok(path) => {
            println!("{}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_INVALID)
        }
    }
}
