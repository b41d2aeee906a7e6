//! R6 violation: one mutable global.

const LIMIT: u32 = 10;
static NAME: &str = "pot10";
static mut COUNTER: u32 = 0;

pub fn limit() -> (u32, &'static str) {
    (LIMIT, NAME)
}
