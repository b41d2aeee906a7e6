//! R10: parses; with clippy disabled R10 is not evaluated (not a pass).

pub fn answer() -> u32 {
    42
}
