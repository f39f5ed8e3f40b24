//! Linux restartable sequences (rseq) from safe Rust.
//!
//! A thread that registers a `struct rseq` area with the kernel can run
//! *critical sections*: short instruction ranges that the kernel aborts
//! (jumping to an abort handler) whenever the thread is preempted, migrated
//! or signalled inside them. A section that works on the data of the CPU it
//! runs on and publishes its effect with one final store (the *commit*) is
//! therefore atomic with respect to every other thread, without a lock and
//! without an atomic instruction.
//!
//! The crate is built in layers, each using only those before it:
//! - **the ABI** ([`abi`]): `struct rseq`, `struct rseq_cs` and the
//!   constants, checked at compile time.
//! - **the architectures** (`arch/`): the thread pointer, weak references
//!   to glibc's rseq symbols, and the critical sections in inline assembly
//!   for x86-64 and aarch64, with the delay loops and compare-twice checks
//!   tests compile into them ([`inject`]); elsewhere, and under Miri,
//!   everything takes the fallback path.
//! - **the runtime** (`runtime/`): registration ([`registration`]) adopts
//!   glibc's area (glibc 2.35+ registers every thread, in dynamic and
//!   static binaries), registers its own where libc does not (musl, the
//!   tunable off), and falls back cleanly where the kernel, a sandbox or a
//!   tool refuses; CPU ids ([`current_cpu`], [`current_node`],
//!   [`current_mm_cid`], [`possible_cpus`]) are one load from the thread's
//!   area; the [`fence`] lets one thread work on another CPU's data;
//!   [`stats`] counts aborts and fallback completions. Set
//!   `RESTARTABLE_DISABLE=1` to never make the rseq system call (ignored in
//!   privileged processes, `AT_SECURE`).
//! - **the sections** ([`section`](mod@section)): the vocabulary of per-CPU operations,
//!   each one attempt with an explicit [`Outcome`](section::Outcome).
//! - **the structures** (`structures/`), safe, each with a fallback path
//!   that makes no system call where no thread uses rseq:
//!   - [`Counter`]: a sum; [`PerCpuU64`]: a word per CPU, read-modify-written;
//!   - [`PerCpu`]: storage for any `T`, through the per-CPU lock;
//!   - [`Stack`]: an intrusive free list of [`Node`]s, stealing when empty;
//!   - [`Pool`]: reusable objects through bounded per-CPU caches;
//!   - [`Buffer`]: records appended per CPU, drained by a consumer;
//!   - feature `metrics`: [`Counter`] backs a counter of the `metrics`
//!     facade.
//!
//! ABI sources: `include/uapi/linux/rseq.h` and `man 2 rseq` (Linux),
//! glibc's `sys/rseq.h` and its manual ("Restartable Sequences"); see
//! [`abi`].
//!
//! # Limits
//! - A thread must have thread-local storage of its own. A raw
//!   `clone(CLONE_VM)` without `CLONE_SETTLS`, or a `vfork` child that
//!   calls into the library, shares its parent's: the two would share one
//!   registration record, and the kernel's `cpu_id` there describes only
//!   one of them, so sections of the other could commit to the wrong CPU's
//!   data (lost updates) or keep aborting. Such threads are not supported.
//! - With glibc's registration on, glibc itself aborts the process ("rseq
//!   registration failed") if a seccomp filter installed after start
//!   refuses rseq for new threads. Turn glibc's registration off
//!   (`GLIBC_TUNABLES=glibc.pthread.rseq=0`) in such sandboxes; the library
//!   then registers its own area and falls back quietly where refused.
//! - Nothing relies on `cpu_id_start` (Linux 6.19 stopped rewriting it on
//!   every return to user space): only an abort proves that a section was
//!   interrupted.
//!
//! ```
//! use restartable::{registration, Counter, Owner};
//!
//! let hits = Counter::new();
//! hits.inc();
//! hits.add(41);
//! assert_eq!(hits.sum(), 42);
//!
//! // Which path this thread takes, and why.
//! let reg = registration();
//! if reg.owner == Owner::None {
//!     println!("fallback: {}", reg.fallback.unwrap());
//! }
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

// Generated sections name this crate as `::restartable`, here too.
extern crate self as restartable;

pub mod abi;
mod arch;
mod runtime;
pub mod section;
mod structures;

/// The guard protocol, for per-CPU data of your own that your sections
/// share with code that cannot run a section on it (no rseq, another CPU's
/// data, a fallback path): [`Guard`](guard::Guard).
pub mod guard {
    pub use crate::structures::{Guard, Reach, Refused};
}

pub use arch::inject;
/// Writes a critical section once, in the section language, for every
/// architecture: see [`section::language`].
pub use restartable_macros::section;
pub use runtime::cpu::{
    current_cpu, current_mm_cid, current_mm_cid_or_cpu, current_node, online_cpus, possible_cpus,
};
pub use runtime::process::{process_info, LibcRseq, ProcessInfo, DISABLE_ENV};
pub use runtime::registration::{
    opt_out_current_thread, registration, FallbackReason, Owner, Registration,
};
pub use runtime::{fence, stats};
#[doc(hidden)]
pub use section::support as __lang;
#[cfg(feature = "metrics")]
pub use structures::metrics;
pub use structures::{
    Buffer, Counter, Full, Node, PerCpu, PerCpuGuard, PerCpuU64, Pool, Pooled, RemoteError, Stack,
};

/// True when this build has critical sections for the target architecture
/// (x86-64 and aarch64 Linux). Elsewhere, and under Miri, every operation
/// takes the fallback path, though CPU ids may still come from rseq.
pub const HAS_CRITICAL_SECTIONS: bool = arch::HAS_SECTIONS;

/// libc's version string (`gnu_get_libc_version`), when libc is glibc.
pub fn libc_version() -> Option<&'static str> {
    runtime::sys::libc_version()
}
