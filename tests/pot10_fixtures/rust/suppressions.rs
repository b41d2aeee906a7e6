//! Suppression comments: one valid (with a reason), one without a reason.

pub fn read(p: *const u32) -> u32 {
    // pot10: allow(R9) FFI boundary: the caller guarantees `p` is valid
    unsafe { *p }
}

pub fn read_again(p: *const u32) -> u32 {
    unsafe { *p } // pot10: allow(R9)
}
