//! Prints the packed-ternary vs libtorch comparison table for docs/perf.md.
//!
//! Criterion (`cargo bench --bench kernels`) gives careful per-case
//! statistics but takes minutes on a small machine; this binary measures the
//! same cases in one quick pass and prints a Markdown table: our kernel
//! (weights L3-hot, and cold by rotating copies that exceed the L3), libtorch
//! fp32 and bf16 `linear`, the ratios, and the achieved packed-weight
//! bandwidth next to a measured memory read bandwidth. All three methods run
//! in the same process with the same thread count, interleaved round by
//! round so background load hits them alike.
//!
//! Run: `cargo run --release -p bitnet-torch --example kernel_table [-- --rounds N] [--threads N]`
//! With `--prefill` it prints the prefill table instead (issue #11): the
//! demo model's and SmolLM2-135M's matrices at 128 and 512 token rows, our
//! kernel (the GEMM order beyond 32 rows) against the same kernel fed 32
//! rows at a time (the GEMV order it used before, in the same run) and
//! libtorch fp32 / bf16 `linear`.
//! With `--threads 1` it adds calling-thread CPU times, which stay meaningful
//! on a loaded machine where wall times do not.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bitnet_torch::kernels::storage::pack_storage;
use bitnet_torch::kernels::testing::SplitMix;
use bitnet_torch::kernels::{KernelPath, PackedTernaryMatrix, QuantizedActivations, TensorMatmul};
use tch::{Device, Kind, Tensor};

const SHAPES: [(usize, usize); 4] = [(2048, 2048), (4096, 4096), (4096, 11008), (11008, 4096)];
const BATCHES: [usize; 3] = [1, 8, 32];
/// `(out, in)` of the prefill table: the demo model (hidden 256, 2 of 4
/// heads' width for k/v, MLP 688) and SmolLM2-135M (576, k/v 192, MLP 1536).
const PREFILL_SHAPES: [(usize, usize); 8] = [
    (256, 256),
    (128, 256),
    (688, 256),
    (256, 688),
    (576, 576),
    (192, 576),
    (1536, 576),
    (576, 1536),
];
/// Token rows of the prefill table.
const PREFILL_ROWS: [usize; 2] = [128, 512];
/// Rows per call of the "32-row slices" column: the GEMV order's limit.
const GEMV_ROWS: usize = 32;
/// Packed bytes the cold rotation must exceed: twice this machine's 32 MiB L3.
const COLD_BYTES: usize = 64 << 20;

/// Deterministic ternary weights (SplitMix64), no rand dependency.
fn ternary(len: usize, seed: u64) -> Vec<i8> {
    SplitMix(seed).ternary(len)
}

/// CPU time of the calling thread, seconds. With one thread both libtorch
/// and our kernel compute on the calling thread, so this is the work a call
/// costs whatever else the machine is doing (wall time is not).
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Mean (wall, calling-thread CPU) seconds per call of `f`, over enough
/// calls to fill `budget`.
fn time_per_call(budget: Duration, mut f: impl FnMut()) -> (f64, f64) {
    f(); // warm-up (allocations, cache, thread wake-up)
    let start = Instant::now();
    let cpu_start = thread_cpu_seconds();
    let mut calls = 0u32;
    while calls < 3 || start.elapsed() < budget {
        f();
        calls += 1;
    }
    let wall = start.elapsed().as_secs_f64() / calls as f64;
    (wall, (thread_cpu_seconds() - cpu_start) / calls as f64)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Read bandwidth of a 512 MiB f32 sum, GB/s: the DRAM reference figure.
fn memory_read_gbps() -> f64 {
    let big = Tensor::ones([128 << 20], (Kind::Float, Device::Cpu));
    let seconds = median(
        (0..5)
            .map(|_| {
                time_per_call(Duration::from_millis(200), || {
                    drop(black_box(big.sum(Kind::Float)))
                })
                .0
            })
            .collect(),
    );
    (512u64 << 20) as f64 / seconds / 1e9
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| -> Result<Option<usize>, Box<dyn std::error::Error>> {
        match args.iter().position(|a| a == name) {
            Some(i) => Ok(Some(
                args.get(i + 1)
                    .ok_or(format!("{name} needs a number"))?
                    .parse()?,
            )),
            None => Ok(None),
        }
    };
    let rounds = flag("--rounds")?.unwrap_or(5);
    if let Some(threads) = flag("--threads")? {
        tch::set_num_threads(threads as i32);
    }
    // Thread CPU time equals the whole call's work only single-threaded.
    let single = tch::get_num_threads() == 1;
    let budget = Duration::from_millis(60);
    let path = KernelPath::selected()?;
    if args.iter().any(|a| a == "--prefill") {
        return prefill_table(rounds, single);
    }
    println!(
        "kernel path: {path}, threads: {} (tch::get_num_threads), rounds: {rounds}",
        tch::get_num_threads()
    );
    println!(
        "memory read bandwidth (512 MiB f32 sum via libtorch): {:.1} GB/s\n",
        memory_read_gbps()
    );
    println!("| out x in | batch | ours us | ours cold us | fp32 us | bf16 us | fp32/ours | bf16/ours | fp32/cold | bf16/cold | weights GB/s hot | cold |{}", if single { " CPU-time us ours / fp32 / bf16 | CPU-time fp32/ours | bf16/ours |" } else { "" });
    println!(
        "|---|---|---|---|---|---|---|---|---|---|---|---|{}",
        if single { "---|---|---|" } else { "" }
    );
    for (index, &(out, inp)) in SHAPES.iter().enumerate() {
        let w_q = ternary(out * inp, index as u64 + 1);
        let w_scale = 0.02f32;
        let packed = pack_storage(&w_q, out, inp);
        let matrix = PackedTernaryMatrix::from_storage(&packed, out, inp, w_scale)?;
        let copies = COLD_BYTES.div_ceil(matrix.weight_bytes()).max(2);
        let cold: Vec<PackedTernaryMatrix> = (0..copies).map(|_| matrix.clone()).collect();
        let w32 = Tensor::from_slice(&w_q)
            .to_kind(Kind::Float)
            .view([out as i64, inp as i64])
            * w_scale as f64;
        let w16 = w32.to_kind(Kind::BFloat16);
        drop(w_q);
        for &batch in &BATCHES {
            let x = Tensor::randn([batch as i64, inp as i64], (Kind::Float, Device::Cpu));
            let x16 = x.to_kind(Kind::BFloat16);
            let (mut ours, mut ours_cold, mut fp32, mut bf16) = (vec![], vec![], vec![], vec![]);
            for _ in 0..rounds {
                ours.push(time_per_call(budget, || {
                    drop(black_box(matrix.forward_with(path, &x).expect("kernel")));
                }));
                let mut next = 0;
                ours_cold.push(time_per_call(budget, || {
                    drop(black_box(
                        cold[next].forward_with(path, &x).expect("kernel"),
                    ));
                    next = (next + 1) % cold.len();
                }));
                fp32.push(time_per_call(budget, || {
                    drop(black_box(x.linear::<&Tensor>(&w32, None)))
                }));
                bf16.push(time_per_call(budget, || {
                    drop(black_box(x16.linear::<&Tensor>(&w16, None)))
                }));
            }
            let cpu = |v: &[(f64, f64)]| median(v.iter().map(|t| t.1).collect());
            let (ours_cpu, fp32_cpu, bf16_cpu) = (cpu(&ours), cpu(&fp32), cpu(&bf16));
            let wall = |v: Vec<(f64, f64)>| median(v.into_iter().map(|t| t.0).collect());
            let (ours, ours_cold, fp32, bf16) =
                (wall(ours), wall(ours_cold), wall(fp32), wall(bf16));
            let cpu_columns = if single {
                format!(
                    " {:.0} / {:.0} / {:.0} | {:.2} | {:.2} |",
                    ours_cpu * 1e6,
                    fp32_cpu * 1e6,
                    bf16_cpu * 1e6,
                    fp32_cpu / ours_cpu,
                    bf16_cpu / ours_cpu
                )
            } else {
                String::new()
            };
            let gbps = |s: f64| matrix.weight_bytes() as f64 / s / 1e9;
            println!(
                "| {out} x {inp} | {batch} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} |{cpu_columns}",
                ours * 1e6,
                ours_cold * 1e6,
                fp32 * 1e6,
                bf16 * 1e6,
                fp32 / ours,
                bf16 / ours,
                fp32 / ours_cold,
                bf16 / ours_cold,
                gbps(ours),
                gbps(ours_cold),
            );
        }
    }
    Ok(())
}

/// One prefill row: median (wall, CPU) seconds of each method over `rounds`
/// interleaved rounds, in the order ours, ours in 32-row slices, fp32, bf16.
fn prefill_case(
    (out, inp, rows): (usize, usize, usize),
    rounds: usize,
    seed: u64,
) -> Result<[(f64, f64); 4], Box<dyn std::error::Error>> {
    let w_q = ternary(out * inp, seed);
    let w_scale = 0.02f32;
    let matrix =
        PackedTernaryMatrix::from_storage(&pack_storage(&w_q, out, inp), out, inp, w_scale)?;
    let w32 = Tensor::from_slice(&w_q)
        .to_kind(Kind::Float)
        .view([out as i64, inp as i64])
        * w_scale as f64;
    let w16 = w32.to_kind(Kind::BFloat16);
    let x = SplitMix(seed + 100).normal_ish(rows * inp);
    let xt = Tensor::from_slice(&x).view([rows as i64, inp as i64]);
    let x16 = xt.to_kind(Kind::BFloat16);
    let (mut y, mut acts) = (vec![0f32; rows * out], QuantizedActivations::new());
    let budget = Duration::from_millis(60);
    let mut samples: [Vec<(f64, f64)>; 4] = Default::default();
    for _ in 0..rounds {
        samples[0].push(time_per_call(budget, || {
            matrix
                .matmul_reusing(&x, rows, &mut y, &mut acts)
                .expect("kernel");
            black_box(&y);
        }));
        samples[1].push(time_per_call(budget, || {
            for (xs, ys) in x.chunks(GEMV_ROWS * inp).zip(y.chunks_mut(GEMV_ROWS * out)) {
                let n = xs.len() / inp;
                matrix.matmul_reusing(xs, n, ys, &mut acts).expect("kernel");
            }
            black_box(&y);
        }));
        samples[2].push(time_per_call(budget, || {
            drop(black_box(xt.linear::<&Tensor>(&w32, None)))
        }));
        samples[3].push(time_per_call(budget, || {
            drop(black_box(x16.linear::<&Tensor>(&w16, None)))
        }));
    }
    let med = |v: &[(f64, f64)]| {
        (
            median(v.iter().map(|t| t.0).collect()),
            median(v.iter().map(|t| t.1).collect()),
        )
    };
    Ok([
        med(&samples[0]),
        med(&samples[1]),
        med(&samples[2]),
        med(&samples[3]),
    ])
}

/// The prefill table (`--prefill`): wall times, and with one thread the
/// calling thread's CPU times as well.
fn prefill_table(rounds: usize, single: bool) -> Result<(), Box<dyn std::error::Error>> {
    let time = if single { "CPU time" } else { "wall time" };
    println!("prefill: median {time} of {rounds} interleaved rounds, us\n");
    println!("| out x in | rows | ours | ours, 32-row slices | fp32 | bf16 | slices/ours | fp32/ours | bf16/ours |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (index, &(out, inp)) in PREFILL_SHAPES.iter().enumerate() {
        for &rows in &PREFILL_ROWS {
            let medians = prefill_case((out, inp, rows), rounds, index as u64 + 1)?;
            let t = medians.map(|(wall, cpu)| if single { cpu } else { wall });
            println!(
                "| {out} x {inp} | {rows} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} |",
                t[0] * 1e6, t[1] * 1e6, t[2] * 1e6, t[3] * 1e6, t[1] / t[0], t[2] / t[0], t[3] / t[0],
            );
        }
    }
    Ok(())
}
