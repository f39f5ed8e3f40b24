//! Which CPU, NUMA node and concurrency id the calling thread runs on, and
//! how many CPUs per-CPU arrays must cover.
//!
//! Every id returned here is a valid index into an array of
//! [`possible_cpus`] elements, whatever the kernel reports: a value out of
//! range is folded back into range rather than trusted.

use super::{cpu_list, process, registration, sys};

/// Number of *possible* CPUs: the highest CPU number in
/// `/sys/devices/system/cpu/possible` plus one, or
/// `sysconf(_SC_NPROCESSORS_CONF)` when that file cannot be read (at least 1).
///
/// Per-CPU arrays are sized by this, not by the online count, because CPU
/// ids of online CPUs need not be contiguous (hot-plug, cpusets).
pub fn possible_cpus() -> usize {
    process::possible_cpus()
}

/// Number of CPUs online now (`/sys/devices/system/cpu/online`, or
/// `sysconf(_SC_NPROCESSORS_ONLN)`); at least 1.
pub fn online_cpus() -> usize {
    cpu_list::online()
}

/// The CPU the calling thread is running on, as an index below
/// [`possible_cpus`].
///
/// Read from the thread's rseq area (one load) when rseq is in use,
/// otherwise from `sched_getcpu()`. The thread may migrate right after the
/// call: use the value as a hint, or inside a critical section.
#[inline]
pub fn current_cpu() -> usize {
    fold(raw_cpu(), possible_cpus())
}

/// The NUMA node of the CPU the calling thread is running on: the rseq
/// `node_id` when the feature size covers it (24 bytes or more), otherwise
/// the `getcpu` system call; 0 when neither is available.
pub fn current_node() -> usize {
    if let Some(area) = registration::area() {
        if registration::feature_size() >= crate::abi::NODE_ID_FEATURE_SIZE {
            return area.get().node_id() as usize;
        }
    }
    sys::getcpu().map_or(0, |(_, node)| node as usize)
}

/// The rseq concurrency id (`mm_cid`, Linux 6.3+) of the calling thread: a
/// small number, unique among the threads of this process running at the
/// same moment and below [`possible_cpus`], so arrays indexed by it stay
/// dense when a process runs fewer threads than the machine has CPUs.
///
/// `None` when the kernel does not provide it (feature size below 28, or no
/// rseq); [`current_mm_cid_or_cpu`] gives the documented fallback.
#[inline]
pub fn current_mm_cid() -> Option<usize> {
    let area = registration::area()?;
    if registration::feature_size() < crate::abi::MM_CID_FEATURE_SIZE {
        return None;
    }
    Some(fold(area.get().mm_cid() as i64, possible_cpus()))
}

/// [`current_mm_cid`], or the current CPU when `mm_cid` is unavailable. The
/// CPU id has the same uniqueness among running threads, so it is a correct
/// (if less dense) substitute.
#[inline]
pub fn current_mm_cid_or_cpu() -> usize {
    current_mm_cid().unwrap_or_else(current_cpu)
}

/// The raw CPU number: rseq `cpu_id` (of the thread's area, or of libc's
/// when the thread does not use rseq), else `sched_getcpu`, else a
/// per-thread stand-in (under Miri and where the OS cannot tell).
#[inline]
pub(crate) fn raw_cpu() -> i64 {
    if let Some(area) = registration::area() {
        let cpu = area.get().cpu_id();
        if cpu >= 0 {
            return cpu as i64;
        }
    }
    match registration::libc_cpu_id() {
        Some(cpu) => cpu as i64,
        None => fallback_cpu() as i64,
    }
}

/// The CPU as the fallback path sees it: `sched_getcpu()`, or where that
/// fails a stable per-thread number so that threads still spread over slots.
#[cold]
pub(crate) fn fallback_cpu() -> usize {
    sys::sched_getcpu().map_or_else(thread_stand_in, |c| c as usize)
}

fn thread_stand_in() -> usize {
    use core::cell::Cell;
    use core::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static MINE: Cell<usize> = const { Cell::new(usize::MAX) });
    let mine = MINE.get();
    if mine != usize::MAX {
        return mine;
    }
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    MINE.set(id);
    id
}

/// Folds a reported id into `0..len` (len >= 1): an id the kernel should
/// never report cannot index past an array.
#[inline(always)]
pub(crate) fn fold(id: i64, len: usize) -> usize {
    let id = id.max(0) as usize;
    if id < len {
        id
    } else {
        id % len.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_always_in_range() {
        let n = possible_cpus();
        assert!(n >= 1);
        assert!(current_cpu() < n);
        assert!(current_mm_cid_or_cpu() < n);
        if let Some(cid) = current_mm_cid() {
            assert!(cid < n);
        }
        assert!(online_cpus() >= 1);
        assert_eq!(fold(-1, 4), 0);
        assert_eq!(fold(5, 4), 1);
        assert_eq!(fold(3, 4), 3);
    }
}
