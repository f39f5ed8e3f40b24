//! [`Padded`]: a slot on cache lines of its own.

/// Bytes between slots (log2): two cache lines on x86-64 and aarch64,
/// whose prefetchers pull lines in pairs, so neighbouring CPUs never share
/// one.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) const SLOT_SHIFT: u32 = 7;
/// Bytes between slots (log2) elsewhere: one cache line.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub(crate) const SLOT_SHIFT: u32 = 6;

/// Slot size in bytes.
pub(crate) const SLOT_SIZE: usize = 1 << SLOT_SHIFT;

/// A slot holding `T`, aligned (and so padded) to [`SLOT_SIZE`] bytes.
#[cfg_attr(
    any(target_arch = "x86_64", target_arch = "aarch64"),
    repr(C, align(128))
)]
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    repr(C, align(64))
)]
pub(crate) struct Padded<T>(pub(crate) T);

const _: () = assert!(core::mem::align_of::<Padded<u8>>() == SLOT_SIZE);
