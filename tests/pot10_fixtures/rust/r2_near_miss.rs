//! R2 near miss: counter loops and finite iteration.

pub fn total(values: &[u32], n: usize) -> u32 {
    let mut i = 0;
    let mut s = 0;
    while i < n {
        s += values[i];
        i += 1;
    }
    for k in 0..n {
        s += k as u32;
    }
    for v in values.iter() {
        s += v;
    }
    let mut j = 0;
    loop {
        if j >= n {
            break;
        }
        j += 1;
    }
    s
}
