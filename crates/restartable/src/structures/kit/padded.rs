//! [`Padded`]: a slot on cache lines of its own.

/// Bytes between slots (log2): two cache lines, since x86-64 and aarch64
/// prefetchers pull lines in pairs, so neighbouring CPUs never share one.
/// The counter's section (`section::ops::counter_add`) spells the same
/// shift as a literal.
pub(crate) const SLOT_SHIFT: u32 = 7;

/// Slot size in bytes.
pub(crate) const SLOT_SIZE: usize = 1 << SLOT_SHIFT;

/// A slot holding `T`, aligned (and so padded) to [`SLOT_SIZE`] bytes.
#[repr(C, align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

const _: () = assert!(core::mem::align_of::<Padded<u8>>() == SLOT_SIZE);
