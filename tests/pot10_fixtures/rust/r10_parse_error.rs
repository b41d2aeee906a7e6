pub fn broken(x: u32) -> u32 {
    x +
}
