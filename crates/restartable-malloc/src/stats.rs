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
    /// Cache operations served by the fallback path (no rseq); each other
    /// thread's last few (below 64) are added at its next batch.
    pub fallback_ops: usize,
    /// Large allocations and frees (whole spans).
    pub large_allocs: usize,
    /// See `large_allocs`.
    pub large_frees: usize,
    /// Requests that got null (no memory, or a size too large).
    pub failed: usize,
    /// Sweeps run (the release policy's, and `trim`'s).
    pub sweeps: usize,
    /// Objects sweeps drained from the per-CPU caches.
    pub drained: usize,
    /// Runs of small objects given back to the system by sweeps.
    pub released_runs: usize,
    /// Critical sections aborted, all of the process's (the runtime's
    /// count, `None` unless built with its `abort-stats` feature).
    pub aborts: Option<u64>,
    /// Bytes in the per-CPU caches, by CPU (index = CPU).
    pub cached_by_cpu: Vec<usize>,
    /// CPUs with caches.
    pub cpus: usize,
    /// Bytes of the per-CPU cache mapping in RAM (the pages the process
    /// wrote, from `/proc/self/pagemap`): grows with the CPUs (or
    /// `mm_cid`s) that used their caches, not with `cpus`.
    pub cache_resident_bytes: usize,
    /// Blocks of that mapping (one per CPU or `mm_cid`, 32 KiB of address
    /// space each) with at least one page in RAM.
    pub cache_blocks_resident: usize,
    /// The tunables in force.
    pub tunables: crate::tunables::Tunables,
}

/// The figures now; `None` before the first allocation (or when the heap
/// could not be set up). Allocates the result (through whatever the global
/// allocator is).
pub fn stats() -> Option<Stats> {
    let h = heap::heap_if_ready()?;
    let c = &h.counts;
    c.settle();
    let (_, free_spans) = h.spans.free(&h.region);
    let resident = h.caches.resident();
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
        sweeps: c.sweeps.load(Ordering::Relaxed),
        drained: c.drained.load(Ordering::Relaxed),
        released_runs: c.released_runs.load(Ordering::Relaxed),
        aborts: restartable::stats::stats().map(|s| s.aborts),
        cached_by_cpu: (0..h.caches.ncpus())
            .map(|cpu| {
                (0..COUNT)
                    .map(|class| h.caches.count(cpu, class) * classes::size(class))
                    .sum()
            })
            .collect(),
        cpus: h.caches.ncpus(),
        cache_resident_bytes: resident.0,
        cache_blocks_resident: resident.1,
        tunables: h.tunables,
    })
}

impl core::fmt::Display for Stats {
    /// The report `RESTARTABLE_MALLOC_STATS=1` prints at exit.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        writeln!(
            f,
            "restartable-malloc statistics (pid {})",
            std::process::id()
        )?;
        writeln!(
            f,
            "  path: {} (this thread), index: {}, CPUs with caches: {}, \
             cache blocks in RAM: {} ({} KiB)",
            crate::path(),
            crate::index(),
            self.cpus,
            self.cache_blocks_resident,
            self.cache_resident_bytes / 1024
        )?;
        writeln!(
            f,
            "  reserved {:.0} MiB, mapped {:.1} MiB, returned (free spans) {:.1} MiB",
            mib(self.reserved),
            mib(self.mapped),
            mib(self.returned)
        )?;
        writeln!(
            f,
            "  refills {}, flushes {}, frees straight to a central list {}, fallback operations {}",
            self.refills, self.flushes, self.central_direct, self.fallback_ops
        )?;
        match self.aborts {
            Some(n) => writeln!(f, "  rseq aborts {n}")?,
            None => writeln!(
                f,
                "  rseq aborts: not counted (runtime built without abort-stats)"
            )?,
        }
        writeln!(
            f,
            "  large allocations {}, large frees {}, failed requests {}",
            self.large_allocs, self.large_frees, self.failed
        )?;
        writeln!(
            f,
            "  sweeps {}, objects drained from caches {}, runs released {}",
            self.sweeps, self.drained, self.released_runs
        )?;
        let t = &self.tunables;
        writeln!(
            f,
            "  tunables: cache {} KiB per class, release delay {} ms{}",
            t.cache_kib,
            t.release_ms,
            if t.secure {
                " (privileged: environment ignored)"
            } else {
                ""
            }
        )?;
        write!(f, "  bytes cached by CPU:")?;
        for (cpu, &b) in self
            .cached_by_cpu
            .iter()
            .enumerate()
            .filter(|(_, &b)| b > 0)
        {
            write!(f, " {cpu}:{b}")?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "  {:>7} {:>9} {:>9} {:>6}",
            "class", "cached", "central", "runs"
        )?;
        for c in self
            .classes
            .iter()
            .filter(|c| c.cached + c.central + c.runs > 0)
        {
            writeln!(
                f,
                "  {:>7} {:>9} {:>9} {:>6}",
                c.size, c.cached, c.central, c.runs
            )?;
        }
        Ok(())
    }
}

/// Prints the statistics to standard error (at exit, when
/// `RESTARTABLE_MALLOC_STATS=1`).
pub(crate) extern "C" fn print_at_exit() {
    let Some(s) = stats() else {
        return;
    };
    let text = s.to_string();
    let to = s.tunables.stats_at_exit.filter(|p| p.to_bytes() != b"1");
    // SAFETY: opening the file named by the variable (NUL-terminated),
    // writing our own buffer, closing what we opened.
    unsafe {
        let fd = match to {
            Some(path) => libc::open(
                path.as_ptr(),
                libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC,
                0o644,
            ),
            None => 2,
        };
        if fd >= 0 {
            libc::write(fd, text.as_ptr().cast(), text.len());
            if fd != 2 {
                libc::close(fd);
            }
        }
    }
}
