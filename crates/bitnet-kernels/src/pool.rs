//! The kernels' persistent thread pool: threads that stay awake between
//! parallel regions, so a region of a few microseconds is worth splitting.
//!
//! Why it exists: a decode step of SmolLM2-135M has ~211 parallel regions
//! (7 ternary GEMVs x 30 layers, plus the LM head), each a few microseconds
//! of work at 2 threads. A rayon scope per region (job records on the heap,
//! waking parked workers, a join) cost about as much as the work, so 2
//! threads were no faster than 1 (issue #11). Here, as in ggml's threadpool,
//! the workers are created once per thread count and spin between regions
//! for a bounded window before they park.
//!
//! One region (`Pool::run`), with `helpers` = threads wanted - 1:
//! 1. the caller publishes the job (a type-erased `&dyn Fn()`), resets the
//!    done count and stores a new *ticket*: `generation << 32 | OPEN |
//!    helpers`, the low bits being the helper slots still free;
//! 2. a worker that sees a new generation claims a slot (CAS: open, slots
//!    left, same generation), runs the job and counts itself done;
//! 3. the caller runs the job too, then closes the ticket (clears `OPEN`),
//!    which tells it how many workers joined, and spins until that many are
//!    done.
//!
//! A worker that arrives after the close (descheduled on a busy machine, or
//! still waking from its park) skips the region: the caller waits only for
//! threads that are running the job, never for one that has not started.
//! That is the difference from a barrier, where one descheduled thread
//! stalls every op (what made llama.cpp fall to ~2 tokens/s at 2 threads on
//! a 2-core machine at load 10). The jobs take their chunks from an atomic
//! index ([`DisjointChunks`]), so whoever runs does the work.
//!
//! Parking: a waiting worker spins for [`SPIN_ENV_VAR`] microseconds
//! (default [`DEFAULT_SPIN_US`]) and then waits on a condvar, so an idle
//! process uses no CPU. The caller notifies only when a worker sleeps; the
//! sleeper count and the ticket are both `SeqCst`, so one of the two sides
//! sees the other and no wake-up is lost.
//!
//! Panics in a job are caught on every thread; the region still completes
//! (no thread is left waiting) and returns [`KernelError::TaskPanicked`]
//! with the first message. The pool stays usable.
//!
//! Nesting: a thread inside a region (a worker, or the caller during its
//! call) runs any further region inline on itself; a thread that finds the
//! process-wide pool busy with another thread's region runs inline too.
//! Results never depend on the thread count, only the speed does.
//!
//! No allocation per region: the job is a pointer pair, the ticket and
//! counters are atomics, the condvar is touched only to wake a sleeper.

use std::cell::{Cell, UnsafeCell};
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::KernelError;

/// Environment variable: how long (microseconds) an idle worker spins
/// before it parks. Read once per process.
pub const SPIN_ENV_VAR: &str = "BITNET_SPIN_US";
/// Default spin window: longer than the gaps between a decode step's
/// parallel regions (attention of one layer, ~20 us) and the sampler's
/// between steps, short enough that an idle process stops burning a core
/// almost at once.
pub const DEFAULT_SPIN_US: u64 = 200;

/// Ticket bit: the region still takes helpers.
const OPEN: u64 = 1 << 31;
/// Ticket bits: helper slots still free.
const SLOTS: u64 = OPEN - 1;
/// Spins of a waiting caller before it starts yielding its core.
const CALLER_SPINS: u32 = 1 << 14;
/// CAS attempts of a worker claiming a helper slot before it skips the region.
const CLAIM_ATTEMPTS: usize = 64;

/// A job as a pointer pair: the closure and its monomorphic trampoline.
#[derive(Clone, Copy)]
struct Job {
    data: *const (),
    call: unsafe fn(*const ()),
}

/// Calls the closure behind `data`.
///
/// # Safety
/// `data` must point to a live `F`.
unsafe fn call_job<F: Fn() + Sync>(data: *const ()) {
    // SAFETY: the caller guarantees `data` is a live `F` (see `Pool::run`).
    // pot10: allow(R9) the trampoline of a type-erased job; `Pool::run` keeps the closure alive until every thread that claimed it is done
    unsafe { (*data.cast::<F>())() }
}

fn noop(_: *const ()) {}

/// State shared by the caller and the workers of one pool.
struct Shared {
    ticket: AtomicU64,
    job: UnsafeCell<Job>,
    done: AtomicUsize,
    panicked: AtomicBool,
    panic_message: Mutex<Option<String>>,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
    spin: Duration,
}

// SAFETY: `job` is written only by the one caller of a region (which holds
// `&mut Pool`) before it opens the ticket (a release store) and read by a
// worker only after it claimed a slot of that open ticket (an acquire
// CAS); the pointer it holds is `Sync` data (`F: Sync`).
// pot10: allow(R9) the job cell is handed over through the ticket's release/acquire pair, see the comment above
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointers are only dereferenced under that protocol.
// pot10: allow(R9) see the Sync comment above
unsafe impl Send for Shared {}

// pot10: allow(R6) per-thread flag "inside a region" (nested calls run inline); it cannot be passed down through the callers' closures
thread_local! {
    /// Whether this thread is inside a region (a worker always is).
    static IN_REGION: Cell<bool> = const { Cell::new(false) };
}

/// Workers plus the state they share; dropping it stops and joins them.
pub(crate) struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Starts `workers` threads named `{name}-{i}`, spinning `spin` before
    /// they park.
    pub(crate) fn new(workers: usize, spin: Duration, name: &str) -> Result<Self, KernelError> {
        let shared = Arc::new(Shared {
            ticket: AtomicU64::new(0),
            job: UnsafeCell::new(Job {
                data: std::ptr::null(),
                call: noop,
            }),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            panic_message: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
            spin,
        });
        let mut pool = Pool {
            shared,
            workers: Vec::with_capacity(workers),
        };
        for i in 0..workers {
            let shared = Arc::clone(&pool.shared);
            let handle = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || worker_loop(&shared))
                .map_err(|err| KernelError::ThreadPool {
                    threads: workers + 1,
                    message: err.to_string(),
                })?;
            pool.workers.push(handle);
        }
        Ok(pool)
    }

    /// Worker threads (the caller is the extra one).
    pub(crate) fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Runs `f` on the calling thread and on up to `threads - 1` workers
    /// (those that join in time), returning when every thread that started
    /// `f` has finished it. `f` must split its work dynamically.
    pub(crate) fn run<F: Fn() + Sync>(&mut self, threads: usize, f: &F) -> Result<(), KernelError> {
        let helpers = threads.saturating_sub(1).min(self.workers.len());
        debug_assert!(helpers <= self.workers.len());
        debug_assert!((helpers as u64) < OPEN, "helper slots fit the ticket");
        if helpers == 0 || IN_REGION.get() {
            return run_inline(f);
        }
        IN_REGION.set(true);
        let shared = &*self.shared;
        let job = Job {
            data: std::ptr::from_ref(f).cast::<()>(),
            call: call_job::<F>,
        };
        // SAFETY: no region is in flight (`&mut self`; the last one waited
        // for every thread that claimed it), so no worker reads the cell.
        // pot10: allow(R9) writes the job cell while no worker can read it (see SAFETY)
        unsafe { *shared.job.get() = job };
        shared.done.store(0, Ordering::Relaxed);
        let generation = ((shared.ticket.load(Ordering::Relaxed) >> 32) + 1) & 0xffff_ffff;
        shared
            .ticket
            .store((generation << 32) | OPEN | helpers as u64, Ordering::SeqCst);
        if shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = shared.lock.lock().unwrap_or_else(PoisonError::into_inner);
            shared.wake.notify_all();
        }
        run_caught(shared, job);
        let closed = shared.ticket.fetch_and(!OPEN, Ordering::AcqRel);
        let joined = helpers - (closed & SLOTS) as usize;
        wait_done(shared, joined);
        IN_REGION.set(false);
        take_panic(shared)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _guard = self
                .shared
                .lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.shared.wake.notify_all();
        }
        for worker in self.workers.drain(..) {
            // A worker catches its jobs' panics, so join fails only if the
            // runtime itself did; nothing is left to clean up then.
            // pot10: allow(R7) a failed join leaves nothing to clean up (see above)
            let _ = worker.join();
        }
    }
}

/// `f` on the calling thread, its panic turned into an error like a region's.
fn run_inline<F: Fn() + Sync>(f: &F) -> Result<(), KernelError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| KernelError::TaskPanicked {
        message: panic_text(payload.as_ref()),
    })
}

/// A worker: wait for a region, join it if a slot is free, repeat.
fn worker_loop(shared: &Shared) {
    IN_REGION.set(true);
    let mut seen = 0;
    // pot10: allow(R2) a worker serves regions until the pool is dropped (shutdown)
    loop {
        let ticket = wait_for_region(shared, seen);
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        seen = ticket >> 32;
        if claim(shared, ticket) {
            // SAFETY: the claim's acquire CAS saw the ticket the caller
            // stored after writing the job; the caller keeps it alive and
            // unchanged until this thread counts itself done.
            // pot10: allow(R9) reads the job cell after claiming a slot of its open ticket (see SAFETY)
            let job = unsafe { *shared.job.get() };
            run_caught(shared, job);
            shared.done.fetch_add(1, Ordering::Release);
        }
    }
}

/// Takes a helper slot of the region `ticket` belongs to, if it is still
/// open and has one free.
fn claim(shared: &Shared, mut ticket: u64) -> bool {
    let generation = ticket >> 32;
    debug_assert!(generation <= 0xffff_ffff);
    // Each failed CAS means another thread took a slot or the caller
    // closed the region; giving up after a bound is always safe (the
    // caller does the work).
    for _ in 0..CLAIM_ATTEMPTS {
        if ticket >> 32 != generation || ticket & OPEN == 0 || ticket & SLOTS == 0 {
            return false;
        }
        match shared.ticket.compare_exchange_weak(
            ticket,
            ticket - 1,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return true,
            Err(now) => ticket = now,
        }
    }
    false
}

/// Spins until the generation differs from `seen` (or shutdown), for at
/// most the spin window; then parks. Returns the ticket it saw.
fn wait_for_region(shared: &Shared, seen: u64) -> u64 {
    let start = Instant::now();
    let mut spins = 0u32;
    // pot10: allow(R2) bounded by the spin window (a clock, checked every 64 spins), then parks
    loop {
        let ticket = shared.ticket.load(Ordering::Acquire);
        if ticket >> 32 != seen || shared.shutdown.load(Ordering::Relaxed) {
            return ticket;
        }
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins & 63 == 0 && start.elapsed() >= shared.spin {
            return park(shared, seen);
        }
    }
}

/// Sleeps on the condvar until a new generation or shutdown.
fn park(shared: &Shared, seen: u64) -> u64 {
    let mut guard = shared.lock.lock().unwrap_or_else(PoisonError::into_inner);
    shared.sleepers.fetch_add(1, Ordering::SeqCst);
    // pot10: allow(R2) sleeps until the next region or shutdown; spurious wake-ups loop
    loop {
        let ticket = shared.ticket.load(Ordering::SeqCst);
        if ticket >> 32 != seen || shared.shutdown.load(Ordering::SeqCst) {
            shared.sleepers.fetch_sub(1, Ordering::SeqCst);
            return ticket;
        }
        guard = shared
            .wake
            .wait(guard)
            .unwrap_or_else(PoisonError::into_inner);
    }
}

/// Runs a job, recording a panic instead of unwinding through the pool.
fn run_caught(shared: &Shared, job: Job) {
    // SAFETY: `job` is the current region's, alive until it completes.
    // pot10: allow(R9) calls the type-erased job of the region this thread is part of (see `Pool::run`)
    let result = catch_unwind(AssertUnwindSafe(|| unsafe { (job.call)(job.data) }));
    if let Err(payload) = result {
        let mut slot = shared
            .panic_message
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(panic_text(payload.as_ref()));
        }
        shared.panicked.store(true, Ordering::Release);
    }
}

/// Spins (then yields) until `joined` workers have finished the region.
fn wait_done(shared: &Shared, joined: usize) {
    let mut spins = 0u32;
    debug_assert!(joined < OPEN as usize);
    // pot10: allow(R2) waits for the workers that joined, which are running the job
    while shared.done.load(Ordering::Acquire) < joined {
        if spins < CALLER_SPINS {
            spins += 1;
            std::hint::spin_loop();
        } else {
            // A joined worker was descheduled mid-chunk: give it the core.
            std::thread::yield_now();
        }
    }
}

/// The region's outcome: an error with the first panic's message, if any.
fn take_panic(shared: &Shared) -> Result<(), KernelError> {
    if !shared.panicked.swap(false, Ordering::Acquire) {
        return Ok(());
    }
    let message = shared
        .panic_message
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .unwrap_or_default();
    Err(KernelError::TaskPanicked { message })
}

// pot10: allow(R3) only after a panic: the message of the error that reports it
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a non-string panic payload".to_string()
    }
}

/// The spin window: [`SPIN_ENV_VAR`] if set to a number, else the default.
pub fn spin_window() -> Duration {
    static SPIN: OnceLock<Duration> = OnceLock::new();
    *SPIN.get_or_init(|| {
        let micros = std::env::var(SPIN_ENV_VAR)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(DEFAULT_SPIN_US);
        Duration::from_micros(micros)
    })
}

/// Runs `f` on `threads` threads (the calling one included) of the
/// process-wide pool, which is (re)built with `max(threads,
/// crate::num_threads()) - 1` workers when that count changes. Inline on
/// one thread, inside a region, or while another thread's region runs.
// pot10: init (builds the process-wide pool on first use or after a thread-count change; later calls reuse it)
pub(crate) fn on_threads<F: Fn() + Sync>(threads: usize, f: &F) -> Result<(), KernelError> {
    // pot10: allow(R6) the process-wide pool: kernels are called from deep in the model, which cannot carry a pool handle
    static POOL: Mutex<Option<Pool>> = Mutex::new(None);
    if threads <= 1 || IN_REGION.get() {
        return run_inline(f);
    }
    let mut guard = match POOL.try_lock() {
        Ok(guard) => guard,
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(TryLockError::WouldBlock) => return run_inline(f),
    };
    let workers = threads.max(crate::num_threads()) - 1;
    debug_assert!(workers >= 1 && workers < threads.max(crate::num_threads()));
    if guard.as_ref().map(Pool::workers) != Some(workers) {
        // Stop the old workers before starting the new ones.
        *guard = None;
        *guard = Some(Pool::new(workers, spin_window(), "bitnet-kernel")?);
    }
    match guard.as_mut() {
        Some(pool) => pool.run(threads, f),
        None => run_inline(f),
    }
}

/// A mutable slice cut into `count` chunks at `boundary(i)..boundary(i + 1)`,
/// handed out once each, to whichever thread asks next: the lock-free work
/// queue of a region.
pub(crate) struct DisjointChunks<'a, T, B> {
    ptr: *mut T,
    len: usize,
    count: usize,
    boundary: B,
    next: AtomicUsize,
    _out: PhantomData<&'a mut [T]>,
}

// SAFETY: each chunk is handed to one thread only (a unique index from
// `fetch_add`), and chunks do not overlap (`take` checks the boundaries),
// so sharing the queue shares disjoint `&mut [T]`, which needs `T: Send`.
// pot10: allow(R9) disjoint `&mut` chunks of one slice handed to different threads (see SAFETY)
unsafe impl<T: Send, B: Sync> Sync for DisjointChunks<'_, T, B> {}

impl<'a, T, B: Fn(usize) -> usize> DisjointChunks<'a, T, B> {
    /// `boundary` must be a pure function with `boundary(0) == 0`,
    /// `boundary(count) == out.len()`, non-decreasing (checked here: O(count)
    /// calls, a few nanoseconds each).
    pub(crate) fn new(out: &'a mut [T], count: usize, boundary: B) -> Self {
        assert_eq!(boundary(0), 0, "chunk boundaries start at 0");
        assert_eq!(
            boundary(count),
            out.len(),
            "chunk boundaries end at the slice's end"
        );
        let mut previous = 0;
        for i in 1..=count {
            let bound = boundary(i);
            assert!(
                bound >= previous,
                "chunk boundary {i} ({bound}) goes back from {previous}"
            );
            previous = bound;
        }
        DisjointChunks {
            ptr: out.as_mut_ptr(),
            len: out.len(),
            count,
            boundary,
            next: AtomicUsize::new(0),
            _out: PhantomData,
        }
    }

    /// The next chunk not yet handed out: `(index, start, slice)`.
    pub(crate) fn take(&self) -> Option<(usize, usize, &'a mut [T])> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if i >= self.count {
            return None;
        }
        let (start, end) = ((self.boundary)(i), (self.boundary)(i + 1));
        assert!(
            start <= end && end <= self.len,
            "chunk {i}: {start}..{end} of {}",
            self.len
        );
        // SAFETY: index `i` is handed out once; the boundaries of a pure
        // `boundary` are non-decreasing (checked in `new`), so chunk `i`
        // overlaps no other; `start..end` lies inside the slice borrowed
        // for 'a.
        // pot10: allow(R9) one disjoint chunk of the borrowed slice per unique index (see SAFETY)
        Some((i, start, unsafe {
            std::slice::from_raw_parts_mut(self.ptr.add(start), end - start)
        }))
    }
}

#[cfg(test)]
mod tests;
