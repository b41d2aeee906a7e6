//! R8 near miss: a macro with one level of repetition that does not recurse.

macro_rules! sum {
    ($($x:expr),*) => {
        0 $(+ $x)*
    };
}

pub fn total() -> u32 {
    sum!(1, 2, 3)
}
