//! A per-CPU memory allocator on restartable sequences.
//!
//! Select it for a Rust program with one line:
//!
//! ```
//! use restartable_malloc::RestartableMalloc;
//!
//! #[global_allocator]
//! static GLOBAL: RestartableMalloc = RestartableMalloc;
//!
//! let v: Vec<u64> = (0..1000).collect();
//! assert_eq!(v.iter().sum::<u64>(), 499_500);
//! ```
//!
//! Small objects (up to 256 KiB, in 52 size classes) come from a cache per
//! CPU, taken from and put back with one critical section each: no lock
//! and no atomic read-modify-write, whichever thread frees the object.
//! Caches refill from, and flush to, one central list per class in
//! batches. Larger requests take whole 256 KiB spans, returned to the
//! system (`madvise(MADV_DONTNEED)`) as soon as they are freed. `free`
//! finds an object's class in a table indexed by its address, so small
//! objects have no header.
//!
//! Without rseq (a sandbox that refuses it, valgrind,
//! `RESTARTABLE_DISABLE=1`) a thread first uses a magazine of its own (8
//! objects of each class up to 128 bytes, plain loads and stores, given
//! back when the thread exits), then the same caches under a per-CPU,
//! per-class guard word: one compare-exchange and one store per call.
//!
//! A pointer the allocator never handed out (outside its range, in a free
//! span, or not the start of an object) stops the process with a message
//! naming the address. Design and status: `docs/allocator.md`.
//!
//! Layers, each using only those above it: [`classes`] (size classes),
//! [`region`] (the address range and its span table), [`lock`],
//! [`spans`] (runs of spans, reused), [`central`] (the central lists),
//! [`cache`] (the per-CPU caches and their sections), [`heap`] (all of it,
//! and the process's one heap), [`tunables`]; [`cabi`] holds the C
//! allocator's contract (`errno`, odd arguments) for the `LD_PRELOAD`
//! library, `librestartable_malloc.so` (crate `restartable-malloc-preload`).

use core::alloc::{GlobalAlloc, Layout};

pub mod cabi;
pub mod cache;
pub mod central;
pub mod classes;
pub mod heap;
pub mod lock;
mod magazine;
pub mod region;
pub mod spans;
mod stats;
pub mod tunables;

pub use stats::{stats, ClassStats, Stats};

/// Which path the calling thread's allocations take: `"rseq"` (the
/// per-CPU caches through critical sections) or `"fallback"` (the same
/// caches under their guard words: no rseq for this thread).
pub fn path() -> &'static str {
    if restartable::section::Thread::current().is_some() {
        return "rseq";
    }
    // A thread whose area the runtime gave up in its exit destructors (the
    // exit report, where the library registered the thread itself) ran on
    // the rseq path until then.
    match restartable::registration().fallback {
        Some(restartable::FallbackReason::ThreadExiting) => "rseq",
        _ => "fallback",
    }
}

/// Returns free memory to the system now, as `malloc_trim` does: every
/// CPU's cached objects go back to the central lists (through the fence),
/// then every run with no object in use goes back (`madvise`). True when
/// some memory went back; false also before the first allocation. Without
/// it, the release policy does the same at most every
/// `RESTARTABLE_MALLOC_RELEASE_MS` ([`tunables`]).
pub fn trim() -> bool {
    cabi::trim()
}

/// What picks a thread's cache block: `"cpu_id"` (the CPU number, the
/// default) or `"mm_cid"` (the concurrency id: `RESTARTABLE_MALLOC_INDEX=mm_cid`
/// on a kernel that maintains it, Linux 6.3+). Sets the heap up if it is
/// not yet.
pub fn index() -> &'static str {
    match heap::heap().map(|h| h.caches.index()) {
        Some(restartable::section::Index::MmCid) => "mm_cid",
        _ => "cpu_id",
    }
}

/// The allocator, for `#[global_allocator]`. It holds nothing: the heap
/// is process-wide and set up at the first call.
#[derive(Clone, Copy, Debug, Default)]
pub struct RestartableMalloc;

// SAFETY: every method forwards to the process's heap, which returns
// memory of at least the layout's size and alignment, never handed out
// twice while live, or null; `dealloc` and `realloc` receive only pointers
// it returned (the caller's contract).
unsafe impl GlobalAlloc for RestartableMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match heap::heap() {
            Some(h) => h.alloc(layout.size(), layout.align()),
            None => core::ptr::null_mut(),
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // A pointer exists only if the heap was set up.
        if let Some(h) = heap::heap() {
            // SAFETY: `ptr` came from this allocator and is live (the
            // caller's contract).
            unsafe { h.free(ptr) };
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match heap::heap() {
            Some(h) => h.alloc_zeroed(layout.size(), layout.align()),
            None => core::ptr::null_mut(),
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match heap::heap() {
            // SAFETY: as for `dealloc`.
            Some(h) => unsafe { h.realloc(ptr, layout.align(), new_size) },
            None => core::ptr::null_mut(),
        }
    }
}
