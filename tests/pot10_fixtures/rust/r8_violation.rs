//! R8 violation: one macro with nested repetitions.

macro_rules! table {
    ($($row:ident => [$($cell:expr),*]);*) => {
        [$(($row, [$($cell),*])),*]
    };
}
