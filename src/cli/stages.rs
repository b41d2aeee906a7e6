//! `bitnet-pipeline stages`: the stage kinds and their options.
use std::process::ExitCode;

use crate::format as table;

#[derive(Debug, clap::Args)]
pub struct StagesArgs {
    /// Show only this kind.
    pub kind: Option<String>,
}

pub fn run(args: &StagesArgs) -> ExitCode {
    let reg = crate::stages::registry();
    let mut shown = 0;
    for kind in reg.all() {
        if args.kind.as_deref().is_some_and(|k| k != kind.name()) {
            continue;
        }
        shown += 1;
        println!("{} - {}", kind.name(), kind.summary());
        let cache = if kind.cache_by_default() { "on" } else { "off" };
        println!("  cache by default: {cache}");
        let rows: Vec<Vec<String>> = kind
            .options()
            .iter()
            .map(|o| {
                vec![
                    format!("  {}", o.name),
                    o.type_name.to_string(),
                    o.default.to_string(),
                    o.help.to_string(),
                ]
            })
            .collect();
        print!(
            "{}",
            table::render(&["  option", "type", "default", "meaning"], &rows)
        );
        println!();
    }
    if shown == 0 {
        let names: Vec<&str> = reg.all().map(|k| k.name()).collect();
        eprintln!(
            "error: unknown stage kind `{}`; known kinds: {}",
            args.kind.as_deref().unwrap_or_default(),
            names.join(", ")
        );
        return ExitCode::from(super::EXIT_INVALID);
    }
    ExitCode::SUCCESS
}
