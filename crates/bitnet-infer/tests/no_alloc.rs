//! A decode step allocates nothing after warm-up (issue #11): a counting
//! global allocator in its own test binary, so no other test's allocations
//! are counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bitnet_infer::testing::{random_model, tiny_config};
use bitnet_infer::{DecodeState, KeptDtype};

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

#[test]
fn decode_steps_allocate_nothing_after_warm_up() {
    // One kernel thread: the multi-threaded split hands jobs to rayon,
    // whose job records are heap-allocated (see the crate docs).
    bitnet_kernels::set_num_threads(1);
    for (tied, kept) in [
        (true, KeptDtype::F32),
        (false, KeptDtype::Int8),
        (true, KeptDtype::Bf16),
    ] {
        let model = random_model(&tiny_config(), 2, tied, kept, 3).unwrap();
        let mut state = DecodeState::new(&model, 64, 1).unwrap();
        // Warm-up: a 5-token prompt grows the scratch to 5 rows, one step.
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
        let during = ALLOCATIONS.load(Ordering::SeqCst) - before;
        assert_eq!(
            during, 0,
            "{during} allocations in 20 decode steps ({kept:?}, tied {tied})"
        );
        assert_eq!(state.len(), 26);
    }
    // The counter counts: building a state allocates.
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    let model = random_model(&tiny_config(), 1, true, KeptDtype::F32, 4).unwrap();
    let _state = DecodeState::new(&model, 8, 1).unwrap();
    assert!(ALLOCATIONS.load(Ordering::SeqCst) > before);
}
