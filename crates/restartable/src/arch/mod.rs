//! Architecture-specific code: the thread pointer, libc's rseq symbols and
//! the critical sections written in assembly, with the fault injection
//! and compare-twice checks compiled into them ([`inject`]). Adding an
//! architecture means adding one file here.

pub mod inject;

/// What one attempt at a critical section did.
#[cfg_attr(
    not(all(target_arch = "x86_64", target_os = "linux", not(miri))),
    allow(dead_code)
)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// The commit store executed.
    Committed,
    /// The kernel aborted the section (preemption, migration, signal).
    Aborted,
    /// The section exited early: the CPU the kernel reported is not a valid
    /// index (or the area is not registered).
    OutOfRange,
    /// Compare number `n` (0 for the first) found a different value; the
    /// value seen was written to the operation's `seen` pointer.
    CompareFailed(u8),
}

#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
mod x86_64;
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
pub(crate) use x86_64::*;

#[cfg(all(target_arch = "aarch64", target_os = "linux", not(miri)))]
mod aarch64;
#[cfg(all(target_arch = "aarch64", target_os = "linux", not(miri)))]
pub(crate) use aarch64::*;

#[cfg(not(all(
    any(target_arch = "x86_64", target_arch = "aarch64"),
    target_os = "linux",
    not(miri)
)))]
mod portable;
#[cfg(not(all(
    any(target_arch = "x86_64", target_arch = "aarch64"),
    target_os = "linux",
    not(miri)
)))]
pub(crate) use portable::*;
