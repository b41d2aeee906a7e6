//! Test code is skipped by default.

pub fn answer() -> u32 {
    42
}

#[test]
fn spins() {
    loop {}
}

#[cfg(test)]
mod tests {
    fn helper() {
        loop {}
    }
}
