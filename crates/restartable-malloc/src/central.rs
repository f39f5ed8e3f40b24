//! [`Central`]: one list of free objects per size class, behind a lock,
//! between the per-CPU caches and the spans. Caches refill from it and
//! flush to it in batches, so its lock is taken once per batch.
//!
//! A class's list serves, in order: objects given back (an intrusive
//! list, each free object's first word naming the next), then the rest of
//! the class's newest run (a bump pointer, so a fresh run is never written
//! before its objects are handed out), then a new run.
//!
//! A signal handler that interrupts its own thread inside a list's lock
//! cannot take from that list ([`take`](Central::take) returns 0), and gives
//! back through a lock-free stack beside it, which the next holder of the
//! lock adopts whole (a swap, so no ABA problem).

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::classes::{self, COUNT};
use crate::lock::Lock;
use crate::region::{Region, SPAN};
use crate::spans::Spans;

/// The central lists of every class.
pub struct Central {
    lists: [List; COUNT],
}

#[repr(align(64))]
struct List {
    lock: Lock,
    inner: UnsafeCell<Inner>,
    /// Objects given back while the lock was the giver's own.
    returned: AtomicUsize,
    /// How many (a hint, added to `free` when the stack is adopted).
    returned_count: AtomicUsize,
}

struct Inner {
    /// The first free object, 0 for none.
    head: usize,
    /// The next unused object of the newest run, and the run's end.
    bump: usize,
    end: usize,
    /// Runs taken for this class and not given back.
    runs: usize,
    /// Objects on `head`'s list (not counting adopted `returned` stacks:
    /// a hint for [`Central::release`]).
    free: usize,
    /// Objects were given back since the last [`Central::release`].
    dirty: bool,
}

// SAFETY: `inner`, and the free objects it leads to, are only touched under
// the lock; `returned` is atomic.
unsafe impl Sync for Central {}

impl Default for Central {
    fn default() -> Self {
        Self::new()
    }
}

impl Central {
    /// Empty lists.
    pub const fn new() -> Central {
        Central {
            lists: [const {
                List {
                    lock: Lock::new(),
                    inner: UnsafeCell::new(Inner {
                        head: 0,
                        bump: 0,
                        end: 0,
                        runs: 0,
                        free: 0,
                        dirty: false,
                    }),
                    returned: AtomicUsize::new(0),
                    returned_count: AtomicUsize::new(0),
                }
            }; COUNT],
        }
    }

    /// The lock of `class`'s list, for `pthread_atfork`.
    pub fn lock(&self, class: usize) -> &Lock {
        &self.lists[class].lock
    }

    /// Fills `out` with up to `out.len()` free objects of `class` and says
    /// how many; `grow(spans)` supplies a new run (zeroed) when the list is
    /// empty. 0 when no memory is left, or when the calling thread holds
    /// this list's lock already (a signal handler that interrupted it).
    pub(crate) fn take(
        &self,
        class: usize,
        out: &mut [usize],
        mut grow: impl FnMut(usize) -> Option<usize>,
    ) -> usize {
        let list = &self.lists[class];
        let Ok(_held) = list.lock.lock() else {
            return 0;
        };
        // SAFETY: under the lock.
        let inner = unsafe { &mut *list.inner.get() };
        let size = classes::size(class);
        let mut n = 0;
        while n < out.len() {
            if inner.head == 0 {
                inner.head = list.returned.swap(0, Ordering::Acquire);
                if inner.head != 0 {
                    inner.free += list.returned_count.swap(0, Ordering::Relaxed);
                    inner.dirty = true;
                }
            }
            if inner.head != 0 {
                out[n] = inner.head;
                // SAFETY: a free object's first word names the next.
                inner.head = unsafe { *(inner.head as *const usize) };
                inner.free = inner.free.saturating_sub(1);
            } else {
                if inner.bump + size > inner.end {
                    let Some(run) = grow(classes::run_spans(class)) else {
                        break;
                    };
                    inner.bump = run;
                    inner.end = run + classes::objects_per_run(class) * size;
                    inner.runs += 1;
                }
                out[n] = inner.bump;
                inner.bump += size;
            }
            n += 1;
        }
        n
    }

    /// Gives `objects` of `class` back to its list.
    pub(crate) fn give(&self, class: usize, objects: &[usize]) {
        let list = &self.lists[class];
        match list.lock.lock() {
            Ok(_held) => {
                // SAFETY: under the lock.
                let inner = unsafe { &mut *list.inner.get() };
                for &object in objects {
                    // SAFETY: the object is free and ours; its first word
                    // becomes the link.
                    unsafe { (object as *mut usize).write(inner.head) };
                    inner.head = object;
                }
                inner.free += objects.len();
                inner.dirty = true;
            }
            Err(_) => {
                for &object in objects {
                    let mut head = list.returned.load(Ordering::Relaxed);
                    loop {
                        // SAFETY: as above.
                        unsafe { (object as *mut usize).write(head) };
                        match list.returned.compare_exchange_weak(
                            head,
                            object,
                            Ordering::Release,
                            Ordering::Relaxed,
                        ) {
                            Ok(_) => break,
                            Err(now) => head = now,
                        }
                    }
                }
                list.returned_count
                    .fetch_add(objects.len(), Ordering::Relaxed);
            }
        }
    }

    /// Gives every run of `class` none of whose objects is in use (all on
    /// this list) back to `spans`, which returns its memory to the system:
    /// how many runs. Walks the list twice, counting free objects per run
    /// in a scratch table mapped for the call; skipped while the list
    /// cannot hold a whole run.
    pub(crate) fn release(&self, class: usize, region: &Region, spans: &Spans) -> usize {
        // The runs are given back after the list's lock is dropped: taken
        // with it held, a busy span lock would refuse them (a holder never
        // waits), losing their address range.
        let (mut run, released) = self.unlink_whole_runs(class, region);
        while run != 0 {
            let next = region.links(run)[0].load(Ordering::Relaxed);
            spans.give(region, run, classes::run_spans(class));
            run = next;
        }
        released
    }

    /// The part of [`release`](Self::release) under the lock: unlinks the
    /// objects of every whole run and returns those runs, chained through
    /// the first word of their link table entries, and how many.
    fn unlink_whole_runs(&self, class: usize, region: &Region) -> (usize, usize) {
        let list = &self.lists[class];
        let Ok(_held) = list.lock.lock() else {
            return (0, 0);
        };
        // SAFETY: under the lock.
        let inner = unsafe { &mut *list.inner.get() };
        let mut adopted = list.returned.swap(0, Ordering::Acquire);
        while adopted != 0 {
            // SAFETY: a free object's first word names the next; it joins
            // the list under the lock.
            let next = unsafe { *(adopted as *const usize) };
            // SAFETY: as above.
            unsafe { (adopted as *mut usize).write(inner.head) };
            inner.head = adopted;
            inner.free += 1;
            inner.dirty = true;
            adopted = next;
        }
        list.returned_count.store(0, Ordering::Relaxed);
        if !inner.dirty {
            return (0, 0);
        }
        let size = classes::size(class);
        let per_run = classes::objects_per_run(class);
        if inner.free.saturating_mul(size) < per_run * size {
            // Not a run's worth on the list: nothing can be whole (the
            // list stays dirty, and is looked at again next time).
            return (0, 0);
        }
        let Ok(table) = crate::region::map(region.spans() * 4, libc::PROT_READ | libc::PROT_WRITE)
        else {
            return (0, 0);
        };
        inner.dirty = false;
        let counts = table as *mut u32;
        let base = region.base();
        let run_of = |object: usize| match region.small(object) {
            Some((c, offset)) if usize::from(c) == class => region.run_start(object, offset),
            _ => None,
        };
        // SAFETY (for every `counts` access below): the index is a span of
        // the region, inside the table of `region.spans()` words.
        let count = |run: usize| unsafe { &mut *counts.add((run - base) / SPAN) };
        // The newest run is only carved up to `bump`: it is whole when all
        // of its carved objects are free.
        let newest = (inner.end != 0).then(|| inner.end - per_run * size);
        let carved = newest.map_or(0, |start| (inner.bump - start) / size);
        let expected = |run: usize| if newest == Some(run) { carved } else { per_run };
        let mut at = inner.head;
        while at != 0 {
            if let Some(run) = run_of(at) {
                *count(run) += 1;
            }
            // SAFETY: a free object's first word names the next.
            at = unsafe { *(at as *const usize) };
        }
        // Second walk: objects of whole runs leave the list; a run joins
        // the chain once its last object is passed.
        const WHOLE: u32 = 1 << 31;
        let (mut chain, mut released, mut removed) = (0, 0, 0);
        let mut link: *mut usize = &mut inner.head;
        // SAFETY: `link` is the head or a kept free object's first word.
        let mut at = unsafe { *link };
        while at != 0 {
            // SAFETY: as above.
            let next = unsafe { *(at as *const usize) };
            let whole = run_of(at).filter(|&run| {
                let c = count(run);
                if *c & WHOLE == 0 && *c as usize == expected(run) {
                    *c |= WHOLE;
                }
                *c & WHOLE != 0
            });
            match whole {
                Some(run) => {
                    removed += 1;
                    let c = count(run);
                    *c -= 1;
                    if *c == WHOLE {
                        if newest == Some(run) {
                            (inner.bump, inner.end) = (0, 0);
                        }
                        inner.runs -= 1;
                        released += 1;
                        // The run's link entry is unused while the run is
                        // in use (the span allocator's, once it is free).
                        region.links(run)[0].store(chain, Ordering::Relaxed);
                        chain = run;
                    }
                }
                None => link = at as *mut usize,
            }
            // SAFETY: as above.
            unsafe { *link = next };
            at = next;
        }
        inner.free = inner.free.saturating_sub(removed);
        // SAFETY: the scratch table mapped above.
        unsafe { libc::munmap(table as *mut libc::c_void, region.spans() * 4) };
        (chain, released)
    }

    /// Free objects on `class`'s list (given back, not yet handed out from
    /// the newest run) and runs taken, for the statistics. Walks the list.
    pub fn census(&self, class: usize) -> (usize, usize) {
        let list = &self.lists[class];
        let Ok(_held) = list.lock.lock() else {
            return (0, 0);
        };
        // SAFETY: under the lock.
        let inner = unsafe { &*list.inner.get() };
        let mut free = 0;
        for head in [inner.head, list.returned.load(Ordering::Acquire)] {
            let mut at = head;
            while at != 0 {
                free += 1;
                // SAFETY: a free object's first word names the next.
                at = unsafe { *(at as *const usize) };
            }
        }
        (free, inner.runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::{Entry, Region};

    #[test]
    fn objects_come_back_before_new_ones_and_runs_are_carved_in_order() {
        let region = Region::reserve(64).unwrap();
        let central = Central::new();
        let class = classes::class_of(1000).unwrap();
        let size = classes::size(class);
        let grow = |n: usize| {
            region
                .take(n, |k| Entry::Class {
                    class: class as u8,
                    offset: k as u8,
                })
                .ok()
        };
        let mut out = [0usize; 8];
        assert_eq!(central.take(class, &mut out, grow), 8);
        for w in out.windows(2) {
            assert_eq!(w[1] - w[0], size, "carved in order from the run");
        }
        central.give(class, &out[2..5]);
        assert_eq!(central.census(class), (3, 1));
        let mut again = [0usize; 4];
        assert_eq!(central.take(class, &mut again, grow), 4);
        assert_eq!(&again[..3], &[out[4], out[3], out[2]], "given back first");
        assert_eq!(again[3], out[7] + size, "then the run goes on");
        assert_eq!(central.census(class), (0, 1));
    }

    #[test]
    fn a_run_is_used_up_before_the_next_and_exhaustion_is_zero() {
        let region = Region::reserve(2 * classes::MAX_RUN_SPANS).unwrap();
        let central = Central::new();
        let class = classes::COUNT - 1;
        let per_run = classes::objects_per_run(class);
        let grow = |n: usize| region.take(n, |_| Entry::LargeTail).ok();
        let runs_that_fit = 2 * classes::MAX_RUN_SPANS / classes::run_spans(class);
        let mut out = vec![0usize; per_run * (runs_that_fit + 1)];
        assert_eq!(central.take(class, &mut out, grow), per_run * runs_that_fit);
        assert_eq!(central.take(class, &mut out[..1], grow), 0);
    }

    #[test]
    fn only_runs_with_every_object_free_go_back() {
        let region = Region::reserve(64).unwrap();
        let spans = Spans::new();
        let central = Central::new();
        let class = classes::class_of(4000).unwrap();
        let per_run = classes::objects_per_run(class);
        let grow = |n: usize| {
            spans
                .take(&region, n, |k| Entry::Class {
                    class: class as u8,
                    offset: k as u8,
                })
                .ok()
        };
        // Two whole runs and a third carved in part.
        let mut out = vec![0usize; 2 * per_run + 3];
        assert_eq!(central.take(class, &mut out, grow), out.len());
        let first = out[0];
        // One object of the first run stays in use; the second run and
        // the carved part of the third come back whole. Given back
        // interleaved, so that kept and removed objects alternate.
        let mut back: Vec<usize> = (0..per_run)
            .flat_map(|k| [out[k], out[per_run + k]])
            .filter(|&o| o != out[0])
            .collect();
        back.extend_from_slice(&out[2 * per_run..]);
        central.give(class, &back);
        assert_eq!(central.release(class, &region, &spans), 2);
        assert_eq!(central.census(class), (per_run - 1, 1));
        assert_eq!(region.lookup(out[per_run]), Some(Entry::Unused));
        assert_eq!(spans.free(&region).1, 2 * classes::run_spans(class));
        // Nothing given back since: no walk, nothing released.
        assert_eq!(central.release(class, &region, &spans), 0);
        central.give(class, &[first]);
        assert_eq!(central.release(class, &region, &spans), 1);
        assert_eq!(central.census(class), (0, 0));
        // The list still serves: a fresh run.
        let mut again = [0usize; 2];
        assert_eq!(central.take(class, &mut again, grow), 2);
        assert_eq!(again[1] - again[0], classes::size(class));
    }

    #[test]
    fn a_thread_holding_the_lock_gives_back_through_the_stack() {
        let region = Region::reserve(16).unwrap();
        let central = Central::new();
        let grow = |n: usize| region.take(n, |_| Entry::LargeTail).ok();
        let mut out = [0usize; 4];
        assert_eq!(central.take(3, &mut out, grow), 4);
        {
            let _held = central.lock(3).lock().unwrap();
            // As a signal handler would, inside the holder's frame.
            assert_eq!(central.take(3, &mut [0; 1], grow), 0);
            central.give(3, &out);
        }
        let mut again = [0usize; 4];
        assert_eq!(central.take(3, &mut again, grow), 4);
        again.reverse();
        assert_eq!(again, out);
    }
}
