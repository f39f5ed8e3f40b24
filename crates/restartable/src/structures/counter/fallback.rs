//! The fallback path of [`Counter`](crate::Counter): plain atomics, for
//! threads without rseq (refused, disabled, other architectures, Miri) and
//! for adds whose section could not run (aborted too many times in a row,
//! an id out of range).
//!
//! It adds to the slot's `fallback` word, never to the `section` word that
//! critical sections write with non-atomic adds, so the two paths can run
//! at the same time on the same slot without losing updates.

use core::ptr::NonNull;
use core::sync::atomic::Ordering;

use super::word::SplitWord;
use crate::stats::Cause;
use crate::structures::kit::padded::Padded;
use crate::structures::kit::retry;

/// Adds `count` to the fallback word of the current CPU's slot.
// Not `#[cold]`: without rseq this is the hot path; out of line only, to
// keep the section path small.
#[inline(never)]
pub(crate) fn add(base: NonNull<Padded<SplitWord>>, len: usize, count: u64, cause: Cause) {
    let index = retry::fallback_index(cause, len);
    // SAFETY: `index < len` and `base` points to `len` live slots.
    let slot = unsafe { &*base.as_ptr().add(index) };
    slot.0.fallback.fetch_add(count, Ordering::Relaxed);
}
