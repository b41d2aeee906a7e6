//! R7 violation: one discarded result.

use std::io::Write;

pub fn emit(out: &mut impl Write, line: &str) -> std::io::Result<()> {
    let _ = out.write_all(line.as_bytes());
    out.flush()
}
