//! Optional event counts that let tests prove which path ran: aborted
//! sections, and operations completed by the fallback path.
//!
//! Compiled in with the `abort-stats` cargo feature; without it every
//! recording function is empty and every query returns `None`.

#[cfg(feature = "abort-stats")]
use core::sync::atomic::{AtomicU64, Ordering};

#[cfg(feature = "abort-stats")]
static ABORTS: AtomicU64 = AtomicU64::new(0);
#[cfg(feature = "abort-stats")]
static FALLBACK_OPS: AtomicU64 = AtomicU64::new(0);
#[cfg(feature = "abort-stats")]
static EXHAUSTED: AtomicU64 = AtomicU64::new(0);

/// A snapshot of the counts since the process started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Critical sections the kernel aborted (each is retried).
    pub aborts: u64,
    /// Operations completed on the fallback path, for any reason.
    pub fallback_ops: u64,
    /// Of those, operations that fell back because their section aborted
    /// too many times in a row (a single-stepping debugger, a signal storm).
    pub retries_exhausted: u64,
}

/// The counts, or `None` when the `abort-stats` feature is off.
pub fn stats() -> Option<Stats> {
    #[cfg(feature = "abort-stats")]
    {
        Some(Stats {
            aborts: ABORTS.load(Ordering::Relaxed),
            fallback_ops: FALLBACK_OPS.load(Ordering::Relaxed),
            retries_exhausted: EXHAUSTED.load(Ordering::Relaxed),
        })
    }
    #[cfg(not(feature = "abort-stats"))]
    {
        None
    }
}

#[inline(always)]
pub(crate) fn record_abort() {
    #[cfg(feature = "abort-stats")]
    ABORTS.fetch_add(1, Ordering::Relaxed);
}

#[inline(always)]
pub(crate) fn record_fallback(exhausted: bool) {
    #[cfg(feature = "abort-stats")]
    {
        FALLBACK_OPS.fetch_add(1, Ordering::Relaxed);
        if exhausted {
            EXHAUSTED.fetch_add(1, Ordering::Relaxed);
        }
    }
    #[cfg(not(feature = "abort-stats"))]
    let _ = exhausted;
}
