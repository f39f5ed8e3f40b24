//! Every other target (and Miri): no thread pointer, no critical sections;
//! everything takes the fallback path.

use super::Attempt;
use crate::abi::Rseq;

/// No critical sections on this target.
pub(crate) const HAS_SECTIONS: bool = false;

/// Unknown here.
#[inline]
pub(crate) fn thread_pointer() -> Option<*const u8> {
    None
}

/// No weak references here: `dlsym` is the only way to glibc's symbols.
#[inline]
pub(crate) fn libc_rseq_symbols() -> [*const u8; 3] {
    [core::ptr::null(); 3]
}

/// Adds one to a thread's own counter (see `arch`): an uncontended atomic
/// add.
#[cfg_attr(not(feature = "abort-stats"), allow(dead_code))]
#[inline(always)]
pub(crate) fn bump_own(counter: &core::sync::atomic::AtomicU64) {
    counter.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
}

/// Never called: [`HAS_SECTIONS`] is false.
///
/// # Safety
/// None; it touches no memory.
#[inline(always)]
pub(crate) unsafe fn add_indexed<const SHIFT: u32>(
    _area: *const Rseq,
    _base: *mut u8,
    _len: usize,
    _count: u64,
) -> Attempt {
    Attempt::OutOfRange
}

// The vocabulary, for the same reason never called: `section::Thread`
// cannot be obtained on this target.

/// # Safety
/// None; it touches no memory.
#[inline(always)]
pub(crate) unsafe fn compare_store<const ID: usize, const RELEASE: bool>(
    _: *const Rseq,
    _: u32,
    _: *mut u64,
    _: u64,
    _: u64,
    _: *mut u64,
) -> Attempt {
    Attempt::Aborted
}

/// # Safety
/// None; it touches no memory.
#[inline(always)]
pub(crate) unsafe fn add<const ID: usize, const RELEASE: bool>(
    _: *const Rseq,
    _: u32,
    _: *mut u64,
    _: u64,
) -> Attempt {
    Attempt::Aborted
}

/// # Safety
/// None; it touches no memory.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn pop<const ID: usize, const RELEASE: bool>(
    _: *const Rseq,
    _: u32,
    _: *mut u64,
    _: u64,
    _: usize,
    _: *const u64,
    _: *mut u64,
    _: *mut u64,
) -> Attempt {
    Attempt::Aborted
}

/// # Safety
/// None; it touches no memory.
#[inline(always)]
pub(crate) unsafe fn deref_add<const ID: usize, const RELEASE: bool>(
    _: *const Rseq,
    _: u32,
    _: *const u64,
    _: usize,
    _: u64,
) -> Attempt {
    Attempt::Aborted
}

/// # Safety
/// None; it touches no memory.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn compare2_store<const ID: usize, const RELEASE: bool>(
    _: *const Rseq,
    _: u32,
    _: *mut u64,
    _: u64,
    _: *const u64,
    _: u64,
    _: u64,
    _: *mut u64,
) -> Attempt {
    Attempt::Aborted
}

/// # Safety
/// None; it touches no memory.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn store_then_store<const ID: usize, const RELEASE: bool>(
    _: *const Rseq,
    _: u32,
    _: *mut u64,
    _: u64,
    _: *mut u64,
    _: u64,
    _: u64,
    _: *const u64,
    _: *mut u64,
) -> Attempt {
    Attempt::Aborted
}

/// # Safety
/// None; it touches no memory.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn memcpy_then_store<const ID: usize, const RELEASE: bool>(
    _: *const Rseq,
    _: u32,
    _: *mut u64,
    _: u64,
    _: *mut u8,
    _: *const u8,
    _: usize,
    _: u64,
    _: *const u64,
    _: *mut u64,
) -> Attempt {
    Attempt::Aborted
}
