//! The rseq fence: after [`fence_cpu`] returns, every critical section that
//! was running on that CPU has committed or aborted, and every section that
//! starts there later sees what the caller wrote before the fence. This is
//! how one thread works on another CPU's data: stop new sections from
//! entering the data (a guard word they check), fence, then work.
//!
//! Two methods, chosen once per process:
//! - `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ)` (Linux 5.10+,
//!   registered once with `MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ`):
//!   an interrupt on the CPU restarts any section in progress. Source:
//!   `man 2 membarrier`.
//! - Migration, where membarrier lacks the command or is refused: the
//!   calling thread pins itself to the CPU, so whatever ran there was
//!   switched out (and its section aborted), then restores its affinity.
//!   Slower (a migration per CPU) but needs no kernel support beyond
//!   `sched_setaffinity`.

use core::sync::atomic::{AtomicU8, Ordering};

use super::sys;
use crate::abi;

/// `MEMBARRIER_CMD_FLAG_CPU`: fence only the CPU given.
const MEMBARRIER_CMD_FLAG_CPU: u32 = 1;

/// How this process fences.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// The membarrier rseq command.
    Membarrier,
    /// Pinning the calling thread to the CPU (or to each CPU in turn).
    Migration,
}

/// A fence could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FenceError {
    /// Neither membarrier nor migration works here (both refused, or this
    /// platform has neither); carries the errno of the migration attempt.
    Unavailable(i32),
}

impl core::fmt::Display for FenceError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FenceError::Unavailable(errno) => write!(
                f,
                "no rseq fence: membarrier and sched_setaffinity both refused (errno {errno})"
            ),
        }
    }
}

impl std::error::Error for FenceError {}

/// True when the kernel offers the membarrier rseq fence (reported by
/// `membarrier(MEMBARRIER_CMD_QUERY)`); false when membarrier is missing,
/// refused, or lacks the command.
pub fn rseq_fence_supported() -> bool {
    sys::membarrier(abi::MEMBARRIER_CMD_QUERY, 0, 0)
        .is_ok_and(|mask| mask & i64::from(abi::MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ) != 0)
}

const UNDECIDED: u8 = 0;
const MEMBARRIER: u8 = 1;
const MIGRATION: u8 = 2;

static METHOD: AtomicU8 = AtomicU8::new(UNDECIDED);

/// The method [`fence_cpu`] and [`fence_all`] use, registering this
/// process for the membarrier command on first call.
pub fn method() -> Method {
    match METHOD.load(Ordering::Acquire) {
        MEMBARRIER => Method::Membarrier,
        MIGRATION => Method::Migration,
        _ => {
            // Registering twice is harmless, so racing first calls are fine.
            let registered = rseq_fence_supported()
                && sys::membarrier(abi::MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0)
                    .is_ok();
            let chosen = if registered { MEMBARRIER } else { MIGRATION };
            METHOD.store(chosen, Ordering::Release);
            if registered {
                Method::Membarrier
            } else {
                Method::Migration
            }
        }
    }
}

/// Whether this process can fence, and how: [`method`], and for
/// [`Method::Migration`] a check that `sched_setaffinity` is allowed (the
/// calling thread re-applies its own affinity).
///
/// # Errors
/// [`FenceError::Unavailable`] when membarrier's rseq command is missing or
/// refused and so is `sched_setaffinity`: fences fail, remote operations
/// return errors, and fallback paths of the structures wait while other
/// threads run sections.
pub fn status() -> Result<Method, FenceError> {
    match method() {
        Method::Membarrier => Ok(Method::Membarrier),
        Method::Migration => {
            let Some(mine) = sys::affinity() else {
                return Err(FenceError::Unavailable(libc::ENOSYS));
            };
            sys::set_affinity(&mine)
                .map(|()| Method::Migration)
                .map_err(FenceError::Unavailable)
        }
    }
}

/// Fences CPU `cpu`: when this returns, no critical section that started
/// on it before the call can still commit.
///
/// A `cpu` at or above [`possible_cpus()`](crate::possible_cpus) runs
/// nothing, so there is nothing to fence: `Ok(())` at once.
///
/// # Errors
/// Only where neither membarrier nor `sched_setaffinity` may be used (a
/// seccomp profile refusing both).
pub fn fence_cpu(cpu: usize) -> Result<(), FenceError> {
    let Ok(id) = i32::try_from(cpu) else {
        return Ok(());
    };
    if cpu >= crate::possible_cpus() {
        return Ok(());
    }
    // On failure (EINVAL: the CPU is not online, so nothing runs there, or
    // the flag is unknown before Linux 5.10) migration settles it.
    if method() == Method::Membarrier
        && sys::membarrier(
            abi::MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ,
            MEMBARRIER_CMD_FLAG_CPU,
            id,
        )
        .is_ok()
    {
        return Ok(());
    }
    migrate_through([cpu])
}

/// Fences every CPU.
pub fn fence_all() -> Result<(), FenceError> {
    if method() == Method::Membarrier
        && sys::membarrier(abi::MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, 0, 0).is_ok()
    {
        return Ok(());
    }
    // Every possible CPU, not only the caller's: affinity is per thread, and
    // other threads may run where this one may not. A range, not a list:
    // no allocation (PerCpu::try_lock fences this way in signal handlers).
    migrate_through(0..crate::possible_cpus().min(sys::CPU_SETSIZE))
}

/// Runs the calling thread on each CPU of `cpus` in turn, then restores its
/// affinity. A CPU the kernel will not run it on (`EINVAL`: offline, or
/// outside the process's cpuset) runs no thread of the process either, so
/// it counts as fenced; any other refusal is an error.
fn migrate_through(cpus: impl IntoIterator<Item = usize>) -> Result<(), FenceError> {
    let Some(original) = sys::affinity() else {
        return Err(FenceError::Unavailable(libc::ENOSYS));
    };
    let mut result = Ok(());
    for cpu in cpus {
        let Some(only) = sys::single_cpu(cpu) else {
            continue;
        };
        // Once sched_setaffinity returns, the thread runs on `cpu`: the
        // kernel migrates it before returning to user space.
        match sys::set_affinity(&only) {
            Ok(()) | Err(libc::EINVAL) => {}
            Err(errno) => {
                result = Err(FenceError::Unavailable(errno));
                break;
            }
        }
    }
    if sys::set_affinity(&original).is_err() && result.is_ok() {
        result = Err(FenceError::Unavailable(libc::EPERM));
    }
    result
}
