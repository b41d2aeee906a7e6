//! R7 near miss: results handled or bound; unit-returning calls as statements.

use std::io::Write;
use std::sync::Mutex;

fn note(_line: &str) {}

pub fn emit(out: &mut impl Write, line: &str, lock: &Mutex<u32>) -> std::io::Result<()> {
    let _guard = lock.lock();
    out.write_all(line.as_bytes())?;
    if let Err(e) = out.flush() {
        return Err(e);
    }
    note(line);
    Ok(())
}
