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
