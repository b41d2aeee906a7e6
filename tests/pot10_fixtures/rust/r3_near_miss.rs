//! R3 near miss: allocation only in init code; `Vec::new()` does not allocate.

pub struct Model {
    buf: Vec<f32>,
}

impl Model {
    pub fn new(n: usize) -> Self {
        Model { buf: vec![0.0; n] }
    }

    pub fn step(&mut self, x: &[f32]) -> f32 {
        let empty: Vec<f32> = Vec::new();
        self.buf.copy_from_slice(x);
        self.buf.iter().sum::<f32>() + empty.len() as f32
    }
}

// pot10: init
pub fn prepare(n: usize) -> Vec<u32> {
    (0..n as u32).collect()
}
