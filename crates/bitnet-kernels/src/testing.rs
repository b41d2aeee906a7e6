//! Deterministic test data for the kernels' tests, benches and examples
//! (and for the crates above that test their adapters), without a `rand`
//! dependency: the same seed gives the same weights on every machine.

/// SplitMix64 (Steele, Lea and Flood 2014): a tiny generator whose output
/// passes BigCrush, which is all test data needs.
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (modulo bias is irrelevant for test data).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `len` ternary weights in {-1, 0, 1}.
    pub fn ternary(&mut self, len: usize) -> Vec<i8> {
        (0..len).map(|_| self.below(3) as i8 - 1).collect()
    }

    /// `len` int8 values over the whole range.
    pub fn int8(&mut self, len: usize) -> Vec<i8> {
        (0..len).map(|_| self.below(256) as u8 as i8).collect()
    }

    /// `len` values roughly normal around 0 (a sum of four uniforms).
    pub fn normal_ish(&mut self, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| {
                (0..4)
                    .map(|_| self.below(1 << 20) as f32 / (1 << 20) as f32 - 0.5)
                    .sum()
            })
            .collect()
    }
}
