//! R6 near miss: constants and locals used at their declaration level.

const LIMIT: u32 = 10;
static NAME: &str = "pot10";

pub fn count_small(v: &[u32]) -> u32 {
    let mut total = 0;
    for x in v {
        if *x < LIMIT {
            let bonus = 1;
            total += bonus;
        }
    }
    total + NAME.len() as u32
}
