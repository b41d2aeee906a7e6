//! Criterion benchmarks of the packed ternary kernels alone, without libtorch:
//! every kernel path this CPU supports (scalar, AVX2, AVX-512 VNNI) at batch
//! 1, 8 and 32, next to a plain-Rust dense f32 matmul over the same weights.
//!
//! The dense f32 loop is a compiler-vectorised reference, not a BLAS: it says
//! how the kernel paths compare with each other and with streaming 32-bit
//! weights, not how they compare with libtorch. That comparison (fp32 and
//! bf16 `linear`) lives in `bitnet-torch`'s `kernels` bench and its
//! `kernel_table` example, which link libtorch.
//!
//! Run: `cargo bench -p bitnet-kernels` (add `-- 2048x2048/1` to filter).

use std::hint::black_box;
use std::time::Duration;

use bitnet_kernels::storage::pack_storage;
use bitnet_kernels::testing::SplitMix;
use bitnet_kernels::{KernelPath, PackedTernaryMatrix};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const SHAPES: [(usize, usize); 2] = [(2048, 2048), (4096, 4096)];
const BATCHES: [usize; 3] = [1, 8, 32];

/// `y = x W^T` over dense f32 weights, row-major `[out, in]`.
fn dense_f32(w: &[f32], x: &[f32], rows: usize, inp: usize, y: &mut [f32]) {
    let out = w.len() / inp;
    for r in 0..rows {
        let xr = &x[r * inp..(r + 1) * inp];
        for (o, slot) in y[r * out..(r + 1) * out].iter_mut().enumerate() {
            let wr = &w[o * inp..(o + 1) * inp];
            *slot = wr.iter().zip(xr).map(|(a, b)| a * b).sum();
        }
    }
}

fn packed_paths_vs_dense(c: &mut Criterion) {
    let paths: Vec<KernelPath> = KernelPath::ALL
        .into_iter()
        .filter(|p| p.is_supported())
        .collect();
    eprintln!(
        "kernel paths {paths:?}, threads {}",
        bitnet_kernels::num_threads()
    );
    for (index, &(out, inp)) in SHAPES.iter().enumerate() {
        let mut rng = SplitMix(index as u64 + 1);
        let w_q = rng.ternary(out * inp);
        let matrix =
            PackedTernaryMatrix::from_storage(&pack_storage(&w_q, out, inp), out, inp, 0.02)
                .expect("valid packed weights");
        let w_dense: Vec<f32> = w_q.iter().map(|&v| f32::from(v) * 0.02).collect();
        for &rows in &BATCHES {
            let x = rng.normal_ish(rows * inp);
            let mut y = vec![0f32; rows * out];
            let mut group = c.benchmark_group(format!("{out}x{inp}/{rows}"));
            group.sample_size(10);
            group.measurement_time(Duration::from_secs(2));
            group.throughput(Throughput::Elements((out * inp * rows) as u64));
            for &path in &paths {
                group.bench_function(format!("packed-{path}"), |b| {
                    b.iter(|| {
                        matrix
                            .matmul_with(path, black_box(&x), rows, &mut y)
                            .expect("kernel");
                        black_box(&y);
                    })
                });
            }
            group.bench_function("dense-f32-loop", |b| {
                b.iter(|| {
                    dense_f32(black_box(&w_dense), black_box(&x), rows, inp, &mut y);
                    black_box(&y);
                })
            });
            group.finish();
        }
    }
}

criterion_group!(benches, packed_paths_vs_dense);
criterion_main!(benches);
