//! The per-CPU data structures, built on the section vocabulary and the
//! kit every structure shares ([`kit`]): the retry driver, the guarded
//! slot and its protocol, the per-CPU storage.
//!
//! Each structure holds only its own sections and its own plain-code body
//! for the guarded (fallback) path.

mod buffer;
mod counter;
mod kit;

pub(crate) use kit::padded::SLOT_SHIFT;
#[cfg(feature = "metrics")]
pub mod metrics;
mod percpu;
mod percpu_u64;
mod pool;
mod remote;
mod stack;

pub use buffer::{Buffer, Full};
pub use counter::Counter;
pub use kit::guard::{Guard, Reach, Refused};
pub use percpu::{PerCpu, PerCpuGuard};
pub use percpu_u64::PerCpuU64;
pub use pool::{Pool, Pooled};
use remote::refused;
pub use remote::RemoteError;
pub use stack::{Node, Stack};
