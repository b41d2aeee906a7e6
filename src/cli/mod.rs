//! CLI
pub mod pot10;
use std::process::ExitCode;
pub fn main() -> ExitCode { ExitCode::SUCCESS }
