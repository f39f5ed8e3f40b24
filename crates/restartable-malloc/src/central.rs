//! [`Central`]: one list of free objects per size class, behind a lock,
//! between the per-CPU caches and the spans. Caches refill from it and
//! flush to it in batches, so its lock is taken once per batch.
//!
//! A class's list serves, in order: whole batches given back (kept as
//! arrays of addresses on the class's *shelf*, so that moving a batch from
//! one CPU's cache to another's copies [`BATCH`] words and touches none of
//! the objects, whose lines are likely in the other CPU's cache), then
//! objects given back one by one or while the shelf was full (an intrusive
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

/// The most objects a shelved batch holds: a cache's refill or flush
/// ([`SLOTS`](crate::cache::SLOTS) / 2 at most).
pub const BATCH: usize = 32;
/// Batches one class's shelf holds.
const BATCHES: usize = 8;
/// Bytes of one class's shelf.
const SHELF: usize = BATCHES * BATCH * 8;
const _: () = assert!(crate::cache::SLOTS / 2 <= BATCH);

/// The central lists of every class.
pub struct Central {
    lists: [List; COUNT],
    /// The shelves of every class, `SHELF` bytes each, in one mapping
    /// touched as classes use them; 0: none (every object goes on the
    /// intrusive lists).
    shelves: usize,
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
    /// Batches on the shelf, and the objects in each.
    shelved: usize,
    lens: [u8; BATCHES],
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
                        shelved: 0,
                        lens: [0; BATCHES],
                    }),
                    returned: AtomicUsize::new(0),
                    returned_count: AtomicUsize::new(0),
                }
            }; COUNT],
            shelves: 0,
        }
    }

    /// Empty lists with shelves for whole batches; without them (as
    /// [`new`](Self::new)) when the mapping is refused.
    pub fn with_shelves() -> Central {
        let shelves =
            crate::region::map(COUNT * SHELF, libc::PROT_READ | libc::PROT_WRITE).unwrap_or(0);
        Central {
            shelves,
            ..Central::new()
        }
    }

    /// Batch `k` of `class`'s shelf (`BATCH` words).
    fn batch(&self, class: usize, k: usize) -> *mut usize {
        (self.shelves + class * SHELF + k * BATCH * 8) as *mut usize
    }

    /// Moves every shelved batch of `class` onto the intrusive list (for
    /// the walks of `release`). Under the list's lock.
    fn unshelve(&self, class: usize, inner: &mut Inner) {
        while inner.shelved > 0 {
            inner.shelved -= 1;
            let k = inner.shelved;
            let b = self.batch(class, k);
            for i in 0..usize::from(inner.lens[k]) {
                // SAFETY: the shelf's batch `k` holds `lens[k]` addresses
                // of free objects, ours under the lock; each object's
                // first word becomes the link.
                unsafe {
                    let object = *b.add(i);
                    (object as *mut usize).write(inner.head);
                    inner.head = object;
                }
            }
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
        // Whole batches first (the newest), then part of one.
        while n < out.len() && inner.shelved > 0 {
            let k = inner.shelved - 1;
            let len = usize::from(inner.lens[k]);
            let m = len.min(out.len() - n);
            // SAFETY: batch `k` holds `len` addresses; the last `m` move
            // to `out`, which has room for them.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    self.batch(class, k).add(len - m),
                    out.as_mut_ptr().add(n),
                    m,
                );
            }
            n += m;
            inner.free = inner.free.saturating_sub(m);
            if m == len {
                inner.shelved = k;
            } else {
                inner.lens[k] = (len - m) as u8;
            }
        }
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
                if self.shelves != 0
                    && objects.len() > 1
                    && objects.len() <= BATCH
                    && inner.shelved < BATCHES
                {
                    let k = inner.shelved;
                    // SAFETY: batch `k` of the shelf is unused and holds
                    // `BATCH` words.
                    unsafe {
                        core::ptr::copy_nonoverlapping(
                            objects.as_ptr(),
                            self.batch(class, k),
                            objects.len(),
                        );
                    }
                    inner.lens[k] = objects.len() as u8;
                    inner.shelved = k + 1;
                    inner.free += objects.len();
                    inner.dirty = true;
                    return;
                }
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
        self.unshelve(class, inner);
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
        let mut free: usize = inner.lens[..inner.shelved]
            .iter()
            .map(|&l| usize::from(l))
            .sum();
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
        only_whole_runs_go_back(Central::new());
    }

    #[test]
    fn only_runs_with_every_object_free_go_back_with_batches_shelved() {
        only_whole_runs_go_back(Central::with_shelves());
    }

    fn only_whole_runs_go_back(central: Central) {
        let region = Region::reserve(64).unwrap();
        let spans = Spans::new();
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
        // In batches, as caches flush: on the shelf while it has room.
        for chunk in back.chunks(7) {
            central.give(class, chunk);
        }
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
    fn shelved_batches_move_whole_without_touching_their_objects() {
        let central = Central::with_shelves();
        assert_ne!(central.shelves, 0);
        // Addresses in memory that cannot be read or written: a look at
        // any object would fault.
        let none = crate::region::map(1 << 16, libc::PROT_NONE).unwrap();
        let class = classes::class_of(64).unwrap();
        let batch =
            |k: usize| -> Vec<usize> { (0..20).map(|i| none + (k * 20 + i) * 64).collect() };
        let no_grow = |_: usize| None;
        for k in 0..BATCHES {
            central.give(class, &batch(k));
        }
        assert_eq!(central.census(class).0, 20 * BATCHES);
        // The newest batch first, whole; then part of the next.
        let mut out = [0usize; 20];
        assert_eq!(central.take(class, &mut out, no_grow), 20);
        assert_eq!(out.to_vec(), batch(BATCHES - 1));
        let mut part = [0usize; 5];
        assert_eq!(central.take(class, &mut part, no_grow), 5);
        assert_eq!(part.to_vec(), batch(BATCHES - 2)[15..].to_vec());
        let mut rest = vec![0usize; 20 * BATCHES];
        let n = central.take(class, &mut rest, no_grow);
        assert_eq!(
            n,
            20 * (BATCHES - 1) - 5,
            "every shelved object, and no more"
        );
        assert_eq!(&rest[..15], &batch(BATCHES - 2)[..15]);
        assert_eq!(central.census(class).0, 0);
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
