//! Criterion benchmarks: packed ternary kernel vs libtorch fp32 / bf16 `linear`.
//!
//! Shapes 2048^2, 4096^2, 4096x11008, 11008x4096 (out x in) at batch 1, 8
//! and 32, all three methods in the same process with libtorch's thread
//! count (our kernel reads `tch::get_num_threads` itself). Sample sizes and
//! measurement times are small because the reference machine has 2 shared
//! cores; `examples/kernel_table.rs` prints the same comparison as a table.
//!
//! Run: `cargo bench -p bitnet-torch --bench kernels` (add `-- 4096x4096/1`
//! to filter, `-- --quick` for criterion's quick mode).

use std::hint::black_box;
use std::time::Duration;

use bitnet_torch::kernels::storage::pack_storage;
use bitnet_torch::kernels::testing::SplitMix;
use bitnet_torch::kernels::{KernelPath, PackedTernaryMatrix, TensorMatmul};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tch::{Device, Kind, Tensor};

const SHAPES: [(usize, usize); 4] = [(2048, 2048), (4096, 4096), (4096, 11008), (11008, 4096)];
const BATCHES: [usize; 3] = [1, 8, 32];

fn ternary(len: usize, seed: u64) -> Vec<i8> {
    SplitMix(seed).ternary(len)
}

fn packed_vs_libtorch(c: &mut Criterion) {
    let path = KernelPath::selected().expect("BITNET_KERNEL names a supported path");
    eprintln!("kernel path {path}, threads {}", tch::get_num_threads());
    for (index, &(out, inp)) in SHAPES.iter().enumerate() {
        let w_q = ternary(out * inp, index as u64 + 1);
        let matrix =
            PackedTernaryMatrix::from_storage(&pack_storage(&w_q, out, inp), out, inp, 0.02)
                .expect("valid packed weights");
        let w32 = Tensor::from_slice(&w_q)
            .to_kind(Kind::Float)
            .view([out as i64, inp as i64])
            * 0.02;
        let w16 = w32.to_kind(Kind::BFloat16);
        for &batch in &BATCHES {
            let mut group = c.benchmark_group(format!("{out}x{inp}/{batch}"));
            group
                .sample_size(10)
                .warm_up_time(Duration::from_millis(300))
                .measurement_time(Duration::from_secs(1))
                .throughput(Throughput::Bytes(matrix.weight_bytes() as u64));
            let x = Tensor::randn([batch as i64, inp as i64], (Kind::Float, Device::Cpu));
            let x16 = x.to_kind(Kind::BFloat16);
            group.bench_function("ours", |b| {
                b.iter(|| black_box(matrix.forward_with(path, &x).expect("kernel")))
            });
            group.bench_function("libtorch_fp32", |b| {
                b.iter(|| black_box(x.linear::<&Tensor>(&w32, None)))
            });
            group.bench_function("libtorch_bf16", |b| {
                b.iter(|| black_box(x16.linear::<&Tensor>(&w16, None)))
            });
            group.finish();
        }
    }
}

criterion_group!(benches, packed_vs_libtorch);
criterion_main!(benches);
