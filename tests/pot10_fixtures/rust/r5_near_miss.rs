//! R5 near miss: two real assertions everywhere.

pub fn clamp(x: i32, lo: i32, hi: i32) -> i32 {
    assert!(lo <= hi, "empty range");
    debug_assert_eq!(x, x);
    x.clamp(lo, hi)
}

pub fn scale(x: i32) -> i32 {
    assert!(x >= 0);
    assert_ne!(x, i32::MAX);
    x * 2
}
