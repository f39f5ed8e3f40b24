//! aarch64: the thread pointer, for adopting libc's area and reading CPU
//! ids. Critical sections for aarch64 are not written yet; operations take
//! the fallback path there.

use core::arch::asm;

use super::Attempt;
use crate::abi::Rseq;

/// No critical sections on this architecture yet.
pub(crate) const HAS_SECTIONS: bool = false;

/// The thread pointer (`tpidr_el0`), to which libc's `__rseq_offset` is
/// relative.
#[inline]
pub(crate) fn thread_pointer() -> Option<*const u8> {
    let tp: *const u8;
    // SAFETY: reading tpidr_el0 has no side effects.
    unsafe { asm!("mrs {}, tpidr_el0", out(reg) tp, options(nomem, nostack, preserves_flags)) };
    (!tp.is_null()).then_some(tp)
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
