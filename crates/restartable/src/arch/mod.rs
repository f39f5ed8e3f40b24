//! Architecture-specific code, one file per architecture, each with the
//! same small vocabulary:
//!
//! - `HAS_SECTIONS`, and `thread_pointer()`: the base libc's
//!   `__rseq_offset` is relative to;
//! - `libc_rseq_symbols()`: the addresses of glibc's `__rseq_offset`,
//!   `__rseq_size` and `__rseq_flags`, through weak references, null where
//!   nothing defines them (musl, glibc before 2.35). Weak, so the binary
//!   links everywhere; resolved by the static linker in a static binary
//!   and by the dynamic loader otherwise, so no `dlsym` is needed;
//! - `bump_own(counter)`: adds one to a counter only the calling thread
//!   writes (others read it), so that a signal handler of the thread
//!   cannot come between its load and its store;
//!
//! The critical sections themselves are not here: the section language
//! (`restartable-lang`) generates them for every architecture, with the
//! fault injection and compare-twice checks of [`inject`] compiled in.
//!
//! Adding an architecture means adding one file here.

pub mod inject;

#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
mod x86_64;
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
pub(crate) use x86_64::*;

#[cfg(all(target_arch = "aarch64", target_os = "linux", not(miri)))]
mod aarch64;
#[cfg(all(target_arch = "aarch64", target_os = "linux", not(miri)))]
pub(crate) use aarch64::*;

#[cfg(all(target_arch = "riscv64", target_os = "linux", not(miri)))]
mod riscv64;
#[cfg(all(target_arch = "riscv64", target_os = "linux", not(miri)))]
pub(crate) use riscv64::*;

#[cfg(not(all(
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    ),
    target_os = "linux",
    not(miri)
)))]
mod portable;
#[cfg(not(all(
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    ),
    target_os = "linux",
    not(miri)
)))]
pub(crate) use portable::*;
