//! Fault injection and self-checks for testing critical sections.
//!
//! With the cargo feature `inject`, every section runs a delay loop at each
//! of its injection points, `delay(point)` iterations of `pause`, to widen
//! the windows in which preemption, migration and signals abort it. The
//! points are: 0 before the descriptor is stored, 1 before the CPU compare,
//! 2 after the first load or compare, 3 before the commit of operations with
//! a second step, and 4 at every other boundary between two steps of a
//! section written in the section language (`section!`). Without the
//! feature no code is emitted for them.
//!
//! With the feature `compare-twice`, every section checks again, right
//! before its commit, that it runs on the CPU it compared and that the words
//! it compared still hold the expected values; if not, the kernel broke the
//! rseq contract and the process stops with a message.

use core::sync::atomic::{AtomicU64, Ordering};

/// Number of injection points.
pub const POINTS: usize = 5;

/// Loop counts per injection point, read by the sections themselves.
#[doc(hidden)]
pub static DELAYS: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

/// True when this build compiles delay loops into the sections.
pub const ENABLED: bool = cfg!(feature = "inject");

/// True when this build re-checks assumptions before each commit.
pub const COMPARE_TWICE: bool = cfg!(feature = "compare-twice");

/// Sets the delay at injection `point` (0..[`POINTS`]) to `loops` iterations
/// for every thread. Returns false (and does nothing) when `point` is out of
/// range or the `inject` feature is off.
pub fn set_delay(point: usize, loops: u64) -> bool {
    if !ENABLED || point >= POINTS {
        return false;
    }
    DELAYS[point].store(loops, Ordering::Relaxed);
    true
}

/// The delay at `point` (0 when out of range).
pub fn delay(point: usize) -> u64 {
    DELAYS.get(point).map_or(0, |d| d.load(Ordering::Relaxed))
}

/// Reached from a section whose compare-twice check failed.
#[cold]
#[inline(never)]
pub(crate) fn compare_twice_failed() -> ! {
    // Write without allocating or locking: we may be anywhere.
    const MSG: &[u8] =
        b"restartable: compare-twice check failed: a critical section was about to commit \
on a CPU, or with a value, other than the one it compared (rseq contract broken)\n";
    // SAFETY: write(2) and abort(3) are async-signal-safe; MSG is valid.
    unsafe {
        libc::write(2, MSG.as_ptr().cast(), MSG.len());
        libc::abort()
    }
}
