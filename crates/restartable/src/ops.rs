//! Per-CPU operations: a critical section when the thread has rseq, with a
//! bounded number of retries, then the fallback path.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::{self, Attempt};
use crate::registration::{self, AreaRef};
use crate::slots::{Padded, SLOT_SHIFT};
use crate::{fallback, stats};

/// A structure's section path gave up (no id, 16 aborts, a guard held too
/// long): the operation takes the fallback path.
pub(crate) struct Fallback;

/// Consecutive aborts after which an operation completes on the fallback
/// path instead, so a section that can never finish (a debugger
/// single-stepping it, a signal on every attempt) cannot hang the caller.
pub(crate) const MAX_ATTEMPTS: u32 = 16;

/// The words of one per-CPU `u64`: `section` is written only by critical
/// sections running on its CPU (plain, non-atomic adds), `fallback` only
/// with atomic read-modify-writes. Keeping them apart is what makes mixing
/// the two paths safe: an atomic add never races a section's plain add on
/// the same word. The value of the slot is their (wrapping) sum.
#[derive(Default)]
#[repr(C)]
pub(crate) struct SplitWord {
    pub(crate) section: AtomicU64,
    pub(crate) fallback: AtomicU64,
}

impl SplitWord {
    #[inline]
    pub(crate) fn load(&self) -> u64 {
        self.section
            .load(Ordering::Relaxed)
            .wrapping_add(self.fallback.load(Ordering::Relaxed))
    }
}

/// Adds `count` to the slot of the CPU the calling thread runs on.
///
/// One attempt is inlined into the caller; retries after an abort live in a
/// separate cold function, so each call site carries one copy of the section.
#[inline(always)]
pub(crate) fn add(slots: (NonNull<Padded<SplitWord>>, usize), count: u64) {
    let (base, len) = slots;
    if arch::HAS_SECTIONS {
        if let Some(area) = registration::area() {
            // SAFETY: see `attempt_add`.
            match unsafe { attempt_add(area, base, len, count) } {
                Attempt::Committed => {}
                Attempt::Aborted => add_retry(area, base, len, count),
                Attempt::OutOfRange | Attempt::CompareFailed(_) => {
                    fallback::add(base, len, count, false)
                }
            }
            return;
        }
    }
    fallback::add(base, len, count, false)
}

/// # Safety
/// `base` points to `len` live slots of `1 << SLOT_SHIFT` bytes whose first
/// word (`section`) is only ever written by critical sections.
#[inline(always)]
unsafe fn attempt_add(
    area: AreaRef,
    base: NonNull<Padded<SplitWord>>,
    len: usize,
    count: u64,
) -> Attempt {
    // SAFETY: `area` is this thread's registered area (an AreaRef cannot
    // leave its thread); the slot memory is guaranteed by the caller.
    let attempt = unsafe {
        arch::add_indexed::<SLOT_SHIFT>(area.as_ptr(), base.as_ptr() as *mut u8, len, count)
    };
    detach(area);
    attempt
}

/// Clears `rseq_cs` after a section. The kernel would clear it lazily, but
/// until then it points into this library's code and data; if the library
/// is unloaded (`dlclose`) meanwhile, the kernel's next look at it kills the
/// process (RSEQ_NOTES §3). One store to a line the section just wrote.
#[inline(always)]
pub(crate) fn detach(area: AreaRef) {
    area.get().set_rseq_cs(0);
}

#[cold]
#[inline(never)]
fn add_retry(area: AreaRef, base: NonNull<Padded<SplitWord>>, len: usize, count: u64) {
    stats::record_abort();
    for _ in 1..MAX_ATTEMPTS {
        // SAFETY: the same slots `add` was given.
        match unsafe { attempt_add(area, base, len, count) } {
            Attempt::Committed => return,
            Attempt::Aborted => stats::record_abort(),
            Attempt::OutOfRange | Attempt::CompareFailed(_) => {
                return fallback::add(base, len, count, false)
            }
        }
    }
    fallback::add(base, len, count, true)
}

/// A pointer as the word critical sections store and compare, its
/// provenance exposed so [`node_at`] can take it back.
#[inline(always)]
pub(crate) fn word_of<T>(p: *mut T) -> u64 {
    p.expose_provenance() as u64
}

/// The pointer a word from [`word_of`] holds.
#[inline(always)]
pub(crate) fn node_at<T>(word: u64) -> *mut T {
    core::ptr::with_exposed_provenance_mut(word as usize)
}
