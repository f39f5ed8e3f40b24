//! Every other target (and Miri): no thread pointer, no critical sections;
//! everything takes the fallback path.

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
