//! What the CRC-32 check of `.pt` records costs (issue #16, docs/perf.md).
//!
//! Ignored: it needs a large checkpoint, written by
//! `scripts/bench-pt-crc.sh` (which runs this). Loads the file with the check and
//! without it, interleaved (A B A B ...) after one warm-up load of each, so page
//! cache and machine load hit both alike; prints medians, the ratio, the checksum alone over the file's bytes, and
//! the load.

use std::time::Instant;

use crate::checkpoint::torch_pt::{read_pt_checked, Crc};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
#[ignore = "needs HOSTILE_PT_BENCH=<large .pt>; run by scripts/bench-pt-crc.sh"]
fn crc_check_cost_on_a_large_checkpoint() {
    let path =
        std::path::PathBuf::from(std::env::var("HOSTILE_PT_BENCH").expect("HOSTILE_PT_BENCH"));
    let iters: usize = std::env::var("HOSTILE_PT_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9);
    let bytes = std::fs::metadata(&path).unwrap().len();
    let load = |crc| {
        let t0 = Instant::now();
        let c = read_pt_checked(&path, crc).unwrap();
        let s = t0.elapsed().as_secs_f64();
        assert!(!c.tensors.is_empty());
        s
    };
    load(Crc::Verify);
    load(Crc::Skip);
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..iters {
        with.push(load(Crc::Verify));
        without.push(load(Crc::Skip));
    }
    // The checksum alone over the whole file, from memory: the floor of its cost.
    let file = std::fs::read(&path).unwrap();
    let mut alone: Vec<f64> = (0..iters)
        .map(|_| {
            let t0 = Instant::now();
            std::hint::black_box(crc32fast::hash(std::hint::black_box(&file)));
            t0.elapsed().as_secs_f64()
        })
        .collect();
    let (w, wo, a) = (median(&mut with), median(&mut without), median(&mut alone));
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "crc-cost: file_mb={:.1} iters={iters} load_with_crc_median_s={w:.3} load_without_crc_median_s={wo:.3} ratio={:.3} crc_alone_median_s={a:.4} crc_alone_gb_per_s={:.1} loadavg=\"{}\"",
        bytes as f64 / 1e6,
        w / wo,
        bytes as f64 / 1e9 / a,
        loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
}
