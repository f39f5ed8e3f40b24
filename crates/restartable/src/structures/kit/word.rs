//! Pointers as the `u64` words critical sections compare and store.

/// A pointer as the word critical sections store and compare, its
/// provenance exposed so [`pointer_at`] can take it back.
#[inline(always)]
pub(crate) fn word_of<T>(p: *mut T) -> u64 {
    p.expose_provenance() as u64
}

/// The pointer a word from [`word_of`] holds.
#[inline(always)]
pub(crate) fn pointer_at<T>(word: u64) -> *mut T {
    core::ptr::with_exposed_provenance_mut(word as usize)
}
