//! A decode step allocates nothing after warm-up (issue #11), on 1 and 2
//! kernel threads (the persistent pool hands out work through atomics): a counting
//! global allocator in its own test binary, so no other test's allocations
//! are counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bitnet_infer::testing::{random_model, tiny_config};
use bitnet_infer::{DecodeConfig, DecodeState, KeptDtype};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations during 20 greedy decode steps after a warm-up.
fn allocations_in_steps(config: &DecodeConfig, tied: bool, kept: KeptDtype) -> usize {
    let model = random_model(config, 2, tied, kept, 3).unwrap();
    let mut state = DecodeState::new(&model, 64, 1).unwrap();
    // Warm-up: a 5-token prompt grows the scratch to 5 rows, one step
    // (and the first parallel region starts the kernels' workers).
    state.forward(&model, &[1, 2, 3, 4, 5]).unwrap();
    state.forward(&model, &[6]).unwrap();
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    let mut token = 7u32;
    for _ in 0..20 {
        let logits = state.forward(&model, &[token]).unwrap();
        // Greedy: the argmax feeds the next step, as generation does.
        token = logits
            .iter()
            .enumerate()
            .fold(
                (0, f32::MIN),
                |best, (i, &v)| if v > best.1 { (i, v) } else { best },
            )
            .0 as u32;
    }
    assert_eq!(state.len(), 26);
    ALLOCATIONS.load(Ordering::SeqCst) - before
}

/// Wide enough that the kernels split its GEMVs (gate/up/down: 2,048
/// block-units, the parallel threshold) and its head (3 pieces of 512 rows).
fn wide_config() -> DecodeConfig {
    DecodeConfig {
        hidden: 256,
        intermediate: 2048,
        heads: 4,
        kv_heads: 2,
        head_dim: 64,
        vocab: 1100,
        rope_theta: 10_000.0,
        rms_eps: 1e-5,
    }
}

#[test]
fn decode_steps_allocate_nothing_after_warm_up() {
    // One test function: the thread count is process-wide.
    for threads in [1, 2] {
        bitnet_kernels::set_num_threads(threads);
        for (config, tied, kept) in [
            (tiny_config(), true, KeptDtype::F32),
            (tiny_config(), false, KeptDtype::Int8),
            (tiny_config(), true, KeptDtype::Bf16),
            (wide_config(), true, KeptDtype::Int8),
            (wide_config(), false, KeptDtype::F32),
        ] {
            let during = allocations_in_steps(&config, tied, kept);
            assert_eq!(
                during, 0,
                "{during} allocations in 20 decode steps ({kept:?}, tied {tied}, hidden {}, {threads} threads)",
                config.hidden
            );
        }
    }
    // The 2-thread runs did go through the kernels' worker thread.
    #[cfg(target_os = "linux")]
    assert!(
        std::fs::read_dir("/proc/self/task").unwrap().any(|t| {
            std::fs::read_to_string(t.unwrap().path().join("comm"))
                .is_ok_and(|c| c.starts_with("bitnet-kernel"))
        }),
        "no kernel worker thread was started"
    );
    // The counter counts: building a state allocates.
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    let model = random_model(&tiny_config(), 1, true, KeptDtype::F32, 4).unwrap();
    let _state = DecodeState::new(&model, 8, 1).unwrap();
    assert!(ALLOCATIONS.load(Ordering::SeqCst) > before);
}
