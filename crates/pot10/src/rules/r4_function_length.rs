//! R4 - functions fit on one page.
//!
//! Checked exactly (unit: function): the number of *statement lines* of
//! every function, from its first line (`fn`/`def`/return type) to its
//! last, must not exceed `Config::max_function_lines` (default 60). A
//! statement line is a line holding at least one token that is not a
//! comment; blank lines, comment-only lines and Python docstrings are not
//! counted. Attributes and decorators above the function are not part of
//! it. A nested function's lines count for the nested function and for
//! the function around it.
//!
//! Approximation: Holzmann says "about 60 lines ... one line per statement
//! and one line per declaration"; we count physical lines with code, so a
//! statement wrapped over three lines counts three, and two statements on
//! one line count one.

use super::{Ctx, Outcome, RawFinding, Unit};
use crate::report::Severity;

pub fn check(ctx: &Ctx<'_>) -> Outcome {
    let max = ctx.config.max_function_lines;
    let mut out = Outcome {
        unit: "function",
        units: ctx.function_units(),
        ..Outcome::default()
    };
    for (fi, file) in ctx.parsed() {
        for (idx, f) in file.functions.iter().enumerate() {
            let lines = file.code_lines(f.start_row, f.end_row);
            if lines > max {
                out.findings.push(RawFinding {
                    file: fi,
                    row: f.start_row,
                    col: f.start_col,
                    byte: f.byte_range.start,
                    severity: Severity::Error,
                    message: format!(
                        "function `{}` has {lines} statement lines (max {max}); split it into smaller functions",
                        f.name
                    ),
                    unit: Unit::Function(idx),
                });
            }
        }
    }
    out
}
