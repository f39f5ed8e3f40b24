//! The runtime: what the process and the kernel offer (libc's rseq
//! symbols, the auxiliary vector, the CPU topology), per-thread
//! registration, CPU ids, the fence, and the event counts.
//!
//! Everything above it (sections, structures) asks this layer which area
//! the thread uses and which CPU it is on; nothing here knows about them.

pub(crate) mod cpu;
mod cpu_list;
pub mod fence;
pub(crate) mod process;
pub(crate) mod registration;
pub mod stats;
pub(crate) mod sys;
pub(crate) mod token;
