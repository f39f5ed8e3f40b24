//! [`stats`]: what the allocator holds and did, read on demand (the fast
//! paths count nothing; the figures come from the slow paths and from
//! walking the caches and lists).

use core::sync::atomic::Ordering;

use crate::classes::{self, COUNT, SPAN};
use crate::heap;

/// One size class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Bytes of an object.
    pub size: usize,
    /// Objects in the per-CPU caches, all CPUs together (a racy snapshot).
    pub cached: usize,
    /// Free objects on the central list.
    pub central: usize,
    /// Runs of spans taken for the class.
    pub runs: usize,
}

/// The allocator's figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Bytes of address space reserved.
    pub reserved: usize,
    /// Bytes of the reservation ever handed out (made readable).
    pub mapped: usize,
    /// Bytes of free runs, returned to the system (`MADV_DONTNEED`).
    pub returned: usize,
    /// Per class, index = class.
    pub classes: Vec<ClassStats>,
    /// Cache refills from the central lists (one batch each).
    pub refills: usize,
    /// Cache flushes to the central lists (one batch each).
    pub flushes: usize,
    /// Frees that went to a central list at once (the cache was guarded).
    pub central_direct: usize,
    /// Cache operations served by the fallback path (no rseq).
    pub fallback_ops: usize,
    /// Large allocations and frees (whole spans).
    pub large_allocs: usize,
    /// See `large_allocs`.
    pub large_frees: usize,
    /// Requests that got null (no memory, or a size too large).
    pub failed: usize,
    /// CPUs with caches.
    pub cpus: usize,
    /// The tunables in force.
    pub tunables: crate::tunables::Tunables,
}

/// The figures now; `None` before the first allocation (or when the heap
/// could not be set up). Allocates the result (through whatever the global
/// allocator is).
pub fn stats() -> Option<Stats> {
    let h = heap::heap_if_ready()?;
    let c = &h.counts;
    let (_, free_spans) = h.spans.free();
    let classes = (0..COUNT)
        .map(|class| {
            let (central, runs) = h.central.census(class);
            ClassStats {
                size: classes::size(class),
                cached: (0..h.caches.ncpus())
                    .map(|cpu| h.caches.count(cpu, class))
                    .sum(),
                central,
                runs,
            }
        })
        .collect();
    Some(Stats {
        reserved: h.region.spans() * SPAN,
        mapped: h.region.used() * SPAN,
        returned: free_spans * SPAN,
        classes,
        refills: c.refills.load(Ordering::Relaxed),
        flushes: c.flushes.load(Ordering::Relaxed),
        central_direct: c.central_direct.load(Ordering::Relaxed),
        fallback_ops: c.fallback_ops.load(Ordering::Relaxed),
        large_allocs: c.large_allocs.load(Ordering::Relaxed),
        large_frees: c.large_frees.load(Ordering::Relaxed),
        failed: c.failed.load(Ordering::Relaxed),
        cpus: h.caches.ncpus(),
        tunables: h.tunables,
    })
}
