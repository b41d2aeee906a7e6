pub fn finish(x: u32) -> u32 {
    step(x) * 2
}

pub fn step(x: u32) -> u32 {
    x.saturating_sub(1)
}

pub fn build() -> Vec<u32> {
    Vec::new()
}

pub fn new_list() -> Vec<u32> {
    build()
}
