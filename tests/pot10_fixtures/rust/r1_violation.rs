//! R1 violation: one direct recursion.

pub fn depth(n: u32) -> u32 {
    if n == 0 {
        return 0;
    }
    1 + depth(n - 1)
}
