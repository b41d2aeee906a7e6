//! Command-line entry point: parse arguments, call the library, map errors to
//! exit codes (0 success, 1 a stage failed, 2 invalid input).
use std::process::ExitCode;

fn main() -> ExitCode {
    bitnet_pipeline::cli::main()
}
