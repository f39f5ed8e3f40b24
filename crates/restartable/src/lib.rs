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
//! This crate owns the whole stack:
//! - **Registration** ([`registration`]): it adopts glibc's area (glibc
//!   2.35+ registers every thread), registers its own where libc does not,
//!   and falls back cleanly where the kernel, a sandbox or a tool refuses.
//!   Set `RESTARTABLE_DISABLE=1` to never make the rseq system call.
//! - **CPU ids** ([`current_cpu`], [`current_node`], [`current_mm_cid`],
//!   [`possible_cpus`]): one load from the thread's area when rseq is in use.
//! - **Critical sections** ([`section`]): the per-CPU operations in inline
//!   assembly (x86-64 and aarch64), with their descriptors.
//! - **Per-CPU data structures**, safe, each with a fallback path where rseq
//!   is unavailable:
//!   - [`Counter`]: a sum; [`PerCpuU64`]: a word per CPU, read-modify-written;
//!   - [`PerCpu`]: storage for any `T`, through the per-CPU lock;
//!   - [`Stack`]: an intrusive free list of [`Node`]s, stealing when empty;
//!   - [`Pool`]: reusable objects through bounded per-CPU caches;
//!   - [`Buffer`]: records appended per CPU, drained by a consumer.
//! - **The fence** ([`fence`]): how one thread works on another CPU's data
//!   (membarrier, or migration where that is refused).
//! - Feature `metrics`: [`Counter`] backs a counter of the `metrics` facade.
//!
//! ABI source: `include/uapi/linux/rseq.h` and `man 2 rseq`; see [`abi`].
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

pub mod abi;
mod arch;
mod buffer;
mod counter;
mod cpu;
mod fallback;
pub mod fence;
mod guard;
pub mod inject;
#[cfg(feature = "metrics")]
pub mod metrics;
mod ops;
mod percpu;
mod percpu_u64;
mod pool;
mod process;
mod registration;
pub mod section;
mod slots;
mod stack;
pub mod stats;
mod sys;
mod table;

pub use buffer::{Buffer, Full};
pub use counter::Counter;
pub use cpu::{
    current_cpu, current_mm_cid, current_mm_cid_or_cpu, current_node, online_cpus, possible_cpus,
};
pub use percpu::{PerCpu, PerCpuGuard};
pub use percpu_u64::{PerCpuU64, RemoteError};
pub use pool::{Pool, Pooled};
pub use process::{process_info, LibcRseq, ProcessInfo, DISABLE_ENV};
pub use registration::{opt_out_current_thread, registration, FallbackReason, Owner, Registration};
pub use stack::{Node, Stack};

/// True when this build has critical sections for the target architecture
/// (x86-64 Linux today). Elsewhere every operation takes the fallback path,
/// though CPU ids may still come from rseq.
pub const HAS_CRITICAL_SECTIONS: bool = arch::HAS_SECTIONS;

/// libc's version string (`gnu_get_libc_version`), when libc is glibc.
pub fn libc_version() -> Option<&'static str> {
    sys::libc_version()
}
