//! R1 near miss: `step` and `finish` exist in a.rs and b.rs with opposite
//! call directions; each call resolves to its own file, so no cycle.

use std::fmt;

pub fn step(x: u32) -> u32 {
    finish(x)
}

pub fn finish(x: u32) -> u32 {
    x + 1
}

pub struct Wrapper(u32);

impl fmt::Display for Wrapper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Calls u32's `fmt`, not this one.
        self.0.fmt(f)
    }
}
