//! [`SplitWord`]: one CPU's slot of a [`Counter`](crate::Counter).

use core::sync::atomic::{AtomicU64, Ordering};

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
