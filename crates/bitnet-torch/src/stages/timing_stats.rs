//! Statistics for interleaved A/B timings: order statistics per side, the
//! ratio of medians with a paired-bootstrap interval, and the machine's load.
//!
//! Why these: a median with its interquartile range describes a noisy
//! timing better than a mean, and p95/p99 of 10 samples are both just the
//! maximum. A ratio of two medians measured on a shared machine needs an
//! interval before anyone can call it a speedup; resampling whole
//! iterations (the baseline and BitNet samples of iteration i together)
//! keeps the interleaving's protection against drift (Efron & Tibshirani,
//! "An Introduction to the Bootstrap", 1993, ch. 13, percentile interval).
//! The load average says whether other work shared the cores.

use bitnet_kernels::testing::SplitMix;

/// Order statistics of one side on one shape, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyStats {
    pub median_ms: f64,
    pub p25_ms: f64,
    pub p75_ms: f64,
    pub p95_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// Quantile `q` in 0..=1 of sorted samples, linearly interpolated between
/// order statistics (Hyndman & Fan type 7, numpy's default), so the median
/// of an even count is the mean of the two middle samples.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    if n == 1 {
        return sorted[0];
    }
    let h = q.clamp(0.0, 1.0) * (n - 1) as f64;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(n - 1);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    quantile(values, 0.5)
}

/// Median, quartiles, p95, extremes and mean; `None` for no samples or a
/// non-finite one (a timing that went wrong must not become a figure).
pub fn latency_stats(samples_ms: &[f64]) -> Option<LatencyStats> {
    if samples_ms.is_empty() || samples_ms.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let mut s = samples_ms.to_vec();
    s.sort_by(f64::total_cmp);
    Some(LatencyStats {
        median_ms: quantile(&s, 0.5),
        p25_ms: quantile(&s, 0.25),
        p75_ms: quantile(&s, 0.75),
        p95_ms: quantile(&s, 0.95),
        min_ms: s[0],
        max_ms: s[s.len() - 1],
        mean_ms: s.iter().sum::<f64>() / s.len() as f64,
    })
}

/// Geometric mean of positive ratios.
pub fn geometric_mean(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() || xs.iter().any(|&x| !(x.is_finite() && x > 0.0)) {
        return None;
    }
    Some((xs.iter().map(|x| x.ln()).sum::<f64>() / xs.len() as f64).exp())
}

/// Bootstrap resamples: enough for a stable 2.5% tail (50 resamples beyond
/// it) while costing a few milliseconds per shape.
pub const BOOTSTRAP_RESAMPLES: usize = 2000;

/// One shape's interleaved samples: `baseline[i]` and `bitnet[i]` are the
/// timings of iteration `i`.
pub struct PairedSamples<'a> {
    pub baseline: &'a [f64],
    pub bitnet: &'a [f64],
}

impl PairedSamples<'_> {
    /// Median baseline / median BitNet of one resample (indices into the
    /// iterations).
    fn ratio_of(&self, idx: &[usize], a: &mut Vec<f64>, b: &mut Vec<f64>) -> f64 {
        a.clear();
        b.clear();
        a.extend(idx.iter().map(|&i| self.baseline[i]));
        b.extend(idx.iter().map(|&i| self.bitnet[i]));
        median(a) / median(b)
    }
}

/// 95% percentile interval of the geometric mean over `shapes` of each
/// shape's ratio of medians (one shape: of its ratio), resampling each
/// shape's iterations with replacement, pairs kept together. Deterministic
/// (fixed seed) so the same samples give the same interval. `None` when a
/// shape has no samples or unequal counts.
pub fn bootstrap_ratio_interval(shapes: &[PairedSamples<'_>]) -> Option<(f64, f64)> {
    if shapes.is_empty()
        || shapes
            .iter()
            .any(|s| s.baseline.is_empty() || s.baseline.len() != s.bitnet.len())
    {
        return None;
    }
    let mut rng = SplitMix(0x5EED_B007);
    let (mut a, mut b, mut idx) = (Vec::new(), Vec::new(), Vec::new());
    let mut stats = Vec::with_capacity(BOOTSTRAP_RESAMPLES);
    for _ in 0..BOOTSTRAP_RESAMPLES {
        let mut log_sum = 0.0;
        for s in shapes {
            let n = s.baseline.len();
            idx.clear();
            idx.extend((0..n).map(|_| rng.below(n as u64) as usize));
            log_sum += s.ratio_of(&idx, &mut a, &mut b).ln();
        }
        stats.push((log_sum / shapes.len() as f64).exp());
    }
    if stats.iter().any(|x| !x.is_finite()) {
        return None;
    }
    stats.sort_by(f64::total_cmp);
    Some((quantile(&stats, 0.025), quantile(&stats, 0.975)))
}

/// The 1-minute load average (`/proc/loadavg`), if readable.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Cores this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_statistics_interpolate_like_numpy() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        let st = latency_stats(&s).unwrap();
        // numpy.percentile(range(1, 101), [50, 25, 75, 95])
        assert_eq!(st.median_ms, 50.5);
        assert_eq!(st.p25_ms, 25.75);
        assert_eq!(st.p75_ms, 75.25);
        assert!((st.p95_ms - 95.05).abs() < 1e-9, "{}", st.p95_ms);
        assert_eq!((st.min_ms, st.max_ms, st.mean_ms), (1.0, 100.0, 50.5));
        let st = latency_stats(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((st.median_ms, st.max_ms), (2.0, 3.0));
        assert!(latency_stats(&[]).is_none());
        assert!(latency_stats(&[1.0, f64::NAN]).is_none());
    }

    #[test]
    fn geometric_mean_of_ratios() {
        let g = geometric_mean(&[2.0, 8.0]).unwrap();
        assert!((g - 4.0).abs() < 1e-12);
        assert!(geometric_mean(&[1.0, 0.0]).is_none());
        assert!(geometric_mean(&[]).is_none());
    }

    /// A clear 2x difference gives an interval around 2 that excludes 1; two
    /// draws from the same distribution give one that contains 1; the same
    /// samples give the same interval.
    #[test]
    fn bootstrap_interval_separates_real_differences_from_noise() {
        let mut rng = SplitMix(3);
        let noise = |rng: &mut SplitMix| 1.0 + rng.below(1000) as f64 / 5000.0; // 1.0..1.2
        let base: Vec<f64> = (0..30).map(|_| 2.0 * noise(&mut rng)).collect();
        let fast: Vec<f64> = (0..30).map(|_| noise(&mut rng)).collect();
        let same: Vec<f64> = (0..30).map(|_| 2.0 * noise(&mut rng)).collect();
        let shape = PairedSamples {
            baseline: &base,
            bitnet: &fast,
        };
        let (lo, hi) = bootstrap_ratio_interval(&[shape]).unwrap();
        assert!(lo > 1.6 && hi < 2.4 && lo < hi, "({lo}, {hi})");
        let point = {
            let (mut a, mut b) = (base.clone(), fast.clone());
            median(&mut a) / median(&mut b)
        };
        assert!(lo <= point && point <= hi, "{point} outside ({lo}, {hi})");
        let null = PairedSamples {
            baseline: &base,
            bitnet: &same,
        };
        let (lo, hi) = bootstrap_ratio_interval(&[null]).unwrap();
        assert!(lo < 1.0 && hi > 1.0, "({lo}, {hi}) should contain 1");
        let again = bootstrap_ratio_interval(&[PairedSamples {
            baseline: &base,
            bitnet: &same,
        }])
        .unwrap();
        assert_eq!((lo, hi), again);
        assert!(bootstrap_ratio_interval(&[PairedSamples {
            baseline: &base,
            bitnet: &fast[..3],
        }])
        .is_none());
    }

    #[test]
    fn load_average_reads_proc() {
        let load = load_average().expect("/proc/loadavg on Linux");
        assert!(load >= 0.0 && load.is_finite());
        assert!(cores() >= 1);
    }
}
