use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::*;

/// Runs `f` on `pool` over `len` elements cut into `chunk`s, each element
/// counting its visits.
fn visit_counts(pool: &mut Pool, threads: usize, len: usize, chunk: usize) -> Vec<u32> {
    let mut out = vec![0u32; len];
    let pieces = len.div_ceil(chunk);
    let queue = DisjointChunks::new(&mut out, pieces, |i| (i * chunk).min(len));
    pool.run(threads, &|| {
        while let Some((_, start, piece)) = queue.take() {
            for (i, v) in piece.iter_mut().enumerate() {
                // The chunk lies where its start says.
                assert!(start + i < len);
                *v += 1;
            }
        }
    })
    .unwrap();
    out
}

#[test]
fn every_element_is_visited_exactly_once_on_1_to_4_threads() {
    let mut pool = Pool::new(3, Duration::from_micros(50), "bk-visit").unwrap();
    for threads in 1..=4 {
        for (len, chunk) in [(1, 1), (7, 3), (97, 5), (1001, 13), (4099, 64), (5, 9)] {
            let counts = visit_counts(&mut pool, threads, len, chunk);
            assert!(
                counts.iter().all(|&c| c == 1),
                "{threads} threads, {len}/{chunk}: {counts:?}"
            );
        }
    }
}

/// Each thread waits (bounded) until all the pool can give, `threads` at
/// most, have entered the job: the workers really take part, also when
/// woken from their park.
fn entered_after_wait(pool: &mut Pool, threads: usize) -> usize {
    let entered = AtomicUsize::new(0);
    let expected = threads.min(pool.workers() + 1);
    pool.run(threads, &|| {
        entered.fetch_add(1, Ordering::SeqCst);
        let start = Instant::now();
        while entered.load(Ordering::SeqCst) < expected && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::yield_now();
        }
    })
    .unwrap();
    entered.load(Ordering::SeqCst)
}

#[test]
fn workers_join_regions_after_parking_and_thread_counts_can_change() {
    let mut pool = Pool::new(3, Duration::from_micros(10), "bk-join").unwrap();
    for threads in [4, 2, 3, 4] {
        // Well past the spin window: every worker is parked.
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(entered_after_wait(&mut pool, threads), threads);
    }
    // Asking for more threads than workers uses the workers there are.
    assert_eq!(entered_after_wait(&mut pool, 9), 4);
}

#[test]
fn a_panic_on_a_worker_or_the_caller_is_an_error_and_the_pool_survives() {
    let mut pool = Pool::new(1, Duration::from_millis(1), "bk-panic").unwrap();
    for panicking in ["bk-panic-0", "caller"] {
        let entered = AtomicUsize::new(0);
        let result = pool.run(2, &|| {
            entered.fetch_add(1, Ordering::SeqCst);
            let start = Instant::now();
            while entered.load(Ordering::SeqCst) < 2 && start.elapsed() < Duration::from_secs(10) {
                std::thread::yield_now();
            }
            let on_worker = std::thread::current().name() == Some("bk-panic-0");
            if on_worker == (panicking == "bk-panic-0") {
                panic!("boom on {panicking}");
            }
        });
        let err = result.unwrap_err();
        assert!(
            err.to_string().contains(&format!("boom on {panicking}")),
            "{err}"
        );
        assert_eq!(entered.load(Ordering::SeqCst), 2);
        // The next region runs normally on both threads.
        assert_eq!(entered_after_wait(&mut pool, 2), 2);
    }
}

#[test]
fn nested_regions_run_inline_without_deadlock() {
    let mut pool = Pool::new(2, Duration::from_micros(100), "bk-nest").unwrap();
    let mut out = vec![0u32; 300];
    let queue = DisjointChunks::new(&mut out, 30, |i| i * 10);
    pool.run(3, &|| {
        while let Some((_, _, piece)) = queue.take() {
            // A task calling the process-wide pool, and one calling for
            // more threads: both run on this thread.
            let inner = AtomicUsize::new(0);
            on_threads(3, &|| {
                inner.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
            assert_eq!(inner.load(Ordering::SeqCst), 1);
            for v in piece.iter_mut() {
                *v += inner.load(Ordering::SeqCst) as u32;
            }
        }
    })
    .unwrap();
    assert!(out.iter().all(|&v| v == 1));
}

#[test]
fn the_process_wide_pool_follows_thread_count_changes() {
    for threads in [2, 4, 3, 2] {
        let mut out = vec![0u8; 1000];
        let queue = DisjointChunks::new(&mut out, 100, |i| i * 10);
        on_threads(threads, &|| {
            while let Some((_, _, piece)) = queue.take() {
                piece.iter_mut().for_each(|v| *v += 1);
            }
        })
        .unwrap();
        assert!(out.iter().all(|&v| v == 1), "{threads} threads");
    }
}

#[test]
#[should_panic(expected = "goes back")]
fn overlapping_chunk_boundaries_are_refused() {
    let mut out = [0u8; 10];
    let bounds = [0, 5, 3, 10];
    let _ = DisjointChunks::new(&mut out, 3, |i| bounds[i]);
}

/// The scheduler state (`R` running or runnable, `S` sleeping, ...) and
/// the CPU clock ticks (user + system) of this process's thread `name`.
#[cfg(target_os = "linux")]
fn thread_state_and_ticks(name: &str) -> (char, u64) {
    for entry in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = entry.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
        // Fields after the ")" of the command: the state is the 3rd field
        // overall, utime the 14th and stime the 15th.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        return (fields[0].chars().next().unwrap(), ticks);
    }
    panic!("no thread named {name}");
}

/// The states of thread `name` sampled 5 times over `window`, and the CPU
/// ticks it used meanwhile.
#[cfg(target_os = "linux")]
fn watch(name: &str, window: Duration) -> (String, u64) {
    let (_, before) = thread_state_and_ticks(name);
    let mut states = String::new();
    for _ in 0..5 {
        std::thread::sleep(window / 5);
        states.push(thread_state_and_ticks(name).0);
    }
    (states, thread_state_and_ticks(name).1 - before)
}

#[test]
#[cfg(target_os = "linux")]
fn an_idle_worker_parks_after_the_spin_window_and_uses_no_cpu() {
    let window = Duration::from_millis(250);
    let mut idle = Pool::new(1, Duration::from_millis(1), "bk-idle").unwrap();
    assert_eq!(entered_after_wait(&mut idle, 2), 2);
    std::thread::sleep(Duration::from_millis(20));
    let (idle_states, idle_ticks) = watch("bk-idle-0", window);
    // The states tell spinning from parking however busy the machine is:
    // a worker whose window outlasts the interval is runnable throughout.
    let mut spinning = Pool::new(1, Duration::from_secs(60), "bk-spin").unwrap();
    assert_eq!(entered_after_wait(&mut spinning, 2), 2);
    let (spin_states, _) = watch("bk-spin-0", window);
    drop(spinning);
    assert_eq!(idle_states, "SSSSS", "the idle worker did not park");
    // Clock ticks are 10 ms: a parked worker uses none.
    assert!(
        idle_ticks <= 1,
        "parked worker used {idle_ticks} ticks in {window:?}"
    );
    assert_eq!(spin_states, "RRRRR", "a spinning worker should be runnable");
}
