//! R3 violation: one allocation after initialization.

pub struct Model {
    buf: Vec<f32>,
}

impl Model {
    pub fn new(n: usize) -> Self {
        Model { buf: Vec::with_capacity(n) }
    }

    pub fn step(&mut self, x: &[f32]) -> f32 {
        let tmp = x.to_vec();
        self.buf.clear();
        tmp.iter().sum()
    }
}
