//! [`Spans`]: runs of whole spans, handed out for large allocations and for
//! the runs small objects are carved from, and reused once given back.
//!
//! A run given back is returned to the operating system at once
//! (`madvise(MADV_DONTNEED)`: its pages read as zero again and stop
//! counting as resident) and kept on a free list by length, its node in
//! the region's link table (so none of it is resident while it waits).
//! A request takes a free run of exactly its length, else splits the
//! shortest longer one, else takes fresh spans from the region. Runs are
//! not merged with free neighbours.
//!
//! Every run handed out is all zero bytes: fresh spans are, given-back
//! ones were returned to the system and not written since.

use core::cell::UnsafeCell;
use core::sync::atomic::Ordering;

use crate::lock::Lock;
use crate::region::{Entry, Error, Region, SPAN};

/// Free lists for runs of 1 to `EXACT` spans; longer runs share the last.
const EXACT: usize = 64;

/// The span allocator of one region.
pub struct Spans {
    lock: Lock,
    /// Heads of the free lists: `heads[n - 1]` for runs of `n` spans up to
    /// `EXACT`, `heads[EXACT]` for longer runs (first fit).
    heads: UnsafeCell<[usize; EXACT + 1]>,
}

// SAFETY: `heads`, and the nodes it leads to, are only touched under the
// lock.
unsafe impl Sync for Spans {}

impl Default for Spans {
    fn default() -> Self {
        Self::new()
    }
}

impl Spans {
    /// No free runs.
    pub const fn new() -> Spans {
        Spans {
            lock: Lock::new(),
            heads: UnsafeCell::new([0; EXACT + 1]),
        }
    }

    /// The lock, for `pthread_atfork`.
    pub fn lock(&self) -> &Lock {
        &self.lock
    }

    /// A run of `n` spans of `region`, zeroed, with span `k`'s entry set to
    /// `entry(k)`.
    ///
    /// # Errors
    /// As [`Region::take`] when no free run serves and the region cannot.
    pub(crate) fn take(
        &self,
        region: &Region,
        n: usize,
        entry: impl Fn(usize) -> Entry,
    ) -> Result<usize, Error> {
        if n == 0 {
            return Err(Error::BadLength);
        }
        // A signal handler that interrupted this thread's own use of the
        // lists takes fresh spans, which need no lock.
        if let Ok(_held) = self.lock.lock() {
            // SAFETY: under the lock.
            if let Some(addr) = unsafe { self.take_free(region, n) } {
                region.mark(addr, n, entry);
                return Ok(addr);
            }
        }
        region.take(n, entry)
    }

    /// Gives back the run of `n` spans at `addr`, which [`take`](Self::take)
    /// (or the region) handed out: its memory goes back to the system and
    /// its entries read [`Entry::Unused`] from now on.
    pub(crate) fn give(&self, region: &Region, addr: usize, n: usize) {
        region.mark(addr, n, |_| Entry::Unused);
        // SAFETY: the run is ours alone (its owner gave it back) and lies in
        // the region's mapping.
        let returned =
            unsafe { libc::madvise(addr as *mut libc::c_void, n * SPAN, libc::MADV_DONTNEED) } == 0;
        if !returned {
            // Refused (locked memory: `mlockall`): runs are handed out
            // zeroed, so zero it by hand.
            // SAFETY: as above.
            unsafe { core::ptr::write_bytes(addr as *mut u8, 0, n * SPAN) };
        }
        // A signal handler that interrupted this thread's own use of the
        // lists cannot list the run: its memory is returned, its address
        // range lost.
        if let Ok(_held) = self.lock.lock() {
            // SAFETY: under the lock; the run is free and ours.
            unsafe { self.push(region, addr, n) };
        }
    }

    /// Free runs and the spans they hold, for the statistics.
    pub fn free(&self, region: &Region) -> (usize, usize) {
        let Ok(_held) = self.lock.lock() else {
            return (0, 0);
        };
        let (mut runs, mut spans) = (0, 0);
        // SAFETY: under the lock.
        let heads = unsafe { &*self.heads.get() };
        for &head in heads {
            let mut at = head;
            while at != 0 {
                let (next, n) = node(region, at);
                runs += 1;
                spans += n;
                at = next;
            }
        }
        (runs, spans)
    }

    /// # Safety
    /// The lock is held.
    unsafe fn take_free(&self, region: &Region, n: usize) -> Option<usize> {
        // SAFETY: the caller holds the lock.
        let heads = unsafe { &mut *self.heads.get() };
        let (at, len) = if n <= EXACT && heads[n - 1] != 0 {
            let at = heads[n - 1];
            heads[n - 1] = node(region, at).0;
            (at, n)
        } else {
            // The shortest longer exact list, else the first long run that
            // fits.
            let from = n.min(EXACT);
            if let Some(len) = (from + 1..=EXACT).find(|&len| heads[len - 1] != 0) {
                let at = heads[len - 1];
                heads[len - 1] = node(region, at).0;
                (at, len)
            } else {
                let mut prev = 0;
                let mut at = heads[EXACT];
                loop {
                    if at == 0 {
                        return None;
                    }
                    let (next, spans) = node(region, at);
                    if spans >= n {
                        if prev == 0 {
                            heads[EXACT] = next;
                        } else {
                            set_node(region, prev, next, node(region, prev).1);
                        }
                        break (at, spans);
                    }
                    (prev, at) = (at, next);
                }
            }
        };
        if len > n {
            // SAFETY: the rest of the run is free and ours, under the lock.
            unsafe { self.push(region, at + n * SPAN, len - n) };
        }
        Some(at)
    }

    /// # Safety
    /// The lock is held; the `n` spans at `addr` are free and belong to
    /// nobody.
    unsafe fn push(&self, region: &Region, addr: usize, n: usize) {
        // SAFETY: the caller holds the lock.
        let heads = unsafe { &mut *self.heads.get() };
        let list = &mut heads[n.min(EXACT + 1) - 1];
        set_node(region, addr, *list, n);
        *list = addr;
    }
}

/// The node of the free run at `addr`: the next run on its list (0 for
/// none) and its length. Only the lock's holder reads and writes nodes.
fn node(region: &Region, addr: usize) -> (usize, usize) {
    let [next, spans] = region.links(addr);
    (next.load(Ordering::Relaxed), spans.load(Ordering::Relaxed))
}

fn set_node(region: &Region, addr: usize, next: usize, spans: usize) {
    let [n, s] = region.links(addr);
    n.store(next, Ordering::Relaxed);
    s.store(spans, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn large(n: usize) -> impl Fn(usize) -> Entry {
        move |k| {
            if k == 0 {
                Entry::Large { spans: n as u32 }
            } else {
                Entry::LargeTail
            }
        }
    }

    #[test]
    fn given_back_runs_are_reused_split_and_zero() {
        let region = Region::reserve(64).unwrap();
        let spans = Spans::new();
        let a = spans.take(&region, 3, large(3)).unwrap();
        let b = spans.take(&region, 1, large(1)).unwrap();
        // SAFETY: both runs are ours and writable.
        unsafe {
            core::ptr::write_bytes(a as *mut u8, 0xa5, 3 * SPAN);
            core::ptr::write_bytes(b as *mut u8, 0x5a, SPAN);
        }
        spans.give(&region, a, 3);
        assert_eq!(region.lookup(a), Some(Entry::Unused));
        assert_eq!(spans.free(&region), (1, 3));
        // Exact fit first, then a split of the longer run.
        let c = spans.take(&region, 2, large(2)).unwrap();
        assert_eq!(c, a, "the free run is split");
        assert_eq!(spans.free(&region), (1, 1));
        assert_eq!(region.lookup(c + SPAN), Some(Entry::LargeTail));
        let d = spans.take(&region, 1, large(1)).unwrap();
        assert_eq!(d, a + 2 * SPAN, "the rest of the split run");
        for run in [(c, 2), (d, 1)] {
            // SAFETY: the runs are ours and readable.
            let bytes = unsafe { core::slice::from_raw_parts(run.0 as *const u8, run.1 * SPAN) };
            assert!(bytes.iter().all(|&x| x == 0), "a reused run is zero");
        }
        spans.give(&region, b, 1);
        assert_eq!(spans.take(&region, 1, large(1)).unwrap(), b);
        // Nothing free: fresh spans.
        assert_eq!(spans.take(&region, 1, large(1)).unwrap(), b + SPAN);
    }

    #[test]
    fn long_runs_are_first_fit() {
        let region = Region::reserve(1024).unwrap();
        let spans = Spans::new();
        let a = spans.take(&region, 100, large(100)).unwrap();
        let b = spans.take(&region, 200, large(200)).unwrap();
        spans.give(&region, a, 100);
        spans.give(&region, b, 200);
        assert_eq!(spans.take(&region, 150, large(150)).unwrap(), b);
        assert_eq!(spans.free(&region), (2, 150));
        assert_eq!(spans.take(&region, 70, large(70)).unwrap(), a);
        assert_eq!(spans.free(&region), (2, 80), "30 left of a, 50 of b");
        assert_eq!(spans.take(&region, 30, large(30)).unwrap(), a + 70 * SPAN);
    }
}
