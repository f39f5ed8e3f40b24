//! [`Pool`]: reusable objects through per-CPU caches.

use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::kit::guard::{Guarded, Reach};
use super::kit::retry::{self, Step};
use super::kit::sparse::SparseSlots;
use super::kit::word::{pointer_at, word_of};
use super::RemoteError;
use crate::section::{Index, Order};
use crate::stats::Cause;

/// One CPU's cache: `items[..count]` are addresses of boxed objects.
struct Cache {
    count: AtomicU64,
    items: Box<[AtomicU64]>,
}

/// One CPU's cache, guarded.
type Slot = Guarded<Cache>;

/// Default objects cached per CPU.
const DEFAULT_CACHE: usize = 64;
/// The largest per-CPU cache (512 KiB of addresses per CPU).
const MAX_CACHE: usize = 1 << 16;

/// A pool of reusable `T`s: [`get`](Self::get) hands one out (made with
/// the pool's constructor when none is free), and the [`Pooled`] guard
/// returns it when dropped. Objects keep their state between uses; reset
/// what matters after `get`.
///
/// Each CPU has a cache of up to `per_cpu` objects, taken from and put back
/// with one critical section each (the guarded `memcpy_then_store` to take
/// the top object, the guarded `store_then_store` to put one): no lock and
/// no atomic instruction on the common path. A full cache spills half its
/// objects in one section to a shared overflow list, and an empty one
/// refills a batch from it, so the overflow's lock is taken once per
/// `per_cpu / 2` operations at most.
///
/// Without rseq (or after 16 aborts in a row) a cache operation takes the
/// guard protocol on its CPU's cache: a compare-exchange, no system call
/// (and a fence while other threads use rseq). Not for signal handlers: the
/// overflow list sits behind a mutex, and making an object may allocate.
/// For the same reason a child of `fork` may block on that mutex if another
/// thread of the parent held it at the time.
///
/// `new` is `const`, so a pool can be a `static` (with a `fn` as the
/// constructor, or any closure in a local).
///
/// ```
/// use restartable::Pool;
///
/// static BUFFERS: Pool<Vec<u8>> = Pool::new(|| Vec::with_capacity(4096));
///
/// {
///     let mut buf = BUFFERS.get();
///     buf.clear();
///     buf.extend_from_slice(b"request");
/// } // back in this CPU's cache
/// let again = BUFFERS.get(); // usually the same buffer, capacity intact
/// assert!(again.capacity() >= 4096);
///
/// let size = 512;
/// let local = Pool::new(move || vec![0u8; size]); // a capturing closure
/// assert_eq!(local.get().len(), 512);
/// ```
pub struct Pool<T, F = fn() -> T> {
    caches: SparseSlots<Slot>,
    per_cpu: usize,
    /// Batches of object addresses spilled from caches (`per_cpu / 2` at a
    /// time, or single objects put back where no cache could take them).
    overflow: Mutex<Vec<Vec<u64>>>,
    make: F,
    _owns: PhantomData<Box<T>>,
}

/// An object taken from a [`Pool`]; derefs to it, and puts it back in the
/// pool when dropped.
pub struct Pooled<'a, T, F: Fn() -> T = fn() -> T> {
    pool: &'a Pool<T, F>,
    object: ManuallyDrop<Box<T>>,
}

impl<T, F: Fn() -> T> Pool<T, F> {
    /// A pool that makes objects with `make`, caching 64 per CPU. `const`;
    /// allocates nothing until first use.
    pub const fn new(make: F) -> Self {
        Self::with_cache(make, DEFAULT_CACHE)
    }

    /// A pool caching up to `per_cpu` objects per CPU (clamped to
    /// 2..=65536; more reach the overflow list in batches of `per_cpu / 2`).
    pub const fn with_cache(make: F, per_cpu: usize) -> Self {
        let per_cpu = if per_cpu < 2 {
            2
        } else if per_cpu > MAX_CACHE {
            MAX_CACHE
        } else {
            per_cpu
        };
        Pool {
            caches: SparseSlots::new(),
            per_cpu,
            overflow: Mutex::new(Vec::new()),
            make,
            _owns: PhantomData,
        }
    }

    /// An object: from the current CPU's cache, else a batch from the
    /// overflow list, else a new one.
    pub fn get(&self) -> Pooled<'_, T, F> {
        let object = self.take().unwrap_or_else(|| Box::new((self.make)()));
        Pooled {
            pool: self,
            object: ManuallyDrop::new(object),
        }
    }

    /// Adds `object` to the pool (to the current CPU's cache).
    pub fn put(&self, object: T) {
        self.put_box(Box::new(object));
    }

    /// Objects in the caches and the overflow list now (racy, for reports).
    pub fn cached(&self) -> usize {
        let in_caches: usize = self
            .caches
            .iter()
            .map(|(_, c)| c.count.load(Ordering::Relaxed) as usize)
            .sum();
        in_caches + self.lock_overflow().iter().map(Vec::len).sum::<usize>()
    }

    /// Objects each CPU's cache holds at most.
    pub fn per_cpu(&self) -> usize {
        self.per_cpu
    }

    /// Moves every CPU's cached objects to the shared overflow list, where
    /// any thread's [`get`](Self::get) finds them (caches are otherwise only
    /// used by threads on their CPU). Each cache is taken under its guard
    /// with a fence: microseconds per CPU.
    ///
    /// # Errors
    /// [`RemoteError::Fence`] when no fence can be made; caches before the
    /// failing one were flushed.
    pub fn flush(&self) -> Result<(), RemoteError> {
        for (index, cache) in self.caches.iter() {
            let batch = cache.hold(Reach::Cpu(index), |cache| {
                let n = cache.count.swap(0, Ordering::Relaxed) as usize;
                cache.items[..n.min(cache.items.len())]
                    .iter()
                    .map(|a| a.load(Ordering::Relaxed))
                    .collect::<Vec<_>>()
            });
            let batch = batch.map_err(super::refused)?;
            if !batch.is_empty() {
                self.lock_overflow().push(batch);
            }
        }
        Ok(())
    }

    fn batch(&self) -> usize {
        self.per_cpu / 2
    }

    /// Cache `index`, created if it does not exist.
    fn cache(&self, index: usize) -> Option<&Slot> {
        self.caches.get_or_init(index, || {
            Guarded::new(Cache {
                count: AtomicU64::new(0),
                items: (0..self.per_cpu).map(|_| AtomicU64::new(0)).collect(),
            })
        })
    }

    fn lock_overflow(&self) -> MutexGuard<'_, Vec<Vec<u64>>> {
        // The list stays consistent whatever panicked while holding it.
        self.overflow.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A cached object, refilling the current cache from the overflow list
    /// when it is empty; `None` when the pool has nothing free here.
    fn take(&self) -> Option<Box<T>> {
        let taken = retry::sections(Index::Cpu, |t, id| {
            let Some(cache) = self.caches.get(id.as_usize()) else {
                return Step::Done(None);
            };
            let n = cache.count.load(Ordering::Relaxed);
            let Some(top) = n.checked_sub(1).and_then(|i| cache.items.get(i as usize)) else {
                return Step::Done(None);
            };
            let mut taken = 0u64;
            // SAFETY: the count is written only by sections on this CPU
            // (which check the guard first) and by guard holders after a
            // fence; `top` is a word of this cache; `taken` is ours.
            Step::from(unsafe {
                t.memcpy_then_store_guarded(
                    id,
                    Order::Relaxed,
                    cache.count.as_ptr(),
                    n,
                    &mut taken as *mut u64 as *mut u8,
                    top.as_ptr() as *const u8,
                    8,
                    n - 1,
                    cache.guard_ptr(),
                )
            })
            .map(|()| {
                // Pairs with the release commit that put the object there.
                fence(Ordering::Acquire);
                Some(taken)
            })
        });
        let address = taken.unwrap_or_else(|cause| self.take_fallback(cause));
        match address {
            // SAFETY: a cached address is a `Box<T>` that the pool owned
            // and that was unlinked by the commit (or under the guard).
            Some(a) => Some(unsafe { Box::from_raw(pointer_at::<T>(a)) }),
            None => self.refill(),
        }
    }

    /// Takes a batch from the overflow list: one object for the caller,
    /// the rest into the current cache (or back to the list if it no longer
    /// fits).
    fn refill(&self) -> Option<Box<T>> {
        let mut batch = self.lock_overflow().pop()?;
        let mine = batch.pop()?;
        if !batch.is_empty() && !self.insert(&batch) {
            self.lock_overflow().push(batch);
        }
        // SAFETY: addresses in the overflow list are boxes the pool owns;
        // this one left the list with the batch.
        Some(unsafe { Box::from_raw(pointer_at::<T>(mine)) })
    }

    fn put_box(&self, object: Box<T>) {
        let address = word_of(Box::into_raw(object));
        let put = retry::sections(Index::Cpu, |t, id| {
            let Some(cache) = self.cache(id.as_usize()) else {
                return Step::Leave(Cause::IdOutOfRange);
            };
            let n = cache.count.load(Ordering::Relaxed);
            let Some(place) = cache.items.get(n as usize) else {
                return self.spill(t, id, cache, n);
            };
            // SAFETY: as in `take`; `place` is past the objects in use,
            // published only by a commit of `n + 1`.
            Step::from(unsafe {
                t.store_then_store_guarded(
                    id,
                    Order::Release,
                    cache.count.as_ptr(),
                    n,
                    place.as_ptr(),
                    address,
                    n + 1,
                    cache.guard_ptr(),
                )
            })
        });
        if let Err(cause) = put {
            self.put_fallback(cause, address);
        }
    }

    /// Moves the top half of a full cache to the overflow list with one
    /// section (copy the addresses out, commit the lower count); the put
    /// then goes round again.
    #[cold]
    fn spill(
        &self,
        t: &crate::section::Thread,
        id: crate::section::Id,
        cache: &Slot,
        n: u64,
    ) -> Step<()> {
        let batch = self.batch() as u64;
        let keep = n - batch;
        let mut out = vec![0u64; batch as usize];
        // SAFETY: as in `take`; the copy reads `batch` words of the cache
        // below `n` and writes our vector.
        let spilled = Step::from(unsafe {
            t.memcpy_then_store_guarded(
                id,
                Order::Relaxed,
                cache.count.as_ptr(),
                n,
                out.as_mut_ptr() as *mut u8,
                cache.items[keep as usize..].as_ptr() as *const u8,
                8 * batch as usize,
                keep,
                cache.guard_ptr(),
            )
        });
        match spilled {
            Step::Done(()) => {
                self.lock_overflow().push(out);
                Step::Again
            }
            other => other,
        }
    }

    /// Copies `batch` into the current cache if it fits, with one section
    /// (copy in, commit the higher count); false when it did not.
    fn insert(&self, batch: &[u64]) -> bool {
        let inserted = retry::sections(Index::Cpu, |t, id| {
            let Some(cache) = self.cache(id.as_usize()) else {
                return Step::Leave(Cause::IdOutOfRange);
            };
            let n = cache.count.load(Ordering::Relaxed);
            let Some(free) = cache.items.get(n as usize..n as usize + batch.len()) else {
                return Step::Done(false);
            };
            // SAFETY: as in `put_box`, for the places after `n`.
            Step::from(unsafe {
                t.memcpy_then_store_guarded(
                    id,
                    Order::Release,
                    cache.count.as_ptr(),
                    n,
                    free.as_ptr() as *mut u8,
                    batch.as_ptr() as *const u8,
                    8 * batch.len(),
                    n + batch.len() as u64,
                    cache.guard_ptr(),
                )
            })
            .map(|()| true)
        });
        inserted.unwrap_or_else(|cause| {
            self.on_fallback(cause, |cache| {
                let n = cache.count.load(Ordering::Relaxed) as usize;
                let Some(free) = cache.items.get(n..n + batch.len()) else {
                    return false;
                };
                for (place, &a) in free.iter().zip(batch) {
                    place.store(a, Ordering::Relaxed);
                }
                cache
                    .count
                    .store((n + batch.len()) as u64, Ordering::Release);
                true
            })
            .unwrap_or(false)
        })
    }

    // Not `#[cold]`: without rseq this is the hot path; out of line
    // only, to keep the section path small.
    #[inline(never)]
    fn take_fallback(&self, cause: Cause) -> Option<u64> {
        self.on_fallback(cause, |cache| {
            let n = cache.count.load(Ordering::Relaxed);
            let top = n.checked_sub(1)?;
            cache.count.store(top, Ordering::Relaxed);
            Some(cache.items[top as usize].load(Ordering::Relaxed))
        })
        .flatten()
    }

    // Not `#[cold]`: without rseq this is the hot path; out of line
    // only, to keep the section path small.
    #[inline(never)]
    fn put_fallback(&self, cause: Cause, address: u64) {
        let put = self.on_fallback(cause, |cache| {
            let mut n = cache.count.load(Ordering::Relaxed) as usize;
            let mut spilled = None;
            if n == cache.items.len() {
                let keep = n - self.batch();
                spilled = Some(
                    cache.items[keep..n]
                        .iter()
                        .map(|a| a.load(Ordering::Relaxed))
                        .collect::<Vec<_>>(),
                );
                n = keep;
            }
            cache.items[n].store(address, Ordering::Relaxed);
            cache.count.store(n as u64 + 1, Ordering::Release);
            spilled
        });
        match put {
            Some(None) => {}
            Some(Some(batch)) => self.lock_overflow().push(batch),
            // No cache here could take it (an outer frame of this thread
            // holds its guard, or another guard while another thread holds
            // this one): the overflow list does.
            None => self.lock_overflow().push(vec![address]),
        }
    }

    /// The fallback path on the current CPU's cache: `f` under its guard;
    /// `None` when this thread cannot hold it now (an outer frame holds it,
    /// or holds another guard while another thread holds this one).
    fn on_fallback<R>(&self, cause: Cause, f: impl FnOnce(&Cache) -> R) -> Option<R> {
        let index = retry::fallback_index(cause, self.caches.len());
        self.cache(index)?.hold_waiting(Reach::Cpu(index), f).ok()
    }
}

impl<T, F> Drop for Pool<T, F> {
    fn drop(&mut self) {
        let overflow = core::mem::take(
            self.overflow
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let cached = self.caches.iter_mut().flat_map(|(_, c)| {
            let n = c.count.load(Ordering::Relaxed) as usize;
            c.items[..n.min(c.items.len())]
                .iter()
                .map(|a| a.load(Ordering::Relaxed))
                .collect::<Vec<_>>()
        });
        for address in cached.chain(overflow.into_iter().flatten()) {
            // SAFETY: `&mut self`: every cached address is a box the pool
            // owns, listed once.
            drop(unsafe { Box::from_raw(pointer_at::<T>(address)) });
        }
    }
}

impl<T, F: Fn() -> T> Pooled<'_, T, F> {
    /// Keeps the object instead of returning it to the pool.
    pub fn into_inner(self) -> T {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped, so the object is taken once.
        *unsafe { ManuallyDrop::take(&mut this.object) }
    }
}

impl<T, F: Fn() -> T> Deref for Pooled<'_, T, F> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.object
    }
}

impl<T, F: Fn() -> T> DerefMut for Pooled<'_, T, F> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.object
    }
}

impl<T, F: Fn() -> T> Drop for Pooled<'_, T, F> {
    fn drop(&mut self) {
        // SAFETY: dropped once; `into_inner` never runs this.
        let object = unsafe { ManuallyDrop::take(&mut self.object) };
        self.pool.put_box(object);
    }
}

impl<T: Default> Default for Pool<T> {
    fn default() -> Self {
        Self::new(T::default)
    }
}

impl<T, F: Fn() -> T> core::fmt::Debug for Pool<T, F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pool")
            .field("per_cpu", &self.per_cpu)
            .field("cached", &self.cached())
            .finish_non_exhaustive()
    }
}

impl<T: core::fmt::Debug, F: Fn() -> T> core::fmt::Debug for Pooled<'_, T, F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("Pooled").field(&**self).finish()
    }
}

// SAFETY: objects move between threads through the caches (`T: Send`);
// the pool hands out each object to one `Pooled` at a time, and shares
// only `make`, which is called from any thread (`F: Sync`).
unsafe impl<T: Send, F: Sync> Sync for Pool<T, F> {}
// SAFETY: as above; moving the pool moves `make` (`F: Send`).
unsafe impl<T: Send, F: Send> Send for Pool<T, F> {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    struct Object {
        id: u64,
        in_use: AtomicBool,
    }

    #[test]
    fn no_object_is_handed_out_twice_or_lost() {
        let threads = if cfg!(miri) { 3 } else { 8 };
        let rounds = if cfg!(miri) { 30 } else { 20_000 };
        let made = std::sync::Arc::new(AtomicU64::new(0));
        let counter = made.clone();
        let pool = Pool::with_cache(
            move || Object {
                id: counter.fetch_add(1, Ordering::Relaxed),
                in_use: AtomicBool::new(false),
            },
            8,
        );
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            // Caches flushed under the workers, through the fence.
            s.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    pool.flush().unwrap();
                    std::thread::yield_now();
                }
            });
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let pool = &pool;
                    s.spawn(move || {
                        if t == 0 {
                            // One worker on the guarded path.
                            crate::opt_out_current_thread();
                        }
                        let mut held = Vec::new();
                        for r in 0..rounds {
                            let o = pool.get();
                            assert!(!o.in_use.swap(true, Ordering::Relaxed), "handed out twice");
                            held.push(o);
                            if (r + t) % 7 == 0 {
                                for o in held.drain(..) {
                                    o.in_use.store(false, Ordering::Relaxed);
                                }
                            }
                        }
                        for o in held.drain(..) {
                            o.in_use.store(false, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            for w in workers {
                let _ = w.join();
            }
            done.store(true, Ordering::Relaxed);
        });
        let made = made.load(Ordering::Relaxed) as usize;
        assert_eq!(pool.cached(), made, "objects lost");
        // Every object once: take them all, each after a flush (a refill
        // leaves objects in the cache of the CPU this thread ran on then).
        let mut ids: Vec<u64> = (0..made)
            .map(|_| {
                pool.flush().unwrap();
                pool.get().into_inner().id
            })
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..made as u64).collect::<Vec<_>>());
    }
}
