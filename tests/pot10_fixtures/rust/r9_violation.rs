//! R9 violation: one unsafe block.

pub fn read(p: *const u32) -> u32 {
    unsafe { *p }
}
