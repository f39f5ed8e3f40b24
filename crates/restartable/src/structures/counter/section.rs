//! The section path of [`Counter`](crate::Counter): the `add` section on
//! the current CPU's slot, one attempt inlined into the caller, retries in
//! a cold function, then the fallback path.

use core::ptr::NonNull;

use super::fallback;
use super::word::SplitWord;
use crate::arch;
use crate::runtime::registration::{self, AreaRef};
use crate::section::ops::{self, Attempt};
use crate::stats::Cause;
use crate::structures::kit::padded::Padded;
use crate::structures::kit::retry::Retry;

/// Adds `count` to the slot of the CPU the calling thread runs on.
///
/// One attempt is inlined into the caller; retries after an abort live in a
/// separate cold function, so each call site carries one copy of the section.
#[inline(always)]
pub(crate) fn add(slots: (NonNull<Padded<SplitWord>>, usize), count: u64) {
    let (base, len) = slots;
    if arch::HAS_SECTIONS {
        if let Some(area) = registration::area() {
            // SAFETY: see `attempt`.
            match unsafe { attempt(area, base, len, count) } {
                Attempt::Committed => {}
                Attempt::Aborted => retry(area, base, len, count),
                Attempt::OutOfRange | Attempt::CompareFailed(_) => {
                    fallback::add(base, len, count, Cause::IdOutOfRange)
                }
            }
            return;
        }
    }
    fallback::add(base, len, count, Cause::NoRseq)
}

/// # Safety
/// `base` points to `len` live slots of `1 << SLOT_SHIFT` bytes whose first
/// word (`section`) is only ever written by critical sections.
#[inline(always)]
unsafe fn attempt(
    area: AreaRef,
    base: NonNull<Padded<SplitWord>>,
    len: usize,
    count: u64,
) -> Attempt {
    // SAFETY: `area` is this thread's registered area (an AreaRef cannot
    // leave its thread); the slot memory is guaranteed by the caller.
    let attempt =
        unsafe { ops::counter_attempt(area.as_ptr().cast(), base.as_ptr() as *mut u8, len, count) };
    area.detach();
    attempt
}

#[cold]
#[inline(never)]
fn retry(area: AreaRef, base: NonNull<Padded<SplitWord>>, len: usize, count: u64) {
    let stripe = area.get().cpu_id().max(0) as usize;
    let mut retry = Retry::default();
    while retry.aborted(stripe).is_ok() {
        // SAFETY: the same slots `add` was given.
        match unsafe { attempt(area, base, len, count) } {
            Attempt::Committed => return,
            Attempt::Aborted => {}
            Attempt::OutOfRange | Attempt::CompareFailed(_) => {
                return fallback::add(base, len, count, Cause::IdOutOfRange)
            }
        }
    }
    fallback::add(base, len, count, Cause::RetriesExhausted)
}
